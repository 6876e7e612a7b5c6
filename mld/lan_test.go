package mld

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Hosts on a test LAN.
var (
	hostA = netip.MustParseAddr("fe80::a")
	hostB = netip.MustParseAddr("fe80::b")
)

// testLAN is a LAN Timing short enough for tests: LLQT is 200 ms, and no
// second startup query comes within a test.
var testLAN = Timing{
	Robustness:                2,
	QueryInterval:             10 * time.Second,
	QueryResponseInterval:     100 * time.Millisecond,
	LastListenerQueryInterval: 100 * time.Millisecond,
	LastListenerQueryCount:    2,
}

// hostReport decodes an MLDv2 Report from the host src.
func hostReport(t *testing.T, src netip.Addr, recs ...ReportRecord) *Message {
	t.Helper()
	var m Message
	if err := Decode(AppendV2Report(nil, src, recs), &m); err != nil {
		t.Fatal(err)
	}
	return &m
}

// askRecorder stands in for a Querier that is the link's querier: it
// records the specific queries a Link asks for, as "group(sources)".
type askRecorder struct{ asked []string }

func (r *askRecorder) ask(group netip.Addr, sources []netip.Addr) {
	var srcs []string
	for _, s := range sources {
		srcs = append(srcs, s.String())
	}
	r.asked = append(r.asked, fmt.Sprintf("%s(%s)", group, strings.Join(srcs, " ")))
}

// On a LAN, a leave lowers the timers to LLQT and asks for a specific
// query; the state changes when LLQT has passed without a report, and not
// if another listener reports meanwhile (fake clock; RFC 3810 7.4, 7.6.3).
func TestLANLeave(t *testing.T) {
	llqt := testLAN.lastListenerQueryTime()
	leave := t0.Add(time.Second)
	tests := []struct {
		name string
		// join, then leave at leave, then others (if any) at leave+LLQI/2
		join, leave, others []ReportRecord
		asked               string // queries asked for at the leave
		during, after       string // state just before and at leave+LLQT
	}{
		{
			name:  "lone any-source leave",
			join:  []ReportRecord{rec(ChangeToExcludeMode, g1)},
			leave: []ReportRecord{rec(ChangeToIncludeMode, g1)},
			asked: "ff1e::1234()", during: "ff1e::1234 exclude()", after: "",
		},
		{
			name:   "another listener answers",
			join:   []ReportRecord{rec(ChangeToExcludeMode, g1)},
			leave:  []ReportRecord{rec(ChangeToIncludeMode, g1)},
			others: []ReportRecord{rec(ModeIsExclude, g1)},
			asked:  "ff1e::1234()", during: "ff1e::1234 exclude()", after: "ff1e::1234 exclude()",
		},
		{
			name:  "source-specific leave (BLOCK)",
			join:  []ReportRecord{rec(AllowNewSources, g2, s1, s2)},
			leave: []ReportRecord{rec(BlockOldSources, g2, s1)},
			asked: "ff3e::8000:1(2001:db8::1)", during: "ff3e::8000:1 include(2001:db8::1 2001:db8::2)",
			after: "ff3e::8000:1 include(2001:db8::2)",
		},
		{
			name:   "another listener keeps the source",
			join:   []ReportRecord{rec(AllowNewSources, g2, s1, s2)},
			leave:  []ReportRecord{rec(BlockOldSources, g2, s1)},
			others: []ReportRecord{rec(ModeIsInclude, g2, s1)},
			asked:  "ff3e::8000:1(2001:db8::1)", during: "ff3e::8000:1 include(2001:db8::1 2001:db8::2)",
			after: "ff3e::8000:1 include(2001:db8::1 2001:db8::2)",
		},
		{
			name:  "exclude to include asks for the group and the sources not kept",
			join:  []ReportRecord{rec(ChangeToExcludeMode, g1), rec(AllowNewSources, g1, s1, s2)},
			leave: []ReportRecord{rec(ChangeToIncludeMode, g1, s2)},
			asked: "ff1e::1234() ff1e::1234(2001:db8::1)", during: "ff1e::1234 exclude()",
			after: "ff1e::1234 include(2001:db8::2)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			changes := 0
			l := NewLink(testLAN, func() { changes++ })
			var r askRecorder
			l.setQuerier(r.ask, 0)
			l.Handle(t0, hostReport(t, hostA, tt.join...))
			if tt.others != nil {
				l.Handle(t0, hostReport(t, hostB, tt.join...))
			}
			changes = 0
			l.Handle(leave, hostReport(t, hostA, tt.leave...))
			if got := strings.Join(r.asked, " "); got != tt.asked {
				t.Errorf("asked for %q, want %q", got, tt.asked)
			}
			if got := l.nextExpiry(); got != leave.Add(llqt) {
				t.Errorf("next expiry %v after the leave, want %v", got.Sub(leave), llqt)
			}
			if tt.others != nil {
				l.Handle(leave.Add(testLAN.LastListenerQueryInterval/2), hostReport(t, hostB, tt.others...))
			}
			l.Expire(leave.Add(llqt - time.Nanosecond))
			if got := render(l); got != tt.during || changes != 0 {
				t.Errorf("before LLQT: %q (%d changes), want %q (none)", got, changes, tt.during)
			}
			l.Expire(leave.Add(llqt))
			if got := render(l); got != tt.after {
				t.Errorf("at LLQT: %q, want %q", got, tt.after)
			}
			if want := tt.after != tt.during; (changes == 1) != want {
				t.Errorf("%d changes at LLQT, want a change: %v", changes, want)
			}
		})
	}
}

