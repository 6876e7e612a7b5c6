package gateway

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/librecast/lcast/mld"
)

// lanState is what the rules need of one LAN: its interface, the prefixes
// its hosts send from, and the groups its hosts listen to (routable ones
// only, sorted by group).
type lanState struct {
	name     string
	prefixes []netip.Prefix
	groups   []mld.GroupState
}

// ruleset returns the nftables script (for `nft -f -`) that replaces the
// table with rules that route multicast between lc0 and the LANs:
//
//   - a packet that came in on lc0 (from a peer) is copied onto each LAN
//     whose listeners want its group and source, unless its source lies on
//     one of the gateway's LANs (it was copied into lc0 from there);
//   - a packet a LAN host sent, with a source on that LAN, is copied onto
//     each other LAN that wants it, and into lc0 when lc0 wants its group
//     (the peers that subscribed, or programs on the gateway; the daemon
//     then sends it to exactly the peers whose filters take its source).
//
// nftables' dup statement copies in the kernel, taking one off the copy's
// hop limit as a router does; packets with hop limit 1 are not copied. A
// group is found in a verdict map, so a packet costs one lookup however
// many groups there are.
func ruleset(table, lc0 string, lans []lanState, lc0Groups []netip.Addr) string {
	var b strings.Builder
	// Dropping and declaring again replaces the table in one transaction,
	// whatever was there (a crashed daemon's rules).
	dropTable(&b, table)
	fmt.Fprintf(&b, "table ip6 %s {\n", table)
	var chains strings.Builder
	var pre []string
	chainNo := 0
	// addChain writes a chain of dup rules and returns its name, or ""
	// when it would be empty.
	addChain := func(dups []string) string {
		if len(dups) == 0 {
			return ""
		}
		name := fmt.Sprintf("g%d", chainNo)
		chainNo++
		fmt.Fprintf(&chains, "\tchain %s {\n", name)
		for _, d := range dups {
			fmt.Fprintf(&chains, "\t\t%s\n", d)
		}
		chains.WriteString("\t}\n")
		return name
	}
	var own []netip.Prefix
	for _, l := range lans {
		own = append(own, l.prefixes...)
	}
	// From lc0: each group some LAN listens to.
	var vmap []string
	for _, g := range groupsOf(lans) {
		var dups []string
		for _, l := range lans {
			if s, ok := find(l.groups, g); ok {
				dups = append(dups, dup(s, l.name))
			}
		}
		if c := addChain(dups); c != "" {
			vmap = append(vmap, fmt.Sprintf("%s : jump %s", g, c))
		}
	}
	if len(vmap) > 0 {
		match := fmt.Sprintf("iifname %q", lc0)
		if len(own) > 0 {
			match += " ip6 saddr != " + set(own)
		}
		pre = append(pre, fmt.Sprintf("%s ip6 daddr vmap { %s }", match, strings.Join(vmap, ", ")))
	}
	// From each LAN: the groups of the other LANs, and those lc0 wants.
	for _, from := range lans {
		if len(from.prefixes) == 0 {
			continue // no source can lie on it
		}
		groups := slices.Concat(lc0Groups, groupsOf(lans))
		slices.SortFunc(groups, netip.Addr.Compare)
		vmap = vmap[:0]
		for _, g := range slices.Compact(groups) {
			var dups []string
			for _, l := range lans {
				if s, ok := find(l.groups, g); ok && l.name != from.name {
					dups = append(dups, dup(s, l.name))
				}
			}
			if _, ok := slices.BinarySearchFunc(lc0Groups, g, netip.Addr.Compare); ok {
				dups = append(dups, fmt.Sprintf("dup to %s device %q", g, lc0))
			}
			if c := addChain(dups); c != "" {
				vmap = append(vmap, fmt.Sprintf("%s : jump %s", g, c))
			}
		}
		if len(vmap) > 0 {
			pre = append(pre, fmt.Sprintf("iifname %q ip6 saddr %s ip6 daddr vmap { %s }", from.name, set(from.prefixes), strings.Join(vmap, ", ")))
		}
	}
	b.WriteString("\tchain prerouting {\n\t\ttype filter hook prerouting priority raw; policy accept;\n")
	if len(pre) > 0 {
		b.WriteString("\t\tip6 hoplimit <= 1 return\n")
	}
	for _, r := range pre {
		fmt.Fprintf(&b, "\t\t%s\n", r)
	}
	b.WriteString("\t}\n")
	b.WriteString(chains.String())
	b.WriteString("}\n")
	return b.String()
}

// dropTable writes the nftables commands that delete the table, whether
// or not it exists: declaring a table first makes sure it does.
func dropTable(b *strings.Builder, table string) {
	fmt.Fprintf(b, "table ip6 %s\ndelete table ip6 %s\n", table, table)
}

// dup is the rule that copies a group's packets onto the interface dev,
// for the sources its listeners' filter takes.
func dup(s mld.GroupState, dev string) string {
	match := ""
	switch {
	case s.Mode == mld.Include:
		match = "ip6 saddr " + addrSet(s.Sources) + " "
	case len(s.Sources) > 0:
		match = "ip6 saddr != " + addrSet(s.Sources) + " "
	}
	return fmt.Sprintf("%sdup to %s device %q", match, s.Group, dev)
}

// groupsOf returns the groups any LAN listens to, sorted.
func groupsOf(lans []lanState) []netip.Addr {
	var out []netip.Addr
	for _, l := range lans {
		for _, g := range l.groups {
			out = append(out, g.Group)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// find returns the state of group in groups (sorted by group).
func find(groups []mld.GroupState, group netip.Addr) (mld.GroupState, bool) {
	i, ok := slices.BinarySearchFunc(groups, group, func(s mld.GroupState, g netip.Addr) int { return s.Group.Compare(g) })
	if !ok {
		return mld.GroupState{}, false
	}
	return groups[i], true
}

func set(prefixes []netip.Prefix) string {
	s := make([]string, len(prefixes))
	for i, p := range prefixes {
		s[i] = p.String()
	}
	return "{ " + strings.Join(s, ", ") + " }"
}

func addrSet(addrs []netip.Addr) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return "{ " + strings.Join(s, ", ") + " }"
}
