package peer

import (
	"context"
	"encoding/binary"
	"net/netip"
	"slices"
	"time"

	"github.com/librecast/lcast/mld"
)

// Sending a state to a peer (subscription.go): updates numbered in order,
// kept until acknowledged and sent again, go-back-N, when none is
// acknowledged for an rto (doubling up to maxResendWait while nothing is).
const (
	// maxResendWait is the longest wait between sends of updates nobody
	// acknowledges, and between full states a peer asks for.
	maxResendWait = 32 * time.Second
	// updateGap is the least time between two computations of the state
	// toward a peer: the changes that come meanwhile coalesce into one
	// update, so a program that joins and leaves a group 1,000 times a
	// second costs each peer at most one update per updateGap, and a
	// change waits at most updateGap (per relay it crosses).
	updateGap = 20 * time.Millisecond
	// window is how many updates may wait for a peer's acknowledgement,
	// maxInflight how many for all peers: at most maxInflight *
	// maxMsgPayload bytes (4.7 MiB) kept for resending.
	window      = 64
	maxInflight = 4096
	// ackedWithin: see resendDue.
	ackedWithin = 2 * time.Second
)

// sent is an update kept until the peer acknowledges it.
type sent struct {
	seq uint64
	b   []byte
}

// outState is the state this node tells one peer, under the exchange's
// lock.
type outState struct {
	seq   uint64 // the last update numbered
	acked uint64 // the last the peer acknowledged (seq space of this node's epoch)
	// told is the state the peer holds once it applied every update
	// numbered and queued.
	told []mld.GroupState
	// The changes not yet numbered are what differs between from and to
	// (both sorted by group, neither changed: states as State returned
	// them), from from[i] and to[j] on, found as they are numbered, so
	// that a queue of changes, even a full state of 262,144 groups, costs
	// no memory of its own; at is how many sources of the group at the
	// cursor went in earlier updates.
	from, to []mld.GroupState
	i, j, at int
	// syncing tells that the changes are a full state (from is empty),
	// whose first update is flagged sync (syncSent once it went) and
	// whose last, sweep.
	syncing, syncSent bool
	syncSeq           uint64 // the newest sync's number
	// digest is told's as of seq (valid while digestOK); a message
	// carries it only once update seq went to the transport (sentSeq),
	// so that it does not overtake the update.
	digest   Digest
	digestOK bool
	sentSeq  uint64
	inflight []sent
	rtx      int       // index in inflight of the next to send again; -1: none
	progress time.Time // when inflight last moved (sent into empty, or acknowledged)
	lastAck  time.Time // when the peer last acknowledged an update
	rtoWait  time.Duration
	// stale tells that the state toward the peer may have changed;
	// nextState is when it may be computed again (updateGap).
	stale     bool
	nextState time.Time
	syncOwed  bool    // the peer is owed a full state
	syncs     backoff // limits full states
}

func newOutState(base uint64) outState {
	return outState{seq: base, acked: base, rtx: -1, rtoWait: minRTO, syncOwed: true, stale: true}
}

// holds reports whether the peer applied a full state of this node's.
func (o *outState) holds() bool { return o.syncSeq != 0 && o.acked >= o.syncSeq }

// ackTo takes the peer's acknowledgement of the updates up to ack, at now.
func (o *outState) ackTo(ack uint64, now time.Time, rto time.Duration) (freed int) {
	if ack <= o.acked || ack > o.seq {
		return 0
	}
	o.acked = ack
	for freed < len(o.inflight) && o.inflight[freed].seq <= ack {
		freed++
	}
	if freed > 0 {
		o.inflight = slices.Delete(o.inflight, 0, freed)
		o.progress, o.rtoWait, o.lastAck = now, rto, now
		if o.rtx >= 0 {
			o.rtx = max(0, o.rtx-freed)
		}
		if o.rtx >= len(o.inflight) {
			o.rtx = -1
		}
	}
	return freed
}

// dropInflight forgets the updates waiting for acknowledgement and
// returns how many there were.
func (o *outState) dropInflight() int {
	n := len(o.inflight)
	o.inflight, o.rtx = nil, -1
	return n
}

// startSync queues state, whole, as a full state.
func (o *outState) startSync(state []mld.GroupState) {
	o.from, o.to, o.i, o.j, o.at, o.told = nil, state, 0, 0, 0, state
	o.syncing, o.syncSent, o.syncOwed = true, false, false
	o.digest, o.digestOK = Digest{}, false
}

// queueChanges queues what differs between told and state (both sorted by
// group), and makes state told.
func (o *outState) queueChanges(state []mld.GroupState) {
	o.from, o.to, o.i, o.j, o.at, o.told = o.told, state, 0, 0, 0, state
}

