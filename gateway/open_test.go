package gateway

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// addAddrs gives the namespace's interface dev the addresses.
func addAddrs(t *testing.T, ns netns.NsHandle, dev string, addrs ...string) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		p := netip.MustParsePrefix(a)
		ipn := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 128)}
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipn, Flags: 0x02 /* IFA_F_NODAD */}); err != nil {
			t.Fatalf("ip addr add %s dev %s: %v", a, dev, err)
		}
	}
}

// syncWriter serializes writes to w.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

func testConfig(lans ...string) Config {
	return Config{
		LANs:      lans,
		Lc0:       "lc0",
		Routable:  func(a netip.Addr) bool { return a.As16()[1]&0x0f > 2 },
		Lc0Groups: func() []netip.Addr { return testAddrs("ff1e::1") },
		Log:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// A gateway in a namespace of the test's own: Open makes the table (and
// the groups lc0 wants are in it at once), ForeignSources reads its
// counter over netlink, and the end of Run removes the table. A start
// that fails (a LAN interface that is not there; a table the kernel
// refuses) leaves no table.
func TestGatewayOpenClose(t *testing.T) {
	ns, _ := testNamespace(t, "lc0", "lan1")
	addAddrs(t, ns, "lan1", "fe80::1/64", "2001:db8:1::1/64")
	check, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}

	var g *Gateway
	var log strings.Builder
	cfg := testConfig("lan1")
	cfg.Log = slog.New(slog.NewTextHandler(&syncWriter{w: &log}, nil))
	inNamespace(t, ns, func() { g, err = Open(cfg) })
	if err != nil {
		t.Fatal(err)
	}
	if got := tables(t, check); !slices.Equal(got, []string{"lcast_lc0"}) {
		t.Errorf("tables after Open: %q", got)
	}
	if got := elements(t, check, "lcast_lc0", "lc0_groups"); !slices.Equal(got, []string{"ff1e::1"}) {
		t.Errorf("lc0_groups after Open: %q", got)
	}
	if n := g.ForeignSources(g.LANs()[0]); n != 0 {
		t.Errorf("ForeignSources = %d", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { g.Run(ctx); close(done) }()
	g.Update()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if got := tables(t, check); len(got) != 0 {
		t.Errorf("tables after Run ended: %q", got)
	}
	if strings.Contains(log.String(), "level=ERROR") || strings.Contains(log.String(), "level=WARN") {
		t.Errorf("the gateway complained:\n%s", log.String())
	}

	// Failed starts.
	inNamespace(t, ns, func() { _, err = Open(testConfig("lan1", "nosuch")) })
	if err == nil {
		t.Error("Open with a LAN interface that is not there: no error")
	}
	refused := &fakeKernel{createErr: errors.New("refused")}
	inNamespace(t, ns, func() {
		_, err = open(testConfig("lan1"), func(string) (kernel, error) { return refused, nil })
	})
	if calls, _ := refused.take(); err == nil || !slices.Equal(calls, []string{"create", "remove", "close"}) {
		t.Errorf("a table the kernel refuses: Open: %v; calls %q, want create, remove, close", err, calls)
	}
	if got := tables(t, check); len(got) != 0 {
		t.Errorf("tables after failed starts: %q", got)
	}
}
