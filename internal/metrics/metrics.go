// Package metrics serves the daemon's state as Prometheus metrics: the
// series lcast(8) lists under METRICS, read from a counts-only snapshot of
// the daemon at each scrape, plus the Go runtime's and the process's
// standard series.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/librecast/lcast/internal/httpserve"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Path is where the metrics are served.
const Path = "/metrics"

var (
	info = prometheus.NewDesc("lcast_info",
		"This node: its interface, overlay address and public key (value 1).",
		[]string{"interface", "address", "public_key"}, nil)
	localGroups = prometheus.NewDesc("lcast_local_groups",
		"Groups local programs listen to on the interface.", nil, nil)
	peers = prometheus.NewDesc("lcast_peers",
		"Peers, configured and introduced.", nil, nil)
	peerPath = prometheus.NewDesc("lcast_peer_path",
		"1 for the peer's path now (direct, or relayed through a relay this node trusts), with how this node learnt of the peer (configured or introduced).", []string{"peer", "path", "learnt"}, nil)
	drops = prometheus.NewDesc("lcast_drops_total",
		"Packets dropped, by reason.", []string{"reason"}, nil)
	peerConnected = prometheus.NewDesc("lcast_peer_connected",
		"1 while traffic flows both ways (the peer was heard from and acknowledged this node's messages within the last 2.5 s), else 0.", []string{"peer"}, nil)
	peerHandshakeAge = prometheus.NewDesc("lcast_peer_handshake_age_seconds",
		"Seconds since the peer's last handshake; absent before the first.", []string{"peer"}, nil)
	peerLastRx = prometheus.NewDesc("lcast_peer_last_rx_age_seconds",
		"Seconds since the last packet from the peer arrived; absent before the first.", []string{"peer"}, nil)
	peerGroups = prometheus.NewDesc("lcast_peer_groups",
		"Groups the peer subscribed to.", []string{"peer"}, nil)
	peerRxPackets = prometheus.NewDesc("lcast_peer_rx_packets_total",
		"Packets received from the peer.", []string{"peer"}, nil)
	peerRxBytes = prometheus.NewDesc("lcast_peer_rx_bytes_total",
		"Bytes of the overlay packets received from the peer (inside the encryption).", []string{"peer"}, nil)
	peerTxPackets = prometheus.NewDesc("lcast_peer_tx_packets_total",
		"Packets sent to the peer.", []string{"peer"}, nil)
	peerTxBytes = prometheus.NewDesc("lcast_peer_tx_bytes_total",
		"Bytes of the overlay packets sent to the peer (inside the encryption).", []string{"peer"}, nil)
	peerDrops = prometheus.NewDesc("lcast_peer_drops_total",
		"Packets from or for the peer dropped, by reason.", []string{"peer", "reason"}, nil)
	lanGroups = prometheus.NewDesc("lcast_lan_groups",
		"Groups hosts on the LAN listen to (gateway mode).", []string{"interface"}, nil)
	lanQuerier = prometheus.NewDesc("lcast_lan_querier",
		"1 while this node is the LAN's MLD querier, else 0 (gateway mode).", []string{"interface"}, nil)
	lanForeign = prometheus.NewDesc("lcast_lan_foreign_source_packets_total",
		"Multicast packets of routable scope from the LAN not routed because their source does not lie on it (gateway mode).", []string{"interface"}, nil)
)

// MaxScrapesInFlight is how many scrapes are served at once; more get 503.
// Prometheus scrapes one at a time, so a few leave room for a second
// scraper and a person with curl, while a flood cannot make the daemon
// build snapshots without bound.
const MaxScrapesInFlight = 4

// Snapshot is what a scrape reads: counts only, no lists of groups or
// sources, so its cost grows with the peers, not with their subscriptions.
type Snapshot struct {
	Interface, Address, PublicKey string
	LocalGroups                   int
	Drops                         map[string]uint64
	Peers                         []PeerSnapshot
	// LANs are a gateway's LANs; none in host mode.
	LANs []LANSnapshot
}

