package mld

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// Routers on a test LAN, in the order of their addresses.
var (
	router1 = netip.MustParseAddr("fe80::1")
	router2 = netip.MustParseAddr("fe80::2")
	router3 = netip.MustParseAddr("fe80::3")
)

// sentQuery is a query a Querier sent, decoded.
type sentQuery struct {
	at       time.Time
	pkt      []byte
	dst      netip.Addr
	group    netip.Addr // unspecified: a General Query
	sources  []netip.Addr
	suppress bool
	maxDelay time.Duration
	qrv      uint8
	qqic     uint8
}

func (s sentQuery) general() bool { return s.group.IsUnspecified() }

// lan runs a Querier on a fake LAN: what it sends is decoded into sent,
// and the Link's changes are signalled on changed.
type lan struct {
	t       *testing.T
	q       *Querier
	l       *Link
	sent    chan sentQuery
	changed chan struct{}
}

func startQuerier(t *testing.T, timing Timing, self netip.Addr) *lan {
	t.Helper()
	n := &lan{t: t, sent: make(chan sentQuery, 100), changed: make(chan struct{}, 1)}
	n.l = NewLink(timing, func() {
		select {
		case n.changed <- struct{}{}:
		default:
		}
	})
	n.q = &Querier{Link: n.l, Source: self, Timing: timing, Send: n.send, Log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.q.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return n
}

func (n *lan) send(pkt []byte) error {
	var m Message
	if err := Decode(pkt, &m); err != nil || m.Type != TypeQuery || !m.V2 {
		n.t.Errorf("sent %x: %v, type %d", pkt, err, m.Type)
		return nil
	}
	s := sentQuery{
		at: time.Now(), pkt: slices.Clone(pkt), dst: m.Destination, group: m.Group, suppress: m.Suppress,
		maxDelay: m.MaxResponseDelay(), qrv: m.QRV, qqic: m.QQIC,
	}
	for i := range m.NumQuerySources() {
		s.sources = append(s.sources, m.QuerySource(i))
	}
	n.sent <- s
	return nil
}

// handle hands the LAN reader's packet to the Querier.
func (n *lan) handle(pkt []byte) {
	n.t.Helper()
	if !n.q.HandlePacket(time.Now(), pkt) {
		n.t.Fatalf("%x not taken for MLD", pkt)
	}
}

func (n *lan) report(src netip.Addr, recs ...ReportRecord) {
	n.t.Helper()
	n.handle(AppendV2Report(nil, src, recs))
}

// queries returns the queries sent within d, General Queries only if
// general, else specific ones only.
func (n *lan) queries(d time.Duration, general bool) []sentQuery {
	var out []sentQuery
	deadline := time.After(d)
	for {
		select {
		case s := <-n.sent:
			if s.general() == general {
				out = append(out, s)
			}
		case <-deadline:
			return out
		}
	}
}

// firstGeneral waits for the startup General Query.
func (n *lan) firstGeneral() sentQuery {
	n.t.Helper()
	deadline := time.After(500 * time.Millisecond)
	for {
		select {
		case s := <-n.sent:
			if s.general() {
				return s
			}
		case <-deadline:
			n.t.Fatal("no General Query at start")
		}
	}
}

// waitState waits up to d for the Link's state to become want and
// returns how long that took.
func (n *lan) waitState(want string, d time.Duration) time.Duration {
	n.t.Helper()
	start := time.Now()
	deadline := time.After(d)
	for render(n.l) != want {
		select {
		case <-n.changed:
		case <-deadline:
			n.t.Fatalf("state %q after %v, want %q", render(n.l), d, want)
		}
	}
	return time.Since(start)
}

// checkSpecific checks that qs are LLQC queries for group and sources,
// LLQI apart, with Maximum Response Delay LLQI and S flags as suppress.
func checkSpecific(t *testing.T, timing Timing, qs []sentQuery, group netip.Addr, sources []netip.Addr, suppress ...bool) {
	t.Helper()
	llqi := timing.LastListenerQueryInterval
	if len(qs) != timing.LastListenerQueryCount {
		t.Fatalf("%d specific queries, want %d: %+v", len(qs), timing.LastListenerQueryCount, qs)
	}
	for i, s := range qs {
		if s.group != group || s.dst != group || !slices.Equal(s.sources, sources) || s.maxDelay != llqi || s.suppress != suppress[i] {
			t.Errorf("query %d: group %v to %v, sources %v, max delay %v, S %v; want %v, %v, %v, S %v",
				i, s.group, s.dst, s.sources, s.maxDelay, s.suppress, group, sources, llqi, suppress[i])
		}
		if i > 0 {
			if gap := s.at.Sub(qs[i-1].at); gap < llqi-10*time.Millisecond || gap > llqi+50*time.Millisecond {
				t.Errorf("query %d came %v after the one before, want %v", i, gap, llqi)
			}
		}
	}
}

// With LANTiming, a lone host's leave takes effect within LLQT + 100 ms,
// after LLQC Multicast Address Specific Queries LLQI apart.
func TestQuerierLoneLeave(t *testing.T) {
	t.Parallel()
	n := startQuerier(t, LANTiming, router1)
	gq := n.firstGeneral()
	if gq.dst != AllNodes || gq.maxDelay != time.Second || gq.qrv != 2 || gq.qqic != 125 {
		t.Errorf("General Query to %v, max delay %v, QRV %d, QQIC %d", gq.dst, gq.maxDelay, gq.qrv, gq.qqic)
	}
	n.report(hostA, rec(ChangeToExcludeMode, g1))
	n.waitState("ff1e::1234 exclude()", time.Second)
	n.report(hostA, rec(ChangeToIncludeMode, g1))
	llqt := LANTiming.lastListenerQueryTime()
	if took := n.waitState("", llqt+100*time.Millisecond); took < llqt-10*time.Millisecond {
		t.Errorf("leave took effect after %v, before LLQT %v", took, llqt)
	}
	checkSpecific(t, LANTiming, n.queries(LANTiming.LastListenerQueryInterval, false), g1, nil, false, false)
}

// Another listener that answers the first specific query keeps the group;
// the retransmission then has the S flag set.
func TestQuerierLeaveWithOtherListener(t *testing.T) {
	t.Parallel()
	n := startQuerier(t, testLAN, router1)
	n.firstGeneral()
	n.report(hostA, rec(ChangeToExcludeMode, g1))
	n.report(hostB, rec(ChangeToExcludeMode, g1))
	n.waitState("ff1e::1234 exclude()", time.Second)
	n.report(hostA, rec(ChangeToIncludeMode, g1))
	first := n.queries(testLAN.LastListenerQueryInterval/2, false)
	if len(first) != 1 {
		t.Fatalf("%d queries right after the leave, want 1", len(first))
	}
	n.report(hostB, rec(ModeIsExclude, g1)) // B's answer
	rest := n.queries(testLAN.lastListenerQueryTime()+100*time.Millisecond, false)
	checkSpecific(t, testLAN, append(first, rest...), g1, nil, false, true)
	if got, want := render(n.l), "ff1e::1234 exclude()"; got != want {
		t.Fatalf("after LLQT: %q, want %q", got, want)
	}
}

// A BLOCK of one source sends Multicast Address and Source Specific
// Queries for that source, and only it leaves.
func TestQuerierSourceLeave(t *testing.T) {
	t.Parallel()
	n := startQuerier(t, testLAN, router1)
	n.firstGeneral()
	n.report(hostA, rec(AllowNewSources, g2, s1, s2))
	n.waitState("ff3e::8000:1 include(2001:db8::1 2001:db8::2)", time.Second)
	n.report(hostA, rec(BlockOldSources, g2, s1))
	llqt := testLAN.lastListenerQueryTime()
	n.waitState("ff3e::8000:1 include(2001:db8::2)", llqt+100*time.Millisecond)
	checkSpecific(t, testLAN, n.queries(testLAN.LastListenerQueryInterval, false), g2, []netip.Addr{s1}, false, false)
}

// electionLAN has a short Other Querier Present Timeout: 2*300+50 = 650 ms.
var electionLAN = Timing{
	Robustness:                2,
	QueryInterval:             300 * time.Millisecond,
	QueryResponseInterval:     100 * time.Millisecond,
	LastListenerQueryInterval: 50 * time.Millisecond,
	LastListenerQueryCount:    2,
}

// otherQuery is a query from another router: qqic 0 leaves the Query
// Interval to the hearer's own.
func otherQuery(src, group netip.Addr, sources []netip.Addr, maxResponse uint16, flags uint8) []byte {
	return AppendQuery(nil, src, group, sources, maxResponse, 2|flags, 0)
}

func TestQuerierElection(t *testing.T) {
	t.Run("lower query demotes until the querier falls silent", func(t *testing.T) {
		t.Parallel()
		n := startQuerier(t, electionLAN, router2)
		n.firstGeneral()
		n.handle(otherQuery(router1, netip.Addr{}, nil, 100, 0))
		demoted := time.Now()
		if addr, self := n.q.Querier(); addr != router1 || self {
			t.Fatalf("Querier() = %v, %v after a lower query; want %v, false", addr, self, router1)
		}
		oqpi := electionLAN.otherQuerierInterval()
		for _, gq := range n.queries(oqpi-50*time.Millisecond, true) {
			if gq.at.Sub(demoted) > 20*time.Millisecond {
				t.Fatalf("General Query %v after demotion", gq.at.Sub(demoted))
			}
		}
		gq := n.queries(150*time.Millisecond, true)
		if len(gq) == 0 {
			t.Fatalf("no General Query within %v of the last query heard", oqpi+100*time.Millisecond)
		}
		if took := gq[0].at.Sub(demoted); took < oqpi {
			t.Errorf("querier again after %v, before the timeout %v", took, oqpi)
		}
		if addr, self := n.q.Querier(); addr != router2 || !self {
			t.Fatalf("Querier() = %v, %v after the timeout; want %v, true", addr, self, router2)
		}
	})
	// Queries from a higher address, with a source that is not link-local,
	// or this router's own read back do not demote it.
	for _, tt := range []struct {
		name  string
		query func(own []byte) []byte
	}{
		{"higher query ignored", func([]byte) []byte { return otherQuery(router3, netip.Addr{}, nil, 100, 0) }},
		{"not link-local ignored", func([]byte) []byte {
			return otherQuery(netip.MustParseAddr("2001:db8::1"), netip.Addr{}, nil, 100, 0)
		}},
		{"own query read back", func(own []byte) []byte { return own }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			n := startQuerier(t, electionLAN, router2)
			own := n.firstGeneral()
			n.handle(tt.query(own.pkt))
			if addr, self := n.q.Querier(); addr != router2 || !self {
				t.Fatalf("Querier() = %v, %v; want %v, true", addr, self, router2)
			}
			// The second startup query comes a quarter interval after the first.
			if gq := n.queries(electionLAN.QueryInterval/4+50*time.Millisecond, true); len(gq) == 0 {
				t.Fatal("General Queries stopped")
			}
		})
	}
	t.Run("non-querier follows the querier's specific queries", func(t *testing.T) {
		t.Parallel()
		n := startQuerier(t, electionLAN, router2)
		n.firstGeneral()
		// The querier says it queries every 10 s: this router adopts that.
		n.handle(AppendQuery(nil, router1, netip.Addr{}, nil, 100, 2, 10))
		if want := 20*time.Second + 100*time.Millisecond; n.l.mali != want {
			t.Errorf("listening interval %v, want the querier's %v", n.l.mali, want)
		}
		n.report(hostA, rec(ChangeToExcludeMode, g1), rec(AllowNewSources, g2, s1, s2))
		both := "ff1e::1234 exclude(); ff3e::8000:1 include(2001:db8::1 2001:db8::2)"
		n.waitState(both, time.Second)
		// A leave alone changes nothing here, and this router sends no query.
		n.report(hostA, rec(ChangeToIncludeMode, g1), rec(BlockOldSources, g2, s1))
		if qs := n.queries(electionLAN.lastListenerQueryTime()+50*time.Millisecond, false); len(qs) != 0 || render(n.l) != both {
			t.Fatalf("non-querier sent %d specific queries; state %q", len(qs), render(n.l))
		}
		// The querier's queries with the S flag set change nothing either.
		n.handle(otherQuery(router1, g1, nil, 50, SuppressFlag))
		n.handle(otherQuery(router1, g2, []netip.Addr{s1}, 50, SuppressFlag))
		time.Sleep(electionLAN.lastListenerQueryTime() + 50*time.Millisecond)
		if got := render(n.l); got != both {
			t.Fatalf("after queries with S set: %q, want %q", got, both)
		}
		// With it clear, they lower the timers to 2 * 50 ms.
		n.handle(otherQuery(router1, g1, nil, 50, 0))
		n.handle(otherQuery(router1, g2, []netip.Addr{s1}, 50, 0))
		n.waitState("ff3e::8000:1 include(2001:db8::2)", electionLAN.lastListenerQueryTime()+100*time.Millisecond)
		if addr, self := n.q.Querier(); addr != router1 || self {
			t.Fatalf("Querier() = %v, %v; want %v, false", addr, self, router1)
		}
	})
}

