package peer

import (
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/librecast/lcast/mld"
)

// What peers can make this node hold (docs/design.md, "Bounded memory").
// Per peer, MaxGroupsPerPeer groups, MaxSourcesPerGroup sources in one
// and MaxSourcesPerPeer in all; over all peers together,
// MaxGroupsAllPeers groups and MaxSourcesAllPeers sources. Sources are
// counted by the capacity of the arrays that hold them (a group's array is
// sized when its first chunk arrives, to what it may hold), a chunked
// group still arriving counts as held, and a peer's map of groups is
// rebuilt when it shrinks to a quarter of its peak, so that what is
// counted is what is allocated. Measured at 144 bytes a group (its map
// entry and packed record; TestCapsBoundWhatPeersHold fails above 192) and
// 24 a source (netip.Addr), the exchange holds at most 2^19 * (192 + 24)
// bytes = 108 MiB of peers' subscriptions (84 MiB as measured), whatever
// the peers send. The router's copy shares the source arrays; its own
// per-group entries and tables are not counted here. Beyond a
// cap, groups are dropped and sources trimmed, and both counted (OverCap,
// SourcesOverCap). A group arriving in chunks may hold its sources beside
// the old ones it replaces until it is complete: at most one group of
// MaxSourcesPerGroup per peer beyond the caps.
const (
	MaxGroupsPerPeer   = 1 << 18
	MaxSourcesPerGroup = 1024
	MaxSourcesPerPeer  = 1 << 18
	MaxGroupsAllPeers  = 1 << 19
	MaxSourcesAllPeers = 1 << 19
	// pendingHold is how long a group whose sources come in chunks may
	// wait for its next chunk: then it is dropped (Incomplete) and the
	// peer asked for its full state.
	pendingHold = 2 * time.Second
	// minSyncGap is the least time between two full states a receiver
	// takes from a peer within one epoch (each ends in a pass over the
	// peer's groups); a sender's come minRTO apart at least, and one
	// refused is sent again.
	minSyncGap = minRTO / 2
)

// budget is what all peers' states hold together, under the exchange's
// lock.
type budget struct{ groups, sources int }

// inGroup is a group a peer subscribed to (its address is its key in
// inState.groups), and the update that last set it, in which era (for the
// sweep that ends a full state): 40 bytes, packed, as there may be 2^19.
type inGroup struct {
	sources []netip.Addr
	mark    uint64
	era     uint32
	mode    mld.FilterMode
	hops    uint8
}

// state returns ig as the group's state.
func (ig *inGroup) state(group netip.Addr) mld.GroupState {
	return mld.GroupState{Group: group, Mode: ig.mode, Sources: ig.sources, Hops: ig.hops}
}

// pending is a group whose sources arrive in chunks.
type pending struct {
	g      mld.GroupState // Sources has the capacity counted for it
	total  int            // sources the peer announced
	have   int            // sources received (kept or trimmed)
	drop   bool           // over the groups' cap: received, not kept
	since  time.Time      // when its last chunk came
	isNew  bool           // the group was not held before
	update uint64
}

// inState is what one peer subscribed to at this node, learnt from its
// updates (subscription.go), under the exchange's lock.
type inState struct {
	applied uint64 // the peer's last update applied, in order
	synced  bool   // a full state (sync) of the peer's epoch was taken
	syncAt  uint64 // the update that started it
	// era counts the peer's restarts: marks of an earlier era are older
	// than any of this one, so a restart costs no pass over the groups.
	era      uint32
	lastSync time.Time // when the last full state started
	groups   map[netip.Addr]inGroup
	peak     int // the most groups groups held since it was made
	sources  int // capacity of the source arrays held (and pending)
	digest   Digest
	pend     *pending
	// dirty tells that groups changed since they were last handed to
	// the router (at lastApply).
	dirty     bool
	lastApply time.Time
	ackOwed   bool    // an update came that was not acknowledged yet
	ackSent   uint64  // the last update acknowledged
	asks      backoff // limits the requests for a full state
	wantOwed  bool    // a request waits for asks
}

