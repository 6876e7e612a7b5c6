package bridge

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"github.com/librecast/lcast/router"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
)

// The transport (wireguard-go) keeps every packet it holds in a buffer of
// 64 KiB, and its own queues are bounded in batches, not bytes: left to
// itself it would hold hundreds of thousands of packets. These limits bound
// how many it holds on lcast's behalf, and so the daemon's memory and the
// delay it adds under overload.
//
// PeerQueueLimit is how many packets may wait in the transport for one
// peer, read but not yet sent, and QueueLimit how many for all peers
// together; beyond them, packets are dropped (router.DropPeerQueue), and a
// peer whose link is slow does not hold up the others. A peer's limit
// absorbs a stall of about 6 ms at 80,000 packets/s.
//
// ReceiveLimit is how many datagrams from the underlay may be in the
// transport, received but not yet written to lc0 (or dropped by it), and
// HandshakeLimit how many handshake messages; beyond them a datagram is
// dropped as it arrives (router.DropTransportFull), as the kernel drops
// those its socket has no room for. Together they bound the transport's
// buffers for packets in flight to (QueueLimit + ReceiveLimit +
// HandshakeLimit) x 64 KiB, 68 MiB (see MemoryBound).
const (
	PeerQueueLimit = 256
	QueueLimit     = 512
	ReceiveLimit   = 512
	HandshakeLimit = 64
)

// bufferSize is the size of each of the transport's packet buffers.
const bufferSize = device.MaxMessageSize

// MemoryBound is the most memory the packets in flight take: the
// transport's buffers for the packets the limits above admit, the buffers
// its goroutines read into (a batch for each of its two receiving
// goroutines and for the one reading from the port), and the bridge's own
// batches from lc0. With lc0's MTU of 1364 it is 96 MiB; the rest of the
// daemon (tables, subscriptions, sessions) takes a few MiB more.
const MemoryBound = (QueueLimit+ReceiveLimit+HandshakeLimit+2*conn.IdealBatchSize+transportBatch)*bufferSize + maxBytesInFlight

// heldExpiry is how long a packet the transport never reported counts as
// held. The transport drops some packets without sending or writing them
// (for a peer with no session yet, beyond its staging queue; a datagram it
// cannot decrypt), and returns their buffers to a pool, which may free them;
// after this long they are forgotten, so that they do not hold a limit
// full. A buffer the transport hands out again is forgotten at once.
const heldExpiry = 250 * time.Millisecond

// held tracks the packets the transport holds on lcast's behalf: those Read
// handed it, until it sends them, and those it received, until it writes
// them to the port. The transport reads each into a buffer of its own and
// works in place, so a packet is known by the address of its buffer's
// first byte. Each peer's count of packets to send is its router.Peer's
// Waiting.
type held struct {
	sending    atomic.Int32 // packets to send, for every peer
	receiving  atomic.Int32 // datagrams received, not yet written
	handshakes atomic.Int32 // handshake messages received, not yet handled
	mu         sync.Mutex
	bufs       map[*byte]heldPacket
	swept      time.Time // when entries older than heldExpiry were last removed
}

// heldPacket is a packet the transport holds: one to send to peer, or one
// received (peer nil), a handshake message if handshake.
type heldPacket struct {
	peer      *router.Peer
	handshake bool
	at        time.Time
}

// handed is a packet Port.Read returned, before held records it.
type handed struct {
	buf  *byte
	peer *router.Peer
}

func (h *held) init() {
	h.bufs = map[*byte]heldPacket{}
	h.swept = time.Now()
}

// admit reports whether another packet may wait in the transport for the
// peer p, and counts it if so.
func (h *held) admit(p *router.Peer) bool {
	if p.Waiting.Load() >= PeerQueueLimit || h.sending.Load() >= QueueLimit {
		return false
	}
	p.Waiting.Add(1)
	h.sending.Add(1)
	return true
}

// release ends the hold of one packet; h.mu is held.
func (h *held) release(buf *byte) {
	hp, ok := h.bufs[buf]
	if !ok {
		return
	}
	delete(h.bufs, buf)
	switch {
	case hp.peer != nil:
		hp.peer.Waiting.Add(-1)
		h.sending.Add(-1)
	case hp.handshake:
		h.handshakes.Add(-1)
	default:
		h.receiving.Add(-1)
	}
}

// record notes packets the transport read, each already counted (admit)
// when it was routed.
func (h *held) record(now time.Time, pkts []handed) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range pkts {
		h.release(p.buf) // a buffer the transport dropped and reused
		h.bufs[p.buf] = heldPacket{peer: p.peer, at: now}
	}
	h.sweep(now)
}

// forget ends the hold of the packets in bufs: those the transport sends,
// or writes to the port.
func (h *held) forget(bufs [][]byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, b := range bufs {
		if len(b) > 0 {
			h.release(&b[0])
		}
	}
}

// received admits the datagrams the transport just received, sizes[i]
// bytes in bufs[i]: those it takes (transport data and handshake messages)
// count until the port gets them or their buffer comes back; beyond the
// limits, it zeroes a datagram's size, so that the transport skips it, and
// returns how many it dropped so. Every buffer in bufs (there may be more
// than datagrams) is one the transport reads into again, so it holds
// nothing of what was there.
func (h *held) received(now time.Time, bufs [][]byte, sizes []int) (dropped int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, b := range bufs {
		h.release(&b[0])
	}
	for i, size := range sizes {
		handshake, ok := takes(bufs[i][:size])
		if !ok {
			continue
		}
		count, limit := &h.receiving, int32(ReceiveLimit)
		if handshake {
			count, limit = &h.handshakes, HandshakeLimit
		}
		if count.Load() >= limit {
			sizes[i] = 0
			dropped++
			continue
		}
		count.Add(1)
		h.bufs[&bufs[i][0]] = heldPacket{handshake: handshake, at: now}
	}
	h.sweep(now)
	return dropped
}

// takes reports whether the transport keeps datagram d beyond the read
// (transport data, or a handshake message: handshake true).
func takes(d []byte) (handshake, ok bool) {
	if len(d) < 4 {
		return false, false
	}
	switch binary.LittleEndian.Uint32(d) {
	case device.MessageTransportType:
		return false, len(d) >= device.MessageTransportSize
	case device.MessageInitiationType:
		return true, len(d) == device.MessageInitiationSize
	case device.MessageResponseType:
		return true, len(d) == device.MessageResponseSize
	case device.MessageCookieReplyType:
		return true, len(d) == device.MessageCookieReplySize
	}
	return false, false
}

// sweep forgets packets held longer than heldExpiry, at most once per
// heldExpiry; h.mu is held.
func (h *held) sweep(now time.Time) {
	if now.Sub(h.swept) < heldExpiry {
		return
	}
	h.swept = now
	for b, p := range h.bufs {
		if now.Sub(p.at) >= heldExpiry {
			h.release(b)
		}
	}
}
