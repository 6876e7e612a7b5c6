// Package daemon runs lcast: it brings up lc0, learns local memberships from
// the MLD reports the kernel writes into it, acts as the link's querier,
// exchanges subscriptions with its peers, forwards multicast between lc0 and
// the peers, and serves the control API, until its context is cancelled.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	sdnotify "github.com/coreos/go-systemd/v22/daemon"
	"github.com/librecast/lcast/bridge"
	"github.com/librecast/lcast/gateway"
	"github.com/librecast/lcast/internal/clock"
	"github.com/librecast/lcast/internal/config"
	"github.com/librecast/lcast/internal/control"
	"github.com/librecast/lcast/internal/metrics"
	"github.com/librecast/lcast/mld"
	"github.com/librecast/lcast/peer"
	"github.com/librecast/lcast/router"
	"github.com/librecast/lcast/tun"
	"golang.zx2c4.com/wireguard/conn"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// wgOffset is the headroom wgtun needs before a packet it writes into lc0.
const wgOffset = 16

// Daemon is a running lcast node.
type Daemon struct {
	cfg       *config.Config
	scope     router.ScopePolicy
	log       *slog.Logger
	addr      netip.Addr
	clock     clock.Clock
	ifc       Lc0
	link      *mld.Link
	router    *router.Router
	bridge    *bridge.Bridge
	transport *peer.Transport
	exchange  *peer.Exchange
	gateway   *gateway.Gateway // nil in host mode
	// load reads the configuration file again; reloads takes the control
	// API's requests to reload (lcast reload), until served is closed.
	load    func() (*config.Config, error)
	reloads chan chan<- reloadResult
	served  chan struct{}
	changed chan struct{} // local memberships changed
	relayed chan struct{} // on a relay: a peer's subscriptions changed

	// set is the node's peers as apply last made them (see peers.go);
	// saysRelay the peers that say, in their subscription messages, that
	// they relay (which makes them no relay of this node's: only their
	// [[peer]] table can).
	peersMu   sync.Mutex
	set       peerSet
	saysRelay map[netip.Addr]bool

	intros       *peer.Introductions
	introducedCh chan struct{} // the introduced peers changed
	pathMu       sync.Mutex    // serializes pathsChanged

	// provisional holds the groups the kernel announced joined on lc0
	// whose MLD report has not come yet, with when they stop counting.
	provMu      sync.Mutex
	provisional map[netip.Addr]time.Time
	provAdded   chan struct{} // a provisional join was added

	// What New starts and Serve stops: the control and metrics servers,
	// and the node's goroutines (stop cancels them, wg waits for them).
	ln         net.Listener
	srv        *control.Server
	metricsSrv *metrics.Server
	stop       context.CancelFunc
	wg         sync.WaitGroup

	// lc0Groups are the groups programs on this node listen to on lc0,
	// as announce last saw them (the gateway routes LAN packets to them).
	lc0Groups atomic.Pointer[[]netip.Addr]
}

// Host is what a daemon takes from the machine it runs on: lc0, the
// underlay's UDP and the clock of lcast's own timers. The zero Host is the
// machine's own (Run uses it); the in-process network of internal/simnet
// gives a simulated one of each (docs/design.md, "Testing").
type Host struct {
	// OpenLc0 creates (or adopts) lc0; nil means tun.Open.
	OpenLc0 func(tun.Config, *slog.Logger) (Lc0, error)
	// Bind is the transport's UDP; nil means wireguard-go's default bind.
	Bind conn.Bind
	// Clock is the time of lcast's own timers; nil means clock.Real.
	Clock clock.Clock
}

// Lc0 is the interface a daemon serves: its packets, and what the kernel
// says and keeps for it.
type Lc0 interface {
	// TUN reads and writes lc0's packets.
	TUN() wgtun.Device
	// WatchMemberships calls fn when a group is joined on lc0 or left,
	// as the kernel announces it, until ctx is done; an error means
	// joins are learnt from MLD reports only.
	WatchMemberships(ctx context.Context, fn func(group netip.Addr, joined bool)) error
	// KeepRoutes restores lc0's routes deleted under the daemon until ctx
	// is done.
	KeepRoutes(ctx context.Context) error
	// Close removes lc0 and its routes; it ends what reads lc0.
	Close() error
}

