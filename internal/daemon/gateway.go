package daemon

import (
	"net/netip"
	"slices"

	"github.com/librecast/lcast/gateway"
	"github.com/librecast/lcast/internal/control"
	"github.com/librecast/lcast/mld"
)

// openGateway makes this node the multicast router of its LAN interfaces
// (gateway mode), once lc0 is up and the router made.
func (d *Daemon) openGateway() (*gateway.Gateway, error) {
	d.lc0Groups.Store(&[]netip.Addr{})
	g, err := gateway.Open(gateway.Config{
		LANs:      d.cfg.LANInterfaces,
		Lc0:       d.cfg.Interface,
		Routable:  d.routable,
		Lc0Groups: d.lc0Wants,
		OnChange:  d.localChanged,
		Log:       d.log,
	})
	if err != nil {
		return nil, err
	}
	d.router.SetOwnLANs(g.Prefixes())
	for _, l := range g.LANs() {
		d.log.Info("gateway: the multicast router of a LAN", "lan", l.Name(), "prefixes", l.Prefixes())
	}
	return g, nil
}

// routable reports whether a gateway routes packets to group between its
// links: groups whose scope crosses between peers, never of link scope.
func (d *Daemon) routable(group netip.Addr) bool {
	return group.As16()[1]&0x0f > 2 && d.scope.Forwards(group)
}

// lc0Wants returns the groups wanted through lc0, sorted: those a peer
// subscribed to and those programs on this node listen to.
func (d *Daemon) lc0Wants() []netip.Addr {
	groups := slices.Concat(d.router.SubscribedGroups(), *d.lc0Groups.Load())
	slices.SortFunc(groups, netip.Addr.Compare)
	return slices.Compact(groups)
}

// setLc0Groups keeps the groups programs on this node listen to on lc0.
func (d *Daemon) setLc0Groups(groups []mld.GroupState) {
	addrs := make([]netip.Addr, len(groups))
	for i, g := range groups {
		addrs[i] = g.Group
	}
	d.lc0Groups.Store(&addrs)
}

// lansJSON returns the status of the gateway's LANs, and the forwarding
// table with each LAN that has listeners for a group added to it.
func (d *Daemon) lansJSON(fwd []control.Forward) ([]control.LANStatus, []control.Forward) {
	var lans []control.LANStatus
	for _, l := range d.gateway.LANs() {
		querier, self := l.Querier()
		groups := l.Groups()
		st := control.LANStatus{Interface: l.Name(), IsQuerier: self, Groups: groupsJSON(groups), Prefixes: []string{},
			ForeignSources: d.gateway.ForeignSources(l)}
		if querier.IsValid() {
			st.Querier = querier.String()
		}
		for _, p := range l.Prefixes() {
			st.Prefixes = append(st.Prefixes, p.String())
		}
		lans = append(lans, st)
		for _, g := range groups {
			if !d.routable(g.Group) {
				continue
			}
			gj := groupJSON(g)
			to := control.ForwardTo{Interface: l.Name(), Mode: gj.Mode, Sources: gj.Sources, Reason: "listeners on the LAN"}
			i := slices.IndexFunc(fwd, func(f control.Forward) bool { return f.Group == gj.Group })
			if i < 0 {
				fwd = append(fwd, control.Forward{Group: gj.Group})
				i = len(fwd) - 1
			}
			fwd[i].To = append(fwd[i].To, to)
		}
	}
	slices.SortStableFunc(fwd, func(a, b control.Forward) int {
		return netip.MustParseAddr(a.Group).Compare(netip.MustParseAddr(b.Group))
	})
	return lans, fwd
}
