package router

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/librecast/lcast/internal/packettest"
	"github.com/librecast/lcast/mld"
	"go.uber.org/goleak"
)

// TestMain fails the tests if any goroutine outlives them.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var srcS = netip.MustParseAddr("2001:db8::5")

func sub(g netip.Addr, mode mld.FilterMode, sources ...netip.Addr) Subscription {
	return Subscription{Group: g, Mode: mode, Sources: sources}
}

// admitAll lets every packet wait in the transport.
var admitAll = func(*Peer) bool { return true }

func newTestRouter(t *testing.T) *Router {
	r := New(Config{Self: packettest.Self, Overlay: packettest.Overlay})
	r.SetPeers([]netip.Addr{packettest.PeerA, packettest.PeerB, packettest.PeerC}, nil)
	r.SetSubscriptions(packettest.PeerA, []Subscription{sub(packettest.Group1, mld.Exclude)})
	r.SetSubscriptions(packettest.PeerB, []Subscription{sub(packettest.Group1, mld.Include, srcS)})
	r.SetSubscriptions(packettest.PeerC, []Subscription{sub(packettest.Group2, mld.Exclude)})
	return r
}

// routeAll routes pkt, which came as o says, and returns what goes to
// peers.
func routeAll(r *Router, pkt []byte, o *Origin) [][]byte {
	var out [][]byte
	t := r.Table()
	for next := 0; ; {
		buf := make([]byte, WrapLen+len(pkt))
		n, _ := r.Route(t, pkt, o, &next, buf, admitAll)
		if n == 0 {
			return out
		}
		out = append(out, buf[:n])
	}
}

// fromLc0 routes one packet read from lc0 and returns what goes to peers.
func fromLc0(r *Router, pkt []byte) [][]byte {
	o := r.NextOrigin()
	return routeAll(r, pkt, &o)
}

func dstOf(p []byte) netip.Addr { return netip.AddrFrom16([16]byte(p[24:40])) }

func TestRouteFromLc0(t *testing.T) {
	r := newTestRouter(t)
	pkt := packettest.UDP(packettest.Self, packettest.Group1, "hello")
	out := fromLc0(r, pkt)
	if len(out) != 1 || dstOf(out[0]) != packettest.PeerA {
		t.Fatalf("ff1e::1 from self went to %d packets %v, want one to peer A", len(out), out)
	}
	w := out[0]
	if w[6] != protoLcast || w[7] != MaxHops || netip.AddrFrom16([16]byte(w[8:24])) != packettest.Self ||
		int(binary.BigEndian.Uint16(w[4:6])) != lcastHeaderLen+len(pkt) || w[40] != protoIPv6Encap ||
		binary.BigEndian.Uint32(w[44:48]) != r.epoch || string(w[WrapLen:]) != string(pkt) {
		t.Fatalf("bad wrapping: %x", w)
	}
	seq := binary.BigEndian.Uint64(w[48:56])
	// From the source peer B subscribed to: both A (any source) and B.
	r.SetSubscriptions(packettest.PeerB, []Subscription{sub(packettest.Group1, mld.Include, packettest.Self)})
	out = fromLc0(r, packettest.UDP(packettest.Self, packettest.Group1, "x"))
	if len(out) != 2 || dstOf(out[0]) == dstOf(out[1]) {
		t.Fatalf("from %s to the subscribers of both: %d packets", packettest.Self, len(out))
	}
	// Both copies are of one packet, a later one.
	if s0, s1 := binary.BigEndian.Uint64(out[0][48:56]), binary.BigEndian.Uint64(out[1][48:56]); s0 != s1 || s0 <= seq {
		t.Fatalf("sequence numbers %d, then %d and %d", seq, s0, s1)
	}
	if out := fromLc0(r, packettest.UDP(packettest.Self, netip.MustParseAddr("ff1e::99"), "x")); len(out) != 0 {
		t.Fatalf("unsubscribed group went to %d peers", len(out))
	}
	if got := r.Dropped(DropNoSubscriber); got != 1 {
		t.Fatalf("no_subscriber drops = %d, want 1", got)
	}
	if out := fromLc0(r, packettest.UDP(packettest.Self, netip.MustParseAddr("fd6c:6361:7374::99"), "x")); len(out) != 0 || r.Dropped(DropNoRoute) != 1 {
		t.Fatalf("unicast to no peer: %d packets, drops %v", len(out), r.Drops())
	}
}

