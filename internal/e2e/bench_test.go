package e2e

import (
	"cmp"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/control"
	"github.com/librecast/lcast/internal/netlab"
	"github.com/librecast/lcast/peer"
)

// benchOut is where BenchmarkSideBySide writes its results.
var benchOut = flag.String("bench.out", "bench-results", "directory for the side-by-side benchmark's JSON and chart")

// benchSystem is one way of carrying multicast from site 1 to receiver
// sites, as the side-by-side benchmark runs it.
type benchSystem struct {
	name string
	// to is the blast helper's -to for fan-out to k sites; group is the
	// sink helper's -group there ("" for unicast).
	to, group func(k int) string
	// daemons lists the processes that forward, whose CPU and memory
	// are measured (none for the kernel's), and commands how each was
	// started, its first three those of sites 1 to 3 (fan-out 1->2).
	daemons  []*netlab.Process
	commands []daemonCommand
	// ready, if set, waits until the receivers' subscriptions for fan-out
	// k reached the sender.
	ready func(k int)
}

// loadRun is one measured stream from site 1 to k receiver sites.
type loadRun struct {
	System  string       `json:"system"`
	FanOut  int          `json:"fan_out"`
	Offered int          `json:"offered_pps"` // 0: as fast as the sender can
	Sent    blastResult  `json:"sent"`
	Recv    []sinkResult `json:"received"`
	// Per receiver, mean: delivered datagrams per second; and the worst
	// receiver's loss in percent.
	PPS       float64 `json:"pps_per_receiver"`
	WorstLoss float64 `json:"worst_loss_pct"`
	// CPU time of the whole machine, and of the forwarding daemons, per
	// datagram delivered to a receiver, in microseconds.
	HostCPU   float64 `json:"host_cpu_us_per_packet"`
	DaemonCPU float64 `json:"daemon_cpu_us_per_packet"`
	// How busy the sending program was (share of one core) and the whole
	// machine (share of all its cores), and so what bound the run.
	SenderCore float64 `json:"sender_core"`
	HostLoad   float64 `json:"host_load"`
	Bound      string  `json:"bound"`
}

// bound says what limited a run: the offered rate, if the receivers got
// it; else the sending program, if it kept a core busy; else the machine's
// CPU, if every core was busy; else the system carrying the datagrams.
func (r loadRun) bound() string {
	switch {
	case r.Offered > 0 && r.WorstLoss < 1:
		return "rate"
	case r.SenderCore >= 0.9:
		return "sender"
	case r.HostLoad >= 0.9:
		return "CPU"
	}
	return r.System
}

// sideBySide is the benchmark's lab: nine sites, each with every system.
type sideBySide struct {
	b       *testing.B
	m       *mesh
	systems []*benchSystem
	runs    []loadRun
	// profiles are the CPU profiles taken of lcast's sender and of a
	// receiver, in the first 1->2 saturation run.
	profiles []string
}

const benchSites = 9 // a sender and up to 8 receivers

// BenchmarkSideBySide measures, in one run on one topology (nine sites
// behind a routed unicast-only internet), direct unicast UDP (the sender
// itself sends a copy to each receiver: the limit), kernel VXLAN with
// head-end replication, tinc 1.0 in switch mode and lcast, alternating the
// systems so that machine noise hits all of them. Each fan-out has its own
// VXLAN and tinc network holding just the sender and its receivers, so they
// do the same work lcast does. It prints a table with ratios and writes
// results.json and fanout.png to -bench.out. Run it with -benchtime=1x
// (make bench does).
func BenchmarkSideBySide(b *testing.B) {
	netlab.Require(b, "bridge", "tincd", "tcpdump")
	b.Setenv("LCAST_E2E_DEBUG", "1") // the group benchmark reads peers' logs
	s := &sideBySide{b: b, m: newMesh(b, benchSites)}
	// A benchmark measures the steady state, not the start: every session
	// up first.
	s.m.waitConnected(b)
	s.addDirect()
	s.addVXLAN()
	s.addTinc()
	s.addLcast()
	for b.Loop() {
		rep := s.run()
		rep.print(os.Stdout)
		for _, p := range s.profiles {
			top, _ := exec.Command("go", "tool", "pprof", "-top", "-nodecount=25", lcastBin, p).CombinedOutput()
			fmt.Printf("\nCPU profile of lcast's %s at 1->2 saturation (%s):\n%s", strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), "lcast-"), ".pprof"), p, top)
		}
		if err := rep.save(*benchOut); err != nil {
			b.Fatal(err)
		}
		fmt.Printf("wrote %s and %s\n", filepath.Join(*benchOut, "results.json"), filepath.Join(*benchOut, "fanout.png"))
	}
}

