package router

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/librecast/lcast/mld"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

var (
	overlay = netip.MustParsePrefix("fd6c:6361:7374::/48")
	self    = netip.MustParseAddr("fd6c:6361:7374::1")
	peerA   = netip.MustParseAddr("fd6c:6361:7374::a")
	peerB   = netip.MustParseAddr("fd6c:6361:7374::b")
	peerC   = netip.MustParseAddr("fd6c:6361:7374::c")
	srcS    = netip.MustParseAddr("2001:db8::5")
	grp1    = netip.MustParseAddr("ff1e::1")
	grp2    = netip.MustParseAddr("ff1e::2")
)

// udpPacket builds an IPv6/UDP packet from src to dst with payload.
func udpPacket(src, dst netip.Addr, payload string) []byte {
	b := make([]byte, 48+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	b[6], b[7] = 17, 1
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	binary.BigEndian.PutUint16(b[44:], uint16(8+len(payload)))
	copy(b[48:], payload)
	return b
}

func sub(g netip.Addr, mode mld.FilterMode, sources ...netip.Addr) Subscription {
	return Subscription{Group: g, Mode: mode, Sources: sources}
}

type testRouter struct {
	*Router
	lc0       *tuntest.ChannelTUN
	linkLocal [][]byte
}

func newTestRouter(t *testing.T) *testRouter {
	tr := &testRouter{lc0: tuntest.NewChannelTUN()}
	tr.Router = New(tr.lc0.TUN(), Config{Self: self, Overlay: overlay, LinkLocal: func(pkt []byte) {
		tr.linkLocal = append(tr.linkLocal, slices.Clone(pkt))
	}})
	tr.SetPeers([]netip.Addr{peerA, peerB, peerC})
	tr.SetSubscriptions(peerA, false, []Subscription{sub(grp1, mld.Exclude)})
	tr.SetSubscriptions(peerB, false, []Subscription{sub(grp1, mld.Include, srcS)})
	tr.SetSubscriptions(peerC, false, []Subscription{sub(grp2, mld.Exclude)})
	return tr
}

// fromLc0 routes one packet read from lc0 and returns what goes to peers.
func (tr *testRouter) fromLc0(t *testing.T, pkt []byte) [][]byte {
	t.Helper()
	out, _ := tr.readToMarker(t, [][]byte{pkt})
	return out
}

func dstOf(p []byte) netip.Addr { return netip.AddrFrom16([16]byte(p[24:40])) }

func TestRouteFromLc0(t *testing.T) {
	tr := newTestRouter(t)
	pkt := udpPacket(self, grp1, "hello")
	out := tr.fromLc0(t, pkt)
	if len(out) != 1 || dstOf(out[0]) != peerA {
		t.Fatalf("ff1e::1 from self went to %d packets %v, want one to peer A", len(out), out)
	}
	w := out[0]
	if w[6] != protoLcast || w[7] != MaxHops || netip.AddrFrom16([16]byte(w[8:24])) != self ||
		int(binary.BigEndian.Uint16(w[4:6])) != lcastHeaderLen+len(pkt) || w[40] != protoIPv6Encap ||
		binary.BigEndian.Uint32(w[44:48]) != tr.epoch || string(w[WrapLen:]) != string(pkt) {
		t.Fatalf("bad wrapping: %x", w)
	}
	seq := binary.BigEndian.Uint64(w[48:56])
	// From the source peer B subscribed to: both A (any source) and B.
	out = tr.fromLc0(t, udpPacket(srcS, grp1, "x"))
	if len(out) != 2 || dstOf(out[0]) == dstOf(out[1]) {
		t.Fatalf("from %s: %d packets", srcS, len(out))
	}
	// Both copies are of one packet, a later one.
	if s0, s1 := binary.BigEndian.Uint64(out[0][48:56]), binary.BigEndian.Uint64(out[1][48:56]); s0 != s1 || s0 <= seq {
		t.Fatalf("sequence numbers %d, then %d and %d", seq, s0, s1)
	}
	if out := tr.fromLc0(t, udpPacket(self, netip.MustParseAddr("ff1e::99"), "x")); len(out) != 0 {
		t.Fatalf("unsubscribed group went to %d peers", len(out))
	}
	if got := tr.Drops()[DropNoSubscriber]; got != 1 {
		t.Fatalf("no_subscriber drops = %d, want 1", got)
	}
	// Unicast to a peer's overlay address goes to it unwrapped.
	uni := udpPacket(self, peerB, "unicast")
	if out := tr.fromLc0(t, uni); len(out) != 1 || string(out[0]) != string(uni) {
		t.Fatalf("unicast to peer B: %x", out)
	}
	if out := tr.fromLc0(t, udpPacket(self, netip.MustParseAddr("fd6c:6361:7374::99"), "x")); len(out) != 0 || tr.Drops()[DropNoRoute] != 1 {
		t.Fatalf("unicast to no peer: %d packets, drops %v", len(out), tr.Drops())
	}
}

func TestScopeAndLinkLocal(t *testing.T) {
	tr := newTestRouter(t)
	tr.SetSubscriptions(peerA, false, []Subscription{sub(netip.MustParseAddr("ff02::fb"), mld.Exclude), sub(netip.MustParseAddr("ff05::2"), mld.Exclude)})
	mldReport := mld.AppendV2Report(nil, netip.MustParseAddr("fe80::1"), []mld.ReportRecord{{Type: mld.ChangeToExcludeMode, Group: grp1}})
	for _, p := range [][]byte{mldReport, udpPacket(self, netip.MustParseAddr("ff02::fb"), "mdns")} {
		if out := tr.fromLc0(t, p); len(out) != 0 {
			t.Fatalf("link-scope packet went to peers")
		}
	}
	if len(tr.linkLocal) != 2 || string(tr.linkLocal[0]) != string(mldReport) {
		t.Fatalf("link-local handler got %d packets", len(tr.linkLocal))
	}
	if out := tr.fromLc0(t, udpPacket(self, netip.MustParseAddr("ff05::2"), "x")); len(out) != 0 || tr.Drops()[DropScope] != 1 {
		t.Fatalf("all-routers: %d packets, drops %v", len(out), tr.Drops())
	}
}

// fromLc0 is the origin of the packets the tests route from lc0.
var fromLc0 = origin{epoch: 7, hops: MaxHops}

// lastSeq numbers the packets wrapped, so that none is a duplicate.
var lastSeq uint64

// wrapped returns inner as the peer at from sends it to this node, with 16
// bytes of headroom, and a new sequence number of epoch 1.
func wrapped(inner []byte, from netip.Addr) []byte {
	return wrappedAs(inner, from, origin{epoch: 1, seq: lastSeq + 1, hops: MaxHops})
}

func wrappedAs(inner []byte, from netip.Addr, o origin) []byte {
	lastSeq = max(lastSeq, o.seq)
	b := make([]byte, 16+WrapLen+len(inner))
	wrap(b[16:], from, self, len(inner), &o)
	copy(b[16+WrapLen:], inner)
	return b
}

func TestDeliverFromPeers(t *testing.T) {
	tr := newTestRouter(t)
	tr.SetLocal([]Subscription{sub(grp1, mld.Exclude, peerB)})
	got := make(chan []byte, 10)
	go func() {
		for p := range tr.lc0.Inbound {
			got <- p
		}
	}()
	good := udpPacket(peerA, grp1, "from A")
	cases := []struct {
		name string
		pkt  []byte
		drop string
		peer netip.Addr // whose drop it also is, if any
	}{
		{"forged inner source", wrapped(udpPacket(peerB, grp1, "x"), peerA), DropForgedSource, peerA},
		{"excluded source", wrapped(udpPacket(peerB, grp1, "x"), peerB), DropNoListener, peerB},
		{"no listener", wrapped(udpPacket(peerA, grp2, "x"), peerA), DropNoListener, peerA},
		{"not a peer", wrapped(udpPacket(srcS, grp1, "x"), srcS), DropForgedSource, netip.Addr{}},
		{"link scope", wrapped(udpPacket(peerA, netip.MustParseAddr("ff02::1"), "x"), peerA), DropScope, peerA},
	}
	for _, c := range cases {
		before := tr.Drops()[c.drop]
		peersBefore := peerDropTotals(tr.Router, c.drop)
		tr.Port().Write([][]byte{c.pkt}, 16)
		if tr.Drops()[c.drop] != before+1 {
			t.Errorf("%s: %s drops %d -> %d", c.name, c.drop, before, tr.Drops()[c.drop])
		}
		for a, n := range peerDropTotals(tr.Router, c.drop) {
			if want := peersBefore[a] + b2u(a == c.peer); n != want {
				t.Errorf("%s: peer %s has %d %s drops, want %d", c.name, a, n, c.drop, want)
			}
		}
	}
	tr.Port().Write([][]byte{wrapped(good, peerA), append(make([]byte, 16), udpPacket(peerC, self, "unicast")...)}, 16)
	for _, want := range []string{string(good), string(udpPacket(peerC, self, "unicast"))} {
		select {
		case p := <-got:
			if string(p) != want {
				t.Fatalf("lc0 got %x, want %x", p, want)
			}
		case <-time.After(time.Second):
			t.Fatal("nothing written into lc0")
		}
	}
	select {
	case p := <-got:
		t.Fatalf("dropped packet reached lc0: %x", p)
	default:
	}
	if c := tr.Counters(peerA); c.RxPackets.Load() != 4 {
		t.Fatalf("peer A rx packets %d, want 4", c.RxPackets.Load())
	}
}

// peerDropTotals returns each peer's count of drops for reason.
func peerDropTotals(r *Router, reason string) map[netip.Addr]uint64 {
	out := map[netip.Addr]uint64{}
	for _, a := range []netip.Addr{peerA, peerB, peerC} {
		if c := r.Counters(a); c != nil {
			out[a] = c.Drops()[reason]
		}
	}
	return out
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// With link scope opted in, a peer's link-local address is its own too.
func TestDeliverLinkLocalSource(t *testing.T) {
	lc0 := tuntest.NewChannelTUN()
	r := New(lc0.TUN(), Config{Self: self, Overlay: overlay, Scope: ScopePolicy{LinkLocal: true}, LinkLocal: func([]byte) {}})
	r.SetPeers([]netip.Addr{peerA})
	mdns := netip.MustParseAddr("ff02::fb")
	r.SetLocal([]Subscription{sub(mdns, mld.Exclude)})
	go func() {
		for range lc0.Inbound {
		}
	}()
	llA := netip.MustParseAddr("fe80::a")
	r.Port().Write([][]byte{wrapped(udpPacket(llA, mdns, "x"), peerA)}, 16)
	r.Port().Write([][]byte{wrapped(udpPacket(netip.MustParseAddr("fe80::b"), mdns, "x"), peerA)}, 16)
	if d := r.Drops(); d[DropForgedSource] != 1 || r.Counters(peerA).RxPackets.Load() != 2 || d[DropNoListener] != 0 {
		t.Fatalf("drops %v", d)
	}
}

// Routing and delivering allocate nothing per packet.
func TestDataPathAllocatesNothing(t *testing.T) {
	tr := newTestRouter(t)
	tr.SetLocal([]Subscription{sub(grp1, mld.Exclude)})
	pkt := udpPacket(self, grp1, "hello")
	out := make([]byte, 2048)
	tab := tr.table.Load()
	if n := testing.AllocsPerRun(1000, func() {
		for next := 0; routed(tr.route(tab, pkt, &fromLc0, &next, out)); {
		}
	}); n != 0 {
		t.Fatalf("route allocates %v per packet", n)
	}
	in := wrapped(udpPacket(peerA, grp1, "x"), peerA)[16:]
	var o origin
	if n := testing.AllocsPerRun(1000, func() { tr.deliver(tab, in, &o) }); n != 0 {
		t.Fatalf("deliver allocates %v per packet", n)
	}
}

// The indexed table sends each packet to exactly the peers a slow,
// obvious reading of every peer's subscriptions gives.
func TestRouteMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	groups := []netip.Addr{grp1, grp2, netip.MustParseAddr("ff3e::1"), netip.MustParseAddr("ff02::fb"), netip.MustParseAddr("ff05::2")}
	sources := []netip.Addr{self, srcS, netip.MustParseAddr("2001:db8::6")}
	var peers []netip.Addr
	for i := range 6 {
		peers = append(peers, netip.MustParseAddr(fmt.Sprintf("fd6c:6361:7374::%x", i+16)))
	}
	for run := range 300 {
		r := New(tuntest.NewChannelTUN().TUN(), Config{Self: self, Overlay: overlay, Scope: ScopePolicy{}, LinkLocal: func([]byte) {}})
		r.SetPeers(peers)
		subs := map[netip.Addr][]Subscription{}
		for _, p := range peers {
			for _, g := range groups {
				if rng.IntN(2) == 0 {
					continue
				}
				s := sub(g, mld.FilterMode(rng.IntN(2)))
				for _, src := range sources {
					if rng.IntN(2) == 0 {
						s.Sources = append(s.Sources, src)
					}
				}
				subs[p] = append(subs[p], s)
			}
			r.SetSubscriptions(p, false, subs[p])
		}
		out := make([]byte, 2048)
		for _, g := range groups {
			for _, src := range sources {
				pkt := udpPacket(src, g, "x")
				var got []netip.Addr
				tab := r.table.Load()
				for next := 0; ; {
					n, _ := r.route(tab, pkt, &fromLc0, &next, out)
					if n == 0 {
						break
					}
					got = append(got, dstOf(out[:n]))
				}
				var want []netip.Addr
				for _, p := range peers {
					for _, s := range subs[p] {
						if s.Group == g && (ScopePolicy{}).Forwards(g) && s.Wants(src) {
							want = append(want, p)
						}
					}
				}
				slices.SortFunc(got, netip.Addr.Compare)
				slices.SortFunc(want, netip.Addr.Compare)
				if !slices.Equal(got, want) {
					t.Fatalf("run %d: %s from %s went to %v, want %v", run, g, src, got, want)
				}
			}
		}
	}
}

func BenchmarkRouteFanOut8(b *testing.B) {
	r := New(tuntest.NewChannelTUN().TUN(), Config{Self: self, Overlay: overlay, Scope: ScopePolicy{}, LinkLocal: func([]byte) {}})
	var peers []netip.Addr
	for i := range 8 {
		p := netip.MustParseAddr(fmt.Sprintf("fd6c:6361:7374::%x", i+16))
		peers = append(peers, p)
	}
	r.SetPeers(peers)
	for _, p := range peers {
		r.SetSubscriptions(p, false, []Subscription{sub(grp1, mld.Exclude)})
	}
	pkt := udpPacket(self, grp1, string(make([]byte, 1152)))
	out := make([]byte, 2048)
	tab := r.table.Load()
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)) * 8)
	for b.Loop() {
		for next := 0; routed(r.route(tab, pkt, &fromLc0, &next, out)); {
		}
	}
}

