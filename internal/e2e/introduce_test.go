package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/control"
	"github.com/librecast/lcast/internal/netlab"
	"github.com/librecast/lcast/peer"
)

// hubConfig is the configuration of a hub that relays and lists members
// by key only (they connect to it).
func hubConfig(members []peer.Key) string {
	doc := "relay = true\n"
	for _, k := range members {
		doc += fmt.Sprintf("[[peer]]\npublic_key = %q\n", k.PublicKey())
	}
	return doc
}

// memberConfig is the configuration of a member that knows only the hub:
// its introducer, and the relay it trusts.
func memberConfig(hubKey peer.Key, hub *netlab.Site) string {
	return peerTable(hubKey, hub) + "relay = true\nintroducer = true\n"
}

// newHub starts a hub in sites[0] and members in the other sites, each
// knowing only the hub, without waiting for any session: node 0 is the
// hub.
func newHub(t testing.TB, inet *netlab.Internet, sites []*netlab.Site) *mesh {
	t.Helper()
	m := &mesh{inet: inet, sites: sites}
	keys := make([]peer.Key, len(sites))
	for i := range keys {
		keys[i] = newKey(t)
	}
	m.nodes = append(m.nodes, newNodeWithKey(t, sites[0].Namespace, keys[0], hubConfig(keys[1:])))
	for i := 1; i < len(sites); i++ {
		m.nodes = append(m.nodes, newNodeWithKey(t, sites[i].Namespace, keys[i], memberConfig(keys[0], sites[0])))
	}
	for _, n := range m.nodes {
		n.start()
	}
	for _, n := range m.nodes {
		n.waitAnswers()
	}
	return m
}

// peerOf returns node i's view of node j, if it has j as a peer.
func (m *mesh) peerOf(t testing.TB, i, j int) (control.PeerStatus, bool) {
	t.Helper()
	want := m.nodes[j].key.PublicKey().String()
	for _, p := range m.nodes[i].status(t).Peers {
		if p.PublicKey == want {
			return p, true
		}
	}
	return control.PeerStatus{}, false
}

// pathIs reports whether node i has node j as a connected peer whose path
// is path.
func (m *mesh) pathIs(t testing.TB, i, j int, path string) bool {
	p, ok := m.peerOf(t, i, j)
	return ok && p.Connected && p.Path == path
}

// waitPaths waits until each pair of nodes in pairs has path both ways,
// and returns how long that took from the latest start of theirs.
func (m *mesh) waitPaths(t testing.TB, pairs [][2]int, path string, timeout time.Duration) time.Duration {
	t.Helper()
	var latest time.Time
	for _, n := range m.nodes {
		if n.upAt.After(latest) {
			latest = n.upAt
		}
	}
	if _, ok := netlab.Poll(timeout, func() bool {
		// Each node's status once per round: ten nodes answer in tens of
		// milliseconds, not ninety pairs' worth of requests.
		statuses := map[int]*control.Status{}
		has := func(i, j int) bool {
			if statuses[i] == nil {
				statuses[i] = m.nodes[i].status(t)
			}
			want := m.nodes[j].key.PublicKey().String()
			for _, p := range statuses[i].Peers {
				if p.PublicKey == want {
					return p.Connected && p.Path == path
				}
			}
			return false
		}
		for _, p := range pairs {
			if !has(p[0], p[1]) || !has(p[1], p[0]) {
				return false
			}
		}
		return true
	}); !ok {
		var b strings.Builder
		for _, p := range pairs {
			a, _ := m.peerOf(t, p[0], p[1])
			c, _ := m.peerOf(t, p[1], p[0])
			fmt.Fprintf(&b, "%d->%d %+v\n%d->%d %+v\n", p[0], p[1], a, p[1], p[0], c)
		}
		t.Fatalf("no %s path within %v:\n%s%s", path, timeout, b.String(), m.diagnose(t))
	}
	return time.Since(latest)
}

// hubTx returns how many packets the hub (node 0) sent to node i.
func (m *mesh) hubTx(t testing.TB, i int) uint64 {
	t.Helper()
	p, ok := m.peerOf(t, 0, i)
	if !ok {
		t.Fatalf("the hub does not list node %d", i)
	}
	return p.TxPackets
}

