package tun

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/netlab"
	"go.uber.org/goleak"
)

type membership struct {
	group  netip.Addr
	joined bool
}

// A program's join and leave on lc0 are announced at once, and joins on
// other interfaces are not.
func TestWatchMemberships(t *testing.T) {
	if !netlab.Isolate(t) {
		return
	}
	ifc := openForTest(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan membership, 16)
	if err := ifc.WatchMemberships(ctx, func(g netip.Addr, joined bool) { events <- membership{g, joined} }); err != nil {
		t.Fatal(err)
	}
	next := func() membership {
		t.Helper()
		select {
		case e := <-events:
			return e
		case <-time.After(time.Second):
			t.Fatal("no announcement within 1 s")
			return membership{}
		}
	}
	lo, _ := net.InterfaceByName("lo")
	other, err := net.ListenMulticastUDP("udp6", lo, &net.UDPAddr{IP: net.ParseIP("ff1e::99"), Port: 4242})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	lc0, _ := net.InterfaceByName("lc0")
	group := netip.MustParseAddr("ff1e::1234")
	start := time.Now()
	c, err := net.ListenMulticastUDP("udp6", lc0, &net.UDPAddr{IP: group.AsSlice(), Port: 4242})
	if err != nil {
		t.Fatal(err)
	}
	if e := next(); e != (membership{group, true}) {
		t.Fatalf("after a join: %+v", e)
	}
	t.Logf("join announced after %v", time.Since(start))
	c.Close()
	if e := next(); e != (membership{group, false}) {
		t.Fatalf("after a leave: %+v", e)
	}
}

// Close ends the watchers of an interface whose context is never done,
// and waits for them; a watch asked for after Close is refused.
func TestCloseEndsWatchers(t *testing.T) {
	if !netlab.Isolate(t) {
		return
	}
	before := goleak.IgnoreCurrent()
	ifc, err := Open(testCfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer ifc.Close()
	for range 2 {
		if err := ifc.WatchMemberships(context.Background(), func(netip.Addr, bool) {}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ifc.Close(); err != nil {
		t.Fatal(err)
	}
	goleak.VerifyNone(t, before)
	if err := ifc.WatchMemberships(context.Background(), func(netip.Addr, bool) {}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("WatchMemberships after Close: %v, want net.ErrClosed", err)
	}
}