// Multicast read from lc0 goes to peers only from this node's overlay or
// link-local address: a local program cannot speak for another node
// (with IPV6_FREEBIND, say), nor send from the unspecified address.
func TestRouteNotOwnSource(t *testing.T) {
	r := newTestRouter(t) // A takes grp1 from any source
	for _, src := range []netip.Addr{packettest.Self, linkLocalOf(packettest.Self)} {
		if out := fromLc0(r, packettest.UDP(src, packettest.Group1, "mine")); len(out) != 1 || dstOf(out[0]) != packettest.PeerA {
			t.Fatalf("from %s: %d packets", src, len(out))
		}
	}
	for i, src := range []netip.Addr{packettest.PeerB, nodeX, linkLocalOf(packettest.PeerB), srcS, netip.IPv6Unspecified()} {
		if out := fromLc0(r, packettest.UDP(src, packettest.Group1, "not mine")); len(out) != 0 || r.Dropped(DropNotOwnSource) != uint64(i+1) {
			t.Fatalf("from %s: %d packets, drops %v", src, len(out), r.Drops())
		}
	}
	// Packets relayed from peers keep their senders' sources.
	o := Origin{from: r.Table().peers[packettest.PeerC], epoch: 3, seq: 1, hops: MaxHops}
	if out := routeAll(r, packettest.UDP(nodeX, packettest.Group1, "relayed"), &o); len(out) != 1 || r.Dropped(DropNotOwnSource) != 5 {
		t.Fatalf("a relayed packet: %d packets, drops %v", len(out), r.Drops())
	}
}

// Unicast goes unwrapped to the peer whose overlay or link-local address
// it is addressed to (ping fe80::<iid>%lc0, mDNS legacy-unicast answers).
func TestRouteUnicast(t *testing.T) {
	r := newTestRouter(t)
	for _, pkt := range [][]byte{
		packettest.UDP(packettest.Self, packettest.PeerB, "to the overlay address"),
		packettest.UDP(linkLocalOf(packettest.Self), linkLocalOf(packettest.PeerB), "to the link-local address"),
	} {
		if r.OnLink(pkt) {
			t.Fatalf("%s is taken for link traffic", dstOf(pkt))
		}
		out := fromLc0(r, pkt)
		if len(out) != 1 || string(out[0]) != string(pkt) {
			t.Fatalf("unicast to %s: %x", dstOf(pkt), out)
		}
	}
	if n := r.Counters(packettest.PeerB).TxPackets.Load(); n != 2 {
		t.Fatalf("peer B tx %d, want 2", n)
	}
}

// Link traffic stays on the link: MLD reports and other link-scope
// multicast that does not cross, and unicast to link-local addresses of
// no peer. Groups beyond link scope that never cross are dropped (scope).
func TestOnLinkAndScope(t *testing.T) {
	r := newTestRouter(t)
	mdns := netip.MustParseAddr("ff02::fb")
	r.SetSubscriptions(packettest.PeerA, []Subscription{sub(mdns, mld.Exclude), sub(netip.MustParseAddr("ff05::2"), mld.Exclude)})
	for _, c := range []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"MLD report", mld.AppendV2Report(nil, netip.MustParseAddr("fe80::1"), []mld.ReportRecord{{Type: mld.ChangeToExcludeMode, Group: packettest.Group1}}), true},
		{"mDNS, link scope not forwarded", packettest.UDP(packettest.Self, mdns, "mdns"), true},
		{"unicast to a link-local address of no peer", packettest.UDP(packettest.Self, netip.MustParseAddr("fe80::99"), "x"), true},
		{"realm scope", packettest.UDP(packettest.Self, packettest.Group1, "x"), false},
		{"all-routers of site scope", packettest.UDP(packettest.Self, netip.MustParseAddr("ff05::2"), "x"), false},
		{"not IPv6", []byte{0x45, 0}, false},
	} {
		if got := r.OnLink(c.pkt); got != c.want {
			t.Errorf("%s: OnLink = %v, want %v", c.name, got, c.want)
		}
	}
	if out := fromLc0(r, packettest.UDP(packettest.Self, netip.MustParseAddr("ff05::2"), "x")); len(out) != 0 || r.Dropped(DropScope) != 1 {
		t.Fatalf("all-routers: %d packets, drops %v", len(out), r.Drops())
	}
	r2 := New(Config{Self: packettest.Self, Overlay: packettest.Overlay, Scope: ScopePolicy{LinkLocal: true}})
	if r2.OnLink(packettest.UDP(packettest.Self, mdns, "mdns")) {
		t.Fatal("mDNS stays on the link with link scope forwarded")
	}
}

