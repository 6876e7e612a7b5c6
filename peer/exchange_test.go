package peer

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/clock"
	"github.com/librecast/lcast/mld"
)

// wire connects exchanges in-process, as the transport does, and can cut
// each direction.
type wire struct {
	mu    sync.Mutex
	nodes map[netip.Addr]*Exchange
	cut   map[[2]netip.Addr]bool // from, to
}

func newWire() *wire {
	return &wire{nodes: map[netip.Addr]*Exchange{}, cut: map[[2]netip.Addr]bool{}}
}

// sender returns the Send function of the node at from.
func (w *wire) sender(from netip.Addr) func(netip.Addr, []byte) error {
	return func(to netip.Addr, msg []byte) error {
		w.mu.Lock()
		x, cut := w.nodes[to], w.cut[[2]netip.Addr{from, to}]
		w.mu.Unlock()
		if x != nil && !cut {
			x.HandleControl(from, msg)
		}
		return nil
	}
}

func (w *wire) setCut(from, to netip.Addr, cut bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cut[[2]netip.Addr{from, to}] = cut
}

// start runs an exchange for cfg on the wire until the test ends.
func (w *wire) start(t *testing.T, cfg ExchangeConfig) *Exchange {
	t.Helper()
	if cfg.State == nil {
		cfg.State = noState
	}
	if cfg.Apply == nil {
		cfg.Apply = func(netip.Addr, bool, []mld.GroupState) {}
	}
	cfg.Send = w.sender(cfg.Self)
	cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	x := NewExchange(cfg)
	w.mu.Lock()
	w.nodes[cfg.Self] = x
	w.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { x.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return x
}

func noState(netip.Addr) []mld.GroupState { return nil }

// groupsBase and sourcesBase are the first of the groups and sources that
// tests number.
var groupsBase, sourcesBase = netip.MustParseAddr("ff1e::"), netip.MustParseAddr("2001:db8::")

// numbered returns base with i in its last 32 bits: base::i>>16:i&0xffff
// for a base that ends in ::.
func numbered(base netip.Addr, i int) netip.Addr {
	b := base.As16()
	b[12], b[13], b[14], b[15] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
	return netip.AddrFrom16(b)
}

// warp moves clk forward by d a tick at a time, with a moment of real
// time after each for the goroutines that the tick wakes, so that a test
// crosses seconds of the exchange's time in a fraction of one.
func warp(clk *clock.Warp, d time.Duration) {
	for d > 0 {
		step := min(d, tickInterval)
		clk.Advance(step)
		d -= step
		time.Sleep(time.Millisecond)
	}
}

func exclude(group string) []mld.GroupState {
	return []mld.GroupState{{Group: netip.MustParseAddr(group), Mode: mld.Exclude, Sources: []netip.Addr{}, Hops: 1}}
}

var (
	addrA = netip.MustParseAddr("fd00::1")
	addrB = netip.MustParseAddr("fd00::2")
	addrC = netip.MustParseAddr("fd00::3")
)

// A peer that subscribes to a million groups gets MaxGroupsPerPeer of them,
// the rest dropped and counted as they arrive; another peer's state is
// applied meanwhile.
func TestPeerStateCapped(t *testing.T) {
	self, evil, honest := addrA, addrB, addrC
	type appliedCount struct {
		peer   netip.Addr
		groups int
	}
	applied := make(chan appliedCount, 16)
	w := newWire()
	x := w.start(t, ExchangeConfig{Self: self, Peers: []netip.Addr{evil, honest}, Apply: func(p netip.Addr, _ bool, g []mld.GroupState) {
		applied <- appliedCount{p, len(g)}
	}})
	sendState := func(from netip.Addr, n int) {
		groups := make([]mld.GroupState, n)
		for i := range groups {
			groups[i] = mld.GroupState{Group: numbered(groupsBase, i), Mode: mld.Exclude, Sources: []netip.Addr{}}
		}
		parts := SplitGroups(groups)
		for i, p := range parts {
			m := &Message{Epoch: 7, Generation: 1, Part: uint16(i), Parts: uint16(len(parts)), Groups: p}
			x.HandleControl(from, AppendMessage(nil, m))
			if i%1000 == 999 {
				time.Sleep(20 * time.Millisecond) // within the inbox
			}
		}
	}
	const million = 1 << 20
	sendState(evil, million)
	sendState(honest, 3)
	got := map[netip.Addr]int{}
	timeout := time.After(20 * time.Second)
	for len(got) < 2 {
		select {
		case a := <-applied:
			got[a.peer] = a.groups
		case <-timeout:
			t.Fatalf("states applied: %v (dropped over the cap: %d, bad messages: %d, inbox full: %d)", got, x.OverCap.Load(), x.BadMessages.Load(), x.InboxFull.Load())
		}
	}
	if got[evil] != MaxGroupsPerPeer || got[honest] != 3 {
		t.Fatalf("applied %d groups of the peer sending %d and %d of the one sending 3; want %d and 3", got[evil], million, got[honest], MaxGroupsPerPeer)
	}
	if d := x.OverCap.Load(); d != million-MaxGroupsPerPeer {
		t.Fatalf("%d groups counted over the cap, want %d", d, million-MaxGroupsPerPeer)
	}
}

// Messages from an address that is no peer, and malformed ones, are
// dropped and counted.
func TestExchangeDropsStrangers(t *testing.T) {
	w := newWire()
	x := w.start(t, ExchangeConfig{Self: addrA, Peers: []netip.Addr{addrB}})
	x.HandleControl(addrC, AppendMessage(nil, &Message{Epoch: 1}))
	x.HandleControl(addrB, []byte("LCS\x03 not a message"))
	deadline := time.Now().Add(5 * time.Second)
	for x.BadMessages.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d bad messages counted, want 2", x.BadMessages.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if h := x.Health(addrC); !h.LastHeard.IsZero() {
		t.Fatalf("a stranger is known: %+v", h)
	}
}