// A subscription that arrives while the transport waits in Read applies to
// the packets that end the wait.
func TestSubscriptionDuringReadApplies(t *testing.T) {
	lc0 := tuntest.NewChannelTUN()
	r := New(lc0.TUN(), Config{Self: self, Overlay: overlay, Scope: ScopePolicy{}, LinkLocal: func([]byte) {}})
	r.SetPeers([]netip.Addr{peerA})
	got := make(chan int, 1)
	go func() {
		bufs, sizes := [][]byte{make([]byte, 2048)}, []int{0}
		n, _ := r.Port().Read(bufs, sizes, 0)
		got <- n
	}()
	time.Sleep(50 * time.Millisecond) // Read is waiting for lc0
	r.SetSubscriptions(peerA, false, []Subscription{sub(grp1, mld.Exclude)})
	lc0.Outbound <- udpPacket(self, grp1, "x")
	select {
	case n := <-got:
		if n != 1 {
			t.Fatalf("Read returned %d packets", n)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("the packet was not routed with the new subscription; drops %v", r.Drops())
	}
}

// readEndsOnClose checks that a Read waiting for packets returns
// os.ErrClosed once close runs, and so do later Reads, at once.
func readEndsOnClose(t *testing.T, r *Router, close func()) {
	t.Helper()
	read := func() error {
		_, err := r.Port().Read([][]byte{make([]byte, 2048)}, []int{0}, 0)
		return err
	}
	done := make(chan error, 1)
	go func() { done <- read() }()
	time.Sleep(20 * time.Millisecond) // Read waits for lc0
	close()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrClosed) {
			t.Fatalf("Read after the close: %v, want os.ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Read still blocks after the close")
	}
	if err := read(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("second Read: %v", err)
	}
}

