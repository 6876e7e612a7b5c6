package router

import (
	"encoding/binary"
	"github.com/librecast/lcast/internal/packettest"
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
	tr := New(Config{Self: packettest.Self, Overlay: packettest.Overlay, Relay: true})
	tr.SetPeers([]netip.Addr{packettest.PeerA, packettest.PeerB, packettest.PeerC}, []netip.Addr{packettest.PeerA})
	tr.SetSubscriptions(packettest.PeerA, []Subscription{sub(packettest.Group1, mld.Exclude)})
	tr.SetSubscriptions(packettest.PeerB, []Subscription{sub(packettest.Group1, mld.Exclude)})
	tr.SetSubscriptions(packettest.PeerC, []Subscription{sub(packettest.Group1, mld.Include, srcS), sub(packettest.Group2, mld.Exclude)})
	tr.SetLocal([]Subscription{sub(packettest.Group1, mld.Exclude)})
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
	inner := packettest.UDP(nodeX, packettest.Group1, "from X")
	in := wrappedAs(inner, packettest.PeerA, Origin{epoch: 5, seq: 42, hops: 3})
	out := relayed(tr, in)
	if len(out) != 1 || dstOf(out[0]) != packettest.PeerB {
		t.Fatalf("relayed %d packets (%v), want one to B", len(out), out)
	}
	w := out[0]
	if netip.AddrFrom16([16]byte(w[8:24])) != packettest.Self || w[7] != 2 || binary.BigEndian.Uint32(w[44:48]) != 5 || seqOf(w) != 42 ||
		string(w[WrapLen:]) != string(inner) {
		t.Fatalf("relayed packet %x", w)
	}
	if n := tr.Counters(packettest.PeerA).RxPackets.Load(); n != 1 {
		t.Fatalf("peer A rx %d", n)
	}
	// Relays carry nodes' packets only, from their overlay addresses.
	if out := relayed(tr, wrapped(packettest.UDP(srcS, packettest.Group1, "x"), packettest.PeerA)); len(out) != 0 || tr.Dropped(DropForgedSource) != 1 {
		t.Fatalf("a relay's packet from a non-node source went on: %v", out)
	}
	// C's own packet, relayed by A, does not go back to C.
	if out := relayed(tr, wrapped(packettest.UDP(packettest.PeerC, packettest.Group2, "C's own"), packettest.PeerA)); len(out) != 0 || tr.Dropped(DropNoListener) != 1 {
		t.Fatalf("C's packet went back to C: %v, drops %v", out, tr.Drops())
	}
	if out := relayed(tr, wrapped(packettest.UDP(packettest.PeerB, packettest.Group1, "from B"), packettest.PeerB)); len(out) != 1 || dstOf(out[0]) != packettest.PeerA {
		t.Fatalf("B's packet went to %d peers, want A alone", len(out))
	}
}

// Only a relay passes packets on, and only a peer this node's
// configuration trusts as a relay may send other nodes' packets: a peer's
// subscriptions, whatever it says of itself, change nothing.
func TestRelayTrust(t *testing.T) {
	tr := newTestRouter(t) // not a relay, trusting none
	tr.SetLocal([]Subscription{sub(packettest.Group1, mld.Exclude)})
	if out := relayed(tr, wrapped(packettest.UDP(packettest.PeerA, packettest.Group1, "x"), packettest.PeerA)); len(out) != 0 {
		t.Fatalf("a router that is no relay passed %d packets on", len(out))
	}
	fromX := func(via netip.Addr) Delivery {
		return deliver(tr, wrapped(packettest.UDP(nodeX, packettest.Group1, "x"), via))
	}
	if d := fromX(packettest.PeerA); d.Lc0 != -1 || tr.Counters(packettest.PeerA).Dropped(DropForgedSource) != 1 || tr.TrustsRelay(packettest.PeerA) {
		t.Fatalf("X's packet from A, not trusted: delivered as %+v, A's drops %v", d, tr.Counters(packettest.PeerA).Drops())
	}
	tr.SetPeers([]netip.Addr{packettest.PeerA, packettest.PeerB, packettest.PeerC}, []netip.Addr{packettest.PeerA})
	if d := fromX(packettest.PeerA); d.Lc0 != WrapLen || !tr.TrustsRelay(packettest.PeerA) {
		t.Fatalf("X's packet from A, trusted: delivered as %+v", d)
	}
	if d := fromX(packettest.PeerB); d.Lc0 != -1 || tr.Counters(packettest.PeerB).Dropped(DropForgedSource) != 1 {
		t.Fatalf("X's packet from B, not trusted: delivered as %+v, B's drops %v", d, tr.Counters(packettest.PeerB).Drops())
	}
	// Trust ends with the configuration that gave it.
	tr.SetPeers([]netip.Addr{packettest.PeerA, packettest.PeerB, packettest.PeerC}, nil)
	if d := fromX(packettest.PeerA); d.Lc0 != -1 || tr.Dropped(DropForgedSource) != 3 {
		t.Fatalf("X's packet from A, no longer trusted: delivered as %+v, drops %v", d, tr.Drops())
	}
}

