package router

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/librecast/lcast/mld"
)

// Advertised returns what this node subscribes to at the peer at to: the
// groups local programs listen to whose traffic crosses between peers
// and, on a relay, what its other peers subscribed to, one hop further,
// up to MaxHops; merged by group (the union of their source filters, the
// fewest hops), sorted by group. A subscription never goes back to the
// peer it came from, but in a cycle of relays it comes back over the
// cycle, one hop further each time, until MaxHops ends it.
func (r *Router) Advertised(to netip.Addr) []Subscription {
	t := r.table.Load()
	if !r.relay {
		return t.forwarded
	}
	byGroup := map[netip.Addr]Subscription{}
	add := func(s Subscription) {
		if old, ok := byGroup[s.Group]; ok {
			s = mld.Union(old, s)
		}
		byGroup[s.Group] = s
	}
	for _, s := range t.forwarded {
		add(s)
	}
	for a, subs := range t.subs {
		if a == to {
			continue
		}
		for _, s := range subs {
			if s.Hops < MaxHops-1 && r.scope.Forwards(s.Group) {
				s.Hops++
				add(s)
			}
		}
	}
	return slices.SortedFunc(maps.Values(byGroup), func(a, b Subscription) int { return a.Group.Compare(b.Group) })
}

// Route is where this node sends a group's packets: to the peers that
// subscribed, with their subscription. A relay passes packets of the
// group from one of them on to the others.
type Route struct {
	Group netip.Addr
	To    []RouteVia
}

// RouteVia is one peer a group's packets go to, and why: its subscription,
// whose Hops tell whether programs on the peer listen (0) or it relays to
// listeners that many relays beyond.
type RouteVia struct {
	Peer netip.Addr
	Sub  Subscription
}

// Routes returns where each group that some peer subscribed to goes,
// sorted by group, each group's peers in address order.
func (r *Router) Routes() []Route {
	t := r.table.Load()
	out := make([]Route, 0, len(t.groups))
	for _, g := range slices.SortedFunc(maps.Keys(t.groups), netip.Addr.Compare) {
		rt := Route{Group: g}
		for _, s := range t.groups[g] {
			rt.To = append(rt.To, RouteVia{Peer: s.peer.addr, Sub: s.sub})
		}
		out = append(out, rt)
	}
	return out
}