// When lc0 closes, the goroutine reading it ends and the transport's Read
// reports os.ErrClosed, so the transport stops.
func TestPortEndsWhenLc0Closes(t *testing.T) {
	lc0 := tuntest.NewChannelTUN()
	r := New(lc0.TUN(), Config{Self: self, Overlay: overlay, Scope: ScopePolicy{}, LinkLocal: func([]byte) {}})
	readEndsOnClose(t, r, func() { lc0.TUN().Close() })
}

// A packet's fan-out that spans two Reads goes to each subscriber once,
// even if the table changes between them (here a peer whose address sorts
// first subscribes, shifting the others).
func TestFanOutAcrossReadsWithNewTable(t *testing.T) {
	lc0 := tuntest.NewChannelTUN()
	r := New(lc0.TUN(), Config{Self: self, Overlay: overlay, Scope: ScopePolicy{}, LinkLocal: func([]byte) {}})
	early := netip.MustParseAddr("fd6c:6361:7374::9")
	r.SetPeers([]netip.Addr{early, peerA, peerB})
	r.SetSubscriptions(peerA, false, []Subscription{sub(grp1, mld.Exclude)})
	r.SetSubscriptions(peerB, false, []Subscription{sub(grp1, mld.Exclude)})
	go func() { lc0.Outbound <- udpPacket(self, grp1, "x") }()
	bufs, sizes := [][]byte{make([]byte, 2048)}, []int{0}
	read := func() netip.Addr {
		if n, err := r.Port().Read(bufs, sizes, 0); n != 1 || err != nil {
			t.Fatalf("Read = %d, %v", n, err)
		}
		return dstOf(bufs[0][:sizes[0]])
	}
	first := read()
	r.SetSubscriptions(early, false, []Subscription{sub(grp1, mld.Exclude)})
	second := read()
	if first != peerA || second != peerB {
		t.Fatalf("copies went to %s and %s, want %s and %s", first, second, peerA, peerB)
	}
}

