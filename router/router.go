package router

import (
	"maps"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/librecast/lcast/internal/clock"
	"github.com/librecast/lcast/internal/ip6"
	"github.com/librecast/lcast/mld"
)

// WrapLen is the size of the headers that wrap a multicast packet for one
// peer: an IPv6 header addressed to the peer's overlay address, so that the
// transport routes and authenticates it as unicast, and lcast's header,
// which names the packet for duplicate suppression:
//
//	IPv6 header (40)  from the node sending to the peer, to the peer; next
//	                  header 253 (RFC 3692's experimental number); hop
//	                  limit: the peer links the packet may still cross
//	0  next header    41: the wrapped packet is IPv6
//	1  version        0
//	2  reserved       0
//	4  epoch          uint32: the originating node's, random per start
//	8  sequence       uint64: the originating node's count of the
//	                  multicast packets it sent, from 1
//	16 the packet, as the originating node's program sent it
//
// A relay passes the packet on with the originator's epoch and sequence,
// so that a node that gets it twice (over two paths) drops the second.
const WrapLen = ipv6HeaderLen + lcastHeaderLen

// ProtoControl is the next header of an IPv6 packet from one node's
// overlay address to a peer's overlay address whose payload is an lcast
// control message (a subscription update, say). Like 253, the wrapped
// multicast's, it is RFC 3692's experimental number: the router makes and
// takes such packets only between peers, never from or into lc0.
const ProtoControl = 254

// MaxHops is how many peer links a multicast packet may cross from the
// node that sent it: at most MaxHops-1 relays pass it on.
const MaxHops = 8

const (
	ipv6HeaderLen  = ip6.HeaderLen
	lcastHeaderLen = 16
	protoLcast     = 253 // lcast's header follows the IPv6 header
	protoIPv6Encap = 41  // the wrapped packet is an IPv6 packet
)

// Reason is why a packet was dropped. The router counts its own drops and,
// through Drop, the bridge's; Drops names each by String, as lcast status
// shows it.
type Reason uint8

// Drop reasons.
const (
	DropScope            Reason = iota // a group whose scope does not cross between peers
	DropNoSubscriber                   // from lc0: no peer wants it
	DropNoListener                     // from a peer: no local program wants it
	DropForgedSource                   // from a peer: inner source is neither the peer's address nor in its LAN prefixes, and the peer is no relay this node trusts
	DropNoRoute                        // unicast to an overlay address of no peer
	DropMalformed                      // not a well-formed IPv6 packet, or control or wrapping forged on lc0
	DropLc0Read                        // a failed read from lc0
	DropLc0Write                       // a failed write into lc0
	DropPeerQueue                      // too many packets already wait for the peer (or for all), or no room to relay
	DropDuplicate                      // from a peer: already received (over another path)
	DropLoop                           // from a relay: a packet this node sent
	DropHopLimit                       // from a peer: a relay would pass it on, but it crossed MaxHops links
	DropTooBig                         // from a peer: larger than this node's MTU, so it cannot be relayed
	DropNotForNode                     // unicast or control from a peer to an address not this node's
	DropLinkLocal                      // from lc0: link traffic that is neither MLD nor for a peer (Router Solicitations...)
	DropControlUnhandled               // a control message from a peer, with no control handler
	DropRelayAhead                     // from a relay: a packet of a sender whose direct path is live, of another epoch or beyond the last packet that came directly
	DropNotOwnSource                   // from lc0: multicast whose source is not this node's overlay or link-local address, nor on its LANs
	DropTransportFull                  // from the underlay: the transport already holds as many received datagrams as it may
	numReasons
)

var reasonNames = [numReasons]string{"scope", "no_subscriber", "no_listener", "forged_source", "no_route", "malformed",
	"lc0_read_error", "lc0_write_error", "peer_queue_full", "duplicate", "loop", "hop_limit", "too_big", "not_for_node",
	"link_local", "control_unhandled", "relay_ahead", "not_own_source", "transport_full"}

// String returns the reason's name in counters and status.
func (r Reason) String() string { return reasonNames[r] }