// fanOuts are the fan-outs measured: 1->2 and 1->8.
var fanOuts = []int{2, 8}

// receivers are the sites receiving a fan-out to k: sites 2 to k+1.
func (s *sideBySide) receivers(k int) []*netlab.Site { return s.m.sites[1 : k+1] }

func (s *sideBySide) addDirect() {
	s.systems = append(s.systems, &benchSystem{
		name: "direct",
		to: func(k int) string {
			var to []string
			for _, r := range s.receivers(k) {
				to = append(to, r.Addr.String())
			}
			return strings.Join(to, ",")
		},
		group: func(int) string { return "" },
	})
}

// addVXLAN gives the sender and the receivers of each fan-out k a VXLAN
// interface vxK (VNI K) with head-end replication to the others of that
// fan-out: an all-zero FDB entry per remote site.
func (s *sideBySide) addVXLAN() {
	for _, k := range fanOuts {
		name := fmt.Sprintf("vx%d", k)
		sites := s.m.sites[:k+1]
		for i, site := range sites {
			site.Run("ip", "link", "add", name, "type", "vxlan", "id", strconv.Itoa(k), "dstport", "4789", "local", site.Addr.String(), "dev", "eth0", "nolearning")
			for j, o := range sites {
				if j != i {
					site.Run("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", name, "dst", o.Addr.String())
				}
			}
			site.Run("sysctl", "-qw", "net.ipv6.conf."+name+".accept_dad=0")
			site.Run("ip", "link", "set", name, "mtu", "1400", "up")
		}
	}
	s.systems = append(s.systems, &benchSystem{
		name:  "vxlan",
		to:    func(k int) string { return fmt.Sprintf("ff1e::5%%vx%d", k) },
		group: func(k int) string { return fmt.Sprintf("ff1e::5%%vx%d", k) },
	})
}

