package simnet

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/control"
)

// Generous deadlines: what they bound is correctness (it happens at all),
// not speed, which the tests log. Under -race on a loaded 2-core machine
// everything here takes a fraction of them.
const (
	// settleWithin bounds sessions coming up, paths changing and
	// subscriptions reaching the senders.
	settleWithin = 15 * time.Second
	// drainWithin bounds the last datagrams of a stream arriving after
	// it was sent.
	drainWithin = 10 * time.Second
)

// took returns the time since start, rounded for logs.
func took(start time.Time) time.Duration { return time.Since(start).Round(time.Millisecond) }

// pollEvery reports whether cond held within timeout, checking every
// 20 ms: a status costs the daemon that answers it, and a loaded machine
// needs its CPU for the daemons more than for asking them.
func pollEvery(timeout time.Duration, cond func() bool) bool {
	return EventuallyEvery(timeout, 20*time.Millisecond, cond)
}

// waitPairsConnected waits until each pair of nodes is connected both ways
// and fails the test if that takes longer than settleWithin.
func waitPairsConnected(t *testing.T, pairs ...[2]*Node) {
	t.Helper()
	waitPairsPath(t, settleWithin, "", pairs...)
}

// waitPairsPath waits until each pair of nodes is connected both ways with
// path ("direct" or "relayed"; any, if empty) and fails the test if that
// takes longer than timeout.
func waitPairsPath(t *testing.T, timeout time.Duration, path string, pairs ...[2]*Node) {
	t.Helper()
	if !pollEvery(timeout, func() bool {
		// Each node's status once a round.
		statuses := map[*Node]control.Status{}
		has := func(a, b *Node) bool {
			st, ok := statuses[a]
			if !ok {
				st = a.Status()
				statuses[a] = st
			}
			p, ok := peerIn(st, b)
			return ok && p.Connected && (path == "" || p.Path == path)
		}
		for _, p := range pairs {
			if !has(p[0], p[1]) || !has(p[1], p[0]) {
				return false
			}
		}
		return true
	}) {
		var b strings.Builder
		for _, p := range pairs {
			for _, d := range [][2]*Node{p, {p[1], p[0]}} {
				ps, ok := d[0].PeerStatus(d[1])
				fmt.Fprintf(&b, "%s's view of %s (listed %v): %+v\n", d[0].Name, d[1].Name, ok, ps)
			}
		}
		t.Fatalf("not every pair connected (path %q) within %v:\n%s", path, timeout, b.String())
	}
}

// routesReach returns the nodes that group's packets sent at from reach by
// the routes in place now: from's forwarding, the forwarding of the
// relays it reaches, and so on.
func routesReach(from *Node, group netip.Addr) []*Node {
	seen := []*Node{from}
	for next := []*Node{from}; len(next) > 0; {
		n := next[0]
		next = next[1:]
		if !n.Running() {
			continue
		}
		for _, o := range n.ForwardsTo(group) {
			if !slices.Contains(seen, o) {
				seen = append(seen, o)
				next = append(next, o)
			}
		}
	}
	return seen[1:]
}