// kernelLc0 is lc0 as the tun package makes it on this machine.
type kernelLc0 struct{ *tun.Interface }

func (k kernelLc0) TUN() wgtun.Device { return k.Device }

func openKernelLc0(cfg tun.Config, log *slog.Logger) (Lc0, error) {
	ifc, err := tun.Open(cfg, log)
	if err != nil {
		return nil, err
	}
	return kernelLc0{ifc}, nil
}

// Run brings lcast up on this machine and serves until ctx is done, then
// removes lc0 and its routes (New, then Serve).
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger, hup <-chan os.Signal, load func() (*config.Config, error)) error {
	d, err := New(ctx, cfg, log, Host{}, load)
	if err != nil {
		return err
	}
	return d.Serve(ctx, hup)
}

// New brings lcast up on host: the control socket, lc0, the transport and
// every goroutine of the node. It returns an error if start-up fails,
// leaving nothing behind; ctx bounds start-up only (resolving endpoints).
// The caller must then call Serve, which runs the node until its context
// is done and then removes what New made. load reads the configuration
// file again, for a reload (SIGHUP, lcast reload: see Daemon.reload).
// Under systemd (Type=notify), the daemon tells the service manager when
// it is ready, reloading and stopping.
func New(ctx context.Context, cfg *config.Config, log *slog.Logger, host Host, load func() (*config.Config, error)) (_ *Daemon, err error) {
	if host.OpenLc0 == nil {
		host.OpenLc0 = openKernelLc0
	}
	d := &Daemon{
		cfg:     cfg,
		clock:   clock.Or(host.Clock),
		load:    load,
		reloads: make(chan chan<- reloadResult),
		served:  make(chan struct{}),
		scope:   router.ScopePolicy{LinkLocal: cfg.ForwardLinkScope},
		log:     log,
		addr:    peer.OverlayAddr(cfg.Key.PublicKey()),
		changed: make(chan struct{}, 1),
		relayed: make(chan struct{}, 1),

		introducedCh: make(chan struct{}, 1),

		saysRelay:   map[netip.Addr]bool{},
		provisional: map[netip.Addr]time.Time{},
		provAdded:   make(chan struct{}, 1),
	}
	d.link = mld.NewLink(mld.DefaultTiming, d.localChanged)
	resolved, err := resolvePeers(ctx, cfg.Peers)
	if err != nil {
		return nil, err
	}
	d.intros = peer.NewIntroductions(peer.IntroductionsConfig{
		Self:          cfg.Key.PublicKey(),
		Send:          func(to netip.Addr, msg []byte) error { return d.bridge.SendControl(to, msg) },
		Lists:         d.lists,
		Seen:          d.seen,
		Introducers:   d.introducers,
		Relays:        d.trustedRelays,
		LastRx:        d.lastRx,
		Changed:       d.introductionsChanged,
		DirectChanged: d.directChanged,
		Log:           log,
		Clock:         d.clock,
	})

	// What start-up made is undone, last first, if a later step fails.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	// The control socket comes first: it tells cheaply whether another
	// daemon already runs for this configuration, before lc0 is touched.
	if d.ln, err = control.Listen(cfg.ControlSocket); err != nil {
		return nil, err
	}
	undo = append(undo, func() { d.ln.Close() })
	if cfg.MetricsListen != "" {
		if d.metricsSrv, err = metrics.Listen(cfg.MetricsListen, d.Snapshot, log); err != nil {
			return nil, err
		}
		undo = append(undo, func() { d.metricsSrv.Close() })
	}
	ifcCfg := tun.Config{
		Name:      cfg.Interface,
		MTU:       cfg.MTU,
		Addr:      netip.PrefixFrom(d.addr, peer.OverlayPrefix.Bits()),
		LinkLocal: peer.LinkLocalAddr(cfg.Key.PublicKey()),
		Routes:    router.RoutePrefixes(),
	}
	if d.ifc, err = host.OpenLc0(ifcCfg, log); err != nil {
		return nil, err
	}
	undo = append(undo, func() { d.ifc.Close() })
	d.router = router.New(router.Config{Self: d.addr, Overlay: peer.OverlayPrefix, Scope: d.scope, Relay: cfg.Relay, MTU: cfg.MTU,
		MaxAdvertised: peer.MaxGroupsPerPeer, Clock: d.clock})
	if len(cfg.LANInterfaces) > 0 {
		if d.gateway, err = d.openGateway(); err != nil {
			return nil, err
		}
		undo = append(undo, d.gateway.Close)
	}
	// The exchange sends through the bridge and repairs the transport's
	// sessions, both made below; it starts sending when it runs.
	d.exchange = peer.NewExchange(peer.ExchangeConfig{
		Self: d.addr, Relay: cfg.Relay, State: d.router.Advertised, Apply: d.peerSubscribed,
		Send:        func(to netip.Addr, msg []byte) error { return d.bridge.SendControl(to, msg) },
		Repair:      func(addrs []netip.Addr, recent time.Duration) { d.transport.Repair(addrs, recent) },
		LastRx:      d.lastRx,
		Watched:     d.watched,
		PathChanged: d.pathsChanged,
		Log:         log,
		Clock:       d.clock,
	})
	d.bridge = bridge.New(d.ifc.TUN(), d.router, bridge.Config{Link: d.link, Control: d})
	// The bridge's lc0 reader ends when lc0 closes, so lc0 closes first.
	undo = append(undo, func() { d.ifc.Close(); d.bridge.Close() })
	if d.transport, err = peer.NewTransport(cfg.Key, cfg.Port, nil, d.bridge.Port(), host.Bind, log); err != nil {
		return nil, err
	}
	undo = append(undo, func() { d.ifc.Close(); d.transport.Close() })
	if _, _, err = d.apply(desiredPeers(cfg.Peers, resolved, nil)); err != nil {
		return nil, err
	}
	d.start()
	return d, nil
}