// addTinc runs, for each fan-out k, a tinc 1.0 network in switch mode
// whose interface is tcK, holding the sender and the receivers of that
// fan-out. Every node connects to the sender, and broadcasts (multicast
// included) go directly to every node: head-end replication.
func (s *sideBySide) addTinc() {
	sys := &benchSystem{
		name:  "tinc",
		to:    func(k int) string { return fmt.Sprintf("ff1e::9%%tc%d", k) },
		group: func(k int) string { return fmt.Sprintf("ff1e::9%%tc%d", k) },
	}
	for _, k := range fanOuts {
		sites := s.m.sites[:k+1]
		port := 655 + k
		dirs := make([]string, len(sites))
		for i, site := range sites {
			dirs[i] = s.b.TempDir()
			conf := fmt.Sprintf("Name = site%d\nMode = switch\nBroadcast = direct\nDeviceType = tap\nInterface = tc%d\nAddressFamily = ipv6\nPort = %d\n", i+1, k, port)
			if i > 0 {
				conf += "ConnectTo = site1\n"
			}
			up := fmt.Sprintf("#!/bin/sh\nsysctl -qw net.ipv6.conf.$INTERFACE.accept_dad=0\nip link set $INTERFACE mtu 1400 up\nip addr add fd00:43:%d::%d/64 dev $INTERFACE nodad\n", k, i+1)
			host := fmt.Sprintf("Address = %s\nPort = %d\n", site.Addr, port)
			for name, text := range map[string]string{"tinc.conf": conf, "tinc-up": up, "hosts/site" + strconv.Itoa(i+1): host} {
				path := filepath.Join(dirs[i], name)
				if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
					s.b.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(text), 0o700); err != nil {
					s.b.Fatal(err)
				}
			}
			site.Run("tincd", "-c", dirs[i], "-K", "2048")
		}
		// Every node knows every node's host file (address and key).
		for i := range sites {
			host, err := os.ReadFile(filepath.Join(dirs[i], "hosts", fmt.Sprintf("site%d", i+1)))
			if err != nil {
				s.b.Fatal(err)
			}
			for j := range sites {
				if err := os.WriteFile(filepath.Join(dirs[j], "hosts", fmt.Sprintf("site%d", i+1)), host, 0o600); err != nil {
					s.b.Fatal(err)
				}
			}
		}
		for i, site := range sites {
			argv := []string{"tincd", "-c", dirs[i], "-D", "--pidfile", filepath.Join(dirs[i], "pid")}
			sys.daemons = append(sys.daemons, site.Start(argv[0], argv[1:]...))
			sys.commands = append(sys.commands, daemonCommand{site, argv})
		}
		for i, site := range sites[1:] {
			addr := fmt.Sprintf("fd00:43:%d::1", k)
			if _, ok := netlab.Poll(20*time.Second, func() bool {
				return site.Command("ping", "-6", "-c1", "-W1", addr).Run() == nil
			}); !ok {
				s.b.Fatalf("tinc network %d: site %d cannot reach site 1", k, i+2)
			}
		}
	}
	s.systems = append(s.systems, sys)
}

func (s *sideBySide) addLcast() {
	sys := &benchSystem{
		name:  "lcast",
		to:    func(k int) string { return fmt.Sprintf("ff1e::4:%d", k) },
		group: func(k int) string { return fmt.Sprintf("ff1e::4:%d%%lc0", k) },
		ready: func(k int) {
			for i := range k {
				s.m.waitSubscribed(s.b, 0, i+1, fmt.Sprintf("ff1e::4:%d", k), true, 5*time.Second)
			}
		},
	}
	for i, n := range s.m.nodes {
		sys.daemons = append(sys.daemons, n.daemon)
		sys.commands = append(sys.commands, daemonCommand{s.m.sites[i], []string{cmp.Or(n.bin, lcastBin), "up", "-c", n.cfg}})
	}
	s.systems = append(s.systems, sys)
}

