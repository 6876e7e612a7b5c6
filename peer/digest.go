package peer

import (
	"encoding/binary"

	"github.com/librecast/lcast/mld"
	"golang.org/x/crypto/blake2s"
)

// Digest sums up a subscription state, so that a sender and a receiver
// can tell whether they hold the same one: the sum, in two 64-bit lanes
// (big-endian), of the first 16 bytes of each group's BLAKE2s-256 hash
// (groupHash). A sum, not a hash of the sorted state, so that both sides
// keep it as groups change, at the cost of one group's hash per change.
// It detects drift (a bug, a lost state); it authenticates nothing: the
// transport does that.
type Digest [16]byte

// add returns d plus h.
func (d Digest) add(h Digest) Digest { return d.combine(h, 1) }

// sub returns d minus h.
func (d Digest) sub(h Digest) Digest { return d.combine(h, ^uint64(0)) }

func (d Digest) combine(h Digest, sign uint64) Digest {
	var out Digest
	for i := 0; i < 16; i += 8 {
		binary.BigEndian.PutUint64(out[i:], binary.BigEndian.Uint64(d[i:])+sign*binary.BigEndian.Uint64(h[i:]))
	}
	return out
}

// groupHash hashes one group's record: address, mode, hops and sources in
// the order held (sorted).
func groupHash(g *mld.GroupState) Digest {
	h, _ := blake2s.New256(nil)
	var hdr [18]byte
	a := g.Group.As16()
	copy(hdr[:], a[:])
	hdr[16], hdr[17] = byte(g.Mode), g.Hops
	h.Write(hdr[:])
	for _, s := range g.Sources {
		b := s.As16()
		h.Write(b[:])
	}
	var d Digest
	copy(d[:], h.Sum(nil))
	return d
}

// digestOf returns the digest of groups.
func digestOf(groups []mld.GroupState) Digest {
	var d Digest
	for i := range groups {
		d = d.add(groupHash(&groups[i]))
	}
	return d
}
