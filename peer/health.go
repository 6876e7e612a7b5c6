package peer

import (
	"net/netip"
	"time"
)

// Session health. A WireGuard handshake says nothing about whether
// traffic flows: two handshakes that cross on the wire both fail, and
// wireguard-go tries again only after 5 s (REKEY_TIMEOUT); a peer that
// restarted drops what the old session sends. So every node measures each
// session with its own control messages: every hello is a ping, which the
// peer answers at once with a pong, and every message echoes the newest
// stamp the sender heard. A ping unanswered for longer than the
// retransmission timeout (rto) means the session carries nothing; the node
// then repairs it (a new handshake, ExchangeConfig.Repair: Transport.Repair)
// at once, and again after the rto, then after twice as long each time
// while it stays broken: up to fastRepairMax for a peer heard from
// within lostRecently (a healed partition carries data again within about
// that long), up to slowRepairMax (WireGuard's own retry) for one gone
// longer, so that dead peers cost little. The node with the higher
// address retries at most every higherRepairMax. A peer heard from within
// silentBeforeRepair is not repaired, unless already repaired: its
// session works, and only pongs were lost; one heard from within twice
// that gets lossyGrace more for its fast pings to come back (on a lossy
// path, a lost ping and a lost hello are common, and a repair costs the
// session's keys). At a simultaneous start or a
// healed partition both sides notice together; the node with the higher
// overlay address waits repairLag longer, so that their handshakes do not
// cross again.
const (
	// tickInterval is how often the exchange looks at its peers' health.
	tickInterval = 50 * time.Millisecond
	// fastHello is the hello interval toward a peer that has not answered.
	fastHello = 100 * time.Millisecond
	// pathHello is the hello interval toward a peer whose direct path is
	// watched (ExchangeConfig.Watched).
	pathHello = 200 * time.Millisecond
	// minRTO is the least time a ping may go unanswered.
	minRTO = 250 * time.Millisecond
	// repairLag is how much longer the node with the higher overlay
	// address waits before it repairs.
	repairLag = 350 * time.Millisecond
	// The longest wait between repairs of a session that stays broken
	// (unless twice its rto is longer), for a peer heard from within
	// lostRecently and for others.
	fastRepairMax = 250 * time.Millisecond
	slowRepairMax = 5 * time.Second
	// higherRepairMax is the node with the higher address's fastest
	// retry: rarer than the other's, so that their retries seldom cross.
	higherRepairMax = 2 * time.Second
	lostRecently    = time.Minute
	// silentBeforeRepair is how long a peer must have sent nothing before
	// its session is repaired.
	silentBeforeRepair = time.Second
	// lossyGrace is how much longer a ping may go unanswered, for a peer
	// heard from within twice silentBeforeRepair, before its session is
	// repaired: three fast hellos' worth (see repairDue).
	lossyGrace = 3 * fastHello
	// minPongGap limits the pongs to one peer.
	minPongGap = 10 * time.Millisecond
	// ConnectedWithin is how recently a peer must have been heard from,
	// and must have acknowledged a message sent, to count as connected.
	ConnectedWithin = 2500 * time.Millisecond
)

// Health is what a node knows of its session with one peer.
type Health struct {
	// LastHeard is when the last message from the peer arrived, and
	// LastAcked when the newest message the peer acknowledged was sent;
	// zero if never.
	LastHeard, LastAcked time.Time
	// RTT is the smoothed round-trip time of pings (0 before the first).
	RTT time.Duration
}

// Connected reports whether traffic flows both ways: the peer was heard
// from, and acknowledged a message sent, within ConnectedWithin.
func (h Health) Connected(now time.Time) bool {
	return !h.LastHeard.IsZero() && now.Sub(h.LastHeard) < ConnectedWithin &&
		!h.LastAcked.IsZero() && now.Sub(h.LastAcked) < ConnectedWithin
}

// health is a peer's session health, kept under the exchange's lock.
// Times are stamps: microseconds since the exchange started, plus one, so
// that 0 means none.
type health struct {
	heard      uint64        // the peer's newest stamp, echoed back to it
	answered   uint64        // this node's newest stamp the peer echoed
	unacked    uint64        // the oldest ping sent since the last echo
	srtt       time.Duration // smoothed round trip of pings
	floorRTT   time.Duration // the least round trip, rising slowly (see echoed)
	lastPong   time.Duration
	nextHello  time.Time
	nextRepair time.Time
	repairWait time.Duration // from the last repair to the next, 0 before one
}