// applied is a state an exchange applied.
type applied struct {
	from   netip.Addr
	relay  bool
	groups []mld.GroupState
}

// A relay tells each peer a state of its own and that it relays; a change
// reaches only the peers whose state it changes.
func TestExchangeStatePerPeer(t *testing.T) {
	relay, y, z := addrA, addrB, addrC
	var mu sync.Mutex
	states := map[netip.Addr][]mld.GroupState{y: exclude("ff1e::1"), z: exclude("ff1e::2")}
	w, clk := newWire(), clock.NewWarp()
	x := w.start(t, ExchangeConfig{Self: relay, Peers: []netip.Addr{y, z}, Relay: true, Clock: clk, State: func(p netip.Addr) []mld.GroupState {
		mu.Lock()
		defer mu.Unlock()
		return states[p]
	}})
	got := map[netip.Addr]chan applied{y: make(chan applied, 8), z: make(chan applied, 8)}
	for _, a := range []netip.Addr{y, z} {
		w.start(t, ExchangeConfig{Self: a, Peers: []netip.Addr{relay}, Clock: clk, Apply: func(p netip.Addr, r bool, groups []mld.GroupState) {
			got[a] <- applied{p, r, groups}
		}})
	}
	expect := func(at netip.Addr, group string) {
		t.Helper()
		select {
		case s := <-got[at]:
			if s.from != relay || !s.relay || len(s.groups) != 1 || s.groups[0].Group.String() != group || s.groups[0].Hops != 1 {
				t.Fatalf("%v applied %+v, want %s from relay %v", at, s, group, relay)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%v applied nothing", at)
		}
	}
	expect(y, "ff1e::1")
	expect(z, "ff1e::2")
	mu.Lock()
	states[z] = exclude("ff1e::3")
	mu.Unlock()
	x.Changed()
	expect(z, "ff1e::3")
	warp(clk, 2*HelloInterval)
	select {
	case s := <-got[y]:
		t.Fatalf("%v applied %+v again, though its state did not change", y, s)
	case <-time.After(50 * time.Millisecond):
	}
}

// waitConnected waits until x's view of peer, at clk's time, is
// connected (want), and returns how long that took (in real time: the
// clock is not moved).
func waitConnected(t *testing.T, clk clock.Clock, x *Exchange, peer netip.Addr, want bool, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for !x.Health(peer).Connected(clk.Now()) != !want {
		if time.Since(start) > within {
			t.Fatalf("%v: connected is not %v after %v (%+v)", peer, want, within, x.Health(peer))
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// Connected means two-way traffic: cutting one direction makes both sides
// say not connected once ConnectedWithin has passed, and mending it makes
// them connected again at once (the unanswered side pings every
// fastHello).
func TestConnectedMeansBothWays(t *testing.T) {
	w, clk := newWire(), clock.NewWarp()
	a := w.start(t, ExchangeConfig{Self: addrA, Peers: []netip.Addr{addrB}, Clock: clk})
	b := w.start(t, ExchangeConfig{Self: addrB, Peers: []netip.Addr{addrA}, Clock: clk})
	t.Logf("connected after %v", waitConnected(t, clk, a, addrB, true, 2*time.Second))
	waitConnected(t, clk, b, addrA, true, 2*time.Second)

	w.setCut(addrA, addrB, true)
	warp(clk, ConnectedWithin)
	waitConnected(t, clk, a, addrB, false, time.Second)
	waitConnected(t, clk, b, addrA, false, time.Second)

	w.setCut(addrA, addrB, false)
	for _, x := range []struct {
		at   *Exchange
		peer netip.Addr
	}{{a, addrB}, {b, addrA}} {
		if d := waitConnected(t, clk, x.at, x.peer, true, time.Second); d > 500*time.Millisecond {
			t.Errorf("connected again %v after the mend, want within 500 ms", d)
		}
	}
}

// sessions is a transport whose sessions carry nothing until repaired:
// Repair mends the wire between the two nodes.
type sessions struct {
	w        *wire
	clk      clock.Clock
	self     netip.Addr
	repaired atomic.Int32
	first    chan time.Time
}

func (s *sessions) Repair(addrs []netip.Addr, _ time.Duration) {
	for _, a := range addrs {
		if s.repaired.Add(1) == 1 {
			s.first <- s.clk.Now()
		}
		s.w.setCut(s.self, a, false)
		s.w.setCut(a, s.self, false)
	}
}

// Two nodes whose sessions carry nothing (handshakes that crossed): the one
// with the lower address repairs, within minRTO and a tick of its first
// unanswered ping; the other, which waits repairLag longer, finds the
// session working and repairs nothing.
func TestRepairUnansweredSession(t *testing.T) {
	w, clk := newWire(), clock.NewWarp()
	w.setCut(addrA, addrB, true)
	w.setCut(addrB, addrA, true)
	lower := &sessions{w: w, clk: clk, self: addrA, first: make(chan time.Time, 1)}
	higher := &sessions{w: w, clk: clk, self: addrB, first: make(chan time.Time, 1)}
	start := clk.Now()
	a := w.start(t, ExchangeConfig{Self: addrA, Peers: []netip.Addr{addrB}, Repair: lower.Repair, Clock: clk})
	w.start(t, ExchangeConfig{Self: addrB, Peers: []netip.Addr{addrA}, Repair: higher.Repair, Clock: clk})
	select {
	case at := <-lower.first:
		if d := at.Sub(start); d > minRTO+3*tickInterval {
			t.Errorf("repaired %v after start, want within %v", d, minRTO+3*tickInterval)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the lower node never repaired")
	}
	waitConnected(t, clk, a, addrB, true, time.Second)
	t.Logf("connected %v after start", clk.Now().Sub(start))
	warp(clk, repairLag+2*minRTO) // past the higher node's turn
	if n := higher.repaired.Load(); n != 0 {
		t.Errorf("the higher node repaired %d times after the lower one had", n)
	}
	if n := lower.repaired.Load(); n != 1 {
		t.Errorf("the lower node repaired %d times, want 1", n)
	}
}

// A peer that echoes stamps this node never sent (from the future) does
// not make itself look connected.
func TestForgedEchoIgnored(t *testing.T) {
	w := newWire()
	x := w.start(t, ExchangeConfig{Self: addrA, Peers: []netip.Addr{addrB}})
	x.mu.Lock()
	epoch := x.epoch
	x.mu.Unlock()
	for range 10 {
		x.HandleControl(addrB, AppendMessage(nil, &Message{Epoch: 9, PeerEpoch: epoch, Stamp: 1, Echo: 1 << 62, Pong: true}))
		time.Sleep(20 * time.Millisecond)
	}
	if h := x.Health(addrB); h.Connected(time.Now()) || !h.LastAcked.IsZero() {
		t.Fatalf("a forged echo counts: %+v", h)
	}
}

// sendState sends groups to x as the peer at from would, as one state of
// the given generation.
func sendState(x *Exchange, from netip.Addr, gen uint64, groups []mld.GroupState) {
	parts := SplitGroups(groups)
	for i, p := range parts {
		x.HandleControl(from, AppendMessage(nil, &Message{Epoch: 7, Generation: gen, Part: uint16(i), Parts: uint16(len(parts)), Groups: p}))
		if i%1000 == 999 {
			time.Sleep(20 * time.Millisecond) // within the inbox
		}
	}
}

// A hostile peer's states are capped and put in order: 10^5 sources in one
// group keep MaxSourcesPerGroup of them, and a group listed 10^4 times is
// applied once; both are counted, and an honest peer's state is applied
// meanwhile.
func TestHostileStatesCapped(t *testing.T) {
	evil, honest := addrB, addrC
	got := make(chan applied, 16)
	w := newWire()
	x := w.start(t, ExchangeConfig{Self: addrA, Peers: []netip.Addr{evil, honest}, Apply: func(p netip.Addr, r bool, g []mld.GroupState) {
		got <- applied{p, r, g}
	}})
	many := make([]netip.Addr, 100000)
	for i := range many {
		many[i] = numbered(sourcesBase, i)
	}
	g := mld.GroupState{Group: netip.MustParseAddr("ff1e::1"), Mode: mld.Include}
	var groups []mld.GroupState
	for i := 0; i < len(many); i += 60 { // a message's worth of sources per record
		g.Sources = many[i:min(i+60, len(many))]
		groups = append(groups, g)
	}
	sendState(x, evil, 1, groups)
	expect := func(from netip.Addr, check func([]mld.GroupState) bool) {
		t.Helper()
		for {
			select {
			case a := <-got:
				if a.from == from {
					if !check(a.groups) {
						t.Fatalf("%v applied %d groups (%d sources in the first)", from, len(a.groups), len(a.groups[0].Sources))
					}
					return
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%v: nothing applied", from)
			}
		}
	}
	expect(evil, func(g []mld.GroupState) bool { return len(g) == 1 && len(g[0].Sources) == MaxSourcesPerGroup })
	if n := x.SourcesOverCap.Load(); n != uint64(len(many)-MaxSourcesPerGroup) {
		t.Errorf("%d sources counted over the cap, want %d", n, len(many)-MaxSourcesPerGroup)
	}
	same := make([]mld.GroupState, 10000)
	for i := range same {
		same[i] = mld.GroupState{Group: netip.MustParseAddr("ff1e::2"), Mode: mld.Exclude, Sources: []netip.Addr{}}
	}
	sendState(x, evil, 2, same)
	sendState(x, honest, 1, exclude("ff1e::3"))
	expect(evil, func(g []mld.GroupState) bool { return len(g) == 1 && g[0].Group.String() == "ff1e::2" })
	expect(honest, func(g []mld.GroupState) bool { return len(g) == 1 && g[0].Group.String() == "ff1e::3" })
}

// runStatesTo runs an exchange of A with the peer B, which never
// acknowledges, on the clock clk while do runs, and returns the times
// (clk's) A sent B its full state.
func runStatesTo(clk *clock.Warp, do func(x *Exchange)) []time.Time {
	var mu sync.Mutex
	var states []time.Time
	x := NewExchange(ExchangeConfig{Self: addrA, Peers: []netip.Addr{addrB}, State: func(netip.Addr) []mld.GroupState { return exclude("ff1e::1") },
		Send: func(_ netip.Addr, msg []byte) error {
			if m, err := ParseMessage(msg); err == nil && m.Parts > 0 {
				mu.Lock()
				states = append(states, clk.Now())
				mu.Unlock()
			}
			return nil
		}, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Clock: clk})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { x.Run(ctx) })
	do(x)
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	return states
}

// A peer that never acknowledges is sent its full state again less and
// less often (after minRTO, then twice as long each time), not every
// second.
func TestResendsBackOff(t *testing.T) {
	clk := clock.NewWarp()
	states := runStatesTo(clk, func(*Exchange) { warp(clk, 8*time.Second) })
	// Sent at 0, then again at about 0.25, 0.75, 1.75, 3.75 and 7.75 s:
	// soon while a session may be under repair, then each wait twice the
	// one before (give or take the tick each is seen at, and one more for
	// a goroutine that ran late).
	if len(states) < 5 || len(states) > 7 {
		t.Fatalf("%d full states in 8 s to a peer that never acknowledges, want 6 (0, 0.25, 0.75, 1.75, 3.75, 7.75 s)", len(states))
	}
	for i := 3; i < len(states); i++ {
		if gap, before := states[i].Sub(states[i-1]), states[i-1].Sub(states[i-2]); gap+2*tickInterval < before*3/2 {
			t.Errorf("resend %d came %v after the one before, which came %v after its own: the wait does not double", i, gap, before)
		}
	}
}

// A peer that claims a new start in every message (a new epoch, asking
// for the state) gets at most one full state per minRTO, not one per
// message.
func TestRestartsDoNotAmplify(t *testing.T) {
	const flips, every = 100, 10 * time.Millisecond
	clk := clock.NewWarp()
	start := clk.Now()
	var took time.Duration
	states := runStatesTo(clk, func(x *Exchange) {
		for i := range flips {
			x.HandleControl(addrB, AppendMessage(nil, &Message{Want: true, Epoch: uint64(i + 1)}))
			clk.Advance(every)
			time.Sleep(time.Millisecond)
		}
		took = clk.Now().Sub(start)
	})
	if limit := int(took/minRTO) + 2; len(states) > limit {
		t.Fatalf("%d full states for %d new starts in %v, want at most %d (one per %v)", len(states), flips, took, limit, minRTO)
	}
}

// One peer's large state does not hold up another's: parts go to each
// peer in turn, so a one-part state owed after a state of thousands of
// parts started is applied before that one is complete.
func TestStatesSentInTurn(t *testing.T) {
	big := make([]mld.GroupState, 200000)
	for i := range big {
		big[i] = mld.GroupState{Group: numbered(groupsBase, i), Mode: mld.Exclude, Sources: []netip.Addr{}}
	}
	w := newWire()
	done := make(chan netip.Addr, 4)
	for _, a := range []netip.Addr{addrB, addrC} {
		w.start(t, ExchangeConfig{Self: a, Peers: []netip.Addr{addrA}, Apply: func(netip.Addr, bool, []mld.GroupState) { done <- a }})
	}
	x := w.start(t, ExchangeConfig{Self: addrA, Peers: []netip.Addr{addrB}, State: func(p netip.Addr) []mld.GroupState {
		if p == addrB {
			return big
		}
		return exclude("ff1e::1")
	}})
	// The large state (3,300 parts, 165 ms at StateRate) is on its way
	// when the second peer comes.
	time.Sleep(20 * time.Millisecond)
	x.SetPeers([]netip.Addr{addrB, addrC})
	select {
	case first := <-done:
		if first != addrC {
			t.Fatalf("%v applied its state first; the small state should not wait for the large one", first)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no state applied")
	}
}
