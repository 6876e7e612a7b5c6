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

// t0 is a time for tests that need one.
var t0 = time.Unix(1_000_000_000, 0)

var (
	addrA = netip.MustParseAddr("fd00::1")
	addrB = netip.MustParseAddr("fd00::2")
	addrC = netip.MustParseAddr("fd00::3")
)

// applied is a state an exchange applied.
type applied struct {
	from   netip.Addr
	relay  bool
	groups []mld.GroupState
}

// Messages from an address that is no peer, and malformed ones, are
// dropped and counted.
func TestExchangeDropsStrangers(t *testing.T) {
	w := newWire()
	x := w.start(t, ExchangeConfig{Self: addrA, Peers: []netip.Addr{addrB}})
	x.HandleControl(addrC, AppendMessage(nil, &Message{Epoch: 1}))
	x.HandleControl(addrB, []byte("LCS\x04 not a message"))
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
