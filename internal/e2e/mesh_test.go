package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/control"
	"github.com/librecast/lcast/internal/netlab"
	"github.com/librecast/lcast/peer"
)

const listenPort = 51840

// mesh is n sites behind a unicast-only internet, each running lcast with
// every other site as a peer.
type mesh struct {
	inet  *netlab.Internet
	sites []*netlab.Site
	nodes []*node
	// bin is the lcast binary the nodes run; empty means lcastBin.
	bin string
	// lans are the LANs behind gateway sites, by site index.
	lans map[int][]*netlab.LAN
}

// tomlList returns a TOML array of the strings f gives for each LAN.
func tomlList(lans []*netlab.LAN, f func(*netlab.LAN) string) string {
	var items []string
	for _, l := range lans {
		items = append(items, strconv.Quote(f(l)))
	}
	return "[" + strings.Join(items, ", ") + "]"
}

// lanSpec is a LAN to put behind a site: its prefix and how many hosts.
type lanSpec struct {
	prefix netip.Prefix
	hosts  int
}

// newMesh starts the daemons one after the other, each once the one
// before answers, and returns without waiting for sessions: what a test
// checks then is measured from the users' start (`lcast up`), as users see
// it. A test that needs sessions up first calls waitConnected and says why.
func newMesh(t testing.TB, n int) *mesh {
	t.Helper()
	m := newMeshSitesOnly(t, n)
	m.up()
	return m
}

// up starts the daemons one after the other, each once the one before
// answers.
func (m *mesh) up() {
	for _, nd := range m.nodes {
		nd.up()
	}
}

