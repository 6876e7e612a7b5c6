package simnet

import (
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var group = netip.MustParseAddr("ff1e::1234")

// recv waits up to timeout for a datagram with payload at n.
func recv(t *testing.T, n *Node, payload string, timeout time.Duration) bool {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case d := <-n.Received():
			if d.Payload == payload {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

func TestTwoNodesCarryMulticast(t *testing.T) {
	w := New(t)
	a, b := w.Add("a", Options{}), w.Add("b", Options{})
	Mesh(a, b)
	a.Start()
	b.Start()
	b.Join(group)
	start := time.Now()
	// A user starts sending at once and keeps sending: the first
	// datagrams may find no subscription yet.
	ok := Eventually(5*time.Second, func() bool {
		a.Send(group, 4242, "hello")
		return recv(t, b, "hello", 10*time.Millisecond)
	})
	if !ok {
		t.Fatalf("b received nothing; a: %+v", a.Status())
	}
	t.Logf("first datagram after %v", time.Since(start))
}

func TestStreamOverLossyLink(t *testing.T) {
	w := New(t)
	a, b := w.Add("a", Options{}), w.Add("b", Options{})
	Mesh(a, b)
	w.SetLinks("a", "b", Link{Loss: 0.10, Delay: 50 * time.Millisecond})
	a.Start()
	b.Start()
	b.Join(group)
	c := b.Count("s")
	Stream{Tag: "s", From: a, Dst: group, Port: 4242, Rate: 1000, Count: 5000}.Run(nil)
	time.Sleep(200 * time.Millisecond)
	tally := c.Stop()
	t.Logf("%v; underlay dropped %d", tally, w.Dropped.Load())
}
