package gateway

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/librecast/lcast/mld"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// requireRoot skips the test, saying why, unless it can make a network
// namespace: it needs root. Under CI (CI set in the environment), which
// runs as root, it fails instead, so that nothing is skipped there
// unnoticed.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("CI must run the nftables tests, but they need root, to make a network namespace")
	}
	t.Skip("skipped: it needs root, to make a network namespace with nftables of its own")
}

// testNamespace makes a network namespace, removed with the test, holding
// for each name in devs one end of a veth pair (the other is "p" and the
// name), up. It returns the namespace and the interfaces' indexes.
func testNamespace(t *testing.T, devs ...string) (netns.NsHandle, map[string]int) {
	t.Helper()
	requireRoot(t)
	var ns netns.NsHandle
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		// This thread changes namespace and is never given back: it
		// ends with the goroutine.
		runtime.LockOSThread()
		ns, err = netns.New()
	}()
	<-done
	if err != nil {
		t.Fatalf("making a network namespace: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	index := map[string]int{}
	for _, d := range devs {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: d}, PeerName: "p" + d}
		if err := h.LinkAdd(veth); err != nil {
			t.Fatalf("ip link add %s: %v", d, err)
		}
		for _, name := range []string{d, "p" + d} {
			l, err := h.LinkByName(name)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
			index[name] = l.Attrs().Index
		}
	}
	return ns, index
}

// inNamespace runs f on a thread in namespace ns (sockets f opens are
// there), and returns when it returns.
func inNamespace(t *testing.T, ns netns.NsHandle, f func()) {
	t.Helper()
	done := make(chan struct{})
	var err error
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err = netns.Set(ns); err == nil {
			f()
		}
	}()
	<-done
	if err != nil {
		t.Fatalf("entering the namespace: %v", err)
	}
}

// nftList returns `nft list table ip6 table` in namespace ns, or "" with
// the reason when nft is not installed (lcast does not need it).
func nftList(t *testing.T, ns netns.NsHandle, table string) (string, string) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		return "", "nft is not installed"
	}
	cmd := exec.Command("nsenter", nsenterNet(ns), "nft", "list", "table", "ip6", table)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Sprintf("nft list: %v %s", err, bytes.TrimSpace(out))
	}
	return string(out), ""
}

// nsenterNet is nsenter's option that enters namespace ns (this
// process's descriptor of it: an *os.File of it would close it when
// collected).
func nsenterNet(ns netns.NsHandle) string {
	return fmt.Sprintf("--net=/proc/%d/fd/%d", os.Getpid(), int(ns))
}

// elements returns the elements of the table's set name, each as the
// tests write them ("group" or "group . source"), sorted.
func elements(t *testing.T, c *nftables.Conn, table, name string) []string {
	t.Helper()
	tab := &nftables.Table{Name: table, Family: nftables.TableFamilyIPv6}
	s, err := c.GetSetByName(tab, name)
	if err != nil {
		t.Fatalf("set %s: %v", name, err)
	}
	elems, err := c.GetSetElements(s)
	if err != nil {
		t.Fatalf("elements of %s: %v", name, err)
	}
	out := []string{}
	for _, e := range elems {
		a := netip.AddrFrom16([16]byte(e.Key[:16]))
		if len(e.Key) == 32 {
			out = append(out, a.String()+" . "+netip.AddrFrom16([16]byte(e.Key[16:])).String())
		} else {
			out = append(out, a.String())
		}
	}
	slices.Sort(out)
	return out
}

// tables returns the ip6 tables in the namespace of c.
func tables(t *testing.T, c *nftables.Conn) []string {
	t.Helper()
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyIPv6)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, tab := range ts {
		out = append(out, tab.Name)
	}
	return out
}

