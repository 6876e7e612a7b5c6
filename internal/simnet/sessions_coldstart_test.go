package simnet

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/librecast/lcast/peer"
)

// way is a direction between two nodes of a mesh: data from node from
// to node to.
type way struct{ from, to int }

func (p way) String() string { return fmt.Sprintf("%d→%d", p.from+1, p.to+1) }

// allWays lists every ordered pair of n nodes.
func allWays(n int) []way {
	var ps []way
	for to := range n {
		for from := range n {
			if from != to {
				ps = append(ps, way{from, to})
			}
		}
	}
	return ps
}

// waysAcross lists the pairs of n nodes with one node below cut and the
// other not.
func waysAcross(n, cut int) []way {
	var ps []way
	for _, p := range allWays(n) {
		if (p.from < cut) != (p.to < cut) {
			ps = append(ps, p)
		}
	}
	return ps
}

// waysWith lists the pairs of n nodes that include node i.
func waysWith(n, i int) []way {
	var ps []way
	for _, p := range allWays(n) {
		if p.from == i || p.to == i {
			ps = append(ps, p)
		}
	}
	return ps
}

// pairStreams is a program on every node of a mesh that joins a group (once
// lc0 is there: see startTogether) and sends to it rate datagrams a
// second, each carrying its send time, so that every ordered pair of
// nodes carries a stream, as internal/e2e's stream helper does. Its
// programs send whether or not lcast is up (a send is refused while lc0
// is not there) and run until the test ends. For each pair it notes when
// the first datagram sent at or after the last mark arrived.
type pairStreams struct {
	nodes []*Node
	group netip.Addr
	index map[netip.Addr]int // a node's overlay address to its index

	mu    sync.Mutex
	mark  time.Time
	first map[way]time.Time

	stalls *stalls

	stop chan struct{}
	wg   sync.WaitGroup
}

const pairsPort = 4244

// startPairStreams starts the programs on nodes; they stop when the test ends.
func startPairStreams(t testing.TB, nodes []*Node, group netip.Addr, rate int) *pairStreams {
	s := &pairStreams{nodes: nodes, group: group, index: map[netip.Addr]int{}, first: map[way]time.Time{}, stop: make(chan struct{}), stalls: watchStalls(t)}
	for i, n := range nodes {
		s.index[n.Addr] = i
	}
	for i, n := range nodes {
		s.wg.Add(2)
		go s.send(n, rate)
		go s.receive(i, n)
	}
	t.Cleanup(func() {
		close(s.stop)
		s.wg.Wait()
	})
	return s
}

func (s *pairStreams) send(n *Node, rate int) {
	defer s.wg.Done()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for {
		n.Send(s.group, pairsPort, "pairs "+strconv.FormatInt(time.Now().UnixNano(), 10))
		select {
		case <-tick.C:
		case <-s.stop:
			return
		}
	}
}

func (s *pairStreams) receive(to int, n *Node) {
	defer s.wg.Done()
	for {
		select {
		case d := <-n.Received():
			now := time.Now()
			rest, ok := strings.CutPrefix(d.Payload, "pairs ")
			sent, err := strconv.ParseInt(rest, 10, 64)
			from, known := s.index[d.Src]
			if !ok || err != nil || !known {
				continue
			}
			s.mu.Lock()
			p := way{from, to}
			if _, seen := s.first[p]; !seen && !time.Unix(0, sent).Before(s.mark) {
				s.first[p] = now
			}
			s.mu.Unlock()
		case <-s.stop:
			return
		}
	}
}

// setMark makes only datagrams sent from now on count as first ones, and
// returns the mark.
func (s *pairStreams) setMark() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mark = time.Now()
	clear(s.first)
	return s.mark
}

// firsts returns, for each pair, when its first datagram sent since the
// mark arrived.
func (s *pairStreams) firsts() map[way]time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	got := make(map[way]time.Time, len(s.first))
	for p, at := range s.first {
		got[p] = at
	}
	return got
}

