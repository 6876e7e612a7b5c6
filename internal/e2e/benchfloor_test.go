package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/netlab"
)

// relayPort is where the latency floor's relay at site 2 listens.
const relayPort = loadPort + 1

// relayFloor measures the floor under lcast's added latency on this
// machine: the 1->2 latency stream, at latencyRate to site 2, through two
// socat processes, one at each site as lcast has a daemon at each, that
// only read each datagram and send it on (site 1's to site 2, site 2's to
// the program). The machine's cost of waking a process for a datagram, and
// of its two system calls, is all they add. It adds its runs, as the
// system "relays", benchRounds of them, to s.runs.
func (s *sideBySide) relayFloor() {
	b := s.b
	src, dst := s.m.sites[0], s.m.sites[1]
	fmt.Printf("latency floor: %d datagrams/s, 1->2 through a socat relay at each site\n", latencyRate)
	for range benchRounds {
		run := loadRun{System: "relays", FanOut: 2, Offered: latencyRate}
		sink := startHelperUntil(b, dst.Namespace, "ready", "sink", "-dur", "7s")
		relays := []*netlab.Process{
			startRelay(b, src, loadPort, fmt.Sprintf("[%s]:%d", dst.Addr, relayPort)),
			startRelay(b, dst, relayPort, fmt.Sprintf("[::1]:%d", loadPort)),
		}
		blast := startHelperUntil(b, src.Namespace, "", "blast", "-to", "::1", "-rate", strconv.Itoa(latencyRate), "-dur", "2s")
		waitExit(b, blast, 15*time.Second, "relays: sender")
		waitExit(b, sink, 15*time.Second, "relays: receiver")
		decodeHelperJSON(b, blast, &run.Sent)
		var r sinkResult
		decodeHelperJSON(b, sink, &r)
		run.Recv = []sinkResult{r}
		for _, p := range relays {
			p.Stop()
		}
		if r.Unique < run.Sent.Sent*9/10 {
			b.Fatalf("relays: %d of %d datagrams arrived", r.Unique, run.Sent.Sent)
		}
		fmt.Printf("  relays 1->2 offered %d: delivered %d of %d, latency p50 %.0f us, p99 %.0f us\n", latencyRate, r.Unique, run.Sent.Sent, r.P50, r.P99)
		s.runs = append(s.runs, run)
	}
}

// startRelay starts socat at site, passing each UDP datagram it receives
// on port to the address to, and waits until it listens.
func startRelay(b testing.TB, site *netlab.Site, port int, to string) *netlab.Process {
	p := site.Start("socat", "-u", fmt.Sprintf("UDP6-RECV:%d", port), "UDP6-SENDTO:"+to)
	// The datagrams are sent only once it listens, so none is lost to
	// its start.
	if _, ok := netlab.Poll(5*time.Second, func() bool {
		out, _ := site.Command("ss", "-Hlun", fmt.Sprintf("sport = :%d", port)).Output()
		return strings.TrimSpace(string(out)) != ""
	}); !ok {
		p.Stop()
		b.Fatalf("socat at %s did not listen on port %d:\n%s", site.Name, port, p.Output())
	}
	return p
}
