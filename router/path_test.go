package router

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/packettest"
	"github.com/librecast/lcast/mld"
)

// A relay neither passes on to a peer the packets of the peers it
// reports reaching directly nor subscribes for it at them; what one peer
// reports changes nothing for the others.
func TestDirectOf(t *testing.T) {
	a, b, c := packettest.PeerA, packettest.PeerB, packettest.PeerC
	r := New(Config{Self: packettest.Self, Overlay: packettest.Overlay, Relay: true})
	r.SetPeers([]netip.Addr{a, b, c}, nil)
	for _, p := range []netip.Addr{a, b, c} {
		r.SetSubscriptions(p, []Subscription{sub(packettest.Group1, mld.Exclude)})
	}
	fromA := func() []netip.Addr {
		var to []netip.Addr
		for _, w := range relayed(r, wrapped(packettest.UDP(a, packettest.Group1, "from A"), a)) {
			to = append(to, dstOf(w))
		}
		slices.SortFunc(to, netip.Addr.Compare)
		return to
	}
	both := slices.SortedFunc(slices.Values([]netip.Addr{b, c}), netip.Addr.Compare)
	if got := fromA(); !slices.Equal(got, both) {
		t.Fatalf("before: A's packet went to %v", got)
	}
	if got := r.Advertised(a); len(got) != 1 {
		t.Fatalf("before: toward A %v", got)
	}
	r.SetDirectOf(map[netip.Addr][]netip.Addr{b: {a}, nodeX: {a}})
	if got := fromA(); !slices.Equal(got, []netip.Addr{c}) {
		t.Fatalf("B reaches A directly: A's packet went to %v, want C alone", got)
	}
	// C's subscription still goes to A; B's goes without A's own
	// addresses (A may pass on others' packets), so A sends its own for C
	// alone.
	r.SetSubscriptions(c, nil)
	want := []Subscription{sub(packettest.Group1, mld.Exclude, slices.SortedFunc(slices.Values([]netip.Addr{a, linkLocalOf(a)}), netip.Addr.Compare)...)}
	want[0].Hops = 1
	if got := r.Advertised(a); !slices.EqualFunc(got, want, func(x, y Subscription) bool { return x.Equal(y) && x.Hops == y.Hops }) {
		t.Fatalf("toward A with only B subscribed, B reaching A: %v", got)
	}
	if got := r.Advertised(c); len(got) != 1 {
		t.Fatalf("toward C: %v", got)
	}
	// B's link-local source counts as B's.
	r.SetDirectOf(map[netip.Addr][]netip.Addr{c: {b}})
	r.SetSubscriptions(c, []Subscription{sub(packettest.Group1, mld.Exclude)})
	if out := relayed(r, wrapped(packettest.UDP(linkLocalOf(b), packettest.Group1, "from B"), b)); len(out) != 1 || dstOf(out[0]) != a {
		t.Fatalf("B's link-local packet went to %d peers", len(out))
	}
	// This node's own packets go to every subscriber, whoever reaches
	// this node directly.
	r.SetDirectOf(map[netip.Addr][]netip.Addr{a: {packettest.Self}, b: {packettest.Self}})
	if out := fromLc0(r, packettest.UDP(packettest.Self, packettest.Group1, "own")); len(out) != 3 {
		t.Fatalf("this node's packet went to %d peers, want 3", len(out))
	}
	r.SetDirectOf(nil)
	if got := fromA(); !slices.Equal(got, both) {
		t.Fatalf("after: A's packet went to %v", got)
	}
}