// waitPairs waits up to timeout until every pair in want has its first
// datagram since the mark, and returns those that have.
func (s *pairStreams) waitPairs(want []way, timeout time.Duration) map[way]time.Time {
	var got map[way]time.Time
	Eventually(timeout, func() bool {
		got = s.firsts()
		for _, p := range want {
			if _, ok := got[p]; !ok {
				return false
			}
		}
		return true
	})
	return got
}

// expectPairs waits for a datagram on every pair in want, sent since the
// mark, and checks that each arrived within limit of since(pair), less
// the time the test process was stalled meanwhile (see stalls): it logs
// each pair's time, the median and the maximum, and the longest stall.
func (s *pairStreams) expectPairs(t testing.TB, what string, want []way, since func(way) time.Time, limit time.Duration) {
	t.Helper()
	got := s.waitPairs(want, pairWait)
	var took []time.Duration
	var lines, missing []string
	var worst, worstStalled time.Duration
	for _, p := range want {
		at, ok := got[p]
		if !ok {
			missing = append(missing, p.String())
			continue
		}
		d := at.Sub(since(p))
		took = append(took, d)
		lines = append(lines, fmt.Sprintf("%s %v", p, d.Round(time.Millisecond)))
		if stalled := s.stalls.within(since(p), at); d-stalled > worst-worstStalled {
			worst, worstStalled = d, stalled
		}
	}
	slices.Sort(took)
	if len(took) > 0 {
		t.Logf("%s: first datagram per pair: %s; p50 %v, max %v over %d pairs; longest stall of the test process %v", what, strings.Join(lines, ", "),
			took[len(took)/2].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond), len(took), s.stalls.longest().Round(time.Millisecond))
	}
	if len(missing) > 0 {
		t.Errorf("%s: no datagram within %v on %d of %d pairs: %s\n%s", what, pairWait, len(missing), len(want), strings.Join(missing, ", "), sessionDiag(s.nodes))
	}
	if worst-worstStalled > limit {
		t.Errorf("%s: a pair's first datagram came %v after both were up (the test process stalled %v of it), want <= %v\n%s",
			what, worst.Round(time.Millisecond), worstStalled.Round(time.Millisecond), limit, sessionDiag(s.nodes))
	}
}

// startTogether starts the nodes' daemons gap apart, in order (gap 0: all
// at once, each in its own goroutine, released together as machines that
// boot together), and once each is up its program joins the group (as
// e2e's stream helper joins once lc0 is there). It returns when each
// start was called, as `lcast up` was run.
func startTogether(t testing.TB, nodes []*Node, group netip.Addr, gap time.Duration, join bool) []time.Time {
	t.Helper()
	upAt := make([]time.Time, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i, n := range nodes {
		wg.Go(func() {
			<-gate
			time.Sleep(time.Duration(i) * gap)
			upAt[i] = time.Now()
			if errs[i] = n.TryStart(); errs[i] == nil && join {
				n.Join(group)
			}
		})
	}
	close(gate)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%s: %v", nodes[i].Name, err)
		}
	}
	return upAt
}

// laterOf returns, for a pair, when the later of its two nodes started.
func laterOf(upAt []time.Time) func(way) time.Time {
	return func(p way) time.Time {
		a, b := upAt[p.from], upAt[p.to]
		if a.After(b) {
			return a
		}
		return b
	}
}

// coldLink is the underlay between the nodes of the cold-start tests: a
// few milliseconds each way, jittered, so that handshakes sent together
// can cross on the wire, as they do between machines.
var coldLink = Link{Delay: 5 * time.Millisecond, Jitter: 5 * time.Millisecond}

