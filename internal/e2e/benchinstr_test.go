package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/netlab"
)

// daemonCommand is how a system's daemon was started: in which site, with
// which command line, so that it can be started again under valgrind.
type daemonCommand struct {
	site *netlab.Site
	argv []string
}

const (
	instrRate = 1000            // datagrams/s while counting instructions
	instrDur  = 5 * time.Second // how long, in each of the two lifetimes
)

// instructions counts, with valgrind's cachegrind, the instructions the
// daemons of a fan-out 1->2 execute per datagram delivered: lcast's and
// tinc's (the kernel's work, all of direct's and VXLAN's, is not counted;
// perf stat, which would count it, has no counters on this VM). Each of
// the three daemons runs twice under valgrind for the same time: once
// carrying instrRate datagrams/s, once idle; the difference in their
// instructions, divided by the datagrams the two receivers got, is the
// figure. It stops the daemons it measures: the benchmark's last phase.
func (s *sideBySide) instructions(rep *benchReport) {
	netlab.Require(s.b, "valgrind")
	for _, sys := range s.systems {
		if len(sys.commands) < 3 {
			continue
		}
		var total [2]int64 // idle, carrying
		delivered := 0
		for i, carry := range []bool{false, true} {
			ir, n := s.underValgrind(sys, carry)
			total[i], delivered = ir, delivered+n
		}
		if delivered == 0 {
			s.b.Fatalf("%s under valgrind delivered nothing", sys.name)
		}
		per := float64(total[1]-total[0]) / float64(delivered)
		fmt.Printf("  %-6s instructions: %d idle, %d carrying %d datagrams: %.0f per delivered datagram\n", sys.name, total[0], total[1], delivered, per)
		rep.Rows = append(rep.Rows, benchRow{sys.name, "1->2: daemons' instructions per delivered datagram (valgrind)", per})
	}
}

// underValgrind stops the first three daemons of sys (sites 1 to 3, the
// fan-out 1->2), starts them again under cachegrind, waits until a
// datagram from site 1 reaches sites 2 and 3, then for instrDur sends
// instrRate datagrams/s (if carry) or none, and stops them. It returns the
// instructions they executed and the datagrams delivered.
func (s *sideBySide) underValgrind(sys *benchSystem, carry bool) (instructions int64, delivered int) {
	b := s.b
	dir := b.TempDir()
	var procs []*netlab.Process
	for i, c := range sys.commands[:3] {
		stopDaemon(b, sys.daemons[i])
		out := filepath.Join(dir, fmt.Sprintf("cachegrind.%d", i))
		// Debian 12's valgrind (3.19) cannot run RDTSCP, which Go's
		// runtime reads the clock with unless told not to.
		p := c.site.Start("env", append([]string{"GODEBUG=cpu.rdtscp=off", "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=" + out}, c.argv...)...)
		sys.daemons[i] = p
		procs = append(procs, p)
	}
	receive := func(dur time.Duration) []*netlab.Process {
		var sinks []*netlab.Process
		for _, r := range s.receivers(2) {
			sinks = append(sinks, startHelperUntil(b, r.Namespace, "ready", "sink", "-group", sys.group(2), "-dur", dur.String(), "-idle", "2s"))
		}
		return sinks
	}
	gotAll := func(sinks []*netlab.Process) (n int, all bool) {
		all = true
		for _, sink := range sinks {
			waitExit(b, sink, 60*time.Second, sys.name+": sink")
			var r sinkResult
			decodeHelperJSON(b, sink, &r)
			n += r.Unique
			all = all && r.Unique > 0
		}
		return n, all
	}
	// Under valgrind a daemon starts and handshakes in seconds, not
	// milliseconds: what is measured starts once its interfaces are up
	// and the path works.
	_, zone, _ := strings.Cut(sys.group(2), "%")
	for _, c := range sys.commands[:3] {
		if _, ok := netlab.Poll(60*time.Second, func() bool { return c.site.Command("ip", "link", "show", zone, "up").Run() == nil }); !ok {
			b.Fatalf("%s under valgrind: no %s in %s:\n%s", sys.name, zone, c.site, sys.daemons[0].Output())
		}
	}
	if _, ok := netlab.Poll(90*time.Second, func() bool {
		sinks := receive(3 * time.Second)
		waitExit(b, startHelperUntil(b, s.m.sites[0].Namespace, "", "blast", "-to", sys.to(2), "-rate", "50", "-dur", "1s"), 30*time.Second, "blast")
		_, all := gotAll(sinks)
		return all
	}); !ok {
		b.Fatalf("%s under valgrind: site 1's datagrams do not reach sites 2 and 3", sys.name)
	}
	sinks := receive(instrDur + 10*time.Second)
	if carry {
		waitExit(b, startHelperUntil(b, s.m.sites[0].Namespace, "", "blast", "-to", sys.to(2), "-rate", strconv.Itoa(instrRate), "-dur", instrDur.String()), instrDur+30*time.Second, "blast")
	} else {
		time.Sleep(instrDur)
	}
	if carry {
		delivered, _ = gotAll(sinks)
	}
	for i, p := range procs {
		stopDaemon(b, p)
		instructions += cachegrindTotal(b, filepath.Join(dir, fmt.Sprintf("cachegrind.%d", i)))
	}
	if !carry {
		gotAll(sinks)
	}
	return instructions, delivered
}

// stopDaemon ends a daemon with SIGTERM, as its service manager would, and
// waits for it.
func stopDaemon(b testing.TB, p *netlab.Process) {
	b.Helper()
	p.Signal(syscall.SIGTERM)
	if exited, _ := p.Wait(60 * time.Second); !exited {
		b.Fatalf("a daemon did not stop on SIGTERM:\n%s", p.Output())
	}
}

var cachegrindSummary = regexp.MustCompile(`(?m)^summary: (\d+)`)

// cachegrindTotal returns the instructions a cachegrind output file counts.
func cachegrindTotal(b testing.TB, path string) int64 {
	b.Helper()
	out, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	m := cachegrindSummary.FindSubmatch(out)
	if m == nil {
		b.Fatalf("%s has no summary", path)
	}
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return n
}