// Unicast to a peer whose path is relayed goes wrapped to the relay, which
// passes it on once to that peer, which writes it into lc0: a program's
// answer to a multicast sender crosses NATs that no direct path does.
func TestUnicastThroughRelay(t *testing.T) {
	self, hubAddr, far := packettest.Self, packettest.PeerA, packettest.PeerB
	a := New(Config{Self: self, Overlay: packettest.Overlay})
	a.SetPeers([]netip.Addr{hubAddr, far}, []netip.Addr{hubAddr})
	a.SetPaths(map[netip.Addr]Path{hubAddr: {Direct: true}, far: {Via: hubAddr}})
	pkt := packettest.UDP(self, far, "an answer")
	out := fromLc0(a, pkt)
	if len(out) != 1 || dstOf(out[0]) != hubAddr || string(out[0][WrapLen:]) != string(pkt) {
		t.Fatalf("unicast to a relayed peer: %x", out)
	}
	if n := a.Counters(hubAddr).TxPackets.Load(); n != 1 {
		t.Fatalf("relay tx %d", n)
	}

	hub := New(Config{Self: hubAddr, Overlay: packettest.Overlay, Relay: true})
	hub.SetPeers([]netip.Addr{self, far}, nil)
	var o Origin
	if d := hub.Deliver(hub.Table(), out[0], &o); !d.Relay || d.Lc0 != -1 {
		t.Fatalf("the relay's delivery: %+v, drops %v", d, hub.Drops())
	}
	on := routeAll(hub, out[0][WrapLen:], &o)
	if len(on) != 1 || dstOf(on[0]) != far || netip.AddrFrom16([16]byte(on[0][8:24])) != hubAddr || string(on[0][WrapLen:]) != string(pkt) {
		t.Fatalf("the relay passed on %x", on)
	}

	b := New(Config{Self: far, Overlay: packettest.Overlay})
	b.SetPeers([]netip.Addr{hubAddr, self}, []netip.Addr{hubAddr})
	if d := b.Deliver(b.Table(), on[0], &o); d.Lc0 != WrapLen || d.Relay {
		t.Fatalf("the far end's delivery: %+v, drops %v", d, b.Drops())
	}
}

// Hostile peers: a relay passes on only a peer's own unicast, one hop, to
// another peer; a node takes relayed unicast only from a relay it trusts
// and only for itself.
func TestUnicastThroughRelayHostile(t *testing.T) {
	hub := New(Config{Self: packettest.Self, Overlay: packettest.Overlay, Relay: true})
	hub.SetPeers([]netip.Addr{packettest.PeerA, packettest.PeerB}, nil)
	wrapUni := func(inner []byte, from, to netip.Addr) []byte {
		b := make([]byte, WrapLen+len(inner))
		wrap(b, from, to, len(inner), &Origin{hops: MaxHops})
		copy(b[WrapLen:], inner)
		return b
	}
	for _, c := range []struct {
		name  string
		inner []byte
		why   Reason
	}{
		{"another node's packet", packettest.UDP(nodeX, packettest.PeerB, "x"), DropForgedSource},
		{"to no peer", packettest.UDP(packettest.PeerA, nodeX, "x"), DropNoRoute},
		{"back to the sender", packettest.UDP(packettest.PeerA, packettest.PeerA, "x"), DropNotForNode},
	} {
		var o Origin
		before := hub.Dropped(c.why)
		if d := hub.Deliver(hub.Table(), wrapUni(c.inner, packettest.PeerA, packettest.Self), &o); d.Relay || d.Lc0 != -1 || hub.Dropped(c.why) != before+1 {
			t.Errorf("%s: %+v, drops %v", c.name, d, hub.Drops())
		}
	}
	// A node that is no relay passes nothing on.
	plain := New(Config{Self: packettest.Self, Overlay: packettest.Overlay})
	plain.SetPeers([]netip.Addr{packettest.PeerA, packettest.PeerB}, nil)
	var o Origin
	if d := plain.Deliver(plain.Table(), wrapUni(packettest.UDP(packettest.PeerA, packettest.PeerB, "x"), packettest.PeerA, packettest.Self), &o); d.Relay || plain.Dropped(DropNotForNode) != 1 {
		t.Errorf("a node that is no relay: %+v, drops %v", d, plain.Drops())
	}
	// Relayed unicast from a peer not trusted as a relay is a forgery.
	if d := plain.Deliver(plain.Table(), wrapUni(packettest.UDP(packettest.PeerB, packettest.Self, "x"), packettest.PeerA, packettest.Self), &o); d.Lc0 != -1 || plain.Dropped(DropForgedSource) != 1 {
		t.Errorf("relayed unicast from an untrusted peer: %+v, drops %v", d, plain.Drops())
	}
	// A trusted relay's unicast for another node does not enter lc0, nor
	// does its unicast from a node that is none of this node's peers.
	plain.SetPeers([]netip.Addr{packettest.PeerA, packettest.PeerB}, []netip.Addr{packettest.PeerA})
	if d := plain.Deliver(plain.Table(), wrapUni(packettest.UDP(packettest.PeerB, nodeX, "x"), packettest.PeerA, packettest.Self), &o); d.Lc0 != -1 || plain.Dropped(DropNotForNode) != 2 {
		t.Errorf("relayed unicast for another node: %+v, drops %v", d, plain.Drops())
	}
	if d := plain.Deliver(plain.Table(), wrapUni(packettest.UDP(nodeX, packettest.Self, "x"), packettest.PeerA, packettest.Self), &o); d.Lc0 != -1 || plain.Dropped(DropForgedSource) != 2 {
		t.Errorf("relayed unicast from a node that is no peer: %+v, drops %v", d, plain.Drops())
	}
	// A relay does not pass on what only the router may make.
	ctl := packettest.UDP(packettest.PeerA, packettest.PeerB, "x")
	ctl[6] = ProtoControl
	if d := hub.Deliver(hub.Table(), wrapUni(ctl, packettest.PeerA, packettest.Self), &o); d.Relay || hub.Dropped(DropMalformed) != 1 {
		t.Errorf("a control packet to pass on: %+v, drops %v", d, hub.Drops())
	}
}