// upInTurn starts the daemons gap apart, in the order of the sites (gap 0:
// all at once), and waits until each answers on its control socket (not
// for sessions). Each `lcast up` waits behind a gate (see gateHelper) until
// all are ready to run, so that they start within microseconds of when
// they should, as when machines boot together.
func (m *mesh) upInTurn(t testing.TB, gap time.Duration) {
	t.Helper()
	for _, n := range m.nodes {
		n.start("env", helperEnv+"=gate", lcastTestBinary())
	}
	for i, n := range m.nodes {
		if !n.daemon.WaitOutput("waiting\n", 5*time.Second) {
			t.Fatalf("the gate in site %d did not open:\n%s", i+1, n.daemon.Output())
		}
	}
	for i, n := range m.nodes {
		if i > 0 {
			time.Sleep(gap)
		}
		n.upAt = time.Now()
		if err := n.daemon.Signal(syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range m.nodes {
		n.waitAnswers()
	}
}

// gateHelper: "gate PROGRAM ARGS...": prints "waiting", and on SIGUSR1
// runs PROGRAM in its place (same process).
func gateHelper(args []string) int {
	open := make(chan os.Signal, 1)
	signal.Notify(open, syscall.SIGUSR1)
	fmt.Println("waiting")
	<-open
	env := slices.DeleteFunc(os.Environ(), func(v string) bool { return strings.HasPrefix(v, helperEnv+"=") })
	return helperFail(syscall.Exec(args[0], args, env))
}

func newMeshSitesOnly(t testing.TB, n int) *mesh {
	t.Helper()
	return newMeshWithLANs(t, n, nil)
}

// newMeshWithLANs is newMeshSitesOnly with LANs behind some sites (by
// site index, from 0: each a /64 with hosts; site i's LANs are lanI,
// lanIb...), which make their nodes gateways: lan_interfaces names the
// LANs, and every other node lists their prefixes in that node's [[peer]]
// table.
func newMeshWithLANs(t testing.TB, n int, lans map[int][]lanSpec) *mesh {
	t.Helper()
	m := &mesh{inet: netlab.NewInternet(t), lans: map[int][]*netlab.LAN{}}
	for i := range n {
		m.sites = append(m.sites, m.inet.AddSite(fmt.Sprintf("lcast-site%d", i+1)))
	}
	for i, specs := range lans {
		for j, spec := range specs {
			name := fmt.Sprintf("lan%d", i+1)
			if j > 0 {
				name += string(rune('a' + j))
			}
			m.lans[i] = append(m.lans[i], netlab.AddLAN(m.sites[i].Namespace, name, spec.prefix, spec.hosts))
		}
	}
	m.configure(t)
	// The underlay carries unicast between every pair of sites.
	for _, a := range m.sites {
		for _, b := range m.sites {
			if a == b {
				continue
			}
			if _, ok := netlab.Poll(5*time.Second, func() bool {
				return a.Command("ping", "-6", "-c1", "-W1", b.Addr.String()).Run() == nil
			}); !ok {
				t.Fatalf("%s cannot reach %s over the underlay", a.Name, b.Addr)
			}
		}
	}
	return m
}

// configure gives every site a node with a new key, listing every other
// site as a peer (the nodes it replaces must have stopped).
func (m *mesh) configure(t testing.TB) {
	t.Helper()
	keys := make([]peer.Key, len(m.sites))
	for i := range keys {
		keys[i] = newKey(t)
	}
	m.nodes = nil
	for i := range m.sites {
		extra := ""
		if lans := m.lans[i]; lans != nil {
			extra = fmt.Sprintf("lan_interfaces = %s\n", tomlList(lans, func(l *netlab.LAN) string { return l.Interface }))
		}
		for j := range m.sites {
			if j != i {
				extra += peerTable(keys[j], m.sites[j])
				if lans := m.lans[j]; lans != nil {
					extra += fmt.Sprintf("lan_prefixes = %s\n", tomlList(lans, func(l *netlab.LAN) string { return l.Prefix.String() }))
				}
			}
		}
		n := newNodeWithKey(t, m.sites[i].Namespace, keys[i], extra)
		n.bin = m.bin
		m.nodes = append(m.nodes, n)
	}
}

// runPlain makes the mesh's nodes run lcast built without the race
// detector, from their next start: for tests that time what users see
// (start-up, say), which the race detector's slower start and handshakes
// would make meaningless.
func (m *mesh) runPlain(t testing.TB) {
	m.bin = plainLcast(t)
	for _, n := range m.nodes {
		n.bin = m.bin
	}
}

// peerTable is the [[peer]] table of the node with key in site.
func peerTable(key peer.Key, site *netlab.Site) string {
	return fmt.Sprintf("[[peer]]\npublic_key = %q\nendpoint = \"[%s]:%d\"\n", key.PublicKey(), site.Addr, listenPort)
}

// waitConnected waits until every node has a session with every peer.
func (m *mesh) waitConnected(t testing.TB) {
	t.Helper()
	_, ok := netlab.Poll(12*time.Second, func() bool {
		for _, n := range m.nodes {
			for _, p := range n.status(t).Peers {
				if !p.Connected {
					return false
				}
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("peers did not connect:\n%s", m.diagnose(t))
	}
}

// waitSubscribed waits until node from knows that node to subscribed to group.
func (m *mesh) waitSubscribed(t testing.TB, from, to int, group string, want bool, timeout time.Duration) time.Duration {
	t.Helper()
	toKey := m.nodes[to].key.PublicKey().String()
	took, ok := netlab.Poll(timeout, func() bool { return subscribed(m.nodes[from].status(t), toKey, group) == want })
	if !ok {
		t.Fatalf("site %d: subscription of site %d to %s = %v not reached in %v\nstatus of site %d: %+v\nlog of site %d:\n%s\nlog of site %d:\n%s",
			from+1, to+1, group, want, timeout, from+1, m.nodes[from].status(t), from+1, m.nodes[from].daemon.Output(), to+1, m.nodes[to].daemon.Output())
	}
	return took
}

// subscribed reports whether a node's status says that the peer with
// public key peer subscribed to group.
func subscribed(st *control.Status, peer, group string) bool {
	for _, p := range st.Peers {
		if p.PublicKey != peer {
			continue
		}
		for _, g := range p.Groups {
			if g.Group == group {
				return true
			}
		}
	}
	return false
}

// diagnose reports where packets may have been dropped: lcast's counters,
// lc0's and the UDP stack's in every site.
func (m *mesh) diagnose(t testing.TB) string {
	var b strings.Builder
	for i, n := range m.nodes {
		fmt.Fprintf(&b, "site %d drops: %v\n", i+1, n.status(t).Drops)
		out, _ := m.sites[i].Command("ip", "-s", "link", "show", "lc0").CombinedOutput()
		b.Write(out)
		out, _ = m.sites[i].Command("nstat", "-az", "Udp6InErrors", "Udp6InCsumErrors", "Udp6IgnoredMulti", "Udp6MemErrors", "Udp6RcvbufErrors", "Udp6SndbufErrors", "Ip6InDiscards").CombinedOutput()
		b.Write(out)
		if log := n.daemon.Output(); strings.Contains(log, "level=WARN") || strings.Contains(log, "level=ERROR") {
			fmt.Fprintf(&b, "site %d log:\n%s", i+1, log)
		}
	}
	return b.String()
}

var receivedRE = regexp.MustCompile(`received (\d+) unique (\d+) duplicates (\d+) first (\d+) last (\d+) maxgap (\d+)`)

// recvResult is what a recv helper reported; maxGap in milliseconds.
type recvResult struct{ total, unique, dups, first, last, maxGap int }

func parseReceived(t testing.TB, out string) recvResult {
	t.Helper()
	m := receivedRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("receiver printed no summary:\n%s", out)
	}
	var r recvResult
	for i, p := range []*int{&r.total, &r.unique, &r.dups, &r.first, &r.last, &r.maxGap} {
		*p, _ = strconv.Atoi(m[i+1])
	}
	return r
}

// Go programs in sites 2 and 3 receive, complete and once, what a Go program
// in site 1 sends at 1000 packets/s.
func TestThreeSitesGoPrograms(t *testing.T) {
	m := newMesh(t, 3)
	var recvs []*netlab.Process
	for i := 1; i < 3; i++ {
		recvs = append(recvs, startHelper(t, m.sites[i].Namespace, "recv", "ff1e::1", "lc0"))
		m.waitSubscribed(t, 0, i, "ff1e::1", true, 3*time.Second)
	}
	send := m.sites[0].Start("env", helperEnv+"=send", lcastTestBinary(), "ff1e::1", "2000", "1000", "1200")
	if exited, err := send.Wait(10 * time.Second); !exited || err != nil {
		t.Fatalf("sender: %v %v\n%s", exited, err, send.Output())
	}
	for i, r := range recvs {
		if exited, _ := r.Wait(5 * time.Second); !exited {
			t.Fatalf("receiver %d did not finish", i+2)
		}
		res := parseReceived(t, r.Output())
		t.Logf("site %d: %+v", i+2, res)
		if res.unique != 2000 || res.dups != 0 {
			t.Errorf("site %d received %d of 2000 unique with %d duplicates\n%s\nsender printed: %s\n%s", i+2, res.unique, res.dups, r.Output(), send.Output(), m.diagnose(t))
		}
	}
}

// Datagrams whose UDP checksum computes to zero arrive: UDP sends such a
// checksum as 0xffff (RFC 8200, section 8.1), and a receiving kernel drops
// one sent as zero. lcast computes the checksums the kernel offloads to
// lc0, so without that rule it would lose one datagram in 65,536.
func TestUDPChecksumComputedZero(t *testing.T) {
	m := newMesh(t, 2)
	r := startHelper(t, m.sites[1].Namespace, "recv", "ff1e::3", "lc0", "500ms")
	m.waitSubscribed(t, 0, 1, "ff1e::3", true, 3*time.Second)
	send := m.sites[0].Start("env", helperEnv+"=send-zerosum", lcastTestBinary(), "ff1e::3", "100", "1000", "1200")
	waitExit(t, send, 10*time.Second, "sender")
	if exited, _ := r.Wait(5 * time.Second); !exited {
		t.Fatalf("site 2 received none of 100\nsender printed: %s\n%s", send.Output(), m.diagnose(t))
	}
	if res := parseReceived(t, r.Output()); res.unique != 100 || res.dups != 0 {
		t.Fatalf("site 2 received %d of 100 unique with %d duplicates\n%s\n%s", res.unique, res.dups, r.Output(), m.diagnose(t))
	}
}

// lcast needs only CAP_NET_ADMIN, the capability lcast@.service grants:
// two daemons that run with no other carry a stream whole (subscriptions
// travel inside the transport, with no socket of their own).
func TestCapabilities(t *testing.T) {
	netlab.Require(t, "setpriv")
	setpriv := func(caps string) []string {
		return []string{"setpriv", "--bounding-set=-all," + caps, "--inh-caps=-all", "--"}
	}
	m := newMeshSitesOnly(t, 2)
	for _, n := range m.nodes {
		n.upUnder(setpriv("+net_admin")...)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.nodes[0].daemon.Cmd.Process.Pid))
	if err != nil || !strings.Contains(string(status), "CapEff:\t0000000000001000\n") {
		t.Fatalf("the daemon does not run with CAP_NET_ADMIN alone (%v):\n%s", err, status)
	}
	r := startHelper(t, m.sites[1].Namespace, "recv", "ff1e::c", "lc0", "1s")
	m.waitSubscribed(t, 0, 1, "ff1e::c", true, 3*time.Second)
	waitExit(t, m.send(0, "ff1e::c", "500", "1000", "1200"), 10*time.Second, "sender")
	waitExit(t, r, 10*time.Second, "receiver")
	if res := parseReceived(t, r.Output()); res.unique != 500 || res.dups != 0 {
		t.Fatalf("site 2 received %+v of 500\n%s", res, m.diagnose(t))
	}
	for _, n := range m.nodes {
		if out := n.daemon.Output(); strings.Contains(out, "level=WARN") || strings.Contains(out, "level=ERROR") {
			t.Errorf("with only these capabilities the daemon complained:\n%s", out)
		}
	}
}
