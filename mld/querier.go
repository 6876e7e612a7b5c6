package mld

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Querier acts as the MLD router of a link: it sends General Queries (at
// start, Robustness-1 more at a quarter of the Query Interval, then every
// Query Interval, RFC 3810 9.6 and 9.7), sends the specific queries its
// Link asks for after a leave on a LAN (7.6.3), and runs the Link's timers
// when they run out.
//
// On a LAN, every MLD packet read from the link goes to HandlePacket, and
// the Querier takes part in querier election (7.6.2): a query heard from a
// lower address makes it a non-querier, which sends no queries until that
// querier has been silent for the Other Querier Present Timeout.
//
// Set the exported fields, then call Run once; HandlePacket, Querier and
// Run may be called concurrently.
type Querier struct {
	Link *Link
	// Source is the link-local source of the queries. On lc0 it must not
	// be an address of the interface (see QuerierAddr). On a LAN it is the
	// router's own link-local address on the interface: the election
	// compares it with other queriers'.
	Source netip.Addr
	// Timing is the Link's Timing.
	Timing Timing
	// Send writes one packet into the link. Only Run calls it.
	Send func(pkt []byte) error
	Log  *slog.Logger

	once sync.Once
	wake chan struct{} // Run looks at its schedule again

	mu      sync.Mutex
	running bool
	// other is the querier that outranks this router, invalid while this
	// router is the querier; otherUntil is its Other Querier Present
	// timer, and adopted the variables its queries carry (9.1, 9.2, 9.3).
	other      netip.Addr
	otherUntil time.Time
	adopted    Timing
	// nextGeneral is when the next General Query is due, while running
	// as the querier; startup is how many startup queries follow it.
	nextGeneral time.Time
	startup     int
	// pending holds the retransmission state of specific queries: one
	// entry per source, or with an invalid source for the group itself.
	pending map[queryKey]retransmission

	decodeMu sync.Mutex // serializes HandlePacket, for scratch
	scratch  Message
}

type queryKey struct{ group, source netip.Addr }

// dueQuery is what is due about one group: a Multicast Address Specific
// Query (all), a Multicast Address and Source Specific Query (sources), or
// both.
type dueQuery struct {
	group   netip.Addr
	all     bool
	sources []netip.Addr
}

// retransmission is how many more times a specific query is sent, and when
// next (zero: at once).
type retransmission struct {
	left int
	next time.Time
}

// QuerierAddr is the link-local address lcast's querier sends from on lc0:
// the querier stands for the rest of the overlay, not for the local host.
var QuerierAddr = netip.MustParseAddr("fe80::6c:6361:7374")

// maxQuerySources is how many sources a query carries, so that it fits
// the IPv6 minimum MTU: (1280 - 40 - 8 - 28) / 16.
const maxQuerySources = 75

func (q *Querier) init() {
	q.once.Do(func() { q.wake = make(chan struct{}, 1) })
}

func (q *Querier) notify() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *Querier) log() *slog.Logger {
	if q.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return q.Log
}

// Run queries and expires the Link's timers until ctx is done. The Querier
// starts as the link's querier, unless HandlePacket has already heard a
// lower one.
func (q *Querier) Run(ctx context.Context) {
	q.init()
	general := AppendQuery(nil, q.Source, netip.Addr{}, nil, q.responseCode(q.Timing.QueryResponseInterval), q.qrv(), q.qqic())
	q.mu.Lock()
	q.running = true
	if !q.other.IsValid() {
		q.becomeQuerier(time.Now(), q.Timing.Robustness-1)
	}
	q.mu.Unlock()
	defer func() {
		q.mu.Lock()
		q.running = false
		q.nextGeneral, q.startup = time.Time{}, 0
		clear(q.pending)
		q.Link.setQuerier(nil, 0)
		q.mu.Unlock()
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-q.wake:
		case <-q.Link.wake:
		}
		now := time.Now()
		if next := q.Link.nextExpiry(); !next.IsZero() && !now.Before(next) {
			q.Link.Expire(now)
		}
		sendGeneral, specific, next := q.due(now)
		if sendGeneral {
			q.send(ctx, general)
		}
		// A report handled after now was taken may have asked for a
		// query due now and set its timers from a later clock: split
		// the sources at a time taken after due saw the request.
		split := time.Now()
		for _, sq := range specific {
			for _, pkt := range q.specificQueries(split, sq) {
				q.send(ctx, pkt)
			}
		}
		if next = earliest(next, q.Link.nextExpiry()); next.IsZero() {
			timer.Stop()
		} else {
			timer.Reset(time.Until(next))
		}
	}
}

