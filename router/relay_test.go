package router

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"

	"github.com/librecast/lcast/mld"
)

// nodeX is a node that is no peer of the router under test: its packets
// come through relays.
var nodeX = netip.MustParseAddr("fd6c:6361:7374::99")

// newRelay returns a relay whose peers are A (a relay), B and C; B
// subscribed to grp1 from any source, C to grp1 from srcS only, and local
// programs listen to grp1.
func newRelay(t *testing.T) *Router {
	tr := New(Config{Self: self, Overlay: overlay, Relay: true})
	tr.SetPeers([]netip.Addr{peerA, peerB, peerC})
	tr.SetSubscriptions(peerA, true, []Subscription{sub(grp1, mld.Exclude)})
	tr.SetSubscriptions(peerB, false, []Subscription{sub(grp1, mld.Exclude)})
	tr.SetSubscriptions(peerC, false, []Subscription{sub(grp1, mld.Include, srcS), sub(grp2, mld.Exclude)})
	tr.SetLocal([]Subscription{sub(grp1, mld.Exclude)})
	return tr
}

// relayed delivers pkts (with 16 bytes of headroom) as packets from peers
// and returns what the router passes on to peers.
func relayed(r *Router, pkts ...[]byte) [][]byte {
	var out [][]byte
	for _, p := range pkts {
		var o Origin
		if d := r.Deliver(r.Table(), p[16:], &o); d.Relay {
			out = append(out, routeAll(r, p[16+WrapLen:], &o)...)
		}
	}
	return out
}

func seqOf(w []byte) uint64 { return binary.BigEndian.Uint64(w[48:56]) }

// A relay passes a packet from one peer on to each other peer that wants
// it, never back, with the originator's epoch and sequence number and one
// hop less; and delivers it to local listeners.
func TestRelayPassesOn(t *testing.T) {
	tr := newRelay(t)
	inner := udpPacket(nodeX, grp1, "from X")
	in := wrappedAs(inner, peerA, Origin{epoch: 5, seq: 42, hops: 3})
	out := relayed(tr, in)
	if len(out) != 1 || dstOf(out[0]) != peerB {
		t.Fatalf("relayed %d packets (%v), want one to B", len(out), out)
	}
	w := out[0]
	if netip.AddrFrom16([16]byte(w[8:24])) != self || w[7] != 2 || binary.BigEndian.Uint32(w[44:48]) != 5 || seqOf(w) != 42 ||
		string(w[WrapLen:]) != string(inner) {
		t.Fatalf("relayed packet %x", w)
	}
	if n := tr.Counters(peerA).RxPackets.Load(); n != 1 {
		t.Fatalf("peer A rx %d", n)
	}
	// Relays carry nodes' packets only, from their overlay addresses.
	if out := relayed(tr, wrapped(udpPacket(srcS, grp1, "x"), peerA)); len(out) != 0 || tr.Dropped(DropForgedSource) != 1 {
		t.Fatalf("a relay's packet from a non-node source went on: %v", out)
	}
	// C's own packet, relayed by A, does not go back to C.
	if out := relayed(tr, wrapped(udpPacket(peerC, grp2, "C's own"), peerA)); len(out) != 0 || tr.Dropped(DropNoListener) != 1 {
		t.Fatalf("C's packet went back to C: %v, drops %v", out, tr.Drops())
	}
	if out := relayed(tr, wrapped(udpPacket(peerB, grp1, "from B"), peerB)); len(out) != 1 || dstOf(out[0]) != peerA {
		t.Fatalf("B's packet went to %d peers, want A alone", len(out))
	}
}

// Only a relay passes packets on, and only a peer that relays may send
// other nodes' packets.
func TestRelayTrust(t *testing.T) {
	tr := newTestRouter(t) // not a relay
	tr.SetLocal([]Subscription{sub(grp1, mld.Exclude)})
	if out := relayed(tr, wrapped(udpPacket(peerA, grp1, "x"), peerA)); len(out) != 0 {
		t.Fatalf("a router that is no relay passed %d packets on", len(out))
	}
	tr.SetSubscriptions(peerA, true, []Subscription{sub(grp1, mld.Exclude)})
	relayed(tr, wrapped(udpPacket(nodeX, grp1, "x"), peerA), wrapped(udpPacket(nodeX, grp1, "x"), peerB))
	if tr.Dropped(DropForgedSource) != 1 || tr.Counters(peerB).Dropped(DropForgedSource) != 1 {
		t.Fatalf("X's packet from relay A and from B (no relay): drops %v", tr.Drops())
	}
}