// coldLimit is what the cold-start tests assert of a pair's first
// datagram after both nodes are up, less the time the test process was
// stalled (see stalls). The design's figure, 1 s (docs/design.md: every
// pair carries data both ways within 1 s of both being up, whatever the
// order of starts), is logged, not asserted: these daemons run under the
// race detector, four of them with their programs on a shared 2-core
// machine, and the Warp clock would not make 1 s more reliable (the
// handshakes run on real time). 3 s still fails a start that waits for
// WireGuard's own retry of a crossed handshake (5 s).
const coldLimit = 3 * time.Second

// Every pair of nodes carries data both ways soon after both are up,
// whatever the order of starts (internal/e2e TestColdStart). Four nodes
// start while a program on each streams to a group all of them join, so
// that every ordered pair streams at once; each pair's first datagram is
// timed from the later start of the two, with no wait for sessions. The
// cold start is done five times together and twice in turn (250 ms and
// 500 ms apart), each time with new nodes (new keys); then, on a mesh
// started together once more, after all four crash and start again
// together, after one crashes and starts again while the others stream
// (timed from its start), and after a partition between nodes 1-2 and
// 3-4 that outlasts peer.HoldTime heals (timed from the heal). Crashes
// keep the programs' memberships, so the programs stream on throughout.
func TestColdStart(t *testing.T) {
	const n, coldStarts = 4, 5
	group := netip.MustParseAddr("ff1e::15:1")
	all := allWays(n)
	coldStart := func(t *testing.T, what string, gap time.Duration) (*Network, []*Node, *pairStreams) {
		w := New(t)
		nodes := meshOf(w, n, coldLink)
		s := startPairStreams(t, nodes, group, 200)
		upAt := startTogether(t, nodes, group, gap, true)
		s.expectPairs(t, what, all, laterOf(upAt), coldLimit)
		return w, nodes, s
	}
	t.Run("started together", func(t *testing.T) {
		for round := range coldStarts {
			t.Run(fmt.Sprint(round+1), func(t *testing.T) {
				coldStart(t, fmt.Sprintf("cold start %d of %d", round+1, coldStarts), 0)
			})
		}
	})
	t.Run("started in turn", func(t *testing.T) {
		for _, gap := range []time.Duration{250 * time.Millisecond, 500 * time.Millisecond} {
			t.Run(gap.String(), func(t *testing.T) {
				coldStart(t, fmt.Sprintf("cold start %v apart", gap), gap)
			})
		}
	})
	// The steps below share one mesh; each starts from every pair
	// streaming, which the step before waited for.
	w, nodes, s := coldStart(t, "cold start before the restarts", 0)
	if t.Failed() {
		return
	}
	t.Run("all restart together", func(t *testing.T) {
		for _, nd := range nodes {
			nd.Crash()
		}
		s.setMark()
		upAt := startTogether(t, nodes, group, 0, false)
		s.expectPairs(t, "all restarted together", all, laterOf(upAt), coldLimit)
	})
	t.Run("one restarts", func(t *testing.T) {
		nodes[0].Crash()
		s.setMark()
		up := time.Now()
		nodes[0].Start()
		s.expectPairs(t, "node 1 restarted", waysWith(n, 0), func(way) time.Time { return up }, coldLimit)
	})
	t.Run("partition heals", func(t *testing.T) {
		across := waysAcross(n, 2)
		partition := func(down bool) {
			for _, a := range nodes[:2] {
				for _, b := range nodes[2:] {
					w.Partition(a.Name, b.Name, down)
				}
			}
		}
		partition(true)
		time.Sleep(100 * time.Millisecond) // what was already on its way lands
		s.setMark()
		// Longer than peer.HoldTime: each side forgets the other's
		// subscriptions, and must learn them again after the heal. (A
		// longer partition changes nothing more in lcast until
		// lostRecently, a minute; the Warp clock cannot shorten it,
		// as the pairs on each side carry on meanwhile.)
		time.Sleep(peer.HoldTime + 2*time.Second)
		for p := range s.firsts() {
			if slices.Contains(across, p) {
				t.Fatalf("pair %s carried data across the partition", p)
			}
		}
		if held := subscribedTo(nodes[0], nodes[2], group); held {
			t.Errorf("node 1 still holds node 3's subscription after %v of partition", peer.HoldTime+2*time.Second)
		}
		s.setMark()
		healed := time.Now()
		partition(false)
		s.expectPairs(t, "partition healed", across, func(way) time.Time { return healed }, coldLimit)
	})
}

