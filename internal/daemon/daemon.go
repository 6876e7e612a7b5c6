// Package daemon runs lcast: it brings up lc0, learns local memberships from
// the MLD reports the kernel writes into it, acts as the link's querier, and
// serves the control API, until its context is cancelled.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/librecast/lcast/internal/config"
	"github.com/librecast/lcast/internal/control"
	"github.com/librecast/lcast/mld"
	"github.com/librecast/lcast/peer"
	"github.com/librecast/lcast/router"
	"github.com/librecast/lcast/tun"
)

// tunOffset is the header room reserved in front of every packet read from lc0.
const tunOffset = 16

// Daemon is a running lcast node.
type Daemon struct {
	cfg  *config.Config
	log  *slog.Logger
	ifc  *tun.Interface
	addr netip.Addr
	link *mld.Link

	mldMalformed atomic.Uint64
	readErrors   atomic.Uint64
}

// Run brings lcast up and serves until ctx is done, then removes lc0 and its
// routes. It returns an error if start-up fails (leaving nothing behind) or
// if lc0 fails under it.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	d := &Daemon{cfg: cfg, log: log, addr: peer.OverlayAddr(cfg.Key.PublicKey())}
	d.link = mld.NewLink(mld.DefaultTiming, func() { log.Debug("local memberships changed") })

	// The control socket comes first: it tells us cheaply whether another
	// daemon already runs for this configuration, before lc0 is touched.
	ln, err := control.Listen(cfg.ControlSocket)
	if err != nil {
		return err
	}
	srv := control.NewServer(d.Status, log)
	ifcCfg := tun.Config{
		Name:   cfg.Interface,
		MTU:    cfg.MTU,
		Addr:   netip.PrefixFrom(d.addr, peer.OverlayPrefix.Bits()),
		Routes: router.RoutePrefixes(),
	}
	d.ifc, err = tun.Open(ifcCfg, log)
	if err != nil {
		ln.Close()
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	readErr := make(chan error, 1)
	wg.Go(func() { readErr <- d.readLoop() })
	querier := &mld.Querier{
		Link:   d.link,
		Source: ifcCfg.LinkLocal(),
		Timing: mld.DefaultTiming,
		Send:   d.writeToLink,
		Log:    log,
	}
	wg.Go(func() { querier.Run(ctx) })
	wg.Go(func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("control API stopped", "err", err)
		}
	})
	log.Info("lcast is up", "interface", cfg.Interface, "address", d.addr,
		"public_key", cfg.Key.PublicKey(), "control_socket", cfg.ControlSocket)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-readErr:
		if runErr == nil {
			runErr = fmt.Errorf("interface %s was removed under lcast", cfg.Interface)
		}
	}
	// Shutdown order: stop answering, stop querying, then remove lc0,
	// which ends the read loop.
	shutdownCtx, done := context.WithTimeout(context.Background(), 2*time.Second)
	srv.Shutdown(shutdownCtx)
	done()
	cancel()
	if err := d.ifc.Close(); err != nil {
		runErr = errors.Join(runErr, err)
	}
	wg.Wait()
	return runErr
}

// readLoop reads batches of packets from lc0 until it is closed. It returns
// nil when lc0 was closed by Run, an error when lc0 went away under it.
func (d *Daemon) readLoop() error {
	batch := d.ifc.Device.BatchSize()
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, tunOffset+65535)
	}
	sizes := make([]int, batch)
	var msg mld.Message
	failures := 0
	for {
		n, err := d.ifc.Device.Read(bufs, sizes, tunOffset)
		if errors.Is(err, os.ErrClosed) {
			return nil
		}
		if err != nil {
			// A malformed offload header fails one read; a vanished
			// interface fails them all.
			d.readErrors.Add(1)
			if failures++; failures > 100 {
				return fmt.Errorf("reading %s: %w", d.cfg.Interface, err)
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		failures = 0
		now := time.Now()
		for i := range n {
			pkt := bufs[i][tunOffset : tunOffset+sizes[i]]
			switch err := mld.Decode(pkt, &msg); {
			case err == nil:
				d.link.Handle(now, &msg)
			case errors.Is(err, mld.ErrNotMLD):
				// Other link traffic; forwarding comes with the router.
			default:
				d.mldMalformed.Add(1)
			}
		}
	}
}

// writeToLink writes one packet into lc0.
func (d *Daemon) writeToLink(pkt []byte) error {
	buf := make([]byte, tunOffset+len(pkt))
	copy(buf[tunOffset:], pkt)
	_, err := d.ifc.Device.Write([][]byte{buf}, tunOffset)
	return err
}

// Status reports the daemon's state for the control API.
func (d *Daemon) Status() control.Status {
	st := control.Status{
		Interface:   d.cfg.Interface,
		Address:     d.addr.String(),
		PublicKey:   d.cfg.Key.PublicKey().String(),
		ListenPort:  d.cfg.Port,
		LocalGroups: groupsJSON(d.link.Groups()),
		Peers:       []control.PeerStatus{},
		Drops: map[string]uint64{
			"mld_malformed":  d.mldMalformed.Load(),
			"lc0_read_error": d.readErrors.Load(),
		},
	}
	for _, p := range d.cfg.Peers {
		st.Peers = append(st.Peers, control.PeerStatus{
			PublicKey: p.PublicKey.String(),
			Endpoint:  p.Endpoint.String(),
			Groups:    []control.Group{},
		})
	}
	return st
}

func groupsJSON(groups []mld.GroupState) []control.Group {
	out := make([]control.Group, len(groups))
	for i, g := range groups {
		out[i] = control.Group{Group: g.Group.String(), Mode: g.Mode.String(), Sources: make([]string, len(g.Sources))}
		for j, s := range g.Sources {
			out[i].Sources[j] = s.String()
		}
	}
	return out
}
