package metrics

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

var now = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func testSnapshot() Snapshot {
	return Snapshot{
		Interface:   "lc0",
		Address:     "fd6c:6361:7374::1",
		PublicKey:   "pubA=",
		LocalGroups: 2,
		Drops:       map[string]uint64{"no_listener": 3, "scope": 0},
		Peers: []PeerSnapshot{
			{PublicKey: "pubB=", Connected: true, Path: "direct", Learnt: "configured", LastHandshake: now.Add(-42 * time.Second), LastRx: now.Add(-time.Second / 2),
				RxPackets: 10, RxBytes: 1000, TxPackets: 20, TxBytes: 2400, Groups: 1, Drops: map[string]uint64{"no_listener": 3}},
			{PublicKey: "pubC=", Path: "relayed", Learnt: "introduced", Drops: map[string]uint64{"no_listener": 0}},
		},
		LANs: []LANSnapshot{
			{Interface: "lan1", Groups: 3, IsQuerier: true, ForeignSourcePackets: 7},
			{Interface: "lan2"},
		},
	}
}

// The series follow the status: a peer that never had a handshake has no
// handshake age; a gateway's LANs each have their groups, whether this
// node is their querier and their packets from foreign sources.
func TestCollect(t *testing.T) {
	c := collector{snapshot: testSnapshot, now: func() time.Time { return now }}
	want := `
# HELP lcast_drops_total Packets dropped, by reason.
# TYPE lcast_drops_total counter
lcast_drops_total{reason="no_listener"} 3
lcast_drops_total{reason="scope"} 0
# HELP lcast_info This node: its interface, overlay address and public key (value 1).
# TYPE lcast_info gauge
lcast_info{address="fd6c:6361:7374::1",interface="lc0",public_key="pubA="} 1
# HELP lcast_lan_foreign_source_packets_total Multicast packets of routable scope from the LAN not routed because their source does not lie on it (gateway mode).
# TYPE lcast_lan_foreign_source_packets_total counter
lcast_lan_foreign_source_packets_total{interface="lan1"} 7
lcast_lan_foreign_source_packets_total{interface="lan2"} 0
# HELP lcast_lan_groups Groups hosts on the LAN listen to (gateway mode).
# TYPE lcast_lan_groups gauge
lcast_lan_groups{interface="lan1"} 3
lcast_lan_groups{interface="lan2"} 0
# HELP lcast_lan_querier 1 while this node is the LAN's MLD querier, else 0 (gateway mode).
# TYPE lcast_lan_querier gauge
lcast_lan_querier{interface="lan1"} 1
lcast_lan_querier{interface="lan2"} 0
# HELP lcast_local_groups Groups local programs listen to on the interface.
# TYPE lcast_local_groups gauge
lcast_local_groups 2
# HELP lcast_peer_connected 1 while traffic flows both ways (the peer was heard from and acknowledged this node's messages within the last 2.5 s), else 0.
# TYPE lcast_peer_connected gauge
lcast_peer_connected{peer="pubB="} 1
lcast_peer_connected{peer="pubC="} 0
# HELP lcast_peer_drops_total Packets from or for the peer dropped, by reason.
# TYPE lcast_peer_drops_total counter
lcast_peer_drops_total{peer="pubB=",reason="no_listener"} 3
lcast_peer_drops_total{peer="pubC=",reason="no_listener"} 0
# HELP lcast_peer_groups Groups the peer subscribed to.
# TYPE lcast_peer_groups gauge
lcast_peer_groups{peer="pubB="} 1
lcast_peer_groups{peer="pubC="} 0
# HELP lcast_peer_handshake_age_seconds Seconds since the peer's last handshake; absent before the first.
# TYPE lcast_peer_handshake_age_seconds gauge
lcast_peer_handshake_age_seconds{peer="pubB="} 42
# HELP lcast_peer_last_rx_age_seconds Seconds since the last packet from the peer arrived; absent before the first.
# TYPE lcast_peer_last_rx_age_seconds gauge
lcast_peer_last_rx_age_seconds{peer="pubB="} 0.5
# HELP lcast_peer_rx_bytes_total Bytes of the overlay packets received from the peer (inside the encryption).
# TYPE lcast_peer_rx_bytes_total counter
lcast_peer_rx_bytes_total{peer="pubB="} 1000
lcast_peer_rx_bytes_total{peer="pubC="} 0
# HELP lcast_peer_rx_packets_total Packets received from the peer.
# TYPE lcast_peer_rx_packets_total counter
lcast_peer_rx_packets_total{peer="pubB="} 10
lcast_peer_rx_packets_total{peer="pubC="} 0
# HELP lcast_peer_tx_bytes_total Bytes of the overlay packets sent to the peer (inside the encryption).
# TYPE lcast_peer_tx_bytes_total counter
lcast_peer_tx_bytes_total{peer="pubB="} 2400
lcast_peer_tx_bytes_total{peer="pubC="} 0
# HELP lcast_peer_tx_packets_total Packets sent to the peer.
# TYPE lcast_peer_tx_packets_total counter
lcast_peer_tx_packets_total{peer="pubB="} 20
lcast_peer_tx_packets_total{peer="pubC="} 0
# HELP lcast_peer_path 1 for the peer's path now (direct, or relayed through a relay this node trusts), with how this node learnt of the peer (configured or introduced).
# TYPE lcast_peer_path gauge
lcast_peer_path{learnt="configured",path="direct",peer="pubB="} 1
lcast_peer_path{learnt="introduced",path="relayed",peer="pubC="} 1
# HELP lcast_peers Peers, configured and introduced.
# TYPE lcast_peers gauge
lcast_peers 2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	// The pedantic registry Handler uses checks that what Collect sends
	// is consistent with Describe.
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
}

// In host mode (no LANs) there are no LAN series.
func TestCollectHostMode(t *testing.T) {
	host := func() Snapshot {
		st := testSnapshot()
		st.LANs = nil
		return st
	}
	c := collector{snapshot: host, now: func() time.Time { return now }}
	want := `
# HELP lcast_peers Peers, configured and introduced.
# TYPE lcast_peers gauge
lcast_peers 2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "lcast_peers",
		"lcast_lan_groups", "lcast_lan_querier", "lcast_lan_foreign_source_packets_total"); err != nil {
		t.Fatal(err)
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
}

