package simnet

import (
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// advJunk returns n random datagrams shaped like WireGuard's four messages
// (initiation, response, cookie reply and transport data, at their
// sizes): what a stranger who knows no key can send.
func advJunk(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		typ := 1 + i%4
		b := make([]byte, [...]int{148, 92, 64, 1200}[typ-1])
		rand.Read(b)
		b[0], b[1], b[2], b[3] = byte(typ), 0, 0, 0
		out[i] = b
	}
	return out
}

// advFlood injects junk from a stranger's address to dst at rate datagrams
// a second, in bursts every 10 ms, until stop is closed, and returns how
// many it sent and how many reached dst's socket.
func advFlood(w *Network, dst netip.AddrPort, rate int, stop <-chan struct{}) (sent, arrived int) {
	pool := advJunk(64)
	from := netip.MustParseAddrPort("[2001:db8:ffff::66]:40000")
	const step = 10 * time.Millisecond
	t := time.NewTicker(step)
	defer t.Stop()
	start := time.Now()
	for {
		// A sender that fell behind (a loaded machine) catches up by at
		// most a step's worth more.
		due := min(int(time.Since(start)*time.Duration(rate)/time.Second)-sent, 2*rate*int(step)/int(time.Second))
		for range due {
			if w.Inject(from, dst, pool[sent%len(pool)]) {
				arrived++
			}
			sent++
		}
		select {
		case <-stop:
			return sent, arrived
		case <-t.C:
		}
	}
}

// A stranger who knows no key floods b's listen port with random
// datagrams shaped like WireGuard's messages, 50,000 a second, 50 times
// the stream a sends b meanwhile at 1000 datagrams/s: at least 90% of
// what reaches b of that stream gets through during the flood (all of it,
// on an idle machine), all of a second one after it, and nothing of the
// flood reaches b's programs. (The namespace test keeps what a flood does
// to the daemon's memory, a process's measure.)
func TestRandomUDPFlood(t *testing.T) {
	const (
		rate   = 50000
		during = 3000 // datagrams of the stream during the flood
		after  = 2000
	)
	w := New(t)
	a, b := w.Add("a", Options{}), w.Add("b", Options{})
	Mesh(a, b)
	a.Start()
	b.Start()
	g1, g2 := netip.MustParseAddr("ff1e::9"), netip.MustParseAddr("ff1e::a")
	b.Join(g1)
	b.Join(g2)
	// The flood is aimed at an established link (a handshake under a
	// flood is another matter), and the streams are counted whole from
	// their first datagrams: they start once a knows b listens.
	if !Eventually(10*time.Second, func() bool { return advSubscribed(a, b.Key, g1) && advSubscribed(a, b.Key, g2) }) {
		t.Fatalf("a has no subscription of b's: %+v", advPeer(t, a.Status(), b.Key))
	}
	c := b.Count("during")
	stop := make(chan struct{})
	var sent, arrived int
	flooded := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(flooded)
		sent, arrived = advFlood(w, b.Endpoint(), rate, stop)
	}()
	Stream{Tag: "during", From: a, Dst: g1, Port: advPort, Rate: 1000, Count: during}.Run(nil)
	close(stop)
	<-flooded
	took := time.Since(start)
	// What is still on its way crosses the network (in-process, in well
	// under a millisecond; the pause allows for a loaded machine).
	Eventually(time.Second, func() bool { return c.Tally().Delivered >= during })
	dur, others := c.Stop(), c.Others()
	dropped := w.Dropped.Load()
	c = b.Count("after")
	Stream{Tag: "after", From: a, Dst: g2, Port: advPort, Rate: 1000, Count: after}.Run(nil)
	Eventually(2*time.Second, func() bool { return c.Tally().Delivered >= after })
	aft := c.Stop()
	others = append(others, c.Others()...)
	st := b.Status()
	t.Logf("flood of %d datagrams in %v (%.0f/s), %d of them into b's socket; b's drops: %v; the underlay dropped %d",
		sent, took.Round(time.Millisecond), float64(sent)/took.Seconds(), arrived, advNonZero(st.Drops), dropped)
	t.Logf("a's stream during the flood: %v of %d; after it: %v of %d", dur, during, aft, after)
	// What b's socket drops, full while a loaded machine leaves b too
	// little time to read it (as a kernel's socket buffer drops), is
	// lost to a's stream and the flood alike; of the rest, a's stream
	// loses at most 10%.
	reached := 1 - float64(dropped)/float64(sent+during)
	if want := int(0.9 * reached * during); dur.Delivered < want || dur.Duplicates != 0 {
		t.Errorf("under the flood a's stream lost more than 10%% of what reached b: %v of %d, want %d", dur, during, want)
	}
	if aft.Delivered != after || aft.Duplicates != 0 {
		t.Errorf("after the flood a's stream is not whole: %v of %d", aft, after)
	}
	if len(others) > 0 {
		t.Errorf("%d datagrams other than a's streams reached b's programs, the first %+v", len(others), others[0])
	}
	if arrived == 0 {
		t.Errorf("none of the flood's %d datagrams reached b's socket", sent)
	}
	if len(st.Peers) != 1 {
		t.Errorf("b has %d peers after the flood, want a alone", len(st.Peers))
	}
}

