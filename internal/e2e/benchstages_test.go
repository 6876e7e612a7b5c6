package e2e

import (
	"bufio"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/netlab"
)

// stageCapture is a tcpdump of one point on lcast's path from site 1 to
// site 2: the kernel stamps each packet as it passes, so the times of the
// four points, in one clock, split a datagram's one-way latency into
// stages.
type stageCapture struct {
	site      *netlab.Site
	dev, dir  string // interface, and -Q in or out
	filter    string // pcap filter beyond the size
	proc      *netlab.Process
	timestamp []int64 // microseconds, in order
}

// latencyStages streams 1->2 at latencyRate through lcast while tcpdump
// stamps each datagram where site 1's program hands it to lc0, where site
// 1's daemon sends it to site 2 on the underlay, where it reaches site 2's
// underlay, and where site 2's daemon writes it into lc0; it adds the
// median and 99th percentile of each stage to rep.
func (s *sideBySide) latencyStages(rep *benchReport) {
	b := s.b
	src, dst := s.m.sites[0], s.m.sites[1]
	points := []*stageCapture{
		{site: src, dev: "lc0", dir: "out"},
		{site: src, dev: "eth0", dir: "out", filter: "dst host " + dst.Addr.String()},
		{site: dst, dev: "eth0", dir: "in", filter: "src host " + src.Addr.String()},
		{site: dst, dev: "lc0", dir: "in"},
	}
	for _, p := range points {
		// Datagrams of 1200 bytes on lc0, their WireGuard packets on
		// eth0: nothing else on the path is that large.
		filter := "udp and greater 1000"
		if p.filter != "" {
			filter += " and " + p.filter
		}
		p.proc = p.site.Start("tcpdump", "-i", p.dev, "-Q", p.dir, "-n", "-tt", "-l", "-B", "8192", filter)
		if !p.proc.WaitOutput("listening on", 5*time.Second) {
			b.Fatalf("tcpdump on %s %s did not start:\n%s", p.site.Name, p.dev, p.proc.Output())
		}
	}
	i := slices.IndexFunc(s.systems, func(sys *benchSystem) bool { return sys.name == "lcast" })
	if i < 0 {
		b.Fatal("latency by stage: no lcast among the systems")
	}
	lcast := s.systems[i]
	fmt.Printf("latency by stage: lcast, %d datagrams/s, 1->2, tcpdump at four points\n", latencyRate)
	run := s.load(lcast, 2, latencyRate, 3*time.Second)
	s.runs = s.runs[:len(s.runs)-1] // not one of the rounds' runs
	for _, p := range points {
		p.proc.Signal(syscall.SIGINT)
		if exited, _ := p.proc.Wait(5 * time.Second); !exited {
			b.Fatalf("tcpdump on %s %s did not stop", p.site.Name, p.dev)
		}
		p.timestamp = parseTcpdumpTimes(p.proc.Output())
	}
	stages := followStages(points)
	names := []string{"site 1's daemon: lc0 to underlay", "underlay: site 1 to site 2", "site 2's daemon: underlay to lc0"}
	for i, name := range names {
		d := stages[i]
		if len(d) < run.Sent.Sent/2 {
			b.Fatalf("latency by stage: followed %d of %d datagrams through %s", len(d), run.Sent.Sent, name)
		}
		slices.Sort(d)
		rep.Rows = append(rep.Rows,
			benchRow{"lcast", "latency stage " + name + " p50 us", d[len(d)/2]},
			benchRow{"lcast", "latency stage " + name + " p99 us", d[len(d)*99/100]})
	}
	fmt.Printf("  followed %d of %d datagrams through all four points; the programs' own sending and receiving make up the rest of the %.0f us p50\n",
		len(stages[0]), run.Sent.Sent, run.Recv[0].P50)
}

// parseTcpdumpTimes returns the timestamps, in microseconds, of the
// packet lines of tcpdump -tt output.
func parseTcpdumpTimes(out string) []int64 {
	var ts []int64
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[1] != "IP6" {
			continue
		}
		sec, usec, ok := strings.Cut(f[0], ".")
		s, err1 := strconv.ParseInt(sec, 10, 64)
		u, err2 := strconv.ParseInt(usec, 10, 64)
		if ok && len(usec) == 6 && err1 == nil && err2 == nil {
			ts = append(ts, s*1e6+u)
		}
	}
	return ts
}

// followStages follows each datagram from the first capture point through
// the others, taking at each point the first packet after the previous
// point's that is at most stageLimit later (datagrams are a millisecond
// apart), and returns the microseconds each stage took for the datagrams
// seen at every point.
func followStages(points []*stageCapture) [][]float64 {
	const stageLimit = 800 // us
	stages := make([][]float64, len(points)-1)
	for _, t0 := range points[0].timestamp {
		at := []int64{t0}
		for _, p := range points[1:] {
			i, _ := slices.BinarySearch(p.timestamp, at[len(at)-1])
			if i == len(p.timestamp) || p.timestamp[i]-at[len(at)-1] > stageLimit {
				break
			}
			at = append(at, p.timestamp[i])
		}
		if len(at) < len(points) {
			continue
		}
		for i := range stages {
			stages[i] = append(stages[i], float64(at[i+1]-at[i]))
		}
	}
	return stages
}

// TestFollowStages checks how the latency stages are read from tcpdump and
// followed from point to point.
func TestFollowStages(t *testing.T) {
	out := `listening on lc0, link-type RAW (Raw IP), snapshot length 262144 bytes
1795582113.064594 IP6 fd6c::1.40210 > ff1e::4:2.4243: UDP, length 1200
1795582113.066063 IP6 fd6c::1.40210 > ff1e::4:2.4243: UDP, length 1200
1795582113.067392 IP6 fd6c::1.40210 > ff1e::4:2.4243: UDP, length 1200
3 packets captured
`
	ts := parseTcpdumpTimes(out)
	if want := []int64{1795582113064594, 1795582113066063, 1795582113067392}; !slices.Equal(ts, want) {
		t.Fatalf("parsed %v, want %v", ts, want)
	}
	points := []*stageCapture{
		{timestamp: ts},
		// the second datagram was not captured here: it is not followed
		{timestamp: []int64{1795582113064694, 1795582113067492}},
		{timestamp: []int64{1795582113064704, 1795582113066200, 1795582113067502}},
	}
	got := followStages(points)
	if len(got) != 2 || len(got[0]) != 2 || len(got[1]) != 2 {
		t.Fatalf("followed %v, want two stages of two datagrams", got)
	}
	for i, want := range [][]float64{{100, 100}, {10, 10}} {
		if !slices.Equal(got[i], want) {
			t.Errorf("stage %d took %v us, want %v", i, got[i], want)
		}
	}
	// A packet later than the limit belongs to another datagram.
	if got := followStages([]*stageCapture{{timestamp: []int64{1000}}, {timestamp: []int64{1801}}}); len(got[0]) != 0 {
		t.Errorf("followed a datagram across %v us", got[0])
	}
}