// `connected` in status means two-way traffic (internal/e2e
// TestConnectedMeansTwoWay): while two nodes stream to each other, each
// one's last_rx for the other is recent; with node 1's datagrams lost on
// their way to node 2 (the link one way down), both ends show connected
// false; once the link is back, both show true again, and node 1's stream
// reaches node 2 again.
func TestConnectedMeansTwoWay(t *testing.T) {
	w := New(t)
	nodes := meshOf(w, 2, Link{})
	a, b := nodes[0], nodes[1]
	group := netip.MustParseAddr("ff1e::15:2")
	s := startPairStreams(t, nodes, group, 200)
	startTogether(t, nodes, group, 0, true)
	// The test is about connected changing: it starts from data flowing
	// both ways (TestColdStart times how soon that is).
	if got := s.waitPairs(allWays(2), pairWait); len(got) != 2 {
		t.Fatalf("the two nodes did not stream both ways within %v: %v\n%s", pairWait, got, sessionDiag(nodes))
	}
	t.Run("last_rx while streaming", func(t *testing.T) {
		for _, d := range [][2]*Node{{a, b}, {b, a}} {
			p := statusOf(t, d[0], d[1])
			now := w.Clock().Now()
			if p.LastRx == nil {
				t.Errorf("%s: no last_rx for %s, which streams to it", d[0].Name, d[1].Name)
				continue
			}
			// 200 datagrams a second arrive: the last is a few ms old.
			if age := now.Sub(*p.LastRx); age > time.Second || age < -time.Second {
				t.Errorf("%s: last_rx for %s is %v old while it streams", d[0].Name, d[1].Name, age)
			}
		}
	})
	both := func(t testing.TB) (bool, bool) { return statusOf(t, a, b).Connected, statusOf(t, b, a).Connected }
	cut := time.Now()
	w.SetLink(a.Name, b.Name, Link{Down: true})
	wentFalse := false
	t.Run("false while one direction is cut", func(t *testing.T) {
		if !Eventually(10*time.Second, func() bool { x, y := both(t); return !x && !y }) {
			x, y := both(t)
			t.Fatalf("10 s after node 1's datagrams stopped reaching node 2, node 1 shows connected=%v and node 2 connected=%v", x, y)
		}
		wentFalse = true
		t.Logf("both ends show connected false %v after the cut", time.Since(cut).Round(time.Millisecond))
	})
	s.setMark()
	repaired := time.Now()
	w.SetLink(a.Name, b.Name, Link{})
	t.Run("true after the repair", func(t *testing.T) {
		if !wentFalse {
			t.Skip("skipped: connected never went false, so its return cannot be timed")
		}
		ok := Eventually(pairWait, func() bool { x, y := both(t); return x && y })
		took := time.Since(repaired)
		stalled := s.stalls.within(repaired, time.Now())
		// The design's figure is 1 s; coldLimit leaves room for the
		// race detector on a loaded machine (see coldLimit).
		t.Logf("both ends show connected true %v after the repair (the test process stalled %v of it)", took.Round(time.Millisecond), stalled.Round(time.Millisecond))
		if !ok || took-stalled > coldLimit {
			t.Errorf("connected true at both ends took %v after the repair (stalled %v; reached: %v), want <= %v\n%s",
				took.Round(time.Millisecond), stalled.Round(time.Millisecond), ok, coldLimit, sessionDiag(nodes))
		}
	})
	t.Run("data after the repair", func(t *testing.T) {
		s.expectPairs(t, "repaired", []way{{0, 1}}, func(way) time.Time { return repaired }, coldLimit)
	})
}
