package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/netlab"
	"github.com/librecast/lcast/peer"
)

// link is one [[peer]] table: node from lists node to, with to's endpoint
// unless to is behind a NAT (it then connects to from).
type link struct {
	from, to   int
	noEndpoint bool
}

// newTopology starts lcast in sites, node i relaying if relays[i], each
// listing the peers links give (a relay marked relay = true, trusted to
// pass on other nodes' packets), and waits until every session is up.
func newTopology(t testing.TB, inet *netlab.Internet, sites []*netlab.Site, relays []bool, links []link) *mesh {
	t.Helper()
	m := &mesh{inet: inet, sites: sites}
	keys := make([]peer.Key, len(sites))
	for i := range keys {
		keys[i] = newKey(t)
	}
	for i := range sites {
		extra := ""
		if relays[i] {
			extra = "relay = true\n"
		}
		for _, l := range links {
			switch {
			case l.from != i:
				continue
			case l.noEndpoint:
				extra += fmt.Sprintf("[[peer]]\npublic_key = %q\n", keys[l.to].PublicKey())
			default:
				extra += peerTable(keys[l.to], sites[l.to])
			}
			if relays[l.to] {
				extra += "relay = true\n"
			}
		}
		m.nodes = append(m.nodes, newNodeWithKey(t, sites[i].Namespace, keys[i], extra))
	}
	for _, n := range m.nodes {
		n.up()
	}
	// Relay tests check which paths packets take and that they arrive
	// exactly once, not start-up: they start from sessions that are up.
	m.waitConnected(t)
	return m
}

// both returns the links between a and b, each listing the other.
func both(a, b int) []link { return []link{{from: a, to: b}, {from: b, to: a}} }

// routesOf returns, for every node, the peers it sends group's packets to
// with their hops, as text to compare.
func (m *mesh) routesOf(t testing.TB, group string) string {
	var b strings.Builder
	for i, n := range m.nodes {
		if n.daemon == nil {
			continue
		}
		if exited, _ := n.daemon.Wait(0); exited {
			continue
		}
		for _, f := range n.status(t).Forwarding {
			if f.Group == group {
				for _, to := range f.To {
					fmt.Fprintf(&b, "%d->%s/%d ", i+1, to.PublicKey[:6], to.Hops)
				}
			}
		}
	}
	return b.String()
}

