package peer

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// receive handles the message b from the peer at addr. It returns when
// the peer's state is to be handed to the router, if a batch ended within
// applyGap of the last hand-over (zero otherwise).
func (x *Exchange) receive(addr netip.Addr, b []byte) (applyAt time.Time) {
	m, err := ParseMessage(b)
	x.mu.Lock()
	r, known := x.peers[addr]
	if !known || err != nil {
		x.mu.Unlock()
		x.BadMessages.Add(1)
		return time.Time{}
	}
	now := x.clock.Now()
	var c counts
	freed := x.heard(r, m, now, &c)
	want := false
	if m.Update {
		want = r.in.take(m, &x.held, now, &c)
		if r.in.ackOwed {
			x.ackOwed[addr], r.in.ackOwed = true, false
		}
	}
	want = x.compare(r, m) || want
	sendWant := false
	if want {
		if sendWant = r.in.asks.allow(now); !sendWant {
			r.in.wantOwed = true
		}
	}
	if m.Want {
		r.out.syncOwed = true
	}
	// The sender is woken when a full state is owed (asked for, or the
	// peer restarted or forgot this node), and when the acknowledgement
	// made room for updates that wait for it: the window toward this
	// peer, or maxInflight, which other peers' queues may wait for.
	wake := r.out.syncOwed || freed
	pong := m.Ping && r.mayPong(x.since(now))
	applyNow := r.in.dirty && m.End && r.in.applyDue(now)
	if r.in.dirty && m.End && !applyNow {
		applyAt = r.in.applyAt()
	}
	ackNow := m.Update && r.in.applied-r.in.ackSent >= ackAfter
	x.mu.Unlock()
	x.count(&c)
	if wake {
		x.wakeSender()
	}
	if applyNow {
		x.applyTo(addr)
	}
	if sendWant || pong || ackNow {
		x.send(addr, sendFlags{want: sendWant, pong: pong})
	}
	return applyAt
}

// heard notes message m from the peer of r, at now: its session's health,
// a restart, whether it holds this node's state, and acknowledgements. It
// reports whether an acknowledgement freed updates in flight.
func (x *Exchange) heard(r *remote, m *Message, now time.Time, c *counts) (freed bool) {
	r.lastHeard = now
	r.heardFrom(now)
	if m.Epoch != r.epoch {
		if r.epoch != 0 {
			// The peer restarted: what it held of this node's state is
			// gone, and its own is to be learnt afresh. What it
			// subscribed to before stays until its full state's sweep.
			x.inflight -= r.out.restart()
		}
		r.in.restarted(&x.held, c)
		r.epoch, r.heard, r.ackedOK, r.knownAt = m.Epoch, 0, false, 0
	}
	r.heard = max(r.heard, m.Stamp)
	if m.Relay != r.relay {
		// Told the router with the peer's state (or at once, if it has
		// one).
		r.relay, r.in.dirty = m.Relay, r.in.synced
	}
	if m.PeerEpoch != x.epoch {
		if r.out.holds() && m.Stamp > r.knownAt {
			// The peer forgot this node (it expired it after HoldTime):
			// this message was made after one that knew it.
			x.inflight -= r.out.restart()
		}
		r.ackedOK = false
		return false
	}
	r.ackedOK, r.knownAt = true, max(r.knownAt, m.Stamp)
	r.echoed(m, x.since(now))
	n := r.out.ackTo(m.Ack, now, r.rto())
	x.inflight -= n
	return n > 0
}

// compare reports whether m's digest tells that this node's copy of the
// peer's state differs from the peer's: it numbered as many updates as
// this node applied, and its digest of them is another. A peer that has a
// state to tell while this node holds none of its epoch differs too.
func (x *Exchange) compare(r *remote, m *Message) bool {
	in := &r.in
	switch {
	case !m.DigestOK:
		return false
	case !in.synced:
		return true
	case m.Seq != in.applied:
		return false
	case m.Digest != in.digest:
		return true
	}
	in.asks.reset()
	in.wantOwed = false
	return false
}

// restart starts the session toward the peer again: the updates in flight
// are forgotten (their number returned) and a full state is owed.
func (o *outState) restart() int {
	n := o.dropInflight()
	o.from, o.to, o.i, o.j, o.at, o.syncing, o.told = nil, nil, 0, 0, 0, false, nil
	o.syncSeq, o.syncOwed, o.digestOK = 0, true, false
	return n
}

// sendFlags are the flags of a message to send.
type sendFlags struct{ want, ping, pong bool }