// routed reports whether route returned a packet, and then counts it sent
// by the transport, so that repeated routing measures forwarding rather
// than the drops of a full peer queue.
func routed(n int, to *routerPeer) bool {
	if n == 0 {
		return false
	}
	to.release()
	return true
}

// readToMarker pushes pkts and then a marker packet to peer C into lc0 and
// reads from the port until the marker, with fresh buffers as the
// transport has them. It returns the packets that went to peers (without
// the marker) and the buffers they were read into.
func (tr *testRouter) readToMarker(t *testing.T, pkts [][]byte) (out [][]byte, bufs [][]byte) {
	t.Helper()
	marker := udpPacket(self, grp2, "marker")
	go func() {
		for _, p := range pkts {
			tr.lc0.Outbound <- p
		}
		tr.lc0.Outbound <- marker
	}()
	sizes := make([]int, 64)
	for {
		read := make([][]byte, len(sizes))
		for i := range read {
			read[i] = make([]byte, 2048)
		}
		n, err := tr.Port().Read(read, sizes, 16)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			p := read[i][16 : 16+sizes[i]]
			if string(p[len(p)-6:]) == "marker" {
				tr.Port().Sent(read[i : i+1])
				return out, bufs
			}
			out, bufs = append(out, p), append(bufs, read[i])
		}
	}
}