// A packet that arrived already (over another path) is dropped, whoever
// sends it again; so is a packet of an epoch the sender left, and one this
// node sent itself. A packet that crossed MaxHops links is not passed on.
func TestRelayDuplicatesLoopsHops(t *testing.T) {
	tr := newRelay(t)
	tr.SetPeers([]netip.Addr{packettest.PeerA, packettest.PeerB, packettest.PeerC}, []netip.Addr{packettest.PeerA, packettest.PeerB})
	tr.SetSubscriptions(packettest.PeerB, []Subscription{sub(packettest.Group1, mld.Exclude)})
	x := packettest.UDP(nodeX, packettest.Group1, "x")
	first := Origin{epoch: 9, seq: 1000, hops: MaxHops}
	if out := relayed(tr, wrappedAs(x, packettest.PeerA, first)); len(out) != 1 {
		t.Fatalf("first copy: %d relayed", len(out))
	}
	if out := relayed(tr, wrappedAs(x, packettest.PeerB, first), wrappedAs(x, packettest.PeerA, first)); len(out) != 0 {
		t.Fatalf("second copies: %d relayed", len(out))
	}
	if d := tr.Dropped(DropDuplicate); d != 2 {
		t.Fatalf("duplicate drops %d, want 2", d)
	}
	// Older and out of order, but within the window: still new.
	if out := relayed(tr, wrappedAs(x, packettest.PeerA, Origin{epoch: 9, seq: 10, hops: MaxHops})); len(out) != 1 {
		t.Fatalf("an earlier packet: %d relayed", len(out))
	}
	// X restarts: its new epoch starts afresh, its old one is over.
	if out := relayed(tr, wrappedAs(x, packettest.PeerA, Origin{epoch: 10, seq: 1, hops: MaxHops})); len(out) != 1 {
		t.Fatalf("after a restart: %d relayed", len(out))
	}
	if out := relayed(tr, wrappedAs(x, packettest.PeerA, Origin{epoch: 9, seq: 1001, hops: MaxHops})); len(out) != 0 || tr.Dropped(DropDuplicate) != 3 {
		t.Fatalf("the old epoch: %d relayed, drops %v", len(out), tr.Drops())
	}
	if out := relayed(tr, wrapped(packettest.UDP(packettest.Self, packettest.Group1, "mine"), packettest.PeerA)); len(out) != 0 || tr.Dropped(DropLoop) != 1 {
		t.Fatalf("own packet: %d relayed, drops %v", len(out), tr.Drops())
	}
	if out := relayed(tr, wrappedAs(x, packettest.PeerA, Origin{epoch: 10, seq: 2, hops: 1})); len(out) != 0 || tr.Dropped(DropHopLimit) != 1 {
		t.Fatalf("last hop: %d relayed, drops %v", len(out), tr.Drops())
	}
}

