package router

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/packettest"
	"github.com/librecast/lcast/mld"
)

// newTrusting returns a router (no relay) whose peers are A, which it
// trusts as a relay, B and C, with local programs listening to grp1.
func newTrusting(t *testing.T) *Router {
	r := newTestRouter(t)
	r.SetPeers([]netip.Addr{packettest.PeerA, packettest.PeerB, packettest.PeerC}, []netip.Addr{packettest.PeerA})
	r.SetLocal([]Subscription{sub(packettest.Group1, mld.Exclude)})
	return r
}

// delivered reports whether the packet from sender with o's epoch and
// sequence number, which came from the peer via, reaches lc0.
func delivered(r *Router, sender, via netip.Addr, epoch uint32, seq uint64) bool {
	pkt := wrappedAs(packettest.UDP(sender, packettest.Group1, "x"), via, Origin{epoch: epoch, seq: seq, hops: MaxHops})
	return deliver(r, pkt).Lc0 == WrapLen
}

// A trusted relay that forwards a forged packet of B's, with a new epoch
// or a sequence number near 2^64, before B's first packet or while B
// streams directly, does not stop B's direct packets: each is delivered
// once. While B's direct path is live, relayed packets of another epoch or
// beyond B's last direct one are dropped (relay_ahead), and a relayed copy
// of one delivered directly is a duplicate.
func TestRelayCannotSilenceDirect(t *testing.T) {
	const epoch = 5
	for _, tc := range []struct {
		name   string
		forged Origin
	}{
		{"new epoch", Origin{epoch: epoch + 1, seq: 1}},
		{"sequence number near 2^64", Origin{epoch: epoch, seq: 1<<64 - 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newTrusting(t)
			forge := func() bool { return delivered(r, packettest.PeerB, packettest.PeerA, tc.forged.epoch, tc.forged.seq) }
			direct := func(from, to uint64) {
				t.Helper()
				for seq := from; seq <= to; seq++ {
					if !delivered(r, packettest.PeerB, packettest.PeerB, epoch, seq) {
						t.Fatalf("B's direct packet %d dropped; drops %v", seq, r.Drops())
					}
					if delivered(r, packettest.PeerB, packettest.PeerB, epoch, seq) {
						t.Fatalf("B's direct packet %d delivered twice", seq)
					}
				}
			}
			forge() // no direct path yet: the relay window alone takes it
			direct(1, 3)
			if forge() || r.Counters(packettest.PeerA).Dropped(DropRelayAhead) != 1 {
				t.Fatalf("forged while B streams directly: delivered, or drops %v", r.Counters(packettest.PeerA).Drops())
			}
			direct(4, 10)
			if delivered(r, packettest.PeerB, packettest.PeerA, epoch, 11) || r.Dropped(DropRelayAhead) != 2 {
				t.Fatalf("a relayed packet ahead of B's direct ones: delivered, or drops %v", r.Drops())
			}
			before := r.Dropped(DropDuplicate)
			if delivered(r, packettest.PeerB, packettest.PeerA, epoch, 7) || r.Dropped(DropDuplicate) != before+1 {
				t.Fatalf("a relayed copy of B's direct packet: delivered, or drops %v", r.Drops())
			}
		})
	}
}

// A node that is not a peer comes through relays alone: each packet is
// delivered once, whichever relay brings it; a new epoch starts afresh,
// and the epoch before it is over.
func TestRelayedWithoutDirectPath(t *testing.T) {
	r := newTrusting(t)
	r.SetPeers([]netip.Addr{packettest.PeerA, packettest.PeerB, packettest.PeerC}, []netip.Addr{packettest.PeerA, packettest.PeerC})
	for seq := uint64(1); seq <= 5; seq++ {
		if !delivered(r, nodeX, packettest.PeerA, 7, seq) {
			t.Fatalf("X's packet %d through A dropped; drops %v", seq, r.Drops())
		}
		if delivered(r, nodeX, packettest.PeerC, 7, seq) || delivered(r, nodeX, packettest.PeerA, 7, seq) {
			t.Fatalf("X's packet %d delivered twice", seq)
		}
	}
	if !delivered(r, nodeX, packettest.PeerC, 8, 1) {
		t.Fatalf("X's new epoch dropped; drops %v", r.Drops())
	}
	if delivered(r, nodeX, packettest.PeerA, 7, 6) {
		t.Fatal("X's epoch before the current one delivered")
	}
	if r.Dropped(DropDuplicate) != 11 || r.Dropped(DropRelayAhead) != 0 {
		t.Fatalf("drops %v, want 11 duplicates", r.Drops())
	}
}

