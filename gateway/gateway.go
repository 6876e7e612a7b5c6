// Package gateway makes a node the multicast router of the LANs behind it
// (gateway mode; docs/design.md, "Gateway mode and nftables"). On each LAN
// interface it is the MLD router (package mld: the LAN's listener state,
// General Queries, querier election). Packets move between the LANs and
// lc0 in the kernel: nftables rules copy each packet onto exactly the
// links that want it, taking one off its hop limit as routers do. The
// rules are made once; what the LANs' listeners and lc0 want are elements
// of sets keyed by group (and by group and source, for source filters),
// which the gateway changes one at a time over netlink as they change
// (see rules.go and nft.go).
// Link-scope groups are never routed, and a LAN host's packets go onward
// only if their source lies on the LAN they arrived on; those that do not
// are counted.
//
// The kernel's own IPv6 multicast routing (MRT6) is not used for this: the
// kernels lcast runs on may lack it (this project's test machines do), and
// nftables' dup does the same work per group rather than per flow. Where
// the kernel has MRT6, the gateway takes its socket anyway (package
// mroute), so that it never runs beside another multicast router (pim6sd,
// smcroute) in the same network namespace. (Another lcast cannot run in
// the namespace at all: lc0's routes would collide.)
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/librecast/lcast/mld"
	"github.com/librecast/lcast/mroute"
)

// Config is what a Gateway is made with.
type Config struct {
	// LANs are the LAN interfaces' names; Lc0 is lc0's.
	LANs []string
	Lc0  string
	// Routable reports whether packets to group may cross between links
	// (the scope policy; link scope never does).
	Routable func(group netip.Addr) bool
	// Lc0Groups returns the groups wanted through lc0, sorted and
	// without duplicates: those the peers subscribed to, and those
	// programs on this node listen to.
	Lc0Groups func() []netip.Addr
	// OnChange is called (without locks held) after the listeners on a
	// LAN changed.
	OnChange func()
	Log      *slog.Logger
}

// Gateway is the multicast router of a node's LANs.
type Gateway struct {
	cfg    Config
	mr     *mroute.Socket // held so that no other multicast router runs here; nil without MRT6
	lans   []*LAN
	kernel kernel // nftables; nil until Open made it
	layout layout // the table's rules, which stay

	wake     chan struct{} // the sets may need a change
	lc0Dirty atomic.Bool   // lc0's groups may have changed (each LAN has its own)

	// Only Open and then Run's goroutine touch these.
	state   *state // what the sets hold
	broken  bool   // a change failed: the table is made anew
	lc0Over int    // groups wanted through lc0 beyond maxLc0Groups

	closed    atomic.Bool
	closeOnce sync.Once
}

// retryDelay is how long after a failed change of the rules the gateway
// makes its table anew.
const retryDelay = time.Second

// Open takes the namespace's multicast routing (failing, with the holder
// named, if another router has it), opens the LANs and makes the
// nftables table. Nothing runs until Run; Close releases it all if Run is
// never called.
func Open(cfg Config) (*Gateway, error) {
	return open(cfg, func(table string) (kernel, error) { return newNftKernel(table, 0) })
}

// open is Open with the nftables newKernel returns for a table.
func open(cfg Config, newKernel func(table string) (kernel, error)) (_ *Gateway, err error) {
	mr, err := mroute.Open()
	switch {
	case errors.Is(err, mroute.ErrUnsupported):
		// No other multicast router can run here either.
	case err != nil:
		return nil, err
	}
	g := &Gateway{cfg: cfg, mr: mr, wake: make(chan struct{}, 1)}
	defer func() {
		if err != nil {
			g.Close() // of what was made, whatever failed
		}
	}()
	lc0, err := net.InterfaceByName(cfg.Lc0)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", cfg.Lc0, err)
	}
	var links []link
	var prefixes [][]netip.Prefix
	for _, name := range cfg.LANs {
		l, err := g.openLAN(name)
		if err != nil {
			return nil, fmt.Errorf("LAN interface %s: %w", name, err)
		}
		g.lans = append(g.lans, l)
		links = append(links, link{name: name, index: l.index})
		prefixes = append(prefixes, l.prefixes)
	}
	g.layout = newLayout("lcast_"+identifier(cfg.Lc0), link{name: cfg.Lc0, index: lc0.Index}, links, prefixes)
	for i, l := range g.lans {
		l.counter = g.layout.lans[i].counter()
	}
	k, err := newKernel(g.layout.table)
	if err != nil {
		return nil, err // and g.kernel stays nil, not a nil *nftKernel
	}
	g.kernel = k
	// The table starts anew, replacing what a crashed daemon left.
	if err := g.kernel.create(g.layout); err != nil {
		return nil, err
	}
	g.state = newState(g.layout)
	g.lc0Dirty.Store(true)
	if err := g.apply(); err != nil {
		return nil, err
	}
	return g, nil
}

