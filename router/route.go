package router

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"time"
)

// Origin is how a packet to route came: from lc0, sent by this node
// (NextOrigin), or from a peer, to relay (Deliver). It holds the packet's
// lcast header.
type Origin struct {
	from  *Peer
	epoch uint32
	seq   uint64
	hops  uint8 // the hop limit to send it with
}

// From returns the peer a packet to relay or a control message came from,
// or nil for a packet from lc0.
func (o *Origin) From() *Peer { return o.from }

// NextOrigin returns the origin of the next multicast packet read from
// lc0: this node's epoch and a new sequence number.
func (r *Router) NextOrigin() Origin {
	return Origin{epoch: r.epoch, seq: r.seq.Add(1), hops: MaxHops}
}

// OnLink reports whether a packet read from lc0 stays on the link, for the
// link's own protocols rather than for peers: multicast of link scope or
// narrower that does not cross between peers (MLD reports, Router
// Solicitations, Neighbor Discovery), and unicast to a link-local address
// that is no peer's.
func (r *Router) OnLink(pkt []byte) bool {
	if len(pkt) < ipv6HeaderLen || pkt[0]>>4 != 6 {
		return false
	}
	dst := [16]byte(pkt[24:40])
	if dst[0] == 0xff {
		return dst[1]&0x0f <= ScopeLinkLocal && !r.scope.Forwards(netip.AddrFrom16(dst))
	}
	a := netip.AddrFrom16(dst)
	return a.IsLinkLocalUnicast() && r.table.Load().linkLocal[a] == nil
}

// Route decides where one packet goes, read from lc0 or relayed (o). It
// writes into out (which has room for WrapLen+len(pkt) from index 0) the
// packet for the subscriber at *next, advances *next, and returns the length
// written and the peer it goes to, or 0 when the packet has no (more)
// destinations. A relayed packet goes to no peer it came from or through.
// Multicast read from lc0 goes nowhere unless its source is this node's
// overlay or link-local address or lies on its LANs (DropNotOwnSource). Unicast goes unwrapped to the peer whose overlay or link-local address
// it is addressed to. Each peer is first offered to admit, which reports
// whether another packet may wait for it in the transport; peers it
// refuses are skipped (the drop counted, DropPeerQueue). admit must not
// be a new closure per call, or Route allocates.
func (r *Router) Route(t *Table, pkt []byte, o *Origin, next *int, out []byte, admit func(*Peer) bool) (int, *Peer) {
	if len(pkt) < ipv6HeaderLen || pkt[0]>>4 != 6 {
		if *next == 0 {
			r.Drop(DropMalformed, nil)
		}
		return 0, nil
	}
	dst := netip.AddrFrom16([16]byte(pkt[24:40]))
	if !dst.IsMulticast() {
		if *next > 0 {
			return 0, nil
		}
		*next = 1
		return r.routeUnicast(t, pkt, dst, o, out, admit)
	}
	src := netip.AddrFrom16([16]byte(pkt[8:24]))
	if o.from == nil && src != r.self && src != r.selfLL && !inPrefixes(t.ownLANs, src) {
		// A local program must not speak for another node (with
		// IPV6_FREEBIND, say: docs/design.md, "Source authentication").
		// Nothing legitimate sends from the unspecified address here: MLD
		// reports and Duplicate Address Detection, which do, stay on the
		// link (OnLink).
		if *next == 0 {
			*next = 1
			r.Drop(DropNotOwnSource, nil)
		}
		return 0, nil
	}
	if !r.scope.Forwards(dst) {
		if *next == 0 {
			*next = 1
			r.Drop(DropScope, nil)
		}
		return 0, nil
	}
	subs := t.groups[dst]
	if *next == 0 && len(subs) == 0 && o.from == nil {
		r.Drop(DropNoSubscriber, nil)
	}
	for *next < len(subs) {
		s := subs[*next]
		*next++
		if !t.takes(s, src, o.from) {
			continue
		}
		if !admit(s.peer) {
			r.Drop(DropPeerQueue, s.peer)
			continue
		}
		wrap(out, r.self, s.peer.addr, len(pkt), o)
		n := WrapLen + copy(out[WrapLen:], pkt)
		s.peer.counters.Sent(n)
		return n, s.peer
	}
	return 0, nil
}