// LANSnapshot is one LAN's counts, in gateway mode.
type LANSnapshot struct {
	Interface string
	Groups    int  // groups its hosts listen to
	IsQuerier bool // this node is its MLD querier
	// ForeignSourcePackets counts its multicast packets of routable scope
	// not routed because their source does not lie on it.
	ForeignSourcePackets uint64
}

// PeerSnapshot is one peer's counts.
type PeerSnapshot struct {
	PublicKey string
	Connected bool
	// Path is "direct" or "relayed"; Learnt "configured" or "introduced".
	Path, Learnt  string
	LastHandshake time.Time // zero before the first
	LastRx        time.Time // zero before the first
	Groups        int
	RxPackets     uint64
	RxBytes       uint64
	TxPackets     uint64
	TxBytes       uint64
	Drops         map[string]uint64
}

// SnapshotFunc returns the daemon's current counts.
type SnapshotFunc func() Snapshot

// collector turns the daemon's snapshot into metrics at each scrape.
type collector struct {
	snapshot SnapshotFunc
	now      func() time.Time
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{info, localGroups, peers, drops, peerConnected, peerPath, peerHandshakeAge,
		peerLastRx, peerGroups, peerRxPackets, peerRxBytes, peerTxPackets, peerTxBytes, peerDrops,
		lanGroups, lanQuerier, lanForeign} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st := c.snapshot()
	now := c.now()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(info, 1, st.Interface, st.Address, st.PublicKey)
	gauge(localGroups, float64(st.LocalGroups))
	gauge(peers, float64(len(st.Peers)))
	for reason, n := range st.Drops {
		counter(drops, n, reason)
	}
	for _, p := range st.Peers {
		gauge(peerConnected, one(p.Connected), p.PublicKey)
		gauge(peerPath, 1, p.PublicKey, p.Path, p.Learnt)
		if !p.LastHandshake.IsZero() {
			gauge(peerHandshakeAge, now.Sub(p.LastHandshake).Seconds(), p.PublicKey)
		}
		if !p.LastRx.IsZero() {
			gauge(peerLastRx, now.Sub(p.LastRx).Seconds(), p.PublicKey)
		}
		gauge(peerGroups, float64(p.Groups), p.PublicKey)
		counter(peerRxPackets, p.RxPackets, p.PublicKey)
		counter(peerRxBytes, p.RxBytes, p.PublicKey)
		counter(peerTxPackets, p.TxPackets, p.PublicKey)
		counter(peerTxBytes, p.TxBytes, p.PublicKey)
		for reason, n := range p.Drops {
			counter(peerDrops, n, p.PublicKey, reason)
		}
	}
	for _, l := range st.LANs {
		gauge(lanGroups, float64(l.Groups), l.Interface)
		gauge(lanQuerier, one(l.IsQuerier), l.Interface)
		counter(lanForeign, l.ForeignSourcePackets, l.Interface)
	}
}

// one is 1 for true, 0 for false.
func one(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// handler returns the handler of Path: lcast's series, read from snapshot
// at each scrape, and the Go runtime's and the process's; at most
// MaxScrapesInFlight at a time.
func handler(snapshot SnapshotFunc, log *slog.Logger) http.Handler {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collector{snapshot: snapshot, now: time.Now},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: MaxScrapesInFlight,
	})
}

// Server serves Path on a TCP address.
type Server struct {
	srv *httpserve.Server
	ln  net.Listener
}

// Listen opens addr ("host:port") for the metrics of snapshot. Serve then
// serves them.
func Listen(addr string, snapshot SnapshotFunc, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics_listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+Path, handler(snapshot, log))
	return &Server{ln: ln, srv: httpserve.New(&http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	})}, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until Shutdown or Close, and returns nil then.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops the server, waiting for scrapes under way until ctx ends
// and then cutting them short; it returns once none runs.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// Close stops the server at once (or closes the listener of a server that
// never served) and returns once no scrape runs.
func (s *Server) Close() error {
	s.srv.Close()
	if err := s.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}
