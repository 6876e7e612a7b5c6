package tun

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/librecast/lcast/internal/ip6"
)

var (
	testSrc   = netip.MustParseAddr("fd6c:6361:7374:1:2:3:4:5")
	testGroup = netip.MustParseAddr("ff1e::1")
)

// testPacket builds an IPv6 packet from testSrc to testGroup with the
// extension headers ext (each 8 bytes, chained in order) and an upper
// layer proto header and payload; the checksum field stays as given.
func testPacket(proto byte, ext [][8]byte, upper []byte) []byte {
	pkt := []byte{0x60, 0, 0, 0, 0, 0, 0, 64}
	pkt = append(pkt, testSrc.AsSlice()...)
	pkt = append(pkt, testGroup.AsSlice()...)
	prev := 6
	for _, h := range ext {
		pkt[prev] = ip6.ProtoDestOpts
		prev = len(pkt)
		pkt = append(pkt, h[:]...)
	}
	pkt[prev] = proto
	pkt = append(pkt, upper...)
	binary.BigEndian.PutUint16(pkt[4:], uint16(len(pkt)-ip6.HeaderLen))
	return pkt
}

// udpSum computes the checksum of the UDP datagram in pkt at off, with its
// field taken as zero: the value the field must hold before the computed
// zero rule.
func udpSum(pkt []byte, off int) uint16 {
	udp := bytes.Clone(pkt[off:])
	udp[6], udp[7] = 0, 0
	return ip6.Checksum(testSrc.As16(), testGroup.As16(), ip6.ProtoUDP, udp)
}

// udpComputingZero returns a UDP datagram of n payload bytes (n >= 2) whose
// checksum from testSrc to testGroup, behind the extension headers ext,
// computes to zero; its checksum field is zero, as wireguard-go writes it.
// It finds the payload's first two bytes by trying every value.
func udpComputingZero(t testing.TB, ext [][8]byte, n int) []byte {
	t.Helper()
	udp := make([]byte, 8+n)
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], 4242)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	for i := range n {
		udp[8+i] = byte(i*7 + 3)
	}
	off := ip6.HeaderLen + 8*len(ext)
	for w := range 1 << 16 {
		binary.BigEndian.PutUint16(udp[8:], uint16(w))
		if pkt := testPacket(ip6.ProtoUDP, ext, udp); udpSum(pkt, off) == 0 {
			return pkt
		}
	}
	t.Fatal("no payload computes to a zero checksum")
	return nil
}

