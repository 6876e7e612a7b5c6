package mld

import (
	"errors"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// FilterMode is a group's router filter mode (RFC 3810 section 7.2.1).
type FilterMode uint8

// Filter modes.
const (
	Include FilterMode = iota
	Exclude
)

func (m FilterMode) String() string {
	if m == Exclude {
		return "exclude"
	}
	return "include"
}

// Timing holds the protocol variables of RFC 3810 section 9.
type Timing struct {
	Robustness            int           // Robustness Variable
	QueryInterval         time.Duration // between General Queries
	QueryResponseInterval time.Duration // Maximum Response Delay of General Queries
	// LastListenerQueryInterval (LLQI, 9.8) is the Maximum Response Delay
	// of the specific queries sent after a leave and the time between
	// them; LastListenerQueryCount (LLQC, 9.9) is how many are sent. Their
	// product is the Last Listener Query Time (LLQT, 9.10). A zero LLQT is
	// lc0's: no specific queries, and a leave takes effect at once.
	LastListenerQueryInterval time.Duration
	LastListenerQueryCount    int
}

// DefaultTiming is RFC 3810's defaults, except for a 1 s Query Response
// Interval: lc0 has a single host, so there is no report storm to spread out,
// and a restarted daemon relearns every membership within a second. Its
// Last Listener Query Time is zero (see the package documentation).
var DefaultTiming = Timing{Robustness: 2, QueryInterval: 125 * time.Second, QueryResponseInterval: time.Second}

// LANTiming is for a LAN with many hosts. Robustness and Query Interval are
// RFC 3810's defaults (2 and 125 s), so lcast's Querier and a standard
// router agree on them. The Query Response Interval is 1 s, not 10 s: hosts
// spread their answers to a General Query over it, which matters for
// thousands of hosts, while a few hundred reports in a second are nothing
// to an Ethernet; in exchange a restarted router, which queries at once,
// knows every listener within about a second instead of ten. The Last
// Listener Query Interval is 250 ms, not 1 s, and the count is the
// Robustness Variable (2), as the RFC's default: a leave takes effect
// within 500 ms when no one else listens, and a listener that remains has
// two chances, 250 ms apart, to say so.
var LANTiming = Timing{
	Robustness:                2,
	QueryInterval:             125 * time.Second,
	QueryResponseInterval:     time.Second,
	LastListenerQueryInterval: 250 * time.Millisecond,
	LastListenerQueryCount:    2,
}

// listenerInterval is the Multicast Address Listening Interval (MALI, 9.4),
// also the Older Version Host Present Timeout (9.12).
func (t Timing) listenerInterval() time.Duration {
	return time.Duration(t.Robustness)*t.QueryInterval + t.QueryResponseInterval
}

// lastListenerQueryTime is LLQT (9.10); zero on lc0.
func (t Timing) lastListenerQueryTime() time.Duration {
	return time.Duration(t.LastListenerQueryCount) * t.LastListenerQueryInterval
}

// otherQuerierInterval is the Other Querier Present Timeout (9.5).
func (t Timing) otherQuerierInterval() time.Duration {
	return time.Duration(t.Robustness)*t.QueryInterval + t.QueryResponseInterval/2
}

// GroupState is a snapshot of one group's listener state. In Include mode,
// Sources are the sources listened to; in Exclude mode, the sources blocked
// (the Exclude List; traffic from every other source is wanted).
type GroupState struct {
	Group   netip.Addr
	Mode    FilterMode
	Sources []netip.Addr // sorted
	// Hops is not MLD's: for a subscription a peer sent, it is how many
	// relays lie between that peer and the nearest listener it speaks for
	// (0: programs on the peer itself). A Link leaves it 0.
	Hops uint8
}

// Wants reports whether traffic from src to the group is wanted.
func (g GroupState) Wants(src netip.Addr) bool {
	has := slices.Contains(g.Sources, src)
	return has == (g.Mode == Include)
}

// group is the state of one multicast address. A source with a zero timer
// is in the Exclude List; every other source has a running timer. sources
// is nil until the group has one.
type group struct {
	mode    FilterMode
	timer   time.Time // group timer, meaningful in Exclude mode
	sources map[netip.Addr]time.Time
	v1Until time.Time // Older Version Host Present timer
}

// A Link holds at most MaxGroups groups, MaxGroupSources sources in one
// group and MaxSources in all, as a peer takes no more from one node
// (peer.MaxGroupsPerPeer...): one LAN host, or a local program, reporting
// more cannot grow lcast's state beyond that. Reports beyond the caps
// change nothing: a new group is not added (GroupsOverCap), a source
// neither (SourcesOverCap); a group then gets the traffic of fewer
// sources it includes, or of more it excludes.
const (
	MaxGroups       = 1 << 18
	MaxGroupSources = 1024
	MaxSources      = 1 << 18
)

// Link is the router-side listener state of one link (RFC 3810 section 7).
// It is safe for concurrent use.
//
// With a zero Last Listener Query Time (lc0), a leave lowers the affected
// timers to the present, so it takes effect at once. Otherwise (a LAN), it
// lowers them to LLQT from now and asks the Link's running Querier for the
// specific queries that let other listeners answer (7.6.3); reports that
// come meanwhile raise the timers again. A LAN Link whose Querier is not
// the link's querier (or not running) leaves its timers to the querier's
// specific queries, which the Querier hands it (7.6.1).
type Link struct {
	timing   Timing
	onChange func()
	wake     chan struct{} // a timer now runs out before the last next said

	mu      sync.Mutex
	groups  map[netip.Addr]*group
	sources int // in all groups
	// mali is the Multicast Address Listening Interval: the timing's, or
	// as a non-querier adopted it from the querier (9.1, 9.2).
	mali time.Duration
	// ask, set by a running Querier while it is the link's querier, is
	// given the specific queries a LAN Link wants sent; asks holds them
	// until the lock is released.
	ask  func(group netip.Addr, sources []netip.Addr)
	asks []specificQuery
	// next is when the first timer may run out: none runs out before it
	// (zero: no timer runs). Expire makes it exact again.
	next time.Time

	decodeMu  sync.Mutex // serializes HandleLinkPacket, for scratch
	scratch   Message
	malformed atomic.Uint64
	// GroupsOverCap counts the reports of a group beyond MaxGroups,
	// SourcesOverCap the sources beyond MaxGroupSources or MaxSources.
	GroupsOverCap, SourcesOverCap atomic.Uint64
}

// specificQuery is a Multicast Address Specific Query (no sources) or a
// Multicast Address and Source Specific Query a Link asks for.
type specificQuery struct {
	group   netip.Addr
	sources []netip.Addr
}

// NewLink returns an empty Link. onChange, if not nil, is called (without
// locks held) after every change of the set of groups or their filters.
func NewLink(timing Timing, onChange func()) *Link {
	return &Link{
		timing: timing, onChange: onChange, wake: make(chan struct{}, 1),
		groups: make(map[netip.Addr]*group), mali: timing.listenerInterval(),
	}
}

// Handle applies a decoded Report or Done received at time now. Queries and
// non-report messages leave the state unchanged.
func (l *Link) Handle(now time.Time, m *Message) {
	changed := false
	l.mu.Lock()
	switch m.Type {
	case TypeV1Report:
		// RFC 3810 8.3.2: an MLDv1 Report is IS_EX({}).
		changed = l.apply(now, m.Group, ModeIsExclude, nil)
		if g, ok := l.groups[m.Group]; ok { // not, beyond MaxGroups
			g.v1Until = now.Add(l.mali)
		}
	case TypeV1Done:
		// An MLDv1 Done is TO_IN({}).
		changed = l.apply(now, m.Group, ChangeToIncludeMode, nil)
	case TypeV2Report:
		for _, r := range m.Records {
			changed = l.applyRecord(now, r) || changed
		}
	}
	ask, asks := l.ask, l.asks
	l.asks = nil
	l.mu.Unlock()
	for _, q := range asks {
		ask(q.group, q.sources)
	}
	if changed && l.onChange != nil {
		l.onChange()
	}
}

// HandleLinkPacket takes a packet read from the link (lc0), as the
// bridge hands it over: an MLD message is decoded and handled (at the
// time now), a malformed one counted (Malformed), and anything else
// (Router Solicitations...) left alone. It reports whether pkt was an MLD
// message, well-formed or not. It does not keep pkt. On a LAN, packets go
// to Querier.HandlePacket instead, which also hears other routers' queries.
func (l *Link) HandleLinkPacket(pkt []byte) bool {
	l.decodeMu.Lock()
	defer l.decodeMu.Unlock()
	switch err := Decode(pkt, &l.scratch); {
	case err == nil:
		l.Handle(time.Now(), &l.scratch)
	case errors.Is(err, ErrNotMLD):
		return false
	default:
		l.malformed.Add(1)
	}
	return true
}

// Malformed returns how many malformed MLD messages HandleLinkPacket (or
// the Querier's HandlePacket) got.
func (l *Link) Malformed() uint64 { return l.malformed.Load() }

func (l *Link) applyRecord(now time.Time, r Record) bool {
	if g, ok := l.groups[r.Group]; ok && now.Before(g.v1Until) {
		// MLDv1 compatibility mode (8.3.2): BLOCK is ignored and TO_EX
		// is treated as TO_EX({}).
		switch r.Type {
		case BlockOldSources:
			return false
		case ChangeToExcludeMode:
			return l.apply(now, r.Group, r.Type, nil)
		}
	}
	sources := make([]netip.Addr, r.NumSources())
	for i := range sources {
		sources[i] = r.Source(i)
	}
	return l.apply(now, r.Group, r.Type, sources)
}

// apply carries out the actions of RFC 3810 tables 7.4.1 (current state
// records) and 7.4.2 (state change records) for one record. Where a table
// sends Q(MA) or Q(MA,S), it lowers the timers to LLQT from now (7.6.3):
// on lc0 they expire at once (see the package documentation), on a LAN
// the query is added to l.asks. It reports whether the filter state changed.
func (l *Link) apply(now time.Time, addr netip.Addr, typ RecordType, b []netip.Addr) bool {
	g, ok := l.groups[addr]
	if !ok {
		if len(l.groups) >= MaxGroups {
			l.GroupsOverCap.Add(1)
			return false
		}
		// An absent group is INCLUDE({}); expireGroup removes it again
		// if it stays that way.
		g = &group{mode: Include}
		l.groups[addr] = g
	}
	before := g.snapshot(addr)
	mali := now.Add(l.mali)
	in := func(s netip.Addr) bool { return slices.Contains(b, s) }
	// Only the querier acts on "Send Q": a LAN non-querier waits for the
	// querier's query, which lowers its timers in turn (7.6.1).
	llqt := l.timing.lastListenerQueryTime()
	querier := llqt == 0 || l.ask != nil
	until := now.Add(llqt)
	var asked []netip.Addr // sources to query
	askGroup := false
	lower := func(s netip.Addr) { // Q(MA,S) for one source
		if t, ok := g.sources[s]; ok && !t.IsZero() && querier && until.Before(t) {
			g.sources[s] = until
			if llqt > 0 {
				asked = append(asked, s)
			}
		}
	}
	lowerGroup := func() { // Q(MA)
		if querier {
			if until.Before(g.timer) {
				g.timer = until
			}
			askGroup = llqt > 0
		}
	}
	setAll := func(t time.Time) {
		for _, s := range b {
			l.setSource(g, s, t)
		}
	}
	// toExclude moves the group to EXCLUDE(A-Y, Y*A) with new sources
	// (in neither list) timed to newTimer: IS_EX and TO_EX in both modes.
	toExclude := func(newTimer time.Time) {
		wasInclude := g.mode == Include
		for s := range g.sources {
			if !in(s) {
				l.deleteSource(g, s)
			}
		}
		for _, s := range b {
			if _, ok := g.sources[s]; !ok {
				if wasInclude {
					l.setSource(g, s, time.Time{}) // B-A joins the Exclude List
				} else {
					l.setSource(g, s, newTimer)
				}
			}
		}
		g.mode, g.timer = Exclude, mali
	}

	switch g.mode {
	case Include:
		switch typ {
		case ModeIsInclude, AllowNewSources:
			setAll(mali)
		case ChangeToIncludeMode:
			for s := range g.sources {
				if !in(s) {
					lower(s)
				}
			}
			setAll(mali)
		case ModeIsExclude:
			toExclude(mali)
		case ChangeToExcludeMode:
			toExclude(mali)
			for _, s := range b {
				lower(s) // Q(MA, A*B): only A*B has a running timer
			}
		case BlockOldSources:
			for _, s := range b {
				lower(s)
			}
		}
	case Exclude:
		switch typ {
		case ModeIsInclude, AllowNewSources:
			setAll(mali)
		case ChangeToIncludeMode:
			for s, t := range g.sources {
				if !t.IsZero() && !in(s) {
					lower(s) // Q(MA, X-A)
				}
			}
			setAll(mali)
			lowerGroup() // Q(MA)
		case ModeIsExclude:
			toExclude(mali)
		case ChangeToExcludeMode:
			toExclude(g.timer)
			for _, s := range b {
				lower(s) // Q(MA, A-Y)
			}
		case BlockOldSources:
			for _, s := range b {
				if _, ok := g.sources[s]; !ok {
					l.setSource(g, s, g.timer) // (A-X-Y) = GT
				}
				lower(s) // Q(MA, A-Y)
			}
		}
	}
	if askGroup {
		l.asks = append(l.asks, specificQuery{group: addr})
	}
	if len(asked) > 0 {
		l.asks = append(l.asks, specificQuery{group: addr, sources: asked})
	}
	l.expireGroup(now, addr, g)
	if l.groups[addr] == g {
		l.schedule(g.earliest())
	}
	// A removed group is left as INCLUDE({}), which compares as absent.
	return !g.snapshot(addr).equal(before)
}

// Expire runs the source and group timers that have run out by now
// (RFC 3810 sections 7.2.3 and 7.5), as the Querier does when the first
// of them runs out.
func (l *Link) Expire(now time.Time) {
	changed := false
	l.mu.Lock()
	l.next = time.Time{}
	for addr, g := range l.groups {
		before := g.snapshot(addr)
		l.expireGroup(now, addr, g)
		changed = changed || !g.snapshot(addr).equal(before)
		if l.groups[addr] == g {
			l.next = earliest(l.next, g.earliest())
		}
	}
	l.mu.Unlock()
	if changed && l.onChange != nil {
		l.onChange()
	}
}

func (l *Link) expireGroup(now time.Time, addr netip.Addr, g *group) {
	expired := func(t time.Time) bool { return !t.IsZero() && !t.After(now) }
	for s, t := range g.sources {
		if expired(t) {
			if g.mode == Include {
				l.deleteSource(g, s)
			} else {
				g.sources[s] = time.Time{} // into the Exclude List
			}
		}
	}
	if g.mode == Exclude && !g.timer.After(now) {
		// Group timer expiry: back to INCLUDE with the sources still timed.
		for s, t := range g.sources {
			if t.IsZero() {
				l.deleteSource(g, s)
			}
		}
		g.mode = Include
	}
	if g.mode == Include && len(g.sources) == 0 {
		delete(l.groups, addr)
	}
}

// schedule notes that a timer runs out at t (zero: none), and wakes the
// Querier if that is before any it knew of.
func (l *Link) schedule(t time.Time) {
	if t.IsZero() || (!l.next.IsZero() && !t.Before(l.next)) {
		return
	}
	l.next = t
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// nextExpiry returns when Expire next has work: no timer runs out before
// it. It is zero if no timer runs.
func (l *Link) nextExpiry() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.next
}

// setQuerier is called by the link's Querier: ask receives the specific
// queries this Link wants sent while the Querier is the link's querier
// (nil otherwise), and mali is the Multicast Address Listening Interval,
// the Querier's own or the one adopted from another querier.
func (l *Link) setQuerier(ask func(group netip.Addr, sources []netip.Addr), mali time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ask = ask
	if mali > 0 {
		l.mali = mali
	}
}

// lowerTimers carries out RFC 3810 7.6.1 for a specific query about addr
// heard at now with a clear S flag: the group's filter timer (no sources)
// or the listed sources' timers are lowered to llqt from now.
func (l *Link) lowerTimers(now time.Time, addr netip.Addr, sources []netip.Addr, llqt time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	g, ok := l.groups[addr]
	if !ok {
		return
	}
	until := now.Add(llqt)
	if len(sources) == 0 {
		if g.mode == Exclude && until.Before(g.timer) {
			g.timer = until
		}
	}
	for _, s := range sources {
		if t, ok := g.sources[s]; ok && !t.IsZero() && until.Before(t) {
			g.sources[s] = until
		}
	}
	l.schedule(g.earliest())
}

// querySplit tells the Querier, about to send at now a specific query
// about addr (and sources), what it is to say (7.6.3): exclude is whether
// the group is in Exclude mode (else a Multicast Address Specific Query
// has no filter timer left to ask about) and suppress whether that timer
// is beyond LLQT (a report raised it: the S flag is set). The sources still
// timed are split into those beyond LLQT (above: S set) and the rest.
func (l *Link) querySplit(now time.Time, addr netip.Addr, sources []netip.Addr) (exclude, suppress bool, above, below []netip.Addr) {
	llqt := now.Add(l.timing.lastListenerQueryTime())
	l.mu.Lock()
	defer l.mu.Unlock()
	g, ok := l.groups[addr]
	if !ok {
		return false, false, nil, nil
	}
	for _, s := range sources {
		switch t, ok := g.sources[s]; {
		case !ok || t.IsZero(): // gone, or in the Exclude List
		case t.After(llqt):
			above = append(above, s)
		default:
			below = append(below, s)
		}
	}
	return g.mode == Exclude, g.timer.After(llqt), above, below
}

// Len returns how many groups have listeners.
func (l *Link) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.groups)
}