// next returns the next change, without taking it: the group's old record
// (nil if new) and new one (nil if removed); ok is false when no change
// is left. Groups that did not change are passed over for good.
func (o *outState) next() (old, new *mld.GroupState, ok bool) {
	for {
		switch {
		case o.i == len(o.from) && o.j == len(o.to):
			return nil, nil, false
		case o.j == len(o.to) || o.i < len(o.from) && o.from[o.i].Group.Less(o.to[o.j].Group):
			return &o.from[o.i], nil, true
		case o.i == len(o.from) || o.to[o.j].Group.Less(o.from[o.i].Group):
			return nil, &o.to[o.j], true
		case o.from[o.i].Equal(o.to[o.j]):
			o.i, o.j = o.i+1, o.j+1
		default:
			return &o.from[o.i], &o.to[o.j], true
		}
	}
}

// queued reports whether changes wait to be numbered.
func (o *outState) queued() bool {
	_, _, ok := o.next()
	return ok
}

// owes reports whether an update waits to be numbered: changes, or the
// first update of a full state, which a full state of no groups is made
// of alone (a sync with its sweep), and which the peer must still get: it
// empties what the peer held of this node's, and its acknowledgement
// tells that the peer holds this node's state (holds; a path is direct
// only then).
func (o *outState) owes() bool { return o.syncing && !o.syncSent || o.queued() }

// fill numbers the next update into m: records of the changes while they
// fit maxMsgPayload, a group's sources cut into chunks where they do not.
func (o *outState) fill(m *Message) {
	o.seq++
	m.Update, m.Seq = true, o.seq
	if o.syncing && !o.syncSent {
		m.Sync, o.syncSent, o.syncSeq = true, true, o.seq
	}
	size := msgHeaderLen
	for {
		old, g, ok := o.next()
		if !ok {
			break
		}
		if g == nil {
			if size+recordHdrLen > maxMsgPayload {
				break
			}
			m.Records = append(m.Records, Record{Group: old.Group, Remove: true})
			size += recordHdrLen
			o.done(old, nil)
			continue
		}
		left := len(g.Sources) - o.at
		room := (maxMsgPayload - size - recordHdrLen) / 16
		if room < 0 || (room == 0 && left > 0) {
			break
		}
		k := min(room, left)
		m.Records = append(m.Records, Record{Group: g.Group, Mode: g.Mode, Hops: g.Hops,
			Total: uint16(len(g.Sources)), First: uint16(o.at), Sources: g.Sources[o.at : o.at+k]})
		size += recordLen(k)
		if o.at += k; o.at < len(g.Sources) {
			break // the message is full
		}
		o.done(old, g)
	}
	if !o.queued() {
		m.End = true
		if o.syncing {
			m.Sweep, o.syncing, o.digestOK = true, false, true
		}
		o.from, o.to, o.i, o.j, o.at = nil, nil, 0, 0, 0
	}
	m.Digest, m.DigestOK = o.digest, o.digestOK
}

// done notes that the change from old to new (either nil: none) went out
// whole: the digest follows it, and the cursors move past it.
func (o *outState) done(old, new *mld.GroupState) {
	if old != nil {
		o.digest = o.digest.sub(groupHash(old))
		o.i++
	}
	if new != nil {
		o.digest = o.digest.add(groupHash(new))
		o.j++
	}
	o.at = 0
}

// normalize returns state sorted by group, with at most MaxSourcesPerGroup
// sources in a group (the most a peer keeps), sharing state's storage
// where it can.
func normalize(state []mld.GroupState) []mld.GroupState {
	byGroup := func(a, b mld.GroupState) int { return a.Group.Compare(b.Group) }
	trim := slices.ContainsFunc(state, func(g mld.GroupState) bool { return len(g.Sources) > MaxSourcesPerGroup })
	if !trim && slices.IsSortedFunc(state, byGroup) {
		return state
	}
	out := slices.Clone(state)
	for i := range out {
		if len(out[i].Sources) > MaxSourcesPerGroup {
			out[i].Sources = out[i].Sources[:MaxSourcesPerGroup]
		}
	}
	slices.SortStableFunc(out, byGroup)
	return slices.CompactFunc(out, func(a, b mld.GroupState) bool { return a.Group == b.Group })
}

// sendStates sends the updates owed to peers, paced at StateRate, one to
// each peer in turn, so that one peer's large state (or one that keeps
// asking for it) holds up no other. It runs until ctx is done.
func (x *Exchange) sendStates(ctx context.Context) {
	t := x.clock.NewTimer(time.Hour)
	defer t.Stop()
	for {
		next := x.refresh()
		batch := x.nextUpdates()
		if len(batch) == 0 {
			if !next.IsZero() {
				t.Reset(max(next.Sub(x.clock.Now()), time.Millisecond))
			}
			select {
			case <-ctx.Done():
				return
			case <-x.wake:
			case <-t.C:
			}
			continue
		}
		for _, u := range batch {
			if x.pace.Wait(ctx) != nil {
				return
			}
			x.transmit(u.addr, u.b)
			x.sent(u.addr, u.b)
		}
	}
}

