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
//
// A peer keeps at most Config.MaxAdvertised groups of a state (the first,
// in group order). When the relayed groups would not fit, the local
// groups go first and the other peers share the room left fairly: each
// in turn adds its next group (in group order) until the room is full, so
// that one peer's many groups cannot push the others' out.
//
// A peer's subscriptions are not passed on to the peers it reaches
// directly (SetDirectOf): it gets their packets from them.
func (r *Router) Advertised(to netip.Addr) []Subscription {
	t := r.table.Load()
	if !r.relay {
		return t.forwarded
	}
	return r.relayedAdvert(t, to)
}

// relayedAdvert is Advertised on a relay.
func (r *Router) relayedAdvert(t *Table, to netip.Addr) []Subscription {
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
	var from [][]Subscription // each other peer's relayed groups, in group order
	for _, a := range slices.SortedFunc(maps.Keys(t.subs), netip.Addr.Compare) {
		if a == to {
			continue
		}
		// A peer that reaches to directly gets to's own packets from it:
		// its subscriptions go to to without to's addresses.
		skip := t.directOf[a][to]
		var relayed []Subscription
		for _, s := range t.subs[a] {
			if s.Hops < MaxHops-1 && r.scope.Forwards(s.Group) {
				if skip {
					if s = withoutSources(s, to, linkLocalOf(to)); s.Mode == mld.Include && len(s.Sources) == 0 {
						continue
					}
				}
				s.Hops++
				relayed = append(relayed, s)
			}
		}
		from = append(from, relayed)
	}
	for i := 0; len(from) > 0; i++ {
		from = slices.DeleteFunc(from, func(subs []Subscription) bool { return i >= len(subs) })
		for _, subs := range from {
			if _, ok := byGroup[subs[i].Group]; !ok && len(byGroup) >= r.maxAdvertised {
				continue
			}
			add(subs[i])
		}
	}
	return slices.SortedFunc(maps.Values(byGroup), func(a, b Subscription) int { return a.Group.Compare(b.Group) })
}

// withoutSources returns s without the sources in drop: excluded in
// Exclude mode, removed in Include mode.
func withoutSources(s Subscription, drop ...netip.Addr) Subscription {
	if s.Mode == mld.Include {
		s.Sources = slices.DeleteFunc(slices.Clone(s.Sources), func(a netip.Addr) bool { return slices.Contains(drop, a) })
		return s
	}
	s.Sources = slices.Compact(slices.SortedFunc(slices.Values(slices.Concat(s.Sources, drop)), netip.Addr.Compare))
	return s
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

// SubscribedGroups returns the groups some peer subscribed to, sorted.
func (r *Router) SubscribedGroups() []netip.Addr {
	return slices.SortedFunc(maps.Keys(r.table.Load().groups), netip.Addr.Compare)
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
