package router

import (
	"net/netip"
	"time"
)

// The senders the router remembers packets of are held in two tables,
// bounded each, so that what comes through relays can never push out a
// sender whose packets come directly (docs/design.md, "Relays and
// duplicate suppression"):
//
//   - maxRelayedOrigins senders known only through relays (a relay
//     window of about 1 KiB each). Beyond it a new one replaces any one of
//     them; a sender forgotten may have packets delivered twice.
//   - maxDirectOrigins senders whose packets came directly: the peers'
//     own addresses (two per peer) and the sources on gateway peers' LANs.
//     Only a peer's own packets add one, never a relay's. Beyond it, a
//     new one replaces the one idle longest of directSample of them, if
//     its direct path is not live (no direct packet within directLive);
//     else the new sender's packets are delivered without a window (the
//     transport already refuses replays of a peer's own packets; relayed
//     copies of them may then be delivered twice).
const (
	maxRelayedOrigins = 4096
	maxDirectOrigins  = 4096
	directSample      = 16
)

// directLive is how long after a sender's last direct packet its direct
// path counts as live.
const directLive = time.Second

// adoptAhead bounds how far a relay may have run ahead of a sender's
// direct path (its packets overtaking the direct ones) when the direct
// path starts or comes back: see adopt.
const adoptAhead = 256

// A window holds RFC 6479's sliding window of windowSize sequence numbers
// (wireguard-go's replay.Filter's, with a look that marks nothing).
const (
	windowBlocks = 128
	blockBits    = 64
	windowSize   = (windowBlocks - 1) * blockBits // 8128
)

// seen remembers which multicast packets arrived lately, by the address
// that sent them (a node's overlay or link-local address), their epoch and
// sequence number, in two windows per sender:
//
//   - the direct window, of the packets that came from the sender's own
//     node (the peer they came from is the sender). Only they update it,
//     and it alone decides on them, so nothing a relay sends can make the
//     sender's direct packets look like duplicates. A new epoch (the
//     sender restarted) starts it afresh; the epoch before counts as seen.
//   - the relay window, of the packets that came through relays. A relayed
//     packet never marks the direct window.
//
// A relayed packet the direct window has already is a duplicate. While
// the sender's direct path is live (a direct packet came within
// directLive), a relayed packet must also be of the direct epoch and no
// further on than the highest sequence number the sender sent directly:
// a relay cannot be ahead of the sender (DropRelayAhead). Then the relay
// window follows the direct one: if it holds another epoch, or a sequence
// number beyond the direct path's, a forgery put it there, and it starts
// afresh at the direct epoch. Without a live direct path the relay window
// decides alone, as the direct one does: a new epoch starts it afresh, and
// the epoch before counts as seen.
//
// When the direct path starts or comes back, its window starts from what
// the relays delivered meanwhile (adopt), so that the copies still on
// their way directly are duplicates.
//
// The price: while the direct path is live, a relayed copy that arrives
// before its direct copy is dropped (it is coming directly anyway), and
// when the direct path fails, relayed packets beyond its last are dropped
// until directLive has passed, unless the path is known to be down
// (Path), when they are taken at once; a relay that forges while the
// direct path is not live can make up to adoptAhead of the sender's next
// packets look delivered. When a path known to be down comes back, the
// packets the sender's transport held for it arrive first, behind what
// the relays delivered meanwhile: for directLive, up to adoptAhead of
// them that the relay window has are duplicates (a forging relay can make
// that many look delivered).
type seen struct {
	direct  map[netip.Addr]*origin // senders with a direct window
	relayed map[netip.Addr]*origin // senders known through relays only
}

// origin is what seen remembers of one sender.
type origin struct {
	direct, relayed *window // nil until the first packet of each kind
	lastDirect      time.Time
	// wasDown tells that a relayed packet came while the direct path was
	// known to be down: the next direct packet starts the path afresh.
	wasDown bool
	// adoptPending tells that the last adopt found the relay window too
	// far on: the next direct packet tries again. backSince is when the
	// first direct packet came after that, backFromDown whether the path
	// was known to be down then, and heldDrops how many direct packets
	// the relay window made duplicates since, beyond what it adopted.
	adoptPending bool
	backFromDown bool
	backSince    time.Time
	heldDrops    int
	// relayedUpTo is how far the relay window counts for direct packets
	// too (see adopt); 0: not at all.
	relayedUpTo uint64
}

// window is a sliding window of the sequence numbers of one epoch of a
// sender's packets, and the epoch before it.
type window struct {
	epoch, prev uint32
	highest     uint64 // the highest sequence number marked
	ring        [windowBlocks]uint64
}

func (s *seen) init() {
	s.direct, s.relayed = map[netip.Addr]*origin{}, map[netip.Addr]*origin{}
}

// origin returns what s remembers of sender, made if it knows nothing,
// for a packet that came directly or not at now; nil if there is no room
// (see maxDirectOrigins). A sender known through relays only that sends
// directly moves to the direct table.
func (s *seen) origin(sender netip.Addr, direct bool, now time.Time) *origin {
	if o, ok := s.direct[sender]; ok {
		return o
	}
	o, ok := s.relayed[sender]
	if !direct {
		if !ok {
			if len(s.relayed) >= maxRelayedOrigins {
				for a := range s.relayed { // forget any one
					delete(s.relayed, a)
					break
				}
			}
			o = &origin{}
			s.relayed[sender] = o
		}
		return o
	}
	if len(s.direct) >= maxDirectOrigins && !s.evictIdle(now) {
		return nil
	}
	if !ok {
		o = &origin{}
	}
	delete(s.relayed, sender)
	s.direct[sender] = o
	return o
}