// Groups returns a snapshot of every group with listeners, sorted by address.
func (l *Link) Groups() []GroupState {
	l.mu.Lock()
	out := make([]GroupState, 0, len(l.groups))
	for addr, g := range l.groups {
		out = append(out, g.snapshot(addr))
	}
	l.mu.Unlock()
	slices.SortFunc(out, func(a, b GroupState) int { return a.Group.Compare(b.Group) })
	return out
}

// setSource sets the timer of source s of g, adding it unless that would
// go beyond MaxGroupSources or MaxSources. Most groups have no sources, so
// their map is made only for the first.
func (l *Link) setSource(g *group, s netip.Addr, t time.Time) {
	if _, ok := g.sources[s]; !ok {
		if len(g.sources) >= MaxGroupSources || l.sources >= MaxSources {
			l.SourcesOverCap.Add(1)
			return
		}
		l.sources++
	}
	if g.sources == nil {
		g.sources = map[netip.Addr]time.Time{}
	}
	g.sources[s] = t
}

// deleteSource removes source s of g.
func (l *Link) deleteSource(g *group, s netip.Addr) {
	if _, ok := g.sources[s]; ok {
		delete(g.sources, s)
		l.sources--
	}
}

// earliest returns when the group's first running timer runs out (zero:
// none runs).
func (g *group) earliest() time.Time {
	var t time.Time
	if g.mode == Exclude {
		t = g.timer
	}
	for _, st := range g.sources {
		t = earliest(t, st)
	}
	return t
}

