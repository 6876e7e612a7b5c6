package e2e

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/netlab"
)

// relayHelper: "relay -a ADDR -to-a ADDR -b ADDR -to-b ADDR [-delay D]
// [-loss PCT]": a lossy, slow stretch of underlay between two sites, for
// kernels without netem. What arrives at -a goes, from -b, to -to-b after
// D, unless dropped (PCT percent, at random); what arrives at -b goes,
// from -a, to -to-a likewise. Each site then sees the other at the relay's
// address facing it. Runs until killed.
func relayHelper(args []string) int {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	a, toA := fs.String("a", "", "address facing site A"), fs.String("to-a", "", "site A's address")
	b, toB := fs.String("b", "", "address facing site B"), fs.String("to-b", "", "site B's address")
	delay := fs.Duration("delay", 0, "one-way delay")
	loss := fs.Int("loss", 0, "percent of datagrams dropped, each way")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	listen := func(s string) (*net.UDPConn, error) {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return nil, err
		}
		c, err := net.ListenUDP("udp6", net.UDPAddrFromAddrPort(ap))
		if err == nil {
			// Room for seconds of a 1000/s stream: no loss beyond
			// what was asked for.
			forceBuffers(c, 8<<20, syscall.SO_RCVBUFFORCE, syscall.SO_SNDBUFFORCE)
		}
		return c, err
	}
	ca, err := listen(*a)
	if err != nil {
		return helperFail(err)
	}
	cb, err := listen(*b)
	if err != nil {
		return helperFail(err)
	}
	pass := func(in, out *net.UDPConn, to string) {
		dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(to))
		buf := make([]byte, 65536)
		for {
			n, err := in.Read(buf)
			if err != nil {
				return
			}
			if rand.IntN(100) < *loss {
				continue
			}
			pkt := append([]byte(nil), buf[:n]...)
			time.AfterFunc(*delay, func() { out.WriteToUDP(pkt, dst) })
		}
	}
	go pass(ca, cb, *toB)
	go pass(cb, ca, *toA)
	fmt.Println("ready")
	select {}
}

// With 10% loss and 50 ms of delay each way on the underlay between two
// sites, subscriptions converge, on join and on leave, and a stream is
// delivered but for the datagrams the underlay lost.
func TestLossAndDelay(t *testing.T) {
	inet := netlab.NewInternet(t)
	s1, s2 := inet.AddSite("lcast-slow1"), inet.AddSite("lcast-slow2")
	const relayPort = 51900
	// The internet's addresses facing each site carry the relay.
	face1, face2 := fmt.Sprintf("[2001:db8:1::1]:%d", relayPort), fmt.Sprintf("[2001:db8:2::1]:%d", relayPort)
	startHelperUntil(t, inet.NS, "ready", "relay", "-a", face1, "-to-a", fmt.Sprintf("[%s]:%d", s1.Addr, listenPort),
		"-b", face2, "-to-b", fmt.Sprintf("[%s]:%d", s2.Addr, listenPort), "-delay", "50ms", "-loss", "10")
	k1, k2 := newKey(t), newKey(t)
	n1 := newNodeWithKey(t, s1.Namespace, k1, fmt.Sprintf("[[peer]]\npublic_key = %q\nendpoint = %q\n", k2.PublicKey(), face1))
	n2 := newNodeWithKey(t, s2.Namespace, k2, fmt.Sprintf("[[peer]]\npublic_key = %q\nendpoint = %q\n", k1.PublicKey(), face2))
	m := &mesh{inet: inet, sites: []*netlab.Site{s1, s2}, nodes: []*node{n1, n2}}
	// Debug logs: a failure shows the sessions' repairs, if any.
	n1.flags, n2.flags = []string{"--debug"}, []string{"--debug"}
	n1.up()
	n2.up()
	// A lost handshake is retried after 5 s.
	if took, ok := netlab.Poll(30*time.Second, func() bool {
		return n1.status(t).Peers[0].Connected && n2.status(t).Peers[0].Connected
	}); !ok {
		t.Fatalf("no session within %v:\n%s", took, m.diagnose(t))
	} else {
		t.Logf("session after %v", took.Round(time.Millisecond))
	}
	for round := range 3 {
		group := fmt.Sprintf("ff1e::c:%d", round)
		recv := startHelper(t, s2.Namespace, "recv", group, "lc0", "2s")
		joined := m.waitSubscribed(t, 0, 1, group, true, 10*time.Second)
		waitExit(t, m.send(0, group, "2000", "1000", "1200"), 10*time.Second, "sender")
		waitExit(t, recv, 15*time.Second, "receiver")
		res := parseReceived(t, recv.Output())
		left := m.waitSubscribed(t, 0, 1, group, false, 10*time.Second)
		t.Logf("round %d, 10%% loss and 50 ms each way: join known after %v, %d of 2000 delivered (%d duplicates, longest gap %d ms), leave known after %v",
			round+1, joined.Round(time.Millisecond), res.unique, res.dups, res.maxGap, left.Round(time.Millisecond))
		// 10% of 2000 is lost on the way, give or take chance.
		if res.unique < 1700 || res.dups != 0 {
			t.Fatalf("round %d: %+v\n%s\nsite 1 log:\n%s\nsite 2 log:\n%s", round+1, res, m.diagnose(t), n1.daemon.Output(), n2.daemon.Output())
		}
	}
}

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