// The direct path counts as live for directLive after its last packet;
// then the relay window decides alone. A forgery that moved the relay
// window past the sender ends when the direct path is live again, and a
// relayed packet never marks the direct window.
func TestSeenDirectPathLapses(t *testing.T) {
	var s seen
	s.init()
	b := packettest.PeerB
	t0 := time.Now()
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	check := func(what string, direct bool, epoch uint32, seq uint64, now time.Time, want bool, why Reason) {
		t.Helper()
		if got, ok := s.admit(b, direct, false, epoch, seq, now); ok != want || (!ok && got != why) {
			t.Fatalf("%s: admit = %v, %v; want %v, %v", what, got, ok, want, why)
		}
	}
	check("direct 1", true, 1, 1, at(0), true, 0)
	check("relayed 2 while direct is live", false, 1, 2, at(directLive/2), false, DropRelayAhead)
	check("relayed 2 once the direct path lapsed", false, 1, 2, at(directLive), true, 0)
	check("relayed 2 again", false, 1, 2, at(directLive), false, DropDuplicate)
	check("direct 2, relayed first as the direct path came back", true, 1, 2, at(directLive), false, DropDuplicate)
	check("direct 3, not marked by a relayed copy", true, 1, 3, at(directLive), true, 0)
	check("relayed 1, delivered directly before", false, 1, 1, at(3*directLive), false, DropDuplicate)
	check("forged relayed, far ahead", false, 1, 1<<64-2, at(3*directLive), true, 0)
	check("relayed 3, behind the forgery", false, 1, 3, at(3*directLive), false, DropDuplicate)
	check("direct 4, the forgery not adopted", true, 1, 4, at(3*directLive), true, 0)
	check("relayed 3 with the direct path live again", false, 1, 3, at(3*directLive), false, DropDuplicate)
	check("forged relayed epoch", false, 9, 1, at(5*directLive), true, 0)
	check("direct 5, after the forged epoch", true, 1, 5, at(5*directLive), true, 0)
	check("relayed 5, after the forged epoch", false, 1, 5, at(5*directLive), false, DropDuplicate)
	check("forged epoch again, while direct is live", false, 9, 2, at(5*directLive), false, DropRelayAhead)
}

// A window takes each sequence number once, the sequence numbers behind
// it as seen, and a new epoch afresh, never the one before.
func TestWindow(t *testing.T) {
	w := &window{epoch: 1}
	for _, c := range []struct {
		epoch uint32
		seq   uint64
		want  bool
	}{
		{1, 100, true}, {1, 100, false}, {1, 50, true}, {1, 50, false},
		{1, 100 + windowSize, true}, {1, 100, false}, {1, 101, true}, {1, 99, false},
		{1, 1 << 20, true}, {1, 1<<20 - windowSize, true}, {1, 1<<20 - windowSize - 1, false},
		{2, 1, true}, {2, 1, false}, {1, 1<<20 + 1, false}, {2, 1 << 20, true},
	} {
		if got := w.first(c.epoch, c.seq); got != c.want {
			t.Fatalf("epoch %d seq %d: first = %v, want %v", c.epoch, c.seq, got, c.want)
		}
	}
}