// start starts the node's goroutines, which end when Serve cancels their
// context (d.stop); Serve waits for them.
func (d *Daemon) start() {
	ctx, cancel := context.WithCancel(context.Background())
	d.stop = cancel
	log := d.log
	querier := &mld.Querier{
		Link:   d.link,
		Source: mld.QuerierAddr,
		Timing: mld.DefaultTiming,
		Send:   d.writeToLink,
		Log:    log,
	}
	if err := d.ifc.WatchMemberships(ctx, d.membershipHint); err != nil {
		log.Info("joins take effect when the kernel's MLD reports come", "reason", err)
	}
	wg := &d.wg
	wg.Go(func() {
		if err := d.ifc.KeepRoutes(ctx); err != nil {
			log.Warn("routes deleted under lcast will not be restored", "err", err)
		}
	})
	wg.Go(func() { querier.Run(ctx) })
	if d.gateway != nil {
		wg.Go(func() { d.gateway.Run(ctx) })
	}
	wg.Go(func() { d.exchange.Run(ctx) })
	wg.Go(func() { d.intros.Run(ctx) })
	wg.Go(func() { d.announce(ctx) })
	wg.Go(func() { d.reresolve(ctx) })
	wg.Go(func() { d.expireProvisional(ctx) })
	d.srv = control.NewServer(d.Status, d.Reload, log)
	wg.Go(func() {
		if err := d.srv.Serve(d.ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("control API stopped", "err", err)
		}
	})
	if d.metricsSrv != nil {
		log.Info("serving Prometheus metrics", "url", "http://"+d.metricsSrv.Addr().String()+metrics.Path)
		wg.Go(func() {
			if err := d.metricsSrv.Serve(); err != nil {
				log.Error("metrics stopped", "err", err)
			}
		})
	}
	cfg := d.cfg
	log.Info("lcast is up", "interface", cfg.Interface, "address", d.addr, "public_key", cfg.Key.PublicKey(),
		"listen_port", cfg.Port, "peers", len(d.set.all), "control_socket", cfg.ControlSocket, "lan_interfaces", cfg.LANInterfaces)
}

