package e2e

import (
	"net/netip"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/netlab"
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
	m := newMeshWithLANs(t, 3, map[int]lanSpec{0: {lan1Prefix, 2}, 1: {lan2Prefix, 2}})
	m.up()
	return m
}

// lanCounter counts, in namespace ns, the UDP datagrams to port 4242 that
// arrive on eth0 and match (an nftables match, such as "ip6 saddr
// 2001:db8::1"), and returns a function that reads the count. (Counts of
// a stream that did arrive may come out low: veth merges datagrams into
// one packet at times. They are exact for streams that must not arrive.)
func lanCounter(t *testing.T, ns *netlab.Namespace, match string) func() int {
	t.Helper()
	nftTable(t, ns, "lancount", "chain in { type filter hook prerouting priority 0; iifname \"eth0\" "+match+" udp dport 4242 counter; }\n")
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
	s := ""
	if src.IsValid() {
		s = src.String()
	}
	p := host.Start("env", helperEnv+"=send", lcastTestBinary(), group, strconv.Itoa(n), strconv.Itoa(rate), "200", s, lanHops)
	waitExit(t, p, time.Duration(n/rate)*time.Second+10*time.Second, "sender in "+host.Name)
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
	l1, l2 := m.lans[0], m.lans[1]
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
	fromAfar := lanCounter(t, l2.Hosts[0], "ip6 saddr != "+lan2Prefix.String())
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
	t.Logf("site 1:\n%s", m.sites[0].Run(lcastBin, "status", "-c", m.nodes[0].cfg))
}