// unicastStream sends n datagrams at rate from node from to node to's
// overlay address, and checks they all arrive once.
func (m *mesh) unicastStream(t testing.TB, from, to, n, rate int) recvResult {
	t.Helper()
	addr := m.nodes[to].status(t).Address
	recv := startHelperUntil(t, m.sites[to].Namespace, "joined", "recv", addr, "lc0", "2s")
	waitExit(t, m.send(from, addr, strconv.Itoa(n), strconv.Itoa(rate), "1200"), 15*time.Second, "unicast sender")
	return m.expectOnce(t, []*netlab.Process{recv}, []int{to}, n)[0]
}

// hubAndHomes starts a hub on the Internet and two homes behind NATs (the
// second one symmetric if asked) that know only the hub: node 0 is the
// hub. It returns the homes' NAT routers too.
func hubAndHomes(t *testing.T, symmetric bool) (m *mesh, nat1, nat2 *netlab.Site) {
	t.Helper()
	netlab.Require(t, "nft")
	inet := netlab.NewInternet(t)
	hub := inet.AddSite("lcast-hub")
	home1, nat1 := inet.AddNATSite("lcast-home1")
	addHome2 := inet.AddNATSite
	if symmetric {
		addHome2 = inet.AddSymmetricNATSite
	}
	home2, nat2 := addHome2("lcast-home2")
	return newHub(t, inet, []*netlab.Site{hub, home1, home2}), nat1, nat2
}

// Two homes behind masquerading NATs, each listing only a hub (its
// introducer and relay), find each other through it, take a direct path
// through their NATs within 5 s of their start, and exchange multicast and
// unicast both ways with the hub passing none of it on.
func TestIntroducedHomesGoDirect(t *testing.T) {
	m, nat1, nat2 := hubAndHomes(t, false)
	took := m.waitPaths(t, [][2]int{{1, 2}}, "direct", 5*time.Second)
	t.Logf("direct path between the homes %v after their start", took.Round(time.Millisecond))
	hubKey := m.nodes[0].key.PublicKey().String()
	for _, c := range []struct {
		i, j int
		nat  *netlab.Site
	}{{1, 2, nat2}, {2, 1, nat1}} {
		p, _ := m.peerOf(t, c.i, c.j)
		if p.Learnt != "introduced" || len(p.IntroducedBy) != 1 || p.IntroducedBy[0] != hubKey || p.Relay {
			t.Errorf("home %d sees home %d as learnt %q by %v, relay %v; want introduced by the hub, no relay", c.i, c.j, p.Learnt, p.IntroducedBy, p.Relay)
		}
		if !strings.HasPrefix(p.Endpoint, "["+c.nat.Addr.String()+"]:") {
			t.Errorf("home %d reaches home %d at %s, not through its NAT %s", c.i, c.j, p.Endpoint, c.nat.Addr)
		}
	}
	const n = 1000
	for _, dir := range []struct{ from, to int }{{1, 2}, {2, 1}} {
		before := m.hubTx(t, dir.to)
		recvs, send := m.relayStream(t, dir.from, []int{dir.to}, "ff1e::191", n, 1000)
		waitExit(t, send, 10*time.Second, "sender")
		m.expectOnce(t, recvs, []int{dir.to}, n)
		u := m.unicastStream(t, dir.from, dir.to, n, 1000)
		// The hub sends its hellos and introductions meanwhile (a few
		// per second), none of the 2n datagrams.
		if sent := m.hubTx(t, dir.to) - before; sent > n/20 {
			t.Errorf("the hub sent %d packets to home %d during %d multicast and %d unicast datagrams home %d sent it", sent, dir.to, n, n, dir.from)
		}
		t.Logf("home %d -> home %d: multicast and unicast %d of %d each, unicast longest gap %d ms", dir.from, dir.to, u.unique, n, u.maxGap)
	}
}

