package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/control"
	"github.com/librecast/lcast/internal/netlab"
)

// docs/design.md, "From the first second": every pair of nodes carries
// data both ways within 1 s of both being up, whatever the order of
// starts. Four nodes start together while a program in every site streams
// to a group that all of them joined, so that every ordered pair streams
// at once; each pair's first datagram is timed from the later `lcast up`
// of the two, with no wait for sessions; handshakes that cross on the
// wire, which cost 5 s or more, happen by chance, so the cold start is
// done five times (with a clean stop, new keys and new programs in
// between), and twice more with the nodes started one after another,
// 250 ms and 500 ms apart. The same follows after all four crash and
// start again together, and after one crashes and starts again while the
// others stream (timed from its `lcast up`). Crashes (SIGKILL) keep lc0
// and the programs' memberships (docs/design.md, "Querier and persistent
// lc0"), so the programs stream on throughout. The daemons are built for
// use (without the race detector), as users run them. (A partition and
// its heal are internal/simnet's TestColdStart.)
func TestColdStart(t *testing.T) {
	const n, coldStarts, group = 4, 5, "ff1e::15:1"
	m := newMeshSitesOnly(t, n)
	m.runPlain(t)
	all := allPairs(n)
	const startLimit = time.Second
	s := startStreams(t, m, group)
	m.upInTurn(t, 0)
	// again stops every daemon and program and starts them anew with new
	// keys (whether a start goes wrong depends on them too), the daemons
	// gap apart.
	top := t
	again := func(t *testing.T, gap time.Duration) {
		s.stop()
		for _, nd := range m.nodes {
			nd.stop(syscall.SIGTERM)
		}
		m.configure(top) // the nodes' files outlive this subtest
		s = startStreams(t, m, group)
		m.upInTurn(t, gap)
	}
	t.Run("started together", func(t *testing.T) {
		for round := range coldStarts {
			if round > 0 {
				again(t, 0)
			}
			s.expectPairs(t, fmt.Sprintf("cold start %d of %d", round+1, coldStarts), all, m.laterUp, startLimit)
		}
	})
	t.Run("started in turn", func(t *testing.T) {
		for _, gap := range []time.Duration{250 * time.Millisecond, 500 * time.Millisecond} {
			again(t, gap)
			s.expectPairs(t, fmt.Sprintf("cold start %v apart", gap), all, m.laterUp, startLimit)
		}
	})
	// Each step below starts from every pair streaming, which the step
	// before waited for.
	t.Run("all restart together", func(t *testing.T) {
		for _, nd := range m.nodes {
			nd.daemon.Signal(syscall.SIGKILL)
		}
		for _, nd := range m.nodes {
			nd.daemon.Wait(5 * time.Second)
		}
		s.mark(t)
		m.upInTurn(t, 0)
		s.expectPairs(t, "all restarted together", all, m.laterUp, startLimit)
	})
	t.Run("one restarts", func(t *testing.T) {
		nd := m.nodes[0]
		nd.daemon.Signal(syscall.SIGKILL)
		nd.daemon.Wait(5 * time.Second)
		s.mark(t)
		nd.start()
		nd.waitAnswers()
		var with []pair
		for _, p := range all {
			if p.from == 0 || p.to == 0 {
				with = append(with, p)
			}
		}
		s.expectPairs(t, "site 1 restarted", with, func(pair) time.Time { return nd.upAt }, startLimit)
	})
}

// nftTable loads into namespace s the nftables table inet name with the chains
// in body, and returns a function that deletes the table.
func nftTable(t testing.TB, s *netlab.Namespace, name, body string) (remove func()) {
	t.Helper()
	load := s.Command("nft", "-f", "-")
	load.Stdin = strings.NewReader("table inet " + name + " {\n" + body + "}\n")
	if out, err := load.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v: %s", s.Name, err, out)
	}
	return func() {
		if out, err := s.Command("nft", "delete", "table", "inet", name).CombinedOutput(); err != nil {
			t.Fatalf("nft in %s: %v: %s", s.Name, err, out)
		}
	}
}

// peerStatus returns what node from's status says of node to.
func (m *mesh) peerStatus(t testing.TB, from, to int) control.PeerStatus {
	t.Helper()
	toKey := m.nodes[to].key.PublicKey().String()
	for _, p := range m.nodes[from].status(t).Peers {
		if p.PublicKey == toKey {
			return p
		}
	}
	t.Fatalf("site %d has no peer site %d", from+1, to+1)
	return control.PeerStatus{}
}
