package gateway

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/librecast/lcast/mld"
)

// The routing rules are one nftables table whose rules are made once, at
// start, and never change; what changes with the listeners are the
// elements of its sets (docs/design.md, "Gateway mode and nftables"):
//
//   - lc0_groups: the groups wanted through lc0 (peers' subscriptions and
//     programs on this node);
//   - per LAN, <lan>_exclude: the groups whose listeners on the LAN are in
//     Exclude mode (an any-source join is Exclude with no sources);
//     <lan>_blocked: group . source for each source they exclude; and
//     <lan>_include: group . source for each source listeners in Include
//     mode (SSM) want.
//
// A packet to group G from source S goes onto a LAN when G is in its
// exclude set and G . S is not in its blocked set, or G . S is in its
// include set: exactly the LAN's filter (mld.GroupState.Wants). A change
// of listeners is a few element additions and deletions, and the rules
// stay a fixed handful whatever the number of groups.

// Caps on what the sets hold. A LAN's are those of its listener state
// (mld.MaxGroups, mld.MaxSources), which never reaches them: they bound
// the sets by construction. lc0's groups are the union of every peer's
// subscriptions (each at most peer.MaxGroupsPerPeer, 2^18) and local
// programs': the set takes twice one peer's cap, and groups beyond it are
// not copied from the LANs into lc0 (a warning says so).
const (
	maxLANGroups  = mld.MaxGroups
	maxLANSources = mld.MaxSources
	maxLc0Groups  = 2 << 18
)

// link is an interface a rule names: by name (packets coming in) and
// index (dup's device).
type link struct {
	name  string
	index int
}

// lanLayout is what the rules say about one LAN.
type lanLayout struct {
	link
	id       string         // the stem of its nftables names: lan_<identifier>
	prefixes []netip.Prefix // its hosts' sources, disjoint, sorted
}

// layout is the table's fixed part: its name, lc0 and the LANs.
type layout struct {
	table string
	lc0   link
	lans  []lanLayout
}

// newLayout returns the layout of the table for lc0 and the LANs, whose
// names give each LAN's nftables names (made unique).
func newLayout(table string, lc0 link, lans []link, prefixes [][]netip.Prefix) layout {
	l := layout{table: table, lc0: lc0}
	used := map[string]bool{}
	for i, lan := range lans {
		id := "lan_" + identifier(lan.name)
		for n := 2; used[id]; n++ {
			id = fmt.Sprintf("lan_%s_%d", identifier(lan.name), n)
		}
		used[id] = true
		l.lans = append(l.lans, lanLayout{link: lan, id: id, prefixes: disjoint(prefixes[i])})
	}
	return l
}

// Names of the table's sets, counters and chains.
const (
	setLc0     = "lc0_groups"
	chainPre   = "prerouting"
	chainFromL = "from_lc0"
)

func (l lanLayout) setExclude() string { return l.id + "_exclude" }
func (l lanLayout) setBlocked() string { return l.id + "_blocked" }
func (l lanLayout) setInclude() string { return l.id + "_include" }
func (l lanLayout) counter() string    { return l.id + "_foreign" }
func (l lanLayout) chainFrom() string  { return "from_" + l.id }
func (l lanLayout) chainRoute() string { return "route_" + l.id }

// ownPrefixes returns every LAN's prefixes, disjoint and sorted: the
// sources whose packets from lc0 are not copied onto a LAN (they came from
// one).
func (l layout) ownPrefixes() []netip.Prefix {
	var all []netip.Prefix
	for _, lan := range l.lans {
		all = append(all, lan.prefixes...)
	}
	return disjoint(all)
}

