package tun

import (
	"encoding/binary"

	wgtun "golang.zx2c4.com/wireguard/tun"

	"github.com/librecast/lcast/internal/ip6"
)

// device is lc0's wireguard-go device with one correction on Read.
//
// lc0 offers the kernel checksum offload, so programs' UDP datagrams come
// out of it with the checksum left to compute, and wireguard-go computes
// it. It writes a computed zero as zero, where UDP sends 0xffff (RFC 8200,
// section 8.1): zero means "no checksum", which IPv6 receivers drop. About
// one datagram in 65,536 would be lost at every receiver.
type device struct{ wgtun.Device }

// Read reads packets like wireguard-go's Read and corrects their UDP
// checksums (see correctUDPChecksum).
func (d device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := d.Device.Read(bufs, sizes, offset)
	for i := range n {
		correctUDPChecksum(bufs[i][offset : offset+sizes[i]])
	}
	return n, err
}

// correctUDPChecksum sets the checksum field of a UDP datagram in the IPv6
// packet pkt to 0xffff if it is zero and the datagram's checksum computes
// to zero; it reports whether it did. A zero field over a datagram whose
// checksum computes to anything else is a sender's deliberate "no
// checksum" (RFC 6936) and is left alone, as is every other packet.
func correctUDPChecksum(pkt []byte) bool {
	if len(pkt) < ip6.HeaderLen || pkt[0]>>4 != 6 {
		return false
	}
	end := ip6.HeaderLen + int(binary.BigEndian.Uint16(pkt[4:6]))
	if end > len(pkt) {
		return false
	}
	pkt = pkt[:end]
	next, off, ok := ip6.Upper(pkt)
	if !ok || next != ip6.ProtoUDP || off+8 > len(pkt) {
		return false
	}
	udp := pkt[off:]
	if udp[6] != 0 || udp[7] != 0 || ip6.Checksum([16]byte(pkt[8:24]), [16]byte(pkt[24:40]), ip6.ProtoUDP, udp) != 0 {
		return false
	}
	udp[6], udp[7] = 0xff, 0xff
	return true
}