// Serve runs the node New started until ctx is done or lc0 fails,
// reloading the configuration on each signal from hup (SIGHUP) and on the
// control API's requests alike, then shuts it down: it stops answering,
// stops querying and announcing, removes lc0 (which ends the bridge's lc0
// reader and the transport's reads), then stops the transport and the
// bridge. It returns an error if lc0 failed under it or could not be
// removed.
func (d *Daemon) Serve(ctx context.Context, hup <-chan os.Signal) error {
	notify(d.log, sdnotify.SdNotifyReady)
	var runErr error
serve:
	for {
		select {
		case <-ctx.Done():
			break serve
		case <-d.transport.Done():
			runErr = fmt.Errorf("interface %s was removed or failed under lcast", d.cfg.Interface)
			break serve
		case <-hup:
			d.reload(ctx)
		case done := <-d.reloads:
			msg, err := d.reload(ctx)
			done <- reloadResult{msg, err}
		case <-d.introducedCh:
			d.reintroduce()
		}
	}
	close(d.served)
	notify(d.log, sdnotify.SdNotifyStopping)
	shutdownCtx, done := context.WithTimeout(context.Background(), 2*time.Second)
	d.srv.Shutdown(shutdownCtx)
	if d.metricsSrv != nil {
		d.metricsSrv.Shutdown(shutdownCtx)
	}
	done()
	d.stop()
	d.wg.Wait()
	if err := d.ifc.Close(); err != nil {
		runErr = errors.Join(runErr, err)
	}
	d.transport.Close()
	d.bridge.Close()
	return runErr
}

// resolvePeers turns the configured peers into the transport's, resolving
// endpoint names.
func resolvePeers(ctx context.Context, peers []config.Peer) ([]peer.Config, error) {
	out := make([]peer.Config, len(peers))
	for i, p := range peers {
		out[i].PublicKey = p.PublicKey
		if p.Endpoint.IsZero() {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ep, err := peer.ResolveEndpoint(rctx, p.Endpoint.Host, p.Endpoint.Port)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("peer[%d]: %w", i+1, err)
		}
		out[i].Endpoint = ep
	}
	return out, nil
}

// trustedRelays returns the overlay addresses of the peers that peers
// mark relay = true: the peers whose packets may carry other nodes'
// sources.
func trustedRelays(peers []config.Peer) []netip.Addr {
	return addrsOf(peers, func(p config.Peer) bool { return p.Relay })
}

// lanPrefixes returns, by overlay address, the LAN prefixes of the peers
// that peers list as gateways.
func lanPrefixes(peers []config.Peer) map[netip.Addr][]netip.Prefix {
	out := map[netip.Addr][]netip.Prefix{}
	for _, p := range peers {
		if len(p.LANPrefixes) > 0 {
			out[peer.OverlayAddr(p.PublicKey)] = p.LANPrefixes
		}
	}
	return out
}

// reresolveInterval is how often the endpoints of silent peers that are
// DNS names are looked up again.
const reresolveInterval = 10 * time.Second

// reresolve looks up again, every reresolveInterval, the endpoint names of
// the peers that have been silent for peer.HoldTime or more (they may have
// moved), and points the transport at the address the name gives now.
func (d *Daemon) reresolve(ctx context.Context) {
	tick := d.clock.NewTicker(reresolveInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		d.peersMu.Lock()
		peers := d.set.configured
		d.peersMu.Unlock()
		for _, p := range peers {
			if _, err := netip.ParseAddr(p.Endpoint.Host); p.Endpoint.IsZero() || err == nil ||
				d.exchange.Silence(peer.OverlayAddr(p.PublicKey), d.clock.Now()) < peer.HoldTime {
				continue
			}
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			ep, err := peer.ResolveEndpoint(rctx, p.Endpoint.Host, p.Endpoint.Port)
			cancel()
			if err != nil {
				d.log.Warn("silent peer: endpoint does not resolve", "peer", p.PublicKey, "err", err)
				continue
			}
			switch changed, err := d.transport.SetEndpoint(p.PublicKey, ep); {
			case err != nil:
				d.log.Warn("silent peer: endpoint not changed", "peer", p.PublicKey, "err", err)
			case changed:
				d.log.Info("silent peer: endpoint resolved anew", "peer", p.PublicKey, "name", p.Endpoint, "endpoint", ep)
			}
		}
	}
}

