package gateway

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/librecast/lcast/mld"
)

var (
	testAddr   = netip.MustParseAddr
	testPrefix = netip.MustParsePrefix
)

func anySourceState(group string) mld.GroupState {
	return mld.GroupState{Group: testAddr(group), Mode: mld.Exclude, Sources: []netip.Addr{}}
}

func filterState(group string, mode mld.FilterMode, sources ...string) mld.GroupState {
	s := mld.GroupState{Group: testAddr(group), Mode: mode, Sources: []netip.Addr{}}
	for _, src := range sources {
		s.Sources = append(s.Sources, testAddr(src))
	}
	return s
}

func testAddrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, testAddr(a))
	}
	return out
}

// twoLANs is a gateway of two LANs: lan1 (two prefixes) with an
// any-source listener of ff1e::1 and one of ff3e::2 that blocks a source,
// lan2 with an SSM listener of ff3e::1 for two sources (one a lan1 host).
// lc0 wants ff1e::1, ff1e::99 (no LAN does) and ff3e::1.
func twoLANs() ([]lanState, []netip.Addr) {
	return []lanState{
		{name: "lan1", prefixes: []netip.Prefix{testPrefix("2001:db8:1::/64"), testPrefix("fd00:1::/64")},
			groups: []mld.GroupState{anySourceState("ff1e::1"), filterState("ff3e::2", mld.Exclude, "2001:db8:9::9")}},
		{name: "lan2", prefixes: []netip.Prefix{testPrefix("2001:db8:2::/64")},
			groups: []mld.GroupState{filterState("ff3e::1", mld.Include, "2001:db8:1::10", "2001:db8:9::1")}},
	}, testAddrs("ff1e::1", "ff1e::99", "ff3e::1")
}

// The rules of two LANs and lc0: from lc0 (sources not on the LANs) to
// the LANs that listen, with each LAN's source filter; from each LAN (its
// own sources only) to the other LANs that listen and into lc0 for the
// groups lc0 wants; a group wanted by no other link gets no entry.
func TestRulesetGolden(t *testing.T) {
	lans, lc0 := twoLANs()
	got := ruleset("lcast_lc0", "lc0", lans, lc0)
	want := `table ip6 lcast_lc0
delete table ip6 lcast_lc0
table ip6 lcast_lc0 {
	chain prerouting {
		type filter hook prerouting priority raw; policy accept;
		ip6 hoplimit <= 1 return
		iifname "lc0" ip6 saddr != { 2001:db8:1::/64, fd00:1::/64, 2001:db8:2::/64 } ip6 daddr vmap { ff1e::1 : jump g0, ff3e::1 : jump g1, ff3e::2 : jump g2 }
		iifname "lan1" ip6 saddr { 2001:db8:1::/64, fd00:1::/64 } ip6 daddr vmap { ff1e::1 : jump g3, ff1e::99 : jump g4, ff3e::1 : jump g5 }
		iifname "lan2" ip6 saddr { 2001:db8:2::/64 } ip6 daddr vmap { ff1e::1 : jump g6, ff1e::99 : jump g7, ff3e::1 : jump g8, ff3e::2 : jump g9 }
	}
	chain g0 {
		dup to ff1e::1 device "lan1"
	}
	chain g1 {
		ip6 saddr { 2001:db8:1::10, 2001:db8:9::1 } dup to ff3e::1 device "lan2"
	}
	chain g2 {
		ip6 saddr != { 2001:db8:9::9 } dup to ff3e::2 device "lan1"
	}
	chain g3 {
		dup to ff1e::1 device "lc0"
	}
	chain g4 {
		dup to ff1e::99 device "lc0"
	}
	chain g5 {
		ip6 saddr { 2001:db8:1::10, 2001:db8:9::1 } dup to ff3e::1 device "lan2"
		dup to ff3e::1 device "lc0"
	}
	chain g6 {
		dup to ff1e::1 device "lan1"
		dup to ff1e::1 device "lc0"
	}
	chain g7 {
		dup to ff1e::99 device "lc0"
	}
	chain g8 {
		dup to ff3e::1 device "lc0"
	}
	chain g9 {
		ip6 saddr != { 2001:db8:9::9 } dup to ff3e::2 device "lan1"
	}
}
`
	if got != want {
		t.Errorf("ruleset:\n%s\nwant:\n%s", got, want)
	}
	nftCheck(t, got, "lc0", "lan1", "lan2")
}

// With no listeners anywhere (as Open starts) the script still replaces
// the table: an empty prerouting chain, no vmap and no hop-limit rule.
func TestRulesetEmpty(t *testing.T) {
	lans, _ := twoLANs()
	for i := range lans {
		lans[i].groups = nil
	}
	want := `table ip6 lcast_lc0
delete table ip6 lcast_lc0
table ip6 lcast_lc0 {
	chain prerouting {
		type filter hook prerouting priority raw; policy accept;
	}
}
`
	for name, c := range map[string]struct {
		lans []lanState
		lc0  []netip.Addr
	}{
		"no LANs":            {},
		"LANs, no listeners": {lans: lans},
	} {
		t.Run(name, func(t *testing.T) {
			got := ruleset("lcast_lc0", "lc0", c.lans, c.lc0)
			if got != want {
				t.Errorf("ruleset:\n%s\nwant:\n%s", got, want)
			}
			for _, bad := range []string{"vmap", "hoplimit", "dup"} {
				if strings.Contains(got, bad) {
					t.Errorf("%q in the empty ruleset", bad)
				}
			}
			nftCheck(t, got, "lc0", "lan1", "lan2")
		})
	}
}