// A relay subscribes at each peer for its local listeners and for its
// other peers' subscriptions one hop further, merged, up to MaxHops; a
// node that is no relay for its local listeners only.
func TestAdvertised(t *testing.T) {
	tr := newRelay(t)
	far := sub(packettest.Group2, mld.Include, srcS)
	far.Hops = MaxHops - 1
	overflow := sub(netip.MustParseAddr("ff1e::ff"), mld.Exclude)
	overflow.Hops = 255
	tr.SetSubscriptions(packettest.PeerA, []Subscription{sub(packettest.Group1, mld.Include, srcS), far, overflow})
	tr.SetSubscriptions(packettest.PeerB, []Subscription{sub(packettest.Group1, mld.Include, packettest.PeerC)})
	tr.SetLocal([]Subscription{sub(packettest.Group1, mld.Include, packettest.PeerB), sub(netip.MustParseAddr("ff02::fb"), mld.Exclude)})
	want := map[netip.Addr][]Subscription{
		// A: local and B's and C's.
		packettest.PeerA: {{Group: packettest.Group1, Mode: mld.Include, Sources: []netip.Addr{srcS, packettest.PeerB, packettest.PeerC}}, {Group: packettest.Group2, Mode: mld.Exclude, Sources: []netip.Addr{}, Hops: 1}},
		// C: local and A's and B's; A's grp2 is MaxHops away already.
		packettest.PeerC: {{Group: packettest.Group1, Mode: mld.Include, Sources: []netip.Addr{srcS, packettest.PeerB, packettest.PeerC}}},
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
	plain.SetLocal([]Subscription{sub(packettest.Group1, mld.Include, packettest.PeerB)})
	if got := plain.Advertised(packettest.PeerA); !slices.EqualFunc(got, []Subscription{sub(packettest.Group1, mld.Include, packettest.PeerB)}, Subscription.Equal) {
		t.Errorf("no relay advertised %v", got)
	}
}

// When the relayed groups do not fit what a peer keeps of a state, the
// local groups go first and the other peers share the room: a peer that
// subscribed to thousands of groups cannot push out another's few.
func TestAdvertisedFairShare(t *testing.T) {
	const room = 10
	tr := New(Config{Self: packettest.Self, Overlay: packettest.Overlay, Relay: true, MaxAdvertised: room})
	tr.SetPeers([]netip.Addr{packettest.PeerA, packettest.PeerB, packettest.PeerC}, nil)
	group := func(i int) netip.Addr { return netip.AddrFrom16([16]byte{0xff, 0x1e, 14: byte(i >> 8), 15: byte(i)}) }
	var many []Subscription
	for i := range 1000 {
		many = append(many, sub(group(i), mld.Exclude)) // the lowest groups, all A's
	}
	tr.SetSubscriptions(packettest.PeerA, many)
	tr.SetSubscriptions(packettest.PeerB, []Subscription{sub(group(5000), mld.Exclude), sub(group(5001), mld.Exclude)})
	tr.SetLocal([]Subscription{sub(group(9000), mld.Exclude)})
	got := tr.Advertised(packettest.PeerC)
	has := func(g netip.Addr) bool {
		return slices.ContainsFunc(got, func(s Subscription) bool { return s.Group == g })
	}
	if len(got) != room || !has(group(9000)) || !has(group(5000)) || !has(group(5001)) {
		t.Fatalf("advertised to C %d groups, want %d with the local group and all of B's: %v", len(got), room, got)
	}
	if got := tr.Advertised(packettest.PeerB); len(got) != room {
		t.Fatalf("advertised to B %d groups, want %d", len(got), room)
	}
}

// Routes tell, per group, the peers its packets go to and their
// subscriptions.
func TestRoutes(t *testing.T) {
	tr := newRelay(t)
	rt := tr.Routes()
	if len(rt) != 2 || rt[0].Group != packettest.Group1 || len(rt[0].To) != 3 || rt[1].Group != packettest.Group2 || len(rt[1].To) != 1 || rt[1].To[0].Peer != packettest.PeerC {
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
