package e2e

import (
	"context"
	"encoding/binary"
	"flag"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/control"
	"github.com/librecast/lcast/internal/netlab"
)

// soakResult is what a soak helper prints, as JSON.
type soakResult struct {
	Periods  int `json:"periods"`  // joined periods
	Received int `json:"received"` // datagrams, in all periods
	// Lost counts the datagrams missing between the first and the last
	// one a period received: lost while joined, after the join completed.
	Lost   int `json:"lost"`
	Dups   int `json:"duplicates"`
	NoData int `json:"periods_without_data"`
	// AfterLeave counts the overlay packets the site received from its
	// peers while no program was joined, from settle after each leave to
	// the next join; LeftMS is how long that was in all.
	AfterLeave int   `json:"packets_after_leave"`
	LeftMS     int64 `json:"left_ms"`
}

// soakHelper: "soak -group G%IFACE -sock PATH [-dur D] [-settle S]":
// joins G and leaves it again and again, at random (each joined and each
// left period 200-1200 ms), for D, checking each period's datagrams (load
// datagrams, numbered) and, through the daemon's control socket, the
// packets its site receives while left; prints a soakResult.
func soakHelper(args []string) int {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	group := fs.String("group", "", "multicast group and zone")
	sock := fs.String("sock", "", "the site's control socket")
	dur := fs.Duration("dur", 10*time.Second, "how long to churn")
	settle := fs.Duration("settle", 100*time.Millisecond, "time a leave takes to reach the sender's site")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	rxFromPeers := func() (int, error) {
		st, err := control.GetStatus(context.Background(), *sock)
		if err != nil {
			return 0, err
		}
		n := 0
		for _, p := range st.Peers {
			n += int(p.RxPackets)
		}
		return n, nil
	}
	random := func() time.Duration { return 200*time.Millisecond + rand.N(time.Second) }
	var res soakResult
	msgs := loadMessages()
	for end := time.Now().Add(*dur); time.Now().Before(end); {
		p, err := listenLoad(*group)
		if err != nil {
			return helperFail(err)
		}
		res.Periods++
		seen := map[uint64]bool{}
		var first, last uint64
		for until := time.Now().Add(random()); ; {
			p.SetReadDeadline(until)
			n, err := p.ReadBatch(msgs, 0)
			if err != nil {
				break
			}
			for _, m := range msgs[:n] {
				if m.N < loadHdrLen {
					continue
				}
				seq := binary.BigEndian.Uint64(m.Buffers[0])
				if seen[seq] {
					res.Dups++
					continue
				}
				if len(seen) == 0 || seq < first {
					first = seq
				}
				last = max(last, seq)
				seen[seq] = true
			}
		}
		p.Close() // the leave
		res.Received += len(seen)
		if len(seen) == 0 {
			res.NoData++
		} else {
			res.Lost += int(last-first+1) - len(seen)
		}
		time.Sleep(*settle)
		before, err := rxFromPeers()
		if err != nil {
			return helperFail(err)
		}
		left := random()
		time.Sleep(left)
		after, err := rxFromPeers()
		if err != nil {
			return helperFail(err)
		}
		res.AfterLeave += after - before
		res.LeftMS += left.Milliseconds()
	}
	return helperJSON(res)
}

// soakDuration is how long TestSoak churns: 10 s, or LCAST_SOAK (a Go
// duration, such as 10m) for the long mode.
func soakDuration(t *testing.T) time.Duration {
	if s := os.Getenv("LCAST_SOAK"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("LCAST_SOAK=%q: %v", s, err)
		}
		return d
	}
	return 10 * time.Second
}

// A stream of 1000 datagrams/s goes to a group that programs in two sites
// join and leave at random: while a program is joined, after its first
// datagram, none is lost and none duplicated; while none is, the site
// gets nothing but the peers' hellos.
func TestSoak(t *testing.T) {
	dur := soakDuration(t)
	m := newMesh(t, 3)
	// The soak measures joins and leaves in the steady state; how soon
	// after a start data flows is TestColdStart's (a period of 200 ms in
	// the first half second, before the race-built daemons' sessions are
	// up, got nothing once).
	m.waitConnected(t)
	const group = "ff1e::e"
	startHelperUntil(t, m.sites[0].Namespace, "", "blast", "-to", group+"%lc0", "-rate", "1000", "-dur", (dur + 5*time.Second).String())
	var churn []*netlab.Process
	for i := 1; i < 3; i++ {
		churn = append(churn, startHelperUntil(t, m.sites[i].Namespace, "", "soak", "-group", group+"%lc0", "-sock", m.nodes[i].sock, "-dur", dur.String()))
	}
	for i, p := range churn {
		if exited, err := p.Wait(dur + 30*time.Second); !exited || err != nil {
			t.Fatalf("site %d: exited %v, %v\n%s", i+2, exited, err, p.Output())
		}
		var r soakResult
		decodeHelperJSON(t, p, &r)
		left := float64(r.LeftMS) / 1000
		t.Logf("site %d over %v: %d joined periods, %d datagrams, %d lost while joined, %d duplicates, %d periods without data; %d packets from peers in %.1f s left",
			i+2, dur, r.Periods, r.Received, r.Lost, r.Dups, r.NoData, r.AfterLeave, left)
		// Hellos, the other site's state changes and acknowledgements: a few
		// per second; a leave that did not stop the stream would be hundreds.
		if r.Lost != 0 || r.Dups != 0 || r.NoData != 0 || float64(r.AfterLeave) > 10*left+10 {
			t.Errorf("site %d: %+v\n%s", i+2, r, m.diagnose(t))
		}
	}
}
