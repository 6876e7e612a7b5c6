package daemon

import (
	"github.com/librecast/lcast/internal/metrics"
	"github.com/librecast/lcast/mld"
	"github.com/librecast/lcast/peer"
)

// Snapshot reports the daemon's counts for a metrics scrape: what Status
// reports, but counting groups instead of listing them and leaving out the
// forwarding table. A gateway's LANs are counted too (none in host mode).
func (d *Daemon) Snapshot() metrics.Snapshot {
	st := metrics.Snapshot{
		Interface:   d.cfg.Interface,
		Address:     d.addr.String(),
		PublicKey:   d.cfg.Key.PublicKey().String(),
		LocalGroups: d.link.Len(),
		Drops:       d.drops(),
	}
	stats, err := d.transport.Stats()
	if err != nil {
		d.log.Warn("reading transport state", "err", err)
	}
	peers := d.peerList()
	now := d.clock.Now()
	st.Peers = make([]metrics.PeerSnapshot, 0, len(peers))
	for _, p := range peers {
		addr := peer.OverlayAddr(p.key)
		ps := metrics.PeerSnapshot{
			PublicKey:     p.key.String(),
			Connected:     d.exchange.Health(addr).Connected(now),
			Path:          d.pathName(addr),
			Learnt:        p.learnt(),
			LastHandshake: stats[p.key].LastHandshake,
			Groups:        len(d.router.Subscriptions(addr)),
		}
		if c := d.router.Counters(addr); c != nil {
			ps.RxPackets, ps.RxBytes = c.RxPackets.Load(), c.RxBytes.Load()
			ps.TxPackets, ps.TxBytes = c.TxPackets.Load(), c.TxBytes.Load()
			ps.Drops = c.Drops()
			ps.LastRx = c.LastRx()
		}
		st.Peers = append(st.Peers, ps)
	}
	if d.gateway != nil {
		for _, l := range d.gateway.LANs() {
			_, self := l.Querier()
			st.LANs = append(st.LANs, metrics.LANSnapshot{
				Interface:            l.Name(),
				Groups:               len(l.Groups()),
				IsQuerier:            self,
				ForeignSourcePackets: d.gateway.ForeignSources(l),
			})
		}
	}
	return st
}

// drops returns the drop counters by reason: the router's, the links'
// (lc0's and the LANs') and the exchange's.
func (d *Daemon) drops() map[string]uint64 {
	drops := d.router.Drops()
	links := []*mld.Link{d.link}
	if d.gateway != nil {
		for _, l := range d.gateway.LANs() {
			links = append(links, l.Link())
		}
	}
	for _, l := range links {
		drops["mld_malformed"] += l.Malformed()
		drops["mld_groups_over_cap"] += l.GroupsOverCap.Load()
		drops["mld_sources_over_cap"] += l.SourcesOverCap.Load()
	}
	drops["bad_subscription_message"] = d.exchange.BadMessages.Load()
	drops["peer_groups_over_cap"] = d.exchange.OverCap.Load()
	drops["peer_sources_over_cap"] = d.exchange.SourcesOverCap.Load()
	drops["peer_group_incomplete"] = d.exchange.Incomplete.Load()
	drops["subscription_send_failed"] = d.exchange.SendFailed.Load()
	drops["control_inbox_full"] = d.exchange.InboxFull.Load() + d.intros.InboxFull.Load()
	drops["untrusted_introduction"] = d.intros.Untrusted.Load()
	drops["bad_introduction_message"] = d.intros.Malformed.Load()
	drops["introduced_over_cap"] = d.intros.OverCap.Load()
	drops["introduced_endpoint_refused"] = d.intros.EndpointsRefused.Load()
	drops["introduced_endpoint_conflict"] = d.intros.EndpointConflicts.Load()
	drops["introduced_endpoint_unanswered"] = d.intros.Unanswered.Load()
	drops["direct_list_over_rate"] = d.intros.DirectOverRate.Load()
	return drops
}