// routeUnicast is Route for unicast to dst: from lc0, it goes unwrapped
// to the peer dst is an address of or, while that peer's path is
// relayed, wrapped to the relay (Path.Via); relayed (o.from is the peer
// that sent it through this relay), it goes wrapped to that peer.
func (r *Router) routeUnicast(t *Table, pkt []byte, dst netip.Addr, o *Origin, out []byte, admit func(*Peer) bool) (int, *Peer) {
	p := t.peerOf(dst)
	switch {
	case o.from == nil && (pkt[6] == protoLcast || pkt[6] == ProtoControl):
		// Only the router wraps, and only the bridge sends control:
		// a program's packet must pass for neither at the peer.
		r.Drop(DropMalformed, p)
		return 0, nil
	case p == nil:
		r.Drop(DropNoRoute, nil)
		return 0, nil
	}
	to := p
	if via := t.peers[t.paths[p.addr].Via]; o.from == nil && via != nil {
		to = via
	}
	if !admit(to) {
		r.Drop(DropPeerQueue, to)
		return 0, nil
	}
	n := 0
	if to == p && o.from == nil {
		n = copy(out, pkt)
	} else {
		wrap(out, r.self, to.addr, len(pkt), o)
		n = WrapLen + copy(out[WrapLen:], pkt)
	}
	to.counters.Sent(n)
	return n, to
}

// peerOf returns the peer whose overlay or link-local address a is, or nil.
func (t *Table) peerOf(a netip.Addr) *Peer {
	if p, ok := t.peers[a]; ok {
		return p
	}
	return t.linkLocal[a]
}

// wrap writes the headers that carry a packet of innerLen bytes from src to
// dst, with o's lcast header.
func wrap(b []byte, src, dst netip.Addr, innerLen int, o *Origin) {
	putIPv6Header(b, src, dst, protoLcast, o.hops, lcastHeaderLen+innerLen)
	h := b[ipv6HeaderLen:WrapLen]
	h[0], h[1], h[2], h[3] = protoIPv6Encap, 0, 0, 0
	binary.BigEndian.PutUint32(h[4:8], o.epoch)
	binary.BigEndian.PutUint64(h[8:16], o.seq)
}

// putIPv6Header writes into b an IPv6 header from src to dst with next
// header proto, hop limit hops and payloadLen bytes of payload.
func putIPv6Header(b []byte, src, dst netip.Addr, proto, hops uint8, payloadLen int) {
	b[0], b[1], b[2], b[3] = 0x60, 0, 0, 0
	binary.BigEndian.PutUint16(b[4:6], uint16(payloadLen))
	b[6], b[7] = proto, hops
	s, d := src.As16(), dst.As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
}

// AppendControl appends to b the packet that carries the control message
// msg from this node to the peer at dst: an IPv6 header from this node's
// overlay address, next header ProtoControl, hop limit 255, then msg.
func (r *Router) AppendControl(b []byte, dst netip.Addr, msg []byte) []byte {
	n := len(b)
	b = slices.Grow(b, ipv6HeaderLen+len(msg))[:n+ipv6HeaderLen]
	putIPv6Header(b[n:], r.self, dst, ProtoControl, 255, len(msg))
	return append(b, msg...)
}

// Delivery is what to do with a packet from a peer, as Deliver decides.
type Delivery struct {
	// Lc0 is the offset within the packet of what to write into lc0, or
	// -1 not to.
	Lc0 int
	// Relay tells to pass on the wrapped packet (from offset WrapLen), as
	// the Origin Deliver filled says.
	Relay bool
	// Control is, for a control message, its payload (within the packet),
	// from the Origin's peer; nil otherwise.
	Control []byte
}

// drop is the Delivery of a packet dropped.
var drop = Delivery{Lc0: -1}

