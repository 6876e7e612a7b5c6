package daemon

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/librecast/lcast/internal/config"
	"github.com/librecast/lcast/peer"
)

func testKeys(t *testing.T, n int) []peer.Key {
	t.Helper()
	keys := make([]peer.Key, n)
	for i := range keys {
		k, err := peer.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k.PublicKey()
	}
	return keys
}

// The desired peers: configured ones in the configuration's order with the
// trust it grants, then introduced ones by key, without trust; a key both
// configured and introduced is the configured peer, at its configured
// endpoint.
func TestDesiredPeers(t *testing.T) {
	keys := testKeys(t, 4)
	lan := netip.MustParsePrefix("2001:db8:100::/64")
	ep := netip.MustParseAddrPort("[2001:db8::1]:51820")
	introducedEp := netip.MustParseAddrPort("[2001:db8::99]:40000")
	configured := []config.Peer{
		{PublicKey: keys[1], Relay: true, Introducer: true},
		{PublicKey: keys[0], LANPrefixes: []netip.Prefix{lan}},
	}
	resolved := []peer.Config{{PublicKey: keys[1], Endpoint: ep}, {PublicKey: keys[0]}}
	by := []netip.Addr{peer.OverlayAddr(keys[1])}
	introduced := map[peer.Key]peer.Introduced{
		keys[0]: {Endpoint: introducedEp, By: by}, // configured: the configuration wins
		keys[3]: {Endpoint: introducedEp, By: by},
		keys[2]: {Endpoint: introducedEp, By: by},
	}
	set := desiredPeers(configured, resolved, introduced)

	wantOrder := []peer.Key{keys[1], keys[0]}
	wantOrder = append(wantOrder, slices.SortedFunc(slices.Values([]peer.Key{keys[2], keys[3]}), peer.Key.Compare)...)
	var got []peer.Key
	for _, p := range set.all {
		got = append(got, p.PublicKey)
	}
	if !slices.Equal(got, wantOrder) {
		t.Fatalf("peers in order %v, want %v", got, wantOrder)
	}
	if set.all[1].Endpoint.IsValid() {
		t.Errorf("a configured peer without an endpoint took the introduced one: %v", set.all[1].Endpoint)
	}
	if _, ok := set.introduced[keys[0]]; ok || len(set.introduced) != 2 {
		t.Errorf("introduced = %v, want the two peers the configuration does not list", set.introduced)
	}
	for i, p := range set.all {
		if set.addrs[i] != peer.OverlayAddr(p.PublicKey) {
			t.Errorf("addrs[%d] = %v, not the overlay address of %v", i, set.addrs[i], p.PublicKey)
		}
	}
	if !slices.Equal(set.relays, []netip.Addr{peer.OverlayAddr(keys[1])}) {
		t.Errorf("relays = %v, want only the configured relay", set.relays)
	}
	if len(set.lans) != 1 || !slices.Equal(set.lans[peer.OverlayAddr(keys[0])], []netip.Prefix{lan}) {
		t.Errorf("lans = %v, want only the configured gateway's", set.lans)
	}
	// The caller's map is not changed.
	if len(introduced) != 3 {
		t.Errorf("desiredPeers changed its argument: %v", introduced)
	}
}

// The exchange speaks to every peer but the introduced ones that are
// quiet (never heard from, their endpoint not tried now).
func TestDesiredPeersQuiet(t *testing.T) {
	keys := testKeys(t, 3)
	configured := []config.Peer{{PublicKey: keys[0], Introducer: true}}
	by := []netip.Addr{peer.OverlayAddr(keys[0])}
	set := desiredPeers(configured, []peer.Config{{PublicKey: keys[0]}}, map[peer.Key]peer.Introduced{
		keys[1]: {By: by, Quiet: true, Unreached: true},
		keys[2]: {By: by, Endpoint: netip.MustParseAddrPort("[2001:db8::2]:51820")},
	})
	want := []netip.Addr{peer.OverlayAddr(keys[0]), peer.OverlayAddr(keys[2])}
	if !slices.Equal(set.spoken, want) || len(set.addrs) != 3 {
		t.Fatalf("spoken %v of %v, want %v", set.spoken, set.addrs, want)
	}
	for _, p := range set.all {
		if p.PublicKey == keys[1] && !p.Forget {
			t.Errorf("the unreached peer's endpoint is not forgotten: %+v", p)
		}
	}
}
