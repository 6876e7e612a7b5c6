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
// Toward a peer this node trusts as a relay, the sources of the peers it
// has a direct path to (Path.Direct) are excluded from every group: their
// packets come straight, and the relay passes none of them on to this
// node.
func (r *Router) Advertised(to netip.Addr) []Subscription {
	t := r.table.Load()
	subs := t.forwarded
	if r.relay {
		subs = r.relayedAdvert(t, to)
	}
	if t.relays[to] {
		subs = t.withoutDirect(subs, to)
	}
	return subs
}

// withoutDirect returns subs without the sources of the peers other than
// to that this node has a direct path to: excluded in Exclude mode,
// removed in Include mode (a group left with none is left out). A
// link-scope group excludes their link-local addresses too.
func (t *Table) withoutDirect(subs []Subscription, to netip.Addr) []Subscription {
	var direct, directLL []netip.Addr
	for a, pa := range t.paths {
		if pa.Direct && a != to {
			direct = append(direct, a)
		}
	}
	if len(direct) == 0 {
		return subs
	}
	slices.SortFunc(direct, netip.Addr.Compare)
	for _, a := range direct {
		directLL = append(directLL, linkLocalOf(a))
	}
	directLL = slices.SortedFunc(slices.Values(slices.Concat(direct, directLL)), netip.Addr.Compare)
	out := make([]Subscription, 0, len(subs))
	for _, s := range subs {
		skip := direct
		if s.Group.As16()[1]&0x0f <= ScopeLinkLocal {
			skip = directLL
		}
		if s.Mode == mld.Include {
			s.Sources = slices.DeleteFunc(slices.Clone(s.Sources), func(a netip.Addr) bool {
				_, found := slices.BinarySearchFunc(skip, a, netip.Addr.Compare)
				return found
			})
			if len(s.Sources) == 0 {
				continue
			}
		} else {
			s.Sources = slices.Compact(slices.SortedFunc(slices.Values(slices.Concat(s.Sources, skip)), netip.Addr.Compare))
		}
		out = append(out, s)
	}
	return out
}

// relayedAdvert is Advertised on a relay, before withoutDirect.
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
		var relayed []Subscription
		for _, s := range t.subs[a] {
			if s.Hops < MaxHops-1 && r.scope.Forwards(s.Group) {
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