// The same with a symmetric NAT in front of home 2: no direct path can
// open, so the path stays relayed, and multicast and unicast go through
// the hub both ways, completely and once.
func TestIntroducedSymmetricNATRelayed(t *testing.T) {
	m, _, _ := hubAndHomes(t, true)
	// Both homes learn of each other at once, and find that their direct
	// attempts fail: the path is relayed, and stays so.
	for _, pair := range [][2]int{{1, 2}, {2, 1}} {
		if _, ok := netlab.Poll(5*time.Second, func() bool {
			p, ok := m.peerOf(t, pair[0], pair[1])
			return ok && p.Path == "relayed"
		}); !ok {
			p, _ := m.peerOf(t, pair[0], pair[1])
			t.Fatalf("home %d's path to home %d: %+v", pair[0], pair[1], p)
		}
	}
	const n = 1000
	for _, dir := range []struct{ from, to int }{{1, 2}, {2, 1}} {
		before := m.hubTx(t, dir.to)
		recvs, send := m.relayStream(t, dir.from, []int{dir.to}, "ff1e::192", n, 1000)
		waitExit(t, send, 10*time.Second, "sender")
		m.expectOnce(t, recvs, []int{dir.to}, n)
		m.unicastStream(t, dir.from, dir.to, n, 1000)
		if sent := m.hubTx(t, dir.to) - before; sent < 2*n {
			t.Errorf("the hub sent %d packets to home %d, fewer than the %d datagrams it relayed", sent, dir.to, 2*n)
		}
		for _, pair := range [][2]int{{1, 2}, {2, 1}} {
			if p, _ := m.peerOf(t, pair[0], pair[1]); p.Path != "relayed" || p.Connected {
				t.Errorf("home %d's path to home %d: %s, connected %v; want relayed, not connected", pair[0], pair[1], p.Path, p.Connected)
			}
		}
	}
}

