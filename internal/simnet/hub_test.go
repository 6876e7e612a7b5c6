package simnet

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/control"
)

// peerStatus returns n's status of its peer o, and whether n has it.
func peerStatus(n, o *Node) (control.PeerStatus, bool) {
	for _, p := range n.Status().Peers {
		if p.PublicKey == o.Key.String() {
			return p, true
		}
	}
	return control.PeerStatus{}, false
}

// meetDirectly reports whether a and b have each other as connected
// peers on a direct path.
func meetDirectly(a, b *Node) bool {
	pa, okA := peerStatus(a, b)
	pb, okB := peerStatus(b, a)
	return okA && okB && pa.Connected && pb.Connected && pa.Path == "direct" && pb.Path == "direct"
}

// metHomes returns a started hub (a relay) and homes behind
// endpoint-independent NATs, each listing only the hub as its introducer
// and relay, and waits until every two homes meet directly.
func metHomes(t *testing.T, w *Network, homes int) (*Node, []*Node) {
	t.Helper()
	hub := w.Add("hub", Options{Relay: true})
	var hs []*Node
	for i := range homes {
		h := w.Add("h"+string(rune('1'+i)), Options{NAT: EndpointIndependent})
		h.Peer(hub, PeerOptions{Introducer: true, Relay: true})
		hub.Peer(h, PeerOptions{NoEndpoint: true})
		hs = append(hs, h)
	}
	hub.Start()
	for _, h := range hs {
		h.Start()
	}
	waitMeet(t, 20*time.Second, hs...)
	return hub, hs
}

// waitMeet waits until every two of homes meet directly.
func waitMeet(t *testing.T, timeout time.Duration, homes ...*Node) {
	t.Helper()
	if !Eventually(timeout, func() bool {
		for i, a := range homes {
			for _, b := range homes[i+1:] {
				if !meetDirectly(a, b) {
					return false
				}
			}
		}
		return true
	}) {
		for _, h := range homes {
			t.Logf("%s: %+v", h.Name, h.Status().Peers)
		}
		t.Fatal("the homes do not all meet directly")
	}
}

// carries reports whether a datagram from a to dst (a group b joined, or
// b's overlay address) reaches b within timeout, sending again every 10
// ms meanwhile.
func carries(t *testing.T, a, b *Node, dst netip.Addr, payload string, timeout time.Duration) bool {
	t.Helper()
	return Eventually(timeout, func() bool {
		a.Send(dst, 4242, payload)
		return recv(t, b, payload, 10*time.Millisecond)
	})
}

// silence moves the network's clock on by d, in steps of step, with a
// moment of real time after each for what the step wakes (hellos,
// answers), as time passing would.
func silence(w *Network, d, step time.Duration) {
	for moved := time.Duration(0); moved < d; moved += step {
		w.Clock().Advance(step)
		time.Sleep(5 * time.Millisecond)
	}
}

// A hub that stops changes nothing for members that meet directly: for
// 10 minutes of the hub's silence they keep each other, and carry
// multicast (a group joined after the hub went away included) and
// unicast both ways.
func TestHubStopsMembersKeepEachOther(t *testing.T) {
	w := New(t)
	hub, homes := metHomes(t, w, 2)
	h1, h2 := homes[0], homes[1]
	before := netip.MustParseAddr("ff1e::b1")
	h2.Join(before)
	if !carries(t, h1, h2, before, "before", 5*time.Second) {
		t.Fatal("no multicast with the hub up")
	}
	hub.Stop()
	silence(w, 10*time.Minute, 500*time.Millisecond)
	for _, pair := range [][2]*Node{{h1, h2}, {h2, h1}} {
		p, ok := peerStatus(pair[0], pair[1])
		if !ok || p.Path != "direct" {
			t.Fatalf("%s after 10 minutes of hub silence: has %s %v, %+v", pair[0].Name, pair[1].Name, ok, p)
		}
	}
	after := netip.MustParseAddr("ff1e::a1")
	h2.Join(after)
	h1.Join(after)
	for _, c := range []struct {
		from, to *Node
		dst      netip.Addr
		what     string
	}{
		{h1, h2, before, "multicast joined before"},
		{h1, h2, after, "multicast joined after"},
		{h2, h1, after, "multicast joined after, back"},
		{h1, h2, h2.Addr, "unicast"},
		{h2, h1, h1.Addr, "unicast back"},
	} {
		if !carries(t, c.from, c.to, c.dst, c.what, 5*time.Second) {
			t.Errorf("%s: %s to %s not carried after 10 minutes of hub silence", c.what, c.from.Name, c.to.Name)
		}
	}
}