// Run serves the LANs and keeps the rules until ctx is done, then removes
// the rules and releases the LANs and multicast routing.
func (g *Gateway) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, l := range g.lans {
		wg.Go(func() { l.read(g.cfg.Log) })
		wg.Go(func() { l.querier.Run(ctx) })
	}
	var retry <-chan time.Time
	for {
		select {
		case <-g.wake:
		case <-retry:
			retry = nil
		case <-ctx.Done():
			g.Close()
			wg.Wait()
			return
		}
		if err := g.apply(); err != nil {
			g.cfg.Log.Error("gateway: changing the routing rules; the table is made anew", "err", err, "in", retryDelay)
			retry = time.After(retryDelay)
		}
	}
}

// Close removes the rules and releases the LANs' sockets and multicast
// routing; reads blocked on the sockets return.
func (g *Gateway) Close() {
	g.closeOnce.Do(func() {
		g.closed.Store(true)
		for _, l := range g.lans {
			if l.sock != nil { // nil in tests
				l.sock.close()
			}
		}
		// The table may never have been made (start-up failed half way):
		// remove deletes it all the same.
		if g.kernel != nil {
			if err := g.kernel.remove(); err != nil {
				g.cfg.Log.Warn("gateway: removing the routing rules", "table", g.layout.table, "err", err)
			}
			g.kernel.close()
		}
		if g.mr != nil {
			g.mr.Close()
		}
	})
}

// Update has the rules follow what lc0 wants (a peer's subscriptions,
// programs' listeners on lc0). A change on a LAN updates them itself.
func (g *Gateway) Update() {
	g.lc0Dirty.Store(true)
	g.poke()
}

// poke wakes Run to bring the sets up to date.
func (g *Gateway) poke() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// apply brings the sets up to what lc0 and the LANs whose listeners
// changed want, with the element changes only. After a change failed,
// the table and every element are made anew: what the kernel holds is
// then not known.
func (g *Gateway) apply() error {
	if g.closed.Load() {
		return nil
	}
	if g.broken {
		if err := g.kernel.create(g.layout); err != nil {
			return err
		}
		g.state, g.broken = newState(g.layout), false
		g.lc0Dirty.Store(true)
		for _, l := range g.lans {
			l.dirty.Store(true)
		}
	}
	var ops []setOp
	if g.lc0Dirty.Swap(false) {
		want := slices.DeleteFunc(g.cfg.Lc0Groups(), func(a netip.Addr) bool { return !g.cfg.Routable(a) })
		var over int
		ops, over = g.state.lc0Changes(ops, want)
		if over > 0 && g.lc0Over == 0 {
			g.cfg.Log.Warn("gateway: more groups wanted through lc0 than the rules hold: LAN hosts' packets to the others do not reach peers",
				"wanted", len(want), "held", maxLc0Groups)
		}
		g.lc0Over = over
	}
	for i, l := range g.lans {
		if l.dirty.Swap(false) {
			var over int
			ops, over = g.state.lanChanges(ops, g.layout.lans[i], i, g.routableGroups(l))
			if over > 0 {
				g.cfg.Log.Warn("gateway: a LAN's groups beyond the rules' caps are not routed", "lan", l.name, "groups", over)
			}
		}
	}
	if len(ops) == 0 {
		return nil
	}
	if err := g.kernel.change(ops); err != nil {
		g.broken = true
		return err
	}
	return nil
}

// ForeignSources counts the LAN's multicast packets of routable scope that
// were not routed because their source does not lie on the LAN (0 if the
// count cannot be read). It reads the kernel's counter over netlink.
func (g *Gateway) ForeignSources(l *LAN) uint64 {
	if g.kernel == nil {
		return 0
	}
	n, err := g.kernel.counter(l.counter)
	if err != nil {
		return 0
	}
	return n
}

// lanChanged follows a change of a LAN's listeners: the rules, then the
// node's subscriptions (OnChange).
func (g *Gateway) lanChanged(l *LAN) {
	l.dirty.Store(true)
	g.poke()
	if g.cfg.OnChange != nil {
		g.cfg.OnChange()
	}
}

// Groups returns the routable groups with listeners on any LAN, each with
// the union of the LANs' source filters, sorted by group: what the LANs add
// to this node's subscriptions.
func (g *Gateway) Groups() []mld.GroupState {
	var out []mld.GroupState
	for _, l := range g.lans {
		out = mld.UnionGroups(out, g.routableGroups(l))
	}
	return out
}

// routableGroups returns the groups with listeners on the LAN that are
// routed between links, sorted by group.
func (g *Gateway) routableGroups(l *LAN) []mld.GroupState {
	return slices.DeleteFunc(l.Groups(), func(s mld.GroupState) bool { return !g.cfg.Routable(s.Group) })
}

// Prefixes returns the prefixes of every LAN: the sources of the packets
// the gateway sends onward.
func (g *Gateway) Prefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, l := range g.lans {
		out = append(out, l.prefixes...)
	}
	return out
}

// LANs returns the LANs, in the configuration's order.
func (g *Gateway) LANs() []*LAN { return g.lans }
