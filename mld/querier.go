package mld

import (
	"context"
	"log/slog"
	"net/netip"
	"time"
)

// Querier acts as the MLD querier of a link: it sends General Queries (at
// start, Robustness-1 more at a quarter of the Query Interval, then every
// Query Interval, RFC 3810 9.6 and 9.7) and runs the Link's timers.
type Querier struct {
	Link *Link
	// Source is the link-local source of the queries; it must not be an
	// address of the interface (see QuerierAddr).
	Source netip.Addr
	Timing Timing
	// Send writes one packet into the link.
	Send func(pkt []byte) error
	Log  *slog.Logger
}

// QuerierAddr is the link-local address lcast's querier sends from: the
// querier stands for the rest of the overlay, not for the local host.
var QuerierAddr = netip.MustParseAddr("fe80::6c:6361:7374")

// expiryTick is how often the Link's timers are run.
const expiryTick = time.Second

// Run queries and expires timers until ctx is done.
func (q *Querier) Run(ctx context.Context) {
	query := AppendQuery(nil, q.Source, netip.Addr{}, nil,
		uint16(floatCode(uint32(q.Timing.QueryResponseInterval/time.Millisecond), 12)),
		uint8(min(q.Timing.Robustness, 7)),
		uint8(floatCode(uint32(q.Timing.QueryInterval/time.Second), 4)))
	expire := time.NewTicker(expiryTick)
	defer expire.Stop()
	startup := q.Timing.Robustness - 1 // further startup queries
	next := time.NewTimer(0)
	defer next.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-expire.C:
			q.Link.Expire(now)
		case <-next.C:
			if err := q.Send(query); err != nil && ctx.Err() == nil {
				q.Log.Warn("sending General Query", "err", err)
			}
			interval := q.Timing.QueryInterval
			if startup > 0 {
				startup--
				interval /= 4
			}
			next.Reset(interval)
		}
	}
}

// floatCode encodes v as an MLDv2 Maximum Response Code (mantBits 12) or
// Querier's Query Interval Code (mantBits 4), RFC 3810 5.1.3 and 5.1.9:
// exact below 2^(mantBits+3), else 1|exp(3 bits)|mant, the value being
// (mant | 1<<mantBits) << (exp+3), rounded down and capped at the largest code.
func floatCode(v uint32, mantBits uint) uint32 {
	limit := uint32(1) << (mantBits + 3)
	if v < limit {
		return v
	}
	for exp := range uint32(8) {
		if m := v >> (exp + 3); m < 2<<mantBits {
			return limit | exp<<mantBits | m&(1<<mantBits-1)
		}
	}
	return 2*limit - 1
}
