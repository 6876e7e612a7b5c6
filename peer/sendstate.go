package peer

import (
	"context"
	"net/netip"
	"slices"
	"time"
)

// maxResendWait is the longest wait between full states sent again to a
// peer that neither acknowledges nor changes: from about minRTO the wait
// doubles up to it, so that a peer that never acknowledges (or keeps
// asking) costs little.
const maxResendWait = 32 * time.Second

// resend limits how often one peer is sent the same full state again. A
// new state, an acknowledgement or the peer's restart resets it.
type resend struct {
	next      time.Time     // not again before
	wait      time.Duration // the wait after the next resend
	requested bool          // the peer asked while the limit held
	last      time.Time     // when the state last went out whole
}

// freshState is the limit for a new state, owed at now: no resend before
// it has gone out whole (sent, below, starts the wait then), the first
// resend minRTO after that, long enough for an acknowledgement on any path
// that works, and short enough that a state lost in a session being
// repaired arrives soon after the repair.
func freshState(now time.Time) resend {
	return resend{next: now.Add(maxResendWait), wait: minRTO}
}

// sent notes that the state went out whole at now: the next resend waits
// the wait from then, however long the parts took.
func (r *resend) sent(now time.Time) { r.next, r.last = now.Add(r.wait), now }

// restart lets the state go at once to a peer that (re)started, unless it
// went out within minRTO: a peer that claims a new start in every message
// gets at most one state per minRTO.
func (r *resend) restart(now time.Time) {
	r.next = now
	if soonest := r.last.Add(minRTO); soonest.After(now) {
		r.next = soonest
	}
}

// mayResend reports whether the state may be sent again now, and if so
// notes it: the wait after it doubles, from minRTO up to maxResendWait.
func (r *resend) mayResend(now time.Time) bool {
	if now.Before(r.next) {
		return false
	}
	r.wait = min(max(2*r.wait, minRTO), maxResendWait)
	r.next, r.requested = now.Add(r.wait), false
	return true
}

// outgoing is a full state being sent to one peer, part by part.
type outgoing struct {
	addr        netip.Addr
	gen         uint64
	part, parts int
}

// sendStates sends the full states owed, paced at StateRate, one part to
// each peer in turn, so that one peer's large state (or one peer that
// keeps asking) does not hold up the others. A state owed again while it
// is being sent starts again from its first part. It runs until ctx is
// done.
func (x *Exchange) sendStates(ctx context.Context) {
	var active []*outgoing
	next := 0
	for {
		active = x.takeOwed(active)
		if len(active) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-x.wake:
			}
			continue
		}
		if x.pace.Wait(ctx) != nil {
			return
		}
		next %= len(active)
		if x.sendPart(active[next]) {
			next++
		} else {
			active = slices.Delete(active, next, next+1)
		}
	}
}

// takeOwed moves the peers owed a state into active, replacing a state
// being sent to the same peer.
func (x *Exchange) takeOwed(active []*outgoing) []*outgoing {
	x.mu.Lock()
	defer x.mu.Unlock()
	for a := range x.owed {
		delete(x.owed, a)
		r, ok := x.peers[a]
		if !ok {
			continue
		}
		o := &outgoing{addr: a, gen: r.mineGen, parts: len(r.parts)}
		if i := slices.IndexFunc(active, func(o *outgoing) bool { return o.addr == a }); i >= 0 {
			active[i] = o
		} else {
			active = append(active, o)
		}
	}
	return active
}

// sendPart sends the next part of o, and reports whether parts remain. A
// state that changed meanwhile (and is owed anew) or a peer that is gone
// ends it.
func (x *Exchange) sendPart(o *outgoing) bool {
	x.mu.Lock()
	r, ok := x.peers[o.addr]
	current := ok && r.mineGen == o.gen
	x.mu.Unlock()
	if !current {
		return false
	}
	o.part++
	x.send(o.addr, o.part, sendFlags{})
	if o.part < o.parts {
		return true
	}
	x.mu.Lock()
	if r, ok := x.peers[o.addr]; ok && r.mineGen == o.gen {
		r.resend.sent(x.clock.Now())
	}
	x.mu.Unlock()
	return false
}
