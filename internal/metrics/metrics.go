// Package metrics serves the daemon's state as Prometheus metrics: the
// series lcast(8) lists under METRICS, read from the daemon's status at
// each scrape, plus the Go runtime's and the process's standard series.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/librecast/lcast/internal/control"
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
		"Peers configured.", nil, nil)
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
)

// collector turns the daemon's status into metrics at each scrape.
type collector struct {
	status control.StatusFunc
	now    func() time.Time
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{info, localGroups, peers, drops, peerConnected, peerHandshakeAge,
		peerLastRx, peerGroups, peerRxPackets, peerRxBytes, peerTxPackets, peerTxBytes, peerDrops} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st := c.status()
	now := c.now()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(info, 1, st.Interface, st.Address, st.PublicKey)
	gauge(localGroups, float64(len(st.LocalGroups)))
	gauge(peers, float64(len(st.Peers)))
	for reason, n := range st.Drops {
		counter(drops, n, reason)
	}
	for _, p := range st.Peers {
		connected := 0.0
		if p.Connected {
			connected = 1
		}
		gauge(peerConnected, connected, p.PublicKey)
		if p.LastHandshake != nil {
			gauge(peerHandshakeAge, now.Sub(*p.LastHandshake).Seconds(), p.PublicKey)
		}
		if p.LastRx != nil {
			gauge(peerLastRx, now.Sub(*p.LastRx).Seconds(), p.PublicKey)
		}
		gauge(peerGroups, float64(len(p.Groups)), p.PublicKey)
		counter(peerRxPackets, p.RxPackets, p.PublicKey)
		counter(peerRxBytes, p.RxBytes, p.PublicKey)
		counter(peerTxPackets, p.TxPackets, p.PublicKey)
		counter(peerTxBytes, p.TxBytes, p.PublicKey)
		for reason, n := range p.Drops {
			counter(peerDrops, n, p.PublicKey, reason)
		}
	}
}

// handler returns the handler of Path: lcast's series, read from status at
// each scrape, and the Go runtime's and the process's.
func handler(status control.StatusFunc, log *slog.Logger) http.Handler {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collector{status: status, now: time.Now},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// Server serves Path on a TCP address.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Listen opens addr ("host:port") for the metrics of status. Serve then
// serves them.
func Listen(addr string, status control.StatusFunc, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics_listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+Path, handler(status, log))
	return &Server{ln: ln, srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}}, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until Shutdown, and returns nil then.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops the server, waiting for scrapes under way until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// Close closes the listener of a server that never served.
func (s *Server) Close() error { return s.ln.Close() }
