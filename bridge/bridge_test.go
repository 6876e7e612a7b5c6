package bridge

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/packettest"
	"github.com/librecast/lcast/mld"
	"github.com/librecast/lcast/router"
	"go.uber.org/goleak"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// TestMain fails the tests if any goroutine outlives them.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var errTooManySegments = errors.New("too many segments")

// fakeTUN is lc0 for tests: each Read returns the packets of one result
// sent on reads (a GSO super-packet's segments, or an error), failing like
// wireguard-go's when they are more than the buffers; Write records what
// it writes.
type fakeTUN struct {
	batch     int
	reads     chan readResult
	written   chan []byte
	closed    chan struct{}
	closeOnce sync.Once
}

type readResult struct {
	pkts [][]byte
	err  error
}

func newFakeTUN(batch int) *fakeTUN {
	return &fakeTUN{batch: batch, reads: make(chan readResult), written: make(chan []byte, 4096), closed: make(chan struct{})}
}

func (f *fakeTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case <-f.closed:
		return 0, os.ErrClosed
	case r := <-f.reads:
		if len(r.pkts) > len(bufs) {
			return 0, errTooManySegments
		}
		for i, p := range r.pkts {
			sizes[i] = copy(bufs[i][offset:], p)
		}
		return len(r.pkts), r.err
	}
}

func (f *fakeTUN) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		select {
		case f.written <- append([]byte(nil), b[offset:]...):
		default:
			return 0, errors.New("fakeTUN: too much written")
		}
	}
	return len(bufs), nil
}

func (f *fakeTUN) Close() error {
	f.closeOnce.Do(func() { close(f.closed) })
	return nil
}

func (f *fakeTUN) File() *os.File             { return nil }
func (f *fakeTUN) MTU() (int, error)          { return 1420, nil }
func (f *fakeTUN) Name() (string, error)      { return "lc0-test", nil }
func (f *fakeTUN) Events() <-chan wgtun.Event { return nil }
func (f *fakeTUN) BatchSize() int             { return f.batch }

// push makes lc0 yield pkts, one per read.
func (f *fakeTUN) push(pkts ...[]byte) {
	for _, p := range pkts {
		f.reads <- readResult{pkts: [][]byte{p}}
	}
}

// written returns the next packet written into lc0.
func (f *fakeTUN) next(t *testing.T) []byte {
	t.Helper()
	select {
	case p := <-f.written:
		return p
	case <-time.After(2 * time.Second):
		t.Fatal("nothing written into lc0")
		return nil
	}
}

func sub(g netip.Addr, mode mld.FilterMode, sources ...netip.Addr) router.Subscription {
	return router.Subscription{Group: g, Mode: mode, Sources: sources}
}

type testBridge struct {
	*Bridge
	r   *router.Router
	lc0 *fakeTUN
}

// newTestBridge returns a bridge whose router has peers A, B and C (A and
// B subscribed to grp1, C to grp2), closed with lc0 when the test ends.
func newTestBridge(t *testing.T, rcfg router.Config, cfg Config) *testBridge {
	return newTestBridgeOn(t, newFakeTUN(1), rcfg, cfg)
}

// newTestBridgeOn is newTestBridge with lc0 given.
func newTestBridgeOn(t *testing.T, lc0 *fakeTUN, rcfg router.Config, cfg Config) *testBridge {
	rcfg.Self, rcfg.Overlay = packettest.Self, packettest.Overlay
	tb := &testBridge{r: router.New(rcfg), lc0: lc0}
	tb.r.SetPeers([]netip.Addr{packettest.PeerA, packettest.PeerB, packettest.PeerC}, nil)
	tb.r.SetSubscriptions(packettest.PeerA, []router.Subscription{sub(packettest.Group1, mld.Exclude)})
	tb.r.SetSubscriptions(packettest.PeerB, []router.Subscription{sub(packettest.Group1, mld.Exclude)})
	tb.r.SetSubscriptions(packettest.PeerC, []router.Subscription{sub(packettest.Group2, mld.Exclude)})
	tb.Bridge = New(tb.lc0, tb.r, cfg)
	t.Cleanup(func() {
		tb.lc0.Close()
		tb.Close()
	})
	return tb
}

func dstOf(p []byte) netip.Addr { return netip.AddrFrom16([16]byte(p[24:40])) }