// load streams 1200-byte datagrams from site 1 through sys to k receiver
// sites at rate (0: as fast as the sender can) for dur.
func (s *sideBySide) load(sys *benchSystem, k, rate int, dur time.Duration) loadRun {
	b := s.b
	b.Helper()
	run := loadRun{System: sys.name, FanOut: k, Offered: rate}
	var sinks []*netlab.Process
	for _, r := range s.receivers(k) {
		args := []string{"sink", "-dur", (dur + 5*time.Second).String()}
		if g := sys.group(k); g != "" {
			args = append(args, "-group", g)
		}
		sinks = append(sinks, startHelperUntil(b, r.Namespace, "ready", args...))
	}
	if sys.ready != nil {
		sys.ready(k)
	}
	hostBefore, wallBefore := hostBusy(), time.Now()
	daemonBefore := daemonsCPU(sys.daemons)
	var profiling sync.WaitGroup
	if sys.name == "lcast" && rate == 0 && k == 2 && s.profiles == nil {
		for i, role := range []string{"sender", "receiver"} {
			path := filepath.Join(*benchOut, "lcast-"+role+".pprof")
			s.profiles = append(s.profiles, path)
			profiling.Go(func() { s.profile(s.m.nodes[i].sock, path, dur/2) })
		}
	}
	blast := startHelperUntil(b, s.m.sites[0].Namespace, "", "blast", "-to", sys.to(k), "-rate", strconv.Itoa(rate), "-dur", dur.String())
	if exited, err := blast.Wait(dur + 10*time.Second); !exited || err != nil {
		b.Fatalf("%s: sender: exited %v, %v\n%s", sys.name, exited, err, blast.Output())
	}
	decodeHelperJSON(b, blast, &run.Sent)
	profiling.Wait()
	delivered := 0
	for i, sink := range sinks {
		if exited, err := sink.Wait(dur + 10*time.Second); !exited || err != nil {
			b.Fatalf("%s: receiver %d: exited %v, %v\n%s", sys.name, i+2, exited, err, sink.Output())
		}
		var r sinkResult
		decodeHelperJSON(b, sink, &r)
		run.Recv = append(run.Recv, r)
		delivered += r.Unique
		secs := float64(run.Sent.End-run.Sent.Start) / 1e9
		run.PPS += float64(r.Unique) / secs / float64(k)
		run.WorstLoss = max(run.WorstLoss, 100*(1-float64(r.Unique)/float64(max(run.Sent.Sent, 1))))
	}
	hostUsed, wall := hostBusy()-hostBefore, time.Since(wallBefore)
	run.HostCPU = perPacketUS(hostUsed, delivered)
	run.DaemonCPU = perPacketUS(daemonsCPU(sys.daemons)-daemonBefore, delivered)
	run.SenderCore = float64(run.Sent.CPU) / float64(max(run.Sent.End-run.Sent.Start, 1))
	run.HostLoad = float64(hostUsed) / float64(wall) / float64(runtime.NumCPU())
	run.Bound = run.bound()
	s.runs = append(s.runs, run)
	fmt.Printf("  %-6s 1->%d offered %-7s delivered %8.0f/s per receiver, worst loss %6.3f%%, host CPU %5.2f us/pkt, daemons %5.2f us/pkt, latency p50 %.0f us; sender %3.0f%% of a core, host %3.0f%% busy: bound by %s\n",
		sys.name, k, offered(rate), run.PPS, run.WorstLoss, run.HostCPU, run.DaemonCPU, run.Recv[0].P50, 100*run.SenderCore, 100*run.HostLoad, run.Bound)
	return run
}

// profile saves a CPU profile of d of the lcast daemon whose control
// socket is sock, starting a quarter second from now.
func (s *sideBySide) profile(sock, path string, d time.Duration) {
	time.Sleep(250 * time.Millisecond)
	resp, err := control.Client(sock).Get(fmt.Sprintf("http://lcast/debug/pprof/profile?seconds=%d", max(int(d.Seconds()), 1)))
	if err != nil {
		s.b.Errorf("profile: %v", err)
		return
	}
	defer resp.Body.Close()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		s.b.Error(err)
		return
	}
	f, err := os.Create(path)
	if err != nil {
		s.b.Error(err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		s.b.Error(err)
	}
}

func offered(rate int) string {
	if rate == 0 {
		return "max"
	}
	return strconv.Itoa(rate)
}

func perPacketUS(d time.Duration, packets int) float64 {
	return float64(d.Nanoseconds()) / 1e3 / float64(max(packets, 1))
}

// decodeHelperJSON decodes the last line a helper printed into v.
func decodeHelperJSON(t testing.TB, p *netlab.Process, v any) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(p.Output()), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), v); err != nil {
		t.Fatalf("helper output: %v:\n%s", err, p.Output())
	}
}