// counts are what taking an update dropped.
type counts struct{ groups, sources, incomplete int }

// take applies update m (in order: see subscription.go) and reports
// whether the peer's full state is to be asked for.
func (in *inState) take(m *Message, b *budget, now time.Time, c *counts) (want bool) {
	switch {
	case m.Sync && in.synced && m.Seq > in.applied && now.Sub(in.lastSync) < minSyncGap:
		in.ackOwed = true // refused for now: the sender sends it again
		return false
	case m.Sync && (!in.synced || m.Seq > in.applied):
		in.dropPending(b, c)
		in.dirty = in.dirty || !in.synced // the first state is applied, empty or not
		in.synced, in.syncAt, in.applied, in.lastSync = true, m.Seq, m.Seq-1, now
	case !in.synced:
		return true // no full state to build on
	case m.Seq != in.applied+1:
		in.ackOwed = true // a repeat, or one after a gap: acknowledge
		return false
	}
	in.applied, in.ackOwed = m.Seq, true
	for i := range m.Records {
		if !in.record(&m.Records[i], m.Seq, b, now, c) {
			in.dropPending(b, c)
			want = true
			break
		}
	}
	if m.Sweep {
		in.sweep(b)
	}
	return want
}

// record applies one record of update seq; false if it does not follow
// what came before (a chunk of another group).
func (in *inState) record(rec *Record, seq uint64, b *budget, now time.Time, c *counts) bool {
	if rec.Remove {
		if in.pend != nil {
			return false
		}
		in.remove(rec.Group, b)
		return true
	}
	if rec.First == 0 {
		if in.pend != nil {
			return false
		}
		in.startPending(rec, seq, b, now, c)
	} else if p := in.pend; p == nil || p.g.Group != rec.Group || p.total != int(rec.Total) || p.have != int(rec.First) {
		return false
	}
	p := in.pend
	k := min(cap(p.g.Sources)-len(p.g.Sources), len(rec.Sources))
	p.g.Sources = append(p.g.Sources, rec.Sources[:k]...)
	p.have += len(rec.Sources)
	p.since = now
	if !p.drop {
		c.sources += len(rec.Sources) - k
	}
	if p.have == p.total {
		in.finish(b)
	}
	return true
}

// startPending starts the group of rec, sizing its sources to what it may
// hold (and counting them held), or marking it dropped when no group fits.
func (in *inState) startPending(rec *Record, seq uint64, b *budget, now time.Time, c *counts) {
	if in.groups == nil {
		in.groups = map[netip.Addr]inGroup{}
	}
	old, had := in.groups[rec.Group]
	p := &pending{g: mld.GroupState{Group: rec.Group, Mode: rec.Mode, Hops: rec.Hops}, total: int(rec.Total),
		since: now, isNew: !had, update: seq}
	if !had && (len(in.groups) >= MaxGroupsPerPeer || b.groups >= MaxGroupsAllPeers) {
		p.drop = true
		c.groups++
	} else {
		if !had {
			b.groups++ // a new group counts from its first chunk
		}
		// The group's old sources are released when it is replaced,
		// so they count as room here.
		held := cap(old.sources)
		room := min(MaxSourcesPerGroup, MaxSourcesPerPeer-in.sources+held, MaxSourcesAllPeers-b.sources+held)
		n := max(0, min(p.total, room))
		p.g.Sources = make([]netip.Addr, 0, n)
		in.sources += n
		b.sources += n
	}
	in.pend = p
}

// finish puts the pending group, now complete, in place of the old one.
func (in *inState) finish(b *budget) {
	p := in.pend
	in.pend = nil
	if p.drop {
		return
	}
	slices.SortFunc(p.g.Sources, netip.Addr.Compare)
	p.g.Sources = slices.Compact(p.g.Sources)
	if old, ok := in.groups[p.g.Group]; ok {
		in.release(p.g.Group, old, b)
		b.groups++ // still one group: the new one was counted at its start only if new
	}
	in.groups[p.g.Group] = inGroup{sources: p.g.Sources, mark: p.update, era: in.era, mode: p.g.Mode, hops: p.g.Hops}
	in.peak = max(in.peak, len(in.groups))
	in.digest = in.digest.add(groupHash(&p.g))
	in.dirty = true
}