// read reads once from the port, with fresh buffers as the transport has
// them, and returns the packets.
func (tb *testBridge) read(t *testing.T, n int) (pkts [][]byte, bufs [][]byte) {
	t.Helper()
	bufs, sizes := make([][]byte, n), make([]int, n)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	got, err := tb.Port().Read(bufs, sizes, 16)
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		pkts = append(pkts, bufs[i][16:16+sizes[i]])
	}
	return pkts, bufs[:got]
}

// readToMarker pushes pkts and then a marker packet to peer C into lc0 and
// reads from the port until the marker. It returns the packets that went
// to peers (without the marker) and the buffers they were read into.
func (tb *testBridge) readToMarker(t *testing.T, pkts [][]byte) (out [][]byte, bufs [][]byte) {
	t.Helper()
	marker := packettest.UDP(packettest.Self, packettest.Group2, "marker")
	pushed := make(chan struct{})
	go func() {
		defer close(pushed)
		tb.lc0.push(append(pkts, marker)...)
	}()
	defer func() { <-pushed }()
	for {
		got, read := tb.read(t, 64)
		for i, p := range got {
			if string(p[len(p)-6:]) == "marker" {
				tb.Port().Sent(read[i : i+1])
				return out, bufs
			}
			out, bufs = append(out, p), append(bufs, read[i])
		}
	}
}