// Deliver decides on one packet from a peer, after the transport
// authenticated its source address as the peer's. It fills o for a packet
// to relay or a control message. Unicast reaches lc0 when it comes from the
// peer's overlay or link-local address and is addressed to one of this
// node's; control messages and wrapped multicast must come from the peer's
// overlay address to this node's.
func (r *Router) Deliver(t *Table, pkt []byte, o *Origin) Delivery {
	if len(pkt) < ipv6HeaderLen || pkt[0]>>4 != 6 {
		r.Drop(DropMalformed, nil)
		return drop
	}
	src := netip.AddrFrom16([16]byte(pkt[8:24]))
	p := t.peerOf(src)
	if p == nil {
		// The transport admits only peers' addresses as sources.
		r.Drop(DropForgedSource, nil)
		return drop
	}
	now := r.clock.Now()
	p.counters.received(len(pkt), now)
	dst := [16]byte(pkt[24:40])
	if pkt[6] != protoLcast && pkt[6] != ProtoControl {
		if dst != r.self.As16() && !isLinkLocalOf(dst, r.self) {
			r.Drop(DropNotForNode, p)
			return drop
		}
		return Delivery{Lc0: 0}
	}
	switch {
	case src != p.addr:
		r.Drop(DropMalformed, p)
		return drop
	case dst != r.self.As16():
		r.Drop(DropNotForNode, p)
		return drop
	case pkt[6] == ProtoControl:
		end := ipv6HeaderLen + int(binary.BigEndian.Uint16(pkt[4:6]))
		if end > len(pkt) {
			r.Drop(DropMalformed, p)
			return drop
		}
		o.from = p
		return Delivery{Lc0: -1, Control: pkt[ipv6HeaderLen:end:end]}
	}
	return r.deliverWrapped(t, pkt, p, o, now)
}

// deliverWrapped is Deliver for wrapped multicast from the peer p, arrived
// at now.
func (r *Router) deliverWrapped(t *Table, pkt []byte, p *Peer, o *Origin, now time.Time) Delivery {
	if len(pkt) < WrapLen+ipv6HeaderLen || pkt[ipv6HeaderLen] != protoIPv6Encap || pkt[WrapLen]>>4 != 6 {
		r.Drop(DropMalformed, p)
		return drop
	}
	inner := pkt[WrapLen:]
	// docs/design.md, "Source authentication": the inner source must be
	// the peer's own address, or for link-scope groups its link-local
	// address, or lie in the prefixes of the LANs behind it (a gateway's);
	// the packets of a peer this node's configuration trusts as a relay may
	// carry any node's, or any LAN's this node knows.
	innerSrc := [16]byte(inner[8:24])
	sender := netip.AddrFrom16(innerSrc)
	direct := innerSrc == p.addr.As16() || isLinkLocalOf(innerSrc, p.addr) || inPrefixes(t.lans[p.addr], sender)
	if !direct {
		switch {
		case !t.relays[p.addr]:
			r.Drop(DropForgedSource, p)
			return drop
		case innerSrc == r.self.As16() || isLinkLocalOf(innerSrc, r.self) || inPrefixes(t.ownLANs, sender):
			r.Drop(DropLoop, p)
			return drop
		case !r.isNodeAddr(innerSrc) && !t.onPeerLAN(sender):
			r.Drop(DropForgedSource, p)
			return drop
		}
	}
	group := netip.AddrFrom16([16]byte(inner[24:40]))
	if !group.IsMulticast() {
		return r.deliverUnicast(t, pkt, p, direct, o)
	}
	if !r.scope.Forwards(group) {
		r.Drop(DropScope, p)
		return drop
	}
	o.from, o.hops = p, pkt[7]-1
	o.epoch = binary.BigEndian.Uint32(pkt[ipv6HeaderLen+4:])
	o.seq = binary.BigEndian.Uint64(pkt[ipv6HeaderLen+8:])
	if why, ok := r.seen.admit(sender, direct, t.relayedPath(sender), o.epoch, o.seq, now); !ok {
		r.Drop(why, p)
		return drop
	}
	l, ok := t.listener(group)
	local := ok && l.Wants(sender)
	d := Delivery{Lc0: -1, Relay: r.relay && t.wantedBeyond(group, sender, p)}
	switch {
	case d.Relay && pkt[7] <= 1:
		r.Drop(DropHopLimit, p)
		d.Relay = false
	case d.Relay && len(inner) > r.mtu:
		r.Drop(DropTooBig, p)
		d.Relay = false
	case !d.Relay && !local:
		r.Drop(DropNoListener, p)
	}
	if local {
		d.Lc0 = WrapLen
	}
	return d
}

