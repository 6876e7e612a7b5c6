// Package packettest builds IPv6 packets for tests of the packages that
// route and move them.
package packettest

import (
	"encoding/binary"
	"net/netip"
)

// UDP returns an IPv6/UDP packet from src to dst with payload and hop
// limit 1 (the UDP checksum left zero).
func UDP(src, dst netip.Addr, payload string) []byte {
	b := make([]byte, 48+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	b[6], b[7] = 17, 1
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	binary.BigEndian.PutUint16(b[44:], uint16(8+len(payload)))
	copy(b[48:], payload)
	return b
}

// The addresses the tests share: the overlay prefix, this node's overlay
// address, three peers', and two groups of global scope.
var (
	Overlay = netip.MustParsePrefix("fd6c:6361:7374::/48")
	Self    = netip.MustParseAddr("fd6c:6361:7374::1")
	PeerA   = netip.MustParseAddr("fd6c:6361:7374::a")
	PeerB   = netip.MustParseAddr("fd6c:6361:7374::b")
	PeerC   = netip.MustParseAddr("fd6c:6361:7374::c")
	Group1  = netip.MustParseAddr("ff1e::1")
	Group2  = netip.MustParseAddr("ff1e::2")
)
