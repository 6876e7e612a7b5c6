package tun

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/netlab"
	"github.com/librecast/lcast/router"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var testCfg = Config{
	Name:      "lc0",
	MTU:       1380,
	Addr:      netip.MustParsePrefix("fd6c:6361:7374:1:2:3:4:5/48"),
	LinkLocal: netip.MustParseAddr("fe80::2:3:4:5"),
	Routes:    router.RoutePrefixes(),
}

var quiet = slog.New(slog.DiscardHandler)

func ipOut(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// openForTest opens testCfg's interface, closed when the test ends.
func openForTest(t *testing.T) *Interface {
	t.Helper()
	ifc, err := Open(testCfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ifc.Close() })
	return ifc
}

func lcastRoutes(t *testing.T) int {
	return strings.Count(ipOut(t, "-6", "route", "show", "table", "all", "proto", "108"), "\n")
}

func TestOpenConfiguresAndCloseRemoves(t *testing.T) {
	if !netlab.Isolate(t) {
		return
	}
	ifc, err := Open(testCfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if ifc.Adopted {
		t.Fatal("a new interface reported as adopted")
	}
	link, err := netlink.LinkByName("lc0")
	if err != nil {
		t.Fatal(err)
	}
	a := link.Attrs()
	if a.MTU != 1380 || a.Flags&net.FlagUp == 0 || a.Flags&net.FlagMulticast == 0 || a.Alias != Alias {
		t.Fatalf("link attrs: mtu %d flags %v alias %q", a.MTU, a.Flags, a.Alias)
	}
	out := ipOut(t, "-6", "addr", "show", "dev", "lc0")
	if !strings.Contains(out, "fd6c:6361:7374:1:2:3:4:5/48") || !strings.Contains(out, "fe80::2:3:4:5/64") || strings.Count(out, "inet6 fe80::") != 1 {
		t.Fatalf("want the overlay address and exactly one link-local, fe80::2:3:4:5:\n%s", out)
	}
	// Set through netlink (so that /proc/sys may be read-only), read here.
	if mode, err := os.ReadFile("/proc/sys/net/ipv6/conf/lc0/addr_gen_mode"); err != nil || strings.TrimSpace(string(mode)) != "1" {
		t.Fatalf("addr_gen_mode %q, %v; want 1 (none)", mode, err)
	}
	if n := lcastRoutes(t); n != len(testCfg.Routes) {
		t.Fatalf("%d lcast routes, want %d", n, len(testCfg.Routes))
	}
	for _, g := range []string{"ff1e::1", "ff3e::8000:1", "ff05::1:3", "ff18::1"} {
		if out := ipOut(t, "-6", "route", "get", g); !strings.Contains(out, "dev lc0") {
			t.Errorf("route get %s: %s", g, out)
		}
	}
	if out := ipOut(t, "-6", "route", "get", "ff02::fb"); strings.Contains(out, "proto 108") {
		t.Errorf("link-scope group routed by lcast: %s", out)
	}

	// A program that names no interface sends to ff1e::1: lc0 gets it.
	c, err := net.DialUDP("udp6", nil, &net.UDPAddr{IP: net.ParseIP("ff1e::1"), Port: 4242})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make(chan []byte, 1)
	go func() {
		bufs, sizes := [][]byte{make([]byte, 65536)}, []int{0}
		for {
			n, err := ifc.Device.Read(bufs, sizes, 0)
			if err != nil {
				return
			}
			for i := range n {
				p := bufs[i][:sizes[i]]
				if len(p) > 48 && p[6] == unix.IPPROTO_UDP && netip.AddrFrom16([16]byte(p[24:40])) == netip.MustParseAddr("ff1e::1") {
					got <- append([]byte(nil), p...)
					return
				}
			}
		}
	}()
	if _, err := c.Write([]byte("hello lc0")); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if string(p[48:]) != "hello lc0" {
			t.Fatalf("payload %q", p[48:])
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the datagram to ff1e::1 was not read from lc0")
	}

	if err := ifc.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName("lc0"); err == nil {
		t.Fatal("lc0 still exists after Close")
	}
	if n := lcastRoutes(t); n != 0 {
		t.Fatalf("%d lcast routes left after Close", n)
	}
}

func TestAdoptsOwnPersistentInterface(t *testing.T) {
	if !netlab.Isolate(t) {
		return
	}
	first, err := Open(testCfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(testCfg, quiet); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Open while the first runs: %v, want ErrInUse", err)
	}
	first.Device.Close() // what a crash does: the fd goes, the interface stays
	if _, err := netlink.LinkByName("lc0"); err != nil {
		t.Fatalf("persistent lc0 gone after its fd closed: %v", err)
	}
	second, err := Open(testCfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if !second.Adopted {
		t.Fatal("the surviving interface was not adopted")
	}
	if n := lcastRoutes(t); n != len(testCfg.Routes) {
		t.Fatalf("%d lcast routes after adoption, want %d", n, len(testCfg.Routes))
	}
	if err := second.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName("lc0"); err == nil {
		t.Fatal("lc0 still exists after Close")
	}
}

func TestRefusesForeignInterface(t *testing.T) {
	if !netlab.Isolate(t) {
		return
	}
	for _, create := range [][]string{
		{"link", "add", "lc0", "type", "veth", "peer", "name", "lc0peer"},
		{"tuntap", "add", "lc0", "mode", "tun"},
	} {
		ipOut(t, create...)
		_, err := Open(testCfg, quiet)
		if !errors.Is(err, ErrNotOurs) {
			t.Fatalf("Open over `ip %s`: %v, want ErrNotOurs", strings.Join(create, " "), err)
		}
		if _, err := netlink.LinkByName("lc0"); err != nil {
			t.Fatalf("the foreign lc0 was removed: %v", err)
		}
		if n := lcastRoutes(t); n != 0 {
			t.Fatalf("%d routes left behind", n)
		}
		ipOut(t, "link", "del", "lc0")
	}
}

// Open fails half way (the routes are taken by another interface): nothing
// of what it created is left.
func TestRollsBackHalfWay(t *testing.T) {
	if !netlab.Isolate(t) {
		return
	}
	ipOut(t, "link", "add", "other", "type", "veth", "peer", "name", "otherpeer")
	ipOut(t, "link", "set", "other", "up")
	ipOut(t, "-6", "route", "add", "multicast", "ff38::/13", "dev", "other", "table", "local", "metric", "128")
	_, err := Open(testCfg, quiet)
	if err == nil || !strings.Contains(err.Error(), "ff38::/13") {
		t.Fatalf("Open with a taken route: %v", err)
	}
	if _, err := netlink.LinkByName("lc0"); err == nil {
		t.Fatal("lc0 left behind after a failed Open")
	}
	if n := lcastRoutes(t); n != 0 {
		t.Fatalf("%d routes left behind", n)
	}
}

// Routes deleted under lcast come back within restoreDelay and a little;
// once KeepRoutes has returned, they no longer do.
func TestKeepRoutes(t *testing.T) {
	if !netlab.Isolate(t) {
		return
	}
	ifc := openForTest(t)
	ctx, cancel := context.WithCancel(context.Background())
	kept := make(chan error, 1)
	go func() { kept <- ifc.KeepRoutes(ctx) }()
	time.Sleep(50 * time.Millisecond) // subscribed
	del := func() {
		for _, p := range testCfg.Routes[:2] {
			ipOut(t, "-6", "route", "del", "multicast", p.String(), "dev", "lc0", "table", "local", "metric", fmt.Sprint(RouteMetric))
		}
	}
	for round := range 3 {
		del()
		start := time.Now()
		took, ok := netlab.Poll(2*time.Second, func() bool { return lcastRoutes(t) == len(testCfg.Routes) })
		if !ok {
			t.Fatalf("round %d: %d of %d routes after %v", round+1, lcastRoutes(t), len(testCfg.Routes), time.Since(start))
		}
		t.Logf("round %d: routes back after %v", round+1, took.Round(time.Millisecond))
	}
	cancel()
	if err := <-kept; err != nil {
		t.Fatal(err)
	}
	del()
	time.Sleep(3 * restoreDelay)
	if n := lcastRoutes(t); n != len(testCfg.Routes)-2 {
		t.Fatalf("after KeepRoutes returned: %d routes, want %d", n, len(testCfg.Routes)-2)
	}
}