// send sends a message that is not an update (a hello, an
// acknowledgement, a request or a pong) to the peer at addr.
func (x *Exchange) send(addr netip.Addr, f sendFlags) {
	x.mu.Lock()
	r, ok := x.peers[addr]
	now := x.clock.Now()
	if !ok || x.quietToward(addr, r, now) {
		x.mu.Unlock()
		return
	}
	m := x.header(r, now)
	m.Want, m.Ping, m.Pong = f.want, f.ping, f.pong
	if f.ping {
		r.pinged(m.Stamp)
	}
	delete(x.ackOwed, addr)
	b := AppendMessage(nil, &m)
	x.mu.Unlock()
	x.transmit(addr, b)
}

// header returns a message to the peer of r, at now, that is no update:
// this node's epoch and the peer's, the last update numbered toward it
// and its digest, the acknowledgement of the peer's updates, the stamp
// and echo.
func (x *Exchange) header(r *remote, now time.Time) Message {
	r.in.ackSent = r.in.applied
	return Message{Relay: x.relay, Epoch: x.epoch, PeerEpoch: r.epoch, Seq: r.out.seq, Ack: r.in.applied,
		Stamp: stampOf(x.since(now)), Echo: r.heard, Digest: r.out.digest, DigestOK: r.out.digestOK && !r.out.syncing && r.out.sentSeq == r.out.seq}
}

// patch returns a copy of the update b, sent before, with the header
// fields that name the moment brought up to date: the peer's epoch, the
// acknowledgement, the stamp and the echo.
func (x *Exchange) patch(r *remote, b []byte, now time.Time) []byte {
	m := x.header(r, now)
	out := append([]byte(nil), b...)
	binary.BigEndian.PutUint64(out[16:], m.PeerEpoch)
	binary.BigEndian.PutUint64(out[32:], m.Ack)
	binary.BigEndian.PutUint64(out[40:], m.Stamp)
	binary.BigEndian.PutUint64(out[48:], m.Echo)
	return out
}

// transmit hands b to the transport for the peer at addr; a failure is
// counted (SendFailed) and, at most every 10 s, logged.
func (x *Exchange) transmit(addr netip.Addr, b []byte) {
	if err := x.out(addr, b); err != nil {
		x.SendFailed.Add(1)
		if x.warn.Allow() {
			x.log.Warn("subscription message not sent (counted in subscription_send_failed; sent again)", "peer", addr, "err", err)
		}
	}
}

// isDirect reports whether, at now (since the exchange's start), the
// path to the peer is direct: the peer applied a full state of this
// node's, so that it sends this node's groups straight to it, and its
// session answers both ways: no ping is overdue by half a ping interval
// (one lost ping or pong does not end a path, when the next is answered).
func (r *remote) isDirect(now time.Time, since time.Duration) bool {
	return r.epoch != 0 && r.ackedOK && r.out.holds() && r.answered != 0 && now.Sub(r.lastHeard) < ConnectedWithin &&
		!r.overdue(since, pathHello/2)
}

// Direct reports whether the path to the peer at addr is direct, as the
// exchange last found (every tickInterval).
func (x *Exchange) Direct(addr netip.Addr) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	r, ok := x.peers[addr]
	return ok && r.direct
}

// Silence returns how long the peer at addr has sent nothing, counted from
// the exchange's start if it never did (or was forgotten, after
// HoldTime); 0 for a peer the exchange does not know.
func (x *Exchange) Silence(addr netip.Addr, now time.Time) time.Duration {
	x.mu.Lock()
	defer x.mu.Unlock()
	r, ok := x.peers[addr]
	switch {
	case !ok:
		return 0
	case r.lastHeard.IsZero():
		return now.Sub(x.started)
	}
	return now.Sub(r.lastHeard)
}

func (x *Exchange) wakeSender() {
	select {
	case x.wake <- struct{}{}:
	default:
	}
}

// quietToward reports whether, at time now, this node keeps quiet toward
// the peer at addr (see quietStart): it has the higher overlay address and
// has not heard from the peer since it started or added it, within
// quietStart.
func (x *Exchange) quietToward(addr netip.Addr, r *remote, now time.Time) bool {
	return x.waitsFor(addr, r) && now.Before(r.quietUntil)
}

// waitsFor reports whether this node waits for the peer at addr to speak
// first: it has the higher overlay address and has not heard from it.
func (x *Exchange) waitsFor(addr netip.Addr, r *remote) bool {
	return r.epoch == 0 && x.self.Compare(addr) > 0
}
