package daemon

import (
	"fmt"
	"maps"
	"net/netip"
	"time"

	"github.com/librecast/lcast/internal/control"
	"github.com/librecast/lcast/mld"
	"github.com/librecast/lcast/peer"
	"github.com/librecast/lcast/router"
)

// lastRx returns when the last packet from the peer at addr arrived.
func (d *Daemon) lastRx(addr netip.Addr) time.Time {
	if c := d.router.Counters(addr); c != nil {
		return c.LastRx()
	}
	return time.Time{}
}

// Status reports the daemon's state for the control API.
func (d *Daemon) Status() control.Status {
	st := control.Status{
		Interface:   d.cfg.Interface,
		Address:     d.addr.String(),
		PublicKey:   d.cfg.Key.PublicKey().String(),
		ListenPort:  d.cfg.Port,
		Relay:       d.cfg.Relay,
		LocalGroups: groupsJSON(d.link.Groups()),
		Peers:       []control.PeerStatus{},
		Drops:       d.drops(),
	}
	stats, err := d.transport.Stats()
	if err != nil {
		d.log.Warn("reading transport state", "err", err)
	}
	now := d.clock.Now()
	d.peersMu.Lock()
	says := maps.Clone(d.saysRelay)
	d.peersMu.Unlock()
	peers := d.peerList()
	keys := map[netip.Addr]string{}
	for _, p := range peers {
		keys[peer.OverlayAddr(p.key)] = p.key.String()
	}
	for _, p := range peers {
		addr := peer.OverlayAddr(p.key)
		s := stats[p.key]
		ps := control.PeerStatus{
			PublicKey: p.key.String(),
			Endpoint:  s.Endpoint,
			Relay:     d.router.TrustsRelay(addr),
			SaysRelay: says[addr],
			Connected: d.exchange.Health(addr).Connected(now),
			Path:      d.pathName(addr),
			Learnt:    p.learnt(),
			Groups:    groupsJSON(d.router.Subscriptions(addr)),
		}
		for _, by := range p.by {
			ps.IntroducedBy = append(ps.IntroducedBy, keys[by])
		}
		if !s.LastHandshake.IsZero() {
			hs := s.LastHandshake.UTC()
			ps.LastHandshake = &hs
		}
		if c := d.router.Counters(addr); c != nil {
			ps.RxPackets, ps.RxBytes = c.RxPackets.Load(), c.RxBytes.Load()
			ps.TxPackets, ps.TxBytes = c.TxPackets.Load(), c.TxBytes.Load()
			ps.Drops = c.Drops()
			if rx := c.LastRx(); !rx.IsZero() {
				rx = rx.UTC()
				ps.LastRx = &rx
			}
		}
		st.Peers = append(st.Peers, ps)
	}
	st.Forwarding = forwardingJSON(d.router.Routes(), keys)
	if d.gateway != nil {
		st.LANs, st.Forwarding = d.lansJSON(st.Forwarding)
	}
	return st
}

// forwardingJSON turns the router's routes into the status's, naming
// peers by their public keys.
func forwardingJSON(routes []router.Route, keys map[netip.Addr]string) []control.Forward {
	out := make([]control.Forward, len(routes))
	for i, rt := range routes {
		out[i] = control.Forward{Group: rt.Group.String(), To: make([]control.ForwardTo, len(rt.To))}
		for j, via := range rt.To {
			g := groupJSON(via.Sub)
			reason := "listeners on the peer"
			if via.Sub.Hops > 0 {
				reason = fmt.Sprintf("listeners %d relay(s) beyond the peer", via.Sub.Hops)
			}
			out[i].To[j] = control.ForwardTo{PublicKey: keys[via.Peer], Mode: g.Mode, Sources: g.Sources, Hops: g.Hops, Reason: reason}
		}
	}
	return out
}

func groupsJSON(groups []mld.GroupState) []control.Group {
	out := make([]control.Group, len(groups))
	for i, g := range groups {
		out[i] = groupJSON(g)
	}
	return out
}

func groupJSON(g mld.GroupState) control.Group {
	out := control.Group{Group: g.Group.String(), Mode: g.Mode.String(), Sources: make([]string, len(g.Sources)), Hops: int(g.Hops)}
	for j, s := range g.Sources {
		out.Sources[j] = s.String()
	}
	return out
}
