package daemon

import (
	"net/netip"
	"testing"

	"github.com/librecast/lcast/mld"
	"github.com/librecast/lcast/router"
)

// A gateway routes groups of realm scope and wider between its links,
// never link-scope ones, even where link-scope groups cross between peers.
func TestRoutable(t *testing.T) {
	for _, linkScope := range []bool{false, true} {
		d := &Daemon{scope: router.ScopePolicy{LinkLocal: linkScope}}
		for group, want := range map[string]bool{"ff1e::1": true, "ff3e::1": true, "ff05::1234": true, "ff03::1234": true, "ff05::1": false, "ff02::fb": false, "ff01::1": false, "ff12::1": false} {
			if got := d.routable(netip.MustParseAddr(group)); got != want {
				t.Errorf("forward_link_scope %v: routable(%s) = %v, want %v", linkScope, group, got, want)
			}
		}
	}
}

// union merges two sorted lists of groups, the filters of a group in both
// merged.
func TestUnion(t *testing.T) {
	g := func(a string, mode mld.FilterMode, srcs ...string) mld.GroupState {
		s := mld.GroupState{Group: netip.MustParseAddr(a), Mode: mode}
		for _, x := range srcs {
			s.Sources = append(s.Sources, netip.MustParseAddr(x))
		}
		return s
	}
	a := []mld.GroupState{g("ff1e::1", mld.Include, "2001:db8::1"), g("ff1e::3", mld.Exclude)}
	b := []mld.GroupState{g("ff1e::1", mld.Include, "2001:db8::2"), g("ff1e::2", mld.Exclude)}
	got := union(a, b)
	want := []mld.GroupState{g("ff1e::1", mld.Include, "2001:db8::1", "2001:db8::2"), g("ff1e::2", mld.Exclude), g("ff1e::3", mld.Exclude)}
	if len(got) != len(want) {
		t.Fatalf("union = %v, want %v", got, want)
	}
	for i := range want {
		if !got[i].Equal(want[i]) {
			t.Errorf("union[%d] = %v, want %v", i, got[i], want[i])
		}
	}
}
