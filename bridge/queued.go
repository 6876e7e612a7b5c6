package bridge

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/librecast/lcast/router"
)

// PeerQueueLimit is how many packets the bridge lets wait in the transport
// for one peer, read but not yet sent, and QueueLimit how many for all
// peers together. Beyond them, packets are dropped (router.DropPeerQueue);
// a peer whose link is slow does not hold up the others. They bound the
// daemon's memory and the delay it adds under overload: the transport
// keeps each waiting packet in a buffer of 64 KiB, and its own queues would
// hold hundreds of thousands of packets. A peer's limit absorbs a stall of
// about 13 ms at 80,000 packets/s; 256 lost 0.3% of such a stream on this
// machine, 1024 nothing.
const (
	PeerQueueLimit = 1024
	QueueLimit     = 4096
)

// queuedExpiry is how long a packet the transport never reported sent counts
// as waiting. The transport drops some packets without sending them (for a
// peer with no session yet, beyond its staging queue); after this long they
// are forgotten, so that they do not hold the peer's queue full.
const queuedExpiry = 250 * time.Millisecond

// queued tracks the packets handed to the transport until it sends them.
// The transport reads each packet into a buffer of its own, encrypts it in
// place and sends that buffer, so a packet is known by the address of its
// buffer's first byte, from Port.Read to Port.Sent. Each peer's count is
// its router.Peer's Waiting.
type queued struct {
	total atomic.Int32 // packets waiting, for every peer
	mu    sync.Mutex
	bufs  map[*byte]queuedPacket
	swept time.Time // when entries older than queuedExpiry were last removed
}

type queuedPacket struct {
	peer *router.Peer
	at   time.Time
}

// handed is a packet Port.Read returned, before queued records it.
type handed struct {
	buf  *byte
	peer *router.Peer
}

func (q *queued) init() {
	q.bufs = map[*byte]queuedPacket{}
	q.swept = time.Now()
}

// admit reports whether another packet may wait in the transport for the
// peer p, and counts it if so.
func (q *queued) admit(p *router.Peer) bool {
	if p.Waiting.Load() >= PeerQueueLimit || q.total.Load() >= QueueLimit {
		return false
	}
	p.Waiting.Add(1)
	q.total.Add(1)
	return true
}

// release ends the wait of one of p's packets.
func (q *queued) release(p *router.Peer) {
	p.Waiting.Add(-1)
	q.total.Add(-1)
}

// record notes packets the transport read, each already counted (admit)
// when it was routed, and forgets those waiting longer than queuedExpiry,
// at most once per queuedExpiry.
func (q *queued) record(now time.Time, pkts []handed) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, h := range pkts {
		if old, ok := q.bufs[h.buf]; ok {
			// The buffer was dropped by the transport and reused.
			q.release(old.peer)
		}
		q.bufs[h.buf] = queuedPacket{peer: h.peer, at: now}
	}
	if now.Sub(q.swept) < queuedExpiry {
		return
	}
	q.swept = now
	for b, p := range q.bufs {
		if now.Sub(p.at) >= queuedExpiry {
			q.release(p.peer)
			delete(q.bufs, b)
		}
	}
}

// sent forgets the packets in bufs, which the transport sends.
func (q *queued) sent(bufs [][]byte) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		if p, ok := q.bufs[&b[0]]; ok {
			q.release(p.peer)
			delete(q.bufs, &b[0])
		}
	}
}
