package simnet

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/control"
	"github.com/librecast/lcast/peer"
	"golang.zx2c4.com/wireguard/conn"
)

// listen opens a socket on n's host at port, with no daemon behind it,
// and counts the datagrams that arrive, until the test ends: a third
// party that someone names as an endpoint.
func listen(t *testing.T, n *Node, port uint16) *atomic.Int64 {
	fns, _, err := n.bind.Open(port)
	if err != nil {
		t.Fatal(err)
	}
	var count atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		bufs, sizes, eps := [][]byte{make([]byte, 2048)}, []int{0}, []conn.Endpoint{nil}
		for {
			k, err := fns[0](bufs, sizes, eps)
			if err != nil {
				return
			}
			count.Add(int64(k))
		}
	})
	t.Cleanup(func() {
		n.bind.Close()
		wg.Wait()
	})
	return &count
}

// A hostile introducer, marked introducer by h1 next to an honest hub,
// names 5,000 members, most at a third party's address, some at
// addresses no endpoint may have, and one of them h2 at the third party:
// h1 takes at most peer.MaxIntroduced, refuses the bad endpoints, keeps
// the endpoint the hub gave h2 (each counted), sends the third party a
// bounded trickle of handshakes, and h2's stream to h1 arrives whole and
// once.
func TestHostileIntroducer(t *testing.T) {
	w := New(t)
	_, homes := metHomes(t, w, 2)
	h1, h2 := homes[0], homes[1]
	evil := w.Add("evil", Options{})
	victim := w.Add("victim", Options{})
	hits := listen(t, victim, ListenPort)
	h1.Peer(evil, PeerOptions{Introducer: true})
	if _, err := h1.Reload(); err != nil {
		t.Fatal(err)
	}
	h2At := func() string { p, _ := peerStatus(h1, h2); return p.Endpoint }
	before := h2At()

	refused := []string{"[" + h1.Addr.String() + "]:51820", "[fe80::1]:51820", "[::1]:51820", "[ff02::1]:51820",
		"[::]:51820", "127.0.0.1:51820", "224.0.0.1:51820", "0.0.0.0:51820"}
	members := []peer.Member{{PublicKey: h2.Key, Endpoint: victim.Endpoint()}}
	for i := range 5000 {
		var k peer.Key
		binary.BigEndian.PutUint32(k[:], uint32(i)+1)
		ep := victim.Endpoint()
		if i < len(refused) {
			ep = netip.MustParseAddrPort(refused[i])
		}
		members = append(members, peer.Member{PublicKey: k, Endpoint: ep})
	}
	// The hostile introducer is no lcast node: its messages are handed
	// to h1 as the transport hands what it authenticated as the
	// introducer's.
	for _, m := range peer.IntroductionList(members, 7) {
		h1.Daemon().HandleControl(evil.Addr, m)
	}
	drops := func() map[string]uint64 { return h1.Status().Drops }
	if !Eventually(10*time.Second, func() bool { return drops()["introduced_over_cap"] > 0 }) {
		t.Fatalf("the hostile list was not taken: drops %v", drops())
	}
	start, startHits := time.Now(), hits.Load()
	g := netip.MustParseAddr("ff1e::e1")
	h1.Join(g)
	if !carries(t, h2, h1, g, "probe", 10*time.Second) {
		t.Fatal("h2's multicast does not reach h1")
	}
	c := h1.Count("s")
	Stream{Tag: "s", From: h2, Dst: g, Port: 4242, Rate: 500, Count: 2500}.Run(nil)
	time.Sleep(300 * time.Millisecond)
	tally := c.Stop()
	elapsed, sent := time.Since(start), hits.Load()-startHits

	var st control.Status
	Eventually(2*time.Second, func() bool { st = h1.Status(); return len(st.Peers) == peer.MaxIntroduced+2 })
	t.Logf("h1: %d peers; drops %v; the third party got %d datagrams in %v; h2's stream: %v",
		len(st.Peers), st.Drops, sent, elapsed.Round(time.Millisecond), tally)
	if len(st.Peers) != peer.MaxIntroduced+2 {
		t.Errorf("h1 has %d peers, want the cap %d and the hub and the hostile introducer", len(st.Peers), peer.MaxIntroduced)
	}
	if n := st.Drops["introduced_endpoint_refused"]; n < uint64(len(refused)) {
		t.Errorf("%d endpoints refused, want %d", n, len(refused))
	}
	if st.Drops["introduced_endpoint_conflict"] == 0 || h2At() != before {
		t.Errorf("h2's endpoint at h1: %s, was %s; conflicts counted %d", h2At(), before, st.Drops["introduced_endpoint_conflict"])
	}
	if p, _ := peerStatus(h1, h2); p.Path != "direct" {
		t.Errorf("h1's path to h2: %+v", p)
	}
	// At most 4 introduced peers at one address are tried at once: each
	// costs wireguard-go's handshakes (every 5 s) and lcast's repairs
	// (backing off from 250 ms to 5 s), a few a second at most; 5,000
	// tried at once would have been thousands.
	if limit := int64(4 * 10 * elapsed.Seconds()); sent > limit {
		t.Errorf("the third party got %d datagrams in %v, above %d", sent, elapsed, limit)
	}
	if tally.Delivered != 2500 || tally.Duplicates != 0 {
		t.Errorf("h2's stream to h1: %v, want 2500 delivered once", tally)
	}
}

