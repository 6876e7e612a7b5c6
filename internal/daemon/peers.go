package daemon

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/librecast/lcast/internal/config"
	"github.com/librecast/lcast/peer"
	"github.com/librecast/lcast/router"
)

// A node's peers are the configured ones ([[peer]] tables) and the
// introduced ones: the nodes its introducers introduce (peer.Introductions)
// that it does not list itself. Introduced peers get no relay trust and no
// LAN prefixes: only the configuration grants those.

// peerEntry is one peer as status lists it.
type peerEntry struct {
	key peer.Key
	// by are the introducers of an introduced peer; nil for a configured
	// one.
	by []netip.Addr
}

// learnt names, for status and metrics, where this node learnt of the
// peer: "configured" or "introduced".
func (p peerEntry) learnt() string {
	if p.by != nil {
		return "introduced"
	}
	return "configured"
}

// peerList returns the peers, the configured ones in the configuration's
// order, then the introduced ones by key.
func (d *Daemon) peerList() []peerEntry {
	d.peersMu.Lock()
	defer d.peersMu.Unlock()
	out := make([]peerEntry, 0, len(d.set.all))
	for _, p := range d.set.configured {
		out = append(out, peerEntry{key: p.PublicKey})
	}
	for _, k := range slices.SortedFunc(maps.Keys(d.set.introduced), peer.Key.Compare) {
		out = append(out, peerEntry{key: k, by: d.set.introduced[k].By})
	}
	return out
}

// peerSet is the node's peers as they are to be: the configured ones
// (with endpoint names resolved) and those the introducers introduce,
// with the trust the configuration grants. desiredPeers computes it;
// Daemon.apply makes it so, the one way the node's peers change (at
// start, on reload, when introductions change).
type peerSet struct {
	configured []config.Peer
	resolved   []peer.Config // configured, as the transport takes them
	// introduced are the introduced peers the configuration does not
	// list (it wins over introductions).
	introduced map[peer.Key]peer.Introduced

	all   []peer.Config // resolved, then introduced by key
	addrs []netip.Addr  // the overlay addresses of all, in its order
	// spoken are the addresses of the peers the exchange speaks to: all
	// but the introduced peers that are quiet (never heard from, their
	// endpoint not tried now: peer.Introduced.Quiet), so that a hostile
	// introducer's members cost no hellos or repairs.
	spoken []netip.Addr
	relays []netip.Addr // the peers trusted as relays
	lans   map[netip.Addr][]netip.Prefix
}

// desiredPeers returns the peer set of configured (resolved: the
// transport's form of each, in the same order) and introduced. Introduced
// peers get no relay trust and no LAN prefixes: only the configuration
// grants those.
func desiredPeers(configured []config.Peer, resolved []peer.Config, introduced map[peer.Key]peer.Introduced) peerSet {
	set := peerSet{configured: configured, resolved: resolved, introduced: maps.Clone(introduced),
		all: slices.Clone(resolved), relays: trustedRelays(configured), lans: lanPrefixes(configured)}
	if set.introduced == nil {
		set.introduced = map[peer.Key]peer.Introduced{}
	}
	listed := map[peer.Key]bool{}
	for _, p := range configured {
		listed[p.PublicKey] = true
	}
	maps.DeleteFunc(set.introduced, func(k peer.Key, _ peer.Introduced) bool { return listed[k] })
	for _, k := range slices.SortedFunc(maps.Keys(set.introduced), peer.Key.Compare) {
		i := set.introduced[k]
		set.all = append(set.all, peer.Config{PublicKey: k, Endpoint: i.Endpoint, Forget: i.Unreached})
	}
	set.addrs = make([]netip.Addr, len(set.all))
	for i, p := range set.all {
		set.addrs[i] = peer.OverlayAddr(p.PublicKey)
		if in, ok := set.introduced[p.PublicKey]; !ok || !in.Quiet {
			set.spoken = append(set.spoken, set.addrs[i])
		}
	}
	return set
}

