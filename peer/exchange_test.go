package peer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/netlab"
	"github.com/librecast/lcast/mld"
)

// A peer that subscribes to a million groups gets MaxGroupsPerPeer of them,
// the rest dropped and counted as they arrive; another peer's state is
// applied meanwhile.
func TestPeerStateCapped(t *testing.T) {
	if !netlab.Isolate(t) {
		return
	}
	self, evil, honest := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"), netip.MustParseAddr("fd00::3")
	addLoopback(t, self, evil, honest)
	applied := make(chan struct {
		peer   netip.Addr
		groups int
	}, 16)
	x, err := NewExchange(self, []netip.Addr{evil, honest}, false, noState, func(p netip.Addr, _ bool, g []mld.GroupState) {
		applied <- struct {
			peer   netip.Addr
			groups int
		}{p, len(g)}
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go x.Run(ctx)

	sendState := func(from netip.Addr, n int) {
		c, err := net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(from, SubscriptionPort)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		groups := make([]mld.GroupState, n)
		for i := range groups {
			groups[i] = mld.GroupState{Group: netip.MustParseAddr(fmt.Sprintf("ff1e::%x:%x", i>>16, i&0xffff)), Mode: mld.Exclude, Sources: []netip.Addr{}}
		}
		parts := SplitGroups(groups)
		to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(self, SubscriptionPort))
		for i, p := range parts {
			m := &Message{Epoch: 7, Generation: 1, Part: uint16(i), Parts: uint16(len(parts)), Groups: p}
			if _, err := c.WriteToUDP(AppendMessage(nil, m), to); err != nil {
				t.Fatal(err)
			}
			if i%1000 == 999 {
				time.Sleep(20 * time.Millisecond) // within the receive buffer
			}
		}
	}
	const million = 1 << 20
	sendState(evil, million)
	sendState(honest, 3)
	got := map[netip.Addr]int{}
	timeout := time.After(10 * time.Second)
	for len(got) < 2 {
		select {
		case a := <-applied:
			got[a.peer] = a.groups
		case <-timeout:
			t.Fatalf("states applied: %v (dropped over the cap: %d, bad messages: %d)", got, x.OverCap.Load(), x.BadMessages.Load())
		}
	}
	if got[evil] != MaxGroupsPerPeer || got[honest] != 3 {
		t.Fatalf("applied %d groups of the peer sending %d and %d of the one sending 3; want %d and 3", got[evil], million, got[honest], MaxGroupsPerPeer)
	}
	if d := x.OverCap.Load(); d != million-MaxGroupsPerPeer {
		t.Fatalf("%d groups counted over the cap, want %d", d, million-MaxGroupsPerPeer)
	}
}

func noState(netip.Addr) []mld.GroupState { return nil }

// addLoopback adds addresses to lo, in the test's own namespace.
func addLoopback(t *testing.T, addrs ...netip.Addr) {
	t.Helper()
	for _, a := range addrs {
		if out, err := exec.Command("ip", "addr", "add", a.String()+"/128", "dev", "lo", "nodad").CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
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
	if !netlab.Isolate(t) {
		return
	}
	relay, y, z := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"), netip.MustParseAddr("fd00::3")
	addLoopback(t, relay, y, z)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g := func(group string) []mld.GroupState {
		return []mld.GroupState{{Group: netip.MustParseAddr(group), Mode: mld.Exclude, Sources: []netip.Addr{}, Hops: 1}}
	}
	var mu sync.Mutex
	states := map[netip.Addr][]mld.GroupState{y: g("ff1e::1"), z: g("ff1e::2")}
	x, err := NewExchange(relay, []netip.Addr{y, z}, true, func(p netip.Addr) []mld.GroupState {
		mu.Lock()
		defer mu.Unlock()
		return states[p]
	}, func(netip.Addr, bool, []mld.GroupState) {}, log)
	if err != nil {
		t.Fatal(err)
	}
	go x.Run(ctx)
	got := map[netip.Addr]chan applied{y: make(chan applied, 8), z: make(chan applied, 8)}
	for _, a := range []netip.Addr{y, z} {
		leaf, err := NewExchange(a, []netip.Addr{relay}, false, noState, func(p netip.Addr, r bool, groups []mld.GroupState) {
			got[a] <- applied{p, r, groups}
		}, log)
		if err != nil {
			t.Fatal(err)
		}
		go leaf.Run(ctx)
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
	states[z] = g("ff1e::3")
	mu.Unlock()
	x.Changed()
	expect(z, "ff1e::3")
	select {
	case s := <-got[y]:
		t.Fatalf("%v applied %+v again, though its state did not change", y, s)
	case <-time.After(2 * HelloInterval):
	}
}