// hostBusy returns the CPU time all cores spent on anything but idling,
// from /proc/stat.
func hostBusy() time.Duration {
	stat, _ := os.ReadFile("/proc/stat")
	line, _, _ := strings.Cut(string(stat), "\n")
	var busy int
	for i, f := range strings.Fields(line)[1:] {
		n, _ := strconv.Atoi(f)
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return time.Duration(busy) * 10 * time.Millisecond // USER_HZ ticks
}

func daemonsCPU(ps []*netlab.Process) time.Duration {
	var sum time.Duration
	for _, p := range ps {
		cpu, _, _ := procUsage(p.Cmd.Process.Pid)
		sum += cpu
	}
	return sum
}

// procUsage returns the CPU time (user and system) a process has used and
// its resident memory now and at its peak, in KiB, from /proc.
func procUsage(pid int) (cpu time.Duration, rssKiB, peakKiB int) {
	stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	// Fields after the command name, which is in parentheses: state is
	// the first, utime the 12th and stime the 13th (clock ticks of 10 ms).
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(fields) > 12 {
		ut, _ := strconv.Atoi(fields[11])
		st, _ := strconv.Atoi(fields[12])
		cpu = time.Duration(ut+st) * 10 * time.Millisecond
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			switch f[0] {
			case "VmRSS:":
				rssKiB, _ = strconv.Atoi(f[1])
			case "VmHWM:":
				peakKiB, _ = strconv.Atoi(f[1])
			}
		}
	}
	return cpu, rssKiB, peakKiB
}

// The phases' parameters.
const (
	benchRounds  = 3               // alternating rounds per measurement
	benchDur     = 3 * time.Second // per stream
	latencyRate  = 1000            // datagrams/s, for one-way latency
	fixedRateOf  = 0.9             // the fixed rate, as a share of lcast's saturation
	joinSamples  = 20
	leaveSamples = 10
)

// rounds runs measure for every system, benchRounds times, starting each
// round with the next system so that no system always runs first.
func (s *sideBySide) rounds(measure func(sys *benchSystem)) {
	for r := range benchRounds {
		for i := range s.systems {
			measure(s.systems[(r+i)%len(s.systems)])
		}
	}
}

