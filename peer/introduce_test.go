package peer

import (
	"context"
	"encoding/binary"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/clock"
)

func TestIntroductionMessage(t *testing.T) {
	k1, k2 := testKey(t).PublicKey(), testKey(t).PublicKey()
	m := &introMessage{part: 1, parts: 2, list: 7, members: []Member{
		{PublicKey: k1, Endpoint: netip.MustParseAddrPort("[2001:db8::1]:51820")},
		{PublicKey: k2, Endpoint: netip.MustParseAddrPort("192.0.2.1:4000")},
		{PublicKey: k1},
	}}
	b := appendIntro(nil, m)
	if !IsIntroduction(b) {
		t.Fatal("not taken for an introduction")
	}
	got, err := parseIntro(b)
	if err != nil || got.part != 1 || got.parts != 2 || got.list != 7 || !slices.Equal(got.members, m.members) {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for name, bad := range map[string][]byte{
		"short":               b[:10],
		"other magic":         append([]byte("LCS\x03"), b[4:]...),
		"truncated member":    b[:len(b)-1],
		"trailing byte":       append(slices.Clone(b), 0),
		"part beyond parts":   appendIntro(nil, &introMessage{part: 2, parts: 2}),
		"members in an ask":   appendIntro(nil, &introMessage{ask: true, members: m.members}),
		"more parts than cap": appendIntro(nil, &introMessage{parts: MaxIntroduced}),
	} {
		if _, err := parseIntro(bad); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

// net wires Introductions together in-process, as the transport would:
// messages go from one node's Send to the other's HandleControl.
type introNet struct {
	clk   clock.Clock // the nodes' (nil: clock.Real)
	mu    sync.Mutex
	nodes map[netip.Addr]*Introductions
}

func (n *introNet) send(from netip.Addr) func(netip.Addr, []byte) error {
	return func(to netip.Addr, msg []byte) error {
		n.mu.Lock()
		dst := n.nodes[to]
		n.mu.Unlock()
		if dst != nil {
			dst.HandleControl(from, msg)
		}
		return nil
	}
}

// introNode is one node of an introNet.
type introNode struct {
	key    Key
	addr   netip.Addr
	in     *Introductions
	mu     sync.Mutex
	listed map[netip.Addr]Member // its configured peers
	intros []netip.Addr
}

func (n *introNode) seen() map[netip.Addr]Member {
	n.mu.Lock()
	defer n.mu.Unlock()
	return maps.Clone(n.listed)
}

func (n *introNode) introducers() []netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.intros)
}

func (net *introNet) add(t *testing.T) *introNode {
	k := testKey(t)
	n := &introNode{key: k.PublicKey(), addr: OverlayAddr(k.PublicKey()), listed: map[netip.Addr]Member{}}
	n.in = NewIntroductions(IntroductionsConfig{Self: n.key, Send: net.send(n.addr), Seen: n.seen, Introducers: n.introducers,
		Lists: func(a netip.Addr) bool { _, ok := n.seen()[a]; return ok }, Relays: n.introducers,
		Changed: func() {}, DirectChanged: func() {}, Log: slog.New(slog.DiscardHandler), Clock: net.clk})
	net.mu.Lock()
	net.nodes[n.addr] = n.in
	net.mu.Unlock()
	return n
}

// keysOf returns the introduced members' keys, sorted.
func keysOf(m map[Key]Introduced) []Key { return slices.SortedFunc(maps.Keys(m), Key.Compare) }

// A hub introduces the members that ask it to each other, at the
// endpoints it sees them at; a member it stops listing is dropped by the
// others; a peer that is no member's introducer introduces no one, and a
// node the hub does not list is introduced to no one.
func TestIntroductions(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	clk := clock.NewWarp()
	net := &introNet{clk: clk, nodes: map[netip.Addr]*Introductions{}}
	hub, a, b, outsider := net.add(t), net.add(t), net.add(t), net.add(t)
	epA, epB := netip.MustParseAddrPort("[2001:db8:a::1]:51820"), netip.MustParseAddrPort("[2001:db8:b::1]:1024")
	hub.listed[a.addr] = Member{PublicKey: a.key, Endpoint: epA}
	hub.listed[b.addr] = Member{PublicKey: b.key, Endpoint: epB}
	for _, m := range []*introNode{a, b, outsider} {
		m.intros = []netip.Addr{hub.addr}
	}
	for _, n := range []*introNode{hub, a, b, outsider} {
		wg.Go(func() { n.in.Run(ctx) })
	}
	// wait waits for cond, moving the clock on meanwhile (the asks,
	// answers and tellings are spaced by hundreds of milliseconds).
	wait := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(3 * time.Second); !cond(); warpIntro(clk) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: a knows %v, b %v", what, keysOf(a.in.Introduced(a.introducers())), keysOf(b.in.Introduced(b.introducers())))
			}
		}
	}
	wait("a and b introduced", func() bool {
		ia, ib := a.in.Introduced(a.introducers()), b.in.Introduced(b.introducers())
		return len(ia) == 1 && ia[b.key].Endpoint == epB && len(ib) == 1 && ib[a.key].Endpoint == epA
	})
	if by := a.in.Introduced(a.introducers())[b.key].By; !slices.Equal(by, []netip.Addr{hub.addr}) {
		t.Fatalf("b introduced by %v", by)
	}
	if n := hub.in.Untrusted.Load(); n == 0 {
		t.Fatal("the outsider's asks were not counted")
	}
	if got := outsider.in.Introduced(outsider.introducers()); len(got) != 0 {
		t.Fatalf("the outsider was introduced %v", keysOf(got))
	}

	// A member that is no introducer of a's sends a's introductions of the
	// outsider: nothing changes, and it is counted.
	forged := appendIntro(nil, &introMessage{parts: 1, list: 1, members: []Member{{PublicKey: outsider.key}}})
	a.in.HandleControl(b.addr, forged)
	a.in.HandleControl(b.addr, forged[:7])
	wait("forgeries counted", func() bool { return a.in.Untrusted.Load() == 1 && a.in.Malformed.Load() == 1 })
	if got := keysOf(a.in.Introduced(a.introducers())); !slices.Equal(got, []Key{b.key}) {
		t.Fatalf("after a forged introduction a knows %v", got)
	}

	// a tells its relay, the hub, that it reaches b directly.
	a.in.SetDirect([]Key{b.key})
	wait("a's direct peers at the hub", func() bool { return slices.Equal(hub.in.DirectOf()[a.addr], []netip.Addr{b.addr}) })
	// A relay that lost the list (restarted, say) and hears only its
	// name asks for it again.
	hub.in.mu.Lock()
	delete(hub.in.directs, a.addr)
	hub.in.mu.Unlock()
	hub.in.HandleControl(a.addr, appendIntro(nil, &introMessage{direct: true, same: true, list: listID([]Member{{PublicKey: b.key}})}))
	wait("a's direct peers at the hub again", func() bool { return slices.Equal(hub.in.DirectOf()[a.addr], []netip.Addr{b.addr}) })
	a.in.SetDirect(nil)
	wait("a reaches no one directly", func() bool { return len(hub.in.DirectOf()[a.addr]) == 0 })

	hub.mu.Lock()
	delete(hub.listed, b.addr)
	hub.mu.Unlock()
	wait("b dropped", func() bool { return len(a.in.Introduced(a.introducers())) == 0 })

	// An introducer that falls silent past IntroducedHold takes its
	// introductions with it; one no longer marked introducer at once.
	hub.mu.Lock()
	hub.listed[b.addr] = Member{PublicKey: b.key, Endpoint: epB}
	hub.mu.Unlock()
	wait("b back", func() bool { return len(a.in.Introduced(a.introducers())) == 1 })
	a.in.expire(clk.Now().Add(IntroducedHold + time.Second))
	if got := a.in.Introduced(a.introducers()); len(got) != 0 {
		t.Fatalf("after the hold a knows %v", keysOf(got))
	}
	b.mu.Lock()
	b.intros = nil
	b.mu.Unlock()
	if got := b.in.Introduced(b.introducers()); len(got) != 0 {
		t.Fatalf("with no introducer b knows %v", keysOf(got))
	}
}

