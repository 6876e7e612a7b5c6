package simnet

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/control"
)

// Session tests (sessions_*_test.go): what internal/e2e's coldstart,
// faults, sites, mesh and lc0 tests check of sessions and subscriptions,
// in one process. Times a user would see are logged; those asserted
// carry a margin that holds on a loaded 2-core machine under -race, and
// do not count the time the test process itself was stalled (see
// stalls). The figures themselves belong in make bench.

// pairWait is how long the session tests wait for what they time (a
// pair's first datagram, a join showing in status): long enough to
// measure what misses its bound by far (a crossed handshake that lcast
// leaves to WireGuard's retry costs 5 s).
const pairWait = 15 * time.Second

// meshOf adds n nodes named 1..n, each the peer of every other, with
// link on every link between them; it starts none.
func meshOf(w *Network, n int, link Link) []*Node {
	var nodes []*Node
	for i := range n {
		nodes = append(nodes, w.Add(strconv.Itoa(i+1), Options{}))
	}
	Mesh(nodes...)
	for i, a := range nodes {
		for _, b := range nodes[i+1:] {
			w.SetLinks(a.Name, b.Name, link)
		}
	}
	return nodes
}

// sessionDiag reports each running node's drops and sessions.
func sessionDiag(nodes []*Node) string {
	var b strings.Builder
	for _, n := range nodes {
		d := n.Daemon()
		if d == nil {
			fmt.Fprintf(&b, "node %s: not running\n", n.Name)
			continue
		}
		st := d.Status()
		fmt.Fprintf(&b, "node %s drops: %v\n", n.Name, nonzeroDrops(st.Drops))
		for _, p := range st.Peers {
			fmt.Fprintf(&b, "  peer %.8s: connected %v, endpoint %s, handshake %v, rx %d tx %d, groups %v\n",
				p.PublicKey, p.Connected, p.Endpoint, p.LastHandshake, p.RxPackets, p.TxPackets, p.Groups)
		}
	}
	return b.String()
}

func nonzeroDrops(m map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

// statusOf returns what from's status says of to.
func statusOf(t testing.TB, from, to *Node) control.PeerStatus {
	t.Helper()
	for _, p := range from.Status().Peers {
		if p.PublicKey == to.Key.String() {
			return p
		}
	}
	t.Fatalf("%s has no peer %s", from.Name, to.Name)
	return control.PeerStatus{}
}

// subscribedTo reports whether from's status says that to subscribed to
// group.
func subscribedTo(from, to *Node, group netip.Addr) bool {
	d := from.Daemon()
	if d == nil {
		return false
	}
	for _, p := range d.Status().Peers {
		if p.PublicKey != to.Key.String() {
			continue
		}
		for _, g := range p.Groups {
			if g.Group == group.String() {
				return true
			}
		}
	}
	return false
}

// waitKnown waits until from knows whether to subscribed to group
// (want), failing the test after timeout; it returns how long it took.
func waitKnown(t testing.TB, from, to *Node, group netip.Addr, want bool, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if !Eventually(timeout, func() bool { return subscribedTo(from, to, group) == want }) {
		t.Fatalf("%s: subscription of %s to %s = %v not reached in %v\n%s", from.Name, to.Name, group, want, timeout, sessionDiag([]*Node{from, to}))
	}
	return time.Since(start)
}

// waitAllConnected waits until every node shows every peer connected,
// failing the test after timeout; it returns how long it took.
func waitAllConnected(t testing.TB, timeout time.Duration, nodes ...*Node) time.Duration {
	t.Helper()
	start := time.Now()
	ok := Eventually(timeout, func() bool {
		for _, n := range nodes {
			for _, p := range n.Status().Peers {
				if !p.Connected {
					return false
				}
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("peers did not connect within %v:\n%s", timeout, sessionDiag(nodes))
	}
	return time.Since(start)
}

// localGroup returns the node's local group g as its status shows it.
func localGroup(n *Node, g netip.Addr) (control.Group, bool) {
	for _, lg := range n.Status().LocalGroups {
		if lg.Group == g.String() {
			return lg, true
		}
	}
	return control.Group{}, false
}

// seqs is what a tally says of a numbered stream's sequence: the first
// and last sequence numbers delivered, and the longest run of numbers
// missing between them.
type seqs struct{ first, last, longestMissing int }

func seqsOf(t Tally) seqs {
	if len(t.seen) == 0 {
		return seqs{first: -1, last: -1}
	}
	s := seqs{first: -1}
	for seq := range t.seen {
		if s.first < 0 || seq < s.first {
			s.first = seq
		}
		s.last = max(s.last, seq)
	}
	run := 0
	for seq := s.first; seq <= s.last; seq++ {
		if t.seen[seq] {
			run = 0
			continue
		}
		run++
		s.longestMissing = max(s.longestMissing, run)
	}
	return s
}

// viewOf returns what from's status says of to, if from runs and lists
// it.
func viewOf(from, to *Node) (control.PeerStatus, bool) {
	d := from.Daemon()
	if d == nil {
		return control.PeerStatus{}, false
	}
	for _, p := range d.Status().Peers {
		if p.PublicKey == to.Key.String() {
			return p, true
		}
	}
	return control.PeerStatus{}, false
}

// stallMin is the least delay past its due time of the stall watcher's
// wake-up that counts as a stall of the test process.
const stallMin = 5 * time.Millisecond

// stalls records when the test process did not run: on a loaded 2-core
// machine under -race, every goroutine of it (programs, daemons, the
// underlay) can stop for hundreds of milliseconds together (a stream's
// sender and receiver measured stopping for the same 430 ms). A
// goroutine that sleeps 1 ms at a time notes each wake-up that comes
// stallMin or more late; a gap in a stream that a stall covers is the
// machine's, not lcast's.
type stalls struct {
	mu    sync.Mutex
	spans [][2]time.Time
	stop  chan struct{}
	done  chan struct{}
}

// watchStalls starts a stall watcher, which stops when the test ends.
func watchStalls(t testing.TB) *stalls {
	s := &stalls{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		const nap = time.Millisecond
		last := time.Now()
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(nap):
			}
			now := time.Now()
			if late := now.Sub(last) - nap; late >= stallMin {
				s.mu.Lock()
				s.spans = append(s.spans, [2]time.Time{last.Add(nap), now})
				s.mu.Unlock()
			}
			last = now
		}
	}()
	t.Cleanup(func() {
		close(s.stop)
		<-s.done
	})
	return s
}

// within returns how long the process was stalled between from and to
// (none, for a nil watcher).
func (s *stalls) within(from, to time.Time) time.Duration {
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var d time.Duration
	for _, sp := range s.spans {
		if lo, hi := maxTime(sp[0], from), minTime(sp[1], to); hi.After(lo) {
			d += hi.Sub(lo)
		}
	}
	return d
}

// longest returns the longest stall.
func (s *stalls) longest() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var d time.Duration
	for _, sp := range s.spans {
		d = max(d, sp[1].Sub(sp[0]))
	}
	return d
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// arrivals records, at one node, the datagrams of a numbered stream
// (Stream's payloads, "tag seq") in the order they arrive, with when,
// until stopped.
type arrivals struct {
	n    *Node
	tag  string
	mu   sync.Mutex
	seq  []int
	at   []time.Time
	seen map[int]bool
	dups int
	stop chan struct{}
	done chan struct{}
}

// record starts recording the stream tagged tag at n; the recording
// stops when the test ends, if not before.
func record(t testing.TB, n *Node, tag string) *arrivals {
	a := &arrivals{n: n, tag: tag + " ", seen: map[int]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(a.done)
		for {
			select {
			case d := <-n.Received():
				now := time.Now()
				rest, ok := strings.CutPrefix(d.Payload, a.tag)
				seq, err := strconv.Atoi(rest)
				if !ok || err != nil {
					continue
				}
				a.mu.Lock()
				if a.seen[seq] {
					a.dups++
				} else {
					a.seen[seq] = true
					a.seq = append(a.seq, seq)
					a.at = append(a.at, now)
				}
				a.mu.Unlock()
			case <-a.stop:
				return
			}
		}
	}()
	t.Cleanup(a.Stop)
	return a
}

// Stop stops recording (again is nothing).
func (a *arrivals) Stop() {
	select {
	case <-a.stop:
	default:
		close(a.stop)
	}
	<-a.done
}

// Delivered returns how many distinct datagrams arrived.
func (a *arrivals) Delivered() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.seq)
}

