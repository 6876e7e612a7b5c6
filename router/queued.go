package router

import (
	"sync"
	"time"
)

// PeerQueueLimit is how many packets the router lets wait in the transport
// for one peer, read but not yet sent. Beyond it, packets for that peer are
// dropped (DropPeerQueueFull) while other peers' go on. It bounds the
// daemon's memory and the latency it adds under overload: the transport
// keeps each waiting packet in a buffer of 64 KiB, and its own queues hold
// hundreds of thousands of packets.
const PeerQueueLimit = 256

// queuedExpiry is how long a packet the transport never reported sent counts
// as waiting. The transport drops some packets without sending them (for a
// peer with no session yet, beyond its staging queue); after this long they
// are forgotten, so that they do not hold the peer's queue full.
const queuedExpiry = 250 * time.Millisecond

// queued tracks the packets handed to the transport until it sends them.
// The transport reads each packet into a buffer of its own, encrypts it in
// place and sends that buffer, so a packet is known by the address of its
// buffer's first byte, from Port.Read to Port.Sent.
type queued struct {
	mu    sync.Mutex
	bufs  map[*byte]queuedPacket
	swept time.Time // when entries older than queuedExpiry were last removed
}

type queuedPacket struct {
	peer *routerPeer
	at   time.Time
}

// handed is a packet Port.Read returned, before queued records it.
type handed struct {
	buf  *byte
	peer *routerPeer
}

func (q *queued) init() {
	q.bufs = map[*byte]queuedPacket{}
	q.swept = time.Now()
}

// add records packets the transport read. Each one's peer was already
// counted (routerPeer.queued) when it was routed.
func (q *queued) add(now time.Time, pkts []handed) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, h := range pkts {
		if old, ok := q.bufs[h.buf]; ok {
			// The buffer was dropped by the transport and reused.
			old.peer.queued.Add(-1)
		}
		q.bufs[h.buf] = queuedPacket{peer: h.peer, at: now}
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
			p.peer.queued.Add(-1)
			delete(q.bufs, &b[0])
		}
	}
}

// expire forgets the packets waiting longer than queuedExpiry, at most once
// per queuedExpiry.
func (q *queued) expire(now time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if now.Sub(q.swept) < queuedExpiry {
		return
	}
	q.swept = now
	for b, p := range q.bufs {
		if now.Sub(p.at) >= queuedExpiry {
			p.peer.queued.Add(-1)
			delete(q.bufs, b)
		}
	}
}
