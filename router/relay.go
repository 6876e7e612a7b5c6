package router

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/librecast/lcast/mld"
	"golang.zx2c4.com/wireguard/replay"
)

// maxOrigins bounds how many sending nodes the router remembers packets of
// (a window of about 1 KiB each). Beyond it, a node it forgets may have
// packets delivered twice.
const maxOrigins = 4096

// seen remembers which packets arrived lately, by the address that sent
// them (a node's overlay or link-local address), its epoch and sequence
// number, in a sliding window of 8128 sequence numbers (RFC 6479). A new
// epoch (the node restarted) starts a new window, and packets of the
// epoch before it count as seen.
type seen struct {
	from map[netip.Addr]*window
}

type window struct {
	epoch, prev uint32
	filter      replay.Filter
}

func (s *seen) init() { s.from = map[netip.Addr]*window{} }

// first reports whether the packet seq of epoch from sender arrives for
// the first time, and remembers it.
func (s *seen) first(sender netip.Addr, epoch uint32, seq uint64) bool {
	w, ok := s.from[sender]
	if !ok {
		if len(s.from) >= maxOrigins {
			for a := range s.from { // forget any one
				delete(s.from, a)
				break
			}
		}
		w = &window{epoch: epoch}
		s.from[sender] = w
	}
	switch epoch {
	case w.epoch:
	case w.prev:
		return false
	default:
		w.prev, w.epoch = w.epoch, epoch
		w.filter.Reset()
	}
	return w.filter.ValidateCounter(seq, ^uint64(0))
}

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