// earliest returns the earlier of two times, zero meaning never.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

func (g *group) snapshot(addr netip.Addr) GroupState {
	st := GroupState{Group: addr, Mode: g.mode, Sources: []netip.Addr{}}
	for s, t := range g.sources {
		// Include mode lists the timed sources; Exclude mode the Exclude List.
		if t.IsZero() == (g.mode == Exclude) {
			st.Sources = append(st.Sources, s)
		}
	}
	slices.SortFunc(st.Sources, netip.Addr.Compare)
	return st
}

func (a GroupState) equal(b GroupState) bool {
	return a.Group == b.Group && a.Mode == b.Mode && slices.Equal(a.Sources, b.Sources)
}

// Equal reports whether a and b are the same subscription: group, filter
// and hops.
func (a GroupState) Equal(b GroupState) bool { return a.equal(b) && a.Hops == b.Hops }

// Union returns the filter that wants exactly the sources a or b wants (the
// merge of RFC 3810 section 7.4 applied to two listeners), for a's group,
// with the fewer hops of the two.
func Union(a, b GroupState) GroupState {
	u := GroupState{Group: a.Group, Hops: min(a.Hops, b.Hops)}
	switch {
	case a.Mode == Include && b.Mode == Include:
		u.Mode, u.Sources = Include, mergeSorted(a.Sources, b.Sources)
	case a.Mode == Exclude && b.Mode == Exclude:
		u.Mode, u.Sources = Exclude, keepIf(a.Sources, func(s netip.Addr) bool { return hasSorted(b.Sources, s) })
	case a.Mode == Exclude: // exclude A, include B: exclude A - B
		u.Mode, u.Sources = Exclude, keepIf(a.Sources, func(s netip.Addr) bool { return !hasSorted(b.Sources, s) })
	default:
		u.Mode, u.Sources = Exclude, keepIf(b.Sources, func(s netip.Addr) bool { return !hasSorted(a.Sources, s) })
	}
	return u
}

