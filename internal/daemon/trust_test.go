package daemon

import (
	"log/slog"
	"net/netip"
	"testing"

	"github.com/librecast/lcast/internal/config"
	"github.com/librecast/lcast/peer"
	"github.com/librecast/lcast/router"
)

// Only the [[peer]] table makes a peer a trusted relay: a peer that says
// it relays, in its subscription messages, is shown as saying so and
// trusted no more for it.
func TestRelayTrustFromConfig(t *testing.T) {
	var keys [3]peer.Key
	for i := range keys {
		k, err := peer.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k.PublicKey()
	}
	self, says, trusted := peer.OverlayAddr(keys[0]), peer.OverlayAddr(keys[1]), peer.OverlayAddr(keys[2])
	peers := []config.Peer{{PublicKey: keys[1]}, {PublicKey: keys[2], Relay: true}}
	d := &Daemon{cfg: &config.Config{}, log: slog.New(slog.DiscardHandler), saysRelay: map[netip.Addr]bool{},
		router: router.New(router.Config{Self: self, Overlay: peer.OverlayPrefix})}
	d.router.SetPeers([]netip.Addr{says, trusted}, trustedRelays(peers))
	d.peerSubscribed(says, true, nil)
	d.peerSubscribed(trusted, false, nil)
	if d.router.TrustsRelay(says) || !d.router.TrustsRelay(trusted) || !d.saysRelay[says] || d.saysRelay[trusted] {
		t.Fatalf("trusted: %v (says it relays), %v (marked relay); says it relays: %v", d.router.TrustsRelay(says), d.router.TrustsRelay(trusted), d.saysRelay)
	}
	d.peerSubscribed(says, false, nil)
	if d.saysRelay[says] {
		t.Fatal("a peer that no longer says it relays is still shown as saying so")
	}
}