// waitSettled waits until the subscriptions to group stop changing at
// every node for 1.5 s (a lost message is sent again within a second), with
// node from forwarding the group somewhere (or nowhere, if gone), and
// returns how long that took, stable time included.
func (m *mesh) waitSettled(t testing.TB, from int, group string, gone bool) time.Duration {
	t.Helper()
	start := time.Now()
	last, since := "", time.Now()
	for time.Since(start) < 20*time.Second {
		cur := m.routesOf(t, group)
		if cur != last {
			last, since = cur, time.Now()
		}
		ok := strings.Contains(cur, fmt.Sprintf("%d->", from+1))
		if gone {
			ok = cur == ""
		}
		if ok && time.Since(since) >= 1500*time.Millisecond {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("subscriptions to %s did not settle (gone=%v): %s\n%s", group, gone, last, m.diagnose(t))
	return 0
}

// relayStream starts receivers of group in the sites to, waits until the
// subscriptions have settled, and sends n datagrams at rate from site from.
func (m *mesh) relayStream(t testing.TB, from int, to []int, group string, n, rate int) (recvs []*netlab.Process, send *netlab.Process) {
	t.Helper()
	for _, i := range to {
		recvs = append(recvs, startHelper(t, m.sites[i].Namespace, "recv", group, "lc0", "2s"))
	}
	settled := m.waitSettled(t, from, group, false)
	t.Logf("subscriptions to %s settled after %v: %s", group, settled.Round(time.Millisecond), m.routesOf(t, group))
	return recvs, m.send(from, group, strconv.Itoa(n), strconv.Itoa(rate), "1200")
}

// expectOnce checks that each receiver got all n datagrams exactly once.
func (m *mesh) expectOnce(t testing.TB, recvs []*netlab.Process, sites []int, n int) []recvResult {
	t.Helper()
	var out []recvResult
	for k, r := range recvs {
		waitExit(t, r, time.Duration(n)*time.Millisecond+15*time.Second, fmt.Sprintf("receiver in site %d", sites[k]+1))
		res := parseReceived(t, r.Output())
		t.Logf("site %d: %d of %d unique, %d duplicates, longest gap %d ms", sites[k]+1, res.unique, n, res.dups, res.maxGap)
		if res.unique != n || res.dups != 0 {
			t.Errorf("site %d received %d of %d unique with %d duplicates\n%s", sites[k]+1, res.unique, n, res.dups, m.diagnose(t))
		}
		out = append(out, res)
	}
	return out
}

// A chain A - R - B, where A and B list only the relay R: B receives A's
// stream completely and once, and A B's; A and B never become peers.
func TestRelayChain(t *testing.T) {
	inet := netlab.NewInternet(t)
	sites := []*netlab.Site{inet.AddSite("lcast-a"), inet.AddSite("lcast-r"), inet.AddSite("lcast-b")}
	m := newTopology(t, inet, sites, []bool{false, true, false}, append(both(0, 1), both(1, 2)...))
	const n = 3000
	for _, dir := range []struct{ from, to int }{{0, 2}, {2, 0}} {
		recvs, send := m.relayStream(t, dir.from, []int{dir.to}, "ff1e::71", n, 1000)
		waitExit(t, send, 10*time.Second, "sender")
		if dir.from == 0 { // the relay's status, as people read it
			out, err := m.nodes[1].ns.Command(lcastBin, "status", "-c", m.nodes[1].cfg).CombinedOutput()
			t.Logf("lcast status at the relay: %v\n%s", err, out)
		}
		m.expectOnce(t, recvs, []int{dir.to}, n)
		m.waitSettled(t, dir.from, "ff1e::71", true)
	}
	st := m.nodes[1].status(t)
	if !st.Relay || len(st.Peers) != 2 || m.nodes[0].status(t).Peers[0].Relay != true {
		t.Fatalf("relay status %+v; A sees R as relay: %v", st, m.nodes[0].status(t).Peers[0].Relay)
	}
	if d := st.Drops["duplicate"] + m.nodes[0].status(t).Drops["duplicate"] + m.nodes[2].status(t).Drops["duplicate"]; d != 0 {
		t.Errorf("%d duplicates dropped in a chain, which has no second path", d)
	}
}

// A ring of four relays, each listing its two neighbours: receivers on
// three of them get every packet of the fourth's stream exactly once (the
// second copy, around the other side of the ring, is dropped where it
// meets the first); after the receivers leave, no subscription keeps
// circling. Killing one relay during a stream, the receivers beyond it
// keep receiving over the other side.
func TestRelayRing(t *testing.T) {
	inet := netlab.NewInternet(t)
	var sites []*netlab.Site
	var links []link
	for i := range 4 {
		sites = append(sites, inet.AddSite(fmt.Sprintf("lcast-ring%d", i+1)))
		links = append(links, both(i, (i+1)%4)...)
	}
	m := newTopology(t, inet, sites, []bool{true, true, true, true}, links)
	const n = 3000
	to := []int{1, 2, 3}
	recvs, send := m.relayStream(t, 0, to, "ff1e::72", n, 1000)
	waitExit(t, send, 10*time.Second, "sender")
	m.expectOnce(t, recvs, to, n)
	var dups uint64
	for _, nd := range m.nodes {
		// A relayed copy that overtakes its direct one is relay_ahead.
		drops := nd.status(t).Drops
		dups += drops["duplicate"] + drops["relay_ahead"]
	}
	t.Logf("duplicates dropped in the ring: %d (%.2f per packet)", dups, float64(dups)/n)
	gone := m.waitSettled(t, 0, "ff1e::72", true)
	t.Logf("after the receivers left, the ring forgot the group in %v (1.5 s of it confirming)", gone.Round(time.Millisecond))

	// Kill relay 2 in the middle of a stream from relay 1 to relays 3 and 4.
	const long = 6000
	to = []int{2, 3}
	recvs, send = m.relayStream(t, 0, to, "ff1e::73", long, 1000)
	time.Sleep(2 * time.Second)
	m.nodes[1].daemon.Signal(syscall.SIGKILL)
	killed := time.Now()
	m.nodes[1].daemon.Wait(5 * time.Second)
	waitExit(t, send, 15*time.Second, "sender")
	res := m.expectOnce(t, recvs, to, long)
	t.Logf("relay 2 killed %v into the stream: longest gap at relay 3 %d ms, at relay 4 %d ms (%v ago)", 2*time.Second, res[0].maxGap, res[1].maxGap, time.Since(killed).Round(time.Second))
}

// Two sites behind NAT (nftables masquerade, each in its own namespace
// behind a router of its own) know only a relay on the Internet, which
// cannot reach them until they speak: each receives the other's stream
// through the relay, completely and once.
func TestRelayBetweenNATs(t *testing.T) {
	netlab.Require(t, "nft")
	inet := netlab.NewInternet(t)
	relay := inet.AddSite("lcast-relay")
	home1, nat1 := inet.AddNATSite("lcast-home1")
	home2, _ := inet.AddNATSite("lcast-home2")
	// The Internet does not route the homes' addresses: only the NAT
	// lets them out.
	if relay.Command("ping", "-6", "-c1", "-W1", home1.Addr.String()).Run() == nil {
		t.Fatalf("the relay reaches %s behind the NAT directly", home1.Addr)
	}
	sites := []*netlab.Site{home1, relay, home2}
	m := newTopology(t, inet, sites, []bool{false, true, false}, []link{
		{from: 0, to: 1}, {from: 1, to: 0, noEndpoint: true},
		{from: 2, to: 1}, {from: 1, to: 2, noEndpoint: true},
	})
	if ep := m.nodes[1].status(t).Peers[0].Endpoint; !strings.HasPrefix(ep, "["+nat1.Addr.String()+"]:") {
		t.Fatalf("the relay reaches home 1 at %s, want its NAT's public address (%s)", ep, nat1.Addr)
	}
	const n = 3000
	for _, dir := range []struct{ from, to int }{{0, 2}, {2, 0}} {
		recvs, send := m.relayStream(t, dir.from, []int{dir.to}, "ff1e::74", n, 1000)
		waitExit(t, send, 10*time.Second, "sender")
		m.expectOnce(t, recvs, []int{dir.to}, n)
		m.waitSettled(t, dir.from, "ff1e::74", true)
	}
}

// A peer's endpoint given as a DNS name is looked up again when the peer
// falls silent: here the peer moves to a new address and restarts, knowing
// no endpoint of this node, so only the new lookup can bring them together.
func TestEndpointResolvedAgain(t *testing.T) {
	inet := netlab.NewInternet(t)
	a, b := inet.AddSite("lcast-dns-a"), inet.AddSite("lcast-dns-b")
	// `ip netns exec` shows /etc/netns/NAME/hosts as /etc/hosts.
	hostsDir := filepath.Join("/etc/netns", a.Name)
	if err := os.MkdirAll(hostsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(hostsDir) })
	hosts := filepath.Join(hostsDir, "hosts")
	setHost := func(addr string) {
		// Rewritten in place, so that the bind mount keeps showing it.
		if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"+addr+" b.lcast.test\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	setHost(b.Addr.String())
	ka, kb := newKey(t), newKey(t)
	na := newNodeWithKey(t, a.Namespace, ka, fmt.Sprintf("[[peer]]\npublic_key = %q\nendpoint = \"b.lcast.test:%d\"\n", kb.PublicKey(), listenPort))
	nb := newNodeWithKey(t, b.Namespace, kb, fmt.Sprintf("[[peer]]\npublic_key = %q\n", ka.PublicKey()))
	m := &mesh{inet: inet, sites: []*netlab.Site{a, b}, nodes: []*node{na, nb}}
	na.up()
	nb.up()
	// The test is about finding the peer again: it starts from a session.
	m.waitConnected(t)

	nb.stop(syscall.SIGTERM)
	b.Run("ip", "addr", "add", "2001:db8:2::3/64", "dev", "eth0", "nodad")
	b.Run("ip", "addr", "del", b.Addr.String()+"/64", "dev", "eth0")
	setHost("2001:db8:2::3")
	nb.up()
	recv := startHelper(t, b.Namespace, "recv", "ff1e::75", "lc0", "2s")
	took, ok := netlab.Poll(40*time.Second, func() bool {
		for _, f := range na.status(t).Forwarding {
			if f.Group == "ff1e::75" {
				return true
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("A never heard of B's new address:\n%s", na.daemon.Output())
	}
	st := na.status(t)
	t.Logf("B moved and restarted; A reached it again after %v at %s", took.Round(time.Millisecond), st.Peers[0].Endpoint)
	if st.Peers[0].Endpoint != fmt.Sprintf("[2001:db8:2::3]:%d", listenPort) || !strings.Contains(na.daemon.Output(), "endpoint resolved anew") {
		t.Fatalf("A's endpoint for B is %s; log:\n%s", st.Peers[0].Endpoint, na.daemon.Output())
	}
	send := m.send(0, "ff1e::75", "500", "1000", "1200")
	waitExit(t, send, 10*time.Second, "sender")
	m.expectOnce(t, []*netlab.Process{recv}, []int{1}, 500)
}
