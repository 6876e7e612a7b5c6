package simnet

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Stream is a numbered stream of datagrams a program on one node sends
// while programs on others count what arrives.
type Stream struct {
	Tag   string
	From  *Node
	Dst   netip.Addr
	Port  uint16
	Rate  int // datagrams a second
	Count int
}

// Run sends the stream, paced in steps of 10 ms, and returns when it has
// sent the last datagram or stop is closed.
func (s Stream) Run(stop <-chan struct{}) {
	const step = 10 * time.Millisecond
	perStep := max(1, s.Rate*int(step)/int(time.Second))
	t := time.NewTicker(step)
	defer t.Stop()
	for seq := 0; seq < s.Count; {
		for range perStep {
			if seq == s.Count {
				break
			}
			s.From.Send(s.Dst, s.Port, fmt.Sprintf("%s %d", s.Tag, seq))
			seq++
		}
		select {
		case <-t.C:
		case <-stop:
			return
		}
	}
}

// Tally is what one node received of a stream.
type Tally struct {
	Delivered  int // distinct datagrams
	Duplicates int
	// LongestGap is the longest time between two datagrams of the stream
	// arriving, from the first to the last.
	LongestGap time.Duration
	First      time.Time
	Last       time.Time
	seen       map[int]bool
}

func (t Tally) String() string {
	return fmt.Sprintf("%d delivered, %d duplicates, longest gap %v", t.Delivered, t.Duplicates, t.LongestGap)
}

// Counter counts, at one node, the datagrams of streams with the tag
// prefix, in its own goroutine until Stop.
type Counter struct {
	n      *Node
	tag    string
	mu     sync.Mutex
	tally  Tally
	others []Datagram // datagrams of no stream of the tag, the first 100
	stop   chan struct{}
	done   chan struct{}
}

// Count starts counting the datagrams of the stream tagged tag that
// arrive at n.
func (n *Node) Count(tag string) *Counter {
	c := &Counter{n: n, tag: tag + " ", tally: Tally{seen: map[int]bool{}}, stop: make(chan struct{}), done: make(chan struct{})}
	go c.run()
	return c
}

func (c *Counter) run() {
	defer close(c.done)
	for {
		select {
		case d := <-c.n.Received():
			c.take(d, time.Now())
		case <-c.stop:
			return
		}
	}
}

func (c *Counter) take(d Datagram, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rest, ok := strings.CutPrefix(d.Payload, c.tag)
	seq, err := strconv.Atoi(rest)
	if !ok || err != nil {
		if len(c.others) < 100 {
			c.others = append(c.others, d)
		}
		return
	}
	t := &c.tally
	if t.seen[seq] {
		t.Duplicates++
		return
	}
	t.seen[seq] = true
	t.Delivered++
	if t.First.IsZero() {
		t.First = now
	} else {
		t.LongestGap = max(t.LongestGap, now.Sub(t.Last))
	}
	t.Last = now
}

// Tally returns what has been counted so far.
func (c *Counter) Tally() Tally {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tally
}

// Others returns the datagrams that were not of the stream.
func (c *Counter) Others() []Datagram {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Datagram(nil), c.others...)
}

// Stop stops counting and returns the tally.
func (c *Counter) Stop() Tally {
	close(c.stop)
	<-c.done
	return c.Tally()
}
