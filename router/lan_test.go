package router

import (
	"net/netip"
	"testing"

	"github.com/librecast/lcast/internal/packettest"
	"github.com/librecast/lcast/mld"
)

var (
	lanOfA  = netip.MustParsePrefix("2001:db8:a::/64")  // behind gateway peer A
	ownLAN  = netip.MustParsePrefix("2001:db8:50::/64") // behind this node
	hostOfA = netip.MustParseAddr("2001:db8:a::10")
	ownHost = netip.MustParseAddr("2001:db8:50::10")
)

// A gateway peer's packets may carry the sources its [[peer]] table lists
// as lan_prefixes, and no others; a reload that drops them ends it. A
// relay this node trusts may pass on packets of any LAN this node knows.
func TestDeliverLANSources(t *testing.T) {
	r := newTestRouter(t)
	r.SetLocal([]Subscription{sub(packettest.Group1, mld.Exclude)})
	fromHost := func(src, via netip.Addr) Delivery {
		return deliver(r, wrapped(packettest.UDP(src, packettest.Group1, "x"), via))
	}
	if d := fromHost(hostOfA, packettest.PeerA); d.Lc0 != -1 || r.Counters(packettest.PeerA).Dropped(DropForgedSource) != 1 {
		t.Fatalf("A's LAN host before A has prefixes: delivered as %+v, A's drops %v", d, r.Counters(packettest.PeerA).Drops())
	}
	r.SetLANPrefixes(map[netip.Addr][]netip.Prefix{packettest.PeerA: {lanOfA}, srcS: {ownLAN}})
	if d := fromHost(hostOfA, packettest.PeerA); d.Lc0 != WrapLen {
		t.Fatalf("A's LAN host: delivered as %+v", d)
	}
	if d := fromHost(hostOfA, packettest.PeerB); d.Lc0 != -1 || r.Counters(packettest.PeerB).Dropped(DropForgedSource) != 1 {
		t.Fatalf("A's LAN host through B, no relay: delivered as %+v", d)
	}
	if d := fromHost(netip.MustParseAddr("2001:db8:b::10"), packettest.PeerA); d.Lc0 != -1 || r.Counters(packettest.PeerA).Dropped(DropForgedSource) != 2 {
		t.Fatalf("a source outside A's prefixes: delivered as %+v", d)
	}
	// Prefixes of no peer (srcS is none) are ignored; peers that stay
	// keep theirs when the peers change.
	r.SetPeers([]netip.Addr{packettest.PeerA, packettest.PeerB, packettest.PeerC}, []netip.Addr{packettest.PeerB})
	// (Another host of A's: hostOfA's direct path is live, so its packets
	// through relays would be relay_ahead.)
	if d := fromHost(netip.MustParseAddr("2001:db8:a::11"), packettest.PeerB); d.Lc0 != WrapLen {
		t.Fatalf("A's LAN host through B, a trusted relay: delivered as %+v", d)
	}
	if d := fromHost(ownHost, packettest.PeerB); d.Lc0 != -1 || r.Counters(packettest.PeerB).Dropped(DropForgedSource) != 2 {
		t.Fatalf("a source on no known LAN through a relay: delivered as %+v", d)
	}
	r.SetOwnLANs([]netip.Prefix{ownLAN})
	if d := fromHost(ownHost, packettest.PeerB); d.Lc0 != -1 || r.Counters(packettest.PeerB).Dropped(DropLoop) != 1 {
		t.Fatalf("this node's own LAN host back through a relay: delivered as %+v", d)
	}
	r.SetLANPrefixes(nil)
	if d := fromHost(hostOfA, packettest.PeerA); d.Lc0 != -1 || r.Counters(packettest.PeerA).Dropped(DropForgedSource) != 3 {
		t.Fatalf("A's LAN host after its prefixes were removed: delivered as %+v", d)
	}
}

// Multicast read from lc0 may carry a source on this gateway's LANs (the
// kernel routed a LAN host's packet into lc0), and no other foreign one.
func TestRouteOwnLANSources(t *testing.T) {
	r := newTestRouter(t) // A takes grp1 from any source
	if out := fromLc0(r, packettest.UDP(ownHost, packettest.Group1, "x")); len(out) != 0 || r.Dropped(DropNotOwnSource) != 1 {
		t.Fatalf("a LAN host's packet before the LANs are set: %d packets", len(out))
	}
	r.SetOwnLANs([]netip.Prefix{ownLAN})
	if out := fromLc0(r, packettest.UDP(ownHost, packettest.Group1, "x")); len(out) != 1 || dstOf(out[0]) != packettest.PeerA {
		t.Fatalf("a LAN host's packet: %d packets", len(out))
	}
	if out := fromLc0(r, packettest.UDP(hostOfA, packettest.Group1, "x")); len(out) != 0 || r.Dropped(DropNotOwnSource) != 2 {
		t.Fatalf("a packet from another LAN: %d packets", len(out))
	}
	r.SetSubscriptions(packettest.PeerA, []Subscription{sub(packettest.Group1, mld.Exclude)}) // the LANs stay
	if out := fromLc0(r, packettest.UDP(ownHost, packettest.Group1, "x")); len(out) != 1 {
		t.Fatalf("a LAN host's packet after a table change: %d packets", len(out))
	}
}
