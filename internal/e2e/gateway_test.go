package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/control"
	"github.com/librecast/lcast/internal/netlab"
	"github.com/librecast/lcast/mld"
)

var (
	lan1Prefix = netip.MustParsePrefix("2001:db8:101::/64")
	lan2Prefix = netip.MustParsePrefix("2001:db8:102::/64")
)

// lanHops is the hop limit LAN hosts send with in these tests: each
// gateway's kernel takes one off as it routes (onto lc0, then onto the
// LAN), and a packet with hop limit 1 is not routed.
const lanHops = "8"

// newGateways returns three sites: sites 1 and 2 gateways of a LAN each
// (lan1 and lan2, with two hosts that run no lcast), site 3 a node in host
// mode. The daemons are started; sessions are not waited for.
func newGateways(t *testing.T) *mesh {
	t.Helper()
	m := newMeshWithLANs(t, 3, map[int][]lanSpec{0: {{lan1Prefix, 2}}, 1: {{lan2Prefix, 2}}})
	m.up()
	return m
}

// lanCounter counts, in namespace ns, the UDP datagrams to port 4242 that
// arrive on iface and match (an nftables match, such as "ip6 saddr
// 2001:db8::1"), and returns a function that reads the count. (Counts of
// a stream that did arrive may come out low: veth merges datagrams into
// one packet at times. They are exact for streams that must not arrive.)
func lanCounter(t *testing.T, ns *netlab.Namespace, iface, match string) func() int {
	t.Helper()
	nftTable(t, ns, "lancount", "chain in { type filter hook prerouting priority 0; iifname \""+iface+"\" "+match+" udp dport 4242 counter; }\n")
	return func() int {
		m := regexp.MustCompile(`counter packets (\d+)`).FindStringSubmatch(ns.Run("nft", "list", "table", "inet", "lancount"))
		if m == nil {
			t.Fatalf("no counter in %s", ns.Name)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
}

// stream has host send n datagrams at rate per second to group with the
// test's hop limit (from src if valid), and waits until it is done.
func stream(t *testing.T, host *netlab.Namespace, group string, n, rate int, src netip.Addr) {
	t.Helper()
	waitExit(t, startStream(host, group, n, rate, src), time.Duration(n/rate)*time.Second+10*time.Second, "sender in "+host.Name)
}

// startStream starts what stream does, without waiting.
func startStream(host *netlab.Namespace, group string, n, rate int, src netip.Addr) *netlab.Process {
	s := ""
	if src.IsValid() {
		s = src.String()
	}
	return host.Start("env", helperEnv+"=send", lcastTestBinary(), group, strconv.Itoa(n), strconv.Itoa(rate), "200", s, lanHops)
}

// waitLANGroup waits until gateway node i lists group on its LAN (or no
// longer does), and returns how long that took.
func (m *mesh) waitLANGroup(t *testing.T, i int, group string, want bool, timeout time.Duration) time.Duration {
	t.Helper()
	took, ok := netlab.Poll(timeout, func() bool {
		for _, l := range m.nodes[i].status(t).LANs {
			for _, g := range l.Groups {
				if g.Group == group {
					return want
				}
			}
		}
		return !want
	})
	if !ok {
		t.Fatalf("site %d: group %s on its LAN is %v after %v, want %v:\n%s", i+1, group, !want, timeout, want, m.diagnose(t))
	}
	return took
}

// A LAN host at one gateway's site sends; a host on another gateway's LAN
// and a program on a host-mode node receive everything, once; and the
// reverse: a host-mode node's program and a LAN host send to a LAN host.
// A LAN with no listener carries none of it.
func TestGatewayLANToLAN(t *testing.T) {
	m := newGateways(t)
	l1, l2 := m.lans[0][0], m.lans[1][0]
	const n = 1000
	// lan1's first host sends to a host on lan2 and a program in site 3.
	recvL2 := startHelper(t, l2.Hosts[0], "recv", "ff1e::101", "eth0", "2s")
	recv3 := startHelper(t, m.sites[2].Namespace, "recv", "ff1e::101", "lc0", "2s")
	// The stream is for complete delivery, so it starts once site 1 knows
	// both subscriptions (as TestFanOut does).
	m.waitSubscribed(t, 0, 1, "ff1e::101", true, 10*time.Second)
	m.waitSubscribed(t, 0, 2, "ff1e::101", true, 10*time.Second)
	stream(t, l1.Hosts[0], "ff1e::101", n, 500, netip.Addr{})
	for name, p := range map[string]*netlab.Process{"lan2's host": recvL2, "site 3": recv3} {
		waitExit(t, p, 15*time.Second, name)
		if r := parseReceived(t, p.Output()); r.unique != n || r.dups != 0 {
			t.Errorf("%s received %+v of %d from lan1's host", name, r, n)
		}
	}
	// The reverse: site 3's program and lan2's second host send to a host
	// on lan1; lan2's first host listens to neither.
	recvL1 := startHelper(t, l1.Hosts[0], "recv", "ff1e::102", "eth0", "2s")
	fromAfar := lanCounter(t, l2.Hosts[0], "eth0", "ip6 saddr != "+lan2Prefix.String())
	// Complete delivery is measured once the sender's site knows the subscription.
	m.waitSubscribed(t, 2, 0, "ff1e::102", true, 10*time.Second)
	m.waitSubscribed(t, 1, 0, "ff1e::102", true, 10*time.Second)
	stream(t, m.sites[2].Namespace, "ff1e::102", n, 500, netip.Addr{})
	waitExit(t, recvL1, 15*time.Second, "lan1's host")
	if r := parseReceived(t, recvL1.Output()); r.unique != n || r.dups != 0 {
		t.Errorf("lan1's host received %+v of %d from site 3", r, n)
	}
	recvL1 = startHelper(t, l1.Hosts[0], "recv", "ff1e::102", "eth0", "2s")
	stream(t, l2.Hosts[1], "ff1e::102", n, 500, netip.Addr{})
	waitExit(t, recvL1, 15*time.Second, "lan1's host")
	if r := parseReceived(t, recvL1.Output()); r.unique != n || r.dups != 0 {
		t.Errorf("lan1's host received %+v of %d from lan2's host", r, n)
	}
	if got := fromAfar(); got != 0 {
		t.Errorf("lan2, with no listener of ff1e::102, carried %d datagrams from other sites", got)
	}
	// A datagram sent with hop limit 1 stays on its LAN, listeners
	// elsewhere or not.
	startHelper(t, l2.Hosts[0], "join", "ff1e::103", "eth0")
	// Complete delivery is measured once the sender's site knows the subscription.
	m.waitSubscribed(t, 0, 1, "ff1e::103", true, 10*time.Second)
	waitExit(t, l1.Hosts[0].Start("env", helperEnv+"=send", lcastTestBinary(), "ff1e::103", "100", "500", "200", "", "1"), 10*time.Second, "sender with hop limit 1")
	time.Sleep(500 * time.Millisecond) // what was carried has arrived
	if got := fromAfar(); got != 0 {
		t.Errorf("%d datagrams sent with hop limit 1 left their LAN", got)
	}
	t.Logf("site 1:\n%s", m.sites[0].Run(lcastBin, "status", "-c", m.nodes[0].cfg))
}

var firstAtRE = regexp.MustCompile(`first \d+ at (\d+)`)

// joinToFirst returns how long after a receiver joined its first datagram
// came, from its output.
func joinToFirst(t *testing.T, out string) time.Duration {
	t.Helper()
	j, f := joinedRE.FindStringSubmatch(out), firstAtRE.FindStringSubmatch(out)
	if j == nil || f == nil {
		t.Fatalf("receiver printed no join or first datagram:\n%s", out)
	}
	jn, _ := strconv.ParseInt(j[1], 10, 64)
	fn, _ := strconv.ParseInt(f[1], 10, 64)
	return time.Duration(fn - jn)
}

// A join on a LAN while a stream runs gets data within 1 s; a leave stops
// the LAN's copy within 1 s; before the join the LAN carries none of it.
// The daemons are built for use: the times are what users see.
func TestGatewayJoinLeave(t *testing.T) {
	m := newMeshWithLANs(t, 2, map[int][]lanSpec{0: {{lan1Prefix, 2}}})
	m.runPlain(t)
	m.up()
	l := m.lans[0][0]
	src := m.nodes[1].status(t).Address
	seen := lanCounter(t, l.Hosts[1], "eth0", "ip6 saddr "+src)
	sender := startStream(m.sites[1].Namespace, "ff1e::201", 12000, 1000, netip.Addr{})
	defer sender.Stop()
	// The stream runs a while before anyone on the LAN listens.
	time.Sleep(2 * time.Second)
	if n := seen(); n != 0 {
		t.Fatalf("the LAN carried %d datagrams before any host there listened", n)
	}
	recv := startHelper(t, l.Hosts[0], "recv", "ff1e::201", "eth0", "5s")
	if !recv.WaitOutput("first ", 5*time.Second) {
		t.Fatalf("nothing arrived on the LAN after a join:\n%s", m.diagnose(t))
	}
	join := joinToFirst(t, recv.Output())
	time.Sleep(2 * time.Second)
	// The leave: the program ends, and its host's kernel reports it.
	left := time.Now()
	recv.Stop()
	last, lastAt := seen(), left
	for time.Since(left) < 2*time.Second {
		if n := seen(); n != last {
			last, lastAt = n, time.Now()
		}
		time.Sleep(20 * time.Millisecond)
	}
	leave := lastAt.Sub(left)
	t.Logf("LAN join to first datagram %v, leave to the LAN's last %v (polled every 20 ms)", join.Round(time.Millisecond), leave.Round(time.Millisecond))
	if join > time.Second {
		t.Errorf("the first datagram came %v after the join on the LAN, want within 1 s", join)
	}
	if leave > time.Second {
		t.Errorf("the LAN carried the stream until %v after the leave, want within 1 s", leave)
	}
}

// A host on a LAN joined to (S,G) gets S's packets, and another source's
// packets to G do not cross onto its LAN.
func TestGatewaySSM(t *testing.T) {
	m := newGateways(t)
	l1, l2 := m.lans[0][0], m.lans[1][0]
	s := m.nodes[2].status(t).Address
	recv := startHelper(t, l1.Hosts[0], "recv", "ff3e::301", "eth0", "2s", s)
	other := lanCounter(t, l1.Hosts[1], "eth0", "ip6 saddr "+l2.HostAddrs[0].String())
	// Complete delivery is measured once the sender's site knows the subscription.
	m.waitSubscribed(t, 2, 0, "ff3e::301", true, 10*time.Second)
	fromS := startStream(m.sites[2].Namespace, "ff3e::301", 500, 500, netip.Addr{})
	fromOther := startStream(l2.Hosts[0], "ff3e::301", 500, 500, netip.Addr{})
	waitExit(t, fromS, 15*time.Second, "S")
	waitExit(t, fromOther, 15*time.Second, "the other source")
	waitExit(t, recv, 15*time.Second, "receiver")
	if r := parseReceived(t, recv.Output()); r.unique != 500 || r.dups != 0 || r.total != 500 {
		t.Errorf("the (S,G) listener received %+v, want S's 500 once", r)
	}
	if n := other(); n != 0 {
		t.Errorf("%d datagrams of another source crossed onto the LAN of an (S,G) listener", n)
	}
}

// Two LANs behind one gateway exchange multicast between them, and with a
// remote site, both ways.
func TestGatewayTwoLANs(t *testing.T) {
	m := newMeshWithLANs(t, 2, map[int][]lanSpec{0: {{lan1Prefix, 1}, {netip.MustParsePrefix("2001:db8:111::/64"), 1}}})
	m.up()
	a, b := m.lans[0][0], m.lans[0][1]
	check := func(p *netlab.Process, what string) {
		t.Helper()
		waitExit(t, p, 15*time.Second, what)
		if r := parseReceived(t, p.Output()); r.unique != 500 || r.dups != 0 {
			t.Errorf("%s received %+v of 500", what, r)
		}
	}
	recvB := startHelper(t, b.Hosts[0], "recv", "ff1e::401", "eth0", "2s")
	recv2 := startHelper(t, m.sites[1].Namespace, "recv", "ff1e::401", "lc0", "2s")
	m.waitLANGroup(t, 0, "ff1e::401", true, 5*time.Second)
	// Complete delivery is measured once the sender's site knows the subscription.
	m.waitSubscribed(t, 0, 1, "ff1e::401", true, 10*time.Second)
	stream(t, a.Hosts[0], "ff1e::401", 500, 500, netip.Addr{})
	check(recvB, "the other LAN's host")
	check(recv2, "the remote site")
	recvA := startHelper(t, a.Hosts[0], "recv", "ff1e::402", "eth0", "2s")
	recvB = startHelper(t, b.Hosts[0], "recv", "ff1e::402", "eth0", "2s")
	// Complete delivery is measured once the gateway knows both LANs'
	// listeners (either one makes it subscribe) and the sender's site knows
	// the subscription.
	if _, ok := netlab.Poll(5*time.Second, func() bool {
		n := 0
		for _, l := range m.nodes[0].status(t).LANs {
			if slices.ContainsFunc(l.Groups, func(g control.Group) bool { return g.Group == "ff1e::402" }) {
				n++
			}
		}
		return n == 2
	}); !ok {
		t.Fatalf("the gateway does not know both LANs' listeners of ff1e::402: %+v", m.nodes[0].status(t).LANs)
	}
	m.waitSubscribed(t, 1, 0, "ff1e::402", true, 10*time.Second)
	stream(t, m.sites[1].Namespace, "ff1e::402", 500, 500, netip.Addr{})
	check(recvA, "the first LAN's host")
	check(recvB, "the second LAN's host")
}

// A gateway that crashes and restarts relearns its LAN's listeners within
// 2 s of its start, and the stream to them resumes.
func TestGatewayRestart(t *testing.T) {
	m := newMeshWithLANs(t, 2, map[int][]lanSpec{0: {{lan1Prefix, 1}}})
	m.runPlain(t)
	m.up()
	l := m.lans[0][0]
	recv := startHelper(t, l.Hosts[0], "recv", "ff1e::501", "eth0", "3s")
	// Complete delivery is measured once the sender's site knows the subscription.
	m.waitSubscribed(t, 1, 0, "ff1e::501", true, 10*time.Second)
	sender := startStream(m.sites[1].Namespace, "ff1e::501", 8000, 1000, netip.Addr{})
	time.Sleep(2 * time.Second) // mid-stream
	gw := m.nodes[0]
	gw.daemon.Signal(syscall.SIGKILL)
	gw.daemon.Wait(5 * time.Second)
	gw.up()
	var relearnt time.Duration
	if _, ok := netlab.Poll(5*time.Second, func() bool {
		for _, l := range gw.status(t).LANs {
			for _, g := range l.Groups {
				if g.Group == "ff1e::501" {
					relearnt = time.Since(gw.upAt)
					return true
				}
			}
		}
		return false
	}); !ok {
		t.Fatalf("the restarted gateway did not relearn its LAN's listener:\n%s", m.diagnose(t))
	}
	waitExit(t, sender, 20*time.Second, "sender")
	waitExit(t, recv, 20*time.Second, "receiver")
	r := parseReceived(t, recv.Output())
	t.Logf("relearnt %v after lcast up; the LAN's host received %+v of 8000", relearnt.Round(time.Millisecond), r)
	if relearnt > 2*time.Second {
		t.Errorf("the LAN's listener was relearnt %v after the restart, want within 2 s", relearnt)
	}
	if r.last != 7999 || r.dups != 0 {
		t.Errorf("delivery did not resume after the restart: %+v", r)
	}
}

// With a router of a lower address querying on the LAN, lcast stops
// querying and still learns the LAN's listeners; when that router falls
// silent, lcast becomes the querier again.
func TestGatewayQuerierElection(t *testing.T) {
	m := newMeshWithLANs(t, 1, map[int][]lanSpec{0: {{lan1Prefix, 2}}})
	m.up()
	l := m.lans[0][0]
	querier := func() (string, bool) {
		st := m.nodes[0].status(t)
		if len(st.LANs) != 1 {
			t.Fatalf("status has %d LANs, want 1", len(st.LANs))
		}
		return st.LANs[0].Querier, st.LANs[0].IsQuerier
	}
	if _, self := querier(); !self {
		t.Fatal("lcast is not its LAN's querier at start")
	}
	l.Hosts[1].Run("ip", "addr", "add", "fe80::1/64", "dev", "eth0", "nodad")
	other := startHelperUntil(t, l.Hosts[1], "querying", "mldquerier", "eth0", "fe80::1")
	if _, ok := netlab.Poll(3*time.Second, func() bool { q, self := querier(); return q == "fe80::1" && !self }); !ok {
		q, self := querier()
		t.Fatalf("with fe80::1 querying, status says querier %s (this node: %v)", q, self)
	}
	startHelper(t, l.Hosts[0], "join", "ff1e::601", "eth0")
	m.waitLANGroup(t, 0, "ff1e::601", true, 2*time.Second)
	other.Stop()
	took, ok := netlab.Poll(10*time.Second, func() bool { _, self := querier(); return self })
	if !ok {
		t.Fatal("lcast did not become the querier again after the other router fell silent")
	}
	t.Logf("querier again %v after the other router's last query (its interval 2 s, robustness 2)", took.Round(100*time.Millisecond))
}

// mldquerierHelper: "mldquerier IFACE SOURCE": sends an MLDv2 General
// Query from SOURCE (a link-local address) onto the Ethernet IFACE every
// 2 s (QQIC 2 s, QRV 2, maximum response 1 s), printing "querying" after
// the first, until killed.
func mldquerierHelper(args []string) int {
	ifi, err := net.InterfaceByName(args[0])
	if err != nil {
		return helperFail(err)
	}
	fd, to, err := packetSocket(ifi.Index)
	if err != nil {
		return helperFail(err)
	}
	to.Halen = 6
	copy(to.Addr[:], []byte{0x33, 0x33, 0, 0, 0, 1})
	query := mld.AppendQuery(nil, netip.MustParseAddr(args[1]), netip.Addr{}, nil, 1000, 2, 2)
	for i := 0; ; i++ {
		if err := syscall.Sendto(fd, query, 0, to); err != nil {
			return helperFail(err)
		}
		if i == 0 {
			fmt.Println("querying")
		}
		time.Sleep(2 * time.Second)
	}
}

// A second lcast that would be the gateway of the same network namespace
// does not start, and says why; the first carries on. (A multicast router
// of another kind, which holds the kernel's MRT6 socket, is refused too:
// package mroute tests it where the kernel has MRT6.)
func TestGatewayConflict(t *testing.T) {
	m := newMeshWithLANs(t, 1, map[int][]lanSpec{0: {{lan1Prefix, 1}}})
	m.up()
	second := newNodeWithKey(t, m.sites[0].Namespace, newKey(t), "interface = \"lc1\"\nlisten_port = 51841\nlan_interfaces = [\"lan1\"]\n")
	second.start()
	if exited, err := second.daemon.Wait(10 * time.Second); !exited || err == nil {
		t.Fatalf("a second gateway in the namespace: exited %v, %v\n%s", exited, err, second.daemon.Output())
	}
	want := "is another lcast running in this network namespace?"
	if !strings.Contains(second.daemon.Output(), want) {
		t.Errorf("the second gateway said:\n%s\nwant it to say %q", second.daemon.Output(), want)
	}
	if err := m.sites[0].Command("ip", "link", "show", "lc1").Run(); err == nil {
		t.Error("the second gateway left lc1 behind")
	}
	if st := m.nodes[0].status(t); len(st.LANs) != 1 {
		t.Errorf("the first gateway's status after the conflict: %+v", st.LANs)
	}
}

// A LAN host sending with another LAN's prefix as its source is not
// carried, and counted; a node takes a gateway's LAN packets only for the
// prefixes its own configuration lists for that gateway (a reload that
// drops them ends it: forged_source).
func TestGatewayForgedSources(t *testing.T) {
	m := newGateways(t)
	l1, l2 := m.lans[0][0], m.lans[1][0]
	spoofer, spoofed := l1.Hosts[1], netip.MustParseAddr("2001:db8:102::99")
	spoofer.Run("ip", "addr", "add", spoofed.String()+"/128", "dev", "eth0", "nodad")
	recv2 := startHelper(t, l2.Hosts[0], "join", "ff1e::701", "eth0")
	defer recv2.Stop()
	recv3 := startHelper(t, m.sites[2].Namespace, "join", "ff1e::701", "lc0")
	defer recv3.Stop()
	atLAN2 := lanCounter(t, l2.Hosts[1], "eth0", "ip6 saddr "+spoofed.String())
	at3 := lanCounter(t, m.sites[2].Namespace, "lc0", "ip6 saddr "+spoofed.String())
	// Complete delivery is measured once the sender's site knows the subscription.
	m.waitSubscribed(t, 0, 1, "ff1e::701", true, 10*time.Second)
	m.waitSubscribed(t, 0, 2, "ff1e::701", true, 10*time.Second)
	stream(t, spoofer, "ff1e::701", 200, 500, spoofed)
	time.Sleep(500 * time.Millisecond) // what was carried has arrived
	if n, k := atLAN2(), at3(); n != 0 || k != 0 {
		t.Errorf("a spoofed LAN source was carried: %d datagrams reached lan2, %d site 3", n, k)
	}
	if st := m.nodes[0].status(t); len(st.LANs) != 1 || st.LANs[0].ForeignSources == 0 {
		t.Errorf("site 1 counted no foreign source on lan1: %+v", st.LANs)
	}
	// Site 3 stops trusting site 1's LAN prefix.
	n3 := m.nodes[2]
	doc, err := os.ReadFile(n3.cfg)
	if err != nil {
		t.Fatal(err)
	}
	trimmed := strings.Replace(string(doc), fmt.Sprintf("lan_prefixes = [%q]\n", lan1Prefix), "", 1)
	if trimmed == string(doc) {
		t.Fatal("site 3's configuration lists no lan_prefixes for site 1")
	}
	if err := os.WriteFile(n3.cfg, []byte(trimmed), 0o600); err != nil {
		t.Fatal(err)
	}
	n3.daemon.Signal(syscall.SIGHUP)
	if !n3.daemon.WaitOutput("reloaded", 5*time.Second) {
		t.Fatalf("site 3 did not reload:\n%s", n3.daemon.Output())
	}
	before := n3.status(t).Drops["forged_source"]
	from := lanCounter(t, m.sites[2].Namespace, "lc0", "ip6 saddr "+l1.HostAddrs[0].String())
	stream(t, l1.Hosts[0], "ff1e::701", 200, 500, netip.Addr{})
	time.Sleep(500 * time.Millisecond) // what was carried has arrived
	if n := from(); n != 0 {
		t.Errorf("site 3 took %d of site 1's LAN packets after its configuration stopped listing the prefix", n)
	}
	if after := n3.status(t).Drops["forged_source"]; after < before+200 {
		t.Errorf("site 3 counted %d forged_source drops for 200 packets", after-before)
	}
}

// A Librecast 0.5 program on a LAN host receives what the same program
// sends on another site's LAN; neither host runs lcast.
func TestGatewayLibrecast(t *testing.T) {
	bin := buildLcchat(t)
	m := newGateways(t)
	l1, l2 := m.lans[0][0], m.lans[1][0]
	r := l2.Hosts[0].Start(bin, "recv", "lcast-test-channel", "20")
	if !r.WaitOutput("ready", 5*time.Second) {
		t.Fatalf("lcchat recv: %s", r.Output())
	}
	var group string
	netlab.Poll(5*time.Second, func() bool {
		for _, l := range m.nodes[1].status(t).LANs {
			for _, g := range l.Groups {
				if strings.HasPrefix(g.Group, "ff1e:") {
					group = g.Group
				}
			}
		}
		return group != ""
	})
	if group == "" {
		t.Fatal("the Librecast channel's group never showed on site 2's LAN")
	}
	// Complete delivery is measured once the sender's site knows the subscription.
	m.waitSubscribed(t, 0, 1, group, true, 10*time.Second)
	waitExit(t, l1.Hosts[0].Start(bin, "send", "lcast-test-channel", "20"), 10*time.Second, "lcchat send")
	waitExit(t, r, 5*time.Second, "lcchat recv")
	if n := strings.Count(r.Output(), "got message "); n != 20 {
		t.Errorf("the LAN host received %d of 20 messages:\n%s", n, r.Output())
	}
}

// A gateway needs CAP_NET_RAW besides CAP_NET_ADMIN, as lcast@.service
// grants, and nothing else: with only those it learns its LAN's listener
// and routes a stream onto the LAN.
func TestGatewayCapabilities(t *testing.T) {
	netlab.Require(t, "setpriv")
	m := newMeshWithLANs(t, 2, map[int][]lanSpec{0: {{lan1Prefix, 1}}})
	m.nodes[0].upUnder("setpriv", "--bounding-set=-all,+net_admin,+net_raw", "--inh-caps=-all", "--")
	m.nodes[1].up()
	l := m.lans[0][0]
	recv := startHelper(t, l.Hosts[0], "recv", "ff1e::801", "eth0", "1s")
	// Complete delivery is measured once the sender's site knows the subscription.
	m.waitSubscribed(t, 1, 0, "ff1e::801", true, 10*time.Second)
	stream(t, m.sites[1].Namespace, "ff1e::801", 500, 500, netip.Addr{})
	waitExit(t, recv, 10*time.Second, "receiver")
	if r := parseReceived(t, recv.Output()); r.unique != 500 || r.dups != 0 {
		t.Errorf("the LAN host received %+v of 500", r)
	}
	if out := m.nodes[0].daemon.Output(); strings.Contains(out, "level=WARN") || strings.Contains(out, "level=ERROR") {
		t.Errorf("with only these capabilities the gateway complained:\n%s", out)
	}
}
