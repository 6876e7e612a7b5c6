package router

import (
	"encoding/binary"
	"errors"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/librecast/lcast/internal/ip6"
	"github.com/librecast/lcast/mld"
	wgtun "golang.zx2c4.com/wireguard/tun"
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

// MaxHops is how many peer links a multicast packet may cross from the
// node that sent it: at most MaxHops-1 relays pass it on.
const MaxHops = 8

const (
	ipv6HeaderLen  = ip6.HeaderLen
	lcastHeaderLen = 16
	protoLcast     = 253 // lcast's header follows the IPv6 header
	protoIPv6Encap = 41  // the wrapped packet is an IPv6 packet
)

// Drop reasons, as Drops counts them (and lcast status shows them).
const (
	DropScope        = "scope"          // a group whose scope does not cross between peers
	DropNoSubscriber = "no_subscriber"  // from lc0: no peer wants it
	DropNoListener   = "no_listener"    // from a peer: no local program wants it
	DropForgedSource = "forged_source"  // from a peer: inner source is not the peer's address
	DropNoRoute      = "no_route"       // unicast to an overlay address of no peer
	DropMalformed    = "malformed"      // not a well-formed IPv6 packet
	DropLc0Read      = "lc0_read_error" // a failed read from lc0
	DropLc0Write     = "lc0_write_error"
	DropPeerQueue    = "peer_queue_full" // PeerQueueLimit packets already wait for the peer, or QueueLimit for all, or no room to relay
	DropDuplicate    = "duplicate"       // from a peer: already received (over another path)
	DropLoop         = "loop"            // from a relay: a packet this node sent
	DropHopLimit     = "hop_limit"       // from a peer: a relay would pass it on, but it crossed MaxHops links
	DropTooBig       = "too_big"         // from a peer: larger than this node's MTU, so it cannot be relayed
)

// dropReasons lists the reasons in counter order.
var dropReasons = [...]string{DropScope, DropNoSubscriber, DropNoListener, DropForgedSource, DropNoRoute, DropMalformed, DropLc0Read, DropLc0Write, DropPeerQueue,
	DropDuplicate, DropLoop, DropHopLimit, DropTooBig}

// peerDrops are the counters of the reasons a drop can be told to concern
// one peer: the packets it sent, or those queued for it.
var peerDrops = [...]int{dScope, dNoListener, dForgedSource, dMalformed, dPeerQueue, dDuplicate, dLoop, dHopLimit, dTooBig}

const (
	dScope = iota
	dNoSubscriber
	dNoListener
	dForgedSource
	dNoRoute
	dMalformed
	dLc0Read
	dLc0Write
	dPeerQueue
	dDuplicate
	dLoop
	dHopLimit
	dTooBig
)

// Subscription is a group with its source filter, as a peer subscribed to it
// or local programs listen to it.
type Subscription = mld.GroupState

// PeerCounters count the overlay packets (wrapped multicast and unicast)
// the router sent to and received from one peer, and their bytes, and the
// packets from or for the peer it dropped.
type PeerCounters struct {
	RxPackets, RxBytes, TxPackets, TxBytes atomic.Uint64
	drops                                  [len(dropReasons)]atomic.Uint64
}

// Drops returns the peer's drop counters by reason, for each reason that
// can concern one peer (peerDrops: scope, no_listener, forged_source,
// malformed, peer_queue_full, duplicate, loop, hop_limit and too_big).
func (c *PeerCounters) Drops() map[string]uint64 {
	out := make(map[string]uint64, len(peerDrops))
	for _, i := range peerDrops {
		out[dropReasons[i]] = c.drops[i].Load()
	}
	return out
}

// sent counts one packet of n bytes to the peer.
func (c *PeerCounters) sent(n int) {
	c.TxPackets.Add(1)
	c.TxBytes.Add(uint64(n))
}

// received counts one packet of n bytes from the peer.
func (c *PeerCounters) received(n int) {
	c.RxPackets.Add(1)
	c.RxBytes.Add(uint64(n))
}

// routerPeer is a peer as the data path sees it. It lives as long as the
// peer is configured, across table rebuilds, so its counters are never lost.
type routerPeer struct {
	addr     netip.Addr
	counters PeerCounters
	queued   atomic.Int32  // packets waiting in the transport (see queued)
	total    *atomic.Int32 // packets waiting for any peer
}

// admit reports whether another packet may wait in the transport for the
// peer, and counts it if so.
func (p *routerPeer) admit() bool {
	if p.queued.Load() >= PeerQueueLimit || p.total.Load() >= QueueLimit {
		return false
	}
	p.queued.Add(1)
	p.total.Add(1)
	return true
}

// release ends the wait of one of the peer's packets.
func (p *routerPeer) release() {
	p.queued.Add(-1)
	p.total.Add(-1)
}

// table is the forwarding state read on every packet. It is immutable: the
// control path builds a new one and swaps it in.
type table struct {
	peers  map[netip.Addr]*routerPeer
	subs   map[netip.Addr][]Subscription // by peer
	relays map[netip.Addr]bool           // peers that said they relay
	groups map[netip.Addr][]subscriber   // group -> peers that subscribed
	local  []Subscription                // groups local programs listen to, sorted by group
	// forwarded are those of local whose traffic crosses between peers
	// (local itself when that is all of them).
	forwarded []Subscription
}

type subscriber struct {
	peer *routerPeer
	sub  Subscription
}

// Router forwards between lc0 and the peer transport. Packets local programs
// send into lc0 go, wrapped, to exactly the peers that subscribed to their
// group and source, once each; packets from peers go into lc0 when a local
// program listens. Unicast between overlay addresses passes both ways.
//
// Port returns the transport's side of the router as a tun.Device: the
// transport reads from it what goes to peers and writes into it what peers
// sent.
//
// A relay (Config.Relay) also passes packets from each peer on to its other
// peers that subscribed, and subscribes at each peer for what its other
// peers subscribed to (Advertised). Every multicast packet carries its
// originator's epoch and sequence number, and every node drops a packet it
// has already received, so that a topology of relays with cycles delivers
// each packet once to each node (the cycles carry it twice, and the second
// copy stops where it meets the first); the hop limit bounds how far it
// travels while subscriptions settle.
type Router struct {
	lc0       wgtun.Device
	self      netip.Addr
	overlay   netip.Prefix
	scope     ScopePolicy
	relay     bool
	linkLocal func(pkt []byte)
	epoch     uint32

	mu    sync.Mutex // serializes table rebuilds
	table atomic.Pointer[table]
	drops [len(dropReasons)]atomic.Uint64

	seen seen // used only by the Port's Write, under its lock
	port Port
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
	// LinkLocal receives the packets from lc0 that stay on the link (MLD
	// reports, Router Solicitations...); it must not keep pkt.
	LinkLocal func(pkt []byte)
}

// New returns a Router between lc0 and the peers.
func New(lc0 wgtun.Device, cfg Config) *Router {
	r := &Router{lc0: lc0, self: cfg.Self, overlay: cfg.Overlay.Masked(), scope: cfg.Scope, relay: cfg.Relay, linkLocal: cfg.LinkLocal,
		epoch: rand.Uint32() | 1}
	r.table.Store(&table{
		peers:  map[netip.Addr]*routerPeer{},
		subs:   map[netip.Addr][]Subscription{},
		relays: map[netip.Addr]bool{},
		groups: map[netip.Addr][]subscriber{},
	})
	r.seen.init()
	r.port.init(r)
	return r
}

// SetPeers sets the overlay addresses of the peers. Peers that stay keep
// their subscriptions and counters.
func (r *Router) SetPeers(addrs []netip.Addr) {
	r.update(func(old, t *table) {
		for _, a := range addrs {
			if p, ok := old.peers[a]; ok {
				t.peers[a] = p
				t.subs[a] = old.subs[a]
				t.relays[a] = old.relays[a]
			} else {
				t.peers[a] = &routerPeer{addr: a, total: &r.port.queue.total}
			}
		}
	})
}

// SetSubscriptions replaces the groups the peer at addr subscribed to, and
// whether it relays (passes on packets that other nodes sent).
func (r *Router) SetSubscriptions(addr netip.Addr, relay bool, subs []Subscription) {
	r.update(func(old, t *table) {
		t.keepPeers(old)
		if _, ok := t.peers[addr]; ok {
			t.subs[addr] = slices.Clone(subs)
			t.relays[addr] = relay
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
	r.update(func(old, t *table) {
		t.keepPeers(old)
		t.local, t.forwarded = groups, r.forwarded(groups)
	})
}

// keepPeers carries old's peers, their subscriptions and relay flags over
// into t.
func (t *table) keepPeers(old *table) {
	maps.Copy(t.peers, old.peers)
	maps.Copy(t.subs, old.subs)
	maps.Copy(t.relays, old.relays)
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
func (t *table) listener(group netip.Addr) (Subscription, bool) {
	i, ok := slices.BinarySearchFunc(t.local, group, func(s Subscription, g netip.Addr) int { return s.Group.Compare(g) })
	if !ok {
		return Subscription{}, false
	}
	return t.local[i], true
}

// update builds a new table with fill (which sets peers and subs; local is
// carried over unless fill replaces it), indexes it by group and swaps it in.
func (r *Router) update(fill func(old, t *table)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.table.Load()
	t := &table{
		peers:  map[netip.Addr]*routerPeer{},
		subs:   map[netip.Addr][]Subscription{},
		relays: map[netip.Addr]bool{},
		groups: map[netip.Addr][]subscriber{},
		local:  old.local,

		forwarded: old.forwarded,
	}
	fill(old, t)
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

// Relays reports whether the peer at addr said it relays.
func (r *Router) Relays(addr netip.Addr) bool { return r.table.Load().relays[addr] }

// Counters returns the counters of the peer at addr, or nil.
func (r *Router) Counters(addr netip.Addr) *PeerCounters {
	if p, ok := r.table.Load().peers[addr]; ok {
		return &p.counters
	}
	return nil
}

// drop counts a dropped packet by reason, for the peer p too unless nil.
func (r *Router) drop(reason int, p *routerPeer) {
	r.drops[reason].Add(1)
	if p != nil {
		p.counters.drops[reason].Add(1)
	}
}

// Drops returns the drop counters by reason.
func (r *Router) Drops() map[string]uint64 {
	out := make(map[string]uint64, len(dropReasons))
	for i, name := range dropReasons {
		out[name] = r.drops[i].Load()
	}
	return out
}

// Port returns the transport's side of the router.
func (r *Router) Port() *Port { return &r.port }

// origin is how a packet to route came: from lc0, sent by this node (from
// is nil), or from a peer, to relay. It holds the packet's lcast header.
type origin struct {
	from  *routerPeer
	epoch uint32
	seq   uint64
	hops  uint8 // the hop limit to send it with
}

// route decides where one packet goes, read from lc0 or relayed (o). It
// writes into out (which has room for WrapLen+len(pkt) from index 0) the
// packet for the subscriber at *next, advances *next, and returns the length
// written and the peer it goes to, or 0 when the packet has no (more)
// destinations. A relayed packet goes to no peer it came from or through.
// Peers whose queue in the transport is full are skipped (and the drop
// counted); the peer returned has the packet counted as queued.
func (r *Router) route(t *table, pkt []byte, o *origin, next *int, out []byte) (int, *routerPeer) {
	if len(pkt) < ipv6HeaderLen || pkt[0]>>4 != 6 {
		if *next == 0 {
			r.drop(dMalformed, nil)
		}
		return 0, nil
	}
	dst := netip.AddrFrom16([16]byte(pkt[24:40]))
	if !dst.IsMulticast() {
		if *next > 0 || o.from != nil {
			return 0, nil
		}
		*next = 1
		p, ok := t.peers[dst]
		switch {
		case !ok && dst.IsLinkLocalUnicast():
			r.linkLocal(pkt)
			return 0, nil
		case !ok:
			r.drop(dNoRoute, nil)
			return 0, nil
		case pkt[6] == protoLcast:
			// Only the router wraps: a program's packet must not pass
			// for a relayed one at the peer.
			r.drop(dMalformed, p)
			return 0, nil
		case !p.admit():
			r.drop(dPeerQueue, p)
			return 0, nil
		}
		n := copy(out, pkt)
		p.counters.sent(n)
		return n, p
	}
	if !r.scope.Forwards(dst) {
		if *next == 0 {
			*next = 1
			if dst.As16()[1]&0x0f <= ScopeLinkLocal {
				r.linkLocal(pkt)
			} else {
				r.drop(dScope, nil)
			}
		}
		return 0, nil
	}
	subs := t.groups[dst]
	if *next == 0 && len(subs) == 0 && o.from == nil {
		r.drop(dNoSubscriber, nil)
	}
	src := netip.AddrFrom16([16]byte(pkt[8:24]))
	for *next < len(subs) {
		s := subs[*next]
		*next++
		if !s.takes(src, o.from) {
			continue
		}
		if !s.peer.admit() {
			r.drop(dPeerQueue, s.peer)
			continue
		}
		wrap(out, r.self, s.peer.addr, len(pkt), o)
		n := WrapLen + copy(out[WrapLen:], pkt)
		s.peer.counters.sent(n)
		return n, s.peer
	}
	return 0, nil
}

// wrap writes the headers that carry a packet of innerLen bytes from src to
// dst, with o's lcast header.
func wrap(b []byte, src, dst netip.Addr, innerLen int, o *origin) {
	b[0], b[1], b[2], b[3] = 0x60, 0, 0, 0
	binary.BigEndian.PutUint16(b[4:6], uint16(lcastHeaderLen+innerLen))
	b[6], b[7] = protoLcast, o.hops
	s, d := src.As16(), dst.As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	h := b[ipv6HeaderLen:WrapLen]
	h[0], h[1], h[2], h[3] = protoIPv6Encap, 0, 0, 0
	binary.BigEndian.PutUint32(h[4:8], o.epoch)
	binary.BigEndian.PutUint64(h[8:16], o.seq)
}

// deliver checks one packet from a peer (after the transport authenticated
// it). It returns the offset within pkt of what to write into lc0, or -1
// not to, and whether to relay the wrapped packet, as o describes.
func (r *Router) deliver(t *table, pkt []byte, o *origin) (toLc0 int, relay bool) {
	if len(pkt) < ipv6HeaderLen || pkt[0]>>4 != 6 {
		r.drop(dMalformed, nil)
		return -1, false
	}
	src := netip.AddrFrom16([16]byte(pkt[8:24]))
	p, ok := t.peers[src]
	if !ok {
		// The transport admits only peers' overlay addresses as sources.
		r.drop(dForgedSource, nil)
		return -1, false
	}
	p.counters.received(len(pkt))
	if pkt[6] != protoLcast {
		return 0, false // unicast to us: the transport checked the destination
	}
	if len(pkt) < WrapLen+ipv6HeaderLen || pkt[ipv6HeaderLen] != protoIPv6Encap || pkt[WrapLen]>>4 != 6 {
		r.drop(dMalformed, p)
		return -1, false
	}
	inner := pkt[WrapLen:]
	// Decision 3: the inner source must be the peer's own address, or for
	// link-scope groups its link-local address; a relay's packets may
	// carry any node's.
	innerSrc := [16]byte(inner[8:24])
	if innerSrc != src.As16() && !isLinkLocalOf(innerSrc, src) {
		switch {
		case !t.relays[src] || !r.isNodeAddr(innerSrc):
			r.drop(dForgedSource, p)
			return -1, false
		case innerSrc == r.self.As16() || isLinkLocalOf(innerSrc, r.self):
			r.drop(dLoop, p)
			return -1, false
		}
	}
	group := netip.AddrFrom16([16]byte(inner[24:40]))
	if !group.IsMulticast() || !r.scope.Forwards(group) {
		r.drop(dScope, p)
		return -1, false
	}
	sender := netip.AddrFrom16(innerSrc)
	o.from, o.hops = p, pkt[7]-1
	o.epoch = binary.BigEndian.Uint32(pkt[ipv6HeaderLen+4:])
	o.seq = binary.BigEndian.Uint64(pkt[ipv6HeaderLen+8:])
	if !r.seen.first(sender, o.epoch, o.seq) {
		r.drop(dDuplicate, p)
		return -1, false
	}
	l, ok := t.listener(group)
	local := ok && l.Wants(sender)
	relay = r.relay && t.wantedBeyond(group, sender, p)
	switch {
	case relay && pkt[7] <= 1:
		r.drop(dHopLimit, p)
		relay = false
	case relay && len(inner) > r.port.mtu:
		r.drop(dTooBig, p)
		relay = false
	case !relay && !local:
		r.drop(dNoListener, p)
	}
	if !local {
		return -1, relay
	}
	return WrapLen, relay
}

// wantedBeyond reports whether a subscriber of group takes a packet from
// sender that came from the peer from.
func (t *table) wantedBeyond(group, sender netip.Addr, from *routerPeer) bool {
	return slices.ContainsFunc(t.groups[group], func(s subscriber) bool { return s.takes(sender, from) })
}

// takes reports whether the subscriber gets a packet from src that came from
// the peer from (nil: from lc0): it wants src, and is neither the peer the
// packet came from nor src's own node.
func (s subscriber) takes(src netip.Addr, from *routerPeer) bool {
	return s.sub.Wants(src) && s.peer != from && s.peer.addr != src
}

// isNodeAddr reports whether a is an address a node sends multicast from:
// its overlay address or its link-local one.
func (r *Router) isNodeAddr(a [16]byte) bool {
	return r.overlay.Contains(netip.AddrFrom16(a)) || isLinkLocal(a)
}

// isLinkLocalOf reports whether a is fe80::/64 with the interface
// identifier of the overlay address overlay (peer.LinkLocalAddr).
func isLinkLocalOf(a [16]byte, overlay netip.Addr) bool {
	o := overlay.As16()
	return isLinkLocal(a) && [8]byte(a[8:]) == [8]byte(o[8:])
}

// isLinkLocal reports whether a is in fe80::/64, where lc0's link-local
// addresses lie.
func isLinkLocal(a [16]byte) bool { return [8]byte(a[:8]) == [8]byte{0xfe, 0x80} }

// Port is the transport's side of the router, a tun.Device: Read hands out
// packets for peers, routed from lc0; Write takes packets from peers; Sent
// learns which of the packets Read handed out the transport sent, so that
// at most PeerQueueLimit wait for each peer (QueueLimit for all).
//
// A goroutine (readLc0) reads lc0 into a bounded set of batches, so that
// when the transport is busy the packets that arrive meanwhile are routed
// and handed over together: lc0 yields one datagram per read, and the
// transport encrypts and sends a batch far cheaper than as many single
// packets. The goroutine ends when lc0 is closed. On a relay, Write adds
// batches of the packets from peers to pass on.
type Port struct {
	r   *Router
	mtu int // lc0's, the size of a batch's buffers

	free chan *batch // batches readLc0 may fill
	full chan *batch // filled batches, in order
	// lc0Done is closed when lc0 is: Read returns os.ErrClosed once it
	// has routed what came before.
	lc0Done chan struct{}

	// Read state, owned by the transport's single reader.
	cur  *batch // batch being routed
	tab  *table // the table cur is routed with, loaded when it was taken
	pkt  int    // packet of cur being routed
	next int    // its next subscriber in tab
	orig origin // its origin
	seq  uint64 // the sequence number of the last packet from lc0

	queue  queued
	handed []handed // the packets of the current Read, for queue

	writeMu sync.Mutex
	wrapped [][]byte
	unicast [][]byte
	relayed *batch // packets Write passes on, not yet handed to Read

	events    chan wgtun.Event
	closed    chan struct{} // closed by Close: Read returns os.ErrClosed
	closeOnce sync.Once
}

// batch is packets read from lc0 together, or packets from peers to relay
// (each with its origin).
type batch struct {
	bufs    [][]byte
	sizes   []int
	origins []origin
	relayed bool
	n       int
}

func newBatch(mtu int) *batch {
	b := &batch{bufs: make([][]byte, lc0ReadSize), sizes: make([]int, lc0ReadSize), origins: make([]origin, lc0ReadSize)}
	for i := range b.bufs {
		b.bufs[i] = make([]byte, mtu)
	}
	return b
}

const (
	batchesInFlight = 64  // bounds the packets between lc0 and the transport
	lc0ReadSize     = 16  // segments one lc0 read may return (GSO)
	transportBatch  = 128 // packets one Read may return (wireguard-go's ideal batch)
)

func (p *Port) init(r *Router) {
	p.r = r
	mtu, err := r.lc0.MTU()
	if err != nil || mtu <= 0 {
		mtu = 65535
	}
	p.mtu = mtu
	p.free = make(chan *batch, batchesInFlight)
	p.full = make(chan *batch, batchesInFlight+1)
	p.lc0Done = make(chan struct{})
	for range batchesInFlight {
		p.free <- newBatch(mtu)
	}
	if r.relay {
		p.relayed = newBatch(mtu)
		p.relayed.relayed = true
	}
	p.queue.init()
	p.handed = make([]handed, 0, transportBatch)
	p.events = make(chan wgtun.Event, 1)
	p.closed = make(chan struct{})
	p.events <- wgtun.EventUp
	go p.readLc0()
}

// readLc0 fills free batches from lc0 until lc0 is closed.
func (p *Port) readLc0() {
	defer close(p.lc0Done)
	for b := range p.free {
		b.relayed = false
		n, err := p.r.lc0.Read(b.bufs, b.sizes, 0)
		if errors.Is(err, os.ErrClosed) {
			return
		}
		if err != nil {
			p.r.drop(dLc0Read, nil)
		}
		if n == 0 {
			p.free <- b
			continue
		}
		b.n = n
		p.full <- b
	}
}

// Read fills bufs (from offset) with packets for peers, from as many lc0
// batches as are waiting. It blocks until it has at least one packet, and
// returns os.ErrClosed once lc0 or the port is closed. The transport must
// send each packet from the buffer it was read into, and report it to Sent.
func (p *Port) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	// The table is loaded after the wait for packets, never before, so a
	// subscription that arrives during the wait applies to them; a batch
	// keeps its table until it is routed, so a packet's fan-out that spans
	// two Reads sees one list of subscribers.
	count := 0
	p.handed = p.handed[:0]
	defer func() { p.queue.record(time.Now(), p.handed) }()
	for count < len(bufs) {
		if p.cur == nil {
			var b *batch
			if count == 0 {
				select {
				case b = <-p.full:
				case <-p.closed:
					return 0, os.ErrClosed
				case <-p.lc0Done:
					select { // what lc0 gave before it closed goes first
					case b = <-p.full:
					default:
						return 0, os.ErrClosed
					}
				}
			} else {
				select {
				case b = <-p.full:
				default:
					return count, nil
				}
			}
			p.cur, p.tab, p.pkt, p.next = b, p.r.table.Load(), 0, 0
		}
		for p.pkt < p.cur.n && count < len(bufs) {
			if p.next == 0 {
				p.orig = p.originOf(p.cur, p.pkt)
			}
			n, to := p.r.route(p.tab, p.cur.bufs[p.pkt][:p.cur.sizes[p.pkt]], &p.orig, &p.next, bufs[count][offset:])
			if n == 0 {
				p.pkt++
				p.next = 0
				continue
			}
			p.handed = append(p.handed, handed{buf: &bufs[count][0], peer: to})
			sizes[count] = n
			count++
		}
		if p.pkt == p.cur.n {
			p.free <- p.cur
			p.cur, p.tab = nil, nil
		}
	}
	return count, nil
}

// originOf returns the origin of packet i of b: its lcast header if it
// is relayed, or a new sequence number if it was read from lc0.
func (p *Port) originOf(b *batch, i int) origin {
	if b.relayed {
		return b.origins[i]
	}
	p.seq++
	return origin{epoch: p.r.epoch, seq: p.seq, hops: MaxHops}
}

// Sent tells the port that the transport sends the packets in bufs (each
// starting where the buffer Read filled starts), so they no longer wait.
// Buffers Read did not fill are ignored.
func (p *Port) Sent(bufs [][]byte) { p.queue.sent(bufs) }

// Write takes packets from peers, authenticated by the transport, and
// writes into lc0 those a local program listens to, in batches. On a relay
// it hands those to pass on to Read.
func (p *Port) Write(bufs [][]byte, offset int) (int, error) {
	r := p.r
	t := r.table.Load()
	p.writeMu.Lock()
	defer p.writeMu.Unlock()
	p.wrapped, p.unicast = p.wrapped[:0], p.unicast[:0]
	var o origin
	for _, b := range bufs {
		toLc0, relay := r.deliver(t, b[offset:], &o)
		switch toLc0 {
		case 0:
			p.unicast = append(p.unicast, b)
		case WrapLen:
			p.wrapped = append(p.wrapped, b)
		}
		if relay {
			p.relay(b[offset+WrapLen:], o)
		}
	}
	p.flushRelayed()
	for _, batch := range []struct {
		bufs   [][]byte
		offset int
	}{{p.wrapped, offset + WrapLen}, {p.unicast, offset}} {
		if len(batch.bufs) == 0 {
			continue
		}
		if _, err := r.lc0.Write(batch.bufs, batch.offset); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return 0, err
			}
			r.drop(dLc0Write, nil)
		}
	}
	return len(bufs), nil
}

// relay adds a packet to pass on to the batch being filled, which is
// handed to Read when full or at the end of the Write.
func (p *Port) relay(pkt []byte, o origin) {
	b := p.relayed
	b.sizes[b.n] = copy(b.bufs[b.n], pkt)
	b.origins[b.n] = o
	b.n++
	if b.n == len(b.bufs) {
		p.flushRelayed()
	}
}

// flushRelayed hands the packets to pass on to Read, in exchange for a free
// batch. With none free (the transport is behind), they are dropped.
func (p *Port) flushRelayed() {
	b := p.relayed
	if b == nil || b.n == 0 {
		return
	}
	select {
	case next := <-p.free:
		p.full <- b // never blocks: it has room for every batch
		next.relayed, next.n = true, 0
		p.relayed = next
	default:
		for _, o := range b.origins[:b.n] {
			p.r.drop(dPeerQueue, o.from)
		}
		b.n = 0
	}
}

func (p *Port) File() *os.File             { return nil }
func (p *Port) MTU() (int, error)          { mtu, err := p.r.lc0.MTU(); return mtu + WrapLen, err }
func (p *Port) Name() (string, error)      { return "lcast-router", nil }
func (p *Port) Events() <-chan wgtun.Event { return p.events }
func (p *Port) BatchSize() int             { return transportBatch }

// Close ends the transport's use of the port: a Read waiting for packets
// returns os.ErrClosed, so that the transport can stop even while lc0 is
// open (when it fails to start, for one).
func (p *Port) Close() error {
	p.closeOnce.Do(func() {
		close(p.events)
		close(p.closed)
	})
	return nil
}
