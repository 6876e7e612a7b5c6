package e2e

import (
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/netlab"
)

// BenchmarkGateway (make bench) measures gateway mode against host mode in
// the same run, on lcast built for use: datagrams per second delivered to
// one receiver when one sender sends as fast as it can, from a program on
// site 1 to one on site 2 (host mode, lc0), and from a host on site 1's LAN
// to a host on site 2's (two gateways, the kernel copying between each LAN
// and lc0); then a LAN host's join-to-first-packet and leave-to-stop while
// another site's LAN host streams 10,000 datagrams/s.
func BenchmarkGateway(b *testing.B) {
	m := newMeshWithLANs(b, 2, map[int][]lanSpec{0: {{lan1Prefix, 1}}, 1: {{lan2Prefix, 1}}})
	m.runPlain(b)
	m.up()
	// A benchmark measures the steady state, not the start.
	m.waitConnected(b)
	l1, l2 := m.lans[0][0], m.lans[1][0]
	type path struct {
		name     string
		from, to *netlab.Namespace
		fromIf   string
		toIf     string
	}
	paths := []path{
		{"host mode, site 1 -> site 2 on lc0", m.sites[0].Namespace, m.sites[1].Namespace, "lc0", "lc0"},
		{"gateways, LAN 1 host -> LAN 2 host", l1.Hosts[0], l2.Hosts[0], "eth0", "eth0"},
	}
	for b.Loop() {
		rates := make([][]float64, len(paths))
		sent := make([][]float64, len(paths))
		for round := range 3 {
			for i, p := range paths {
				group := fmt.Sprintf("ff1e::b:%d:%d", round, i)
				sink := startHelperUntil(b, p.to, "ready", "sink", "-group", group+"%"+p.toIf, "-dur", "15s", "-idle", "2s")
				m.waitSubscribed(b, 0, 1, group, true, 10*time.Second)
				blast := startHelperUntil(b, p.from, "", "blast", "-to", group+"%"+p.fromIf, "-rate", "0", "-dur", "3s", "-hops", "8")
				if exited, err := blast.Wait(15 * time.Second); !exited || err != nil {
					b.Fatalf("%s: sender: %v %v\n%s", p.name, exited, err, blast.Output())
				}
				var s blastResult
				decodeHelperJSON(b, blast, &s)
				if exited, err := sink.Wait(20 * time.Second); !exited || err != nil {
					b.Fatalf("%s: receiver: %v %v\n%s", p.name, exited, err, sink.Output())
				}
				var r sinkResult
				decodeHelperJSON(b, sink, &r)
				if r.Unique == 0 || r.Last <= r.First {
					b.Fatalf("%s: the receiver got %+v", p.name, r)
				}
				rates[i] = append(rates[i], float64(r.Unique)/time.Duration(r.Last-r.First).Seconds())
				sent[i] = append(sent[i], float64(s.Sent)/time.Duration(s.End-s.Start).Seconds())
			}
		}
		fmt.Printf("\ngateway mode against host mode (median of 3 rounds, 1200-byte datagrams, sender as fast as it can):\n")
		for i, p := range paths {
			d, s := median(rates[i]), median(sent[i])
			bound := "lcast or the CPU (delivered < 95% of sent)"
			if d >= 0.95*s {
				bound = "the sender"
			}
			fmt.Printf("  %-36s delivered %8.0f/s of %8.0f/s sent (bound by %s); rounds %v\n", p.name, d, s, bound, rounded(rates[i]))
		}
		fmt.Printf("  LAN to LAN / host mode: %.2fx\n", median(rates[1])/median(rates[0]))

		const group = "ff1e::b:ff"
		stream := startHelperUntil(b, l1.Hosts[0], "", "blast", "-to", group+"%eth0", "-rate", "10000", "-dur", "60s", "-hops", "8")
		var join, leave []float64
		p := startHelperUntil(b, l2.Hosts[0], "", "joinlat", "-group", group+"%eth0", "-n", strconv.Itoa(joinSamples), "-gap", "300ms")
		if exited, err := p.Wait(30 * time.Second); !exited || err != nil {
			b.Fatalf("joinlat: %v %v\n%s", exited, err, p.Output())
		}
		decodeHelperJSON(b, p, &join)
		p = startHelperUntil(b, l2.Hosts[0], "", "leavelat", "-group", group+"%eth0", "-underlay", "eth0", "-port", strconv.Itoa(loadPort), "-dst", "-n", strconv.Itoa(leaveSamples))
		if exited, err := p.Wait(30 * time.Second); !exited || err != nil {
			b.Fatalf("leavelat: %v %v\n%s", exited, err, p.Output())
		}
		decodeHelperJSON(b, p, &leave)
		stream.Stop()
		slices.Sort(join)
		slices.Sort(leave)
		fmt.Printf("  LAN host's join to first packet, from another site's LAN at 10,000/s: p50 %.1f ms, max %.1f ms (%d joins)\n",
			join[len(join)/2]/1e3, join[len(join)-1]/1e3, len(join))
		fmt.Printf("  LAN host's leave to its LAN's last packet: p50 %.1f ms, max %.1f ms (%d leaves)\n",
			leave[len(leave)/2]/1e3, leave[len(leave)-1]/1e3, len(leave))
	}
}

// rounded returns v rounded to whole numbers, for printing.
func rounded(v []float64) []int {
	out := make([]int, len(v))
	for i, x := range v {
		out[i] = int(x + 0.5)
	}
	return out
}