// warpIntro moves clk on by half an introTick, with a moment of real
// time for the goroutines that wakes.
func warpIntro(clk *clock.Warp) {
	clk.Advance(introTick / 2)
	time.Sleep(2 * time.Millisecond)
}

func testKey(t *testing.T) Key {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// A list named unchanged renews the list it names, and no other; parts
// of two lists do not mix.
func TestListTake(t *testing.T) {
	k1, k2 := testKey(t).PublicKey(), testKey(t).PublicKey()
	one, two := []Member{{PublicKey: k1}}, []Member{{PublicKey: k2}}
	var l list
	t0 := time.Now()
	msg := func(b []byte) *introMessage {
		m, err := parseIntro(b)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	if !l.take(msg(listParts(one, false, 1)[0]), t0) || l.id != listID(one) {
		t.Fatalf("first list: %+v", l)
	}
	t1 := t0.Add(time.Second)
	if l.take(&introMessage{same: true, list: listID(two)}, t1) || !l.complete.Equal(t0) {
		t.Fatal("another list's name renewed the list")
	}
	if l.take(&introMessage{same: true, list: listID(one)}, t1) || !l.complete.Equal(t1) {
		t.Fatal("its own name did not renew the list")
	}
	// Part 0 of a two-part list, then part 1 of another: neither is whole.
	l.take(&introMessage{part: 0, parts: 2, list: 7, members: two}, t1)
	if l.take(&introMessage{part: 1, parts: 3, list: 7, members: two}, t1) || l.id != listID(one) {
		t.Fatalf("mixed parts made a list: %+v", l)
	}
}

// BenchmarkIntroduce measures what a hub's introductions cost it: each op
// makes the messages of a list of 100 members (five) and sends them to a
// Send that drops them (the transport's cost is extra). members/s is how
// many members it introduces per second of CPU; the pacing (introRate
// messages per second) bounds what it sends to 46,000 members per second.
func BenchmarkIntroduce(b *testing.B) {
	const n = 100
	seen := map[netip.Addr]Member{}
	for i := range n {
		var k Key
		k[0], k[1] = byte(i), 1
		seen[OverlayAddr(k)] = Member{PublicKey: k, Endpoint: netip.AddrPortFrom(netip.MustParseAddr("2001:db8::1"), uint16(1000+i))}
	}
	sent := 0
	in := NewIntroductions(IntroductionsConfig{Send: func(netip.Addr, []byte) error { sent++; return nil },
		Seen: func() map[netip.Addr]Member { return seen }, Log: slog.New(slog.DiscardHandler)})
	for a := range seen {
		in.askers[a] = time.Now()
	}
	to := slices.Collect(maps.Keys(seen))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		for _, msg := range listParts(in.members(seen), false, 1) {
			in.cfg.Send(to[i%n], msg)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "members/s")
	b.ReportMetric(float64(sent)/float64(b.N), "msgs/op")
}

// An introduced peer stays while an introducer lists it, then while it
// is heard from; it goes when an introducer leaves it out of a list
// settled in one of its epochs, when it falls silent for KeptHold, or
// when its introducers are no longer marked.
func TestIntroducedKept(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewWarp()
	hub := OverlayAddr(testKey(t).PublicKey())
	b, c := testKey(t).PublicKey(), testKey(t).PublicKey()
	var mu sync.Mutex
	heard := map[netip.Addr]time.Time{}
	intros := []netip.Addr{hub}
	in := NewIntroductions(IntroductionsConfig{Self: testKey(t).PublicKey(), Send: func(netip.Addr, []byte) error { return nil },
		Introducers: func() []netip.Addr { mu.Lock(); defer mu.Unlock(); return slices.Clone(intros) },
		LastRx:      func(a netip.Addr) time.Time { mu.Lock(); defer mu.Unlock(); return heard[a] },
		Changed:     func() {}, DirectChanged: func() {}, Log: slog.New(slog.DiscardHandler), Clock: clk})
	hear := func(keys ...Key) {
		mu.Lock()
		defer mu.Unlock()
		for _, k := range keys {
			heard[OverlayAddr(k)] = clk.Now()
		}
	}
	list := func(epoch uint32, keys ...Key) {
		var ms []Member
		for _, k := range slices.SortedFunc(slices.Values(keys), Key.Compare) {
			ms = append(ms, Member{PublicKey: k})
		}
		for _, msg := range listParts(ms, false, epoch) {
			in.receive(ctx, hub, msg)
		}
	}
	want := func(what string, keys ...Key) {
		t.Helper()
		in.expire(clk.Now())
		got := keysOf(in.Introduced(in.cfg.Introducers()))
		if !slices.Equal(got, slices.SortedFunc(slices.Values(keys), Key.Compare)) {
			t.Fatalf("%s: introduced %v, want %v", what, got, keys)
		}
	}
	list(1, b, c)
	want("listed", b, c)
	clk.Advance(settle)
	hear(b, c)
	list(1, b)
	want("c left out by a settled list", b)

	list(1, b, c)
	clk.Advance(settle)
	hear(b, c)
	list(2, c) // the hub restarted: b has not asked it yet
	want("a new epoch's first list", b, c)
	clk.Advance(settle / 2)
	hear(b, c)
	want("the new epoch settling", b, c)
	clk.Advance(settle / 2)
	hear(b, c)
	want("the new epoch settled", c)

	list(2, b, c)
	for range 3 { // the hub falls silent; b and c are heard from
		clk.Advance(IntroducedHold / 2)
		hear(b, c)
	}
	want("the hub silent", b, c)
	clk.Advance(KeptHold / 2)
	hear(b)
	want("c silent for half KeptHold", b, c)
	clk.Advance(KeptHold/2 + time.Second)
	hear(b)
	want("c silent past KeptHold", b)
	mu.Lock()
	intros = nil
	mu.Unlock()
	want("no introducer marked")
}

// FuzzParseIntro: no datagram makes parseIntro panic, and what it accepts
// encodes back to the same bytes, but for endpoints it takes as none and
// the reserved byte.
func FuzzParseIntro(f *testing.F) {
	k := Key{1, 2, 3}
	f.Add(appendIntro(nil, &introMessage{ask: true, list: 9}))
	f.Add(appendIntro(nil, &introMessage{same: true, list: 9, epoch: 3}))
	f.Add(appendIntro(nil, &introMessage{part: 0, parts: 1, list: 9, epoch: 3, members: []Member{
		{PublicKey: k, Endpoint: netip.MustParseAddrPort("[2001:db8::1]:51820")}, {PublicKey: k}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseIntro(b)
		if err != nil {
			return
		}
		again, err := parseIntro(appendIntro(nil, m))
		if err != nil {
			t.Fatalf("re-encoded message does not parse: %v", err)
		}
		if again.ask != m.ask || again.direct != m.direct || again.same != m.same || again.part != m.part || again.parts != m.parts ||
			again.list != m.list || again.epoch != m.epoch || !slices.Equal(again.members, m.members) {
			t.Fatalf("round trip: %+v\nfrom %+v", again, m)
		}
	})
}

// A hostile introducer is bounded: it introduces at most MaxIntroduced
// members (the rest counted), names no endpoint in the overlay,
// link-local, loopback, multicast or unspecified (counted), cannot
// override the endpoint another introducer gave first (counted), and the
// endpoints it names are tried at most maxTryingPerAddr at one address,
// maxTrying in all, each for tryFor.
func TestHostileIntroducerBounded(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewWarp()
	hub, evil := OverlayAddr(testKey(t).PublicKey()), OverlayAddr(testKey(t).PublicKey())
	b := testKey(t).PublicKey()
	epB := netip.MustParseAddrPort("[2001:db8:b::1]:51820")
	in := NewIntroductions(IntroductionsConfig{Self: testKey(t).PublicKey(), Send: func(netip.Addr, []byte) error { return nil },
		Introducers: func() []netip.Addr { return []netip.Addr{hub, evil} },
		LastRx:      func(netip.Addr) time.Time { return time.Time{} },
		Changed:     func() {}, DirectChanged: func() {}, Log: slog.New(slog.DiscardHandler), Clock: clk})
	send := func(from netip.Addr, ms []Member) {
		for _, msg := range listParts(ms, false, 1) {
			in.receive(ctx, from, msg)
		}
	}
	send(hub, []Member{{PublicKey: b, Endpoint: epB}})

	victim := netip.MustParseAddr("2001:db8:99::1")
	refused := []string{"[" + OverlayAddr(b).String() + "]:51820", "[fe80::1]:51820", "[::1]:51820", "[ff02::1]:51820",
		"[::]:51820", "127.0.0.1:51820", "224.0.0.1:51820", "0.0.0.0:51820", "169.254.1.1:51820", "[2001:db8::1]:0"}
	ms := []Member{{PublicKey: b, Endpoint: netip.MustParseAddrPort("[2001:db8:66::1]:51820")}}
	for i := range 5000 {
		var k Key
		binary.BigEndian.PutUint32(k[:], uint32(i)+1)
		ep := netip.AddrPortFrom(victim, uint16(1000+i))
		if i < len(refused) {
			ep = netip.MustParseAddrPort(refused[i])
		}
		ms = append(ms, Member{PublicKey: k, Endpoint: ep})
	}
	send(evil, ms)

	got := in.Introduced([]netip.Addr{hub, evil})
	if len(got) > MaxIntroduced || in.OverCap.Load() != 5001-MaxIntroduced {
		t.Fatalf("%d introduced, %d counted over the cap; want at most %d, and %d", len(got), in.OverCap.Load(), MaxIntroduced, 5001-MaxIntroduced)
	}
	if got[b].Endpoint != epB || in.EndpointConflicts.Load() != 1 {
		t.Fatalf("b at %v (%d conflicts counted); want the hub's %v, 1", got[b].Endpoint, in.EndpointConflicts.Load(), epB)
	}
	if n := in.EndpointsRefused.Load(); n != uint64(len(refused)) {
		t.Fatalf("%d endpoints refused, want %d", n, len(refused))
	}
	trying := func() (all, atVictim int) {
		for _, i := range in.Introduced([]netip.Addr{hub, evil}) {
			if i.Endpoint.IsValid() {
				all++
				if i.Endpoint.Addr() == victim {
					atVictim++
				}
			}
		}
		return all, atVictim
	}
	if all, v := trying(); all > maxTrying || v != maxTryingPerAddr {
		t.Fatalf("%d endpoints tried, %d at the victim; want at most %d, and %d", all, v, maxTrying, maxTryingPerAddr)
	}
	clk.Advance(tryFor)
	in.expire(clk.Now())
	// b, never heard from either, was tried as well.
	if all, v := trying(); all > maxTrying || v != maxTryingPerAddr || in.Unanswered.Load() != maxTryingPerAddr+1 {
		t.Fatalf("after tryFor: %d endpoints tried, %d at the victim, %d unanswered", all, v, in.Unanswered.Load())
	}
	unreached := 0
	for _, i := range in.Introduced([]netip.Addr{hub, evil}) {
		if i.Unreached {
			unreached++
		}
	}
	if unreached != maxTryingPerAddr+1 {
		t.Fatalf("%d endpoints forgotten, want %d", unreached, maxTryingPerAddr)
	}
}

// Direct lists are paced per peer (beyond directBurst at once, or
// directRate a second, dropped and counted), applied at most every
// directGap whatever a peer sends, and the parts of an incomplete list
// go after partsHold.
func TestDirectListsPacedAndExpire(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewWarp()
	p, q := OverlayAddr(testKey(t).PublicKey()), OverlayAddr(testKey(t).PublicKey())
	var applied int
	in := NewIntroductions(IntroductionsConfig{Self: testKey(t).PublicKey(), Send: func(netip.Addr, []byte) error { return nil },
		Introducers: func() []netip.Addr { return nil }, Relays: func() []netip.Addr { return nil },
		Changed: func() {}, DirectChanged: func() { applied++ }, Log: slog.New(slog.DiscardHandler), Clock: clk})
	const flood = 1000
	for i := range flood {
		var k Key
		binary.BigEndian.PutUint32(k[:], uint32(i)+1)
		in.receive(ctx, p, listParts([]Member{{PublicKey: k}}, true, 1)[0])
	}
	// (The clock runs with real time: a few tokens may come meanwhile.)
	if n := in.DirectOverRate.Load(); n > flood-directBurst || n < flood-directBurst-directRate || applied != 1 {
		t.Fatalf("a flood of %d direct lists: %d dropped, applied %d times; want about %d, once", flood, n, applied, flood-directBurst)
	}
	// Another peer's list is not held up by p's flood, but applied
	// with the next directGap.
	in.receive(ctx, q, listParts([]Member{{PublicKey: Key{9}}}, true, 1)[0])
	clk.Advance(directGap)
	in.expire(clk.Now())
	if applied != 2 || len(in.DirectOf()[q]) != 1 {
		t.Fatalf("q's list: applied %d times, q reaches %v", applied, in.DirectOf()[q])
	}
	// A list of two parts that never completes.
	var two []Member
	for i := range introPerMessage + 1 {
		var k Key
		binary.BigEndian.PutUint32(k[:], uint32(i)+5000)
		two = append(two, Member{PublicKey: k})
	}
	in.receive(ctx, q, listParts(two, true, 1)[0])
	if in.directs[q].parts == nil {
		t.Fatal("the first part was not kept")
	}
	clk.Advance(partsHold + time.Second)
	in.expire(clk.Now())
	if l := in.directs[q]; l == nil || l.parts != nil || len(in.DirectOf()[q]) != 1 {
		t.Fatalf("after partsHold: %+v", l)
	}
}
