package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/netlab"
)

// Someone flushes lc0's multicast routes under the running daemon: it puts
// them back, and programs that name no interface reach lc0 again.
func TestRoutesDeletedUnderDaemon(t *testing.T) {
	m := newMesh(t, 2)
	s := m.sites[0]
	routes := func() int {
		return strings.Count(s.Run("ip", "-6", "route", "show", "table", "local", "proto", "108"), "\n")
	}
	want := routes()
	s.Run("ip", "-6", "route", "flush", "table", "local", "proto", "108")
	took, ok := netlab.Poll(2*time.Second, func() bool { return routes() == want })
	if !ok {
		t.Fatalf("%d of %d routes after %v:\n%s", routes(), want, took, m.nodes[0].daemon.Output())
	}
	t.Logf("%d routes back after %v", want, took.Round(time.Millisecond))
	recv := startHelper(t, m.sites[1].Namespace, "recv", "ff1e::d", "lc0", "1s")
	m.waitSubscribed(t, 0, 1, "ff1e::d", true, 3*time.Second)
	waitExit(t, m.send(0, "ff1e::d", "200", "1000", "500"), 5*time.Second, "sender") // names no interface
	waitExit(t, recv, 5*time.Second, "receiver")
	if res := parseReceived(t, recv.Output()); res.unique != 200 {
		t.Fatalf("after the routes came back: %+v", res)
	}
	if exited, _ := m.nodes[0].daemon.Wait(0); exited || !strings.Contains(m.nodes[0].daemon.Output(), "restored multicast routes deleted under lcast") {
		t.Fatalf("daemon exited %v; log:\n%s", exited, m.nodes[0].daemon.Output())
	}
}
