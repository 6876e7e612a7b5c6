package simnet

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// resumeLimit is what the fault tests assert of a stream's longest gap
// when a session has to be mended (a peer restarted, a NAT remapped, an
// address moved, a black hole closed): internal/e2e's bounds are 2-3 s,
// set by the hello interval (1 s) and the repairs; under the race
// detector on a loaded 2-core machine the tests log the figures and
// assert 3 s. A fault left to WireGuard's own retry (5 s) still fails.
const resumeLimit = 3 * time.Second

// lossy is the underlay of TestLossAndDelay: 10% of datagrams lost at
// random and 50 ms of delay, each way.
var lossy = Link{Loss: 0.10, Delay: 50 * time.Millisecond}

// lossRunLimit is the longest run of consecutive datagrams of a stream
// that 10% random loss explains: the chance of a run of 12 among 60,000
// datagrams is about 5e-8. A longer run was dropped by lcast.
const lossRunLimit = 12

// lossyGapLimit bounds the longest time between two datagrams of a
// 1000/s stream arriving over the lossy link, less the time the test
// process itself was stalled (see stalls): the loss explains about 20 ms
// (a run of lost datagrams and the sender's 10 ms pacing); a repair that
// expires the session's keys stops the stream for 0.5-1.2 s (issue 25),
// at least a handshake's round trip and a delay (150 ms here). The bound
// leaves room for what the stall watcher misses of a loaded machine (229
// ms measured after a stall of 541 ms); shorter repairs are caught by
// counting them.
const lossyGapLimit = 500 * time.Millisecond

// handshakes counts, at each node, the new sessions with the other (the
// changes of last_handshake) while it runs.
type handshakes struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	n    map[string]int
}