// release takes group, held as old, out of the counts and digest.
func (in *inState) release(group netip.Addr, old inGroup, b *budget) {
	g := old.state(group)
	in.digest = in.digest.sub(groupHash(&g))
	in.sources -= cap(old.sources)
	b.sources -= cap(old.sources)
	b.groups--
}

// remove removes group.
func (in *inState) remove(group netip.Addr, b *budget) {
	old, ok := in.groups[group]
	if !ok {
		return
	}
	in.release(group, old, b)
	delete(in.groups, group)
	in.dirty = true
	in.shrink()
}

// shrink rebuilds the map of groups once it holds a quarter of its peak:
// a Go map keeps the room of its peak.
func (in *inState) shrink() {
	if in.peak > 1024 && len(in.groups) < in.peak/4 {
		in.groups = maps.Clone(in.groups)
		in.peak = len(in.groups)
	}
}

// sweep removes the groups not set since the full state started.
func (in *inState) sweep(b *budget) {
	for g, ig := range in.groups {
		if ig.era != in.era || ig.mark < in.syncAt {
			in.release(g, ig, b)
			delete(in.groups, g)
			in.dirty = true
		}
	}
	in.shrink()
}

// dropPending drops a group still arriving, counting it incomplete.
func (in *inState) dropPending(b *budget, c *counts) {
	if in.pend == nil {
		return
	}
	n := cap(in.pend.g.Sources)
	in.sources -= n
	b.sources -= n
	if in.pend.isNew && !in.pend.drop {
		b.groups--
	}
	in.pend = nil
	c.incomplete++
}

// restarted is called when the peer has a new epoch: its updates are
// numbered afresh, and what it subscribed to stays until the sweep of its
// first full state, which removes every group of an earlier era.
func (in *inState) restarted(b *budget, c *counts) {
	in.dropPending(b, c)
	in.applied, in.synced, in.syncAt = 0, false, 0
	in.era++
}

// forget drops everything the peer subscribed to.
func (in *inState) forget(b *budget, c *counts) {
	in.dropPending(b, c)
	for g, ig := range in.groups {
		in.release(g, ig, b)
	}
	dirty := in.dirty || len(in.groups) > 0
	*in = inState{asks: in.asks, lastApply: in.lastApply, dirty: dirty}
}

// applyDue reports whether the groups may be handed to the router at
// now: applyGap after the last time, more for each 10,000 groups.
func (in *inState) applyDue(now time.Time) bool { return !now.Before(in.applyAt()) }

// applyAt returns when the groups may be handed to the router next.
func (in *inState) applyAt() time.Time {
	return in.lastApply.Add(applyGap * time.Duration(1+len(in.groups)/10000))
}

// snapshot returns the groups held, sorted by group, for the router (the
// source arrays are shared and never changed: a change replaces them).
func (in *inState) snapshot() []mld.GroupState {
	if len(in.groups) == 0 {
		return nil
	}
	out := make([]mld.GroupState, 0, len(in.groups))
	for g, ig := range in.groups {
		out = append(out, ig.state(g))
	}
	slices.SortFunc(out, func(a, b mld.GroupState) int { return a.Group.Compare(b.Group) })
	return out
}

// backoff limits how often something is done: at once the first time,
// then after minRTO, doubling up to maxResendWait; after four times that
// without, at once again.
type backoff struct {
	next, last time.Time
	wait       time.Duration
}

// allow reports whether it may be done at now, and if so notes it.
func (b *backoff) allow(now time.Time) bool {
	if now.Before(b.next) {
		return false
	}
	if now.Sub(b.last) > 4*maxResendWait {
		b.wait = 0
	}
	b.wait = min(max(2*b.wait, minRTO), maxResendWait)
	b.next, b.last = now.Add(b.wait), now
	return true
}

// reset lets it be done at once again.
func (b *backoff) reset() { *b = backoff{} }