// apply makes next the node's peers, in the transport, the router and
// the exchange, and returns how many peers were added and removed. If
// the transport refuses next, nothing changes. It is called from one
// goroutine at a time (New, then Serve's loop) and holds no lock while
// it calls the others.
func (d *Daemon) apply(next peerSet) (added, removed int, err error) {
	if added, removed, err = d.transport.SetPeers(next.all); err != nil {
		return 0, 0, err
	}
	d.router.SetPeers(next.addrs, next.relays)
	// A peer added again keeps sending the list it sent before: the
	// router takes it again.
	d.router.SetDirectOf(d.intros.DirectOf())
	d.router.SetLANPrefixes(next.lans)
	d.exchange.SetPeers(next.spoken)
	d.peersMu.Lock()
	prev := d.set
	d.set = next
	maps.DeleteFunc(d.saysRelay, func(a netip.Addr, _ bool) bool { return !slices.Contains(next.addrs, a) })
	d.peersMu.Unlock()
	for k, i := range next.introduced {
		if _, known := prev.introduced[k]; !known {
			d.log.Info("peer introduced", "peer", k, "endpoint", i.Endpoint, "by", i.By)
		}
	}
	for k := range prev.introduced {
		if _, still := next.introduced[k]; !still && !slices.ContainsFunc(next.configured, func(p config.Peer) bool { return p.PublicKey == k }) {
			d.log.Info("introduced peer dropped: no introducer lists it", "peer", k)
		}
	}
	d.pathsChanged()
	return added, removed, nil
}

// reintroduce applies what the introducers introduce now.
func (d *Daemon) reintroduce() {
	d.peersMu.Lock()
	cur := d.set
	d.peersMu.Unlock()
	next := desiredPeers(cur.configured, cur.resolved, d.intros.Introduced(introducers(cur.configured)))
	if _, _, err := d.apply(next); err != nil {
		d.log.Error("introduced peers not applied", "err", err)
	}
}

// introductionsChanged is the introductions' Changed callback: it has the
// serving loop apply the introduced peers.
func (d *Daemon) introductionsChanged() {
	select {
	case d.introducedCh <- struct{}{}:
	default:
	}
}

// introducers returns the overlay addresses of the peers in configured
// marked introducer.
func introducers(configured []config.Peer) []netip.Addr {
	return addrsOf(configured, func(p config.Peer) bool { return p.Introducer })
}

// addrsOf returns the overlay addresses of the peers for which marked
// holds.
func addrsOf(peers []config.Peer, marked func(config.Peer) bool) []netip.Addr {
	var out []netip.Addr
	for _, p := range peers {
		if marked(p) {
			out = append(out, peer.OverlayAddr(p.PublicKey))
		}
	}
	return out
}

// introducers returns the overlay addresses of the configured peers
// marked introducer.
func (d *Daemon) introducers() []netip.Addr {
	d.peersMu.Lock()
	defer d.peersMu.Unlock()
	return introducers(d.set.configured)
}

// trustedRelays returns the overlay addresses of the configured peers
// trusted as relays.
func (d *Daemon) trustedRelays() []netip.Addr {
	d.peersMu.Lock()
	defer d.peersMu.Unlock()
	return d.set.relays
}

// lists reports whether the configuration lists the peer at addr.
func (d *Daemon) lists(addr netip.Addr) bool {
	d.peersMu.Lock()
	defer d.peersMu.Unlock()
	return slices.ContainsFunc(d.set.resolved, func(p peer.Config) bool { return peer.OverlayAddr(p.PublicKey) == addr })
}

// directChanged is the introductions' DirectChanged callback: the router
// learns which peers each peer reaches directly, and on a relay the
// states toward its peers follow.
func (d *Daemon) directChanged() {
	d.router.SetDirectOf(d.intros.DirectOf())
	if d.cfg.Relay {
		select {
		case d.relayed <- struct{}{}:
		default:
		}
	}
}