func (q *Querier) send(ctx context.Context, pkt []byte) {
	if err := q.Send(pkt); err != nil && ctx.Err() == nil {
		q.log().Warn("sending MLD query", "err", err)
	}
}

// becomeQuerier makes this router the link's querier, with a General Query
// due at once and startup more. q.mu is held.
func (q *Querier) becomeQuerier(now time.Time, startup int) {
	q.other, q.adopted = netip.Addr{}, Timing{}
	q.nextGeneral, q.startup = now, startup
	q.Link.setQuerier(q.request, q.Timing.listenerInterval())
}

// due returns, at now, whether a General Query is due, which specific
// queries are (sorted), and when the Querier has something to do next
// (zero: nothing). It also ends the Other Querier Present timer when it
// runs out.
func (q *Querier) due(now time.Time) (general bool, specific []dueQuery, next time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.running {
		return false, nil, time.Time{}
	}
	if q.other.IsValid() {
		if now.Before(q.otherUntil) {
			return false, nil, q.otherUntil
		}
		q.log().Info("MLD querier silent: querying again", "querier", q.other, "self", q.Source)
		q.becomeQuerier(now, 0)
	}
	if !now.Before(q.nextGeneral) {
		general = true
		interval := q.Timing.QueryInterval
		if q.startup > 0 {
			q.startup--
			interval /= 4
		}
		q.nextGeneral = now.Add(interval)
	}
	next = q.nextGeneral
	var index map[netip.Addr]int // group -> specific
	for k, r := range q.pending {
		if now.Before(r.next) {
			next = earliest(next, r.next)
			continue
		}
		i, ok := index[k.group]
		if !ok {
			if index == nil {
				index = map[netip.Addr]int{}
			}
			i = len(specific)
			index[k.group] = i
			specific = append(specific, dueQuery{group: k.group})
		}
		if k.source.IsValid() {
			specific[i].sources = append(specific[i].sources, k.source)
		} else {
			specific[i].all = true
		}
		if r.left--; r.left == 0 {
			delete(q.pending, k)
			continue
		}
		r.next = now.Add(q.Timing.LastListenerQueryInterval)
		q.pending[k] = r
		next = earliest(next, r.next)
	}
	slices.SortFunc(specific, func(a, b dueQuery) int { return a.group.Compare(b.group) })
	for i := range specific {
		slices.SortFunc(specific[i].sources, netip.Addr.Compare)
	}
	return general, specific, next
}

// request is the Link's ask: it schedules Last Listener Query Count
// transmissions of the specific query, the first at once (7.6.3). A
// non-querier sends none.
func (q *Querier) request(group netip.Addr, sources []netip.Addr) {
	q.mu.Lock()
	if !q.running || q.other.IsValid() || q.Timing.LastListenerQueryCount <= 0 {
		q.mu.Unlock()
		return
	}
	if q.pending == nil {
		q.pending = make(map[queryKey]retransmission)
	}
	r := retransmission{left: q.Timing.LastListenerQueryCount}
	if len(sources) == 0 {
		q.pending[queryKey{group: group}] = r
	}
	for _, s := range sources {
		q.pending[queryKey{group, s}] = r
	}
	q.mu.Unlock()
	q.notify()
}

// specificQueries builds the packets of one due specific query
// (7.6.3.1, 7.6.3.2): for the group itself, with the S flag set if its
// filter timer is beyond LLQT; for sources, one query with the S flag set
// for those beyond LLQT and one with it clear for the others, each left
// out if it would be empty. Sources whose timers are gone are dropped.
func (q *Querier) specificQueries(now time.Time, sq dueQuery) [][]byte {
	exclude, suppress, above, below := q.Link.querySplit(now, sq.group, sq.sources)
	mrc, qrv, qqic := q.responseCode(q.Timing.LastListenerQueryInterval), q.qrv(), q.qqic()
	var pkts [][]byte
	if sq.all && exclude {
		flags := qrv
		if suppress {
			flags |= SuppressFlag
		}
		pkts = append(pkts, AppendQuery(nil, q.Source, sq.group, nil, mrc, flags, qqic))
	}
	for _, part := range []struct {
		sources []netip.Addr
		flags   uint8
	}{{above, qrv | SuppressFlag}, {below, qrv}} {
		for chunk := range slices.Chunk(part.sources, maxQuerySources) {
			pkts = append(pkts, AppendQuery(nil, q.Source, sq.group, chunk, mrc, part.flags, qqic))
		}
	}
	return pkts
}

