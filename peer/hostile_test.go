package peer

import (
	"context"
	"log/slog"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/clock"
	"github.com/librecast/lcast/mld"
)

// bigUpdate returns one update (larger than any message: take does not
// care) that starts a full state of groups and sweeps.
func bigUpdate(groups []mld.GroupState) *Message {
	m := &Message{Update: true, Sync: true, Sweep: true, End: true, Epoch: 1, Seq: 1}
	for _, g := range groups {
		m.Records = append(m.Records, Record{Group: g.Group, Mode: g.Mode, Total: uint16(len(g.Sources)), Sources: g.Sources})
	}
	return m
}

// What peers can make this node hold is bounded per peer and over all
// peers, by the capacity of what holds it; the rest is counted.
func TestCapsBoundWhatPeersHold(t *testing.T) {
	var b budget
	peers := make([]inState, 3)
	var c counts
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range peers {
		peers[i].take(bigUpdate(many(MaxGroupsPerPeer+1000)), &b, t0, &c)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perGroup := float64(after.HeapAlloc-before.HeapAlloc) / float64(b.groups)
	t.Logf("%d groups held by 3 peers offering %d each: %.0f bytes a group", b.groups, MaxGroupsPerPeer+1000, perGroup)
	if len(peers[0].groups) != MaxGroupsPerPeer || len(peers[1].groups) != MaxGroupsPerPeer || len(peers[2].groups) != 0 ||
		b.groups != MaxGroupsAllPeers {
		t.Fatalf("held %d, %d and %d groups (%d in all)", len(peers[0].groups), len(peers[1].groups), len(peers[2].groups), b.groups)
	}
	if want := 3*(MaxGroupsPerPeer+1000) - MaxGroupsAllPeers; c.groups != want {
		t.Fatalf("%d groups counted over the caps, want %d", c.groups, want)
	}
	if perGroup > 192 {
		t.Errorf("%.0f bytes a group held, the bound in recvstate.go reckons 192", perGroup)
	}
	runtime.KeepAlive(peers)

	// Sources: 65,535 in one group keep MaxSourcesPerGroup; 300 groups of
	// MaxSourcesPerGroup keep MaxSourcesPerPeer in all; three such peers,
	// MaxSourcesAllPeers.
	b, c = budget{}, counts{}
	var one inState
	one.take(bigUpdate([]mld.GroupState{ssm(netip.MustParseAddr("ff3e::1"), 1<<16-1)}), &b, t0, &c)
	if got := len(one.groups[netip.MustParseAddr("ff3e::1")].sources); got != MaxSourcesPerGroup || c.sources != 1<<16-1-MaxSourcesPerGroup {
		t.Fatalf("kept %d of 65,535 sources, counted %d", got, c.sources)
	}
	one.forget(&b, &c)
	if b != (budget{}) {
		t.Fatalf("forgetting left %+v held", b)
	}
	var wide []mld.GroupState
	for i := range 300 {
		g := ssm(numbered(groupsBase, i), MaxSourcesPerGroup)
		wide = append(wide, g)
	}
	c = counts{}
	for i := range peers {
		peers[i] = inState{}
		peers[i].take(bigUpdate(wide), &b, t0, &c)
		if peers[i].sources > MaxSourcesPerPeer {
			t.Fatalf("peer %d holds %d sources", i, peers[i].sources)
		}
	}
	if b.sources != MaxSourcesAllPeers || c.sources != 3*300*MaxSourcesPerGroup-MaxSourcesAllPeers {
		t.Fatalf("held %d sources, counted %d over the caps", b.sources, c.sources)
	}
}

// hostile is a peer whose every message the test writes; it records what
// the exchange sends it.
type hostile struct {
	mu   sync.Mutex
	sent []*Message
}

func (h *hostile) send(_ netip.Addr, msg []byte) error {
	m, err := ParseMessage(msg)
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.sent = append(h.sent, m)
	h.mu.Unlock()
	return nil
}

func (h *hostile) wants() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.sent {
		if m.Want {
			n++
		}
	}
	return n
}

