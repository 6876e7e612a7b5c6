// Package ip6 holds the IPv6 header arithmetic that more than one part of
// lcast needs: finding the upper-layer header behind the extension headers
// (RFC 8200, section 4) and the upper-layer checksum over the pseudo-header
// (RFC 8200, section 8.1).
package ip6

import "encoding/binary"

// HeaderLen is the length of the fixed IPv6 header.
const HeaderLen = 40

// Next header values lcast looks at.
const (
	ProtoHopByHop = 0
	ProtoUDP      = 17
	ProtoRouting  = 43
	ProtoFragment = 44
	ProtoICMPv6   = 58
	ProtoDestOpts = 60
)

// Upper walks the Hop-by-Hop, Routing and Destination Options headers of
// the IPv6 packet pkt, whose fixed header the caller has checked, and
// returns the next header value that ends the walk (an upper-layer
// protocol or a Fragment header) and the offset where that header starts.
// ok is false if an extension header runs past the end of pkt.
func Upper(pkt []byte) (next byte, off int, ok bool) {
	next, off = pkt[6], HeaderLen
	for next == ProtoHopByHop || next == ProtoRouting || next == ProtoDestOpts {
		if off+8 > len(pkt) {
			return next, off, false
		}
		hdrLen := 8 + 8*int(pkt[off+1])
		if off+hdrLen > len(pkt) {
			return next, off, false
		}
		next, off = pkt[off], off+hdrLen
	}
	return next, off, true
}

// Checksum returns the upper-layer checksum of msg, an upper-layer header
// and its data, from src to dst with next header proto: the one's
// complement of the one's complement sum of the pseudo-header and msg.
// Over a msg whose checksum field is correct it returns zero; over one
// whose field is zero it returns the value that belongs there (but UDP
// sends a computed zero as 0xffff, RFC 8200 section 8.1).
func Checksum(src, dst [16]byte, proto byte, msg []byte) uint16 {
	sum := uint64(len(msg)) + uint64(proto)
	for _, a := range [][16]byte{src, dst} {
		for i := 0; i < 16; i += 2 {
			sum += uint64(binary.BigEndian.Uint16(a[i:]))
		}
	}
	for len(msg) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(msg))
		msg = msg[2:]
	}
	if len(msg) == 1 {
		sum += uint64(msg[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