// The table over netlink, in a namespace of the test's own: made with
// empty sets and the rules the design describes (as nft lists them),
// element changes as asked, a counter read, made anew over what an
// earlier run left, removed (twice: the second finds nothing and is no
// error); a table the kernel refuses leaves nothing behind.
func TestNftKernel(t *testing.T) {
	ns, index := testNamespace(t, "lc0", "lan1", "lan2")
	l := newLayout("lcast_lc0", link{"lc0", index["lc0"]}, []link{{"lan1", index["lan1"]}, {"lan2", index["lan2"]}},
		[][]netip.Prefix{{testPrefix("2001:db8:1::/64"), testPrefix("fd00:1::/64")}, {testPrefix("2001:db8:2::/64")}})
	k, err := newNftKernel(l.table, int(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer k.close()
	check, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	if err := k.create(l); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"lc0_groups", "lan_lan1_exclude", "lan_lan1_blocked", "lan_lan1_include", "lan_lan2_exclude"} {
		if got := elements(t, check, l.table, s); len(got) != 0 {
			t.Errorf("new set %s holds %v", s, got)
		}
	}

	s := newState(l)
	ops, _ := s.lc0Changes(nil, testAddrs("ff1e::1", "ff1e::99", "ff3e::1"))
	ops, _ = s.lanChanges(ops, l.lans[0], 0, []mld.GroupState{anySourceState("ff1e::1"), filterState("ff3e::2", mld.Exclude, "2001:db8:9::9")})
	ops, _ = s.lanChanges(ops, l.lans[1], 1, []mld.GroupState{filterState("ff3e::1", mld.Include, "2001:db8:1::10", "2001:db8:9::1")})
	if err := k.change(ops); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"lc0_groups":       {"ff1e::1", "ff1e::99", "ff3e::1"},
		"lan_lan1_exclude": {"ff1e::1", "ff3e::2"},
		"lan_lan1_blocked": {"ff3e::2 . 2001:db8:9::9"},
		"lan_lan1_include": {},
		"lan_lan2_exclude": {},
		"lan_lan2_blocked": {},
		"lan_lan2_include": {"ff3e::1 . 2001:db8:1::10", "ff3e::1 . 2001:db8:9::1"},
	}
	for name, w := range want {
		if got := elements(t, check, l.table, name); !slices.Equal(got, w) {
			t.Errorf("set %s holds %q, want %q", name, got, w)
		}
	}
	if n, err := k.counter("lan_lan1_foreign"); n != 0 || err != nil {
		t.Errorf("counter lan_lan1_foreign: %d, %v", n, err)
	}

	if text, why := nftList(t, ns, l.table); why != "" {
		t.Logf("the table's text is not checked: %s", why)
	} else {
		t.Logf("nft list table ip6 %s:\n%s", l.table, text)
		for _, line := range []string{
			"type filter hook prerouting priority raw; policy accept;",
			`iifname "lc0" goto from_lc0`,
			`iifname "lan1" goto from_lan_lan1`,
			"ip6 hoplimit <= 1 return",
			"ip6 saddr 2001:db8:1::/64 return",
			"ip6 saddr fd00:1::/64 return",
			"ip6 saddr 2001:db8:2::/64 return",
			`ip6 daddr @lan_lan1_exclude ip6 daddr . ip6 saddr != @lan_lan1_blocked dup to ip6 daddr device "lan1"`,
			`ip6 daddr . ip6 saddr @lan_lan2_include dup to ip6 daddr device "lan2"`,
			"ip6 saddr 2001:db8:1::/64 goto route_lan_lan1",
			`counter name "lan_lan1_foreign"`,
			`ip6 daddr @lc0_groups dup to ip6 daddr device "lc0"`,
		} {
			if !strings.Contains(text, line) {
				t.Errorf("no %q in the table", line)
			}
		}
	}

	// Deleting, and a mode change.
	ops, _ = s.lc0Changes(nil, testAddrs("ff1e::99"))
	ops, _ = s.lanChanges(ops, l.lans[0], 0, []mld.GroupState{filterState("ff3e::2", mld.Include, "2001:db8:9::9")})
	if err := k.change(ops); err != nil {
		t.Fatal(err)
	}
	want = map[string][]string{
		"lc0_groups":       {"ff1e::99"},
		"lan_lan1_exclude": {},
		"lan_lan1_blocked": {},
		"lan_lan1_include": {"ff3e::2 . 2001:db8:9::9"},
	}
	for name, w := range want {
		if got := elements(t, check, l.table, name); !slices.Equal(got, w) {
			t.Errorf("after deleting: set %s holds %q, want %q", name, got, w)
		}
	}
	// Deleting what is not there fails (the state must know the kernel's).
	if err := k.change([]setOp{{del: true, set: setLc0, group: testAddr("ff1e::5")}}); err == nil {
		t.Error("deleting an element that is not there: no error")
	}

	// A second start replaces the table: empty sets.
	if err := k.create(l); err != nil {
		t.Fatal(err)
	}
	if got := elements(t, check, l.table, "lc0_groups"); len(got) != 0 {
		t.Errorf("made anew, lc0_groups holds %q", got)
	}
	for range 2 {
		if err := k.remove(); err != nil {
			t.Errorf("remove: %v", err)
		}
	}
	if got := tables(t, check); len(got) != 0 {
		t.Errorf("tables after remove: %q", got)
	}

	// A table the kernel refuses (a name too long for a chain) is not
	// made at all: the transaction is all or nothing.
	bad := l
	bad.lans = slices.Clone(l.lans)
	bad.lans[1].id = strings.Repeat("x", 300)
	if err := k.create(bad); err == nil {
		t.Error("a chain name of 300 characters: no error")
	}
	if got := tables(t, check); len(got) != 0 {
		t.Errorf("tables after a refused create: %q", got)
	}
}