// Ten members that list only the hub all connect to each other, directly,
// within 10 s of their start.
func TestTenMembersIntroduced(t *testing.T) {
	inet := netlab.NewInternet(t)
	sites := []*netlab.Site{inet.AddSite("lcast-hub")}
	for i := range 10 {
		sites = append(sites, inet.AddSite(fmt.Sprintf("lcast-m%d", i+1)))
	}
	m := newHub(t, inet, sites)
	var pairs [][2]int
	for i := 1; i < len(sites); i++ {
		for j := i + 1; j < len(sites); j++ {
			pairs = append(pairs, [2]int{i, j})
		}
	}
	// How soon every member has all the others as peers: the hub's
	// introductions.
	start := m.nodes[len(m.nodes)-1].upAt
	introduced, ok := netlab.Poll(10*time.Second, func() bool {
		for i := 1; i < len(sites); i++ {
			if len(m.nodes[i].status(t).Peers) != len(sites)-1 {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("not every member learnt of every other within 10 s\n%s", m.diagnose(t))
	}
	took := m.waitPaths(t, pairs, "direct", 10*time.Second-time.Since(start))
	t.Logf("10 members: all introduced %v after the last start (%.0f members introduced per second, %d introductions), all %d pairs direct after %v",
		introduced.Round(time.Millisecond), 10/introduced.Seconds(), 10*9, len(pairs), took.Round(time.Millisecond))
	if os.Getenv("LCAST_E2E_DEBUG") != "" {
		t.Log(m.nodes[1].daemon.Output())
	}
}

// A member the hub stops listing is dropped by every other member, and a
// node the hub does not list is never accepted, even by a member it knows
// the key and endpoint of.
func TestIntroducerStopsListing(t *testing.T) {
	inet := netlab.NewInternet(t)
	sites := []*netlab.Site{inet.AddSite("lcast-hub"), inet.AddSite("lcast-a"), inet.AddSite("lcast-b"), inet.AddSite("lcast-c")}
	m := newHub(t, inet, sites)
	// What is measured is how soon members drop one the hub stops
	// listing: it starts from members that all know each other.
	m.waitPaths(t, [][2]int{{1, 2}, {1, 3}, {2, 3}}, "direct", 10*time.Second)
	// An outsider knows the hub and member a, key and endpoint, and takes
	// the hub as its introducer; the hub does not list it.
	outsiderSite := inet.AddSite("lcast-x")
	outsider := newNode(t, outsiderSite.Namespace, memberConfig(m.nodes[0].key, sites[0])+peerTable(m.nodes[1].key, sites[1]))
	outsider.up()

	keys := []peer.Key{m.nodes[1].key, m.nodes[2].key}
	doc := fmt.Sprintf("private_key = %q\ncontrol_socket = %q\n", m.nodes[0].key, m.nodes[0].sock) + hubConfig(keys)
	m.nodes[0].reload(t, doc)
	reloaded := time.Now()
	dropped, ok := netlab.Poll(5*time.Second, func() bool {
		_, a := m.peerOf(t, 1, 3)
		_, b := m.peerOf(t, 2, 3)
		return !a && !b
	})
	if !ok {
		t.Fatalf("members a and b still list c after the hub stopped listing it:\n%+v\n%+v", m.nodes[1].status(t).Peers, m.nodes[2].status(t).Peers)
	}
	t.Logf("c dropped by a and b %v after the hub's reload", dropped.Round(time.Millisecond))
	// The outsider had the time of the reload and more to get in.
	time.Sleep(3*time.Second - time.Since(reloaded))
	xKey := outsider.key.PublicKey().String()
	for i := 0; i < 3; i++ {
		for _, p := range m.nodes[i].status(t).Peers {
			if p.PublicKey == xKey {
				t.Errorf("node %d accepted the outsider: %+v", i, p)
			}
		}
	}
	for _, p := range outsider.status(t).Peers {
		if p.Connected || p.RxPackets > 0 {
			t.Errorf("the outsider has a session with %s: %+v", p.PublicKey, p)
		}
	}
	if log := m.nodes[1].daemon.Output(); !strings.Contains(log, "introduced peer dropped") {
		t.Errorf("member a did not log dropping c:\n%s", log)
	}
}

// The direct path between two homes breaks mid-stream (nftables drops
// what their NATs send each other): delivery goes on through the hub
// within 1 s, and returns to the direct path when it heals, with no
// duplicate and no loss but the break's.
func TestDirectPathBreaksAndHeals(t *testing.T) {
	m, nat1, nat2 := hubAndHomes(t, false)
	inet := m.inet
	// What breaks is a direct path: the test starts from one (how soon
	// it opens is TestIntroducedHomesGoDirect's).
	m.waitPaths(t, [][2]int{{1, 2}}, "direct", 5*time.Second)
	const n, rate = 9000, 1000
	recvs, send := m.relayStream(t, 1, []int{2}, "ff1e::193", n, rate)
	time.Sleep(2 * time.Second) // the stream flows directly
	before := m.hubTx(t, 2)
	cut := fmt.Sprintf(`table ip6 lcastcut {
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		ip6 saddr %[1]s ip6 daddr %[2]s drop
		ip6 saddr %[2]s ip6 daddr %[1]s drop
	}
}
`, nat1.Addr, nat2.Addr)
	nft := inet.NS.Command("nft", "-f", "-")
	nft.Stdin = strings.NewReader(cut)
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v %s", err, out)
	}
	broke := time.Now()
	relayedAfter, ok := netlab.Poll(3*time.Second, func() bool {
		p, _ := m.peerOf(t, 2, 1)
		return p.Path == "relayed"
	})
	if !ok {
		t.Fatalf("home 2 still finds its path to home 1 direct %v after the break", time.Since(broke))
	}
	time.Sleep(2*time.Second - time.Since(broke)) // the stream flows through the hub
	relayed := m.hubTx(t, 2) - before
	inet.NS.Run("nft", "delete", "table", "ip6", "lcastcut")
	healed := time.Now()
	directAfter, ok := netlab.Poll(5*time.Second, func() bool { return m.pathIs(t, 2, 1, "direct") && m.pathIs(t, 1, 2, "direct") })
	if !ok {
		t.Fatalf("the homes' path is not direct again %v after it healed", time.Since(healed))
	}
	// Once direct again, the hub passes nothing on.
	time.Sleep(time.Second)
	afterDirect := m.hubTx(t, 2)
	time.Sleep(time.Second)
	hubLate := m.hubTx(t, 2) - afterDirect
	waitExit(t, send, 15*time.Second, "sender")
	waitExit(t, recvs[0], 15*time.Second, "receiver")
	res := parseReceived(t, recvs[0].Output())
	t.Logf("break: home 2 found the path relayed after %v, the hub relayed %d packets in 2 s; healed: direct again after %v; received %d of %d unique, %d duplicates, longest gap %d ms; hub sent %d packets in 1 s once direct",
		relayedAfter.Round(time.Millisecond), relayed, directAfter.Round(time.Millisecond), res.unique, n, res.dups, res.maxGap, hubLate)
	if res.maxGap >= 1000 {
		t.Errorf("longest gap %d ms: delivery did not go on through the hub within 1 s", res.maxGap)
	}
	// What the break cost is at most the gap's worth of datagrams; the
	// switches themselves lose and repeat nothing.
	if lost := n - res.unique; res.dups != 0 || lost > res.maxGap*rate/1000+10 {
		t.Errorf("%d lost and %d duplicates with a longest gap of %d ms\n%s", lost, res.dups, res.maxGap, m.diagnose(t))
	}
	if relayed < 500 {
		t.Errorf("the hub sent home 2 only %d packets during the 2 s break", relayed)
	}
	if hubLate > 50 {
		t.Errorf("the hub sent home 2 %d packets in a second on the direct path again", hubLate)
	}
	if os.Getenv("LCAST_E2E_DEBUG") != "" {
		t.Log(m.nodes[2].daemon.Output())
	}
}