// When a sender's direct path starts after its packets came through a
// relay, the copies that then arrive directly are duplicates: each packet
// reaches programs once. A relay far ahead of the direct path (a forgery)
// is not taken over: the direct packets are delivered.
func TestDirectPathStartsAfterRelay(t *testing.T) {
	var s seen
	s.init()
	b, c := packettest.PeerB, packettest.PeerC
	now := time.Now()
	for seq := uint64(1); seq <= 10; seq++ {
		if _, ok := s.admit(b, false, false, 1, seq, now); !ok {
			t.Fatalf("relayed %d, no direct path: dropped", seq)
		}
	}
	for seq := uint64(5); seq <= 15; seq++ {
		if _, ok := s.admit(b, true, false, 1, seq, now); ok != (seq > 10) {
			t.Errorf("direct %d after relayed 1-10: delivered %v, want %v", seq, ok, seq > 10)
		}
	}
	if _, ok := s.admit(c, false, false, 1, 1+adoptAhead+5, now); !ok {
		t.Fatal("relayed, no direct path: dropped")
	}
	for seq := uint64(1); seq <= 3; seq++ {
		if _, ok := s.admit(c, true, false, 1, seq, now); !ok {
			t.Errorf("direct %d after a relayed packet %d ahead: dropped", seq, adoptAhead+5)
		}
	}
}

// A trusted relay that floods packets of fresh senders while B streams
// directly cannot make the router forget B: every direct packet of B's is
// delivered once, and every forged copy of B's packets that the relay
// sends (one delivered already, one ahead of B, a new epoch) is dropped,
// however many fresh senders came before it.
func TestRelayFloodCannotEvictDirect(t *testing.T) {
	var s seen
	s.init()
	b := packettest.PeerB
	const epoch = 5
	now := time.Now()
	fresh := func(i int) netip.Addr {
		a := nodeX.As16()
		binary.BigEndian.PutUint32(a[12:], uint32(i)+0x1000)
		return netip.AddrFrom16(a)
	}
	next := 0
	for seq := uint64(1); seq <= 40; seq++ {
		now = now.Add(time.Millisecond)
		if _, ok := s.admit(b, true, false, epoch, seq, now); !ok {
			t.Fatalf("B's direct packet %d dropped", seq)
		}
		if _, ok := s.admit(b, true, false, epoch, seq, now); ok {
			t.Fatalf("B's direct packet %d delivered twice", seq)
		}
		for range 1000 {
			if _, ok := s.admit(fresh(next), false, false, 1, 1, now); !ok {
				t.Fatalf("fresh sender %d dropped", next)
			}
			next++
		}
		for _, f := range []struct {
			what  string
			epoch uint32
			seq   uint64
		}{{"a copy", epoch, seq}, {"ahead", epoch, seq + 1}, {"a new epoch", epoch + 1, 1}} {
			if _, ok := s.admit(b, false, false, f.epoch, f.seq, now); ok {
				t.Fatalf("after %d fresh senders, a forged packet of B's (%s, epoch %d, seq %d) through the relay was delivered", next, f.what, f.epoch, f.seq)
			}
		}
	}
	if n := len(s.relayed); n > maxRelayedOrigins {
		t.Fatalf("%d relayed origins held, above the bound %d", n, maxRelayedOrigins)
	}
}

// The direct table is bounded too: a new direct sender beyond it replaces
// an idle one, never one whose direct path is live; with no idle one its
// packets are delivered without a window.
func TestDirectOriginsBounded(t *testing.T) {
	var s seen
	s.init()
	now := time.Now()
	addr := func(i int) netip.Addr {
		a := nodeX.As16()
		binary.BigEndian.PutUint32(a[12:], uint32(i)+0x100000)
		return netip.AddrFrom16(a)
	}
	for i := range maxDirectOrigins {
		if _, ok := s.admit(addr(i), true, false, 1, 1, now); !ok {
			t.Fatalf("direct sender %d dropped", i)
		}
	}
	extra := addr(maxDirectOrigins)
	if _, ok := s.admit(extra, true, false, 1, 1, now); !ok {
		t.Fatal("a direct sender beyond the bound dropped")
	}
	if len(s.direct) != maxDirectOrigins {
		t.Fatalf("%d direct origins while all are live, want %d", len(s.direct), maxDirectOrigins)
	}
	if _, ok := s.admit(addr(0), true, false, 1, 1, now); ok {
		t.Fatal("a live direct sender was forgotten")
	}
	later := now.Add(directLive)
	if _, ok := s.admit(extra, true, false, 1, 2, later); !ok || s.direct[extra] == nil || len(s.direct) != maxDirectOrigins {
		t.Fatalf("an idle direct sender was not replaced: %d held", len(s.direct))
	}
}