// A local program cannot send wrapped multicast or control messages: only
// the router and the bridge make them.
func TestRouteForgedFromLc0(t *testing.T) {
	r := newTestRouter(t)
	for _, proto := range []byte{protoLcast, ProtoControl} {
		pkt := packettest.UDP(packettest.Self, packettest.PeerA, "forged")
		pkt[6] = proto
		if out := fromLc0(r, pkt); len(out) != 0 {
			t.Fatalf("next header %d from lc0 went to a peer", proto)
		}
	}
	if d := r.Dropped(DropMalformed); d != 2 || r.Counters(packettest.PeerA).Dropped(DropMalformed) != 2 {
		t.Fatalf("malformed drops %d", d)
	}
}

// fromLc0Origin is the origin of the packets the tests route from lc0.
var fromLc0Origin = Origin{epoch: 7, hops: MaxHops}

// lastSeq numbers the packets wrapped, so that none is a duplicate.
var lastSeq uint64

// wrapped returns inner as the peer at from sends it to this node, with 16
// bytes of headroom, and a new sequence number of epoch 1.
func wrapped(inner []byte, from netip.Addr) []byte {
	return wrappedAs(inner, from, Origin{epoch: 1, seq: lastSeq + 1, hops: MaxHops})
}

func wrappedAs(inner []byte, from netip.Addr, o Origin) []byte {
	lastSeq = max(lastSeq, o.seq)
	b := make([]byte, 16+WrapLen+len(inner))
	wrap(b[16:], from, packettest.Self, len(inner), &o)
	copy(b[16+WrapLen:], inner)
	return b
}

// deliver decides on one packet from a peer, with 16 bytes of headroom.
func deliver(r *Router, pkt []byte) Delivery {
	var o Origin
	return r.Deliver(r.Table(), pkt[16:], &o)
}

func headroom(pkt []byte) []byte { return append(make([]byte, 16), pkt...) }

func TestDeliverFromPeers(t *testing.T) {
	r := newTestRouter(t)
	r.SetLocal([]Subscription{sub(packettest.Group1, mld.Exclude, packettest.PeerB)})
	llA := linkLocalOf(packettest.PeerA)
	cases := []struct {
		name string
		pkt  []byte
		drop Reason
		peer netip.Addr // whose drop it also is, if any
	}{
		{"forged inner source", wrapped(packettest.UDP(packettest.PeerB, packettest.Group1, "x"), packettest.PeerA), DropForgedSource, packettest.PeerA},
		{"excluded source", wrapped(packettest.UDP(packettest.PeerB, packettest.Group1, "x"), packettest.PeerB), DropNoListener, packettest.PeerB},
		{"no listener", wrapped(packettest.UDP(packettest.PeerA, packettest.Group2, "x"), packettest.PeerA), DropNoListener, packettest.PeerA},
		{"not a peer", wrapped(packettest.UDP(srcS, packettest.Group1, "x"), srcS), DropForgedSource, netip.Addr{}},
		{"link scope", wrapped(packettest.UDP(packettest.PeerA, netip.MustParseAddr("ff02::1"), "x"), packettest.PeerA), DropScope, packettest.PeerA},
		{"wrapped from a link-local address", wrapped(packettest.UDP(packettest.PeerA, packettest.Group1, "x"), llA), DropMalformed, packettest.PeerA},
		{"unicast to another node", headroom(packettest.UDP(packettest.PeerA, packettest.PeerB, "x")), DropNotForNode, packettest.PeerA},
		{"unicast to another link-local address", headroom(packettest.UDP(llA, linkLocalOf(packettest.PeerB), "x")), DropNotForNode, packettest.PeerA},
	}
	for _, c := range cases {
		before := r.Dropped(c.drop)
		peersBefore := peerDropTotals(r, c.drop)
		if d := deliver(r, c.pkt); d.Lc0 != -1 || d.Relay || d.Control != nil {
			t.Errorf("%s: delivered as %+v", c.name, d)
		}
		if r.Dropped(c.drop) != before+1 {
			t.Errorf("%s: %s drops %d -> %d", c.name, c.drop, before, r.Dropped(c.drop))
		}
		for a, n := range peerDropTotals(r, c.drop) {
			if want := peersBefore[a] + b2u(a == c.peer); n != want {
				t.Errorf("%s: peer %s has %d %s drops, want %d", c.name, a, n, c.drop, want)
			}
		}
	}
	for _, c := range []struct {
		name string
		pkt  []byte
		lc0  int
	}{
		{"wrapped", wrapped(packettest.UDP(packettest.PeerA, packettest.Group1, "from A"), packettest.PeerA), WrapLen},
		{"unicast", headroom(packettest.UDP(packettest.PeerC, packettest.Self, "unicast")), 0},
		{"unicast from and to link-local addresses", headroom(packettest.UDP(linkLocalOf(packettest.PeerC), linkLocalOf(packettest.Self), "x")), 0},
		{"unicast from link-local to overlay", headroom(packettest.UDP(linkLocalOf(packettest.PeerC), packettest.Self, "x")), 0},
	} {
		if d := deliver(r, c.pkt); d.Lc0 != c.lc0 || d.Relay || d.Control != nil {
			t.Errorf("%s: delivered as %+v, want into lc0 from %d", c.name, d, c.lc0)
		}
	}
	if c := r.Counters(packettest.PeerA); c.RxPackets.Load() != 7 {
		t.Fatalf("peer A rx packets %d, want 7", c.RxPackets.Load())
	}
}