// waitRoutesReach waits until the routes of group from `from` reach each node
// of to. The tests that use it check where packets go and that they
// arrive exactly once, not how soon a join takes effect (basic_test's
// and the introduction tests' first datagrams measure that): so their
// streams start once the subscriptions are in place, as a user's would
// after the first datagram.
func waitRoutesReach(t *testing.T, group netip.Addr, from *Node, to ...*Node) {
	t.Helper()
	start := time.Now()
	if !pollEvery(settleWithin, func() bool {
		r := routesReach(from, group)
		for _, n := range to {
			if !slices.Contains(r, n) {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("routes of %s from %s reach %v, want %v, after %v\n%s", group, from.Name, nodeNames(routesReach(from, group)), nodeNames(to), settleWithin, routesOf(group, from.w.all()))
	}
	t.Logf("routes of %s from %s to %v in place %v after the joins", group, from.Name, nodeNames(to), took(start))
}

// waitRoutesGone waits until no node forwards group anywhere, then, if
// confirm, checks that none does again for two hello intervals (a
// subscription circling through relays would come back with the next
// hellos: every node has sent its state again since).
func waitRoutesGone(t *testing.T, group netip.Addr, confirm bool, nodes ...*Node) {
	t.Helper()
	start := time.Now()
	none := func() bool {
		for _, n := range nodes {
			if n.Running() && len(n.ForwardsTo(group)) > 0 {
				return false
			}
		}
		return true
	}
	if !pollEvery(settleWithin, none) {
		t.Fatalf("the subscriptions to %s outlived their listeners by %v:\n%s", group, settleWithin, routesOf(group, nodes))
	}
	gone := time.Since(start)
	deadline := time.Now().Add(2 * time.Second)
	for confirm && time.Now().Before(deadline) {
		if !none() {
			t.Fatalf("a subscription to %s came back after it was gone:\n%s", group, routesOf(group, nodes))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("no node forwards %s %v after the listeners left", group, gone.Round(time.Millisecond))
}

// routesOf describes where each node forwards group, for failures.
func routesOf(group netip.Addr, nodes []*Node) string {
	var b strings.Builder
	for _, n := range nodes {
		if n.Running() {
			fmt.Fprintf(&b, "%s -> %v\n", n.Name, nodeNames(n.ForwardsTo(group)))
		}
	}
	return b.String()
}

// nodeNames returns the nodes' names, for logs.
func nodeNames(nodes []*Node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.Name
	}
	return out
}

// streamExactlyOnce sends a stream of count datagrams at rate from `from` to dst
// (a group the nodes of to joined, or one node's overlay address), and
// checks that each node of to received every datagram exactly once; it
// returns their tallies.
func streamExactlyOnce(t *testing.T, tag string, from *Node, dst netip.Addr, count, rate int, to ...*Node) []Tally {
	t.Helper()
	counters := make([]*Counter, len(to))
	for i, n := range to {
		counters[i] = n.Count(tag)
	}
	Stream{Tag: tag, From: from, Dst: dst, Port: 4242, Rate: rate, Count: count}.Run(nil)
	return expectExactlyOnce(t, tag, counters, to, count)
}

// expectExactlyOnce waits up to drainWithin for each counter to count every one
// of count datagrams, then checks that each did, once.
func expectExactlyOnce(t *testing.T, tag string, counters []*Counter, to []*Node, count int) []Tally {
	t.Helper()
	Eventually(drainWithin, func() bool {
		for _, c := range counters {
			if c.Tally().Delivered < count {
				return false
			}
		}
		return true
	})
	// Duplicates come at once or not at all: a moment more for them.
	time.Sleep(50 * time.Millisecond)
	tallies := make([]Tally, len(counters))
	for i, c := range counters {
		tallies[i] = c.Stop()
		t.Logf("%s at %s: %v of %d", tag, to[i].Name, tallies[i], count)
		if tallies[i].Delivered != count || tallies[i].Duplicates != 0 {
			t.Errorf("%s at %s: %d of %d delivered, %d duplicates", tag, to[i].Name, tallies[i].Delivered, count, tallies[i].Duplicates)
		}
	}
	return tallies
}

// pacedStream sends count datagrams of the stream tag from `from` to
// dst, one every 1/rate, as the namespace tests' sender does (Stream
// sends them in bursts, one every 10 ms), until stop is closed, and
// returns how many it sent.
func pacedStream(from *Node, dst netip.Addr, tag string, count, rate int, stop <-chan struct{}) int {
	start := time.Now()
	for i := range count {
		if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); d > 0 {
			select {
			case <-time.After(d):
			case <-stop:
				return i
			}
		}
		from.Send(dst, 4242, fmt.Sprintf("%s %d", tag, i))
	}
	return count
}

// drain waits, after a stream that may have lost datagrams, until c has
// counted nothing new for 300 ms, or drainWithin has passed, and returns
// its tally.
func drain(c *Counter) Tally {
	last, since := -1, time.Now()
	Eventually(drainWithin, func() bool {
		if d := c.Tally().Delivered; d != last {
			last, since = d, time.Now()
		}
		return time.Since(since) >= 300*time.Millisecond
	})
	return c.Stop()
}

// startLinked starts nodes with relays among them and each pair of links
// listing each other (with endpoints; a relay marked relay = true),
// returning when every pair of peers is connected: the relay tests start
// from sessions that are up (how soon they come up is basic_test's and
// TestIntroducedHomesGoDirect's).
func startLinked(t *testing.T, links [][2]*Node) {
	t.Helper()
	for _, l := range links {
		for _, d := range [][2]*Node{l, {l[1], l[0]}} {
			d[0].Peer(d[1], PeerOptions{Relay: d[1].opts.Relay})
		}
	}
	var nodes []*Node
	for _, l := range links {
		for _, n := range l {
			if !slices.Contains(nodes, n) {
				nodes = append(nodes, n)
			}
		}
	}
	start := time.Now()
	for _, n := range nodes {
		n.Start()
	}
	waitPairsConnected(t, links...)
	t.Logf("%d sessions up %v after the start", len(links), took(start))
}

// dropsAt sums the drops of reason at the running nodes.
func dropsAt(reason string, nodes ...*Node) uint64 {
	var sum uint64
	for _, n := range nodes {
		if n.Running() {
			sum += n.Status().Drops[reason]
		}
	}
	return sum
}

// A chain A - R - B, where A and B list only the relay R: B receives A's
// stream completely and once, and A B's; A and B never become peers, and
// once the listeners leave, no node forwards the group.
func TestRelayChain(t *testing.T) {
	w := New(t)
	a, r, b := w.Add("a", Options{}), w.Add("r", Options{Relay: true}), w.Add("b", Options{})
	startLinked(t, [][2]*Node{{a, r}, {r, b}})
	g := netip.MustParseAddr("ff1e::71")
	const n = 1000
	for _, dir := range [][2]*Node{{a, b}, {b, a}} {
		from, to := dir[0], dir[1]
		to.Join(g)
		waitRoutesReach(t, g, from, to)
		streamExactlyOnce(t, "chain-"+from.Name, from, g, n, 1000, to)
		to.Leave(g)
		waitRoutesGone(t, g, false, a, r, b)
	}
	st := r.Status()
	ra, _ := a.PeerStatus(r)
	if !st.Relay || len(st.Peers) != 2 || !ra.Relay {
		t.Errorf("the relay's status: relay %v, %d peers; a sees r as relay: %v", st.Relay, len(st.Peers), ra.Relay)
	}
	for _, d := range [][2]*Node{{a, b}, {b, a}} {
		if p, ok := d[0].PeerStatus(d[1]); ok {
			t.Errorf("%s has %s as a peer: %+v", d[0].Name, d[1].Name, p)
		}
	}
	if d := dropsAt("duplicate", a, r, b); d != 0 {
		t.Errorf("%d duplicates dropped in a chain, which has no second path", d)
	}
}

// A ring of four relays, each listing its two neighbours: receivers on
// three of them get every packet of the fourth's stream exactly once (the
// second copy, around the other side of the ring, is dropped where it
// meets the first); after the receivers leave, no subscription keeps
// circling. With one relay crashed during a stream, the receivers beyond
// it keep receiving over the other side, losing nothing.
func TestRelayRing(t *testing.T) {
	w := New(t)
	var ring []*Node
	for i := range 4 {
		ring = append(ring, w.Add(fmt.Sprintf("ring%d", i+1), Options{Relay: true}))
	}
	var links [][2]*Node
	for i := range ring {
		links = append(links, [2]*Node{ring[i], ring[(i+1)%4]})
	}
	startLinked(t, links)
	const n = 1000
	g := netip.MustParseAddr("ff1e::72")
	to := ring[1:]
	for _, r := range to {
		r.Join(g)
	}
	waitRoutesReach(t, g, ring[0], to...)
	streamExactlyOnce(t, "ring", ring[0], g, n, 1000, to...)
	// A relayed copy that overtakes its direct one is relay_ahead.
	dups := dropsAt("duplicate", ring...) + dropsAt("relay_ahead", ring...)
	t.Logf("duplicates dropped in the ring: %d (%.2f per packet)", dups, float64(dups)/n)
	for _, r := range to {
		r.Leave(g)
	}
	waitRoutesGone(t, g, true, ring...)

	// Crash relay 2 in the middle of a stream from relay 1 to relays 3
	// and 4.
	const long = 3000
	g = netip.MustParseAddr("ff1e::73")
	to = ring[2:]
	for _, r := range to {
		r.Join(g)
	}
	waitRoutesReach(t, g, ring[0], to...)
	counters := []*Counter{to[0].Count("ring-crash"), to[1].Count("ring-crash")}
	crashed := make(chan time.Time, 1)
	go func() {
		time.Sleep(time.Second)
		ring[1].Crash()
		crashed <- time.Now()
	}()
	Stream{Tag: "ring-crash", From: ring[0], Dst: g, Port: 4242, Rate: 1000, Count: long}.Run(nil)
	at := <-crashed
	tallies := expectExactlyOnce(t, "ring-crash", counters, to, long)
	t.Logf("relay 2 crashed 1 s into the stream: longest gap at relay 3 %v, at relay 4 %v (crashed %v ago)",
		tallies[0].LongestGap, tallies[1].LongestGap, took(at))
}

// Two homes behind NATs know only a relay on the Internet, which cannot
// reach them until they speak (it lists them without endpoints): each
// receives the other's stream through the relay, completely and once.
func TestRelayBetweenNATs(t *testing.T) {
	w := New(t)
	home1 := w.Add("home1", Options{NAT: EndpointIndependent})
	relay := w.Add("relay", Options{Relay: true})
	home2 := w.Add("home2", Options{NAT: EndpointIndependent})
	for _, h := range []*Node{home1, home2} {
		h.Peer(relay, PeerOptions{Relay: true})
		relay.Peer(h, PeerOptions{NoEndpoint: true})
	}
	start := time.Now()
	for _, n := range []*Node{home1, relay, home2} {
		n.Start()
	}
	// The test is of where packets go, not of start-up: from sessions
	// that are up.
	waitPairsConnected(t, [2]*Node{home1, relay}, [2]*Node{relay, home2})
	t.Logf("sessions up %v after the start", took(start))
	for _, h := range []*Node{home1, home2} {
		p, _ := relay.PeerStatus(h)
		if want := "[" + h.host.public.String() + "]:"; !strings.HasPrefix(p.Endpoint, want) {
			t.Errorf("the relay routesReach %s at %s, want its NAT's public address %s", h.Name, p.Endpoint, h.host.public)
		}
		if p.Endpoint == h.Endpoint().String() {
			t.Errorf("the relay routesReach %s at %s, the port it listens on, not the NAT's mapping", h.Name, p.Endpoint)
		}
	}
	g := netip.MustParseAddr("ff1e::74")
	const n = 1000
	for _, dir := range [][2]*Node{{home1, home2}, {home2, home1}} {
		from, to := dir[0], dir[1]
		to.Join(g)
		waitRoutesReach(t, g, from, to)
		streamExactlyOnce(t, "nat-"+from.Name, from, g, n, 1000, to)
		to.Leave(g)
		waitRoutesGone(t, g, false, home1, relay, home2)
	}
}

// Unicast from one node to another's overlay address arrives, from n3's
// address, from the first second: a program on n3 sends at once after the
// three nodes start, and again every 100 ms until one arrives (as a
// request-answer program retries).
func TestUnicastBetweenOverlayAddresses(t *testing.T) {
	w := New(t)
	n1, n2, n3 := w.Add("n1", Options{}), w.Add("n2", Options{}), w.Add("n3", Options{})
	Mesh(n1, n2, n3)
	for _, n := range []*Node{n1, n2, n3} {
		n.Start()
	}
	start := time.Now()
	sent := 0
	var got Datagram
	if !Eventually(settleWithin, func() bool {
		n3.Send(n1.Addr, 5000, "hello from n3")
		sent++
		select {
		case got = <-n1.Received():
			return true
		case <-time.After(100 * time.Millisecond):
			return false
		}
	}) {
		t.Fatalf("unicast from n3 to n1's overlay address did not arrive within %v (%d sent)\nn3: %+v", settleWithin, sent, n3.Status())
	}
	t.Logf("unicast arrived %v after the start, %d sent", took(start), sent)
	if want := (Datagram{Src: n3.Addr, Dst: n1.Addr, Port: 5000, Payload: "hello from n3"}); got != want {
		t.Errorf("n1 received %+v, want %+v", got, want)
	}
}