// reloadResult is what a reload changed, or why it changed nothing.
type reloadResult struct {
	msg string
	err error
}

// Reload has the serving loop reload the configuration, as on SIGHUP, and
// says what changed: the control API's ReloadFunc (lcast reload).
func (d *Daemon) Reload(ctx context.Context) (string, error) {
	done := make(chan reloadResult, 1)
	select {
	case d.reloads <- done:
	case <-d.served:
		return "", errors.New("lcast is stopping")
	case <-ctx.Done():
		return "", ctx.Err()
	}
	r := <-done
	return r.msg, r.err
}

// reload reads the configuration file again and applies its [[peer]]
// tables: peers no longer listed are removed, new ones added, changed
// endpoints, relay trust and LAN prefixes updated; the sessions and
// subscriptions of the others carry on, and so does their traffic. Other
// changed keys are logged as needing a restart. If the file is invalid or
// cannot be applied (an endpoint does not resolve), nothing changes. It
// returns what changed, or why nothing did. It is the one path of every
// reload (SIGHUP, lcast reload), run by Serve's loop.
func (d *Daemon) reload(ctx context.Context) (string, error) {
	next, err := d.load()
	if err != nil {
		d.log.Error("reload: configuration not applied", "err", err)
		return "", err
	}
	// systemd hears of a reload only once there is one to apply.
	notify(d.log, sdnotify.SdNotifyReloading)
	defer notify(d.log, sdnotify.SdNotifyReady)
	restart := d.cfg.NeedRestart(next)
	if len(restart) > 0 {
		d.log.Warn("reload: changes to these keys take effect at the next start", "keys", restart)
	}
	resolved, err := resolvePeers(ctx, next.Peers)
	if err != nil {
		d.log.Error("reload: peers unchanged", "err", err)
		return "", fmt.Errorf("peers unchanged: %w", err)
	}
	set := desiredPeers(next.Peers, resolved, d.intros.Introduced(introducers(next.Peers)))
	added, removed, err := d.apply(set)
	if err != nil {
		d.log.Error("reload: peers unchanged", "err", err)
		return "", fmt.Errorf("peers unchanged: %w", err)
	}
	d.log.Info("reloaded", "peers", len(next.Peers), "added", added, "removed", removed)
	msg := fmt.Sprintf("reloaded: %d peers, %d added, %d removed", len(next.Peers), added, removed)
	if len(restart) > 0 {
		msg += fmt.Sprintf("; changes to %s take effect at the next start", strings.Join(restart, ", "))
	}
	return msg, nil
}

// notify tells systemd about the daemon's state, when it runs under
// systemd with Type=notify.
func notify(log *slog.Logger, state string) {
	if _, err := sdnotify.SdNotify(false, state); err != nil {
		log.Warn("telling systemd", "state", state, "err", err)
	}
}

// peerSubscribed takes a peer's subscriptions from the exchange, and
// whether the peer says it relays. That the peer says so grants nothing:
// status shows it, and a warning tells when this node does not trust the
// peer as a relay, whose packets from other nodes are then dropped. On a
// relay the subscriptions change what it subscribes to at its other peers.
func (d *Daemon) peerSubscribed(addr netip.Addr, relay bool, groups []mld.GroupState) {
	d.router.SetSubscriptions(addr, groups)
	d.peersMu.Lock()
	said := d.saysRelay[addr]
	if relay {
		d.saysRelay[addr] = true
	} else {
		delete(d.saysRelay, addr)
	}
	d.peersMu.Unlock()
	if relay && !said && !d.router.TrustsRelay(addr) {
		d.log.Warn("peer says it relays, but this node does not trust it as a relay: its packets from other nodes are dropped (forged_source) unless its [[peer]] table sets relay = true",
			"peer", addr)
	}
	if d.gateway != nil {
		d.gateway.Update()
	}
	if d.cfg.Relay {
		select {
		case d.relayed <- struct{}{}:
		default:
		}
	}
}

