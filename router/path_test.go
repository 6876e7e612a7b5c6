package router

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/packettest"
	"github.com/librecast/lcast/mld"
)

// Toward a relay it trusts, a node excludes the peers it reaches directly
// from every group it subscribes to (their link-local addresses too for
// link-scope groups), and leaves Include groups without them; toward
// other peers, and before any path is direct, its state is unchanged.
func TestAdvertisedExcludesDirectPeers(t *testing.T) {
	r := New(Config{Self: packettest.Self, Overlay: packettest.Overlay, Scope: ScopePolicy{LinkLocal: true}})
	hub, a, b := packettest.PeerA, packettest.PeerB, packettest.PeerC
	r.SetPeers([]netip.Addr{hub, a, b}, []netip.Addr{hub})
	mdns := netip.MustParseAddr("ff02::fb")
	local := []Subscription{
		sub(packettest.Group1, mld.Exclude),
		sub(packettest.Group2, mld.Include, a),
		sub(mdns, mld.Exclude),
		sub(netip.MustParseAddr("ff3e::1"), mld.Include, a, srcS),
	}
	r.SetLocal(local)
	if got := r.Advertised(hub); !slices.EqualFunc(got, local, mld.GroupState.Equal) {
		t.Fatalf("with no direct path: %v", got)
	}
	r.SetPaths(map[netip.Addr]Path{hub: {Direct: true}, a: {Direct: true}, b: {Via: hub}})
	sorted := func(as ...netip.Addr) []netip.Addr { return slices.SortedFunc(slices.Values(as), netip.Addr.Compare) }
	want := []Subscription{
		sub(packettest.Group1, mld.Exclude, a),
		sub(mdns, mld.Exclude, sorted(a, linkLocalOf(a))...),
		sub(netip.MustParseAddr("ff3e::1"), mld.Include, srcS),
	}
	slices.SortFunc(want, func(x, y Subscription) int { return x.Group.Compare(y.Group) })
	if got := r.Advertised(hub); !slices.EqualFunc(got, want, mld.GroupState.Equal) {
		t.Fatalf("toward the relay:\n got %v\nwant %v", got, want)
	}
	for _, to := range []netip.Addr{a, b} {
		if got := r.Advertised(to); !slices.EqualFunc(got, local, mld.GroupState.Equal) {
			t.Fatalf("toward %v, no relay: %v", to, got)
		}
	}
	if r.Path(b) != (Path{Via: hub}) || r.Path(a) != (Path{Direct: true}) {
		t.Fatalf("paths: a %+v, b %+v", r.Path(a), r.Path(b))
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
	// A trusted relay's unicast for another node does not enter lc0.
	plain.SetPeers([]netip.Addr{packettest.PeerA, packettest.PeerB}, []netip.Addr{packettest.PeerA})
	if d := plain.Deliver(plain.Table(), wrapUni(packettest.UDP(packettest.PeerB, nodeX, "x"), packettest.PeerA, packettest.Self), &o); d.Lc0 != -1 || plain.Dropped(DropNotForNode) != 2 {
		t.Errorf("relayed unicast for another node: %+v, drops %v", d, plain.Drops())
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
}
