package peer

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"testing"
)

// Known answer from RFC 7748 section 6.1 (Alice's key pair).
func TestPublicKeyKnownAnswer(t *testing.T) {
	priv := mustHexKey(t, "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
	want := mustHexKey(t, "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
	if got := priv.PublicKey(); got != want {
		t.Fatalf("PublicKey = %x, want %x", got, want)
	}
}

func TestKeyTextRoundTrip(t *testing.T) {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if k[0]&7 != 0 || k[31]&128 != 0 || k[31]&64 == 0 {
		t.Fatalf("key not clamped: %x", k)
	}
	s := k.String()
	if len(s) != 44 {
		t.Fatalf("len(%q) = %d, want 44", s, len(s))
	}
	back, err := ParseKey(s)
	if err != nil || back != k {
		t.Fatalf("ParseKey(%q) = %x, %v; want %x", s, back, err, k)
	}
}

func TestParseKeyRejects(t *testing.T) {
	for name, s := range map[string]string{
		"empty":      "",
		"not base64": "!!!!",
		"short":      base64.StdEncoding.EncodeToString(make([]byte, 31)),
		"long":       base64.StdEncoding.EncodeToString(make([]byte, 33)),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseKey(s); !errors.Is(err, ErrBadKey) {
				t.Fatalf("ParseKey(%q) error = %v, want ErrBadKey", s, err)
			}
		})
	}
}

func TestOverlayAddr(t *testing.T) {
	a, _ := GenerateKey()
	b, _ := GenerateKey()
	pa, pb := OverlayAddr(a.PublicKey()), OverlayAddr(b.PublicKey())
	if !OverlayPrefix.Contains(pa) || !OverlayPrefix.Contains(pb) {
		t.Fatalf("addresses %v, %v outside %v", pa, pb, OverlayPrefix)
	}
	if pa == pb {
		t.Fatalf("two keys gave the same address %v", pa)
	}
	if OverlayAddr(a.PublicKey()) != pa {
		t.Fatal("OverlayAddr is not deterministic")
	}
}

func mustHexKey(t *testing.T, s string) Key {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != KeyLen {
		t.Fatalf("bad test key %q", s)
	}
	return Key(b)
}