// seen returns the configured peers, as this node may introduce them:
// each at the endpoint its session has now, or the configured one.
func (d *Daemon) seen() map[netip.Addr]peer.Member {
	stats, err := d.transport.Stats()
	if err != nil {
		d.log.Warn("reading transport state", "err", err)
	}
	d.peersMu.Lock()
	defer d.peersMu.Unlock()
	out := make(map[netip.Addr]peer.Member, len(d.set.resolved))
	for _, p := range d.set.resolved {
		m := peer.Member{PublicKey: p.PublicKey, Endpoint: p.Endpoint}
		if ep, err := netip.ParseAddrPort(stats[p.PublicKey].Endpoint); err == nil {
			m.Endpoint = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
		}
		out[peer.OverlayAddr(p.PublicKey)] = m
	}
	return out
}

// HandleControl takes the control messages peers send, for the bridge:
// introduction messages go to the introductions, the others to the
// subscription exchange.
func (d *Daemon) HandleControl(from netip.Addr, msg []byte) {
	if peer.IsIntroduction(msg) {
		d.intros.HandleControl(from, msg)
		return
	}
	d.exchange.HandleControl(from, msg)
}

// SendControl sends a control message to the peer at addr, as the
// exchange and the introductions do: for tests that play a hostile peer
// (internal/simnet).
func (d *Daemon) SendControl(addr netip.Addr, msg []byte) error {
	return d.bridge.SendControl(addr, msg)
}

// watched reports whether the direct path to the peer at addr is watched
// closely: a peer that is no relay this node trusts, when it trusts one
// (the relay then passes on what this node gets from the peer once the
// path ends).
func (d *Daemon) watched(addr netip.Addr) bool {
	d.peersMu.Lock()
	has := len(d.set.relays) > 0
	d.peersMu.Unlock()
	return has && !d.router.TrustsRelay(addr)
}

// pathsChanged finds how this node reaches each peer now: directly when
// the exchange finds the path direct; else an introduced peer through the
// first of its introducers that this node trusts as a relay and reaches
// directly (the introducer lists the peer, so it can pass unicast on to
// it); other peers without a relay. The router gets the paths (where
// unicast goes, whether relayed copies count at once), and the relays
// this node trusts learn which peers it reaches directly.
func (d *Daemon) pathsChanged() {
	d.pathMu.Lock()
	defer d.pathMu.Unlock()
	d.peersMu.Lock()
	relays := d.set.relays
	d.peersMu.Unlock()
	keyOf := map[netip.Addr]peer.Key{}
	byAddr := map[netip.Addr][]netip.Addr{} // introduced peers' introducers
	for _, p := range d.peerList() {
		a := peer.OverlayAddr(p.key)
		keyOf[a], byAddr[a] = p.key, p.by
	}
	addrs := d.router.Peers()
	direct := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		direct[a] = d.exchange.Direct(a)
	}
	paths := make(map[netip.Addr]router.Path, len(addrs))
	var keys []peer.Key
	changed := false
	for _, a := range addrs {
		pa := router.Path{Direct: direct[a]}
		if !pa.Direct {
			for _, r := range byAddr[a] {
				if direct[r] && slices.Contains(relays, r) {
					pa.Via = r
					break
				}
			}
		}
		paths[a] = pa
		old := d.router.Path(a)
		changed = changed || old != pa
		switch {
		case pa.Direct && !old.Direct:
			d.log.Info("path direct", "peer", a)
		case old.Direct && !pa.Direct:
			d.log.Info("direct path lost", "peer", a, "via", pa.Via)
		case pa.Via != old.Via:
			d.log.Debug("path", "peer", a, "via", pa.Via)
		}
		if k, ok := keyOf[a]; ok && pa.Direct {
			keys = append(keys, k)
		}
	}
	d.intros.SetDirect(keys)
	if changed {
		d.router.SetPaths(paths)
	}
}

// pathName names the path to the peer at addr in status and metrics:
// "relayed" while unicast to it goes through a relay, else "direct".
func (d *Daemon) pathName(addr netip.Addr) string {
	if d.router.Path(addr).Via.IsValid() {
		return "relayed"
	}
	return "direct"
}