// advChurnGroups returns the groups of TestGroupChurn's cycle c: n groups
// no other cycle has, so that state kept per group and not removed
// grows from one cycle to the next.
func advChurnGroups(c, n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range out {
		g := netip.MustParseAddr("ff1e::1:0:0").As16()
		binary.BigEndian.PutUint32(g[12:], uint32(c*n+i))
		out[i] = netip.AddrFrom16(g)
	}
	return out
}

// advLiveHeap returns the process's goroutines and its live heap, in bytes:
// the least of a few measurements, each after a garbage collection, so
// that buffers briefly in use count less.
func advLiveHeap() (goroutines int, heap uint64) {
	heap = ^uint64(0)
	for range 3 {
		// Two collections: the first leaves what sync.Pools held in
		// their victim caches, the second frees it.
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		heap = min(heap, ms.HeapAlloc)
		time.Sleep(20 * time.Millisecond)
	}
	return runtime.NumGoroutine(), heap
}

// A program on b joins 10,000 groups at once and leaves them, again and
// again, each time groups it never joined before: a, b's peer, holds
// b's 10,000 groups after each join and none after each leave, and
// neither node keeps goroutines or memory from one cycle to the next.
// (The namespace test measures the daemons' own heaps; here both nodes
// share the process, whose heap and goroutines are measured: the test
// runs alone, as another test's network, running in parallel, would count
// too.)
func TestGroupChurn(t *testing.T) {
	const groups = 10000
	w := NewAlone(t)
	a, b := w.Add("a", Options{}), w.Add("b", Options{})
	Mesh(a, b)
	a.Start()
	b.Start()
	held := func() int { return len(advPeer(t, a.Status(), b.Key).Groups) }
	cycle := func(c int) {
		all := advChurnGroups(c, groups)
		start := time.Now()
		b.JoinGroups(all)
		// The waits are for the subscriptions to reach a, which a user
		// waits for too; in-process they take well under a second.
		if !Eventually(20*time.Second, func() bool { return held() == groups }) {
			t.Fatalf("cycle %d: a holds %d of b's %d groups; b has %d local", c, held(), groups, len(b.Status().LocalGroups))
		}
		joined := time.Since(start)
		b.LeaveGroups(all)
		if !Eventually(20*time.Second, func() bool { return held() == 0 && len(b.Status().LocalGroups) == 0 }) {
			t.Fatalf("cycle %d: groups left: %d at a, %d local at b", c, held(), len(b.Status().LocalGroups))
		}
		t.Logf("cycle %d: joined in %v, left in %v", c, joined, time.Since(start)-joined)
	}
	cycle(0) // pools and maps reach their working size
	g0, h0 := advLiveHeap()
	const cycles = 10
	for c := range cycles {
		cycle(1 + c)
	}
	g, h := advLiveHeap()
	t.Logf("after %d more cycles (%d groups joined and left): goroutines %d -> %d, live heap %.1f -> %.1f MiB; drops: a %v, b %v",
		cycles, cycles*groups, g0, g, float64(h0)/(1<<20), float64(h)/(1<<20), advNonZero(a.Status().Drops), advNonZero(b.Status().Drops))
	// The heap varies by a few MiB from one measurement to the next
	// (wireguard-go's 64 KiB buffers in use, and maps that grow once as
	// distinct groups pass through them); 40 bytes kept per group would
	// be 4 MB, 100 bytes 10 MB.
	if g > g0+2 || h > h0+h0/10+(4<<20) {
		t.Errorf("grew: goroutines %d -> %d, live heap %d -> %d bytes", g0, g, h0, h)
	}
}