// runHostile runs an exchange at addrA whose peer addrB is h, on clk.
func runHostile(t *testing.T, clk clock.Clock, h *hostile, apply func(netip.Addr, bool, []mld.GroupState)) *Exchange {
	if apply == nil {
		apply = func(netip.Addr, bool, []mld.GroupState) {}
	}
	x := NewExchange(ExchangeConfig{Self: addrA, Peers: []netip.Addr{addrB, addrC}, State: noState, Apply: apply,
		Send: h.send, Log: slog.New(slog.DiscardHandler), Clock: clk})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { x.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return x
}

func held(x *Exchange) budget {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.held
}

func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// A peer that starts a group of 1,000 sources and withholds the rest
// holds the room for them only pendingHold: then the group is dropped and
// counted, and the peer asked for its full state.
func TestWithheldChunksExpire(t *testing.T) {
	clk := clock.NewWarp()
	h := &hostile{}
	x := runHostile(t, clk, h, nil)
	g := ssm(netip.MustParseAddr("ff3e::1"), 1000)
	msgs := FullState(9, 1, []mld.GroupState{g})
	x.HandleControl(addrB, msgs[0]) // of 2, the first only
	until(t, "the first chunk is held", func() bool { return held(x).sources == 1000 })
	wants := h.wants()
	warp(clk, pendingHold+2*tickInterval)
	until(t, "the group is dropped", func() bool { return held(x) == budget{} && x.Incomplete.Load() == 1 })
	until(t, "the full state is asked for", func() bool { return h.wants() > wants })
}

// Messages longer than lcast sends are dropped before they are queued.
func TestOversizedMessagesDropped(t *testing.T) {
	h := &hostile{}
	x := runHostile(t, nil, h, nil)
	big := append(AppendMessage(nil, &Message{Epoch: 9}), make([]byte, 64<<10)...)
	for range 10 {
		x.HandleControl(addrB, big)
	}
	if n := x.BadMessages.Load(); n != 10 || len(x.inbox) != 0 {
		t.Fatalf("%d counted, %d queued", n, len(x.inbox))
	}
}

// A peer whose digests never match what it sent gets requests for its
// full state less and less often, not one per message.
func TestInconsistentDigestsBackOff(t *testing.T) {
	clk := clock.NewWarp()
	h := &hostile{}
	x := runHostile(t, clk, h, nil)
	for _, m := range FullState(9, 1, many(3)) {
		x.HandleControl(addrB, m)
	}
	until(t, "the state is taken", func() bool { return held(x).groups == 3 })
	for i := range 1000 { // 10 s
		x.HandleControl(addrB, AppendMessage(nil, &Message{Epoch: 9, Seq: 1, DigestOK: true, Digest: Digest{byte(i), 1}}))
		clk.Advance(10 * time.Millisecond)
		time.Sleep(100 * time.Microsecond)
	}
	// At once, then after 0.25, 0.75, 1.75, 3.75 and 7.75 s.
	if n := h.wants(); n < 2 || n > 7 {
		t.Fatalf("%d requests for the full state in 10 s of bad digests, want 6", n)
	}
}

// updatesOf encodes groups as updates (adding them) from a node of epoch,
// numbered from seq on.
func updatesOf(epoch, seq uint64, groups []mld.GroupState) [][]byte {
	o := newOutState(seq - 1)
	o.queueChanges(groups)
	var out [][]byte
	for o.queued() {
		m := Message{Epoch: epoch}
		o.fill(&m)
		out = append(out, AppendMessage(nil, &m))
	}
	return out
}

// A peer that floods more groups than its cap gets MaxGroupsPerPeer of
// them, the rest counted, while another peer's state is applied. (The
// peer's first MaxGroupsPerPeer-2000 groups are put in place directly, to
// spare the race detector 6,000 messages.)
func TestFloodBounded(t *testing.T) {
	var mu sync.Mutex
	appliedBy := map[netip.Addr]int{}
	h := &hostile{}
	x := runHostile(t, nil, h, func(p netip.Addr, _ bool, g []mld.GroupState) {
		mu.Lock()
		appliedBy[p] = len(g)
		mu.Unlock()
	})
	all := many(MaxGroupsPerPeer + 5000)
	first := MaxGroupsPerPeer - 2000
	x.HandleControl(addrB, FullState(9, 1, nil)[0])
	until(t, "the hostile peer's empty state is taken", func() bool {
		x.mu.Lock()
		defer x.mu.Unlock()
		return x.peers[addrB].in.applied == 1
	})
	x.mu.Lock()
	var c counts
	r := x.peers[addrB]
	pre := bigUpdate(all[:first])
	pre.Sync, pre.Sweep, pre.Seq = false, false, 2
	r.in.take(pre, &x.held, x.clock.Now(), &c)
	x.mu.Unlock()
	msgs := updatesOf(9, 3, all[first:])
	for i, m := range msgs {
		x.HandleControl(addrB, m)
		if i == len(msgs)/2 {
			for _, m := range FullState(11, 1, many(2)) {
				x.HandleControl(addrC, m)
			}
		}
		for len(x.inbox) > inboxLen/2 {
			time.Sleep(time.Millisecond)
		}
	}
	until(t, "both states applied", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return appliedBy[addrB] == MaxGroupsPerPeer && appliedBy[addrC] == 2
	})
	if n := x.OverCap.Load(); n != 5000 || held(x).groups != MaxGroupsPerPeer+2 {
		t.Fatalf("%d counted over the cap, %d groups held", n, held(x).groups)
	}
}

