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
}

// DefaultTiming is RFC 3810's defaults, except for a 1 s Query Response
// Interval: lc0 has a single host, so there is no report storm to spread out,
// and a restarted daemon relearns every membership within a second.
var DefaultTiming = Timing{Robustness: 2, QueryInterval: 125 * time.Second, QueryResponseInterval: time.Second}

// listenerInterval is the Multicast Address Listening Interval (MALI, 9.4),
// also the Older Version Host Present Timeout (9.12).
func (t Timing) listenerInterval() time.Duration {
	return time.Duration(t.Robustness)*t.QueryInterval + t.QueryResponseInterval
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

// Link is the router-side listener state of one link (RFC 3810 section 7).
// It is safe for concurrent use.
type Link struct {
	timing   Timing
	onChange func()

	mu     sync.Mutex
	groups map[netip.Addr]*group

	decodeMu  sync.Mutex // serializes HandleLinkPacket, for scratch
	scratch   Message
	malformed atomic.Uint64
}

// NewLink returns an empty Link. onChange, if not nil, is called (without
// locks held) after every change of the set of groups or their filters.
func NewLink(timing Timing, onChange func()) *Link {
	return &Link{timing: timing, onChange: onChange, groups: make(map[netip.Addr]*group)}
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
		l.groups[m.Group].v1Until = now.Add(l.timing.listenerInterval())
	case TypeV1Done:
		// An MLDv1 Done is TO_IN({}).
		changed = l.apply(now, m.Group, ChangeToIncludeMode, nil)
	case TypeV2Report:
		for _, r := range m.Records {
			changed = l.applyRecord(now, r) || changed
		}
	}
	l.mu.Unlock()
	if changed && l.onChange != nil {
		l.onChange()
	}
}

// HandleLinkPacket takes a packet read from the link (lc0), as the
// bridge hands it over: an MLD message is decoded and handled (at the
// time now), a malformed one counted (Malformed), and anything else
// (Router Solicitations...) left alone. It reports whether pkt was an MLD
// message, well-formed or not. It does not keep pkt.
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

// Malformed returns how many malformed MLD messages HandleLinkPacket got.
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
// records) and 7.4.2 (state change records) for one record, then lets the
// timers that a specific query would have lowered expire at once (see the
// package documentation). It reports whether the filter state changed.
func (l *Link) apply(now time.Time, addr netip.Addr, typ RecordType, b []netip.Addr) bool {
	g, ok := l.groups[addr]
	if !ok {
		// An absent group is INCLUDE({}); expireGroup removes it again
		// if it stays that way.
		g = &group{mode: Include}
		l.groups[addr] = g
	}
	before := g.snapshot(addr)
	mali := now.Add(l.timing.listenerInterval())
	in := func(s netip.Addr) bool { return slices.Contains(b, s) }
	lower := func(s netip.Addr) { // Q(MA,S) for one source
		if t, ok := g.sources[s]; ok && !t.IsZero() {
			g.sources[s] = now
		}
	}
	setAll := func(t time.Time) {
		for _, s := range b {
			g.setSource(s, t)
		}
	}
	// toExclude moves the group to EXCLUDE(A-Y, Y*A) with new sources
	// (in neither list) timed to newTimer: IS_EX and TO_EX in both modes.
	toExclude := func(newTimer time.Time) {
		wasInclude := g.mode == Include
		for s := range g.sources {
			if !in(s) {
				delete(g.sources, s)
			}
		}
		for _, s := range b {
			if _, ok := g.sources[s]; !ok {
				if wasInclude {
					g.setSource(s, time.Time{}) // B-A joins the Exclude List
				} else {
					g.setSource(s, newTimer)
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
			g.timer = now // Q(MA)
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
					g.setSource(s, g.timer) // (A-X-Y) = GT
				}
				lower(s) // Q(MA, A-Y)
			}
		}
	}
	l.expireGroup(now, addr, g)
	// A removed group is left as INCLUDE({}), which compares as absent.
	return !g.snapshot(addr).equal(before)
}

// Expire runs the source and group timers that have run out by now
// (RFC 3810 sections 7.2.3 and 7.5), as the Querier does every second.
func (l *Link) Expire(now time.Time) {
	changed := false
	l.mu.Lock()
	for addr, g := range l.groups {
		before := g.snapshot(addr)
		l.expireGroup(now, addr, g)
		changed = changed || !g.snapshot(addr).equal(before)
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
				delete(g.sources, s)
			} else {
				g.sources[s] = time.Time{} // into the Exclude List
			}
		}
	}
	if g.mode == Exclude && !g.timer.After(now) {
		// Group timer expiry: back to INCLUDE with the sources still timed.
		for s, t := range g.sources {
			if t.IsZero() {
				delete(g.sources, s)
			}
		}
		g.mode = Include
	}
	if g.mode == Include && len(g.sources) == 0 {
		delete(l.groups, addr)
	}
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

// setSource sets the timer of source s, adding it. Most groups have no
// sources, so their map is made only for the first.
func (g *group) setSource(s netip.Addr, t time.Time) {
	if g.sources == nil {
		g.sources = map[netip.Addr]time.Time{}
	}
	g.sources[s] = t
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