// sent notes that the update b went to the peer at addr.
func (x *Exchange) sent(addr netip.Addr, b []byte) {
	seq := binary.BigEndian.Uint64(b[24:32])
	x.mu.Lock()
	if r, ok := x.peers[addr]; ok {
		r.out.sentSeq = max(r.out.sentSeq, seq)
	}
	x.mu.Unlock()
}

// outgoing is an update to send to the peer at addr.
type outgoing struct {
	addr netip.Addr
	b    []byte
}

// refresh computes the state toward each peer whose state may have
// changed (or who is owed a full state) and whose updateGap has passed,
// and queues what changed. It returns when the next peer's gap ends (zero
// if none waits).
func (x *Exchange) refresh() time.Time {
	now := x.clock.Now()
	var due []netip.Addr
	var next time.Time
	x.mu.Lock()
	for a, r := range x.peers {
		o := &r.out
		if x.quietToward(a, r, now) || !(o.stale && !o.owes() || o.syncOwed) {
			continue
		}
		at := o.nextState
		if o.syncOwed && o.syncs.next.After(at) {
			at = o.syncs.next
		}
		if now.Before(at) {
			if next.IsZero() || at.Before(next) {
				next = at
			}
			continue
		}
		o.stale = false
		due = append(due, a)
	}
	x.mu.Unlock()
	if len(due) == 0 {
		return next
	}
	states := make([][]mld.GroupState, len(due))
	for i, a := range due {
		states[i] = normalize(x.state(a))
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for i, a := range due {
		r, ok := x.peers[a]
		if !ok {
			continue
		}
		o := &r.out
		o.nextState = now.Add(updateGap)
		if o.syncOwed && o.syncs.allow(now) {
			x.inflight -= o.dropInflight()
			o.startSync(states[i])
			x.Syncs.Add(1)
		} else if !o.owes() {
			o.queueChanges(states[i])
		} else {
			o.stale = true // a full state is on its way; the change follows it
		}
	}
	return next
}

// nextUpdates returns the next update for each peer that has one: one
// being sent again, or the next of its queue, while its window and all
// peers' have room.
func (x *Exchange) nextUpdates() []outgoing {
	now := x.clock.Now()
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []outgoing
	for a, r := range x.peers {
		o := &r.out
		if x.quietToward(a, r, now) {
			continue
		}
		switch {
		case o.rtx >= 0:
			b := x.patch(r, o.inflight[o.rtx].b, now)
			if o.rtx++; o.rtx == len(o.inflight) {
				o.rtx = -1
			}
			out = append(out, outgoing{a, b})
			x.Retransmits.Add(1)
		case o.owes() && len(o.inflight) < window && x.inflight < maxInflight:
			m := x.header(r, now)
			o.fill(&m)
			b := AppendMessage(nil, &m)
			if len(o.inflight) == 0 {
				o.progress = now
			}
			o.inflight = append(o.inflight, sent{m.Seq, b})
			x.inflight++
			out = append(out, outgoing{a, b})
			x.Updates.Add(1)
		}
	}
	return out
}

// resendDue starts sending again the updates that waited for an
// acknowledgement longer than the rto, and reports whether it did. The
// wait before the next time doubles, up to maxResendWait, unless the peer
// is alive (heard from lately: its path works) and acknowledged updates
// within ackedWithin (only loss stands in the way), when it stays rto: a
// peer that talks and never acknowledges is resent to less and less.
func (o *outState) resendDue(now time.Time, alive bool, rto time.Duration) bool {
	if len(o.inflight) == 0 || o.rtx >= 0 || now.Sub(o.progress) < o.rtoWait {
		return false
	}
	o.rtx, o.progress = 0, now
	o.rtoWait = min(2*o.rtoWait, maxResendWait)
	if alive && now.Sub(o.lastAck) < ackedWithin {
		o.rtoWait = rto
	}
	return true
}

// FullState encodes groups, as they are (unsorted, repeated: whatever a
// test or a tool wants to send), as the updates of a full state from a
// node of the given epoch, numbered from seq on. A group keeps at most
// 65,535 sources, what a record can announce.
func FullState(epoch, seq uint64, groups []mld.GroupState) [][]byte {
	o := newOutState(seq - 1)
	gs := slices.Clone(groups)
	for i := range gs {
		gs[i].Sources = gs[i].Sources[:min(len(gs[i].Sources), 1<<16-1)]
	}
	o.startSync(gs)
	var out [][]byte
	for o.owes() {
		m := Message{Epoch: epoch}
		o.fill(&m)
		out = append(out, AppendMessage(nil, &m))
	}
	return out
}