// A control message from a peer's overlay address to this node's goes to
// the control handler, whole; to another address it is dropped.
func TestDeliverControl(t *testing.T) {
	r := newTestRouter(t)
	peerSide := New(Config{Self: packettest.PeerA, Overlay: packettest.Overlay})
	msg := []byte("subscriptions")
	var o Origin
	d := r.Deliver(r.Table(), peerSide.AppendControl(nil, packettest.Self, msg), &o)
	if string(d.Control) != string(msg) || d.Lc0 != -1 || d.Relay || o.From() == nil || o.From().Addr() != packettest.PeerA {
		t.Fatalf("control message delivered as %+v from %v", d, o.From())
	}
	pkt := peerSide.AppendControl(nil, packettest.Self, msg)
	if pkt[7] != 255 || pkt[6] != ProtoControl || netip.AddrFrom16([16]byte(pkt[8:24])) != packettest.PeerA {
		t.Fatalf("control packet %x", pkt)
	}
	for _, c := range []struct {
		name string
		pkt  []byte
		drop Reason
	}{
		{"to another node", peerSide.AppendControl(nil, packettest.PeerB, msg), DropNotForNode},
		{"to this node's link-local address", peerSide.AppendControl(nil, linkLocalOf(packettest.Self), msg), DropNotForNode},
		{"longer than the packet", peerSide.AppendControl(nil, packettest.Self, msg)[:ipv6HeaderLen+3], DropMalformed},
	} {
		before := r.Counters(packettest.PeerA).Dropped(c.drop)
		if d := r.Deliver(r.Table(), c.pkt, &o); d.Control != nil || d.Lc0 != -1 {
			t.Errorf("%s: delivered as %+v", c.name, d)
		}
		if r.Counters(packettest.PeerA).Dropped(c.drop) != before+1 {
			t.Errorf("%s: peer A's drops %v", c.name, r.Counters(packettest.PeerA).Drops())
		}
	}
}