// run carries out every phase and returns the report.
func (s *sideBySide) run() *benchReport {
	rep := &benchReport{Kernel: strings.TrimSpace(s.m.sites[0].Run("uname", "-r")), CPUs: runtime.NumCPU(), Date: time.Now().UTC().Format(time.RFC3339)}
	s.runs = nil
	// Control-plane figures first, while the daemons' memory holds no
	// traffic's buffers yet (the many groups' RSS figures), then joins and
	// leaves under saturation.
	s.joinLeave(rep, false)
	s.manyGroups(rep, 10000, "joinmany")
	for _, n := range []int{10000, 100000} {
		s.manyGroups(rep, n, "mldinject")
	}
	s.joinLeave(rep, true)
	fmt.Println("saturation: the sender sends as fast as it can")
	s.rounds(func(sys *benchSystem) {
		for _, k := range fanOuts {
			s.load(sys, k, 0, benchDur)
		}
	})
	fixed := map[int]int{}
	for _, k := range fanOuts {
		fixed[k] = int(fixedRateOf * s.median("lcast", k, 0, func(r loadRun) float64 { return r.PPS }))
	}
	fmt.Printf("fixed rate: %.0f%% of lcast's saturation: %v datagrams/s by fan-out\n", 100*fixedRateOf, fixed)
	s.rounds(func(sys *benchSystem) {
		for _, k := range fanOuts {
			s.load(sys, k, fixed[k], benchDur)
		}
	})
	fmt.Printf("latency: %d datagrams/s, 1->2\n", latencyRate)
	s.rounds(func(sys *benchSystem) { s.load(sys, 2, latencyRate, 2*time.Second) })
	s.relayFloor()
	s.latencyStages(rep)
	fmt.Println("TCP: site 1 to site 2 over lcast and over Debian's wireguard-go")
	s.tcp(rep)
	rep.Runs = s.runs
	for _, sys := range s.systems {
		for _, k := range fanOuts {
			pps := func(r loadRun) float64 { return r.PPS }
			rep.Rows = append(rep.Rows,
				benchRow{sys.name, fmt.Sprintf("1->%d saturation: delivered/s per receiver", k), s.median(sys.name, k, 0, pps)},
				benchRow{sys.name, fmt.Sprintf("1->%d saturation: host CPU us per delivered datagram", k), s.median(sys.name, k, 0, func(r loadRun) float64 { return r.HostCPU })},
				benchRow{sys.name, fmt.Sprintf("1->%d saturation: sender's share of a core %%", k), s.median(sys.name, k, 0, func(r loadRun) float64 { return 100 * r.SenderCore })},
				benchRow{sys.name, fmt.Sprintf("1->%d saturation: host busy %%", k), s.median(sys.name, k, 0, func(r loadRun) float64 { return 100 * r.HostLoad })},
				benchRow{sys.name, fmt.Sprintf("1->%d at %d/s: delivered/s per receiver", k, fixed[k]), s.median(sys.name, k, fixed[k], pps)},
				benchRow{sys.name, fmt.Sprintf("1->%d at %d/s: worst receiver's loss %%", k, fixed[k]), s.median(sys.name, k, fixed[k], func(r loadRun) float64 { return r.WorstLoss })},
				benchRow{sys.name, fmt.Sprintf("1->%d at %d/s: host CPU us per delivered datagram", k, fixed[k]), s.median(sys.name, k, fixed[k], func(r loadRun) float64 { return r.HostCPU })},
			)
			if len(sys.daemons) > 0 {
				rep.Rows = append(rep.Rows,
					benchRow{sys.name, fmt.Sprintf("1->%d saturation: daemons' CPU us per delivered datagram", k), s.median(sys.name, k, 0, func(r loadRun) float64 { return r.DaemonCPU })},
					benchRow{sys.name, fmt.Sprintf("1->%d at %d/s: daemons' CPU us per delivered datagram", k, fixed[k]), s.median(sys.name, k, fixed[k], func(r loadRun) float64 { return r.DaemonCPU })})
			}
		}
		rep.Rows = append(rep.Rows,
			benchRow{sys.name, "one-way latency p50 us", s.median(sys.name, 2, latencyRate, func(r loadRun) float64 { return r.Recv[0].P50 })},
			benchRow{sys.name, "one-way latency p99 us", s.median(sys.name, 2, latencyRate, func(r loadRun) float64 { return r.Recv[0].P99 })},
		)
		if len(sys.daemons) > 0 {
			var peak int
			for _, p := range sys.daemons {
				_, _, hwm := procUsage(p.Cmd.Process.Pid)
				peak = max(peak, hwm)
			}
			rep.Rows = append(rep.Rows, benchRow{sys.name, "largest daemon's peak RSS MiB", float64(peak) / 1024})
		}
	}
	rep.Rows = append(rep.Rows,
		benchRow{"relays", "one-way latency p50 us", s.median("relays", 2, latencyRate, func(r loadRun) float64 { return r.Recv[0].P50 })},
		benchRow{"relays", "one-way latency p99 us", s.median("relays", 2, latencyRate, func(r loadRun) float64 { return r.Recv[0].P99 })})
	for _, sys := range benchSystems {
		if !rep.has(sys, "one-way latency p50 us") {
			continue
		}
		rep.Rows = append(rep.Rows,
			benchRow{sys, "added latency p50 us", rep.value(sys, "one-way latency p50 us") - rep.value("direct", "one-way latency p50 us")},
			benchRow{sys, "added latency p99 us", rep.value(sys, "one-way latency p99 us") - rep.value("direct", "one-way latency p99 us")})
	}
	// Last, as it leaves the flooded daemon's memory grown.
	fmt.Println("flood: random WireGuard-shaped datagrams at site 2's listen port, while site 1 streams to site 2 at 1000/s")
	f := s.m.flood(s.b)
	name := fmt.Sprintf("flood of %.0f/s at a daemon", f.Rate)
	rep.Rows = append(rep.Rows,
		benchRow{"lcast", name + ": a peer's stream delivered %", 100 * float64(f.During.unique) / floodStream},
		benchRow{"lcast", name + ": then delivered %", 100 * float64(f.After.unique) / 2000},
		benchRow{"lcast", name + ": its RSS MiB before", float64(f.RSSBefore) / 1024},
		benchRow{"lcast", name + ": its RSS MiB after", float64(f.RSS) / 1024},
		benchRow{"lcast", name + ": its peak RSS MiB", float64(f.Peak) / 1024})
	fmt.Printf("instructions: the daemons of 1->2 under valgrind, idle and at %d datagrams/s\n", instrRate)
	s.instructions(rep)
	return rep
}

