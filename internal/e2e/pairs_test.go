package e2e

import (
	"encoding/binary"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/netlab"
	"github.com/librecast/lcast/peer"
	"golang.org/x/net/ipv6"
)

// streamPort is the UDP port of the stream helpers' group.
const streamPort = 4244

// streamHelper: "stream -group G [-iface lc0] [-rate R]": waits until
// IFACE exists with an address that is not link-local (lcast up creates
// it), joins G there, and sends to G on IFACE R datagrams a second, each
// carrying its sequence number and send time (as the load generator's);
// its own are not looped back. It prints "ready T" once joined, and
// "first SRC SENT ARRIVED EPOCH" (times in Unix nanoseconds) for the
// first datagram from each source sent at or after the last mark. SIGUSR1
// sets a mark: it prints "mark EPOCH T", and from then on each source's
// first datagram sent at or after T is printed again. Runs until killed.
func streamHelper(args []string) int {
	fs := flag.NewFlagSet("stream", flag.ContinueOnError)
	group := fs.String("group", "", "multicast group")
	iface := fs.String("iface", "lc0", "interface")
	rate := fs.Int("rate", 200, "datagrams per second")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ifi := waitInterface(*iface)
	c, err := net.ListenUDP("udp6", &net.UDPAddr{Port: streamPort})
	if err != nil {
		return helperFail(err)
	}
	p := ipv6.NewPacketConn(c)
	dst := &net.UDPAddr{IP: net.ParseIP(*group), Port: streamPort}
	for _, err := range []error{p.JoinGroup(ifi, dst), p.SetMulticastInterface(ifi), p.SetMulticastLoopback(false)} {
		if err != nil {
			return helperFail(err)
		}
	}
	var mu sync.Mutex // over the output, mark, epoch and seen
	var mark int64
	epoch := 0
	seen := map[string]bool{}
	fmt.Printf("ready %d\n", time.Now().UnixNano())
	marks := make(chan os.Signal, 1)
	signal.Notify(marks, syscall.SIGUSR1)
	go func() {
		for range marks {
			mu.Lock()
			epoch++
			mark = time.Now().UnixNano()
			clear(seen)
			fmt.Printf("mark %d %d\n", epoch, mark)
			mu.Unlock()
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, src, err := p.ReadFrom(buf)
			if err != nil {
				helperFail(err)
				os.Exit(1)
			}
			now := time.Now().UnixNano()
			from, ok := src.(*net.UDPAddr)
			if n < loadHdrLen || !ok {
				continue
			}
			sent := int64(binary.BigEndian.Uint64(buf[8:]))
			mu.Lock()
			if sent >= mark && !seen[from.IP.String()] {
				seen[from.IP.String()] = true
				fmt.Printf("first %s %d %d %d\n", from.IP, sent, now, epoch)
			}
			mu.Unlock()
		}
	}()
	buf := make([]byte, 200)
	start := time.Now()
	for seq := 0; ; seq++ {
		time.Sleep(time.Until(start.Add(time.Duration(seq) * time.Second / time.Duration(*rate))))
		binary.BigEndian.PutUint64(buf, uint64(seq))
		binary.BigEndian.PutUint64(buf[8:], uint64(time.Now().UnixNano()))
		// Refused while lcast is down or lc0 not yet routed: the
		// receivers see the gap.
		p.WriteTo(buf, nil, dst)
	}
}

// waitInterface returns the interface named name once it exists with an
// address other than a link-local one.
func waitInterface(name string) *net.Interface {
	for ; ; time.Sleep(time.Millisecond) {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			continue
		}
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			if ip, ok := a.(*net.IPNet); ok && !ip.IP.IsLinkLocalUnicast() {
				return ifi
			}
		}
	}
}

// pair is a direction between two nodes of a mesh: data from node from
// to node to.
type pair struct{ from, to int }

func (p pair) String() string { return fmt.Sprintf("%d→%d", p.from+1, p.to+1) }

// allPairs lists every ordered pair of n nodes.
func allPairs(n int) []pair {
	var ps []pair
	for to := range n {
		for from := range n {
			if from != to {
				ps = append(ps, pair{from, to})
			}
		}
	}
	return ps
}

