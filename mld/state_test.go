package mld

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	g1 = netip.MustParseAddr("ff1e::1234")
	g2 = netip.MustParseAddr("ff3e::8000:1")
	s1 = netip.MustParseAddr("2001:db8::1")
	s2 = netip.MustParseAddr("2001:db8::2")
	s3 = netip.MustParseAddr("2001:db8::3")
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// report decodes an encoded MLDv2 report, so state tests go through Decode.
func report(t *testing.T, recs ...ReportRecord) *Message {
	t.Helper()
	var m Message
	if err := Decode(AppendV2Report(nil, kernelSource, recs), &m); err != nil {
		t.Fatal(err)
	}
	return &m
}

func rec(typ RecordType, g netip.Addr, sources ...netip.Addr) ReportRecord {
	return ReportRecord{Type: typ, Group: g, Sources: sources}
}

// render shows a Link's groups as "group mode(sources)", sorted.
func render(l *Link) string {
	var parts []string
	for _, g := range l.Groups() {
		var srcs []string
		for _, s := range g.Sources {
			srcs = append(srcs, s.String())
		}
		parts = append(parts, fmt.Sprintf("%s %s(%s)", g.Group, g.Mode, strings.Join(srcs, " ")))
	}
	return strings.Join(parts, "; ")
}