// deliverUnicast is Deliver for wrapped unicast, from the peer p: a
// packet a relay passes on from its sender (not direct), which reaches
// lc0 if addressed to this node; or, on a relay, a peer's own packet
// (direct) for another peer, to pass on to it once.
func (r *Router) deliverUnicast(t *Table, pkt []byte, p *Peer, direct bool, o *Origin) Delivery {
	dst := [16]byte(pkt[WrapLen+24 : WrapLen+40])
	if !direct {
		switch {
		case dst != r.self.As16() && !isLinkLocalOf(dst, r.self):
			r.Drop(DropNotForNode, p)
			return drop
		case t.peerOf(netip.AddrFrom16([16]byte(pkt[WrapLen+8:WrapLen+24]))) == nil:
			// Unicast enters lc0 only from this node's peers, whichever
			// relay it came through.
			r.Drop(DropForgedSource, p)
			return drop
		}
		return Delivery{Lc0: WrapLen}
	}
	to := t.peerOf(netip.AddrFrom16(dst))
	switch {
	case pkt[WrapLen+6] == protoLcast || pkt[WrapLen+6] == ProtoControl:
		r.Drop(DropMalformed, p)
		return drop
	case !r.relay || to == p:
		r.Drop(DropNotForNode, p)
		return drop
	case to == nil:
		r.Drop(DropNoRoute, p)
		return drop
	case pkt[7] <= 1:
		r.Drop(DropHopLimit, p)
		return drop
	case len(pkt)-WrapLen > r.mtu:
		r.Drop(DropTooBig, p)
		return drop
	}
	o.from, o.hops, o.epoch, o.seq = p, pkt[7]-1, 0, 0
	return Delivery{Lc0: -1, Relay: true}
}

// wantedBeyond reports whether a subscriber of group takes a packet from
// sender that came from the peer from.
func (t *Table) wantedBeyond(group, sender netip.Addr, from *Peer) bool {
	return slices.ContainsFunc(t.groups[group], func(s subscriber) bool { return t.takes(s, sender, from) })
}

// takes reports whether the subscriber s gets a packet from src that came
// from the peer from (nil: from lc0): it wants src, and is neither the
// peer the packet came from nor src's own node, and a packet to pass on
// does not come to it straight from src (SetDirectOf).
func (t *Table) takes(s subscriber, src netip.Addr, from *Peer) bool {
	if !s.sub.Wants(src) || s.peer == from || s.peer.addr == src {
		return false
	}
	return from == nil || len(t.directOf) == 0 || !t.directOf[s.peer.addr][src]
}

// isNodeAddr reports whether a is an address a node sends multicast from:
// its overlay address or its link-local one.
func (r *Router) isNodeAddr(a [16]byte) bool {
	return r.overlay.Contains(netip.AddrFrom16(a)) || isLinkLocal(a)
}

// inPrefixes reports whether a lies in one of prefixes.
func inPrefixes(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// onPeerLAN reports whether a lies on the LANs behind one of the peers.
func (t *Table) onPeerLAN(a netip.Addr) bool {
	for _, ps := range t.lans {
		if inPrefixes(ps, a) {
			return true
		}
	}
	return false
}

// linkLocalOf returns the link-local address of the node with the overlay
// address overlay: fe80::/64 with its interface identifier
// (peer.LinkLocalAddr).
func linkLocalOf(overlay netip.Addr) netip.Addr {
	a := overlay.As16()
	copy(a[:8], []byte{0xfe, 0x80, 0, 0, 0, 0, 0, 0})
	return netip.AddrFrom16(a)
}

// isLinkLocalOf reports whether a is the link-local address of the node
// with the overlay address overlay.
func isLinkLocalOf(a [16]byte, overlay netip.Addr) bool {
	return netip.AddrFrom16(a) == linkLocalOf(overlay)
}

// isLinkLocal reports whether a is in fe80::/64, where lc0's link-local
// addresses lie.
func isLinkLocal(a [16]byte) bool { return [8]byte(a[:8]) == [8]byte{0xfe, 0x80} }