// stampOf turns a time since the exchange's start into a stamp.
func stampOf(d time.Duration) uint64 { return uint64(d/time.Microsecond) + 1 }

// stampTime turns a stamp (not 0) into a time since the exchange's start.
func stampTime(s uint64) time.Duration { return time.Duration(s-1) * time.Microsecond }

// since returns the time since the exchange started.
func (x *Exchange) since(now time.Time) time.Duration { return now.Sub(x.started) }

// pinged notes a ping sent with stamp.
func (h *health) pinged(stamp uint64) {
	if h.unacked == 0 {
		h.unacked = stamp
	}
}

// echoed takes the echo of m, a message from the peer that knows this
// node's epoch, received at now. An echo from the future is ignored.
func (h *health) echoed(m *Message, now time.Duration) {
	if m.Echo == 0 || m.Echo > stampOf(now) {
		return
	}
	h.answered = max(h.answered, m.Echo)
	if m.Pong {
		sample := now - stampTime(m.Echo)
		if h.srtt == 0 {
			h.srtt, h.floorRTT = sample, sample
		} else {
			h.srtt = (7*h.srtt + sample) / 8
			h.floorRTT = min(sample, h.floorRTT+(sample-h.floorRTT)/16)
		}
	}
	if h.unacked != 0 && m.Echo >= h.unacked {
		h.unacked, h.repairWait = 0, 0
	}
}

// mayPong reports whether a ping received at now is answered, and notes
// the answer.
func (h *health) mayPong(now time.Duration) bool {
	if h.lastPong != 0 && now-h.lastPong < minPongGap {
		return false
	}
	h.lastPong = now
	return true
}

// rto is how long a ping may go unanswered: three of the path's least
// round trips, not the smoothed one, which a busy daemon inflates (a
// session that answers late is heard from meanwhile, and not repaired).
func (h *health) rto() time.Duration { return max(minRTO, 3*h.floorRTT) }

// overdue reports whether a ping went unanswered for longer than rto plus
// lag.
func (h *health) overdue(now, lag time.Duration) bool {
	return h.unacked != 0 && now-stampTime(h.unacked) > h.rto()+lag
}

// helloInterval is the time to the next hello: fastHello toward a peer
// that never answered or is overdue.
func (h *health) helloInterval(now time.Duration) time.Duration {
	if h.answered == 0 || h.overdue(now, 0) {
		return fastHello
	}
	return HelloInterval
}

// repairDue reports whether the session with the peer at addr is to be
// repaired now, and if so notes it.
func (x *Exchange) repairDue(addr netip.Addr, r *remote, now time.Time) bool {
	var lag time.Duration
	most := slowRepairMax
	if now.Sub(r.lastHeard) < lostRecently {
		most = fastRepairMax
	}
	if x.self.Compare(addr) > 0 {
		lag, most = repairLag, max(most, higherRepairMax)
	}
	// A peer heard from lately (any packet: the transport authenticated
	// it) has a session that works, at least toward this node: its pongs
	// were lost (to overload or a flood, say), and a new handshake would
	// only stop what flows.
	last := r.lastHeard
	if x.lastRx != nil {
		if rx := x.lastRx(addr); rx.After(last) {
			last = rx
		}
	}
	// Once repaired, though, its keys are gone: it is repaired again until
	// it answers.
	heard := now.Sub(last) < silentBeforeRepair && r.repairWait == 0
	// A peer heard from just before that (within twice as long) most
	// likely lost one ping and one hello: the fast pings sent since the
	// ping went overdue get lossyGrace to come back before the session,
	// which works, loses its keys. (A peer never heard from, or silent
	// for longer, as after a partition, is repaired at once.)
	if now.Sub(last) < 2*silentBeforeRepair && r.repairWait == 0 {
		lag += lossyGrace
	}
	if !r.overdue(x.since(now), lag) || heard || now.Before(r.nextRepair) {
		return false
	}
	r.repairWait = min(max(2*r.repairWait, r.rto()), max(most, r.rto()))
	r.nextRepair = now.Add(r.repairWait)
	return true
}

// Health returns what the exchange knows of the session with the peer at
// addr (zero for a peer it does not know).
func (x *Exchange) Health(addr netip.Addr) Health {
	x.mu.Lock()
	defer x.mu.Unlock()
	r, ok := x.peers[addr]
	if !ok {
		return Health{}
	}
	h := Health{LastHeard: r.lastHeard, RTT: r.srtt}
	if r.answered != 0 {
		h.LastAcked = x.started.Add(stampTime(r.answered))
	}
	return h
}