// At most PeerQueueLimit packets wait in the transport for a peer: beyond,
// its packets are dropped and counted while other peers' pass. Packets the
// transport sends free their places, and so, after queuedExpiry, do those
// it never reports.
func TestPeerQueueBound(t *testing.T) {
	tr := newTestRouter(t)
	burst := func(n int) [][]byte {
		var pkts [][]byte
		for i := range n {
			pkts = append(pkts, udpPacket(self, grp1, fmt.Sprint(i)))
		}
		return pkts
	}
	out, bufs := tr.readToMarker(t, burst(PeerQueueLimit+10))
	if len(out) != PeerQueueLimit || tr.Drops()[DropPeerQueue] != 10 {
		t.Fatalf("%d packets of %d went to peer A, %d dropped as %s; want %d and 10",
			len(out), PeerQueueLimit+10, tr.Drops()[DropPeerQueue], DropPeerQueue, PeerQueueLimit)
	}
	if d := peerDropTotals(tr.Router, DropPeerQueue); d[peerA] != 10 || d[peerC] != 0 {
		t.Fatalf("%s drops by peer: %v; want 10 for peer A only", DropPeerQueue, d)
	}
	// Peer C's marker passed meanwhile (readToMarker returned). Sending
	// 100 of A's packets lets 100 more in.
	tr.Port().Sent(bufs[:100])
	if out, _ := tr.readToMarker(t, burst(110)); len(out) != 100 || tr.Drops()[DropPeerQueue] != 20 {
		t.Fatalf("after 100 sent: %d of 110 went to peer A, %d dropped in all", len(out), tr.Drops()[DropPeerQueue])
	}
	time.Sleep(queuedExpiry)
	tr.readToMarker(t, nil) // a Read forgets the expired packets
	if out, _ := tr.readToMarker(t, burst(10)); len(out) != 10 {
		t.Fatalf("after %v: %d of 10 went to peer A", queuedExpiry, len(out))
	}
}