// A LAN without prefixes has no sources that may go onward: no rule
// matches packets from it, while packets from lc0 and the other LAN still
// reach its listeners, and lc0's source exclusion names only the other
// LAN's prefixes.
func TestRulesetLANWithoutPrefixes(t *testing.T) {
	lans := []lanState{
		{name: "lan1", groups: []mld.GroupState{anySourceState("ff1e::1")}},
		{name: "lan2", prefixes: []netip.Prefix{testPrefix("2001:db8:2::/64")}, groups: []mld.GroupState{anySourceState("ff1e::2")}},
	}
	got := ruleset("lcast_lc0", "lc0", lans, testAddrs("ff1e::1", "ff1e::2"))
	want := `table ip6 lcast_lc0
delete table ip6 lcast_lc0
table ip6 lcast_lc0 {
	chain prerouting {
		type filter hook prerouting priority raw; policy accept;
		ip6 hoplimit <= 1 return
		iifname "lc0" ip6 saddr != { 2001:db8:2::/64 } ip6 daddr vmap { ff1e::1 : jump g0, ff1e::2 : jump g1 }
		iifname "lan2" ip6 saddr { 2001:db8:2::/64 } ip6 daddr vmap { ff1e::1 : jump g2, ff1e::2 : jump g3 }
	}
	chain g0 {
		dup to ff1e::1 device "lan1"
	}
	chain g1 {
		dup to ff1e::2 device "lan2"
	}
	chain g2 {
		dup to ff1e::1 device "lan1"
		dup to ff1e::1 device "lc0"
	}
	chain g3 {
		dup to ff1e::2 device "lc0"
	}
}
`
	if got != want {
		t.Errorf("ruleset:\n%s\nwant:\n%s", got, want)
	}
	if strings.Contains(got, `iifname "lan1"`) {
		t.Error(`a rule matches iifname "lan1", a LAN without prefixes`)
	}
	nftCheck(t, got, "lc0", "lan1", "lan2")

	// With no LAN prefixes at all, packets from lc0 are not filtered by
	// source (an empty set would not parse).
	lans[1].prefixes = nil
	got = ruleset("lcast_lc0", "lc0", lans, nil)
	if !strings.Contains(got, "\t\tiifname \"lc0\" ip6 daddr vmap { ff1e::1 : jump g0, ff1e::2 : jump g1 }\n") {
		t.Errorf("no prefixes: want an lc0 rule without a source match:\n%s", got)
	}
	if strings.Contains(got, "{ }") {
		t.Errorf("no prefixes: an empty set:\n%s", got)
	}
	nftCheck(t, got, "lc0", "lan1", "lan2")
}

// A group several links want appears once in each vmap (nftables refuses
// a duplicate key), with one chain copying it to every link that wants
// it; vmap keys are in address order whatever the LANs' order.
func TestRulesetDedupSorted(t *testing.T) {
	lans := []lanState{
		{name: "lan1", prefixes: []netip.Prefix{testPrefix("2001:db8:1::/64")},
			groups: []mld.GroupState{anySourceState("ff05::9"), anySourceState("ff3e::1")}},
		{name: "lan2", prefixes: []netip.Prefix{testPrefix("2001:db8:2::/64")},
			groups: []mld.GroupState{anySourceState("ff05::1"), anySourceState("ff05::9"), anySourceState("ff3e::1")}},
		{name: "lan3", prefixes: []netip.Prefix{testPrefix("2001:db8:3::/64")},
			groups: []mld.GroupState{anySourceState("ff05::9")}},
	}
	got := ruleset("lcast_lc0", "lc0", lans, testAddrs("ff05::1", "ff05::9", "ff0e::5"))
	var vmaps []string
	for _, line := range strings.Split(got, "\n") {
		if _, v, ok := strings.Cut(line, " vmap "); ok {
			vmaps = append(vmaps, v)
		}
	}
	want := []string{
		// from lc0: the LANs' groups
		"{ ff05::1 : jump g0, ff05::9 : jump g1, ff3e::1 : jump g2 }",
		// from lan1: lan2's ff05::1 (and lc0's), ff05::9 of lan2, lan3
		// and lc0, lc0's ff0e::5 and lan2's ff3e::1
		"{ ff05::1 : jump g3, ff05::9 : jump g4, ff0e::5 : jump g5, ff3e::1 : jump g6 }",
		// from lan2: ff05::1 only for lc0
		"{ ff05::1 : jump g7, ff05::9 : jump g8, ff0e::5 : jump g9, ff3e::1 : jump g10 }",
		"{ ff05::1 : jump g11, ff05::9 : jump g12, ff0e::5 : jump g13, ff3e::1 : jump g14 }",
	}
	if strings.Join(vmaps, "\n") != strings.Join(want, "\n") {
		t.Errorf("vmaps:\n%s\nwant:\n%s\nin:\n%s", strings.Join(vmaps, "\n"), strings.Join(want, "\n"), got)
	}
	chain := func(name string) string {
		_, rest, ok := strings.Cut(got, "\tchain "+name+" {\n")
		if !ok {
			t.Fatalf("no chain %s in:\n%s", name, got)
		}
		body, _, _ := strings.Cut(rest, "\t}\n")
		return body
	}
	for name, want := range map[string]string{
		"g1": "\t\tdup to ff05::9 device \"lan1\"\n\t\tdup to ff05::9 device \"lan2\"\n\t\tdup to ff05::9 device \"lan3\"\n",
		"g4": "\t\tdup to ff05::9 device \"lan2\"\n\t\tdup to ff05::9 device \"lan3\"\n\t\tdup to ff05::9 device \"lc0\"\n",
		"g7": "\t\tdup to ff05::1 device \"lc0\"\n",
	} {
		if got := chain(name); got != want {
			t.Errorf("chain %s:\n%s\nwant:\n%s", name, got, want)
		}
	}
	nftCheck(t, got, "lc0", "lan1", "lan2", "lan3")
}