// The server answers GET /metrics with lcast's series and the runtime's,
// refuses other methods, and a port in use is named.
func TestServer(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	s, err := Listen("127.0.0.1:0", testSnapshot, log)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	url := "http://" + s.Addr().String() + Path
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`lcast_peer_tx_packets_total{peer="pubB="} 20`, `lcast_lan_querier{interface="lan1"} 1`, "go_goroutines ", "process_resident_memory_bytes "} {
		if !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %s; no %q in:\n%s", url, resp.Status, want, body)
		}
	}
	if resp, err := http.Post(url, "text/plain", nil); err != nil {
		t.Errorf("POST %s: %v", url, err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST %s: %s, want 405", url, resp.Status)
		}
	}
	if _, err := Listen(s.Addr().String(), testSnapshot, log); err == nil || !strings.Contains(err.Error(), "metrics_listen "+s.Addr().String()+": ") {
		t.Errorf("a second Listen on %s: %v", s.Addr(), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
}

// Beyond MaxScrapesInFlight, scrapes are refused with 503 rather than
// each building a snapshot.
func TestScrapesInFlight(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, MaxScrapesInFlight+1)
	slow := func() Snapshot {
		entered <- struct{}{}
		<-release
		return testSnapshot()
	}
	s, err := Listen("127.0.0.1:0", slow, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	defer s.Shutdown(context.Background()) // returns once Serve and the scrapes have
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	defer unblock() // before Shutdown, if the test ends early
	url := "http://" + s.Addr().String() + Path
	codes := make(chan int, MaxScrapesInFlight)
	for range MaxScrapesInFlight {
		go func() {
			resp, err := http.Get(url)
			if err != nil {
				codes <- 0
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	for range MaxScrapesInFlight {
		select {
		case <-entered:
		case <-time.After(5 * time.Second):
			t.Fatal("the scrapes did not start")
		}
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("scrape %d: %s, want 503", MaxScrapesInFlight+1, resp.Status)
	}
	unblock()
	for range MaxScrapesInFlight {
		if code := <-codes; code != http.StatusOK {
			t.Errorf("a scrape within the limit: %d", code)
		}
	}
}
