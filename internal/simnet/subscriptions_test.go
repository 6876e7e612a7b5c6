package simnet

import (
	"net/netip"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/control"
)

// numberedAddr returns prefix (ending in ::) with i in its last 32 bits.
func numberedAddr(prefix string, i int) netip.Addr {
	b := netip.MustParseAddr(prefix).As16()
	b[12], b[13], b[14], b[15] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
	return netip.AddrFrom16(b)
}

// sources returns n sources, as a program would list them.
func sources(n int) []netip.Addr {
	s := make([]netip.Addr, n)
	for i := range s {
		s[i] = numberedAddr("2001:db8:5::", i+1)
	}
	return s
}

// peerGroups returns the groups n holds of its peer of, by group.
func peerGroups(n, of *Node) map[string]control.Group {
	for _, p := range n.Status().Peers {
		if p.PublicKey == of.Key.String() {
			m := map[string]control.Group{}
			for _, g := range p.Groups {
				m[g.Group] = g
			}
			return m
		}
	}
	return nil
}

// delivered streams count datagrams from from to group and returns how
// many of them reached at.
func delivered(from, at *Node, group netip.Addr, tag string, count int) Tally {
	c := at.Count(tag)
	Stream{Tag: tag, From: from, Dst: group, Port: 4242, Rate: 500, Count: count}.Run(nil)
	time.Sleep(200 * time.Millisecond)
	return c.Stop()
}

// waitJoined waits until n holds group from of (with at least srcs
// sources), and fails the test if it does not within d.
func waitJoined(t *testing.T, n, of *Node, group netip.Addr, srcs int, d time.Duration) {
	t.Helper()
	ok := Eventually(d, func() bool {
		g, ok := peerGroups(n, of)[group.String()]
		return ok && len(g.Sources) >= srcs
	})
	if !ok {
		t.Fatalf("%s does not hold %s (%d sources) from %s: %v", n.Name, group, srcs, of.Name, peerGroups(n, of)[group.String()])
	}
}

var (
	ssmGroup   = netip.MustParseAddr("ff3e::5")
	laterGroup = netip.MustParseAddr("ff1e::6")
)

// A program's source-specific join of 120 sources (more than one message
// carries) reaches the peer whole, and another program's later join of
// another group still arrives: its stream is delivered. (Issue 26: the
// 120-source join froze the node's subscriptions, 0 of 500 arrived.)
func TestLargeSSMJoinThenAnotherJoin(t *testing.T) {
	w := New(t)
	a, b := w.Add("a", Options{}), w.Add("b", Options{})
	Mesh(a, b)
	a.Start()
	b.Start()
	b.Join(ssmGroup, sources(120)...)
	waitJoined(t, a, b, ssmGroup, 120, 5*time.Second)
	b.Join(laterGroup)
	waitJoined(t, a, b, laterGroup, 0, 5*time.Second)
	if tally := delivered(a, b, laterGroup, "later", 500); tally.Delivered < 495 {
		t.Fatalf("the later join's stream: %v of 500", tally)
	}
	if n := a.Status().Drops["subscription_send_failed"] + b.Status().Drops["subscription_send_failed"]; n != 0 {
		t.Errorf("%d subscription messages not sent", n)
	}
}

// The same through a relay: the relay passes the 120 sources on, and the
// later join arrives across it.
func TestLargeSSMJoinThroughRelay(t *testing.T) {
	w := New(t)
	a, r, b := w.Add("a", Options{}), w.Add("r", Options{Relay: true}), w.Add("b", Options{})
	for _, m := range []*Node{a, b} {
		m.Peer(r, PeerOptions{Relay: true})
		r.Peer(m, PeerOptions{})
	}
	for _, n := range []*Node{a, r, b} {
		n.Start()
	}
	b.Join(ssmGroup, sources(120)...)
	waitJoined(t, a, r, ssmGroup, 120, 5*time.Second)
	b.Join(laterGroup)
	waitJoined(t, a, r, laterGroup, 0, 5*time.Second)
	if tally := delivered(a, b, laterGroup, "later", 500); tally.Delivered < 495 {
		t.Fatalf("the later join's stream through the relay: %v of 500", tally)
	}
}

