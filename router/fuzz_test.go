package router

import (
	"github.com/librecast/lcast/internal/packettest"
	"net/netip"
	"testing"

	"github.com/librecast/lcast/mld"
)

// FuzzRouter: no packet, read from lc0 or received from a peer, makes the
// router panic or overrun; what it routes goes to a peer, wrapped, what it
// delivers starts inside the packet, a control message lies inside it, and
// what it relays (it is a relay, and so is peer A) goes to a peer with a
// lower hop limit.
func FuzzRouter(f *testing.F) {
	f.Add(packettest.UDP(packettest.Self, packettest.Group1, "hello"), false)
	f.Add(packettest.UDP(packettest.Self, packettest.PeerB, "unicast"), false)
	f.Add(wrapped(packettest.UDP(packettest.PeerA, packettest.Group1, "x"), packettest.PeerA)[16:], true)
	f.Add(packettest.UDP(packettest.PeerA, packettest.Self, "unicast"), true)
	f.Add([]byte{0x60}, true)
	f.Add(wrapped(packettest.UDP(packettest.PeerC, packettest.Group1, "relayed"), packettest.PeerA)[16:], true)
	f.Add(New(Config{Self: packettest.PeerA, Overlay: packettest.Overlay}).AppendControl(nil, packettest.Self, []byte("control")), true)
	r := New(Config{Self: packettest.Self, Overlay: packettest.Overlay, Relay: true})
	r.SetPeers([]netip.Addr{packettest.PeerA, packettest.PeerB}, []netip.Addr{packettest.PeerA})
	r.SetSubscriptions(packettest.PeerA, []Subscription{sub(packettest.Group1, mld.Exclude)})
	r.SetSubscriptions(packettest.PeerB, []Subscription{sub(packettest.Group1, mld.Include, srcS), sub(netip.MustParseAddr("ff02::fb"), mld.Exclude)})
	r.SetLocal([]Subscription{sub(packettest.Group1, mld.Exclude)})
	tab := r.Table()
	f.Fuzz(func(t *testing.T, pkt []byte, fromPeer bool) {
		from := &fromLc0Origin
		if fromPeer {
			var o Origin
			d := r.Deliver(tab, pkt, &o)
			if d.Lc0 != -1 && (d.Lc0 < 0 || d.Lc0 > len(pkt)) {
				t.Fatalf("deliver returned offset %d of a %d-byte packet", d.Lc0, len(pkt))
			}
			if d.Control != nil && (len(d.Control) > len(pkt)-ipv6HeaderLen || o.from == nil) {
				t.Fatalf("control message of %d bytes from %v in a %d-byte packet", len(d.Control), o.from, len(pkt))
			}
			if !d.Relay {
				return
			}
			if off := WrapLen; o.from == nil || o.hops >= MaxHops || len(pkt) < off+ipv6HeaderLen {
				t.Fatalf("relays %x as %+v", pkt, o)
			}
			pkt, from = pkt[WrapLen:], &o
		} else {
			r.OnLink(pkt)
		}
		out := make([]byte, WrapLen+len(pkt))
		for next := 0; ; {
			n, to := r.Route(tab, pkt, from, &next, out, admitAll)
			if n == 0 {
				break
			}
			if n > len(out) || n < ipv6HeaderLen || to == nil || (dstOf(out[:n]) != to.addr && dstOf(out[:n]) != linkLocalOf(to.addr)) {
				t.Fatalf("routed %d bytes to %v: %x", n, to, out[:n])
			}
		}
	})
}