// On lc0, the Querier still sends its startup General Query at once, a
// leave takes effect at once, and no specific query is sent.
func TestQuerierLc0(t *testing.T) {
	t.Parallel()
	n := startQuerier(t, DefaultTiming, QuerierAddr)
	gq := n.firstGeneral()
	if gq.maxDelay != time.Second || gq.qrv != 2 || gq.qqic != 125 || gq.suppress {
		t.Errorf("General Query: max delay %v, QRV %d, QQIC %d, S %v", gq.maxDelay, gq.qrv, gq.qqic, gq.suppress)
	}
	n.l.HandleLinkPacket(mustHex(t, kernelJoinASM))
	n.l.HandleLinkPacket(mustHex(t, kernelLeave))
	if got := render(n.l); got != "" {
		t.Fatalf("after the kernel's leave: %q", got)
	}
	if qs := n.queries(100*time.Millisecond, false); len(qs) != 0 {
		t.Fatalf("%d specific queries on lc0", len(qs))
	}
}

// HandlePacket applies reports from link-local sources, counts malformed
// MLD messages on the Link, and leaves other traffic alone.
func TestQuerierHandlePacket(t *testing.T) {
	l := NewLink(testLAN, nil)
	q := &Querier{Link: l, Source: router1, Timing: testLAN}
	join := []ReportRecord{{Type: ChangeToExcludeMode, Group: g1}}
	for _, src := range []netip.Addr{netip.IPv6Unspecified(), netip.MustParseAddr("2001:db8::a")} {
		if !q.HandlePacket(t0, AppendV2Report(nil, src, join)) || l.Len() != 0 {
			t.Fatalf("report from %v: %d groups, want it ignored", src, l.Len())
		}
	}
	good := AppendV2Report(nil, hostA, join)
	if !q.HandlePacket(t0, good) || render(l) != "ff1e::1234 exclude()" {
		t.Fatalf("report from %v: %q", hostA, render(l))
	}
	bad := slices.Clone(good)
	bad[len(bad)-1] ^= 0xff
	if !q.HandlePacket(t0, bad) || l.Malformed() != 1 {
		t.Fatalf("malformed report: %d counted", l.Malformed())
	}
	if q.HandlePacket(t0, mustHex(t, kernelRS)) || l.Malformed() != 1 {
		t.Fatalf("a Router Solicitation was taken for MLD (%d malformed)", l.Malformed())
	}
}