// identifier makes an nftables identifier of any interface name: letters
// and digits stay, everything else becomes one underscore per character.
func TestIdentifier(t *testing.T) {
	for name, want := range map[string]string{
		"lan1":       "lan1",
		"LAN1":       "LAN1",
		"br-lan":     "br_lan",
		"eth0.100":   "eth0_100",
		"wg_0":       "wg_0",
		"lan:1 x":    "lan_1_x",
		"lanä":       "lan_",
		"":           "",
		"enp3s0f1np": "enp3s0f1np",
	} {
		if got := identifier(name); got != want {
			t.Errorf("identifier(%q) = %q, want %q", name, got, want)
		}
	}
}

// The whole script the gateway loads (the rules and the counters of
// foreign sources) is accepted by nft for LAN interfaces whose names are
// not identifiers.
func TestScriptNftCheck(t *testing.T) {
	lans, lc0 := twoLANs()
	lans[0].name, lans[1].name = "br-lan", "lan.2"
	g := &Gateway{table: "lcast_" + identifier("lc-0")}
	for _, l := range lans {
		g.lans = append(g.lans, &LAN{name: l.name, prefixes: l.prefixes})
	}
	g.lans[1].prefixes = nil // every multicast packet of routable scope from lan.2 is foreign
	script := ruleset(g.table, "lc-0", lans, lc0) + g.counters()
	nftCheck(t, script, "lc-0", "br-lan", "lan.2")
}

// nftCheck has nft check script (nft -c: parse, resolve and validate in
// the kernel, change nothing) in a new network namespace that has the
// interfaces devs. `dup ... device` needs its device to exist (nft says
// "Interface does not exist"; iifname does not), and this test's kernels
// have no dummy module, so each is one end of a veth pair. The check is a
// subtest of its own, "nft -c", which skips with the reason when it cannot
// run here (see requireNftCheck), so that the caller's checks of the
// script's text run, and count, everywhere.
func nftCheck(t *testing.T, script string, devs ...string) {
	t.Helper()
	t.Run("nft -c", func(t *testing.T) {
		requireNftCheck(t)
		var sh strings.Builder
		sh.WriteString("set -e\n")
		for i, d := range devs {
			fmt.Fprintf(&sh, "ip link add '%s' type veth peer name peer%d\n", d, i)
		}
		sh.WriteString("exec nft -c -f -\n")
		cmd := exec.Command("unshare", "--net", "sh", "-c", sh.String())
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("nft -c: %v\n%s\nscript:\n%s", err, bytes.TrimSpace(out), script)
		}
	})
}

// requireNftCheck skips the test, saying why, unless it can check a
// script with nft in a throwaway network namespace: it needs root, the
// commands unshare, ip and nft, and a kernel that lets it make the
// namespace. Under CI (CI set in the environment), which runs as root, it
// fails instead, so that nothing is skipped there unnoticed.
func requireNftCheck(t *testing.T) {
	t.Helper()
	cannot := func(reason string) {
		t.Helper()
		if os.Getenv("CI") != "" {
			t.Fatalf("CI must check the script with nft, but %s", reason)
		}
		t.Skipf("nft check skipped: %s", reason)
	}
	if os.Geteuid() != 0 {
		cannot("it needs root, to make a network namespace with the script's interfaces")
	}
	for _, cmd := range []string{"unshare", "ip", "nft"} {
		if _, err := exec.LookPath(cmd); err != nil {
			cannot(cmd + " is not installed")
		}
	}
	if out, err := exec.Command("unshare", "--net", "true").CombinedOutput(); err != nil {
		cannot(fmt.Sprintf("cannot make a network namespace: %v %s", err, bytes.TrimSpace(out)))
	}
}