func countHandshakes(t testing.TB, a, b *Node) *handshakes {
	h := &handshakes{stop: make(chan struct{}), done: make(chan struct{}), n: map[string]int{}}
	go func() {
		defer close(h.done)
		last := map[string]time.Time{}
		for {
			for _, d := range [][2]*Node{{a, b}, {b, a}} {
				if p, ok := viewOf(d[0], d[1]); ok && p.LastHandshake != nil {
					if prev, seen := last[d[0].Name]; seen && !prev.Equal(*p.LastHandshake) {
						h.mu.Lock()
						h.n[d[0].Name]++
						h.mu.Unlock()
					}
					last[d[0].Name] = *p.LastHandshake
				}
			}
			select {
			case <-h.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { h.Stop() })
	return h
}

// Stop stops counting (again is nothing) and returns the counts.
func (h *handshakes) Stop() map[string]int {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

// longStream is how long TestLossAndDelay streams: 60 s, as issue 25
// asks, or 10 s with -short.
func longStream() time.Duration {
	if testing.Short() {
		return 10 * time.Second
	}
	return 60 * time.Second
}

// With 10% loss and 50 ms of delay each way on the underlay between two
// nodes (once internal/e2e TestLossAndDelay, whose lossy relay stood in for netem), subscriptions converge, on join
// and on leave, and a stream is delivered but for the datagrams the
// underlay lost; a 1000/s stream for 60 s (issue 25) has no gap longer
// than the loss explains, and no session is repaired while it flows (a
// session that carries traffic is never torn down: peer/health.go).
func TestLossAndDelay(t *testing.T) {
	w := New(t)
	a, b := pair2(w, lossy)
	a.Debug()
	b.Debug()
	st := watchStalls(t)
	a.Start()
	b.Start()
	// The rounds time the subscription exchange and the stream, not the
	// session's start (TestColdStart does): they start from a session.
	t.Logf("session after %v", waitAllConnected(t, 30*time.Second, a, b).Round(time.Millisecond))
	t.Run("subscriptions and short streams", func(t *testing.T) {
		for round := range 3 {
			group := netip.MustParseAddr(fmt.Sprintf("ff1e::c:%d", round))
			b.Join(group)
			joined := waitKnown(t, a, b, group, true, 10*time.Second)
			recs, done := stream(t, a, group, fmt.Sprintf("r%d", round), 2000, 1000, b)
			<-done
			recs[0].drain(2000, 500*time.Millisecond)
			sum := recs[0].summary(st)
			b.Leave(group)
			left := waitKnown(t, a, b, group, false, 10*time.Second)
			t.Logf("round %d, 10%% loss and 50 ms each way: join known after %v; of 2000, %v; leave known after %v",
				round+1, joined.Round(time.Millisecond), sum, left.Round(time.Millisecond))
			// 10% of 2000 is lost on the way, give or take chance.
			if sum.delivered < 1700 || sum.dups != 0 {
				t.Fatalf("round %d: %v\n%s", round+1, sum, sessionDiag([]*Node{a, b}))
			}
		}
	})
	t.Run("1000/s stream", func(t *testing.T) {
		d := longStream()
		count := int(d / time.Millisecond)
		group := netip.MustParseAddr("ff1e::c:ff")
		b.Join(group)
		// The stream measures a session that carries traffic: it starts
		// once node 1 knows of the listener.
		waitKnown(t, a, b, group, true, 10*time.Second)
		logA, logB := len(a.Log()), len(b.Log())
		hs := countHandshakes(t, a, b)
		start := time.Now()
		recs, done := stream(t, a, group, "long", count, 1000, b)
		<-done
		sent := time.Since(start)
		recs[0].drain(count, 500*time.Millisecond)
		sum := recs[0].summary(st)
		handshakes := hs.Stop()
		repairsA, repairsB := a.Repairs(logA), b.Repairs(logB)
		pathLost := strings.Count(a.Log()[logA:], "direct path lost") + strings.Count(b.Log()[logB:], "direct path lost")
		t.Logf("%d sent in %v over 10%% loss and 50 ms each way: %v; repairs %d (node 1) and %d (node 2), new sessions %v, \"direct path lost\" logged %d times; longest stall of the test process %v; underlay dropped %d; drops %v and %v",
			count, sent.Round(time.Millisecond), sum, repairsA, repairsB, handshakes, pathLost, st.longest().Round(time.Millisecond),
			w.Dropped.Load(), nonzeroDrops(a.Status().Drops), nonzeroDrops(b.Status().Drops))
		if sum.delivered < count*85/100 || sum.dups != 0 {
			t.Errorf("%v of %d: want 90%% give or take chance, and no duplicates", sum, count)
		}
		if sum.longestMissing > lossRunLimit {
			t.Errorf("%d consecutive datagrams lost: more than 10%% random loss explains (%d)", sum.longestMissing, lossRunLimit)
		}
		if sum.net > lossyGapLimit {
			t.Errorf("the stream stopped for %v while the test process ran (%v with its stalls): more than the loss explains (<= %v)",
				sum.net.Round(time.Millisecond), sum.netGap.Round(time.Millisecond), lossyGapLimit)
		}
		if repairsA+repairsB > 0 {
			t.Errorf("sessions carrying traffic were repaired %d times (node 1) and %d times (node 2): a repair costs the session's keys\n%s",
				repairsA, repairsB, repairLines(a, logA)+repairLines(b, logB))
		}
	})
}

// repairLines returns the lines of n's log from offset from on that tell
// of repairs and handshakes, for a failure's message.
func repairLines(n *Node, from int) string {
	var b strings.Builder
	log := n.Log()
	if from > len(log) {
		return ""
	}
	for _, line := range strings.Split(log[from:], "\n") {
		if strings.Contains(line, repairMsg) || strings.Contains(line, "andshake") {
			fmt.Fprintf(&b, "node %s: %s\n", n.Name, line)
		}
	}
	return b.String()
}

// A real black hole (everything lost both ways between two nodes, over
// the lossy link of TestLossAndDelay) is repaired: once the path is back,
// the stream resumes within resumeLimit (issue 25: within 1 s; logged).
func TestBlackHoleRepaired(t *testing.T) {
	w := New(t)
	a, b := pair2(w, lossy)
	a.Debug()
	b.Debug()
	st := watchStalls(t)
	a.Start()
	b.Start()
	group := netip.MustParseAddr("ff1e::c:bb")
	b.Join(group)
	// The test is about the repair: it starts from a stream that flows.
	waitKnown(t, a, b, group, true, 30*time.Second)
	recs, _ := stream(t, a, group, "bh", 1<<30, 1000, b)
	rec := recs[0]
	if !Eventually(10*time.Second, func() bool { return rec.Delivered() > 100 }) {
		t.Fatalf("no stream before the black hole\n%s", sessionDiag([]*Node{a, b}))
	}
	logA, logB := len(a.Log()), len(b.Log())
	w.SetLinks(a.Name, b.Name, Link{Down: true})
	// Long enough for both ends to find the session silent
	// (silentBeforeRepair, 1 s) and repair it, more than once.
	time.Sleep(3 * time.Second)
	before := rec.Delivered()
	healed := time.Now()
	w.SetLinks(a.Name, b.Name, lossy)
	ok := Eventually(10*time.Second, func() bool { return rec.Delivered() > before })
	took, stalled := time.Since(healed), st.within(healed, time.Now())
	repairs := a.Repairs(logA) + b.Repairs(logB)
	t.Logf("black hole of 3 s: %d repairs meanwhile; the stream resumed %v after the path came back (the test process stalled %v of it)",
		repairs, took.Round(time.Millisecond), stalled.Round(time.Millisecond))
	if repairs == 0 {
		t.Errorf("no repair logged (%q) during 3 s of black hole: was the session repaired, or did the message change?", repairMsg)
	}
	if !ok {
		t.Fatalf("the stream did not resume within 10 s of the path coming back\n%s", sessionDiag([]*Node{a, b}))
	}
	if took-stalled > resumeLimit {
		t.Errorf("the stream resumed %v after the path came back (stalled %v), want <= %v\n%s",
			took.Round(time.Millisecond), stalled.Round(time.Millisecond), resumeLimit, repairLines(a, logA)+repairLines(b, logB))
	}
}

// checkResumed checks a stream of count datagrams that a fault
// interrupted: every datagram arrived once but for those of one gap no
// longer than resumeLimit (less the test process's stalls), and the
// stream's end arrived.
func checkResumed(t *testing.T, what string, sum summary, count int, nodes ...*Node) {
	t.Helper()
	t.Logf("%s: %v", what, sum)
	if sum.net > resumeLimit || sum.last < count-count/50 || sum.dups != 0 {
		t.Fatalf("%s: delivery did not resume within %v: %v\n%s", what, resumeLimit, sum, sessionDiag(nodes))
	}
}

// The NAT in front of a node forgets its mapping and maps the node's
// datagrams to a new port (once internal/e2e TestNATRemaps, with a userspace NAT): the peer learns
// the new mapping from the node's next packet, and delivery to the node
// resumes.
func TestNATRemaps(t *testing.T) {
	w := New(t)
	a := w.Add("1", Options{})
	b := w.Add("2", Options{NAT: EndpointIndependent})
	// Node 1 cannot know where node 2 is; node 2 reaches node 1 through
	// its NAT.
	Mesh(a, b)
	st := watchStalls(t)
	a.Start()
	b.Start()
	// The test measures the recovery from a remapping: it starts from a
	// session.
	waitAllConnected(t, 10*time.Second, a, b)
	group := netip.MustParseAddr("ff1e::f")
	b.Join(group)
	waitKnown(t, a, b, group, true, 10*time.Second)
	old, ok := b.Mapped()
	if !ok {
		t.Fatal("node 2's NAT has no mapping of its port while it has a session")
	}
	recs, done := stream(t, a, group, "nat", 5000, 1000, b)
	time.Sleep(time.Second)
	w.Remap(b)
	<-done
	recs[0].drain(5000, 500*time.Millisecond)
	now, ok := b.Mapped()
	ep := statusOf(t, a, b).Endpoint
	checkResumed(t, fmt.Sprintf("NAT remapped a second into the stream (%s to %s); node 1 now sends to %s", old, now, ep), recs[0].summary(st), 5000, a, b)
	if !ok || now == old || ep != now.String() {
		t.Fatalf("node 1 sends to %s, want the new mapping %s (was %s)", ep, now, old)
	}
}

// When a node's underlay address changes under its running daemon,
// delivery resumes in both directions without restarting anything: the
// node sends from its new address, and its peer learns that address from
// the first authenticated packet (internal/e2e TestUnderlayAddressChange;
// how the kernel picks the new source address stays there).
func TestUnderlayAddressChange(t *testing.T) {
	for _, tc := range []struct {
		name string
		node int // whose address changes: 0 the sender's, 1 the receiver's
	}{{"sender moves", 0}, {"receiver moves", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			w := New(t)
			a, b := pair2(w, Link{})
			st := watchStalls(t)
			a.Start()
			b.Start()
			group := netip.MustParseAddr("ff1e::8")
			b.Join(group)
			waitKnown(t, a, b, group, true, 10*time.Second)
			recs, done := stream(t, a, group, "move", 5000, 1000, b)
			time.Sleep(time.Second)
			n, other := []*Node{a, b}[tc.node], []*Node{a, b}[1-tc.node]
			old := n.Endpoint()
			w.Move(n, netip.MustParseAddr("2001:db8::f00d"))
			<-done
			recs[0].drain(5000, 500*time.Millisecond)
			checkResumed(t, tc.name, recs[0].summary(st), 5000, a, b)
			// The peer sends to the new address (the stream above shows
			// it for the receiver; the sender's hellos show it here).
			want := n.Endpoint().String()
			if !Eventually(resumeLimit, func() bool { return statusOf(t, other, n).Endpoint == want }) {
				t.Fatalf("node %s still sends to %s, want %s (was %s)", other.Name, statusOf(t, other, n).Endpoint, want, old)
			}
		})
	}
}

// After a peer's daemon crashes and starts again, delivery resumes
// (once internal/e2e TestPeerRestart; a real SIGKILL and the adoption of lc0 are
// internal/e2e TestCrashRelearnsMemberships).
func TestPeerRestart(t *testing.T) {
	for _, tc := range []struct {
		name string
		node int // whose daemon restarts: 0 the sender's, 1 the receiver's
	}{{"receiver crashes", 1}, {"sender crashes", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			w := New(t)
			a, b := pair2(w, Link{})
			st := watchStalls(t)
			a.Start()
			b.Start()
			group := netip.MustParseAddr("ff1e::7")
			b.Join(group)
			waitKnown(t, a, b, group, true, 10*time.Second)
			recs, done := stream(t, a, group, "restart", 6000, 1000, b)
			time.Sleep(time.Second)
			n := []*Node{a, b}[tc.node]
			n.Crash()
			n.Start()
			<-done
			recs[0].drain(6000, 500*time.Millisecond)
			checkResumed(t, tc.name, recs[0].summary(st), 6000, a, b)
		})
	}
}

// With 30% of the datagrams between two nodes lost both ways, the
// receiving node's subscriptions still converge at the sending node, on
// join and on leave (once internal/e2e TestSubscriptionsConvergeUnderLoss).
func TestSubscriptionsConvergeUnderLoss(t *testing.T) {
	w := New(t)
	a, b := pair2(w, Link{})
	a.Start()
	b.Start()
	// Connected before the loss starts: the rounds time the subscription
	// exchange only.
	waitAllConnected(t, 10*time.Second, a, b)
	w.SetLinks(a.Name, b.Name, Link{Loss: 0.30})
	for round := range 3 {
		group := netip.MustParseAddr(fmt.Sprintf("ff1e::a:%d", round))
		b.Join(group)
		joined := waitKnown(t, a, b, group, true, 10*time.Second)
		b.Leave(group)
		left := waitKnown(t, a, b, group, false, 10*time.Second)
		t.Logf("round %d with 30%% loss: join known after %v, leave after %v", round+1, joined.Round(time.Millisecond), left.Round(time.Millisecond))
	}
}
