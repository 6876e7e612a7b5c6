package bridge

import (
	"errors"
	"fmt"
	"github.com/librecast/lcast/internal/packettest"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/librecast/lcast/mld"
	"github.com/librecast/lcast/router"
)

// linkRecorder is a LinkHandler that takes MLD messages (ICMPv6 behind a
// hop-by-hop header, as the kernel sends them) and records them.
type linkRecorder struct {
	mu   sync.Mutex
	pkts [][]byte
}

func (l *linkRecorder) HandleLinkPacket(pkt []byte) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if pkt[6] != 0 { // no hop-by-hop header: not MLD
		return false
	}
	l.pkts = append(l.pkts, append([]byte(nil), pkt...))
	return true
}

func (l *linkRecorder) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.pkts)
}

// The lc0 reader hands what stays on the link to the link handler, and
// counts what it does not take (or all of it, with no handler) as
// link_local; the rest goes to peers.
func TestLinkPackets(t *testing.T) {
	report := mld.AppendV2Report(nil, netip.MustParseAddr("fe80::1"), []mld.ReportRecord{{Type: mld.ChangeToExcludeMode, Group: packettest.Group1}})
	routerSolicitation := packettest.UDP(netip.MustParseAddr("fe80::1"), netip.MustParseAddr("ff02::2"), "rs")
	for _, c := range []struct {
		name      string
		link      *linkRecorder
		linkLocal uint64
	}{
		{"handler", &linkRecorder{}, 1},
		{"no handler", nil, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := Config{}
			if c.link != nil {
				cfg.Link = c.link
			}
			tb := newTestBridgeOn(t, newFakeTUN(4), router.Config{}, cfg)
			// One read of three packets: the link's two and one for peers.
			tb.lc0.reads <- readResult{pkts: [][]byte{report, packettest.UDP(packettest.Self, packettest.Group1, "x"), routerSolicitation}}
			if out, _ := tb.readToMarker(t, nil); len(out) != 2 || string(out[0][router.WrapLen:]) != string(packettest.UDP(packettest.Self, packettest.Group1, "x")) {
				t.Fatalf("went to peers: %x", out)
			}
			if c.link != nil && (c.link.count() != 1 || string(c.link.pkts[0]) != string(report)) {
				t.Fatalf("link handler got %x", c.link.pkts)
			}
			if d := tb.r.Dropped(router.DropLinkLocal); d != c.linkLocal {
				t.Fatalf("link_local drops %d, want %d", d, c.linkLocal)
			}
		})
	}
}

// A failing lc0 is read again after a back-off that grows, not at once;
// each failure is counted. A success resets the back-off.
func TestReadErrorBacksOff(t *testing.T) {
	tb := newTestBridge(t, router.Config{}, Config{})
	failed := errors.New("lc0 failed")
	start := time.Now()
	for range 5 {
		tb.lc0.reads <- readResult{err: failed}
	}
	// The reader waited 1+2+4+8 ms after the first four before the fifth
	// read; and it waits 16 ms more before it reads again.
	if waited := time.Since(start); waited < 15*time.Millisecond {
		t.Fatalf("5 failed reads in %v: no back-off", waited)
	}
	for deadline := time.Now().Add(time.Second); tb.r.Dropped(router.DropLc0Read) != 5; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("lc0_read_error drops %d, want 5", tb.r.Dropped(router.DropLc0Read))
		}
	}
	if out, _ := tb.readToMarker(t, [][]byte{packettest.UDP(packettest.Self, packettest.Group1, "after")}); len(out) != 2 {
		t.Fatalf("after the failures: %d packets to peers", len(out))
	}
	start = time.Now()
	tb.lc0.reads <- readResult{err: failed}
	tb.lc0.reads <- readResult{err: failed}
	if waited := time.Since(start); waited > 500*time.Millisecond {
		t.Fatalf("back-off not reset after a success: %v", waited)
	}
}

// lc0 is read with as many buffers as its batch size, so that a GSO
// super-packet of many segments comes whole, none lost as lc0_read_error.
func TestSuperPacketReadWhole(t *testing.T) {
	tb := newTestBridgeOn(t, newFakeTUN(128), router.Config{}, Config{})
	tb.r.SetSubscriptions(packettest.PeerB, nil)
	var segments [][]byte
	for i := range 128 {
		segments = append(segments, packettest.UDP(packettest.Self, packettest.PeerA, fmt.Sprintf("segment %d", i)))
	}
	tb.lc0.reads <- readResult{pkts: segments}
	out, _ := tb.readToMarker(t, nil)
	if len(out) != len(segments) || tb.r.Dropped(router.DropLc0Read) != 0 {
		t.Fatalf("%d of %d segments went to the peer; %d read errors", len(out), len(segments), tb.r.Dropped(router.DropLc0Read))
	}
	for i, p := range out {
		if string(p) != string(segments[i]) {
			t.Fatalf("segment %d: %x", i, p)
		}
	}
	if got := newTestBridgeOn(t, newFakeTUN(0), router.Config{}, Config{}).port.readSize; got != defaultReadSize {
		t.Fatalf("with no batch size reported, lc0 is read %d at a time", got)
	}
}
