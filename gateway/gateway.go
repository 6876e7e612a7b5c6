// Package gateway makes a node the multicast router of the LANs behind it
// (gateway mode; docs/design.md, "Gateway mode and nftables"). On each LAN
// interface it is the MLD router (package mld: the LAN's listener state,
// General Queries, querier election). Packets move between the LANs and
// lc0 in the kernel: nftables rules that the gateway keeps to what the
// LANs' listeners and lc0 want copy each packet onto exactly the links
// that want it (see ruleset), taking one off its hop limit as routers do.
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
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

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
	// Lc0Groups returns the groups wanted through lc0, sorted: those the
	// peers subscribed to, and those programs on this node listen to.
	Lc0Groups func() []netip.Addr
	// OnChange is called (without locks held) after the listeners on a
	// LAN changed.
	OnChange func()
	Log      *slog.Logger
}

// Gateway is the multicast router of a node's LANs.
type Gateway struct {
	cfg   Config
	table string         // the nftables table of the routing rules
	mr    *mroute.Socket // held so that no other multicast router runs here; nil without MRT6
	lans  []*LAN

	wake chan struct{} // the rules may need a change

	mu      sync.Mutex // guards applied
	applied string     // the ruleset in the kernel

	closeOnce sync.Once
}

// Open takes the namespace's multicast routing (failing, with the holder
// named, if another router has it) and opens the LANs. Nothing runs until
// Run; Close releases it all if Run is never called.
func Open(cfg Config) (g *Gateway, err error) {
	if _, err := exec.LookPath("nft"); err != nil {
		return nil, errors.New("gateway mode needs nftables' nft command (Debian: apt install nftables)")
	}
	mr, err := mroute.Open()
	switch {
	case errors.Is(err, mroute.ErrUnsupported):
		// No other multicast router can run here either.
	case err != nil:
		return nil, err
	}
	g = &Gateway{cfg: cfg, table: "lcast_" + identifier(cfg.Lc0), mr: mr, wake: make(chan struct{}, 1)}
	defer func() {
		if err != nil {
			g.Close()
		}
	}()
	for _, name := range cfg.LANs {
		l, err := g.openLAN(name)
		if err != nil {
			return nil, fmt.Errorf("LAN interface %s: %w", name, err)
		}
		g.lans = append(g.lans, l)
	}
	// The counters of packets from sources foreign to each LAN, and the
	// rules, start anew (replacing what a crashed daemon left).
	if err := nft(g.counters()); err != nil {
		return nil, err
	}
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
	for {
		select {
		case <-g.wake:
			if err := g.apply(); err != nil {
				g.cfg.Log.Error("gateway: updating the routing rules", "err", err)
			}
		case <-ctx.Done():
			g.Close()
			wg.Wait()
			return
		}
	}
}

// Close removes the rules and releases the LANs' sockets and multicast
// routing; reads blocked on the sockets return.
func (g *Gateway) Close() {
	g.closeOnce.Do(func() {
		for _, l := range g.lans {
			l.sock.close()
		}
		// Either table may never have been made (start-up failed half
		// way): dropTable deletes each all the same.
		var del strings.Builder
		dropTable(&del, g.table)
		dropTable(&del, g.table+"_foreign")
		if err := nft(del.String()); err != nil {
			g.cfg.Log.Warn("gateway: removing the routing rules", "table", g.table, "err", err)
		}
		if g.mr != nil {
			g.mr.Close()
		}
	})
}

// Update has the rules follow what lc0 wants (a peer's subscriptions,
// programs' listeners on lc0). A change on a LAN updates them itself.
func (g *Gateway) Update() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// apply loads the rules for the state now, if they changed.
func (g *Gateway) apply() error {
	lans := make([]lanState, len(g.lans))
	for i, l := range g.lans {
		lans[i] = lanState{name: l.name, prefixes: l.prefixes, groups: g.routableGroups(l)}
	}
	lc0 := slices.DeleteFunc(g.cfg.Lc0Groups(), func(a netip.Addr) bool { return !g.cfg.Routable(a) })
	rules := ruleset(g.table, g.cfg.Lc0, lans, lc0)
	g.mu.Lock()
	defer g.mu.Unlock()
	if rules == g.applied {
		return nil
	}
	if err := nft(rules); err != nil {
		return err
	}
	g.applied = rules
	return nil
}

// nft runs an nftables script, in one transaction.
func nft(script string) error {
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %v: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// counters returns the nftables script of the table that counts, per LAN,
// the multicast packets of routable scope whose source does not lie on the
// LAN. It is loaded once: it stays as the routing rules change, and so do
// its counts.
func (g *Gateway) counters() string {
	var b strings.Builder
	t := g.table + "_foreign"
	dropTable(&b, t)
	fmt.Fprintf(&b, "table ip6 %s {\n", t)
	for _, l := range g.lans {
		fmt.Fprintf(&b, "\tcounter %s { }\n", counterName(l))
	}
	b.WriteString("\tchain prerouting {\n\t\ttype filter hook prerouting priority raw; policy accept;\n")
	for _, l := range g.lans {
		match := ""
		if len(l.prefixes) > 0 {
			match = " ip6 saddr != " + set(l.prefixes)
		}
		// @nh,204,4 is the scope of the destination (the low 4 bits of
		// its second byte): wider than link scope.
		fmt.Fprintf(&b, "\t\tiifname %q%s ip6 daddr ff00::/8 @nh,204,4 > 2 counter name %q\n", l.name, match, counterName(l))
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// ForeignSources counts the LAN's multicast packets of routable scope that
// were not routed because their source does not lie on the LAN (0 if the
// count cannot be read).
func (g *Gateway) ForeignSources(l *LAN) uint64 {
	out, err := exec.Command("nft", "list", "counter", "ip6", g.table+"_foreign", counterName(l)).Output()
	if err != nil {
		return 0
	}
	m := packetsRE.FindSubmatch(out)
	if m == nil {
		return 0
	}
	n, _ := strconv.ParseUint(string(m[1]), 10, 64)
	return n
}

var packetsRE = regexp.MustCompile(`packets (\d+)`)

// counterName is the name of the LAN's counter of foreign sources.
func counterName(l *LAN) string { return "lan_" + identifier(l.name) }

// identifier turns an interface name into the tail of an nftables
// identifier.
func identifier(name string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, name)
}

// lanChanged follows a change of a LAN's listeners: the rules, then the
// node's subscriptions (OnChange).
func (g *Gateway) lanChanged() {
	g.Update()
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