// localChanged is the Link's change callback: it wakes announce.
func (d *Daemon) localChanged() {
	select {
	case d.changed <- struct{}{}:
	default:
	}
}

// announce passes local membership changes (on lc0, and on the LANs of a
// gateway) to the router, the peers and the gateway's routes, and on a
// relay the changes of peers' subscriptions to the other peers.
func (d *Daemon) announce(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.changed:
			groups := d.withProvisional(d.link.Groups())
			d.log.Debug("local memberships changed", "groups", len(groups))
			if d.gateway != nil {
				d.setLc0Groups(groups)
				groups = mld.UnionGroups(groups, d.gateway.Groups())
			}
			d.router.SetLocal(groups)
			d.exchange.Changed()
			if d.gateway != nil {
				d.gateway.Update()
			}
		case <-d.relayed:
			d.exchange.Changed()
		}
	}
}

// provisionalHold is how long a join the kernel announced on rtnetlink
// counts while its MLD report has not come.
const provisionalHold = 2 * time.Second

// membershipHint takes the kernel's rtnetlink announcement that group was
// joined on lc0 or left. The kernel writes its MLD report of a join about
// 10 ms later; until then the group counts as joined for any source, so
// that peers start sending at once. The report then replaces it with the
// real filter (a source-specific join of a group outside the SSM range
// gets other sources' traffic for those milliseconds, which the kernel
// does not deliver to the program). SSM-range groups wait for their report.
func (d *Daemon) membershipHint(group netip.Addr, joined bool) {
	if joined && (!d.scope.Forwards(group) || isSSM(group)) {
		return
	}
	d.provMu.Lock()
	if joined {
		d.provisional[group] = d.clock.Now().Add(provisionalHold)
	} else {
		delete(d.provisional, group)
	}
	d.provMu.Unlock()
	if joined {
		select {
		case d.provAdded <- struct{}{}:
		default:
		}
	}
	d.localChanged()
}

// expireProvisional has announce look again at the provisional joins
// when the oldest of them expires, until ctx is done.
func (d *Daemon) expireProvisional(ctx context.Context) {
	t := d.clock.NewTimer(provisionalHold)
	t.Stop() // set when a join is added
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.provAdded:
		case <-t.C:
			d.localChanged()
		}
		d.provMu.Lock()
		var next time.Time
		for _, until := range d.provisional {
			if next.IsZero() || until.Before(next) {
				next = until
			}
		}
		d.provMu.Unlock()
		if !next.IsZero() {
			t.Reset(max(0, next.Sub(d.clock.Now())))
		}
	}
}

// isSSM reports whether group is in the source-specific range ff3x::/32.
func isSSM(group netip.Addr) bool { return group.As16()[1]>>4 == 3 }

// withProvisional adds to the groups MLD reported (sorted by address) the
// provisional joins the reports do not cover yet, and forgets those they
// cover or that expired.
func (d *Daemon) withProvisional(groups []mld.GroupState) []mld.GroupState {
	d.provMu.Lock()
	defer d.provMu.Unlock()
	if len(d.provisional) == 0 {
		return groups
	}
	now := d.clock.Now()
	for g, until := range d.provisional {
		_, reported := slices.BinarySearchFunc(groups, g, func(s mld.GroupState, g netip.Addr) int { return s.Group.Compare(g) })
		if reported || now.After(until) {
			delete(d.provisional, g)
			continue
		}
		groups = append(groups, mld.GroupState{Group: g, Mode: mld.Exclude, Sources: []netip.Addr{}})
	}
	slices.SortFunc(groups, func(a, b mld.GroupState) int { return a.Group.Compare(b.Group) })
	return groups
}

// writeToLink writes one packet into lc0.
func (d *Daemon) writeToLink(pkt []byte) error {
	buf := make([]byte, wgOffset+len(pkt))
	copy(buf[wgOffset:], pkt)
	_, err := d.ifc.TUN().Write([][]byte{buf}, wgOffset)
	return err
}