// streams is a stream helper in every site of a mesh, all sending to and
// receiving from one group: every ordered pair of nodes carries a stream.
type streams struct {
	m     *mesh
	procs []*netlab.Process
	epoch []int          // each helper's current epoch (marks set so far)
	index map[string]int // a node's overlay address to its index
}

// startStreams starts a stream helper in every site of m, which starts
// streaming once lcast has made lc0 there: it waits for nothing.
func startStreams(t testing.TB, m *mesh, group string) *streams {
	t.Helper()
	s := &streams{m: m, epoch: make([]int, len(m.nodes)), index: map[string]int{}}
	for i, n := range m.nodes {
		s.index[peer.OverlayAddr(n.key.PublicKey()).String()] = i
		s.procs = append(s.procs, startHelperUntil(t, m.sites[i].Namespace, "", "stream", "-group", group))
	}
	return s
}

// stop ends the stream helpers.
func (s *streams) stop() {
	for _, p := range s.procs {
		p.Stop()
	}
}

// mark sets a mark in every helper (see streamHelper) and waits until each
// has: from then on, each pair's first datagram is one sent after the mark.
func (s *streams) mark(t testing.TB) {
	t.Helper()
	for i, p := range s.procs {
		s.epoch[i]++
		if err := p.Signal(syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		if !p.WaitOutput(fmt.Sprintf("mark %d ", s.epoch[i]), 5*time.Second) {
			t.Fatalf("stream helper in site %d set no mark:\n%s", i+1, p.Output())
		}
	}
}

var streamFirstRE = regexp.MustCompile(`(?m)^first (\S+) (\d+) (\d+) (\d+)$`)

// firsts returns, for each pair, when its first datagram sent since the
// last mark arrived.
func (s *streams) firsts() map[pair]time.Time {
	got := map[pair]time.Time{}
	for to, p := range s.procs {
		for _, m := range streamFirstRE.FindAllStringSubmatch(p.Output(), -1) {
			from, ok := s.index[m[1]]
			if epoch, _ := strconv.Atoi(m[4]); !ok || epoch != s.epoch[to] {
				continue
			}
			arrived, _ := strconv.ParseInt(m[3], 10, 64)
			got[pair{from, to}] = time.Unix(0, arrived)
		}
	}
	return got
}

// waitPairs waits up to timeout until every pair in want has its first
// datagram since the last mark, and returns those that have.
func (s *streams) waitPairs(want []pair, timeout time.Duration) map[pair]time.Time {
	var got map[pair]time.Time
	netlab.Poll(timeout, func() bool {
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

// pairWait is how long expectPairs waits for a pair's first datagram: long
// enough to measure the worst pair of code that misses the target (5.6-16 s
// after start, at cb8e7be).
const pairWait = 20 * time.Second

// expectPairs waits for a datagram on every pair in want, sent after the
// last mark, and checks that each arrived within limit of since(pair): it
// logs each pair's time, the median and the maximum.
func (s *streams) expectPairs(t testing.TB, what string, want []pair, since func(pair) time.Time, limit time.Duration) {
	t.Helper()
	got := s.waitPairs(want, pairWait)
	var took []time.Duration
	var lines, missing []string
	for _, p := range want {
		at, ok := got[p]
		if !ok {
			missing = append(missing, p.String())
			continue
		}
		d := at.Sub(since(p))
		took = append(took, d)
		lines = append(lines, fmt.Sprintf("%s %v", p, d.Round(time.Millisecond)))
	}
	slices.Sort(took)
	if len(took) > 0 {
		t.Logf("%s: first packet per pair: %s; p50 %v, max %v over %d pairs", what, strings.Join(lines, ", "),
			took[len(took)/2].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond), len(took))
	}
	if len(missing) > 0 {
		t.Errorf("%s: no datagram within %v on %d of %d pairs: %s\n%s", what, pairWait, len(missing), len(want), strings.Join(missing, ", "), s.m.diagnose(t))
	}
	if len(took) > 0 && took[len(took)-1] > limit {
		t.Errorf("%s: the slowest pair's first packet came after %v, want <= %v", what, took[len(took)-1].Round(time.Millisecond), limit)
	}
}

// laterUp returns, for a pair, when the later of its two nodes' `lcast up`
// started: when both were up.
func (m *mesh) laterUp(p pair) time.Time {
	a, b := m.nodes[p.from].upAt, m.nodes[p.to].upAt
	if a.After(b) {
		return a
	}
	return b
}
