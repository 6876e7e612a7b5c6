package e2e

import (
	"encoding/json"
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
// starts. Four nodes start
// together while a program in every site streams to a group that all of
// them joined, so that every ordered pair streams at once; each pair's
// first datagram is timed from the later `lcast up` of the two, with no
// wait for sessions; handshakes that cross on the wire, which cost 5 s or
// more, happen by chance, so the cold start is done five times (with a
// clean stop, new keys and new programs in between), and twice more with
// the nodes started one after another, 250 ms and 500 ms apart. The same follows after all
// four crash and start again together; after one crashes and starts again
// while the others stream (timed from its `lcast up`); and after a
// partition of 30 s (nftables drops everything both ways between sites 1-2
// and sites 3-4) heals (timed from the rules' removal). Crashes (SIGKILL)
// keep lc0 and the programs' memberships (docs/design.md, "Querier and
// persistent lc0"), so the programs
// stream on throughout. The daemons are built for use (without the race
// detector), as users run them.
func TestColdStart(t *testing.T) {
	netlab.Require(t, "nft")
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
	t.Run("partition heals", func(t *testing.T) {
		var across []pair
		for _, p := range all {
			if (p.from < 2) != (p.to < 2) {
				across = append(across, p)
			}
		}
		var heal []func()
		for i := range 2 {
			heal = append(heal, nftTable(t, m.sites[i].Namespace, "partition", dropBetween(m.sites[2].Addr.String(), m.sites[3].Addr.String())))
		}
		time.Sleep(100 * time.Millisecond) // what was already on its way lands
		s.mark(t)
		time.Sleep(30 * time.Second)
		if leaked := s.firsts(); len(leaked) > 0 {
			for _, p := range across {
				if _, ok := leaked[p]; ok {
					t.Fatalf("pair %s carried data across the partition", p)
				}
			}
		}
		s.mark(t)
		healed := time.Now() // just before the first rule goes: a few ms in the pairs' disfavour
		for _, h := range heal {
			h()
		}
		s.expectPairs(t, "partition of 30 s healed", across, func(pair) time.Time { return healed }, time.Second)
	})
}

// `connected` in status means two-way traffic (docs/design.md, "Session
// health and repair"): with
// site 1's packets dropped on their way into site 2 (nftables), both ends
// show connected false; once the rule is removed, both show true within
// 1 s, and site 1's stream reaches site 2 within 1 s (timed by the
// receiving program, so after the wait for connected). While the peers
// stream, each end's last_rx for the other is present and recent.
func TestConnectedMeansTwoWay(t *testing.T) {
	netlab.Require(t, "nft")
	m := newMesh(t, 2)
	s := startStreams(t, m, "ff1e::15:2")
	// The test is about connected changing: it starts from data flowing
	// both ways (TestColdStart times how soon that is).
	if got := s.waitPairs(allPairs(2), pairWait); len(got) != 2 {
		t.Fatalf("the two sites did not stream both ways within %v: %v\n%s", pairWait, got, m.diagnose(t))
	}
	t.Run("last_rx while streaming", func(t *testing.T) {
		for i := range 2 {
			asked := time.Now()
			p := m.nodes[i].peerJSON(t, m.nodes[1-i].key.PublicKey().String())
			raw, ok := p["last_rx"].(string)
			if !ok {
				t.Errorf("site %d: no last_rx for site %d, which streams to it: %v", i+1, 2-i, p["last_rx"])
				continue
			}
			at, err := time.Parse(time.RFC3339Nano, raw)
			if err != nil {
				t.Errorf("site %d: last_rx %q is not RFC 3339: %v", i+1, raw, err)
				continue
			}
			// 200 datagrams/s arrive: the last is a few ms old.
			if age := asked.Sub(at); age > time.Second || age < -time.Second {
				t.Errorf("site %d: last_rx for site %d is %v old while it streams", i+1, 2-i, age)
			}
		}
	})
	both := func(t testing.TB) (bool, bool) {
		return m.peerStatus(t, 0, 1).Connected, m.peerStatus(t, 1, 0).Connected
	}
	cut := nftTable(t, m.sites[1].Namespace, "oneway", "chain input { type filter hook input priority 0; ip6 saddr "+m.sites[0].Addr.String()+" drop; }\n")
	wentFalse := false
	t.Run("false while one direction is cut", func(t *testing.T) {
		took, ok := netlab.Poll(10*time.Second, func() bool { a, b := both(t); return !a && !b })
		if !ok {
			a, b := both(t)
			t.Fatalf("10 s after site 1's packets stopped reaching site 2, site 1 shows connected=%v and site 2 connected=%v", a, b)
		}
		wentFalse = true
		t.Logf("both ends show connected false %v after the cut", took.Round(time.Millisecond))
	})
	s.mark(t)
	repaired := time.Now()
	cut()
	t.Run("true within 1 s of repair", func(t *testing.T) {
		if !wentFalse {
			t.Skip("skipped: connected never went false, so its return cannot be timed")
		}
		_, ok := netlab.Poll(5*time.Second, func() bool { a, b := both(t); return a && b })
		took := time.Since(repaired)
		t.Logf("both ends show connected true %v after the repair", took.Round(time.Millisecond))
		if !ok || took > time.Second {
			t.Errorf("connected true at both ends took %v after the repair (reached: %v), want <= 1 s", took.Round(time.Millisecond), ok)
		}
	})
	t.Run("data within 1 s of repair", func(t *testing.T) {
		s.expectPairs(t, "repaired", []pair{{0, 1}}, func(pair) time.Time { return repaired }, time.Second)
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

// dropBetween is nftables chains that drop everything a site exchanges
// with addrs, both ways.
func dropBetween(addrs ...string) string {
	set := "{ " + strings.Join(addrs, ", ") + " }"
	return "chain input { type filter hook input priority 0; ip6 saddr " + set + " drop; }\n" +
		"chain output { type filter hook output priority 0; ip6 daddr " + set + " drop; }\n"
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

// peerJSON returns the status JSON object of n's peer with key pub as the
// daemon sent it, with fields that control.PeerStatus may not know yet.
func (n *node) peerJSON(t testing.TB, pub string) map[string]any {
	t.Helper()
	resp, err := control.Client(n.sock).Get("http://lcast" + control.StatusPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Peers []map[string]any `json:"peers"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Peers {
		if p["public_key"] == pub {
			return p
		}
	}
	t.Fatalf("no peer %s in status: %v", pub, st.Peers)
	return nil
}
