package bridge

import (
	"errors"
	"github.com/librecast/lcast/internal/packettest"
	"net/netip"
	"testing"
	"time"

	"github.com/librecast/lcast/router"
)

// controlRecorder is a ControlHandler that records the messages.
type controlRecorder struct {
	from []netip.Addr
	msgs []string
}

func (c *controlRecorder) HandleControl(from netip.Addr, msg []byte) {
	c.from = append(c.from, from)
	c.msgs = append(c.msgs, string(msg))
}

func isControl(p []byte) bool { return p[6] == router.ProtoControl }

// Control packets go ahead of data waiting in batches, and are not counted
// as waiting in the transport.
func TestControlGoesFirst(t *testing.T) {
	tb := newTestBridge(t, router.Config{}, Config{})
	tb.lc0.push(packettest.UDP(packettest.Self, packettest.Group1, "1"), packettest.UDP(packettest.Self, packettest.Group1, "2"))
	for len(tb.port.full) < 1 {
		time.Sleep(time.Millisecond) // the reader hands over a batch
	}
	if err := tb.SendControl(packettest.PeerA, []byte("subscriptions")); err != nil {
		t.Fatal(err)
	}
	out, bufs := tb.read(t, 3)
	if len(out) != 3 || !isControl(out[0]) || isControl(out[1]) {
		t.Fatalf("Read handed out %d packets, first %x", len(out), out[0])
	}
	c := out[0]
	if dstOf(c) != packettest.PeerA || netip.AddrFrom16([16]byte(c[8:24])) != packettest.Self || c[7] != 255 || string(c[40:]) != "subscriptions" {
		t.Fatalf("control packet %x", c)
	}
	if tb.port.held.sending.Load() != 2 { // the copies for A and B of the first
		t.Fatalf("%d packets waiting in the transport, want the 2 data packets", tb.port.held.sending.Load())
	}
	tb.Port().Sent(bufs)
	if n := tb.port.held.sending.Load(); n != 0 {
		t.Fatalf("%d packets waiting after all were sent", n)
	}
}

// A Read waiting for data wakes for a control packet.
func TestControlWakesRead(t *testing.T) {
	tb := newTestBridge(t, router.Config{}, Config{})
	got := make(chan [][]byte, 1)
	go func() {
		out, _ := tb.read(t, 4)
		got <- out
	}()
	time.Sleep(20 * time.Millisecond) // Read waits for lc0
	if err := tb.SendControl(packettest.PeerB, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case out := <-got:
		if len(out) != 1 || !isControl(out[0]) || dstOf(out[0]) != packettest.PeerB {
			t.Fatalf("Read returned %x", out)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a waiting Read did not wake for a control packet")
	}
}

// The control queue is bounded in bytes: beyond, SendControl fails with
// ErrControlQueueFull, and so does a message larger than the MTU with
// ErrControlTooBig.
func TestControlQueueFull(t *testing.T) {
	tb := newTestBridge(t, router.Config{}, Config{})
	msg := make([]byte, 1024)
	var err error
	sent := 0
	for ; err == nil && sent <= controlQueueBytes/len(msg); sent++ {
		err = tb.SendControl(packettest.PeerA, msg)
	}
	if !errors.Is(err, ErrControlQueueFull) || sent != controlQueueBytes/(len(msg)+40)+1 {
		t.Fatalf("after %d messages: %v", sent, err)
	}
	if err := tb.SendControl(packettest.PeerA, make([]byte, 1500)); !errors.Is(err, ErrControlTooBig) {
		t.Fatalf("a message beyond the MTU: %v", err)
	}
}

// Control messages from peers reach the handler, with the peer's address,
// when they come from its overlay address to this node's; others are
// dropped and counted, and so are all with no handler.
func TestControlFromPeers(t *testing.T) {
	h := &controlRecorder{}
	tb := newTestBridge(t, router.Config{}, Config{Control: h})
	control := func(from, to netip.Addr, msg string) []byte {
		return append(make([]byte, 16), router.New(router.Config{Self: from, Overlay: packettest.Overlay}).AppendControl(nil, to, []byte(msg))...)
	}
	tb.Port().Write([][]byte{control(packettest.PeerA, packettest.Self, "from A"), control(packettest.PeerB, packettest.PeerC, "not for us"), control(packettest.PeerC, packettest.Self, "from C")}, 16)
	if len(h.msgs) != 2 || h.from[0] != packettest.PeerA || h.msgs[0] != "from A" || h.from[1] != packettest.PeerC || h.msgs[1] != "from C" {
		t.Fatalf("handler got %v from %v", h.msgs, h.from)
	}
	if tb.r.Dropped(router.DropNotForNode) != 1 || tb.r.Counters(packettest.PeerB).Dropped(router.DropNotForNode) != 1 {
		t.Fatalf("drops %v", tb.r.Drops())
	}
	unhandled := newTestBridge(t, router.Config{}, Config{})
	unhandled.Port().Write([][]byte{control(packettest.PeerA, packettest.Self, "from A")}, 16)
	if unhandled.r.Counters(packettest.PeerA).Dropped(router.DropControlUnhandled) != 1 {
		t.Fatalf("with no handler: drops %v", unhandled.r.Drops())
	}
}

// A control packet read from lc0 is dropped as malformed: a local program
// must not forge control.
func TestControlFromLc0Dropped(t *testing.T) {
	tb := newTestBridge(t, router.Config{}, Config{})
	forged := router.New(router.Config{Self: packettest.Self, Overlay: packettest.Overlay}).AppendControl(nil, packettest.PeerA, []byte("forged"))
	if out, _ := tb.readToMarker(t, [][]byte{forged}); len(out) != 0 || tb.r.Dropped(router.DropMalformed) != 1 {
		t.Fatalf("went to peers: %x; drops %v", out, tb.r.Drops())
	}
}
