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

// link is one [[peer]] table: node from lists node to, with to's endpoint.
type link struct{ from, to int }

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
			if l.from != i {
				continue
			}
			extra += peerTable(keys[l.to], sites[l.to])
			if relays[l.to] {
				extra += "relay = true\n"
			}
		}
		m.nodes = append(m.nodes, newNodeWithKey(t, sites[i].Namespace, keys[i], extra))
	}
	for _, n := range m.nodes {
		n.up()
	}
	// What is measured through a relay is its fan-out, not start-up: it
	// starts from sessions that are up.
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