// drain waits until count datagrams arrived, or none more for quiet, and
// stops recording.
func (a *arrivals) drain(count int, quiet time.Duration) {
	last, still := -1, time.Now()
	Eventually(10*time.Second, func() bool {
		d := a.Delivered()
		if d == count {
			return true
		}
		if d != last {
			last, still = d, time.Now()
			return false
		}
		return time.Since(still) > quiet
	})
	a.Stop()
}

// summary is what a recording says of its stream.
type summary struct {
	delivered, dups int
	seqs
	// gap is the longest time between two datagrams arriving, and
	// stalled how much of it the test process was stalled (see stalls);
	// net is the longest gap less its stall, and netGap that gap.
	gap, stalled, net, netGap time.Duration
	first                     time.Time
}

func (s summary) String() string {
	return fmt.Sprintf("%d delivered (seq %d to %d, longest run lost %d), %d duplicates, longest gap %v (stalled %v of it), longest gap less stalls %v",
		s.delivered, s.seqs.first, s.last, s.longestMissing, s.dups, s.gap.Round(time.Millisecond), s.stalled.Round(time.Millisecond), s.net.Round(time.Millisecond))
}

// summary summarizes the recording, with st the stalls of the test
// process meanwhile.
func (a *arrivals) summary(st *stalls) summary {
	a.mu.Lock()
	defer a.mu.Unlock()
	sum := summary{delivered: len(a.seq), dups: a.dups, seqs: seqsOf(Tally{seen: a.seen})}
	for i := 1; i < len(a.at); i++ {
		g := a.at[i].Sub(a.at[i-1])
		stalled := st.within(a.at[i-1], a.at[i])
		if g > sum.gap {
			sum.gap, sum.stalled = g, stalled
		}
		if g-stalled > sum.net {
			sum.net, sum.netGap = g-stalled, g
		}
	}
	if len(a.at) > 0 {
		sum.first = a.at[0]
	}
	return sum
}

// stream has a program on from send count numbered datagrams tagged tag
// to group at rate, while recordings at to take them; it returns the
// recordings at once, and closes done when the last datagram was sent.
func stream(t testing.TB, from *Node, group netip.Addr, tag string, count, rate int, to ...*Node) (recs []*arrivals, done <-chan struct{}) {
	for _, n := range to {
		recs = append(recs, record(t, n, tag))
	}
	ch, stop := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(ch)
		Stream{Tag: tag, From: from, Dst: group, Port: 4242, Rate: rate, Count: count}.Run(stop)
	}()
	t.Cleanup(func() {
		close(stop)
		<-ch
	})
	return recs, ch
}

// pair2 returns two nodes, 1 and 2, each the peer of the other, on link
// both ways; neither is started.
func pair2(w *Network, link Link) (*Node, *Node) {
	nodes := meshOf(w, 2, link)
	return nodes[0], nodes[1]
}