// The NAT in front of a site changes the port it maps the site's
// datagrams to (here a relay that plays the NAT restarts on another port):
// the peer learns the new mapping from the site's next packet, and
// delivery to the site resumes.
func TestNATRemaps(t *testing.T) {
	inet := netlab.NewInternet(t)
	s1, s2 := inet.AddSite("lcast-open"), inet.AddSite("lcast-natted")
	nat := func(port int) *netlab.Process {
		return startHelperUntil(t, inet.NS, "ready", "relay", "-a", fmt.Sprintf("[2001:db8:1::1]:%d", port), "-to-a", fmt.Sprintf("[%s]:%d", s1.Addr, listenPort),
			"-b", "[2001:db8:2::1]:51900", "-to-b", fmt.Sprintf("[%s]:%d", s2.Addr, listenPort))
	}
	mapping := nat(40000)
	k1, k2 := newKey(t), newKey(t)
	// Site 1 cannot know where site 2 is; site 2 reaches site 1 through
	// its NAT.
	n1 := newNodeWithKey(t, s1.Namespace, k1, fmt.Sprintf("[[peer]]\npublic_key = %q\n", k2.PublicKey()))
	n2 := newNodeWithKey(t, s2.Namespace, k2, fmt.Sprintf("[[peer]]\npublic_key = %q\nendpoint = \"[2001:db8:2::1]:51900\"\n", k1.PublicKey()))
	m := &mesh{inet: inet, sites: []*netlab.Site{s1, s2}, nodes: []*node{n1, n2}}
	// Debug logs: a failure shows the sessions' repairs, if any.
	n1.flags, n2.flags = []string{"--debug"}, []string{"--debug"}
	n1.up()
	n2.up()
	// The test measures the recovery from a remapping: it starts from a
	// session.
	m.waitConnected(t)
	recv := m.streamTo(t, "ff1e::f", 5000, "3s")
	mapping.Stop()
	mapping = nat(40001)
	remapped := time.Now()
	waitExit(t, recv, 20*time.Second, "receiver")
	res := parseReceived(t, recv.Output())
	t.Logf("NAT remapped %v into the stream: %+v (longest gap %d ms); site 1 now sends to %s",
		time.Second, res, res.maxGap, n1.status(t).Peers[0].Endpoint)
	// Site 2's next hello, at most a second after the remapping, carries
	// the new mapping to site 1.
	if res.maxGap > 2500 || res.last < 4900 || res.dups != 0 {
		t.Fatalf("delivery after the NAT remapped (%v ago): %+v\n%s", time.Since(remapped), res, m.diagnose(t))
	}
	if ep := n1.status(t).Peers[0].Endpoint; ep != "[2001:db8:1::1]:40001" {
		t.Fatalf("site 1 sends to %s, want the new mapping [2001:db8:1::1]:40001", ep)
	}
}