// A LAN Link whose Querier is not the querier leaves its timers to the
// querier's specific queries (RFC 3810 7.6.1), which lower them in turn.
func TestLANNonQuerierWaitsForQuery(t *testing.T) {
	l := NewLink(testLAN, nil)
	l.Handle(t0, hostReport(t, hostA, rec(ChangeToExcludeMode, g1), rec(AllowNewSources, g2, s1, s2)))
	l.Handle(t0, hostReport(t, hostA, rec(ChangeToIncludeMode, g1), rec(BlockOldSources, g2, s1)))
	l.Expire(t0.Add(time.Second)) // far beyond LLQT, within MALI
	want := "ff1e::1234 exclude(); ff3e::8000:1 include(2001:db8::1 2001:db8::2)"
	if got := render(l); got != want {
		t.Fatalf("after leaves without a querier: %q, want %q", got, want)
	}
	at := t0.Add(2 * time.Second)
	l.lowerTimers(at, g1, nil, time.Second)
	l.lowerTimers(at, g2, []netip.Addr{s1}, time.Second)
	if got := l.nextExpiry(); got != at.Add(time.Second) {
		t.Fatalf("next expiry %v, want %v", got, at.Add(time.Second))
	}
	l.Expire(at.Add(time.Second))
	if got, want := render(l), "ff3e::8000:1 include(2001:db8::2)"; got != want {
		t.Fatalf("after the querier's queries: %q, want %q", got, want)
	}
}

// The Link knows when its first timer runs out, and wakes its Querier when
// a timer comes earlier than that.
func TestLinkNextExpiry(t *testing.T) {
	l := NewLink(DefaultTiming, nil)
	if !l.nextExpiry().IsZero() {
		t.Fatal("empty Link has a timer")
	}
	mali := DefaultTiming.listenerInterval()
	l.Handle(t0, report(t, rec(ChangeToExcludeMode, g1)))
	if got := l.nextExpiry(); got != t0.Add(mali) {
		t.Fatalf("next expiry %v, want MALI", got.Sub(t0))
	}
	select {
	case <-l.wake:
	default:
		t.Fatal("first timer did not wake the Querier")
	}
	l.Handle(t0.Add(time.Second), report(t, rec(ChangeToExcludeMode, g2)))
	select {
	case <-l.wake:
		t.Fatal("a later timer woke the Querier")
	default:
	}
	l.Expire(t0.Add(mali))
	if got := l.nextExpiry(); got != t0.Add(time.Second+mali) {
		t.Fatalf("after the first expiry, next %v, want 1s+MALI", got.Sub(t0))
	}
	l.Expire(t0.Add(time.Second + mali))
	if !l.nextExpiry().IsZero() || l.Len() != 0 {
		t.Fatalf("all expired, yet next %v and %d groups", l.nextExpiry(), l.Len())
	}
}

// On lc0 a leave takes effect at once and asks for no query, whether or
// not a Querier runs.
func TestLc0LeaveAsksNothing(t *testing.T) {
	l := NewLink(DefaultTiming, nil)
	var r askRecorder
	l.setQuerier(r.ask, 0)
	l.Handle(t0, report(t, rec(ChangeToExcludeMode, g1), rec(AllowNewSources, g2, s1)))
	l.Handle(t0, report(t, rec(ChangeToIncludeMode, g1), rec(BlockOldSources, g2, s1)))
	if got := render(l); got != "" || len(r.asked) != 0 {
		t.Fatalf("after leaves: %q, asked %v; want nothing", got, r.asked)
	}
}
