package peer

import (
	"fmt"
	"net/netip"
	"reflect"
	"testing"

	"github.com/librecast/lcast/mld"
)

func TestSanitize(t *testing.T) {
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	src := func(ss ...string) []netip.Addr {
		out := []netip.Addr{}
		for _, s := range ss {
			out = append(out, a(s))
		}
		return out
	}
	many := make([]netip.Addr, MaxSourcesPerGroup+5)
	for i := range many {
		many[i] = a(fmt.Sprintf("2001:db8::%x", len(many)-i))
	}
	for _, tc := range []struct {
		name    string
		in      []mld.GroupState
		want    []mld.GroupState
		trimmed int
	}{
		{"sorted, sources sorted and unique",
			[]mld.GroupState{{Group: a("ff1e::2"), Mode: mld.Include, Sources: src("2001:db8::2", "2001:db8::1", "2001:db8::2")}, {Group: a("ff1e::1"), Mode: mld.Exclude, Sources: src()}},
			[]mld.GroupState{{Group: a("ff1e::1"), Mode: mld.Exclude, Sources: src()}, {Group: a("ff1e::2"), Mode: mld.Include, Sources: src("2001:db8::1", "2001:db8::2")}}, 0},
		{"a group listed twice is the union of its filters, with the fewer hops",
			[]mld.GroupState{{Group: a("ff1e::1"), Mode: mld.Include, Sources: src("2001:db8::1"), Hops: 2}, {Group: a("ff1e::1"), Mode: mld.Include, Sources: src("2001:db8::2"), Hops: 1}},
			[]mld.GroupState{{Group: a("ff1e::1"), Mode: mld.Include, Sources: src("2001:db8::1", "2001:db8::2"), Hops: 1}}, 0},
		{"include and exclude make exclude",
			[]mld.GroupState{{Group: a("ff1e::1"), Mode: mld.Include, Sources: src("2001:db8::1")}, {Group: a("ff1e::1"), Mode: mld.Exclude, Sources: src("2001:db8::1", "2001:db8::3")}},
			[]mld.GroupState{{Group: a("ff1e::1"), Mode: mld.Exclude, Sources: src("2001:db8::3")}}, 0},
		{"sources beyond the cap trimmed",
			[]mld.GroupState{{Group: a("ff1e::1"), Mode: mld.Include, Sources: many}},
			nil, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, trimmed := sanitize(tc.in)
			if trimmed != tc.trimmed {
				t.Errorf("trimmed %d, want %d", trimmed, tc.trimmed)
			}
			if tc.want == nil {
				if len(got) != 1 || len(got[0].Sources) != MaxSourcesPerGroup || got[0].Sources[0] != a("2001:db8::1") {
					t.Errorf("got %d groups, %d sources", len(got), len(got[0].Sources))
				}
				return
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
