package e2e

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/netlab"
)

// iperfIntervalRE matches an iperf2 UDP server's report line: interval
// start and end, lost and total datagrams.
var iperfIntervalRE = regexp.MustCompile(`(\d+\.\d+)-(\d+\.\d+) sec .* (\d+)/(\d+) +\(`)

// fanOut streams 1200-byte datagrams from site 1 to group at rate (iperf2
// -b syntax) for secs seconds, with iperf2
// servers joined on ifname in sites 2 and 3, and returns the datagrams per
// second each server received and its loss in percent.
func fanOut(b *testing.B, m *mesh, ifname, group, rate string, secs int) (pps, loss []float64) {
	b.Helper()
	var servers []*netlab.Process
	for i := 1; i < 3; i++ {
		servers = append(servers, m.sites[i].Start("iperf", "-s", "-u", "-V", "-B", group+"%"+ifname, "-e", "-t", strconv.Itoa(secs+3), "-i", "1"))
	}
	time.Sleep(time.Second) // joins reach the sending site
	client := m.sites[0].Start("iperf", "-c", group, "-u", "-V", "-l", "1200", "-b", rate, "-t", strconv.Itoa(secs), "-T", "1")
	client.Wait(time.Duration(secs+5) * time.Second)
	for _, s := range servers {
		s.Wait(time.Duration(secs+5) * time.Second)
		// Sum the one-second reports: under overload the sender's final
		// datagram may be lost, and with it the server's summary.
		var dur float64
		var lost, total int
		for _, r := range iperfIntervalRE.FindAllStringSubmatch(s.Output(), -1) {
			from, _ := strconv.ParseFloat(r[1], 64)
			to, _ := strconv.ParseFloat(r[2], 64)
			if to-from > 1.5 {
				continue // a summary
			}
			l, _ := strconv.Atoi(r[3])
			n, _ := strconv.Atoi(r[4])
			dur, lost, total = dur+to-from, lost+l, total+n
		}
		if dur == 0 {
			b.Fatalf("no iperf2 reports:\n%s\nclient:\n%s", s.Output(), client.Output())
		}
		pps = append(pps, float64(total-lost)/dur)
		loss = append(loss, 100*float64(lost)/float64(max(total, 1)))
	}
	return pps, loss
}

// addVXLAN gives every site of m a VXLAN interface vx0 with head-end
// replication to the others (an all-zero FDB entry per remote site), and
// routes group there.
func addVXLAN(m *mesh, group string) {
	for i, s := range m.sites {
		s.Run("ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789", "local", s.Addr.String(), "dev", "eth0", "nolearning")
		for j, o := range m.sites {
			if j != i {
				s.Run("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst", o.Addr.String())
			}
		}
		s.Run("sysctl", "-qw", "net.ipv6.conf.vx0.accept_dad=0")
		s.Run("ip", "link", "set", "vx0", "mtu", "1400", "up")
		s.Run("ip", "addr", "add", fmt.Sprintf("fd00:42::%d/64", i+1), "dev", "vx0", "nodad")
		s.Run("ip", "-6", "route", "add", "multicast", group+"/128", "dev", "vx0", "table", "local", "metric", "64")
	}
}

// saturate is an iperf2 rate far above what either system carries here.
const saturate = "1000000pps"

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// BenchmarkFanOut1to2 measures what each of two receiver sites gets when
// one site sends 1200-byte datagrams as fast as iperf2 can, through lcast
// and through kernel VXLAN with head-end replication (which neither
// encrypts nor snoops), on the same three-site topology in the same run,
// alternating the two so machine noise hits both. Run it with -benchtime=1x.
func BenchmarkFanOut1to2(b *testing.B) {
	netlab.Require(b, "iperf", "bridge")
	m := newMesh(b, 3)
	addVXLAN(m, "ff1e::5")
	const rounds, secs = 3, 4
	var lcastPPS, vxlanPPS, lcastLoss, vxlanLoss []float64
	for b.Loop() {
		for r := range rounds {
			pps, loss := fanOut(b, m, "lc0", "ff1e::4", saturate, secs)
			lcastPPS, lcastLoss = append(lcastPPS, pps...), append(lcastLoss, loss...)
			b.Logf("round %d lcast: per receiver %.0f, %.0f datagrams/s, loss %.2f%%, %.2f%%", r+1, pps[0], pps[1], loss[0], loss[1])
			pps, loss = fanOut(b, m, "vx0", "ff1e::5", saturate, secs)
			vxlanPPS, vxlanLoss = append(vxlanPPS, pps...), append(vxlanLoss, loss...)
			b.Logf("round %d vxlan: per receiver %.0f, %.0f datagrams/s, loss %.2f%%, %.2f%%", r+1, pps[0], pps[1], loss[0], loss[1])
		}
	}
	l, v := median(lcastPPS), median(vxlanPPS)
	b.ReportMetric(l, "lcast-pps/receiver")
	b.ReportMetric(v, "vxlan-pps/receiver")
	b.ReportMetric(l/v, "lcast/vxlan")
	b.ReportMetric(median(lcastLoss), "lcast-loss-%")
	b.ReportMetric(median(vxlanLoss), "vxlan-loss-%")
}
