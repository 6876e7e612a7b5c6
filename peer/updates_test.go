package peer

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/clock"
	"github.com/librecast/lcast/mld"
)

// link is a wire between exchanges that counts and checks what crosses
// it, and can lose it.
type link struct {
	mu      sync.Mutex
	nodes   map[netip.Addr]*Exchange
	loss    float64
	rng     *rand.Rand
	updates map[netip.Addr]int // updates sent, by sender
	syncs   map[netip.Addr]int // full states started, by sender
	wants   map[netip.Addr]int // requests for a full state, by sender
	longest int
	stops   map[netip.Addr]func()
	synced  map[syncID]bool
}

// syncID names a full state: its sender, the sender's epoch and the
// number of its first update. (Every node sends one, empty or not, and
// nodes number their updates alike.)
type syncID struct {
	from       netip.Addr
	epoch, seq uint64
}

func newLink() *link {
	return &link{nodes: map[netip.Addr]*Exchange{}, rng: rand.New(rand.NewPCG(1, 2)),
		updates: map[netip.Addr]int{}, syncs: map[netip.Addr]int{}, wants: map[netip.Addr]int{}, stops: map[netip.Addr]func(){}, synced: map[syncID]bool{}}
}

func (l *link) count(from netip.Addr, f func(updates, syncs, wants int) bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return f(l.updates[from], l.syncs[from], l.wants[from])
}

// state is a node's subscriptions that a test changes.
type state struct {
	mu     sync.Mutex
	groups []mld.GroupState
	per    func(netip.Addr) []mld.GroupState // if set, the state toward each peer
}