// At most QueueLimit packets wait for all peers together.
func TestQueueBoundForAllPeers(t *testing.T) {
	r := New(tuntest.NewChannelTUN().TUN(), Config{Self: self, Overlay: overlay, Scope: ScopePolicy{}, LinkLocal: func([]byte) {}})
	var peers []netip.Addr
	for i := range QueueLimit/PeerQueueLimit + 1 {
		peers = append(peers, netip.MustParseAddr(fmt.Sprintf("fd6c:6361:7374::%x", i+16)))
	}
	r.SetPeers(peers)
	for _, p := range peers {
		r.SetSubscriptions(p, false, []Subscription{sub(grp1, mld.Exclude)})
	}
	pkt, out, tab := udpPacket(self, grp1, "x"), make([]byte, 2048), r.table.Load()
	admitted := 0
	for range PeerQueueLimit + 1 {
		for next := 0; ; {
			n, _ := r.route(tab, pkt, &fromLc0, &next, out)
			if n == 0 {
				break
			}
			admitted++
		}
	}
	if admitted != QueueLimit {
		t.Fatalf("%d packets wait for %d peers, want %d", admitted, len(peers), QueueLimit)
	}
}

// Closing the port ends a Read that waits for packets, with lc0 still
// open: the transport can stop when it fails to start.
func TestPortCloseEndsRead(t *testing.T) {
	r := New(tuntest.NewChannelTUN().TUN(), Config{Self: self, Overlay: overlay, Scope: ScopePolicy{}, LinkLocal: func([]byte) {}})
	readEndsOnClose(t, r, func() { r.Port().Close() })
}
