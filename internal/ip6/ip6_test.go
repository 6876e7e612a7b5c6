package ip6

import (
	"encoding/binary"
	"testing"
)

func TestChecksum(t *testing.T) {
	lo := [16]byte{15: 1}
	// ::1 to ::1, UDP from port 1 to 2 with no payload: the words sum to
	// 1 + 1 (addresses) + 8 (length) + 17 (protocol) + 1 + 2 + 8 (header).
	if got := Checksum(lo, lo, ProtoUDP, []byte{0, 1, 0, 2, 0, 8, 0, 0}); got != ^uint16(38) {
		t.Fatalf("Checksum = %#04x, want %#04x", got, ^uint16(38))
	}
	// A message carrying its checksum sums to zero, at even and odd lengths
	// and with carries.
	for _, n := range []int{8, 9, 1400, 1401} {
		msg := make([]byte, n)
		for i := range msg {
			msg[i] = 0xff - byte(i)
		}
		msg[6], msg[7] = 0, 0
		binary.BigEndian.PutUint16(msg[6:], Checksum(lo, lo, ProtoUDP, msg))
		if got := Checksum(lo, lo, ProtoUDP, msg); got != 0 {
			t.Errorf("length %d: checksum over the filled-in message = %#04x, want 0", n, got)
		}
	}
}

func TestUpper(t *testing.T) {
	pkt := make([]byte, HeaderLen, 80)
	pkt[6] = ProtoHopByHop
	pkt = append(pkt, ProtoRouting, 0, 0, 0, 0, 0, 0, 0) // Hop-by-Hop, 8 bytes
	pkt = append(pkt, ProtoDestOpts, 1)                  // Routing, 16 bytes
	pkt = append(pkt, make([]byte, 14)...)
	pkt = append(pkt, ProtoUDP, 0, 0, 0, 0, 0, 0, 0) // Destination Options, 8 bytes
	for _, tc := range []struct {
		name string
		pkt  []byte
		next byte
		off  int
		ok   bool
	}{
		{"three extension headers", pkt, ProtoUDP, HeaderLen + 32, true},
		{"no extension header", append([]byte{6: ProtoICMPv6, HeaderLen - 1: 0}, 1), ProtoICMPv6, HeaderLen, true},
		{"a header cut short", pkt[:HeaderLen+20], ProtoRouting, HeaderLen + 8, false},
		{"a header's start cut short", pkt[:HeaderLen+4], ProtoHopByHop, HeaderLen, false},
	} {
		next, off, ok := Upper(tc.pkt)
		if next != tc.next || off != tc.off || ok != tc.ok {
			t.Errorf("%s: Upper = %d, %d, %v; want %d, %d, %v", tc.name, next, off, ok, tc.next, tc.off, tc.ok)
		}
	}
}