// evictIdle forgets the direct sender idle longest of directSample of
// them, unless its direct path is live, and reports whether it did.
func (s *seen) evictIdle(now time.Time) bool {
	var idlest netip.Addr
	var last time.Time
	n := 0
	for a, o := range s.direct {
		if !idlest.IsValid() || o.lastDirect.Before(last) {
			idlest, last = a, o.lastDirect
		}
		if n++; n == directSample {
			break
		}
	}
	if !idlest.IsValid() || now.Sub(last) < directLive {
		return false
	}
	delete(s.direct, idlest)
	return true
}

// admit reports whether the packet seq of epoch from sender arrives for
// the first time, and remembers it, or else why it is dropped. direct
// tells that it came from the sender's own node, now when; down that the
// sender's direct path is known to be down (Path), so that it does not
// count as live however recent its last packet.
func (s *seen) admit(sender netip.Addr, direct, down bool, epoch uint32, seq uint64, now time.Time) (Reason, bool) {
	o := s.origin(sender, direct, now)
	if o == nil {
		return DropDuplicate, true // no room for its window: see maxDirectOrigins
	}
	if direct {
		if o.direct == nil || now.Sub(o.lastDirect) >= directLive || o.wasDown || o.adoptPending {
			// Until a direct packet recent enough to adopt the relay
			// window comes (the first may be one the transport held
			// since the path went down), the next direct packets try
			// again.
			if !o.adoptPending || o.wasDown {
				o.backSince, o.heldDrops, o.backFromDown = now, 0, o.wasDown
			}
			o.adoptPending = !o.adopt(epoch, seq)
		}
		o.lastDirect, o.wasDown = now, false
		d := newWindow(&o.direct, epoch)
		r := o.relayed
		// A packet the relays delivered is a duplicate: up to how far the
		// direct path adopted their window, and, after a path known to be
		// down came back without adopting it yet, for directLive and at
		// most adoptAhead packets, one the transport held meanwhile.
		held := o.adoptPending && o.backFromDown && now.Sub(o.backSince) < directLive && o.heldDrops < adoptAhead
		if r != nil && r.epoch == epoch && ((seq <= o.relayedUpTo && r.has(seq)) || (held && r.marked(seq))) {
			if seq > o.relayedUpTo {
				o.heldDrops++
			}
			d.first(epoch, seq)
			return DropDuplicate, false
		}
		return DropDuplicate, d.first(epoch, seq)
	}
	d := o.direct
	o.wasDown = o.wasDown || down
	if d != nil && now.Sub(o.lastDirect) < directLive && !o.wasDown {
		if epoch != d.epoch || seq > d.highest {
			return DropRelayAhead, false
		}
		if r := o.relayed; r != nil && (r.epoch != d.epoch || r.highest > d.highest) {
			r.restart(d.epoch)
		}
	}
	if d != nil && epoch == d.epoch && d.has(seq) {
		return DropDuplicate, false
	}
	return DropDuplicate, newWindow(&o.relayed, epoch).first(epoch, seq)
}

// adopt, at the first direct packet (seq of epoch) while the direct path
// is not live, makes the packets the relay window marked meanwhile in the
// same epoch, up to its highest, count as delivered for the direct path
// too: a packet that came through a relay first is then not delivered
// again when it also comes directly. A relay window further on than
// adoptAhead beyond seq is not adopted, so a relay that forges can make
// at most adoptAhead of the sender's packets look delivered, and only
// when the sender's direct path starts or comes back.
//
// It reports false when the relay window is further on than that: a
// later direct packet may adopt it.
func (o *origin) adopt(epoch uint32, seq uint64) bool {
	o.relayedUpTo = 0
	r := o.relayed
	if r == nil || r.epoch != epoch {
		return true
	}
	if r.highest <= seq+adoptAhead {
		o.relayedUpTo = r.highest
		return true
	}
	return false
}

// newWindow returns *w, made for epoch if there is none.
func newWindow(w **window, epoch uint32) *window {
	if *w == nil {
		*w = &window{epoch: epoch}
	}
	return *w
}

// first reports whether the packet seq of epoch is new to w, and marks
// it. A new epoch starts w afresh; the one before is over.
func (w *window) first(epoch uint32, seq uint64) bool {
	switch epoch {
	case w.epoch:
	case w.prev:
		return false
	default:
		w.restart(epoch)
	}
	if w.has(seq) {
		return false
	}
	if seq > w.highest {
		from, to := w.highest/blockBits+1, seq/blockBits
		for i := from; i <= to && i < from+windowBlocks; i++ {
			w.ring[i%windowBlocks] = 0
		}
		w.highest = seq
	}
	w.ring[seq/blockBits%windowBlocks] |= 1 << (seq % blockBits)
	return true
}

// has reports whether seq of w's epoch is marked, or too old to tell.
func (w *window) has(seq uint64) bool {
	switch {
	case seq > w.highest:
		return false
	case w.highest-seq > windowSize:
		return true
	}
	return w.ring[seq/blockBits%windowBlocks]&(1<<(seq%blockBits)) != 0
}

// marked reports whether seq of w's epoch is marked: unlike has, a
// sequence number too old to tell is not.
func (w *window) marked(seq uint64) bool {
	return seq <= w.highest && w.highest-seq <= windowSize && w.has(seq)
}

// restart empties w for epoch, the one it held becoming the one before
// (unless it is epoch itself).
func (w *window) restart(epoch uint32) {
	if epoch != w.epoch {
		w.prev, w.epoch = w.epoch, epoch
	}
	w.highest, w.ring[0] = 0, 0
}
