package e2e

import (
	"fmt"
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

// waitPath waits until nodes i and j each have the other as a connected
// peer whose path is path, and returns how long that took from the latest
// start of the nodes'.
func (m *mesh) waitPath(t testing.TB, i, j int, path string, timeout time.Duration) time.Duration {
	t.Helper()
	var latest time.Time
	for _, n := range m.nodes {
		if n.upAt.After(latest) {
			latest = n.upAt
		}
	}
	has := func(i, j int) bool {
		p, ok := m.peerOf(t, i, j)
		return ok && p.Connected && p.Path == path
	}
	if _, ok := netlab.Poll(timeout, func() bool { return has(i, j) && has(j, i) }); !ok {
		a, _ := m.peerOf(t, i, j)
		c, _ := m.peerOf(t, j, i)
		t.Fatalf("no %s path within %v:\n%d->%d %+v\n%d->%d %+v\n%s", path, timeout, i, j, a, j, i, c, m.diagnose(t))
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
	took := m.waitPath(t, 1, 2, "direct", 5*time.Second)
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
