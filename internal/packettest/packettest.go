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