// median is the median over rounds of f of the runs of system with fan-out
// k at rate.
func (s *sideBySide) median(system string, k, rate int, f func(loadRun) float64) float64 {
	var v []float64
	for _, r := range s.runs {
		if r.System == system && r.FanOut == k && r.Offered == rate {
			v = append(v, f(r))
		}
	}
	return median(v)
}

// median returns the median of v (the upper one of an even count), or 0.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

// joinLeave measures lcast's join-to-first-packet and leave-to-stop in
// site 2, while site 1 streams at 10,000 datagrams/s. (VXLAN and tinc
// flood every site whatever it joined, and have neither figure.) With
// saturated, site 4 meanwhile sends as fast as it can to a group site 3
// listens to, so that the subscription messages cross a saturated link.
func (s *sideBySide) joinLeave(rep *benchReport, saturated bool) {
	const group, busy = "ff1e::4:1", "ff1e::4:2"
	label := ""
	if saturated {
		label = "4->3 saturated: "
		sink := startHelperUntil(s.b, s.m.sites[2].Namespace, "ready", "sink", "-group", busy+"%lc0", "-dur", "120s", "-idle", "5s")
		defer sink.Stop()
		s.m.waitSubscribed(s.b, 3, 2, busy, true, 10*time.Second)
		sat := startHelperUntil(s.b, s.m.sites[3].Namespace, "", "blast", "-to", busy+"%lc0", "-rate", "0", "-dur", "120s")
		defer sat.Stop()
	}
	blast := startHelperUntil(s.b, s.m.sites[0].Namespace, "", "blast", "-to", group, "-rate", "10000", "-dur", "60s")
	defer blast.Stop()
	site := s.m.sites[1]
	var join, leave []float64
	p := startHelperUntil(s.b, site.Namespace, "", "joinlat", "-group", group+"%lc0", "-n", strconv.Itoa(joinSamples), "-gap", "300ms")
	if exited, err := p.Wait(30 * time.Second); !exited || err != nil {
		s.b.Fatalf("joinlat: %v %v\n%s", exited, err, p.Output())
	}
	decodeHelperJSON(s.b, p, &join)
	p = startHelperUntil(s.b, site.Namespace, "", "leavelat", "-group", group+"%lc0", "-n", strconv.Itoa(leaveSamples))
	if exited, err := p.Wait(30 * time.Second); !exited || err != nil {
		s.b.Fatalf("leavelat: %v %v\n%s", exited, err, p.Output())
	}
	decodeHelperJSON(s.b, p, &leave)
	slices.Sort(join)
	slices.Sort(leave)
	if !saturated {
		rep.JoinUS, rep.LeaveUS = join, leave
	}
	rep.Rows = append(rep.Rows,
		benchRow{"lcast", label + "join to first packet p50 ms", join[len(join)/2] / 1e3},
		benchRow{"lcast", label + "join to first packet max ms", join[len(join)-1] / 1e3},
		benchRow{"lcast", label + "leave to stop p50 ms", leave[len(leave)/2] / 1e3},
		benchRow{"lcast", label + "leave to stop max ms", leave[len(leave)-1] / 1e3})
	fmt.Printf("%sjoin to first packet (us, sorted): %v\n%sleave to stop (us, sorted): %v\n", label, join, label, leave)
}

// peerSubscriptionsRE matches the debug log line of a peer's subscriptions
// being applied, with its time.
var peerSubscriptionsRE = regexp.MustCompile(`time=(\S+) level=DEBUG msg="applied peer subscriptions" peer=(\S+) generation=\d+ groups=(\d+)`)