// UnionGroups merges two lists of groups sorted by group into one, sorted:
// a group in both gets the Union of its two filters.
func UnionGroups(a, b []GroupState) []GroupState {
	out := make([]GroupState, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		switch c := a[0].Group.Compare(b[0].Group); {
		case c < 0:
			out, a = append(out, a[0]), a[1:]
		case c > 0:
			out, b = append(out, b[0]), b[1:]
		default:
			out, a, b = append(out, Union(a[0], b[0])), a[1:], b[1:]
		}
	}
	out = append(out, a...)
	return append(out, b...)
}

// mergeSorted returns the sorted union of two sorted lists.
func mergeSorted(a, b []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		switch c := a[0].Compare(b[0]); {
		case c < 0:
			out, a = append(out, a[0]), a[1:]
		case c > 0:
			out, b = append(out, b[0]), b[1:]
		default:
			out, a, b = append(out, a[0]), a[1:], b[1:]
		}
	}
	return append(append(out, a...), b...)
}

// keepIf returns the elements of s for which keep is true, in a new slice.
func keepIf(s []netip.Addr, keep func(netip.Addr) bool) []netip.Addr {
	out := []netip.Addr{}
	for _, a := range s {
		if keep(a) {
			out = append(out, a)
		}
	}
	return out
}

func hasSorted(s []netip.Addr, a netip.Addr) bool {
	_, ok := slices.BinarySearchFunc(s, a, netip.Addr.Compare)
	return ok
}