// peerDrops are the reasons a drop can be told to concern one peer: the
// packets it sent, or those queued for it.
var peerDrops = [...]Reason{DropScope, DropNoListener, DropForgedSource, DropMalformed, DropPeerQueue, DropDuplicate,
	DropLoop, DropHopLimit, DropTooBig, DropNotForNode, DropControlUnhandled, DropRelayAhead}

// Subscription is a group with its source filter, as a peer subscribed to it
// or local programs listen to it.
type Subscription = mld.GroupState

// PeerCounters count the overlay packets (wrapped multicast, unicast and
// control) sent to and received from one peer, and their bytes, and the
// packets from or for the peer that were dropped.
type PeerCounters struct {
	RxPackets, RxBytes, TxPackets, TxBytes atomic.Uint64
	lastRx                                 atomic.Int64 // Unix nanoseconds; 0 before the first
	drops                                  [numReasons]atomic.Uint64
}

// LastRx returns when the last packet from the peer arrived, or the zero
// time before the first.
func (c *PeerCounters) LastRx() time.Time {
	if ns := c.lastRx.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// Drops returns the peer's drop counters by reason name, for each reason
// that can concern one peer (scope, no_listener, forged_source, malformed,
// peer_queue_full, duplicate, loop, hop_limit, too_big, not_for_node,
// control_unhandled and relay_ahead).
func (c *PeerCounters) Drops() map[string]uint64 {
	out := make(map[string]uint64, len(peerDrops))
	for _, r := range peerDrops {
		out[r.String()] = c.drops[r].Load()
	}
	return out
}

// Dropped returns the peer's count of drops for reason.
func (c *PeerCounters) Dropped(reason Reason) uint64 { return c.drops[reason].Load() }

// Sent counts one packet of n bytes to the peer.
func (c *PeerCounters) Sent(n int) {
	c.TxPackets.Add(1)
	c.TxBytes.Add(uint64(n))
}

// received counts one packet of n bytes from the peer, arrived at now.
func (c *PeerCounters) received(n int, now time.Time) {
	c.RxPackets.Add(1)
	c.RxBytes.Add(uint64(n))
	c.lastRx.Store(now.UnixNano())
}

// Peer is a peer as the data path sees it. It lives as long as the peer is
// configured, across table rebuilds, so its counters are never lost.
type Peer struct {
	addr     netip.Addr
	counters PeerCounters
	// Waiting counts the peer's packets handed to the transport and not
	// yet sent. The bridge keeps it, and bounds it when it admits packets
	// (see Route).
	Waiting atomic.Int32
}

// Addr returns the peer's overlay address.
func (p *Peer) Addr() netip.Addr { return p.addr }

// Table is the forwarding state read on every packet. It is immutable: the
// control path builds a new one and swaps it in.
type Table struct {
	peers     map[netip.Addr]*Peer
	linkLocal map[netip.Addr]*Peer          // peers by their link-local address
	subs      map[netip.Addr][]Subscription // by peer
	relays    map[netip.Addr]bool           // peers this node's config trusts to pass on other nodes' packets
	lans      map[netip.Addr][]netip.Prefix // by peer: the sources on the LANs behind that gateway peer
	ownLANs   []netip.Prefix                // the sources on this gateway's LANs
	groups    map[netip.Addr][]subscriber   // group -> peers that subscribed
	paths     map[netip.Addr]Path           // by peer: how this node reaches it (absent: not direct, no relay)
	// directOf holds, by peer, the addresses (overlay and link-local) of
	// the peers it reports reaching directly: a relay passes none of
	// their packets on to it (SetDirectOf).
	directOf map[netip.Addr]map[netip.Addr]bool
	local    []Subscription // groups local programs listen to, sorted by group
	// forwarded are those of local whose traffic crosses between peers
	// (local itself when that is all of them).
	forwarded []Subscription
}

type subscriber struct {
	peer *Peer
	sub  Subscription
}

// Router decides where packets between lc0 and the peer transport go; the
// bridge package moves them. Packets local programs send into lc0 go,
// wrapped, to exactly the peers that subscribed to their group and source,
// once each; packets from peers go into lc0 when a local program listens.
// Unicast between nodes' overlay or link-local addresses passes both ways,
// and so do control messages (ProtoControl) between peers.
//
// A relay (Config.Relay) also passes packets from each peer on to its other
// peers that subscribed, and subscribes at each peer for what its other
// peers subscribed to (Advertised). A node takes packets with other nodes'
// sources only from the peers its own configuration trusts as relays
// (SetPeers); what a peer says of itself makes it none. Every multicast
// packet carries its originator's epoch and sequence number, and every
// node drops a packet it has already received, so that a topology of relays with cycles delivers
// each packet once to each node (the cycles carry it twice, and the second
// copy stops where it meets the first); the hop limit bounds how far it
// travels while subscriptions settle. Packets that come straight from
// their sender and those that come through relays are told apart (see
// seen), so that no relayed packet can make a sender's direct ones look
// like duplicates.
//
// A Router starts no goroutines. Its control methods (SetPeers, SetLocal,
// ...) and Route may be called concurrently; Deliver by one goroutine at a
// time.
type Router struct {
	self    netip.Addr
	selfLL  netip.Addr // this node's link-local address
	overlay netip.Prefix
	scope   ScopePolicy
	relay   bool
	mtu     int
	epoch   uint32
	// maxAdvertised is Config.MaxAdvertised, or math.MaxInt.
	maxAdvertised int
	clock         clock.Clock
	seq           atomic.Uint64 // the sequence number of the last packet from lc0

	mu    sync.Mutex // serializes table rebuilds
	table atomic.Pointer[Table]
	drops [numReasons]atomic.Uint64

	seen seen // used only by Deliver
}

// Config is what a Router is made with.
type Config struct {
	// Self is this node's overlay address, within Overlay, the prefix of
	// every node's overlay address.
	Self    netip.Addr
	Overlay netip.Prefix
	Scope   ScopePolicy
	// Relay makes the node pass multicast between its peers.
	Relay bool
	// MTU is lc0's: a relay drops packets larger (DropTooBig). Zero is
	// 65535.
	MTU int
	// MaxAdvertised is how many groups of a state a peer keeps (see
	// Advertised). Zero is no limit.
	MaxAdvertised int
	// Clock stamps what arrives from peers; nil is clock.Real.
	Clock clock.Clock
}

// New returns a Router with no peers.
func New(cfg Config) *Router {
	r := &Router{self: cfg.Self, selfLL: linkLocalOf(cfg.Self), overlay: cfg.Overlay.Masked(), scope: cfg.Scope, relay: cfg.Relay, mtu: cfg.MTU,
		maxAdvertised: cfg.MaxAdvertised, clock: clock.Or(cfg.Clock),
		epoch: rand.Uint32() | 1}
	if r.mtu <= 0 {
		r.mtu = 65535
	}
	if r.maxAdvertised <= 0 {
		r.maxAdvertised = math.MaxInt
	}
	r.table.Store(newTable())
	r.seen.init()
	return r
}

func newTable() *Table {
	return &Table{
		peers:     map[netip.Addr]*Peer{},
		linkLocal: map[netip.Addr]*Peer{},
		subs:      map[netip.Addr][]Subscription{},
		relays:    map[netip.Addr]bool{},
		lans:      map[netip.Addr][]netip.Prefix{},
		groups:    map[netip.Addr][]subscriber{},
		paths:     map[netip.Addr]Path{},
		directOf:  map[netip.Addr]map[netip.Addr]bool{},
	}
}

// Relay reports whether the router passes multicast between its peers.
func (r *Router) Relay() bool { return r.relay }

// Self returns this node's overlay address.
func (r *Router) Self() netip.Addr { return r.self }

// Table returns the forwarding state now, to route and deliver packets
// with.
func (r *Router) Table() *Table { return r.table.Load() }

// SetPeers sets the overlay addresses of the peers, and which of them
// this node's configuration trusts as relays ([[peer]] relay = true): only
// their wrapped multicast may carry other nodes' sources. Peers that stay
// keep their subscriptions, counters and LAN prefixes.
func (r *Router) SetPeers(addrs, relays []netip.Addr) {
	r.update(func(old, t *Table) {
		for _, a := range addrs {
			if p, ok := old.peers[a]; ok {
				t.peers[a] = p
				t.subs[a] = old.subs[a]
				if ps, ok := old.lans[a]; ok {
					t.lans[a] = ps
				}
				if pa, ok := old.paths[a]; ok {
					t.paths[a] = pa
				}
				if d, ok := old.directOf[a]; ok {
					t.directOf[a] = d
				}
			} else {
				t.peers[a] = &Peer{addr: a}
			}
		}
		for _, a := range relays {
			if _, ok := t.peers[a]; ok {
				t.relays[a] = true
			}
		}
	})
}

// SetLANPrefixes sets, by peer, the prefixes of the LANs behind the peers
// that are gateways ([[peer]] lan_prefixes): a peer's multicast may carry
// a source in its own prefixes, as well as its own address. Peers not in
// byPeer have none.
func (r *Router) SetLANPrefixes(byPeer map[netip.Addr][]netip.Prefix) {
	r.update(func(old, t *Table) {
		t.keepPeers(old)
		t.lans = map[netip.Addr][]netip.Prefix{}
		for a, ps := range byPeer {
			if _, ok := t.peers[a]; ok {
				t.lans[a] = slices.Clone(ps)
			}
		}
	})
}

// SetOwnLANs sets the prefixes of this gateway's LANs: multicast read from
// lc0 may carry a source in them (a LAN host's packet that the kernel
// routed into lc0), as well as this node's own addresses.
func (r *Router) SetOwnLANs(prefixes []netip.Prefix) {
	r.update(func(old, t *Table) {
		t.keepPeers(old)
		t.ownLANs = slices.Clone(prefixes)
	})
}

// SetSubscriptions replaces the groups the peer at addr subscribed to.
// Whatever the peer says of itself, it does not make it a relay: only
// SetPeers does.
func (r *Router) SetSubscriptions(addr netip.Addr, subs []Subscription) {
	r.update(func(old, t *Table) {
		t.keepPeers(old)
		if _, ok := t.peers[addr]; ok {
			t.subs[addr] = slices.Clone(subs)
		}
	})
}

// SetLocal replaces the groups local programs listen to. The router keeps
// groups (sorting it by group if it is not), so the caller must not change
// it afterwards.
func (r *Router) SetLocal(groups []Subscription) {
	byGroup := func(a, b Subscription) int { return a.Group.Compare(b.Group) }
	if !slices.IsSortedFunc(groups, byGroup) {
		slices.SortFunc(groups, byGroup)
	}
	r.update(func(old, t *Table) {
		t.keepPeers(old)
		t.local, t.forwarded = groups, r.forwarded(groups)
	})
}

// keepPeers carries old's peers, their subscriptions, which of them are
// trusted relays and their LAN prefixes over into t.
func (t *Table) keepPeers(old *Table) {
	maps.Copy(t.peers, old.peers)
	maps.Copy(t.subs, old.subs)
	maps.Copy(t.relays, old.relays)
	maps.Copy(t.lans, old.lans)
	maps.Copy(t.paths, old.paths)
	maps.Copy(t.directOf, old.directOf)
}

// SetDirectOf sets, by peer, the peers (overlay addresses) each reports
// reaching directly. On a relay, the packets those peers send are not
// passed on to it, and its subscriptions are not passed on to them: it
// gets their packets straight from them. What a peer reports affects
// only what it gets itself. Peers not in byPeer reach none directly.
func (r *Router) SetDirectOf(byPeer map[netip.Addr][]netip.Addr) {
	r.update(func(old, t *Table) {
		t.keepPeers(old)
		t.directOf = map[netip.Addr]map[netip.Addr]bool{}
		for p, addrs := range byPeer {
			if _, ok := t.peers[p]; !ok || len(addrs) == 0 {
				continue
			}
			set := make(map[netip.Addr]bool, 2*len(addrs))
			for _, a := range addrs {
				set[a], set[linkLocalOf(a)] = true, true
			}
			t.directOf[p] = set
		}
	})
}

// Path is how this node reaches a peer.
type Path struct {
	// Direct tells that the session with the peer carries traffic both
	// ways and the peer applied this node's subscriptions, so the peer's
	// own multicast comes straight from it: a relay is told not to pass
	// it on (see Advertised), and relayed copies count as such only while
	// the direct path is down (see seen).
	Direct bool
	// Via is the relay that unicast to the peer goes through while the
	// path is not direct; invalid (or no peer) to send it straight.
	Via netip.Addr
}

// SetPaths sets how this node reaches each peer; peers not in paths
// have no direct path and no relay. Paths of addresses that are no
// peers are ignored.
func (r *Router) SetPaths(paths map[netip.Addr]Path) {
	r.update(func(old, t *Table) {
		t.keepPeers(old)
		t.paths = map[netip.Addr]Path{}
		for a, pa := range paths {
			if _, ok := t.peers[a]; ok {
				t.paths[a] = pa
			}
		}
	})
}

// Peers returns the overlay addresses of the peers, sorted.
func (r *Router) Peers() []netip.Addr {
	return slices.SortedFunc(maps.Keys(r.table.Load().peers), netip.Addr.Compare)
}

// Path returns how this node reaches the peer at addr.
func (r *Router) Path(addr netip.Addr) Path { return r.table.Load().paths[addr] }

// relayedPath reports whether the node that sent from address a is a
// peer whose direct path is down while a relay carries its packets.
func (t *Table) relayedPath(a netip.Addr) bool {
	p := t.peerOf(a)
	if p == nil {
		return false
	}
	pa, ok := t.paths[p.addr]
	return ok && !pa.Direct && pa.Via.IsValid()
}

// forwarded returns the groups whose traffic crosses between peers: groups
// itself when that is all of them.
func (r *Router) forwarded(groups []Subscription) []Subscription {
	i := slices.IndexFunc(groups, func(g Subscription) bool { return !r.scope.Forwards(g.Group) })
	if i < 0 {
		return groups
	}
	out := slices.Clone(groups[:i])
	for _, g := range groups[i+1:] {
		if r.scope.Forwards(g.Group) {
			out = append(out, g)
		}
	}
	return out
}

// listener returns the local listeners' subscription to group.
func (t *Table) listener(group netip.Addr) (Subscription, bool) {
	i, ok := slices.BinarySearchFunc(t.local, group, func(s Subscription, g netip.Addr) int { return s.Group.Compare(g) })
	if !ok {
		return Subscription{}, false
	}
	return t.local[i], true
}

// update builds a new table with fill (which sets peers and subs; local is
// carried over unless fill replaces it), indexes it by group and by the
// peers' link-local addresses, and swaps it in.
func (r *Router) update(fill func(old, t *Table)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.table.Load()
	t := newTable()
	t.local, t.forwarded, t.ownLANs = old.local, old.forwarded, old.ownLANs
	fill(old, t)
	for a, p := range t.peers {
		t.linkLocal[linkLocalOf(a)] = p
	}
	for _, a := range slices.SortedFunc(maps.Keys(t.subs), netip.Addr.Compare) {
		for _, s := range t.subs[a] {
			if r.scope.Forwards(s.Group) {
				t.groups[s.Group] = append(t.groups[s.Group], subscriber{peer: t.peers[a], sub: s})
			}
		}
	}
	r.table.Store(t)
}

// Subscriptions returns the groups the peer at addr subscribed to.
func (r *Router) Subscriptions(addr netip.Addr) []Subscription {
	return r.table.Load().subs[addr]
}

// TrustsRelay reports whether this node's configuration trusts the peer
// at addr as a relay (SetPeers).
func (r *Router) TrustsRelay(addr netip.Addr) bool { return r.table.Load().relays[addr] }

// Counters returns the counters of the peer at addr, or nil.
func (r *Router) Counters(addr netip.Addr) *PeerCounters {
	if p, ok := r.table.Load().peers[addr]; ok {
		return &p.counters
	}
	return nil
}

// Drop counts a dropped packet by reason, for the peer p too unless p is
// nil. The bridge counts its drops (lc0 I/O, queues, link traffic) here,
// so that Drops has them all.
func (r *Router) Drop(reason Reason, p *Peer) {
	r.drops[reason].Add(1)
	if p != nil {
		p.counters.drops[reason].Add(1)
	}
}

// Drops returns the drop counters by reason name.
func (r *Router) Drops() map[string]uint64 {
	out := make(map[string]uint64, numReasons)
	for i := range numReasons {
		out[i.String()] = r.drops[i].Load()
	}
	return out
}

// Dropped returns the count of drops for reason.
func (r *Router) Dropped(reason Reason) uint64 { return r.drops[reason].Load() }