func TestLinkStateChanges(t *testing.T) {
	tests := []struct {
		name  string
		steps [][]ReportRecord
		want  string
	}{
		{"any-source join", [][]ReportRecord{{rec(ChangeToExcludeMode, g1)}}, "ff1e::1234 exclude()"},
		{"join then leave", [][]ReportRecord{{rec(ChangeToExcludeMode, g1)}, {rec(ChangeToIncludeMode, g1)}}, ""},
		{"source-specific join", [][]ReportRecord{{rec(AllowNewSources, g2, s1)}}, "ff3e::8000:1 include(2001:db8::1)"},
		{"second source", [][]ReportRecord{{rec(AllowNewSources, g2, s1)}, {rec(AllowNewSources, g2, s2)}}, "ff3e::8000:1 include(2001:db8::1 2001:db8::2)"},
		{"block one of two sources", [][]ReportRecord{{rec(AllowNewSources, g2, s1, s2)}, {rec(BlockOldSources, g2, s1)}}, "ff3e::8000:1 include(2001:db8::2)"},
		{"block the last source", [][]ReportRecord{{rec(AllowNewSources, g2, s1)}, {rec(BlockOldSources, g2, s1)}}, ""},
		{"exclude a source", [][]ReportRecord{{rec(ChangeToExcludeMode, g1, s1)}}, "ff1e::1234 exclude(2001:db8::1)"},
		{"exclude to include", [][]ReportRecord{{rec(ChangeToExcludeMode, g1, s1)}, {rec(ChangeToIncludeMode, g1, s2)}}, "ff1e::1234 include(2001:db8::2)"},
		{"include to exclude", [][]ReportRecord{{rec(AllowNewSources, g1, s1, s2)}, {rec(ChangeToExcludeMode, g1, s2, s3)}}, "ff1e::1234 exclude(2001:db8::2 2001:db8::3)"},
		{"allow in exclude mode", [][]ReportRecord{{rec(ChangeToExcludeMode, g1, s1, s2)}, {rec(AllowNewSources, g1, s1)}}, "ff1e::1234 exclude(2001:db8::2)"},
		{"block in exclude mode", [][]ReportRecord{{rec(ChangeToExcludeMode, g1, s1)}, {rec(BlockOldSources, g1, s2)}}, "ff1e::1234 exclude(2001:db8::1 2001:db8::2)"},
		{"current state include", [][]ReportRecord{{rec(ModeIsInclude, g2, s1, s2)}}, "ff3e::8000:1 include(2001:db8::1 2001:db8::2)"},
		{"current state exclude", [][]ReportRecord{{rec(ModeIsExclude, g1, s3)}}, "ff1e::1234 exclude(2001:db8::3)"},
		{"leave of an unknown group", [][]ReportRecord{{rec(ChangeToIncludeMode, g1)}, {rec(BlockOldSources, g2, s1)}}, ""},
		{"several records", [][]ReportRecord{{rec(ChangeToExcludeMode, g1), rec(AllowNewSources, g2, s1)}}, "ff1e::1234 exclude(); ff3e::8000:1 include(2001:db8::1)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := NewLink(DefaultTiming, nil)
			for i, step := range tt.steps {
				l.Handle(t0.Add(time.Duration(i)*time.Second), report(t, step...))
			}
			if got := render(l); got != tt.want {
				t.Fatalf("state\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

// The kernel's own reports, in the order it wrote them, leave the state the
// program's sockets asked for.
func TestLinkKernelSequence(t *testing.T) {
	l := NewLink(DefaultTiming, nil)
	steps := []struct{ pkt, want string }{
		{kernelJoinASM, "ff1e::1234 exclude()"},
		{kernelJoinSSM, "ff1e::1234 exclude(); ff3e::8000:1 include(2001:db8::1)"},
		{kernelCurrent, "ff1e::1234 exclude(); ff1e::5678 exclude(2001:db8::1); ff3e::8000:1 include(2001:db8::1 2001:db8::2)"},
		{kernelLeave, "ff1e::5678 exclude(2001:db8::1); ff3e::8000:1 include(2001:db8::1 2001:db8::2)"},
		{kernelBlock, "ff1e::5678 exclude(2001:db8::1); ff3e::8000:1 include(2001:db8::2)"},
	}
	var m Message
	for i, s := range steps {
		if err := Decode(mustHex(t, s.pkt), &m); err != nil {
			t.Fatal(err)
		}
		l.Handle(t0, &m)
		if got := render(l); got != s.want {
			t.Fatalf("after step %d\n got %q\nwant %q", i, got, s.want)
		}
	}
}

func TestLinkTimers(t *testing.T) {
	mali := DefaultTiming.listenerInterval()
	t.Run("include sources time out", func(t *testing.T) {
		l := NewLink(DefaultTiming, nil)
		l.Handle(t0, report(t, rec(ModeIsInclude, g2, s1)))
		l.Expire(t0.Add(mali - time.Second))
		if render(l) == "" {
			t.Fatal("group gone before MALI")
		}
		l.Expire(t0.Add(mali))
		if got := render(l); got != "" {
			t.Fatalf("after MALI: %q, want no groups", got)
		}
	})
	t.Run("exclude group timer falls back to timed sources", func(t *testing.T) {
		l := NewLink(DefaultTiming, nil)
		l.Handle(t0, report(t, rec(ModeIsExclude, g1, s1)))
		l.Handle(t0.Add(mali/2), report(t, rec(ModeIsInclude, g1, s2)))
		l.Expire(t0.Add(mali))
		if got, want := render(l), "ff1e::1234 include(2001:db8::2)"; got != want {
			t.Fatalf("after group timer: %q, want %q", got, want)
		}
		l.Expire(t0.Add(mali/2 + mali))
		if got := render(l); got != "" {
			t.Fatalf("after source timer: %q, want no groups", got)
		}
	})
	t.Run("refresh keeps a group", func(t *testing.T) {
		l := NewLink(DefaultTiming, nil)
		l.Handle(t0, report(t, rec(ModeIsExclude, g1)))
		l.Handle(t0.Add(mali-time.Second), report(t, rec(ModeIsExclude, g1)))
		l.Expire(t0.Add(mali + time.Second))
		if render(l) == "" {
			t.Fatal("refreshed group expired")
		}
	})
}

func TestLinkMLDv1Compatibility(t *testing.T) {
	var m Message
	l := NewLink(DefaultTiming, nil)
	if err := Decode(mustHex(t, kernelV1Join), &m); err != nil {
		t.Fatal(err)
	}
	l.Handle(t0, &m)
	if got, want := render(l), "ff1e::1234 exclude()"; got != want {
		t.Fatalf("after v1 report: %q, want %q", got, want)
	}
	// In compatibility mode, BLOCK is ignored and TO_EX(S) is TO_EX({}).
	l.Handle(t0, report(t, rec(BlockOldSources, g1, s1)))
	l.Handle(t0, report(t, rec(ChangeToExcludeMode, g1, s1)))
	if got, want := render(l), "ff1e::1234 exclude()"; got != want {
		t.Fatalf("compat mode: %q, want %q", got, want)
	}
	if err := Decode(mustHex(t, kernelV1Done), &m); err != nil {
		t.Fatal(err)
	}
	l.Handle(t0, &m)
	if got := render(l); got != "" {
		t.Fatalf("after v1 done: %q, want no groups", got)
	}
}

func TestLinkOnChange(t *testing.T) {
	calls := 0
	l := NewLink(DefaultTiming, func() { calls++ })
	l.Handle(t0, report(t, rec(ChangeToExcludeMode, g1)))
	l.Handle(t0, report(t, rec(ModeIsExclude, g1))) // same state, refreshed
	l.Handle(t0, report(t, rec(ChangeToIncludeMode, g2)))
	if calls != 1 {
		t.Fatalf("onChange called %d times, want 1", calls)
	}
	l.Handle(t0, report(t, rec(ChangeToIncludeMode, g1)))
	if calls != 2 {
		t.Fatalf("onChange called %d times after leave, want 2", calls)
	}
}

// hostFilter is a host's interface state for one group (RFC 3810 6.1).
type hostFilter struct {
	mode    FilterMode
	sources []netip.Addr
}

// changeRecords returns the state change records a host sends when its
// filter goes from old to new (RFC 3810 section 6.1).
func changeRecords(g netip.Addr, old, new hostFilter) []ReportRecord {
	diff := func(a, b []netip.Addr) []netip.Addr {
		var out []netip.Addr
		for _, s := range a {
			if !slices.Contains(b, s) {
				out = append(out, s)
			}
		}
		return out
	}
	var out []ReportRecord
	switch {
	case old.mode == Include && new.mode == Include:
		if d := diff(new.sources, old.sources); len(d) > 0 {
			out = append(out, rec(AllowNewSources, g, d...))
		}
		if d := diff(old.sources, new.sources); len(d) > 0 {
			out = append(out, rec(BlockOldSources, g, d...))
		}
	case old.mode == Exclude && new.mode == Exclude:
		if d := diff(old.sources, new.sources); len(d) > 0 {
			out = append(out, rec(AllowNewSources, g, d...))
		}
		if d := diff(new.sources, old.sources); len(d) > 0 {
			out = append(out, rec(BlockOldSources, g, d...))
		}
	case new.mode == Exclude:
		out = append(out, rec(ChangeToExcludeMode, g, new.sources...))
	default:
		out = append(out, rec(ChangeToIncludeMode, g, new.sources...))
	}
	return out
}

// With the local kernel as the only host, the router's state must equal the
// host's after every report: random filter changes, as state change records
// and as current state records, checked against the host's own state.
func TestLinkFollowsSingleHostRandomly(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pool := []netip.Addr{s1, s2, s3, netip.MustParseAddr("2001:db8::4")}
	groups := []netip.Addr{g1, g2}
	for run := range 200 {
		l := NewLink(DefaultTiming, nil)
		host := map[netip.Addr]hostFilter{}
		now := t0
		for step := range 30 {
			now = now.Add(time.Second)
			g := groups[rng.IntN(len(groups))]
			next := hostFilter{mode: FilterMode(rng.IntN(2))}
			for _, s := range pool {
				if rng.IntN(3) == 0 {
					next.sources = append(next.sources, s)
				}
			}
			var recs []ReportRecord
			if cur, ok := host[g]; ok && rng.IntN(4) == 0 {
				// A current state record, as after a General Query: the
				// host's filter does not change.
				typ := ModeIsInclude
				if cur.mode == Exclude {
					typ = ModeIsExclude
				}
				recs, next = []ReportRecord{rec(typ, g, cur.sources...)}, cur
			} else {
				recs = changeRecords(g, host[g], next)
			}
			if len(recs) > 0 {
				l.Handle(now, report(t, recs...))
			}
			if next.mode == Include && len(next.sources) == 0 {
				delete(host, g)
			} else {
				host[g] = next
			}
			if got, want := render(l), renderHost(host); got != want {
				t.Fatalf("run %d step %d after %v:\n got %q\nwant %q", run, step, recs, got, want)
			}
		}
	}
}

func renderHost(host map[netip.Addr]hostFilter) string {
	l := NewLink(DefaultTiming, nil)
	for g, f := range host {
		typ := ModeIsInclude
		if f.mode == Exclude {
			typ = ModeIsExclude
		}
		st := &group{mode: f.mode, sources: map[netip.Addr]time.Time{}, timer: t0.Add(time.Hour)}
		for _, s := range f.sources {
			if typ == ModeIsExclude {
				st.sources[s] = time.Time{}
			} else {
				st.sources[s] = t0.Add(time.Hour)
			}
		}
		l.groups[g] = st
	}
	return render(l)
}

// TestUnion checks Union against its definition on random filters: the
// union wants a source exactly when either filter does, and lists its
// sources sorted, without repeats.
func TestUnion(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	universe := make([]netip.Addr, 6)
	for i := range universe {
		universe[i] = netip.AddrFrom16([16]byte{0x20, 0x01, 15: byte(i + 1)})
	}
	outside := netip.MustParseAddr("2001:db8::99") // never in a filter
	random := func() GroupState {
		g := GroupState{Group: netip.MustParseAddr("ff1e::1"), Mode: FilterMode(rng.IntN(2)), Sources: []netip.Addr{}, Hops: uint8(rng.IntN(4))}
		for _, s := range universe {
			if rng.IntN(2) == 0 {
				g.Sources = append(g.Sources, s)
			}
		}
		return g
	}
	for range 2000 {
		a, b := random(), random()
		u := Union(a, b)
		for _, s := range append(universe, outside) {
			if u.Wants(s) != (a.Wants(s) || b.Wants(s)) {
				t.Fatalf("Union(%v, %v) = %v: wants %v is %v", a, b, u, s, u.Wants(s))
			}
		}
		if !slices.IsSortedFunc(u.Sources, netip.Addr.Compare) || len(slices.Compact(slices.Clone(u.Sources))) != len(u.Sources) {
			t.Fatalf("Union(%v, %v) sources %v not sorted and distinct", a, b, u.Sources)
		}
		if u.Group != a.Group || u.Hops != min(a.Hops, b.Hops) {
			t.Fatalf("Union(%v, %v) = %v: group or hops wrong", a, b, u)
		}
	}
}

// HandleLinkPacket applies MLD reports, counts malformed MLD messages,
// and leaves other link traffic (a Router Solicitation) alone.
func TestHandleLinkPacket(t *testing.T) {
	l := NewLink(DefaultTiming, nil)
	report := AppendV2Report(nil, netip.MustParseAddr("fe80::1"), []ReportRecord{{Type: ChangeToExcludeMode, Group: g1}})
	if !l.HandleLinkPacket(report) || len(l.Groups()) != 1 || l.Groups()[0].Group != g1 {
		t.Fatalf("report: groups %v", l.Groups())
	}
	malformed := slices.Clone(report)
	malformed[len(malformed)-1] ^= 0xff // checksum
	if !l.HandleLinkPacket(malformed) || l.Malformed() != 1 {
		t.Fatalf("malformed report: %d counted", l.Malformed())
	}
	rs := make([]byte, 48)
	rs[0], rs[6], rs[7] = 0x60, 58, 255 // ICMPv6
	rs[5] = 8
	rs[40] = 133 // Router Solicitation
	copy(rs[24:], netip.MustParseAddr("ff02::2").AsSlice())
	if l.HandleLinkPacket(rs) || l.Malformed() != 1 {
		t.Fatalf("a Router Solicitation was taken for MLD (%d malformed)", l.Malformed())
	}
}

// UnionGroups merges two sorted lists of groups, the filters of a group
// in both merged.
func TestUnionGroups(t *testing.T) {
	g := func(a string, mode FilterMode, srcs ...string) GroupState {
		s := GroupState{Group: netip.MustParseAddr(a), Mode: mode}
		for _, x := range srcs {
			s.Sources = append(s.Sources, netip.MustParseAddr(x))
		}
		return s
	}
	a := []GroupState{g("ff1e::1", Include, "2001:db8::1"), g("ff1e::3", Exclude)}
	b := []GroupState{g("ff1e::1", Include, "2001:db8::2"), g("ff1e::2", Exclude)}
	got := UnionGroups(a, b)
	want := []GroupState{g("ff1e::1", Include, "2001:db8::1", "2001:db8::2"), g("ff1e::2", Exclude), g("ff1e::3", Exclude)}
	if len(got) != len(want) {
		t.Fatalf("UnionGroups = %v, want %v", got, want)
	}
	for i := range want {
		if !got[i].Equal(want[i]) {
			t.Errorf("UnionGroups[%d] = %v, want %v", i, got[i], want[i])
		}
	}
}
