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
	"golang.org/x/time/rate"
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
	c := &introMessage{change: true, direct: true, part: 0, parts: 1, list: 8, epoch: 3, version: 1 << 40, members: m.members[:1], gone: []Key{k2}}
	if got, err := parseIntro(appendIntro(nil, c)); err != nil || !got.change || !got.direct || got.version != c.version || got.epoch != 3 ||
		!slices.Equal(got.gone, c.gone) || !slices.Equal(got.members, c.members) {
		t.Fatalf("a change's round trip: %+v %v", got, err)
	}
	var many []Member
	for range introPerMessage + 1 {
		many = append(many, m.members[0])
	}
	for name, bad := range map[string][]byte{
		"short":               b[:10],
		"other magic":         append([]byte("LCS\x03"), b[4:]...),
		"truncated member":    b[:len(b)-1],
		"trailing byte":       append(slices.Clone(b), 0),
		"part beyond parts":   appendIntro(nil, &introMessage{part: 2, parts: 2}),
		"members in an ask":   appendIntro(nil, &introMessage{ask: true, members: m.members}),
		"more parts than cap": appendIntro(nil, &introMessage{parts: maxListParts + 1}),
		"a change of no part": appendIntro(nil, &introMessage{change: true, version: 1}),
		"a change version 0":  appendIntro(nil, &introMessage{change: true, parts: 1}),
		"gone in a list":      appendIntro(nil, &introMessage{parts: 1, gone: []Key{k1}}),
		"an ask and same":     appendIntro(nil, &introMessage{ask: true, same: true}),
		"nothing at all":      appendIntro(nil, &introMessage{}),
		"beyond the payload":  appendIntro(nil, &introMessage{parts: 1, members: many}),
	} {
		if _, err := parseIntro(bad); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

// net wires Introductions together in-process, as the transport would:
// messages go from one node's Send to the other's HandleControl.
type introNet struct {
	clk    clock.Clock // the nodes' (nil: clock.Real)
	mu     sync.Mutex
	nodes  map[netip.Addr]*Introductions
	silent map[netip.Addr]bool // nodes whose messages are lost
}

func (n *introNet) send(from netip.Addr) func(netip.Addr, []byte) error {
	return func(to netip.Addr, msg []byte) error {
		n.mu.Lock()
		dst, cut := n.nodes[to], n.silent[from]
		n.mu.Unlock()
		if dst != nil && !cut {
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
	// The hub falls silent; a never heard from b directly, so does not
	// keep it.
	net.mu.Lock()
	net.silent = map[netip.Addr]bool{hub.addr: true}
	net.mu.Unlock()
	clk.Advance(IntroducedHold + time.Second)
	wait("the hub silent past the hold", func() bool { return len(a.in.Introduced(a.introducers())) == 0 })
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

// A list named unchanged renews the list it names, and no other (that
// one is asked for); parts of two lists do not mix; a change applies to
// the version before it only, and one whose result does not match its
// name has the whole list asked for.
func TestListTake(t *testing.T) {
	k1, k2, k3 := testKey(t).PublicKey(), testKey(t).PublicKey(), testKey(t).PublicKey()
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
	if changed, _ := l.take(msg(listParts(one, false, 5, 1)[0]), t0); !changed || l.id != listID(one) || l.version != 1 {
		t.Fatalf("first list: %+v", l)
	}
	t1 := t0.Add(time.Second)
	if _, ask := l.take(&introMessage{same: true, list: listID(two), epoch: 5, version: 1}, t1); !ask || !l.complete.Equal(t0) {
		t.Fatal("another list's name renewed the list, or was not asked for")
	}
	if _, ask := l.take(&introMessage{same: true, list: listID(one), epoch: 5, version: 1}, t1); ask || !l.complete.Equal(t1) {
		t.Fatal("its own name did not renew the list")
	}
	// Part 0 of a two-part list, then part 1 of another: neither is whole.
	l.take(&introMessage{part: 0, parts: 2, list: 7, members: two}, t1)
	if changed, _ := l.take(&introMessage{part: 1, parts: 3, list: 7, members: two}, t1); changed || l.id != listID(one) {
		t.Fatalf("mixed parts made a list: %+v", l)
	}
	sorted := func(ms ...Member) []Member {
		return slices.SortedFunc(slices.Values(ms), func(a, b Member) int { return a.PublicKey.Compare(b.PublicKey) })
	}
	ep := netip.MustParseAddrPort("[2001:db8::3]:51820")
	after := sorted(Member{PublicKey: k1}, Member{PublicKey: k3, Endpoint: ep})
	change := changeParts([]Member{{PublicKey: k3, Endpoint: ep}}, nil, false, 5, 2, listID(after))
	if changed, ask := l.take(msg(change[0]), t1); !changed || ask || !slices.Equal(l.members, after) || l.version != 2 {
		t.Fatalf("a change: changed %v, ask %v, %+v", changed, ask, l)
	}
	if changed, ask := l.take(msg(change[0]), t1); changed || ask {
		t.Fatal("a change applied twice")
	}
	gap := changeParts(nil, []Key{k1}, false, 5, 4, listID(after[1:]))
	if changed, ask := l.take(msg(gap[0]), t1); changed || !ask || l.version != 2 {
		t.Fatal("a change beyond the next was applied, or not asked for")
	}
	bad := changeParts(nil, []Key{k1}, false, 5, 3, 12345)
	if changed, ask := l.take(msg(bad[0]), t1); changed || !ask || l.version != 0 {
		t.Fatalf("a change not matching its name: changed %v, ask %v, version %d", changed, ask, l.version)
	}
}

// A publisher sends a receiver with nothing the whole list, one a few
// versions behind the changes since, one with all of it the list's
// name, and one beyond its log the whole list again.
func TestPublisher(t *testing.T) {
	// A receiver that has the empty list (version 0) gets the first
	// change, not the whole list.
	p0 := newPublisher(false, 9)
	if _, full := p0.messages(9, 0, true); full {
		t.Fatal("a receiver with version 0 of the empty list was sent it whole")
	}
	p0.set([]Member{{PublicKey: Key{1}}})
	if msgs, full := p0.messages(9, 0, false); full || len(msgs) != 1 || msgs[0][4]&introFlagChange == 0 {
		t.Fatalf("a receiver with version 0, after the first change: %d messages, full %v", len(msgs), full)
	}
	p := newPublisher(false, 9)
	var members []Member
	var l list
	now := time.Now()
	apply := func(msgs [][]byte) {
		t.Helper()
		for _, b := range msgs {
			m, err := parseIntro(b)
			if err != nil {
				t.Fatal(err)
			}
			if _, ask := l.take(m, now); ask {
				t.Fatalf("asked after %+v", m)
			}
		}
	}
	for i := range 3 * introPerMessage {
		var k Key
		binary.BigEndian.PutUint32(k[:], uint32(i)+1)
		members = append(members, Member{PublicKey: k, Endpoint: netip.AddrPortFrom(netip.MustParseAddr("2001:db8::1"), uint16(1000+i))})
	}
	p.set(members)
	msgs, full := p.messages(0, 0, true)
	if !full || len(msgs) != 3 {
		t.Fatalf("to a receiver with nothing: %d messages, full %v", len(msgs), full)
	}
	apply(msgs)
	for v := range 5 {
		members = slices.Clone(members)
		members[v].Endpoint = netip.AddrPortFrom(members[v].Endpoint.Addr(), 7)
		p.set(members)
	}
	msgs, full = p.messages(9, 1, true)
	if full || len(msgs) != 5 {
		t.Fatalf("to a receiver 5 versions behind: %d messages, full %v", len(msgs), full)
	}
	apply(msgs)
	if l.version != 6 || !slices.Equal(l.members, members) {
		t.Fatalf("after the changes: version %d", l.version)
	}
	if msgs, full := p.messages(9, 6, true); full || len(msgs) != 1 || msgs[0][4]&introFlagSame == 0 {
		t.Fatalf("to a receiver with all of it: %d messages, full %v", len(msgs), full)
	}
	if msgs, _ := p.messages(9, 6, false); len(msgs) != 0 {
		t.Fatal("sent a receiver with all of it, not asking, something")
	}
	if _, full := p.messages(8, 6, true); !full {
		t.Fatal("a receiver of another epoch was not sent the whole list")
	}
	for v := range maxLogMsgs + 1 {
		members = slices.Clone(members)
		members[0].Endpoint = netip.AddrPortFrom(members[0].Endpoint.Addr(), uint16(100+v))
		p.set(members)
	}
	if _, full := p.messages(9, 6, true); !full || p.logMsgs > maxLogMsgs {
		t.Fatalf("a receiver beyond the log: full %v; the log holds %d messages", full, p.logMsgs)
	}
}

// BenchmarkIntroduceChange measures what one change costs a hub of
// 10,000 members, all of which asked and have its list: each op moves
// one member (a new endpoint), finds the change (tell), and works out and
// sends every asker its messages (the sender's next) to a Send that drops
// them: hub CPU per change, without the transport's cost or the pacing
// (introRate: 10,000 messages take 0.5 s). msgs/op is the messages per
// change (one per member), bytes/msg their size (within maxMsgPayload).
func BenchmarkIntroduceChange(b *testing.B) {
	const n = 10000
	seen := map[netip.Addr]Member{}
	for i := range n {
		var k Key
		binary.BigEndian.PutUint32(k[:], uint32(i)+1)
		seen[OverlayAddr(k)] = Member{PublicKey: k, Endpoint: netip.AddrPortFrom(netip.MustParseAddr("2001:db8::1"), uint16(1000+i))}
	}
	sent, bytes := 0, 0
	in := NewIntroductions(IntroductionsConfig{Send: func(_ netip.Addr, m []byte) error { sent++; bytes += len(m); return nil },
		Seen: func() map[netip.Addr]Member { return seen }, Log: slog.New(slog.DiscardHandler)})
	now := time.Now()
	for a := range seen {
		in.askers[a] = now
	}
	in.tell()
	for a := range seen {
		in.subs[a] = &sub{epoch: in.pub.epoch, has: in.pub.version}
	}
	in.queue = nil
	addrs := slices.Collect(maps.Keys(seen))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		a := addrs[i%n]
		m := seen[a]
		m.Endpoint = netip.AddrPortFrom(m.Endpoint.Addr(), uint16(20000+i%20000))
		seen[a] = m
		in.tell()
		for {
			to, msgs, ok := in.next()
			if !ok {
				break
			}
			for _, msg := range msgs {
				in.cfg.Send(to, msg)
			}
		}
	}
	b.ReportMetric(float64(sent)/float64(b.N), "msgs/op")
	b.ReportMetric(float64(bytes)/float64(max(1, sent)), "bytes/msg")
}

// An introduced peer stays while an introducer lists it, then while it
// is heard from; it goes when an introducer leaves it out of a list
// settled in one of its epochs, when it falls silent for KeptHold, or
// when its introducers are no longer marked.
func TestIntroducedKept(t *testing.T) {
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
		for _, msg := range listParts(ms, false, epoch, 1) {
			in.receive(hub, msg)
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
	hear(b, c)
	list(1, b)
	want("c removed within the hub's epoch, at once", b)
	list(1, b, c)
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
	for _, c := range changeParts([]Member{{PublicKey: k, Endpoint: netip.MustParseAddrPort("192.0.2.1:4000")}}, []Key{{9}}, true, 3, 2, 7) {
		f.Add(c)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseIntro(b)
		if err != nil {
			return
		}
		again, err := parseIntro(appendIntro(nil, m))
		if err != nil {
			t.Fatalf("re-encoded message does not parse: %v", err)
		}
		if again.ask != m.ask || again.direct != m.direct || again.same != m.same || again.change != m.change || again.part != m.part ||
			again.parts != m.parts || again.list != m.list || again.epoch != m.epoch || again.version != m.version ||
			!slices.Equal(again.members, m.members) || !slices.Equal(again.gone, m.gone) {
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
	clk := clock.NewWarp()
	hub, evil := OverlayAddr(testKey(t).PublicKey()), OverlayAddr(testKey(t).PublicKey())
	b := testKey(t).PublicKey()
	epB := netip.MustParseAddrPort("[2001:db8:b::1]:51820")
	in := NewIntroductions(IntroductionsConfig{Self: testKey(t).PublicKey(), Send: func(netip.Addr, []byte) error { return nil },
		Introducers: func() []netip.Addr { return []netip.Addr{hub, evil} },
		LastRx:      func(netip.Addr) time.Time { return time.Time{} },
		Changed:     func() {}, DirectChanged: func() {}, Log: slog.New(slog.DiscardHandler), Clock: clk})
	send := func(from netip.Addr, ms []Member) {
		for _, msg := range listParts(ms, false, 1, 1) {
			in.receive(from, msg)
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
// directGap whatever a peer sends (but for the change of a quiet peer,
// TestDirectChangeOfQuietPeerAtOnce), and the parts of an incomplete list
// go after partsHold.
func TestDirectListsPacedAndExpire(t *testing.T) {
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
		in.receive(p, listParts([]Member{{PublicKey: k}}, true, 1, 1)[0])
	}
	// (The clock runs with real time: a few tokens may come meanwhile.)
	if n := in.DirectOverRate.Load(); n > flood-directBurst || n < flood-directBurst-directRate || applied != 1 {
		t.Fatalf("a flood of %d direct lists: %d dropped, applied %d times; want about %d, once", flood, n, applied, flood-directBurst)
	}
	// Another peer's list is not held up by p's flood: q was quiet, so
	// its list is applied at once (and with it the last of p's that
	// came), and nothing is left for the next directGap.
	in.receive(q, listParts([]Member{{PublicKey: Key{9}}}, true, 1, 1)[0])
	if applied != 2 || len(in.DirectOf()[q]) != 1 {
		t.Fatalf("q's list: applied %d times, q reaches %v", applied, in.DirectOf()[q])
	}
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
	in.receive(q, listParts(two, true, 1, 1)[0])
	if in.directs[q].parts == nil {
		t.Fatal("the first part was not kept")
	}
	clk.Advance(partsHold + time.Second)
	in.expire(clk.Now())
	if l := in.directs[q]; l == nil || l.parts != nil || len(in.DirectOf()[q]) != 1 {
		t.Fatalf("after partsHold: %+v", l)
	}
}

// The change of a peer whose direct list had not changed for directGap
// is applied at once, though another peer's was just applied: two homes
// that meet directly through their hub tell it within milliseconds of
// each other, and the hub stops relaying to each at once, not the second
// up to directGap later. Changes of peers that change again within
// directGap wait for the gap, and quiet peers' changes are applied at
// once at most directAtOnce at a time (beyond what the gap allows).
func TestDirectChangeOfQuietPeerAtOnce(t *testing.T) {
	clk := clock.NewWarp()
	var applied int
	var in *Introductions
	var router map[netip.Addr][]netip.Addr // what was applied last, as a router has it
	in = NewIntroductions(IntroductionsConfig{Self: testKey(t).PublicKey(), Send: func(netip.Addr, []byte) error { return nil },
		Introducers: func() []netip.Addr { return nil }, Relays: func() []netip.Addr { return nil },
		Changed: func() {}, DirectChanged: func() { applied++; router = in.DirectOf() }, Log: slog.New(slog.DiscardHandler), Clock: clk})
	hub := testKey(t).PublicKey()
	keys := make([]Key, directAtOnce+3)
	addrs := make([]netip.Addr, len(keys))
	for i := range keys {
		keys[i] = testKey(t).PublicKey()
		addrs[i] = OverlayAddr(keys[i])
	}
	home1, home2 := addrs[0], addrs[1]
	// say has the peer at i say it reaches members directly, as version
	// of its list.
	say := func(i int, version uint64, members ...Key) {
		t.Helper()
		var list []Member
		for _, k := range slices.SortedFunc(slices.Values(members), Key.Compare) {
			list = append(list, Member{PublicKey: k})
		}
		for _, msg := range listParts(list, true, uint32(i)+1, version) {
			in.receive(addrs[i], msg)
		}
	}
	reaches := func(from, to netip.Addr) bool { return slices.Contains(router[from], to) }

	// The homes reach the hub directly, some milliseconds apart.
	say(0, 1, hub)
	say(1, 1, hub)
	if applied != 2 || !reaches(home1, OverlayAddr(hub)) || !reaches(home2, OverlayAddr(hub)) {
		t.Fatalf("the homes' first lists: applied %d times, want 2; %v", applied, router)
	}
	// Then, a while later, each other, a few milliseconds apart: each is
	// applied as it comes.
	clk.Advance(time.Second)
	say(0, 2, hub, keys[1])
	if applied != 3 || !reaches(home1, home2) {
		t.Fatalf("home1 reaches home2: applied %d times, want 3; %v", applied, router)
	}
	clk.Advance(7 * time.Millisecond)
	say(1, 2, hub, keys[0])
	if applied != 4 || !reaches(home2, home1) {
		t.Fatalf("home2 reaches home1, 7 ms after home1 said it reaches home2: applied %d times, want 4 at once; %v", applied, router)
	}
	// home2 changes again within directGap: that waits for the gap.
	clk.Advance(10 * time.Millisecond)
	say(1, 3, hub)
	if applied != 4 || !reaches(home2, home1) {
		t.Fatalf("home2's second change within directGap: applied %d times, want it to wait; %v", applied, router)
	}
	clk.Advance(directGap)
	in.expire(clk.Now())
	if applied != 5 || reaches(home2, home1) {
		t.Fatalf("home2's second change after directGap: applied %d times, want 5; %v", applied, router)
	}

	// Quiet peers changing at the same moment: one goes with the gap,
	// directAtOnce more at once (the allowance is full again after a
	// quiet second), the rest with the next gap. (The clock also runs
	// with real time: if this took long, a token more came.)
	clk.Advance(time.Second)
	began, before := time.Now(), applied
	for i := range keys {
		say(i, 10, keys[(i+1)%len(keys)])
	}
	if n := applied - before; n != 1+directAtOnce && (time.Since(began) < directGap/2 || n != 2+directAtOnce) {
		t.Fatalf("%d quiet peers changing at once: applied %d times, want %d", len(keys), n, 1+directAtOnce)
	}
	clk.Advance(directGap)
	in.expire(clk.Now())
	for i := range keys {
		if !reaches(addrs[i], OverlayAddr(keys[(i+1)%len(keys)])) {
			t.Fatalf("after directGap, peer %d's change is not applied: %v", i, router)
		}
	}

	// A peer that changes its list again and again takes no more than
	// the gap: its changes are never quiet, and leave the allowance to
	// quiet peers.
	clk.Advance(time.Second)
	before = applied
	for v := range uint64(100) {
		say(0, 20+v, keys[1+int(v)%2])
		clk.Advance(time.Millisecond)
	}
	if n := applied - before; n != 1 {
		t.Fatalf("100 changes of one peer within 100 ms: applied %d times, want 1", n)
	}
	say(2, 20, hub)
	if n := applied - before; n != 2 || !reaches(addrs[2], OverlayAddr(hub)) {
		t.Fatalf("a quiet peer's change after another's flips: applied %d times, want 2 (at once)", n)
	}
}

// fakeMembers returns n members with keys and endpoints of their own, by
// overlay address.
func fakeMembers(n int) map[netip.Addr]Member {
	seen := map[netip.Addr]Member{}
	for i := range n {
		var k Key
		binary.BigEndian.PutUint32(k[:], uint32(i)+1)
		k[31] = 0xfe
		seen[OverlayAddr(k)] = Member{PublicKey: k, Endpoint: netip.AddrPortFrom(netip.MustParseAddr("2001:db8::1"), uint16(1000+i))}
	}
	return seen
}

// Pacing never blocks the loop that receives: with the sender held up by
// its pace, asks from a thousand members are all taken at once.
func TestPacingNeverBlocksReceive(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	seen := fakeMembers(1000)
	in := NewIntroductions(IntroductionsConfig{Self: testKey(t).PublicKey(), Send: func(netip.Addr, []byte) error { return nil },
		Lists: func(a netip.Addr) bool { _, ok := seen[a]; return ok }, Seen: func() map[netip.Addr]Member { return seen },
		Introducers: func() []netip.Addr { return nil }, Relays: func() []netip.Addr { return nil },
		Changed: func() {}, DirectChanged: func() {}, Log: slog.New(slog.DiscardHandler)})
	in.pace = rate.NewLimiter(10, 1) // each asker's whole list (44 messages) takes 4 s
	wg.Go(func() { in.Run(ctx) })
	ask := appendIntro(nil, &introMessage{ask: true})
	for a := range seen {
		in.HandleControl(a, ask)
	}
	ok := Eventually(5*time.Second, func() bool {
		in.mu.Lock()
		defer in.mu.Unlock()
		return len(in.askers) == len(seen)
	})
	if !ok || in.InboxFull.Load() != 0 {
		in.mu.Lock()
		defer in.mu.Unlock()
		t.Fatalf("%d of %d asks taken, %d dropped for a full inbox", len(in.askers), len(seen), in.InboxFull.Load())
	}
}

// Eventually waits until cond holds, and reports whether it did within
// timeout.
func Eventually(timeout time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// A hub of 10,000 members works: a member that asks gets the whole list
// (no message beyond maxMsgPayload, none malformed) and takes
// MaxIntroduced of it, the rest counted; then a change of one member
// costs the hub one message per member, and reaches the members.
func TestHubOfTenThousand(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	net := &introNet{nodes: map[netip.Addr]*Introductions{}}
	hub, a := net.add(t), net.add(t)
	var mu sync.Mutex
	sent, biggest := map[netip.Addr]int{}, 0
	send := hub.in.cfg.Send
	hub.in.cfg.Send = func(to netip.Addr, msg []byte) error {
		mu.Lock()
		sent[to]++
		biggest = max(biggest, len(msg))
		mu.Unlock()
		return send(to, msg)
	}
	seen := fakeMembers(10000)
	seen[a.addr] = Member{PublicKey: a.key, Endpoint: netip.MustParseAddrPort("[2001:db8:a::1]:51820")}
	hub.listed = seen
	a.intros = []netip.Addr{hub.addr}
	// The members but a asked, and have the list (version 1).
	now := time.Now()
	for addr := range seen {
		if addr != a.addr {
			hub.in.askers[addr] = now
		}
	}
	hub.in.tell()
	for addr := range hub.in.askers {
		hub.in.subs[addr] = &sub{epoch: hub.in.pub.epoch, has: hub.in.pub.version}
	}
	hub.in.queue = nil
	for _, n := range []*introNode{hub, a} {
		wg.Go(func() { n.in.Run(ctx) })
	}
	if !Eventually(20*time.Second, func() bool { return len(a.in.Introduced(a.introducers())) == MaxIntroduced }) {
		t.Fatalf("a was introduced %d members", len(a.in.Introduced(a.introducers())))
	}
	// The others are told a came: wait until the hub has sent it all.
	quiet := func() bool {
		hub.in.mu.Lock()
		defer hub.in.mu.Unlock()
		return len(hub.in.queue) == 0 && len(hub.in.misc) == 0 && hub.in.pub.version == 2
	}
	if !Eventually(20*time.Second, quiet) {
		t.Fatal("the hub did not tell the others of a")
	}
	time.Sleep(100 * time.Millisecond) // the last message in flight
	mu.Lock()
	toA := sent[a.addr]
	mu.Unlock()
	if a.in.Malformed.Load() != 0 || a.in.OverCap.Load() != 10000-MaxIntroduced || biggest > maxMsgPayload {
		t.Fatalf("a: %d malformed, %d over the cap; the biggest message %d bytes", a.in.Malformed.Load(), a.in.OverCap.Load(), biggest)
	}
	// One member moves: every asker (a included) is sent one message.
	mu.Lock()
	clear(sent)
	mu.Unlock()
	var moved Member
	for addr, m := range seen {
		if _, ok := a.in.Introduced(a.introducers())[m.PublicKey]; ok {
			moved = m
			moved.Endpoint = netip.MustParseAddrPort("[2001:db8:77::1]:4000")
			hub.mu.Lock()
			seen[addr] = moved
			hub.mu.Unlock()
			break
		}
	}
	start := time.Now()
	if !Eventually(20*time.Second, func() bool { return a.in.Introduced(a.introducers())[moved.PublicKey].Endpoint == moved.Endpoint }) {
		t.Fatal("the change did not reach a")
	}
	took := time.Since(start)
	if !Eventually(20*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(sent) == 10001 }) {
		t.Fatalf("the change went to %d members", len(sent))
	}
	mu.Lock()
	defer mu.Unlock()
	total := 0
	for _, n := range sent {
		total += n
	}
	t.Logf("a took the whole list of 10,001 in %d messages; a change reached a in %v and cost %d messages for 10,001 members; the biggest message %d bytes",
		toA, took.Round(time.Millisecond), total, biggest)
	if total > 10001+10 {
		t.Errorf("a change of one member cost %d messages", total)
	}
}

// FuzzListTake: no sequence of messages makes a list panic or hold more
// than it may.
func FuzzListTake(f *testing.F) {
	k := Key{1}
	base := listParts([]Member{{PublicKey: k}}, false, 3, 1)[0]
	for _, c := range changeParts([]Member{{PublicKey: Key{2}}}, []Key{k}, false, 3, 2, 7) {
		f.Add(base, c)
	}
	f.Add(base, appendIntro(nil, &introMessage{same: true, epoch: 3, version: 1, list: listID([]Member{{PublicKey: k}})}))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		l := list{limit: 4}
		for _, raw := range [][]byte{a, b, a} {
			if m, err := parseIntro(raw); err == nil {
				l.take(m, time.Now())
			}
			if len(l.members) > l.max() || l.held > l.max() {
				t.Fatalf("%d members, %d held, beyond %d", len(l.members), l.held, l.max())
			}
		}
	})
}

// An introducer that flips its list makes the node apply its peers at
// most every changedGap.
func TestFlippingIntroducerPaced(t *testing.T) {
	clk := clock.NewWarp()
	hub := OverlayAddr(testKey(t).PublicKey())
	applied := 0
	in := NewIntroductions(IntroductionsConfig{Self: testKey(t).PublicKey(), Send: func(netip.Addr, []byte) error { return nil },
		Introducers: func() []netip.Addr { return []netip.Addr{hub} }, LastRx: func(netip.Addr) time.Time { return time.Time{} },
		Changed: func() { applied++ }, DirectChanged: func() {}, Log: slog.New(slog.DiscardHandler), Clock: clk})
	lists := [][]Member{{{PublicKey: Key{1}}}, {{PublicKey: Key{2}}}}
	for i := range 100 {
		for _, msg := range listParts(lists[i%2], false, 1, uint64(i)+1) {
			in.receive(hub, msg)
		}
	}
	if applied != 1 {
		t.Fatalf("100 flips applied %d times at once, want 1", applied)
	}
	clk.Advance(changedGap)
	in.expire(clk.Now())
	if applied != 2 {
		t.Fatalf("after changedGap: applied %d times, want 2", applied)
	}
}
