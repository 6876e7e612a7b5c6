package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/netlab"
)

// relayFanOuts are the fan-outs BenchmarkRelayFanOut measures.
var relayFanOuts = []int{1, 2, 4, 8}

// BenchmarkRelayFanOut measures what fan-out one relay sustains: a sender
// and up to eight receiver sites that each know only the relay, the sender
// sending as fast as it can, against direct unicast UDP from the sender to
// the same sites (the sender sends a copy to each: the limit) in the same
// run, alternating the two. Run it with -benchtime=1x (make bench does).
func BenchmarkRelayFanOut(b *testing.B) {
	netlab.Require(b)
	inet := netlab.NewInternet(b)
	var sites []*netlab.Site
	var links []link
	leaves := 1 + relayFanOuts[len(relayFanOuts)-1]
	for i := range leaves {
		sites = append(sites, inet.AddSite(fmt.Sprintf("lcast-leaf%d", i+1)))
		links = append(links, both(i, leaves)...)
	}
	sites = append(sites, inet.AddSite("lcast-relay"))
	relays := make([]bool, leaves+1)
	relays[leaves] = true
	s := &sideBySide{b: b, m: newTopology(b, inet, sites, relays, links)}
	s.addDirect()
	group := func(k int) string { return fmt.Sprintf("ff1e::5:%d", k) }
	s.systems = append(s.systems, &benchSystem{
		name:    "relay",
		to:      group,
		group:   func(k int) string { return group(k) + "%lc0" },
		daemons: []*netlab.Process{s.m.nodes[leaves].daemon},
		ready: func(k int) {
			for i := range k {
				s.m.waitSubscribed(b, leaves, i+1, group(k), true, 5*time.Second)
			}
			s.m.waitSubscribed(b, 0, leaves, group(k), true, 5*time.Second)
		},
	})
	for b.Loop() {
		s.rounds(func(sys *benchSystem) {
			for _, k := range relayFanOuts {
				s.load(sys, k, 0, benchDur)
			}
		})
		fmt.Println("\none relay, the sender as fast as it can (median of rounds):")
		fmt.Println("  fan-out  direct/s per receiver  via relay/s per receiver  ratio  relay's worst loss %  relay CPU us per delivered")
		for _, k := range relayFanOuts {
			direct := s.median("direct", k, 0, func(r loadRun) float64 { return r.PPS })
			via := s.median("relay", k, 0, func(r loadRun) float64 { return r.PPS })
			fmt.Printf("  1->%-5d %21.0f %25.0f %6.2fx %21.3f %27.2f\n", k, direct, via, via/direct,
				s.median("relay", k, 0, func(r loadRun) float64 { return r.WorstLoss }),
				s.median("relay", k, 0, func(r loadRun) float64 { return r.DaemonCPU }))
		}
	}
}
