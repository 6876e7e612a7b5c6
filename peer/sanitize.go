package peer

import (
	"net/netip"
	"slices"

	"github.com/librecast/lcast/mld"
)

// sanitize puts a peer's state in the form the router relies on: groups
// sorted by address, each once (a group the peer listed several times is
// the union of its filters, so that it is not sent several copies), each
// group's sources sorted, without repeats, and at most MaxSourcesPerGroup.
// It returns the state (in groups' storage, which it changes) and how
// many sources it trimmed.
func sanitize(groups []mld.GroupState) ([]mld.GroupState, int) {
	trimmed := 0
	for i := range groups {
		slices.SortFunc(groups[i].Sources, netip.Addr.Compare)
		groups[i].Sources = slices.Compact(groups[i].Sources)
	}
	slices.SortStableFunc(groups, func(a, b mld.GroupState) int { return a.Group.Compare(b.Group) })
	out := groups[:0]
	for _, g := range groups {
		n := len(out)
		if n > 0 && out[n-1].Group == g.Group {
			out[n-1] = mld.Union(out[n-1], g)
		} else {
			out, n = append(out, g), n+1
		}
		// Trimmed at each step, so that merging stays cheap.
		if k := len(out[n-1].Sources); k > MaxSourcesPerGroup {
			out[n-1].Sources, trimmed = out[n-1].Sources[:MaxSourcesPerGroup], trimmed+k-MaxSourcesPerGroup
		}
	}
	return out, trimmed
}