// While a sender's direct path is known to be down, what relays deliver
// of it is taken at once, not dropped as ahead of the direct path for
// directLive; its direct packets then start afresh from what came
// relayed, so nothing arrives twice.
func TestSeenPathDown(t *testing.T) {
	var s seen
	s.init()
	b := packettest.PeerB
	now := time.Now()
	for seq := uint64(1); seq <= 10; seq++ {
		if _, ok := s.admit(b, true, false, 1, seq, now); !ok {
			t.Fatalf("direct %d", seq)
		}
	}
	if why, ok := s.admit(b, false, false, 1, 11, now); ok || why != DropRelayAhead {
		t.Fatalf("relayed 11 with the direct path live: %v %v", why, ok)
	}
	for seq := uint64(11); seq <= 20; seq++ {
		if why, ok := s.admit(b, false, true, 1, seq, now); !ok {
			t.Fatalf("relayed %d with the direct path down: %v", seq, why)
		}
	}
	for seq := uint64(15); seq <= 25; seq++ {
		if _, ok := s.admit(b, true, false, 1, seq, now); ok != (seq > 20) {
			t.Fatalf("direct %d after the path came back: admitted %v", seq, ok)
		}
	}
	// The path goes down again for long: the relays deliver 26-1000. When
	// it comes back, the packets the transport held since it went down
	// (26-60) arrive first: duplicates; then the stream's own.
	for seq := uint64(26); seq <= 1000; seq++ {
		if _, ok := s.admit(b, false, true, 1, seq, now); !ok {
			t.Fatalf("relayed %d with the direct path down", seq)
		}
	}
	later := now.Add(2 * time.Second)
	for seq := uint64(26); seq <= 60; seq++ {
		if _, ok := s.admit(b, true, false, 1, seq, later); ok {
			t.Fatalf("held direct %d, which the relays delivered: admitted", seq)
		}
	}
	for seq := uint64(995); seq <= 1010; seq++ {
		if _, ok := s.admit(b, true, false, 1, seq, later); ok != (seq > 1000) {
			t.Fatalf("direct %d once the path is back: admitted %v", seq, ok)
		}
	}
}