// peerDropTotals returns each peer's count of drops for reason.
func peerDropTotals(r *Router, reason Reason) map[netip.Addr]uint64 {
	out := map[netip.Addr]uint64{}
	for _, a := range []netip.Addr{packettest.PeerA, packettest.PeerB, packettest.PeerC} {
		if c := r.Counters(a); c != nil {
			out[a] = c.Dropped(reason)
		}
	}
	return out
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// With link scope opted in, a peer's link-local address is its own too.
func TestDeliverLinkLocalSource(t *testing.T) {
	r := New(Config{Self: packettest.Self, Overlay: packettest.Overlay, Scope: ScopePolicy{LinkLocal: true}})
	r.SetPeers([]netip.Addr{packettest.PeerA}, nil)
	mdns := netip.MustParseAddr("ff02::fb")
	r.SetLocal([]Subscription{sub(mdns, mld.Exclude)})
	llA := netip.MustParseAddr("fe80::a")
	deliver(r, wrapped(packettest.UDP(llA, mdns, "x"), packettest.PeerA))
	deliver(r, wrapped(packettest.UDP(netip.MustParseAddr("fe80::b"), mdns, "x"), packettest.PeerA))
	if d := r.Drops(); d[DropForgedSource.String()] != 1 || r.Counters(packettest.PeerA).RxPackets.Load() != 2 || d[DropNoListener.String()] != 0 {
		t.Fatalf("drops %v", d)
	}
}

// Routing and delivering allocate nothing per packet.
func TestDataPathAllocatesNothing(t *testing.T) {
	r := newTestRouter(t)
	r.SetLocal([]Subscription{sub(packettest.Group1, mld.Exclude)})
	pkt := packettest.UDP(packettest.Self, packettest.Group1, "hello")
	out := make([]byte, 2048)
	tab := r.Table()
	if n := testing.AllocsPerRun(1000, func() {
		for next := 0; routed(r.Route(tab, pkt, &fromLc0Origin, &next, out, admitAll)); {
		}
	}); n != 0 {
		t.Fatalf("route allocates %v per packet", n)
	}
	in := wrapped(packettest.UDP(packettest.PeerA, packettest.Group1, "x"), packettest.PeerA)[16:]
	var o Origin
	if n := testing.AllocsPerRun(1000, func() { r.Deliver(tab, in, &o) }); n != 0 {
		t.Fatalf("deliver allocates %v per packet", n)
	}
}

// routed reports whether Route returned a packet.
func routed(n int, _ *Peer) bool { return n > 0 }

// The indexed table sends each packet to exactly the peers a slow,
// obvious reading of every peer's subscriptions gives.
func TestRouteMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	groups := []netip.Addr{packettest.Group1, packettest.Group2, netip.MustParseAddr("ff3e::1"), netip.MustParseAddr("ff02::fb"), netip.MustParseAddr("ff05::2")}
	sources := []netip.Addr{packettest.Self, linkLocalOf(packettest.Self), srcS}
	var peers []netip.Addr
	for i := range 6 {
		peers = append(peers, netip.MustParseAddr(fmt.Sprintf("fd6c:6361:7374::%x", i+16)))
	}
	for run := range 300 {
		r := New(Config{Self: packettest.Self, Overlay: packettest.Overlay})
		r.SetPeers(peers, nil)
		subs := map[netip.Addr][]Subscription{}
		for _, p := range peers {
			for _, g := range groups {
				if rng.IntN(2) == 0 {
					continue
				}
				s := sub(g, mld.FilterMode(rng.IntN(2)))
				for _, src := range sources {
					if rng.IntN(2) == 0 {
						s.Sources = append(s.Sources, src)
					}
				}
				subs[p] = append(subs[p], s)
			}
			r.SetSubscriptions(p, subs[p])
		}
		for _, g := range groups {
			for _, src := range sources {
				var got []netip.Addr
				for _, p := range routeAll(r, packettest.UDP(src, g, "x"), &fromLc0Origin) {
					got = append(got, dstOf(p))
				}
				var want []netip.Addr
				for _, p := range peers {
					for _, s := range subs[p] {
						own := src == packettest.Self || src == linkLocalOf(packettest.Self)
						if s.Group == g && (ScopePolicy{}).Forwards(g) && s.Wants(src) && own {
							want = append(want, p)
						}
					}
				}
				slices.SortFunc(got, netip.Addr.Compare)
				slices.SortFunc(want, netip.Addr.Compare)
				if !slices.Equal(got, want) {
					t.Fatalf("run %d: %s from %s went to %v, want %v", run, g, src, got, want)
				}
			}
		}
	}
}

// A peer admit refuses is skipped, and the drop counted for it.
func TestRouteAdmit(t *testing.T) {
	r := newTestRouter(t)
	r.SetSubscriptions(packettest.PeerB, []Subscription{sub(packettest.Group1, mld.Exclude)})
	o := r.NextOrigin()
	pkt, out := packettest.UDP(packettest.Self, packettest.Group1, "x"), make([]byte, 2048)
	refuseA := func(p *Peer) bool { return p.Addr() != packettest.PeerA }
	var got []netip.Addr
	for next := 0; ; {
		n, p := r.Route(r.Table(), pkt, &o, &next, out, refuseA)
		if n == 0 {
			break
		}
		got = append(got, p.Addr())
	}
	if !slices.Equal(got, []netip.Addr{packettest.PeerB}) || r.Counters(packettest.PeerA).Dropped(DropPeerQueue) != 1 {
		t.Fatalf("went to %v; peer A's drops %v", got, r.Counters(packettest.PeerA).Drops())
	}
}

func BenchmarkRouteFanOut8(b *testing.B) {
	r := New(Config{Self: packettest.Self, Overlay: packettest.Overlay})
	var peers []netip.Addr
	for i := range 8 {
		p := netip.MustParseAddr(fmt.Sprintf("fd6c:6361:7374::%x", i+16))
		peers = append(peers, p)
	}
	r.SetPeers(peers, nil)
	for _, p := range peers {
		r.SetSubscriptions(p, []Subscription{sub(packettest.Group1, mld.Exclude)})
	}
	pkt := packettest.UDP(packettest.Self, packettest.Group1, string(make([]byte, 1152)))
	out := make([]byte, 2048)
	tab := r.Table()
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)) * 8)
	for b.Loop() {
		for next := 0; routed(r.Route(tab, pkt, &fromLc0Origin, &next, out, admitAll)); {
		}
	}
}
