package router

import (
	"net/netip"
	"testing"
)

func TestScopePolicyForwards(t *testing.T) {
	tests := []struct {
		group          string
		def, linkLocal bool
	}{
		{"ff1e::1234", true, true},
		{"ff3e::8000:1", true, true},
		{"ff13::1", true, true},
		{"ff05::1:3", true, true},
		{"ff08::db8", true, true},
		{"ff02::fb", false, true}, // mDNS: link scope, only when enabled
		{"ff12::42", false, true},
		{"ff01::1", false, false},        // interface-local
		{"ff02::1", false, false},        // all-nodes
		{"ff02::2", false, false},        // all-routers
		{"ff05::2", false, false},        // site all-routers
		{"ff02::16", false, false},       // MLDv2 reports
		{"ff02::1:ff00:1", false, false}, // solicited-node (ND)
		{"ff0f::1", false, false},        // reserved scope
		{"ff00::1", false, false},        // reserved scope 0
		{"2001:db8::1", false, false},    // unicast
	}
	for _, tt := range tests {
		t.Run(tt.group, func(t *testing.T) {
			g := netip.MustParseAddr(tt.group)
			if got := (ScopePolicy{}).Forwards(g); got != tt.def {
				t.Errorf("default Forwards(%s) = %v, want %v", g, got, tt.def)
			}
			if got := (ScopePolicy{LinkLocal: true}).Forwards(g); got != tt.linkLocal {
				t.Errorf("LinkLocal Forwards(%s) = %v, want %v", g, got, tt.linkLocal)
			}
		})
	}
}

// Every routed prefix covers only forwarded scopes, and every forwarded
// group of realm scope or wider with a valid flag nibble is routed.
func TestRoutePrefixesCoverForwardedScopes(t *testing.T) {
	prefixes := RoutePrefixes()
	routed := func(a netip.Addr) bool {
		for _, p := range prefixes {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	for flags := 0; flags < 16; flags++ {
		for scope := 0; scope < 16; scope++ {
			a := netip.AddrFrom16([16]byte{0xff, byte(flags<<4 | scope), 15: 0x42})
			validFlag := flags == 0 || flags == 1 || flags == 3 || flags == 7
			want := validFlag && scope >= ScopeRealm
			if got := routed(a); got != want {
				t.Errorf("%s routed = %v, want %v", a, got, want)
			}
		}
	}
	if !routed(netip.MustParseAddr("ff1e::1")) {
		t.Error("ff1e::1 must route to lc0")
	}
}