// A peer that claims a new start in every message (a new epoch, asking
// for the state) gets at most one full state per minRTO, not one per
// message.
func TestRestartsDoNotAmplify(t *testing.T) {
	const flips, every = 100, 10 * time.Millisecond
	clk := clock.NewWarp()
	var mu sync.Mutex
	syncs := map[uint64]bool{}
	x := NewExchange(ExchangeConfig{Self: addrA, Peers: []netip.Addr{addrB}, State: func(netip.Addr) []mld.GroupState { return exclude("ff1e::1") },
		Apply: func(netip.Addr, bool, []mld.GroupState) {}, Log: slog.New(slog.DiscardHandler), Clock: clk,
		Send: func(_ netip.Addr, msg []byte) error {
			if m, err := ParseMessage(msg); err == nil && m.Sync {
				mu.Lock()
				syncs[m.Seq] = true
				mu.Unlock()
			}
			return nil
		}})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { x.Run(ctx) })
	start := clk.Now()
	for i := range flips {
		x.HandleControl(addrB, AppendMessage(nil, &Message{Want: true, Epoch: uint64(i + 1)}))
		clk.Advance(every)
		time.Sleep(time.Millisecond)
	}
	took := clk.Now().Sub(start)
	cancel()
	wg.Wait()
	if limit := int(took/minRTO) + 2; len(syncs) > limit {
		t.Fatalf("%d full states for %d new starts in %v, want at most %d (one per %v)", len(syncs), flips, took, limit, minRTO)
	}
	t.Logf("%d full states for %d new starts in %v", len(syncs), flips, took)
}

// One peer's large state does not hold up another's: updates go to each
// peer in turn, so a small state owed after a full state of thousands of
// updates started arrives before that one is complete.
func TestStatesSentInTurn(t *testing.T) {
	l := newLink()
	big := &state{}
	big.set(many(200000))
	small := &state{}
	small.set(exclude("ff1e::1"))
	done := make(chan netip.Addr, 4)
	first := func(a netip.Addr) *latest {
		ap := newLatest()
		return &latest{by: ap.by, at: ap.at, done: func() {
			select {
			case done <- a:
			default:
			}
		}}
	}
	l.start(t, addrB, []netip.Addr{addrA}, nil, &state{}, first(addrB))
	l.start(t, addrC, []netip.Addr{addrA}, nil, &state{}, first(addrC))
	x := l.start(t, addrA, []netip.Addr{addrB}, nil, &state{per: func(p netip.Addr) []mld.GroupState {
		if p == addrB {
			return big.get(p)
		}
		return small.get(p)
	}}, newLatest())
	time.Sleep(20 * time.Millisecond) // the large state is on its way
	x.SetPeers([]netip.Addr{addrB, addrC})
	select {
	case a := <-done:
		if a != addrC {
			t.Fatalf("%v applied its state first; the small state should not wait for the large one", a)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no state applied")
	}
}