// A packet that arrived already (over another path) is dropped, whoever
// sends it again; so is a packet of an epoch the sender left, and one this
// node sent itself. A packet that crossed MaxHops links is not passed on.
func TestRelayDuplicatesLoopsHops(t *testing.T) {
	tr := newRelay(t)
	tr.SetSubscriptions(peerB, true, []Subscription{sub(grp1, mld.Exclude)})
	x := udpPacket(nodeX, grp1, "x")
	first := Origin{epoch: 9, seq: 1000, hops: MaxHops}
	if out := relayed(tr, wrappedAs(x, peerA, first)); len(out) != 1 {
		t.Fatalf("first copy: %d relayed", len(out))
	}
	if out := relayed(tr, wrappedAs(x, peerB, first), wrappedAs(x, peerA, first)); len(out) != 0 {
		t.Fatalf("second copies: %d relayed", len(out))
	}
	if d := tr.Dropped(DropDuplicate); d != 2 {
		t.Fatalf("duplicate drops %d, want 2", d)
	}
	// Older and out of order, but within the window: still new.
	if out := relayed(tr, wrappedAs(x, peerA, Origin{epoch: 9, seq: 10, hops: MaxHops})); len(out) != 1 {
		t.Fatalf("an earlier packet: %d relayed", len(out))
	}
	// X restarts: its new epoch starts afresh, its old one is over.
	if out := relayed(tr, wrappedAs(x, peerA, Origin{epoch: 10, seq: 1, hops: MaxHops})); len(out) != 1 {
		t.Fatalf("after a restart: %d relayed", len(out))
	}
	if out := relayed(tr, wrappedAs(x, peerA, Origin{epoch: 9, seq: 1001, hops: MaxHops})); len(out) != 0 || tr.Dropped(DropDuplicate) != 3 {
		t.Fatalf("the old epoch: %d relayed, drops %v", len(out), tr.Drops())
	}
	if out := relayed(tr, wrapped(udpPacket(self, grp1, "mine"), peerA)); len(out) != 0 || tr.Dropped(DropLoop) != 1 {
		t.Fatalf("own packet: %d relayed, drops %v", len(out), tr.Drops())
	}
	if out := relayed(tr, wrappedAs(x, peerA, Origin{epoch: 10, seq: 2, hops: 1})); len(out) != 0 || tr.Dropped(DropHopLimit) != 1 {
		t.Fatalf("last hop: %d relayed, drops %v", len(out), tr.Drops())
	}
}

// A relay subscribes at each peer for its local listeners and for its
// other peers' subscriptions one hop further, merged, up to MaxHops; a
// node that is no relay for its local listeners only.
func TestAdvertised(t *testing.T) {
	tr := newRelay(t)
	far := sub(grp2, mld.Include, srcS)
	far.Hops = MaxHops - 1
	overflow := sub(netip.MustParseAddr("ff1e::ff"), mld.Exclude)
	overflow.Hops = 255
	tr.SetSubscriptions(peerA, true, []Subscription{sub(grp1, mld.Include, srcS), far, overflow})
	tr.SetSubscriptions(peerB, false, []Subscription{sub(grp1, mld.Include, peerC)})
	tr.SetLocal([]Subscription{sub(grp1, mld.Include, peerB), sub(netip.MustParseAddr("ff02::fb"), mld.Exclude)})
	want := map[netip.Addr][]Subscription{
		// A: local and B's and C's.
		peerA: {{Group: grp1, Mode: mld.Include, Sources: []netip.Addr{srcS, peerB, peerC}}, {Group: grp2, Mode: mld.Exclude, Sources: []netip.Addr{}, Hops: 1}},
		// C: local and A's and B's; A's grp2 is MaxHops away already.
		peerC: {{Group: grp1, Mode: mld.Include, Sources: []netip.Addr{srcS, peerB, peerC}}},
	}
	for to, w := range want {
		got := tr.Advertised(to)
		if !slices.EqualFunc(got, w, Subscription.Equal) {
			t.Errorf("advertised to %v: %v, want %v", to, got, w)
		}
	}
	// The link-scope group stays on the link; a node that is no relay
	// advertises its local groups alone.
	plain := newTestRouter(t)
	plain.SetLocal([]Subscription{sub(grp1, mld.Include, peerB)})
	if got := plain.Advertised(peerA); !slices.EqualFunc(got, []Subscription{sub(grp1, mld.Include, peerB)}, Subscription.Equal) {
		t.Errorf("no relay advertised %v", got)
	}
}

// Routes tell, per group, the peers its packets go to and their
// subscriptions.
func TestRoutes(t *testing.T) {
	tr := newRelay(t)
	rt := tr.Routes()
	if len(rt) != 2 || rt[0].Group != grp1 || len(rt[0].To) != 3 || rt[1].Group != grp2 || len(rt[1].To) != 1 || rt[1].To[0].Peer != peerC {
		t.Fatalf("routes %+v", rt)
	}
}

// Peers are told only of groups whose traffic crosses between them, and
// the local groups themselves when all do.
func TestForwarded(t *testing.T) {
	r := newTestRouter(t)
	anySource := func(g string) Subscription { return sub(netip.MustParseAddr(g), mld.Exclude) }
	all := []Subscription{anySource("ff0e::101"), anySource("ff1e::2")}
	if got := r.forwarded(all); &got[0] != &all[0] || len(got) != 2 {
		t.Fatalf("every group crosses: got %v", got)
	}
	mixed := []Subscription{anySource("ff02::fb"), anySource("ff0e::101"), anySource("ff0e::2"), anySource("ff1e::2")}
	if got := r.forwarded(mixed); !slices.EqualFunc(got, all, Subscription.Equal) {
		t.Fatalf("link-scope and all-routers groups kept: got %v, want %v", got, all)
	}
}
