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
// stamp the sender heard.
//
// A repair (a new handshake, ExchangeConfig.Repair: Transport.Repair)
// expires the session's keys: nothing flows until the new handshake has
// crossed the path, half a second or more on a slow, lossy one. So a
// session that carries anything from the peer is never repaired: a peer
// heard from (any packet: the transport authenticated it) has a session
// that works, at least toward this node, and if it does not hear this
// node, it is the one to repair. A session is repaired only when the peer
// has truly gone silent, which takes evidence, not one lost ping:
//
//   - once the peer has been silent for probeAfter, the node probes it
//     with a ping every fastHello (as it does while a ping is overdue);
//   - it repairs only when the peer has been silent for
//     silentBeforeRepair and repairPings pings sent since it was last
//     heard from went unanswered for rto each.
//
// Why this is enough: on a path that loses 10% each way, a round trip
// fails with p = 1-0.9*0.9 = 0.19. Five unanswered pings alone happen to a
// working session with p^5 = 2.5e-4; but a second of silence also means
// that every probe sent from probeAfter until a round trip before the
// second ended failed (at least six, 100 ms apart, on a path of 50 ms each
// way: p^6 = 4.7e-5) and that the hello the peer sends every second was
// lost too (0.1): 4.7e-6 for each silence that reaches probeAfter. Those
// start about twice a second (each answered probe ends one), so such a
// session would be repaired about once a day of continuous loss; the
// simulation (TestLossyPathNotRepaired) finds it rarer still, 6 repairs in
// 500 hours, where the rule before (repair when a ping went unanswered
// past the rto and a hello was lost) did 2.3 a minute. A black hole is
// repaired as soon as both conditions hold: the fifth probe goes out at
// about 0.65-0.7 s of silence and is overdue an rto later, so the silence
// of silentBeforeRepair decides: within 1 s and a tick of the peer's last
// packet (TestSilentPeerRepaired). Probing costs little: a peer that sends
// nothing but control messages is pinged about twice a second, not once.
//
// A peer never heard from has no session to lose: it is repaired as soon
// as a ping to it is overdue (unanswered for longer than the rto), which
// mends crossed handshakes at a cold start within about a quarter of a
// second.
//
// While a session stays broken it is repaired again after the rto, then
// after twice as long each time: up to fastRepairMax for a peer heard
// from within lostRecently (a healed partition carries data again within
// about that long), up to slowRepairMax (WireGuard's own retry) for one
// gone longer, so that dead peers cost little. The node with the higher
// address retries at most every higherRepairMax. At a simultaneous start
// or a healed partition both sides notice together; the node with the
// higher overlay address waits repairLag longer, so that their handshakes
// do not cross again.
const (
	// tickInterval is how often the exchange looks at its peers' health.
	tickInterval = 50 * time.Millisecond
	// fastHello is the hello interval toward a peer that has not
	// answered, is overdue or is being probed.
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
	// probeAfter is how long a peer may send nothing before it is
	// probed with a ping every fastHello: as long as a ping may go
	// unanswered at least.
	probeAfter = minRTO
	// silentBeforeRepair is how long a peer that was heard from must have
	// sent nothing before its session is repaired, and repairPings how
	// many pings sent since must have gone unanswered for the rto.
	silentBeforeRepair = time.Second
	repairPings        = 5
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
	lastHello  time.Time
	nextRepair time.Time
	repairWait time.Duration // from the last repair to the next, 0 before one
	// heardAt is when the peer was last heard from, as the probes know
	// it; probes counts the pings sent since, and nthProbe is when the
	// repairPings-th of them went (since the exchange's start).
	heardAt  time.Time
	probes   int
	nthProbe time.Duration
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
	if h.probes++; h.probes == repairPings {
		h.nthProbe = stampTime(stamp)
	}
}

// heardFrom notes that the peer was heard from at t (any packet): the
// pings sent before t count as answered, and the repairs of a broken
// session start again from the rto.
func (h *health) heardFrom(t time.Time) {
	if t.After(h.heardAt) {
		h.heardAt, h.probes, h.repairWait = t, 0, 0
	}
}

// probesUnanswered reports whether, at now (since the exchange's start),
// repairPings pings sent since the peer was last heard from went
// unanswered for longer than the rto.
func (h *health) probesUnanswered(now time.Duration) bool {
	return h.probes >= repairPings && now-h.nthProbe > h.rto()
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

// helloInterval is the time from one hello to the next, at now (since
// the exchange's start), toward a peer that has sent nothing for silent
// (0 if it never did): fastHello toward a peer that never answered, is
// overdue, or has been silent for longer than probeAfter (the probes).
func (h *health) helloInterval(now, silent time.Duration) time.Duration {
	if h.answered == 0 || h.overdue(now, 0) || silent > probeAfter {
		return fastHello
	}
	return HelloInterval
}

// lastFrom returns when the peer at addr was last heard from (any packet:
// a control message or, through LastRx, any other), zero if never, and
// notes it in r's probes.
func (x *Exchange) lastFrom(addr netip.Addr, r *remote) time.Time {
	last := r.lastHeard
	if x.lastRx != nil {
		if rx := x.lastRx(addr); rx.After(last) {
			last = rx
		}
	}
	r.heardFrom(last)
	return last
}

// repairDue reports whether the session with the peer at addr, last heard
// from at last (zero if never), is to be repaired now, and if so notes
// it.
func (x *Exchange) repairDue(addr netip.Addr, r *remote, now, last time.Time) bool {
	var lag time.Duration
	most := slowRepairMax
	if !last.IsZero() && now.Sub(last) < lostRecently {
		most = fastRepairMax
	}
	if x.self.Compare(addr) > 0 {
		lag, most = repairLag, max(most, higherRepairMax)
	}
	since := x.since(now)
	switch {
	case now.Before(r.nextRepair):
		return false
	case last.IsZero():
		// Never heard from: nothing to lose.
		if !r.overdue(since, lag) {
			return false
		}
	case now.Sub(last) < silentBeforeRepair+lag || !r.probesUnanswered(since):
		// Heard from lately, or not yet probed enough: its session may
		// well work.
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
