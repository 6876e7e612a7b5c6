package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrapeHelper prints what GET args[0] answers, failing unless 200 OK.
func scrapeHelper(args []string) int {
	resp, err := http.Get(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(os.Stderr, resp.Status)
		return 1
	}
	io.Copy(os.Stdout, resp.Body)
	return 0
}

// The metrics endpoint serves every series lcast(8) documents, and no
// other of lcast's, with the values the status shows: a stream's packets
// and bytes to the peer, its subscription, its session.
func TestMetricsEndpoint(t *testing.T) {
	const url = "http://[::1]:9847/metrics"
	m := newMeshSitesOnly(t, 2)
	sender := m.nodes[0]
	doc, err := os.ReadFile(sender.cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Top-level keys go before the [[peer]] tables.
	if err := os.WriteFile(sender.cfg, append([]byte("metrics_listen = \"[::1]:9847\"\n"), doc...), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, n := range m.nodes {
		n.up()
	}
	// The metrics checked include the session's: it must be up.
	m.waitConnected(t)
	// A program stays joined after the receiver exits, so that site 2
	// keeps its subscription while the test looks.
	startHelper(t, m.sites[1].Namespace, "join", "ff1e::9", "lc0")
	r := startHelper(t, m.sites[1].Namespace, "recv", "ff1e::9", "lc0", "1s")
	m.waitSubscribed(t, 0, 1, "ff1e::9", true, 3*time.Second)
	waitExit(t, m.send(0, "ff1e::9", "300", "1000", "1200"), 10*time.Second, "sender")
	waitExit(t, r, 10*time.Second, "receiver")

	before := sender.status(t)
	out, err := m.sites[0].Command("env", helperEnv+"=scrape", lcastTestBinary(), url).Output()
	if err != nil {
		t.Fatalf("GET %s in site 1: %v\n%s", url, err, sender.daemon.Output())
	}
	after := sender.status(t)
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(string(out)))
	if err != nil {
		t.Fatalf("the scrape does not parse: %v\n%s", err, out)
	}

	var served []string
	for name := range families {
		if strings.HasPrefix(name, "lcast_") {
			served = append(served, name)
		}
	}
	slices.Sort(served)
	// The lcast_lan_* series are a gateway's (internal/metrics tests them).
	documented := slices.DeleteFunc(documentedSeries(t), func(name string) bool { return strings.HasPrefix(name, "lcast_lan_") })
	if !slices.Equal(served, documented) {
		t.Errorf("served lcast series %v;\nlcast(8) documents %v", served, documented)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if families[name] == nil {
			t.Errorf("no %s", name)
		}
	}

	peerKey := m.nodes[1].key.PublicKey().String()
	value := func(name string, labels ...string) (float64, bool) {
		for _, mt := range families[name].GetMetric() {
			if hasLabels(mt, labels...) {
				if mt.Gauge != nil {
					return mt.Gauge.GetValue(), true
				}
				return mt.Counter.GetValue(), true
			}
		}
		return 0, false
	}
	pb, pa := before.Peers[0], after.Peers[0]
	if pb.PublicKey != peerKey {
		t.Fatalf("status lists peer %s first, want %s", pb.PublicKey, peerKey)
	}
	// Hellos keep counting while the test looks: the scrape lies between
	// the two statuses.
	for _, c := range []struct {
		name          string
		before, after uint64
	}{
		{"lcast_peer_tx_packets_total", pb.TxPackets, pa.TxPackets},
		{"lcast_peer_tx_bytes_total", pb.TxBytes, pa.TxBytes},
		{"lcast_peer_rx_packets_total", pb.RxPackets, pa.RxPackets},
		{"lcast_peer_rx_bytes_total", pb.RxBytes, pa.RxBytes},
	} {
		v, ok := value(c.name, "peer", peerKey)
		if !ok || v < float64(c.before) || v > float64(c.after) {
			t.Errorf("%s{peer=%q} = %v (served %v); status says %d then %d", c.name, peerKey, v, ok, c.before, c.after)
		}
	}
	if pb.TxPackets < 300 {
		t.Errorf("status counts %d packets sent to the peer; the stream alone was 300", pb.TxPackets)
	}
	for _, c := range []struct {
		name   string
		labels []string
		ok     func(float64) bool
		want   string
	}{
		{"lcast_peer_groups", []string{"peer", peerKey}, func(v float64) bool { return v == 1 }, "1 (ff1e::9)"},
		{"lcast_peer_connected", []string{"peer", peerKey}, func(v float64) bool { return v == 1 }, "1"},
		{"lcast_peer_handshake_age_seconds", []string{"peer", peerKey}, func(v float64) bool { return v >= 0 && v < 60 }, "0-60 s"},
		{"lcast_local_groups", nil, func(v float64) bool { return v == 0 }, "0"},
		{"lcast_peers", nil, func(v float64) bool { return v == 1 }, "1"},
		{"lcast_info", []string{"public_key", sender.key.PublicKey().String(), "interface", "lc0", "address", before.Address}, func(v float64) bool { return v == 1 }, "1"},
		{"lcast_drops_total", []string{"reason", "peer_queue_full"}, func(v float64) bool { return v == 0 }, "0"},
		{"lcast_peer_drops_total", []string{"peer", peerKey, "reason", "peer_queue_full"}, func(v float64) bool { return v == 0 }, "0"},
	} {
		if v, ok := value(c.name, c.labels...); !ok || !c.ok(v) {
			t.Errorf("%s%v = %v (served %v), want %s", c.name, c.labels, v, ok, c.want)
		}
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", out)
	}
}

// hasLabels reports whether mt has the label pairs (name, value, ...).
func hasLabels(mt *dto.Metric, pairs ...string) bool {
	for i := 0; i < len(pairs); i += 2 {
		if !slices.ContainsFunc(mt.GetLabel(), func(l *dto.LabelPair) bool {
			return l.GetName() == pairs[i] && l.GetValue() == pairs[i+1]
		}) {
			return false
		}
	}
	return true
}

// documentedSeries lists, sorted, the series lcast(8)'s METRICS section
// names.
func documentedSeries(t *testing.T) []string {
	doc, err := os.ReadFile("../../deploy/man/lcast.8")
	if err != nil {
		t.Fatal(err)
	}
	page := string(doc)
	start, end := strings.Index(page, ".SH METRICS"), strings.Index(page, ".SH EXIT STATUS")
	if start < 0 || end < start {
		t.Fatal("lcast(8) has no METRICS section before EXIT STATUS")
	}
	var names []string
	for _, m := range regexp.MustCompile(`\blcast_[a-z_]+`).FindAllString(page[start:end], -1) {
		if !slices.Contains(names, m) {
			names = append(names, m)
		}
	}
	slices.Sort(names)
	return names
}