func (s *state) get(p netip.Addr) []mld.GroupState {
	if s.per != nil {
		return s.per(p)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.groups
}

func (s *state) set(groups []mld.GroupState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.groups = groups
}

// latest keeps the last state each peer's subscriptions were applied as.
type latest struct {
	mu   sync.Mutex
	by   map[netip.Addr][]mld.GroupState
	at   map[netip.Addr]time.Time
	done func() // called on each non-empty state applied, if set
}

func (l *latest) apply(p netip.Addr, _ bool, g []mld.GroupState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.by[p], l.at[p] = g, time.Now()
	if l.done != nil && len(g) > 0 {
		l.done()
	}
}

func (l *latest) get(p netip.Addr) []mld.GroupState {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.by[p]
}

// start runs an exchange at self with peers on the link until the test
// ends; its state is st's, what it applies goes to ap.
func (l *link) start(t *testing.T, self netip.Addr, peers []netip.Addr, clk clock.Clock, st *state, ap *latest) *Exchange {
	t.Helper()
	x := NewExchange(ExchangeConfig{Self: self, Peers: peers, State: st.get, Apply: ap.apply, Clock: clk,
		Log: slog.New(slog.DiscardHandler), Send: func(to netip.Addr, msg []byte) error {
			if len(msg) > maxMsgPayload {
				t.Errorf("a message of %d bytes", len(msg))
			}
			m, err := ParseMessage(msg)
			if err != nil {
				t.Errorf("sent a malformed message: %v", err)
			}
			l.mu.Lock()
			if m.Update {
				l.updates[self]++
			}
			if id := (syncID{self, m.Epoch, m.Seq}); m.Sync && !l.synced[id] {
				l.syncs[self]++ // once, however often it is sent
				l.synced[id] = true
			}
			if m.Want {
				l.wants[self]++
			}

			l.longest = max(l.longest, len(msg))
			y, lost := l.nodes[to], l.rng.Float64() < l.loss
			l.mu.Unlock()
			if y != nil && !lost {
				y.HandleControl(self, msg)
			}
			return nil
		}})
	l.mu.Lock()
	prev := l.stops[self]
	l.mu.Unlock()
	if prev != nil {
		prev() // a restart: the node before stops first
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	stop := func() { cancel(); wg.Wait() }
	l.mu.Lock()
	l.nodes[self], l.stops[self] = x, stop // before it runs: nothing it is sent is lost
	l.mu.Unlock()
	wg.Go(func() { x.Run(ctx) })
	t.Cleanup(stop)
	return x
}

func newLatest() *latest {
	return &latest{by: map[netip.Addr][]mld.GroupState{}, at: map[netip.Addr]time.Time{}}
}

// ssm returns group joined from n numbered sources.
func ssm(group netip.Addr, n int) mld.GroupState {
	g := mld.GroupState{Group: group, Mode: mld.Include, Sources: make([]netip.Addr, n)}
	for i := range g.Sources {
		g.Sources[i] = numbered(sourcesBase, i)
	}
	return g
}

// many returns n groups from groupsBase on, joined from any source.
func many(n int) []mld.GroupState {
	g := make([]mld.GroupState, n)
	for i := range g {
		g[i] = mld.GroupState{Group: numbered(groupsBase, i), Mode: mld.Exclude, Sources: []netip.Addr{}}
	}
	return g
}

// with returns groups and g, sorted.
func with(groups []mld.GroupState, g ...mld.GroupState) []mld.GroupState {
	return normalize(append(append([]mld.GroupState(nil), groups...), g...))
}

// waitState waits until ap holds want for the peer at p.
func waitState(t *testing.T, ap *latest, p netip.Addr, want []mld.GroupState, within time.Duration, during func()) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !reflect.DeepEqual(ap.get(p), want) {
		if time.Now().After(deadline) {
			got := ap.get(p)
			t.Fatalf("%v's subscriptions: %d groups, want %d", p, len(got), len(want))
		}
		if during != nil {
			during()
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// A state of any shape arrives whole: groups of 120 and 1,024 sources
// (cut across messages) and 300 more; then one change costs one update.
func TestUpdatesCarryAnyState(t *testing.T) {

	l, st, ap := newLink(), &state{}, newLatest()
	want := with(many(300), ssm(netip.MustParseAddr("ff3e::5"), 120), ssm(netip.MustParseAddr("ff3e::6"), MaxSourcesPerGroup))
	st.set(want)
	l.start(t, addrB, []netip.Addr{addrA}, nil, &state{}, ap) // first: nothing A sends is lost
	a := l.start(t, addrA, []netip.Addr{addrB}, nil, st, newLatest())
	waitState(t, ap, addrA, want, 5*time.Second, nil)
	var before int
	l.count(addrA, func(u, _, _ int) bool { before = u; return true })
	want = with(want[1:], mld.GroupState{Group: netip.MustParseAddr("ff1e::77"), Mode: mld.Exclude, Sources: []netip.Addr{}})
	st.set(want)
	a.Changed()
	waitState(t, ap, addrA, want, 5*time.Second, nil)
	l.count(addrA, func(u, s, _ int) bool {
		t.Logf("full state: %d updates; the change: %d; full states %d; longest message %d bytes", before, u-before, s, l.longest)
		if u-before != 1 || s != 1 {
			t.Errorf("the change took %d updates and %d full states were sent, want 1 and 1", u-before, s)
		}
		return true
	})
}

// A change that takes more updates than the window (10,000 groups, 233
// updates, joined and then left) arrives whole though nothing else
// happens meanwhile: the acknowledgements that make room in the window
// wake the sender, which would otherwise leave the rest queued until the
// next change (a program that left 10,000 groups left thousands at its
// peer for good).
func TestChangeBeyondWindowArrives(t *testing.T) {
	l, st, ap := newLink(), &state{}, newLatest()
	all := many(10000)
	st.set(all)
	l.start(t, addrB, []netip.Addr{addrA}, nil, &state{}, ap) // first: nothing A sends is lost
	a := l.start(t, addrA, []netip.Addr{addrB}, nil, st, newLatest())
	start := time.Now()
	waitState(t, ap, addrA, all, 10*time.Second, nil)
	joined := time.Since(start)
	st.set(nil)
	a.Changed()
	waitState(t, ap, addrA, nil, 10*time.Second, nil)
	l.count(addrA, func(u, _, _ int) bool {
		t.Logf("%d groups joined in %v and left in %v: %d updates, window %d", len(all), joined, time.Since(start)-joined, u, window)
		if u <= 2*window {
			t.Errorf("%d updates: the test does not go beyond the window", u)
		}
		return true
	})
}

// A node with no groups still sends its (empty) full state and has it
// acknowledged: the peer applies it, and each finds the path to the other
// direct, which needs the peer to hold this node's state. (An empty full
// state, a sync with its sweep and no records, was never sent: two homes
// with no groups never found their hub direct, so unicast between them
// never went through it.)
func TestEmptyStateSent(t *testing.T) {
	l, apA, apB := newLink(), newLatest(), newLatest()
	b := l.start(t, addrB, []netip.Addr{addrA}, nil, &state{}, apB)
	a := l.start(t, addrA, []netip.Addr{addrB}, nil, &state{}, apA)
	applied := func(ap *latest, p netip.Addr) bool {
		ap.mu.Lock()
		defer ap.mu.Unlock()
		_, ok := ap.by[p]
		return ok
	}
	until(t, "each applies the other's empty state and finds the path direct", func() bool {
		return applied(apB, addrA) && applied(apA, addrB) && a.Direct(addrB) && b.Direct(addrA)
	})
}

// A program that joins and leaves a group every millisecond costs a peer
// at most one update per updateGap, and another program's join arrives
// at once meanwhile.
func TestChurnCoalesced(t *testing.T) {
	l, st, ap := newLink(), &state{}, newLatest()
	base := many(2000)
	st.set(base)
	l.start(t, addrB, []netip.Addr{addrA}, nil, &state{}, ap) // first: nothing A sends is lost
	a := l.start(t, addrA, []netip.Addr{addrB}, nil, st, newLatest())
	waitState(t, ap, addrA, base, 10*time.Second, nil)
	var before int
	l.count(addrA, func(u, _, _ int) bool { before = u; return true })
	toggled := mld.GroupState{Group: netip.MustParseAddr("ff1e::dead"), Mode: mld.Exclude, Sources: []netip.Addr{}}
	joined := mld.GroupState{Group: netip.MustParseAddr("ff1e:1::77"), Mode: mld.Exclude, Sources: []netip.Addr{}}
	var withJoin atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const churn = time.Second
	wg.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			g := base
			if withJoin.Load() {
				g = with(g, joined)
			}
			if i%2 == 0 {
				g = with(g, toggled)
			}
			st.set(g)
			a.Changed()
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	start := time.Now()
	time.Sleep(churn / 2)
	withJoin.Store(true)
	joinedAt := time.Now()
	deadline := joinedAt.Add(5 * time.Second)
	for !containsGroup(ap.get(addrA), joined.Group) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	latency := time.Since(joinedAt)
	time.Sleep(time.Until(start.Add(churn)))
	close(stop)
	wg.Wait()
	elapsed := time.Since(start)
	l.count(addrA, func(u, s, _ int) bool {
		n := u - before
		t.Logf("%d updates in %v of churn (updateGap %v); the join arrived after %v; full states %d", n, elapsed, updateGap, latency, s)
		if limit := int(elapsed/updateGap) + 5; n > limit {
			t.Errorf("%d updates in %v, want at most %d", n, elapsed, limit)
		}
		if s != 1 {
			t.Errorf("%d full states, want 1", s)
		}
		return true
	})
	// updateGap, plus room for a loaded machine under -race.
	if latency > time.Second {
		t.Errorf("the join arrived after %v", latency)
	}
}

func containsGroup(groups []mld.GroupState, g netip.Addr) bool {
	for _, s := range groups {
		if s.Group == g {
			return true
		}
	}
	return false
}

// Over a link that loses a third of the messages each way, a state
// changed 200 times converges on the last, with no full state beyond the
// first.
func TestUpdatesConvergeUnderLoss(t *testing.T) {
	l, st, ap := newLink(), &state{}, newLatest()
	l.loss = 0.33
	clk := clock.NewWarp()
	rng := rand.New(rand.NewPCG(3, 4))
	cur := many(50)
	st.set(cur)
	a := l.start(t, addrA, []netip.Addr{addrB}, clk, st, newLatest())
	l.start(t, addrB, []netip.Addr{addrA}, clk, &state{}, ap)
	for range 200 {
		i := rng.IntN(400)
		g := mld.GroupState{Group: numbered(groupsBase, i), Mode: mld.Exclude, Sources: []netip.Addr{}}
		if containsGroup(cur, g.Group) {
			cur = removeGroup(cur, g.Group)
		} else {
			cur = with(cur, g)
		}
		st.set(cur)
		a.Changed()
		clk.Advance(5 * time.Millisecond)
		time.Sleep(time.Millisecond)
	}
	defer func() {
		if t.Failed() {
			l.mu.Lock()
			b := l.nodes[addrB]
			l.mu.Unlock()
			a.mu.Lock()
			o := a.peers[addrB].out
			t.Logf("A out: seq %d acked %d sent %d syncing %v syncSeq %d digestOK %v inflight %d rtx %d rto %v owed %v stale %v queued %v told %d",
				o.seq, o.acked, o.sentSeq, o.syncing, o.syncSeq, o.digestOK, len(o.inflight), o.rtx, o.rtoWait, o.syncOwed, o.stale, o.queued(), len(o.told))
			a.mu.Unlock()
			b.mu.Lock()
			in := b.peers[addrA].in
			t.Logf("B in: applied %d synced %v groups %d wantOwed %v dirty %v; bad %d; A resent %d; first in flight %d, progress %v ago",
				in.applied, in.synced, len(in.groups), in.wantOwed, in.dirty, b.BadMessages.Load(), a.Retransmits.Load(), o.inflight[0].seq, clk.Now().Sub(o.progress))
			b.mu.Unlock()
		}
	}()
	waitState(t, ap, addrA, cur, 20*time.Second, func() { clk.Advance(10 * time.Millisecond) })
	l.count(addrA, func(u, s, _ int) bool {
		t.Logf("%d updates (resent %d), %d full states", u, a.Retransmits.Load(), s)
		return true
	})
}

func removeGroup(groups []mld.GroupState, g netip.Addr) []mld.GroupState {
	var out []mld.GroupState
	for _, s := range groups {
		if s.Group != g {
			out = append(out, s)
		}
	}
	return out
}

// A receiver whose copy drifted (here: a group lost from it behind the
// exchange's back) notices at the next hello, by the digest, and asks for
// the full state, which mends it; a restarted sender's full state
// replaces what it subscribed to before.
func TestDigestMendsDrift(t *testing.T) {
	l, st, ap := newLink(), &state{}, newLatest()
	clk := clock.NewWarp()
	want := many(100)
	st.set(want)
	l.start(t, addrA, []netip.Addr{addrB}, clk, st, newLatest())
	b := l.start(t, addrB, []netip.Addr{addrA}, clk, &state{}, ap)
	waitState(t, ap, addrA, want, 5*time.Second, nil)
	// What the first state took: one full state, or two if A's first
	// went out before B was there to take it (B asks on A's hello).
	var syncs0, wants0 int
	l.count(addrA, func(_, s, _ int) bool { syncs0 = s; return true })
	l.count(addrB, func(_, _, w int) bool { wants0 = w; return true })
	b.mu.Lock()
	r := b.peers[addrA]
	r.in.remove(want[7].Group, &b.held)
	r.in.dirty = false
	b.mu.Unlock()
	clk.Advance(HelloInterval + tickInterval) // a hello comes (and the next one only a second of real time later)
	until(t, "the lost group is sent again", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		_, mended := b.peers[addrA].in.groups[want[7].Group]
		return mended
	})
	waitState(t, ap, addrA, want, 5*time.Second, nil)
	l.count(addrA, func(_, s, _ int) bool {
		if s-syncs0 != 1 {
			t.Errorf("%d full states after the first (%d), want 1: the mending one", s-syncs0, syncs0)
		}
		return true
	})
	l.count(addrB, func(_, _, w int) bool {
		if w-wants0 != 1 {
			t.Errorf("%d requests for the full state after the first state (%d before), want 1", w-wants0, wants0)
		}
		return true
	})

	// A restarts with another state: its first full state's sweep
	// removes what it no longer subscribes to.
	st2 := &state{}
	want2 := many(3)
	st2.set(want2)
	l.start(t, addrA, []netip.Addr{addrB}, clk, st2, newLatest())
	waitState(t, ap, addrA, want2, 5*time.Second, func() { clk.Advance(tickInterval) })
}

// A receiver that restarts, while for a second nothing reaches it, gets
// the sender's full state again.
func TestReceiverRestartGetsState(t *testing.T) {
	l, st, ap := newLink(), &state{}, newLatest()
	clk := clock.NewWarp()
	want := many(90)
	st.set(want)
	l.start(t, addrB, []netip.Addr{addrA}, clk, st, newLatest())
	l.start(t, addrA, []netip.Addr{addrB}, clk, &state{}, ap)
	waitState(t, ap, addrB, want, 5*time.Second, nil)
	l.mu.Lock()
	l.loss = 1
	l.mu.Unlock()
	ap2 := newLatest()
	l.start(t, addrA, []netip.Addr{addrB}, clk, &state{}, ap2)
	warp(clk, time.Second)
	l.mu.Lock()
	l.loss = 0
	b, a := l.nodes[addrB], l.nodes[addrA]
	l.mu.Unlock()
	defer func() {
		if t.Failed() {
			b.mu.Lock()
			o := b.peers[addrA].out
			t.Logf("B out: seq %d acked %d sent %d syncing %v syncSent %v syncSeq %d digestOK %v inflight %d rtx %d owed %v stale %v queued %v next %v",
				o.seq, o.acked, o.sentSeq, o.syncing, o.syncSent, o.syncSeq, o.digestOK, len(o.inflight), o.rtx, o.syncOwed, o.stale, o.queued(), o.syncs.next.Sub(clk.Now()))
			b.mu.Unlock()
			a.mu.Lock()
			in := a.peers[addrB].in
			t.Logf("A in: applied %d synced %v groups %d wantOwed %v", in.applied, in.synced, len(in.groups), in.wantOwed)
			a.mu.Unlock()
		}
	}()
	waitState(t, ap2, addrB, want, 5*time.Second, func() { clk.Advance(tickInterval) })
}

// Queueing a full state or a difference allocates nothing: a relay owing
// each of its members a state of 262,144 groups holds no copy per member.
func TestQueueCostsNoMemory(t *testing.T) {
	o := newOutState(0)
	st, other := many(100000), many(99999)
	if n := testing.AllocsPerRun(10, func() {
		o.startSync(st)
		o.queueChanges(other)
	}); n != 0 {
		t.Fatalf("%v allocations to queue a state", n)
	}
}