func (q *Querier) responseCode(d time.Duration) uint16 {
	return uint16(floatCode(uint32(d/time.Millisecond), 12))
}

func (q *Querier) qrv() uint8 { return uint8(min(q.Timing.Robustness, 7)) }

func (q *Querier) qqic() uint8 {
	return uint8(floatCode(uint32(q.Timing.QueryInterval/time.Second), 4))
}

// HandlePacket takes an IPv6 packet read from a LAN at time now: reports
// and Dones go to the Link, queries to the querier election, a malformed
// MLD message is counted (Link.Malformed), and an MLD message whose source
// is not link-local is ignored (RFC 3810 5.1.14, 5.2.13). It reports
// whether pkt was an MLD message, well-formed or not. It does not keep pkt.
func (q *Querier) HandlePacket(now time.Time, pkt []byte) bool {
	q.init()
	q.decodeMu.Lock()
	defer q.decodeMu.Unlock()
	m := &q.scratch
	switch err := Decode(pkt, m); {
	case errors.Is(err, ErrNotMLD):
		return false
	case err != nil:
		q.Link.malformed.Add(1)
		return true
	}
	switch {
	case !m.Source.IsLinkLocalUnicast():
	case m.Type == TypeQuery:
		q.heardQuery(now, m)
	default:
		q.Link.Handle(now, m)
	}
	return true
}

// heardQuery carries out querier election (7.6.2) for a query heard at
// now. A query from a lower address (as a 128-bit number) makes this
// router a non-querier, or keeps it one, until the Other Querier Present
// Timeout passes without another. The timeout is reckoned, as a non-querier
// adopts them (9.1, 9.2, 9.3), with the Robustness and Query Interval the
// querier's queries carry and the Maximum Response Delay of its General
// Queries as Query Response Interval, each in place of the Querier's own
// where the querier sends one (not zero); the Link's listening interval
// follows them. Queries from a higher address, and this router's own read
// back from the link, are ignored.
//
// A specific query from the querier with the S flag clear lowers the
// Link's timers (7.6.1) to the Last Listener Query Time the querier keeps:
// the query's Maximum Response Delay times its QRV (9.9: the count is the
// Robustness Variable by default), or the Querier's own LLQT if longer, so
// that a listener answering the querier late is not dropped here first.
func (q *Querier) heardQuery(now time.Time, m *Message) {
	src, self := m.Source.As16(), q.Source.As16()
	if bytes.Compare(src[:], self[:]) >= 0 {
		return
	}
	q.mu.Lock()
	demoted := !q.other.IsValid()
	if demoted {
		q.adopted = q.Timing
		q.nextGeneral, q.startup = time.Time{}, 0
		clear(q.pending)
	}
	q.other = m.Source
	t := &q.adopted
	if m.V2 && m.QRV != 0 {
		t.Robustness = int(m.QRV)
	}
	if m.V2 && m.QQIC != 0 {
		t.QueryInterval = m.QueryInterval()
	}
	if m.Group.IsUnspecified() {
		t.QueryResponseInterval = m.MaxResponseDelay()
	}
	q.otherUntil = now.Add(t.otherQuerierInterval())
	q.Link.setQuerier(nil, t.listenerInterval())
	robustness := t.Robustness // the querier's, if it said
	q.mu.Unlock()
	if demoted {
		q.log().Info("MLD querier with a lower address: not querying", "querier", m.Source, "self", q.Source)
		q.notify()
	}
	if m.Suppress || m.Group.IsUnspecified() {
		return
	}
	llqt := max(q.Timing.lastListenerQueryTime(), time.Duration(robustness)*m.MaxResponseDelay())
	var sources []netip.Addr
	for i := range m.NumQuerySources() {
		sources = append(sources, m.QuerySource(i))
	}
	q.Link.lowerTimers(now, m.Group, sources, llqt)
}

// Querier returns the address of the link's querier, and whether that is
// this router.
func (q *Querier) Querier() (addr netip.Addr, self bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.other.IsValid() {
		return q.other, false
	}
	return q.Source, true
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

// codeValue decodes a code floatCode made (or a 16-bit Maximum Response
// Code or 8-bit QQIC off the wire).
func codeValue(code uint32, mantBits uint) uint32 {
	limit := uint32(1) << (mantBits + 3)
	if code < limit {
		return code
	}
	exp := code >> mantBits & 7
	return (code&(1<<mantBits-1) | 1<<mantBits) << (exp + 3)
}