func TestCorrectUDPChecksum(t *testing.T) {
	pad := [8]byte{0, 0, 1, 4} // Destination Options: a PadN of 4 bytes
	deliberate := testPacket(ip6.ProtoUDP, nil, []byte{0x9c, 0x40, 0x10, 0x92, 0, 10, 0, 0, 'h', 'i'})
	if udpSum(deliberate, ip6.HeaderLen) == 0 {
		t.Fatal("the deliberate case computes to zero")
	}
	correct := bytes.Clone(deliberate)
	binary.BigEndian.PutUint16(correct[ip6.HeaderLen+6:], udpSum(correct, ip6.HeaderLen))
	icmp := testPacket(ip6.ProtoICMPv6, nil, []byte{128, 0, 0, 0, 0, 1, 0, 1})
	for _, tc := range []struct {
		name    string
		pkt     []byte
		udpAt   int // offset of the UDP header, for cases corrected
		correct bool
	}{
		{name: "computed zero", pkt: udpComputingZero(t, nil, 1200), udpAt: ip6.HeaderLen, correct: true},
		{name: "computed zero, odd length", pkt: udpComputingZero(t, nil, 7), udpAt: ip6.HeaderLen, correct: true},
		{name: "computed zero behind two extension headers", pkt: udpComputingZero(t, [][8]byte{pad, pad}, 64), udpAt: ip6.HeaderLen + 16, correct: true},
		{name: "computed zero with trailing bytes past the payload length", pkt: append(udpComputingZero(t, nil, 20), 1, 2, 3), udpAt: ip6.HeaderLen, correct: true},
		{name: "deliberately no checksum", pkt: deliberate},
		{name: "checksum present", pkt: correct},
		{name: "ICMPv6 with a zero field", pkt: icmp},
		{name: "IPv4", pkt: append([]byte{0x45}, make([]byte, 47)...)},
		{name: "shorter than a header", pkt: udpComputingZero(t, nil, 4)[:30]},
		{name: "payload length past the end", pkt: udpComputingZero(t, nil, 4)[:50]},
		{name: "UDP header cut", pkt: testPacket(ip6.ProtoUDP, nil, []byte{1, 2, 3, 4, 0, 0})},
		{name: "extension header cut", pkt: testPacket(ip6.ProtoUDP, [][8]byte{pad}, nil)[:44]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pkt := bytes.Clone(tc.pkt)
			if got := correctUDPChecksum(pkt); got != tc.correct {
				t.Fatalf("correctUDPChecksum = %v, want %v", got, tc.correct)
			}
			if !tc.correct {
				if !bytes.Equal(pkt, tc.pkt) {
					t.Fatalf("the packet changed:\n%x\n%x", tc.pkt, pkt)
				}
				return
			}
			udpEnd := ip6.HeaderLen + int(binary.BigEndian.Uint16(pkt[4:]))
			if sum := binary.BigEndian.Uint16(pkt[tc.udpAt+6:]); sum != 0xffff {
				t.Fatalf("checksum field %#04x, want 0xffff", sum)
			}
			// What a receiver checks: the sum over the datagram as sent.
			if got := ip6.Checksum(testSrc.As16(), testGroup.As16(), ip6.ProtoUDP, pkt[tc.udpAt:udpEnd]); got != 0 {
				t.Fatalf("the receiver's check gives %#04x, want 0", got)
			}
			if !bytes.Equal(pkt[:tc.udpAt+6], tc.pkt[:tc.udpAt+6]) || !bytes.Equal(pkt[tc.udpAt+8:], tc.pkt[tc.udpAt+8:]) {
				t.Fatal("bytes other than the checksum changed")
			}
		})
	}
}

// The device corrects every packet of a batch, at the caller's offset.
func TestDeviceReadCorrects(t *testing.T) {
	ch := tuntest.NewChannelTUN()
	dev := device{ch.TUN()}
	const offset = 16
	zero := udpComputingZero(t, nil, 100)
	bufs := [][]byte{make([]byte, 1500)}
	sizes := make([]int, 1)
	go func() { ch.Outbound <- zero }()
	n, err := dev.Read(bufs, sizes, offset)
	if err != nil || n != 1 {
		t.Fatalf("Read = %d, %v", n, err)
	}
	if got := bufs[0][offset+ip6.HeaderLen+6 : offset+ip6.HeaderLen+8]; !bytes.Equal(got, []byte{0xff, 0xff}) {
		t.Fatalf("checksum field %x, want ffff", got)
	}
}

// Whatever lc0 yields, correcting never panics, touches only a zero UDP
// checksum field, and leaves a datagram the receiver's check accepts.
func FuzzCorrectUDPChecksum(f *testing.F) {
	f.Add(testPacket(ip6.ProtoUDP, [][8]byte{{0, 0, 1, 4}}, []byte{1, 2, 3, 4, 0, 12, 0, 0, 5, 6, 7, 8}))
	f.Add(testPacket(ip6.ProtoICMPv6, nil, []byte{128, 0, 0, 0}))
	f.Add(udpComputingZero(f, [][8]byte{{0, 0, 1, 4}}, 9))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		orig := bytes.Clone(pkt)
		if !correctUDPChecksum(pkt) {
			if !bytes.Equal(pkt, orig) {
				t.Fatal("not corrected, yet changed")
			}
			return
		}
		next, off, _ := ip6.Upper(pkt)
		end := ip6.HeaderLen + int(binary.BigEndian.Uint16(pkt[4:]))
		if next != ip6.ProtoUDP || !bytes.Equal(orig[off+6:off+8], []byte{0, 0}) || !bytes.Equal(pkt[off+6:off+8], []byte{0xff, 0xff}) {
			t.Fatalf("corrected a packet that is not a zero-checksum UDP datagram: %x", orig)
		}
		if ip6.Checksum([16]byte(pkt[8:24]), [16]byte(pkt[24:40]), ip6.ProtoUDP, pkt[off:end]) != 0 {
			t.Fatalf("corrected to a checksum receivers reject: %x", orig)
		}
	})
}