// disjoint returns the prefixes without duplicates and without those
// another contains, sorted (a LAN with two addresses in one prefix lists
// it twice).
func disjoint(prefixes []netip.Prefix) []netip.Prefix {
	ps := slices.Clone(prefixes)
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	var out []netip.Prefix
	for _, p := range ps {
		// Sorted by address then length, a prefix that contains p comes
		// before it; of disjoint prefixes, the last kept is the only one
		// that can.
		if n := len(out); n > 0 && out[n-1].Bits() <= p.Bits() && out[n-1].Contains(p.Addr()) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// setOp adds an element to a set or deletes one from it: a group, or a
// group . source for the sets keyed by both.
type setOp struct {
	del    bool
	set    string
	group  netip.Addr
	source netip.Addr // valid in the group . source sets
}

// String returns the op as the tests write it: "+set group" or
// "-set group . source".
func (o setOp) String() string {
	sign := "+"
	if o.del {
		sign = "-"
	}
	if o.source.IsValid() {
		return fmt.Sprintf("%s%s %s . %s", sign, o.set, o.group, o.source)
	}
	return fmt.Sprintf("%s%s %s", sign, o.set, o.group)
}

// state is what the sets hold: the elements the gateway added and did not
// delete. Diffing the listeners against it gives the element changes.
type state struct {
	lc0  []netip.Addr // sorted
	lans []lanState
}

// lanState is what one LAN's sets hold: its routable groups' filters,
// sorted by group, and how many elements the sets have (against the caps).
type lanState struct {
	groups  []mld.GroupState
	exclude int // groups in <lan>_exclude
	sources int // elements of <lan>_blocked and <lan>_include together
}

// newState returns the state of a table with empty sets.
func newState(l layout) *state {
	return &state{lans: make([]lanState, len(l.lans))}
}

// lc0Changes appends to ops the changes that make lc0_groups hold want
// (sorted, deduplicated, routable), deletions first, and records them.
// Groups beyond maxLc0Groups are left out; it returns how many.
//
// The state then is want itself (given up by the caller, and changed in
// place when groups are left out).
func (s *state) lc0Changes(ops []setOp, want []netip.Addr) ([]setOp, int) {
	// First the deletions, counting what stays and what is new; then
	// the additions, as many as there is room for.
	have, next, kept, added := s.lc0, want, 0, 0
	for len(have) > 0 || len(next) > 0 {
		switch {
		case len(next) == 0 || len(have) > 0 && have[0].Less(next[0]):
			ops = append(ops, setOp{del: true, set: setLc0, group: have[0]})
			have = have[1:]
		case len(have) == 0 || next[0].Less(have[0]):
			added++
			next = next[1:]
		default:
			kept++
			have, next = have[1:], next[1:]
		}
	}
	room := max(maxLc0Groups-kept, 0)
	over := max(added-room, 0)
	ops = slices.Grow(ops, added-over)
	var out map[netip.Addr]bool // those left out: the last of the new
	have, next = s.lc0, want
	for len(next) > 0 {
		switch {
		case len(have) > 0 && have[0].Less(next[0]):
			have = have[1:]
		case len(have) == 0 || next[0].Less(have[0]):
			if room > 0 {
				ops = append(ops, setOp{set: setLc0, group: next[0]})
				room--
			} else {
				if out == nil {
					out = make(map[netip.Addr]bool, over)
				}
				out[next[0]] = true
			}
			next = next[1:]
		default:
			have, next = have[1:], next[1:]
		}
	}
	if out != nil {
		want = slices.DeleteFunc(want, func(g netip.Addr) bool { return out[g] })
	}
	s.lc0 = want
	return ops, over
}

// lanChanges appends to ops the changes that make LAN i's sets hold the
// filters want (sorted by group, routable), and records them: for each
// group that changed, the elements its old filter had and its new one has
// not are deleted, and those its new one has are added. Deletions come
// first, so that room freed under the caps is used; a group whose
// elements would go beyond them is left out (it returns how many).
//
// The state then is want itself (given up by the caller, and changed in
// place when groups are left out).
func (s *state) lanChanges(ops []setOp, l lanLayout, i int, want []mld.GroupState) ([]setOp, int) {
	st := &s.lans[i]
	have, next := st.groups, want
	type change struct{ from, to *mld.GroupState }
	var adds []change // groups new or changed, added after every deletion
	for len(have) > 0 || len(next) > 0 {
		switch {
		case len(next) == 0 || len(have) > 0 && have[0].Group.Less(next[0].Group):
			ops = st.elements(ops, l, true, have[0], nil)
			have = have[1:]
		case len(have) == 0 || next[0].Group.Less(have[0].Group):
			adds = append(adds, change{to: &next[0]})
			next = next[1:]
		default:
			if !same(have[0], next[0]) {
				// The old filter's elements the new one lacks go now.
				ops = st.elements(ops, l, true, have[0], &next[0])
				adds = append(adds, change{from: &have[0], to: &next[0]})
			}
			have, next = have[1:], next[1:]
		}
	}
	var out map[netip.Addr]bool // groups left out
	for _, c := range adds {
		g := *c.to
		if c.from == nil {
			groups, sources := 1, len(g.Sources)
			if g.Mode == mld.Include {
				groups = 0
			}
			if st.exclude+groups > maxLANGroups || st.sources+sources > maxLANSources {
				if out == nil {
					out = map[netip.Addr]bool{}
				}
				out[g.Group] = true
				continue
			}
			ops = st.elements(ops, l, false, g, nil)
		} else {
			// A changed group keeps its place: what it adds is bounded
			// by the LAN's own caps, which its listener state holds to.
			ops = st.elements(ops, l, false, g, c.from)
		}
	}
	if out != nil {
		want = slices.DeleteFunc(want, func(g mld.GroupState) bool { return out[g.Group] })
	}
	st.groups = want
	return ops, len(out)
}

// elements appends the ops that add (or delete, del) the elements of
// filter g's to (or from) the LAN's sets, leaving out those filter but
// also has, and counts them in st.
func (st *lanState) elements(ops []setOp, l lanLayout, del bool, g mld.GroupState, but *mld.GroupState) []setOp {
	n := 1
	if del {
		n = -1
	}
	var butSources []netip.Addr
	sameMode := but != nil && but.Mode == g.Mode
	if sameMode {
		butSources = but.Sources
	}
	set := l.setInclude()
	if g.Mode == mld.Exclude {
		set = l.setBlocked()
		if !sameMode {
			ops = append(ops, setOp{del: del, set: l.setExclude(), group: g.Group})
			st.exclude += n
		}
	}
	for _, src := range g.Sources {
		if _, found := slices.BinarySearchFunc(butSources, src, netip.Addr.Compare); found {
			continue
		}
		ops = append(ops, setOp{del: del, set: set, group: g.Group, source: src})
		st.sources += n
	}
	return ops
}

// same reports whether two filters of a group have the same elements.
func same(a, b mld.GroupState) bool {
	return a.Mode == b.Mode && slices.Equal(a.Sources, b.Sources)
}

// identifier turns an interface name into the tail of an nftables
// identifier.
func identifier(name string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, name)
}
