package peer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
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
	for _, a := range []netip.Addr{self, evil, honest} {
		if out, err := exec.Command("ip", "addr", "add", a.String()+"/128", "dev", "lo", "nodad").CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	applied := make(chan struct {
		peer   netip.Addr
		groups int
	}, 16)
	x, err := NewExchange(self, []netip.Addr{evil, honest}, func(p netip.Addr, g []mld.GroupState) {
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