// manyGroups measures how long n groups joined in site 2 take to reach
// every other site's router, and the daemons' memory then. The groups are
// joined by a program (how: "joinmany"), or announced by MLD reports
// written into lc0 ("mldinject"): this kernel takes time quadratic in the
// groups of an interface to join them (10,000: 0.6 s, 20,000: 4 s, 40,000:
// 23 s), so 100,000 joins are out of reach.
func (s *sideBySide) manyGroups(rep *benchReport, n int, how string) {
	b := s.b
	joiner := s.m.nodes[1]
	self := peer.OverlayAddr(joiner.key.PublicKey())
	p := startHelperUntil(b, s.m.sites[1].Namespace, "", how, "-base", "ff1e::1:0:0", "-n", strconv.Itoa(n), "-iface", "lc0")
	if !p.WaitOutput("end_ns", time.Minute) {
		b.Fatalf("%s of %d groups took over a minute:\n%s", how, n, p.Output())
	}
	var joined struct {
		Start int64 `json:"start_ns"`
		End   int64 `json:"end_ns"`
	}
	decodeHelperJSON(b, p, &joined)
	// Every other site has applied n groups of site 2's.
	var reached time.Time
	var done []bool
	took, ok := netlab.Poll(60*time.Second, func() bool {
		done = make([]bool, len(s.m.nodes))
		for i, nd := range s.m.nodes {
			if i == 1 {
				continue
			}
			for _, m := range peerSubscriptionsRE.FindAllStringSubmatch(nd.daemon.Output(), -1) {
				at, _ := time.Parse(time.RFC3339Nano, m[1])
				if m[2] == self.String() && m[3] == strconv.Itoa(n) && at.UnixNano() >= joined.Start/1e6*1e6 {
					done[i] = true
					if at.After(reached) {
						reached = at
					}
				}
			}
			if !done[i] {
				return false
			}
		}
		return true
	})
	if !ok {
		b.Fatalf("%d groups did not reach every peer within %v: reached %v", n, took, done)
	}
	var joinerRSS, peerRSS int
	for i, nd := range s.m.nodes {
		_, rss, _ := procUsage(nd.daemon.Cmd.Process.Pid)
		if i == 1 {
			joinerRSS = rss
		} else {
			peerRSS = max(peerRSS, rss)
		}
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		b.Fatal(err)
	}
	p.Wait(10 * time.Second)
	first := time.Duration(reached.UnixNano() - joined.Start)
	last := time.Duration(reached.UnixNano() - joined.End)
	name := fmt.Sprintf("%d groups (%s)", n, how)
	fmt.Printf("%s: joins took %v; every peer had them %v after the first join, %v after the last; RSS joining daemon %.0f MiB, largest peer %.0f MiB\n",
		name, time.Duration(joined.End-joined.Start).Round(time.Millisecond), first.Round(time.Millisecond), last.Round(time.Millisecond), float64(joinerRSS)/1024, float64(peerRSS)/1024)
	rep.Rows = append(rep.Rows,
		benchRow{"lcast", name + ": joins s", time.Duration(joined.End - joined.Start).Seconds()},
		benchRow{"lcast", name + ": at every peer, s after the first join", first.Seconds()},
		benchRow{"lcast", name + ": at every peer, s after the last join", last.Seconds()},
		benchRow{"lcast", name + ": joining daemon's RSS MiB", float64(joinerRSS) / 1024},
		benchRow{"lcast", name + ": largest peer's RSS MiB", float64(peerRSS) / 1024})
	// The leaves are through before the next measurement starts.
	if _, ok := netlab.Poll(30*time.Second, func() bool { return len(joiner.status(b).LocalGroups) == 0 }); !ok {
		b.Fatalf("%d groups not left within 30 s", n)
	}
	time.Sleep(2 * time.Second)
}