// A hub relays for three members. One toggles a group every millisecond;
// another, which holds 5,000 groups, joins a new one: the join reaches the
// third member (its stream to the group arrives) at once, toggling or not.
//
// The bound: updateGap (20 ms) at the member and at the hub, plus the
// stream's 10 ms steps and the machine's delays: the test asserts a
// median of 5 joins within 100 ms, and each within 300 ms (measured: each
// 19-56 ms, medians 25-37 ms). Under -race on two shared cores the hub's
// computing of its 5,000-group state toward each member (router.Advertised
// and the difference, up to 50 times a second while the toggler churns)
// is several times slower and saturates the cores, and 100 ms does not
// hold (medians of 160-370 ms were measured): there the test asserts 1 s
// and 2 s, and logs the figures. (With 8,000 groups the hub is CPU-bound
// even without -race: medians of 110-140 ms.)
func TestJoinUnderChurnAtHub(t *testing.T) {
	w := New(t)
	hub := w.Add("hub", Options{Relay: true})
	toggler, big, third := w.Add("toggler", Options{}), w.Add("big", Options{}), w.Add("third", Options{})
	for _, m := range []*Node{toggler, big, third} {
		m.Peer(hub, PeerOptions{Relay: true})
		hub.Peer(m, PeerOptions{})
	}
	for _, n := range []*Node{hub, toggler, big, third} {
		n.Start()
	}
	const held = 5000
	for i := range held {
		big.Join(numberedAddr("ff1e:b16::", i))
	}
	// (Polled every 100 ms: a status of thousands of groups is costly.)
	if !eventuallyEvery(30*time.Second, 100*time.Millisecond, func() bool { return len(peerGroups(third, hub)) >= held }) {
		t.Fatalf("the third member holds %d of the big member's %d groups", len(peerGroups(third, hub)), held)
	}
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		// One toggle a millisecond on average: a ticker alone falls
		// behind on a loaded machine, so each tick catches up.
		toggled := netip.MustParseAddr("ff1e::dead")
		start, n := time.Now(), 0
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			for due := int(time.Since(start) / time.Millisecond); n < due; n++ {
				if n%2 == 0 {
					toggler.Join(toggled)
				} else {
					toggler.Leave(toggled)
				}
			}
			select {
			case <-stop:
				done <- n
				return
			case <-tick.C:
			}
		}
	}()
	time.Sleep(300 * time.Millisecond) // churning
	var latencies []time.Duration
	for j := range 5 {
		group := numberedAddr("ff1e:77::", j)
		latencies = append(latencies, joinLatency(t, third, big, group))
	}
	close(stop)
	toggles := <-done
	sorted := slices.Clone(latencies)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	t.Logf("joins under churn (%d toggles) reached the third member after %v (median %v)", toggles, latencies, sorted[2])
	median, most := 100*time.Millisecond, 300*time.Millisecond
	if raceEnabled {
		median, most = time.Second, 2*time.Second
	}
	if sorted[2] > median || sorted[4] > most {
		t.Errorf("joins under churn took %v; want a median within %v, each within %v", latencies, median, most)
	}
	st := hub.Status()
	t.Logf("hub drops: send failed %d, inbox full %d", st.Drops["subscription_send_failed"], st.Drops["control_inbox_full"])
}

// eventuallyEvery waits until cond holds, checking every step, and reports
// whether it did within timeout.
func eventuallyEvery(timeout, step time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(step)
	}
	return true
}

// joinLatency has a program on at join group while one on from sends to it
// every millisecond, and returns how long after the join the first
// datagram arrived.
func joinLatency(t *testing.T, from, at *Node, group netip.Addr) time.Duration {
	t.Helper()
	tag := "j" + group.String()
	c := at.Count(tag)
	stop := make(chan struct{})
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		Stream{Tag: tag, From: from, Dst: group, Port: 4242, Rate: 1000, Count: 1 << 20}.Run(stop)
	}()
	time.Sleep(20 * time.Millisecond) // the stream runs before the join
	start := time.Now()
	at.Join(group)
	ok := Eventually(5*time.Second, func() bool { return c.Tally().Delivered > 0 })
	close(stop)
	<-sent
	tally := c.Stop()
	if !ok {
		t.Fatalf("the join of %s never reached %s", group, from.Name)
	}
	return tally.First.Sub(start)
}

// Over a link that loses 30% each way, a member that joins and leaves
// groups converges: the peer ends with exactly the member's groups.
func TestSubscriptionsConvergeAfterLoss(t *testing.T) {
	w := New(t)
	a, b := w.Add("a", Options{}), w.Add("b", Options{})
	Mesh(a, b)
	w.SetLinks("a", "b", Link{Loss: 0.30})
	a.Start()
	b.Start()
	want := map[string]bool{}
	for i := range 200 {
		g := numberedAddr("ff1e:c::", i%40)
		if want[g.String()] {
			b.Leave(g)
			delete(want, g.String())
		} else {
			b.Join(g)
			want[g.String()] = true
		}
		time.Sleep(2 * time.Millisecond)
	}
	if !Eventually(20*time.Second, func() bool { return sameGroups(peerGroups(a, b), want) }) {
		t.Fatalf("a holds %d groups of b's, want %d", len(peerGroups(a, b)), len(want))
	}
}

func sameGroups(got map[string]control.Group, want map[string]bool) bool {
	if len(got) != len(want) {
		return false
	}
	for g := range got {
		if !want[g] {
			return false
		}
	}
	return true
}

// After either side restarts, the peer holds the member's groups again:
// a restarted member sends its full state (the groups it left while down
// are swept), and a restarted receiver is sent the member's.
func TestSubscriptionsConvergeAfterRestart(t *testing.T) {
	w := New(t)
	a, b := w.Add("a", Options{}), w.Add("b", Options{})
	Mesh(a, b)
	a.Start()
	b.Start()
	want := map[string]bool{}
	for i := range 100 {
		g := numberedAddr("ff1e:d::", i)
		b.Join(g)
		want[g.String()] = true
	}
	converged := func(what string) {
		t.Helper()
		if !Eventually(20*time.Second, func() bool { return sameGroups(peerGroups(a, b), want) }) {
			for _, n := range []*Node{a, b} {
				st := n.Status()
				t.Logf("%s: drops %v; peer %+v", n.Name, st.Drops, st.Peers[0])
			}
			t.Fatalf("%s: a holds %d groups of b's, want %d", what, len(peerGroups(a, b)), len(want))
		}
	}
	converged("at start")
	b.Crash() // the programs' memberships stay...
	for i := range 10 {
		g := numberedAddr("ff1e:d::", i)
		b.Leave(g) // ...but these leave while the daemon is down
		delete(want, g.String())
	}
	b.Start()
	converged("after b restarted")
	a.Crash()
	a.Start()
	converged("after a restarted")
	if tally := delivered(a, b, numberedAddr("ff1e:d::", 50), "after", 200); tally.Delivered < 190 {
		t.Fatalf("after both restarts: %v of 200", tally)
	}
}