// A subscription that arrives while the transport waits in Read applies to
// the packets that end the wait.
func TestSubscriptionDuringReadApplies(t *testing.T) {
	tb := newTestBridge(t, router.Config{}, Config{})
	tb.r.SetSubscriptions(packettest.PeerA, nil)
	tb.r.SetSubscriptions(packettest.PeerB, nil)
	got := make(chan int, 1)
	go func() {
		bufs, sizes := [][]byte{make([]byte, 2048)}, []int{0}
		n, _ := tb.Port().Read(bufs, sizes, 0)
		got <- n
	}()
	time.Sleep(50 * time.Millisecond) // Read is waiting for lc0
	tb.r.SetSubscriptions(packettest.PeerA, []router.Subscription{sub(packettest.Group1, mld.Exclude)})
	tb.lc0.push(packettest.UDP(packettest.Self, packettest.Group1, "x"))
	select {
	case n := <-got:
		if n != 1 {
			t.Fatalf("Read returned %d packets", n)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("the packet was not routed with the new subscription; drops %v", tb.r.Drops())
	}
}

// readEndsOnClose checks that a Read waiting for packets returns
// os.ErrClosed once close runs, and so do later Reads, at once.
func readEndsOnClose(t *testing.T, p *Port, close func()) {
	t.Helper()
	read := func() error {
		_, err := p.Read([][]byte{make([]byte, 2048)}, []int{0}, 0)
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
	tb := newTestBridge(t, router.Config{}, Config{})
	readEndsOnClose(t, tb.Port(), func() { tb.lc0.Close() })
}

// Closing the port ends a Read that waits for packets, with lc0 still
// open: the transport can stop when it fails to start. Closing the bridge
// then waits for its lc0 reader, as often as it is called.
func TestPortCloseEndsRead(t *testing.T) {
	tb := newTestBridge(t, router.Config{}, Config{})
	readEndsOnClose(t, tb.Port(), func() { tb.Port().Close() })
	tb.lc0.Close()
	for range 2 {
		if err := tb.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// A packet's fan-out that spans two Reads goes to each subscriber once,
// even if the table changes between them (here a peer whose address sorts
// first subscribes, shifting the others).
func TestFanOutAcrossReadsWithNewTable(t *testing.T) {
	tb := newTestBridge(t, router.Config{}, Config{})
	early := netip.MustParseAddr("fd6c:6361:7374::9")
	tb.r.SetPeers([]netip.Addr{early, packettest.PeerA, packettest.PeerB}, nil)
	go tb.lc0.push(packettest.UDP(packettest.Self, packettest.Group1, "x"))
	read := func() netip.Addr {
		pkts, _ := tb.read(t, 1)
		if len(pkts) != 1 {
			t.Fatalf("Read = %d packets", len(pkts))
		}
		return dstOf(pkts[0])
	}
	first := read()
	tb.r.SetSubscriptions(early, []router.Subscription{sub(packettest.Group1, mld.Exclude)})
	second := read()
	if first != packettest.PeerA || second != packettest.PeerB {
		t.Fatalf("copies went to %s and %s, want %s and %s", first, second, packettest.PeerA, packettest.PeerB)
	}
}

// At most PeerQueueLimit packets wait in the transport for a peer: beyond,
// its packets are dropped and counted while other peers' pass. Packets the
// transport sends free their places, and so, after heldExpiry, do those
// it never reports.
func TestPeerQueueBound(t *testing.T) {
	tb := newTestBridge(t, router.Config{}, Config{})
	tb.r.SetSubscriptions(packettest.PeerB, nil)
	burst := func(n int) [][]byte {
		var pkts [][]byte
		for i := range n {
			pkts = append(pkts, packettest.UDP(packettest.Self, packettest.Group1, fmt.Sprint(i)))
		}
		return pkts
	}
	out, bufs := tb.readToMarker(t, burst(PeerQueueLimit+10))
	if len(out) != PeerQueueLimit || tb.r.Dropped(router.DropPeerQueue) != 10 {
		t.Fatalf("%d packets of %d went to peer A, %d dropped; want %d and 10",
			len(out), PeerQueueLimit+10, tb.r.Dropped(router.DropPeerQueue), PeerQueueLimit)
	}
	if a, c := tb.r.Counters(packettest.PeerA).Dropped(router.DropPeerQueue), tb.r.Counters(packettest.PeerC).Dropped(router.DropPeerQueue); a != 10 || c != 0 {
		t.Fatalf("queue drops of peer A %d and C %d; want 10 and 0", a, c)
	}
	// Peer C's marker passed meanwhile (readToMarker returned). Sending
	// 100 of A's packets lets 100 more in.
	tb.Port().Sent(bufs[:100])
	if out, _ := tb.readToMarker(t, burst(110)); len(out) != 100 || tb.r.Dropped(router.DropPeerQueue) != 20 {
		t.Fatalf("after 100 sent: %d of 110 went to peer A, %d dropped in all", len(out), tb.r.Dropped(router.DropPeerQueue))
	}
	time.Sleep(heldExpiry)
	tb.readToMarker(t, nil) // a Read forgets the expired packets
	if out, _ := tb.readToMarker(t, burst(10)); len(out) != 10 {
		t.Fatalf("after %v: %d of 10 went to peer A", heldExpiry, len(out))
	}
}

// At most QueueLimit packets wait for all peers together.
func TestQueueBoundForAllPeers(t *testing.T) {
	r := router.New(router.Config{Self: packettest.Self, Overlay: packettest.Overlay})
	var peers []netip.Addr
	for i := range QueueLimit/PeerQueueLimit + 1 {
		peers = append(peers, netip.MustParseAddr(fmt.Sprintf("fd6c:6361:7374::%x", i+16)))
	}
	r.SetPeers(peers, nil)
	for _, p := range peers {
		r.SetSubscriptions(p, []router.Subscription{sub(packettest.Group1, mld.Exclude)})
	}
	var q held
	q.init()
	pkt, out, tab := packettest.UDP(packettest.Self, packettest.Group1, "x"), make([]byte, 2048), r.Table()
	admitted := 0
	for range PeerQueueLimit + 1 {
		o := r.NextOrigin()
		for next := 0; ; {
			n, _ := r.Route(tab, pkt, &o, &next, out, q.admit)
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

// wrapFrom returns pkt as the peer at from sends it to this node, wrapped,
// with 16 bytes of headroom: the peer's own router wraps it.
func wrapFrom(t *testing.T, from netip.Addr, pkt []byte) []byte {
	t.Helper()
	r := router.New(router.Config{Self: from, Overlay: packettest.Overlay})
	r.SetPeers([]netip.Addr{packettest.Self}, nil)
	r.SetSubscriptions(packettest.Self, []router.Subscription{sub(dstOf(pkt), mld.Exclude)})
	o, next := r.NextOrigin(), 0
	out := make([]byte, 16+router.WrapLen+len(pkt))
	if n, _ := r.Route(r.Table(), pkt, &o, &next, out[16:], func(*router.Peer) bool { return true }); n != len(out)-16 {
		t.Fatalf("the peer's router did not wrap %x", pkt)
	}
	return out
}

// Write puts into lc0 what local programs listen to, unwrapped, and
// unicast to this node; on a relay it hands Read what to pass on.
func TestWrite(t *testing.T) {
	tb := newTestBridge(t, router.Config{Relay: true}, Config{})
	tb.r.SetLocal([]router.Subscription{sub(packettest.Group1, mld.Exclude)})
	mcast, uni := packettest.UDP(packettest.PeerA, packettest.Group1, "from A"), packettest.UDP(packettest.PeerC, packettest.Self, "unicast")
	if _, err := tb.Port().Write([][]byte{wrapFrom(t, packettest.PeerA, mcast), append(make([]byte, 16), uni...)}, 16); err != nil {
		t.Fatal(err)
	}
	for _, want := range [][]byte{mcast, uni} {
		if got := tb.lc0.next(t); string(got) != string(want) {
			t.Fatalf("lc0 got %x, want %x", got, want)
		}
	}
	// A relays the packet on to B, the other subscriber.
	out, _ := tb.read(t, 8)
	if len(out) != 1 || dstOf(out[0]) != packettest.PeerB || string(out[0][router.WrapLen:]) != string(mcast) {
		t.Fatalf("relayed %d packets: %x", len(out), out)
	}
}

// At most ReceiveLimit datagrams the transport received wait in it, and
// HandshakeLimit handshake messages: beyond, the port zeroes their sizes
// (the transport skips them) and counts them. Datagrams the port gets
// (Write) free their places; so does a buffer the transport reads into
// again (it dropped what it held there), and, after heldExpiry, what it
// never reports. Datagrams the transport does not keep are not counted.
func TestReceiveBound(t *testing.T) {
	tb := newTestBridge(t, router.Config{}, Config{})
	port := tb.Port()
	datagrams := func(n, msgType, size int) (bufs [][]byte, sizes []int) {
		for range n {
			b := make([]byte, 256)
			b[0] = byte(msgType)
			bufs, sizes = append(bufs, b), append(sizes, size)
		}
		return bufs, sizes
	}
	kept := func(sizes []int) (n int) {
		for _, s := range sizes {
			if s > 0 {
				n++
			}
		}
		return n
	}
	data, sizes := datagrams(ReceiveLimit+10, 4, 100)
	port.Received(data, sizes)
	if kept(sizes) != ReceiveLimit || tb.r.Dropped(router.DropTransportFull) != 10 {
		t.Fatalf("kept %d of %d data datagrams, %d dropped; want %d and 10", kept(sizes), len(sizes), tb.r.Dropped(router.DropTransportFull), ReceiveLimit)
	}
	// Handshake messages have their own limit; other datagrams none.
	hs, hsSizes := datagrams(HandshakeLimit+5, 1, 148)
	other, otherSizes := datagrams(50, 9, 100)
	keepalives, kaSizes := datagrams(1, 4, 20) // too short: not taken
	port.Received(append(append(hs, other...), keepalives...), append(append(hsSizes, otherSizes...), kaSizes...))
	if kept(hsSizes) != HandshakeLimit || kept(otherSizes) != 50 || kept(kaSizes) != 1 || tb.r.Dropped(router.DropTransportFull) != 15 {
		t.Fatalf("kept %d handshakes, %d others, %d short; %d dropped in all", kept(hsSizes), kept(otherSizes), kept(kaSizes), tb.r.Dropped(router.DropTransportFull))
	}
	// 100 written to the port, 50 buffers read into again (25 of them
	// holding new datagrams, not WireGuard's): 150 places.
	if _, err := port.Write(data[:100], 16); err != nil {
		t.Fatal(err)
	}
	_, reusedSizes := datagrams(25, 9, 100)
	for _, b := range data[100:125] {
		b[0] = 9
	}
	port.Received(data[100:150], reusedSizes)
	more, moreSizes := datagrams(160, 4, 100)
	port.Received(more, moreSizes)
	if kept(moreSizes) != 150 || tb.r.Dropped(router.DropTransportFull) != 25 {
		t.Fatalf("after 150 freed: kept %d of 160, %d dropped in all", kept(moreSizes), tb.r.Dropped(router.DropTransportFull))
	}
	time.Sleep(heldExpiry)
	port.Received(nil, nil) // forgets what expired
	last, lastSizes := datagrams(10, 4, 100)
	if port.Received(last, lastSizes); kept(lastSizes) != 10 {
		t.Fatalf("after %v: kept %d of 10", heldExpiry, kept(lastSizes))
	}
}