// A member floods its hub with lists of the peers it says it reaches
// directly, each different, thousands a second: the hub drops what is
// beyond the member's pace (counted), and a stream the hub relays
// between two other members, one behind a symmetric NAT, arrives whole
// and once.
func TestDirectListFlood(t *testing.T) {
	w := New(t)
	hub := w.Add("hub", Options{Relay: true})
	h1 := w.Add("h1", Options{NAT: EndpointIndependent})
	h2 := w.Add("h2", Options{NAT: Symmetric})
	evil := w.Add("evil", Options{NAT: EndpointIndependent})
	for _, h := range []*Node{h1, h2, evil} {
		h.Peer(hub, PeerOptions{Introducer: true, Relay: true})
		hub.Peer(h, PeerOptions{NoEndpoint: true})
		h.Start()
	}
	hub.Start()
	if !Eventually(20*time.Second, func() bool {
		p, ok := peerStatus(h1, h2)
		e, okE := peerStatus(hub, evil)
		return ok && p.Path == "relayed" && okE && e.Connected
	}) {
		t.Fatalf("h1 does not reach h2 through the hub: %+v", h1.Status().Peers)
	}
	g := netip.MustParseAddr("ff1e::f1")
	h2.Join(g)
	if !carries(t, h1, h2, g, "probe", 10*time.Second) {
		t.Fatal("h1's multicast does not reach h2")
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent atomic.Int64
	wg.Go(func() {
		d := evil.Daemon()
		keys := []peer.Key{h1.Key, h2.Key}
		for i := uint32(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// A different list each time: h1, h2, both, or none.
			var ks []peer.Key
			for j, k := range keys {
				if i&(1<<j) != 0 {
					ks = append(ks, k)
				}
			}
			ks = append(ks, peer.Key{byte(i), byte(i >> 8), 1})
			for _, m := range peer.DirectList(ks, 1, uint64(i)+1) {
				if d.SendControl(hub.Addr, m) == nil {
					sent.Add(1)
				}
			}
			if i%16 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	})
	c := h2.Count("s")
	Stream{Tag: "s", From: h1, Dst: g, Port: 4242, Rate: 500, Count: 2500}.Run(nil)
	time.Sleep(300 * time.Millisecond)
	tally := c.Stop()
	close(stop)
	wg.Wait()
	over := hub.Status().Drops["direct_list_over_rate"]
	t.Logf("the flood: %d direct lists sent, %d dropped at the hub; h1's stream to h2 through the hub: %v", sent.Load(), over, tally)
	if over == 0 {
		t.Error("the hub dropped none of the flood")
	}
	if tally.Delivered != 2500 || tally.Duplicates != 0 {
		t.Errorf("h1's stream to h2: %v, want 2500 delivered once", tally)
	}
}
