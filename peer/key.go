package peer

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/curve25519"
)

// KeyLen is the length of a Curve25519 key in bytes.
const KeyLen = 32

// Key is a Curve25519 private or public key.
type Key [KeyLen]byte

// ErrBadKey is returned for text that is not a base64-encoded 32-byte key.
var ErrBadKey = errors.New("not a base64-encoded 32-byte key")

// GenerateKey returns a new clamped private key, as `wg genkey` does.
func GenerateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("generate key: %w", err)
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// ParseKey decodes a key in WireGuard's format (standard base64, 44 characters).
func ParseKey(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != KeyLen {
		return Key{}, ErrBadKey
	}
	copy(k[:], b)
	return k, nil
}

// String returns the key in WireGuard's base64 format.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// IsZero reports whether k is all zeroes (an unset key).
func (k Key) IsZero() bool { return k == Key{} }

// Compare orders keys by their bytes, as bytes.Compare does.
func (k Key) Compare(other Key) int { return bytes.Compare(k[:], other[:]) }

// UnmarshalText implements encoding.TextUnmarshaler, so keys can be config values.
func (k *Key) UnmarshalText(text []byte) error {
	parsed, err := ParseKey(string(text))
	if err != nil {
		return err
	}
	*k = parsed
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// PublicKey returns the public key of the private key k.
func (k Key) PublicKey() Key {
	var pub Key
	curve25519.ScalarBaseMult((*[32]byte)(&pub), (*[32]byte)(&k))
	return pub
}

// OverlayPrefix is the ULA prefix under which every node's overlay address lies.
var OverlayPrefix = netip.MustParsePrefix("fd6c:6361:7374::/48")

// LinkLocalAddr returns the link-local address a node uses on lc0: fe80::/64
// followed by the interface identifier of its overlay address. Packets to
// link-scope groups carry it as their source.
func LinkLocalAddr(pub Key) netip.Addr {
	a := OverlayAddr(pub).As16()
	copy(a[:8], []byte{0xfe, 0x80, 0, 0, 0, 0, 0, 0})
	return netip.AddrFrom16(a)
}

// OverlayAddr returns the overlay unicast address of the node whose public key is pub.
func OverlayAddr(pub Key) netip.Addr {
	sum := blake2s.Sum256(pub[:])
	a := OverlayPrefix.Addr().As16()
	copy(a[6:], sum[:10])
	return netip.AddrFrom16(a)
}
