package daemon

import (
	"net/netip"
	"testing"

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