// A member kept after its hub went silent goes when it falls silent
// itself: KeptHold after it was last heard from.
func TestKeptMemberDroppedWhenSilent(t *testing.T) {
	w := New(t)
	hub, homes := metHomes(t, w, 2)
	h1, h2 := homes[0], homes[1]
	hub.Stop()
	silence(w, 2*time.Minute, 500*time.Millisecond)
	if _, ok := peerStatus(h1, h2); !ok {
		t.Fatal("h1 dropped h2 while it was heard from")
	}
	h2.Stop()
	silence(w, 50*time.Second, 500*time.Millisecond)
	if _, ok := peerStatus(h1, h2); !ok {
		t.Fatal("h1 dropped h2 before KeptHold")
	}
	silence(w, 15*time.Second, 500*time.Millisecond)
	if !Eventually(2*time.Second, func() bool { _, ok := peerStatus(h1, h2); return !ok }) {
		t.Fatal("h1 still has h2 a minute after it fell silent")
	}
}

// A member may list two hubs, and either serves: with one stopped, the
// members keep each other, and a new member meets them through the
// other; with that one stopped too and the first back (restarted), the
// members keep each other while it settles.
func TestTwoHubs(t *testing.T) {
	w := New(t)
	hubs := []*Node{w.Add("hubA", Options{Relay: true}), w.Add("hubB", Options{Relay: true})}
	var homes []*Node
	for i := range 3 {
		h := w.Add("h"+string(rune('1'+i)), Options{NAT: EndpointIndependent})
		for _, hub := range hubs {
			h.Peer(hub, PeerOptions{Introducer: true, Relay: true})
			hub.Peer(h, PeerOptions{NoEndpoint: true})
		}
		homes = append(homes, h)
	}
	for _, n := range append(hubs, homes[:2]...) {
		n.Start()
	}
	waitMeet(t, 20*time.Second, homes[:2]...)
	hubs[0].Stop()
	silence(w, 3*time.Minute, 500*time.Millisecond)
	homes[2].Start()
	waitMeet(t, 20*time.Second, homes...)
	g := netip.MustParseAddr("ff1e::2b")
	homes[2].Join(g)
	if !carries(t, homes[0], homes[2], g, "through hub B's introduction", 5*time.Second) {
		t.Fatal("no multicast to the member hub B introduced")
	}
	// Hub A comes back (a new epoch) and hub B goes: until A has heard
	// from every member, its partial lists drop no one.
	hubs[1].Stop()
	hubs[0].Start()
	silence(w, 3*time.Minute, 500*time.Millisecond)
	waitMeet(t, 10*time.Second, homes...)
	for _, h := range homes {
		for _, o := range homes {
			if p, ok := peerStatus(h, o); h != o && (!ok || !slices.Equal(p.IntroducedBy, []string{hubs[0].Key.String()})) {
				t.Errorf("%s: %s introduced by %v, want hub A", h.Name, o.Name, p.IntroducedBy)
			}
		}
	}
	if logs := homes[0].logs.String(); strings.Contains(logs, "introduced peer dropped") {
		t.Errorf("h1 dropped a member:\n%s", logs)
	}
}
