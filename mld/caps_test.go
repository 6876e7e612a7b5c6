package mld

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
)

// nth returns the n'th address after base.
func nth(base netip.Addr, n int) netip.Addr {
	a := base.As16()
	binary.BigEndian.PutUint32(a[12:], binary.BigEndian.Uint32(a[12:])+uint32(n))
	return netip.AddrFrom16(a)
}

// handleAll hands l the records in reports of per records.
func handleAll(t *testing.T, l *Link, recs []ReportRecord, per int) {
	t.Helper()
	for len(recs) > 0 {
		n := min(len(recs), per)
		l.Handle(t0, report(t, recs[:n]...))
		recs = recs[n:]
	}
}

// TestLinkGroupCap is a hostile host reporting more groups than a Link
// holds: it keeps MaxGroups, counts the rest (an MLDv1 report too), still
// follows the groups it holds, and takes a new group once one leaves.
func TestLinkGroupCap(t *testing.T) {
	l := NewLink(DefaultTiming, nil)
	const extra = 100
	recs := make([]ReportRecord, MaxGroups+extra)
	for i := range recs {
		recs[i] = rec(ModeIsExclude, nth(g1, i))
	}
	handleAll(t, l, recs, 64)
	if l.Len() != MaxGroups || l.GroupsOverCap.Load() != extra {
		t.Fatalf("%d groups held, %d over the cap; want %d and %d", l.Len(), l.GroupsOverCap.Load(), MaxGroups, extra)
	}
	newcomer := nth(g1, MaxGroups+extra)
	l.Handle(t0, &Message{Type: TypeV1Report, Group: newcomer})
	if l.Len() != MaxGroups || l.GroupsOverCap.Load() != extra+1 {
		t.Fatalf("after an MLDv1 report beyond the cap: %d groups held, %d over; want %d and %d", l.Len(), l.GroupsOverCap.Load(), MaxGroups, extra+1)
	}
	// A held group still changes: its leave (at once on lc0) makes room.
	l.Handle(t0, report(t, rec(ChangeToIncludeMode, nth(g1, 0))))
	l.Handle(t0, report(t, rec(ModeIsExclude, newcomer)))
	groups := l.Groups()
	if len(groups) != MaxGroups || groups[0].Group != nth(g1, 1) || groups[len(groups)-1].Group != newcomer {
		t.Fatalf("after a leave and a new report: %d groups, first %s, last %s; want %d, %s, %s",
			len(groups), groups[0].Group, groups[len(groups)-1].Group, MaxGroups, nth(g1, 1), newcomer)
	}
}

// TestLinkSourceCap is a hostile host listing more sources than a Link
// holds: at most MaxGroupSources in a group, in either mode, and
// MaxSources in all; the rest are counted, and the room comes back when
// groups expire.
func TestLinkSourceCap(t *testing.T) {
	l := NewLink(DefaultTiming, nil)
	sources := make([]netip.Addr, MaxGroupSources+10)
	for i := range sources {
		sources[i] = nth(s1, i)
	}
	l.Handle(t0, report(t, rec(ModeIsInclude, g1, sources...), rec(ModeIsExclude, g2, sources...)))
	for _, g := range l.Groups() {
		if len(g.Sources) != MaxGroupSources {
			t.Errorf("%s %s: %d sources, want %d", g.Group, g.Mode, len(g.Sources), MaxGroupSources)
		}
	}
	if got := l.SourcesOverCap.Load(); got != 20 {
		t.Errorf("%d sources over the cap, want 20", got)
	}

	// Groups of MaxGroupSources each until MaxSources are held: two are
	// already, and the last group's sources find no room.
	var recs []ReportRecord
	for i := range MaxSources/MaxGroupSources - 1 {
		recs = append(recs, rec(ModeIsInclude, nth(g1, i+1), sources[:MaxGroupSources]...))
	}
	handleAll(t, l, recs, 2) // 32 KiB of sources a report
	held := 0
	for _, g := range l.Groups() {
		held += len(g.Sources)
	}
	if held != MaxSources || l.SourcesOverCap.Load() != 20+MaxGroupSources {
		t.Fatalf("%d sources held, %d over the cap; want %d and %d", held, l.SourcesOverCap.Load(), MaxSources, 20+MaxGroupSources)
	}

	// Every timer runs out: the Link is empty, and holds sources again.
	l.Expire(t0.Add(time.Hour))
	if l.Len() != 0 || l.sources != 0 {
		t.Fatalf("after expiry: %d groups, %d sources counted; want none", l.Len(), l.sources)
	}
	l.Handle(t0.Add(time.Hour), report(t, rec(ModeIsInclude, g1, sources[:MaxGroupSources]...)))
	if g := l.Groups(); len(g) != 1 || len(g[0].Sources) != MaxGroupSources {
		t.Fatalf("after expiry, a new group: %v", render(l))
	}
}
