package bridge

import (
	"errors"
	"os"
	"sync"
	"time"

	"github.com/librecast/lcast/internal/ip6"
	"github.com/librecast/lcast/router"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// headerLen is the size of an IPv6 header.
const headerLen = ip6.HeaderLen

// Port is the transport's side of the bridge, a tun.Device: Read hands out
// control packets and the packets for peers routed from lc0; Write takes
// packets from peers; Sent learns which of the packets Read handed out the
// transport sent, so that at most PeerQueueLimit wait for each peer
// (QueueLimit for all).
//
// The bridge's lc0 reader fills a bounded set of batches, so that when the
// transport is busy the packets that arrive meanwhile are routed and handed
// over together: the transport encrypts and sends a batch far cheaper than
// as many single packets. On a relay, Write adds batches of the packets
// from peers to pass on.
type Port struct {
	r        *router.Router
	lc0      wgtun.Device
	link     LinkHandler
	handler  ControlHandler
	mtu      int // lc0's, the size of a batch's buffers
	readSize int // buffers per batch: lc0's batch size

	free chan *batch // batches readLc0 may fill
	full chan *batch // filled batches, in order
	// lc0Done is closed when lc0 is: Read returns os.ErrClosed once it
	// has routed what came before.
	lc0Done chan struct{}

	// Read state, owned by the transport's single reader.
	cur  *batch        // batch being routed
	tab  *router.Table // the table cur is routed with, loaded when it was taken
	pkt  int           // packet of cur being routed
	next int           // its next subscriber in tab
	orig router.Origin // its origin

	held    held
	admit   func(*router.Peer) bool // held.admit, made once
	handed  []handed                // the packets of the current Read, for held
	control controlQueue

	writeMu sync.Mutex
	wrapped [][]byte
	unicast [][]byte
	relayed *batch // packets Write passes on, not yet handed to Read

	events    chan wgtun.Event
	closed    chan struct{} // closed by Close: Read returns os.ErrClosed
	closeOnce sync.Once
}

// batch is packets read from lc0 together, or packets from peers to relay
// (each with its origin).
type batch struct {
	bufs    [][]byte
	sizes   []int
	origins []router.Origin
	relayed bool
	n       int
}

func newBatch(size, mtu int) *batch {
	b := &batch{bufs: make([][]byte, size), sizes: make([]int, size), origins: make([]router.Origin, size)}
	for i := range b.bufs {
		b.bufs[i] = make([]byte, mtu)
	}
	return b
}

const (
	// maxBytesInFlight bounds the packets read from lc0 and not yet
	// handed to the transport: batches of readSize buffers of lc0's MTU,
	// as many as fit in 8 MiB, at most maxBatches and at least
	// minBatches. With lc0's default MTU (1364) and wireguard-go's batch
	// size of 128 that is 48 batches, 8 MiB; so the bound is
	// max(8 MiB, minBatches*readSize*MTU), 64 MiB at an MTU of 65535.
	maxBytesInFlight = 8 << 20
	maxBatches       = 64
	minBatches       = 8
	// defaultReadSize is the lc0 read size when the device reports no
	// batch size: wireguard-go's largest.
	defaultReadSize = 128
	// transportBatch is how many packets one Read may return. The
	// transport reads (and receives) into that many buffers of 64 KiB at
	// a time, per goroutine; 64 is as many as one UDP GSO send carries.
	transportBatch = 64
)

func (p *Port) init(lc0 wgtun.Device, r *router.Router, cfg Config) {
	p.r, p.lc0, p.link, p.handler = r, lc0, cfg.Link, cfg.Control
	mtu, err := lc0.MTU()
	if err != nil || mtu <= 0 {
		mtu = 65535
	}
	p.mtu = mtu
	p.readSize = lc0.BatchSize()
	if p.readSize < 1 {
		p.readSize = defaultReadSize
	}
	batches := min(maxBatches, max(minBatches, maxBytesInFlight/(p.readSize*mtu)))
	p.free = make(chan *batch, batches)
	p.full = make(chan *batch, batches+1)
	p.lc0Done = make(chan struct{})
	for range batches {
		p.free <- newBatch(p.readSize, mtu)
	}
	if r.Relay() {
		p.relayed = newBatch(p.readSize, mtu)
		p.relayed.relayed = true
	}
	p.held.init()
	p.admit = p.held.admit
	p.handed = make([]handed, 0, transportBatch)
	p.control.init()
	p.events = make(chan wgtun.Event, 1)
	p.closed = make(chan struct{})
	p.events <- wgtun.EventUp
}

// Read fills bufs (from offset) with the control packets waiting, then
// packets for peers, from as many lc0 batches as are waiting. It blocks
// until it has at least one packet, and returns os.ErrClosed once lc0 or
// the port is closed. The transport must send each packet from the buffer
// it was read into, and report it to Sent.
func (p *Port) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	// The table is loaded after the wait for packets, never before, so a
	// subscription that arrives during the wait applies to them; a batch
	// keeps its table until it is routed, so a packet's fan-out that spans
	// two Reads sees one list of subscribers.
	count := p.control.take(bufs, sizes, offset)
	p.handed = p.handed[:0]
	defer func() { p.held.record(time.Now(), p.handed) }()
	for count < len(bufs) {
		if p.cur == nil {
			var b *batch
			if count == 0 {
				select {
				case b = <-p.full:
				case <-p.control.ready:
					count = p.control.take(bufs, sizes, offset)
					continue
				case <-p.closed:
					return 0, os.ErrClosed
				case <-p.lc0Done:
					select { // what lc0 gave before it closed goes first
					case b = <-p.full:
					default:
						return 0, os.ErrClosed
					}
				}
			} else {
				select {
				case b = <-p.full:
				default:
					return count, nil
				}
			}
			p.cur, p.tab, p.pkt, p.next = b, p.r.Table(), 0, 0
		}
		for p.pkt < p.cur.n && count < len(bufs) {
			if p.next == 0 {
				p.orig = p.originOf(p.cur, p.pkt)
			}
			n, to := p.r.Route(p.tab, p.cur.bufs[p.pkt][:p.cur.sizes[p.pkt]], &p.orig, &p.next, bufs[count][offset:], p.admit)
			if n == 0 {
				p.pkt++
				p.next = 0
				continue
			}
			p.handed = append(p.handed, handed{buf: &bufs[count][0], peer: to})
			sizes[count] = n
			count++
		}
		if p.pkt == p.cur.n {
			p.free <- p.cur
			p.cur, p.tab = nil, nil
		}
	}
	return count, nil
}

// originOf returns the origin of packet i of b: its lcast header if it
// is relayed, or a new sequence number if it was read from lc0.
func (p *Port) originOf(b *batch, i int) router.Origin {
	if b.relayed {
		return b.origins[i]
	}
	return p.r.NextOrigin()
}

// Sent tells the port that the transport sends the packets in bufs (each
// starting where the buffer Read filled starts), so they no longer wait.
// Buffers Read did not fill with data (control packets among them) are
// ignored.
func (p *Port) Sent(bufs [][]byte) { p.held.forget(bufs) }

// Received tells the port what the transport just received from the
// underlay, sizes[i] bytes in bufs[i], before it takes them: beyond
// ReceiveLimit (HandshakeLimit for handshake messages) held, the port sets
// a datagram's size to 0, which the transport skips, and counts it dropped.
// bufs may hold more buffers than there are datagrams: those the
// transport read into last time, which it now reads into again.
func (p *Port) Received(bufs [][]byte, sizes []int) {
	for range p.held.received(time.Now(), bufs, sizes) {
		p.r.Drop(router.DropTransportFull, nil)
	}
}

// Write takes packets from peers, authenticated by the transport: it
// writes into lc0 those a local program listens to, in batches, hands
// control messages to the control handler and, on a relay, those to pass
// on to Read.
func (p *Port) Write(bufs [][]byte, offset int) (int, error) {
	r := p.r
	t := r.Table()
	p.writeMu.Lock()
	defer p.writeMu.Unlock()
	defer p.held.forget(bufs)
	p.wrapped, p.unicast = p.wrapped[:0], p.unicast[:0]
	var o router.Origin
	for _, b := range bufs {
		d := r.Deliver(t, b[offset:], &o)
		switch d.Lc0 {
		case 0:
			p.unicast = append(p.unicast, b)
		case router.WrapLen:
			p.wrapped = append(p.wrapped, b)
		}
		if d.Relay {
			p.relay(b[offset+router.WrapLen:], o)
		}
		if d.Control != nil {
			p.takeControl(o.From(), d.Control)
		}
	}
	p.flushRelayed()
	for _, batch := range []struct {
		bufs   [][]byte
		offset int
	}{{p.wrapped, offset + router.WrapLen}, {p.unicast, offset}} {
		if len(batch.bufs) == 0 {
			continue
		}
		if _, err := p.lc0.Write(batch.bufs, batch.offset); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return 0, err
			}
			r.Drop(router.DropLc0Write, nil)
		}
	}
	return len(bufs), nil
}

// takeControl hands a control message from the peer from to the handler.
func (p *Port) takeControl(from *router.Peer, msg []byte) {
	if p.handler == nil {
		p.r.Drop(router.DropControlUnhandled, from)
		return
	}
	p.handler.HandleControl(from.Addr(), msg)
}

// relay adds a packet to pass on to the batch being filled, which is
// handed to Read when full or at the end of the Write.
func (p *Port) relay(pkt []byte, o router.Origin) {
	b := p.relayed
	b.sizes[b.n] = copy(b.bufs[b.n], pkt)
	b.origins[b.n] = o
	b.n++
	if b.n == len(b.bufs) {
		p.flushRelayed()
	}
}

// flushRelayed hands the packets to pass on to Read, in exchange for a free
// batch. With none free (the transport is behind), they are dropped.
func (p *Port) flushRelayed() {
	b := p.relayed
	if b == nil || b.n == 0 {
		return
	}
	select {
	case next := <-p.free:
		p.full <- b // never blocks: it has room for every batch
		next.relayed, next.n = true, 0
		p.relayed = next
	default:
		for _, o := range b.origins[:b.n] {
			p.r.Drop(router.DropPeerQueue, o.From())
		}
		b.n = 0
	}
}

// File returns nil: the port has no file descriptor.
func (p *Port) File() *os.File { return nil }

// MTU returns lc0's MTU with room for the wrapping.
func (p *Port) MTU() (int, error) { return p.mtu + router.WrapLen, nil }

// Name names the port in wireguard-go's logs.
func (p *Port) Name() (string, error) { return "lcast-bridge", nil }

// Events reports the port up once, and closes when the port does.
func (p *Port) Events() <-chan wgtun.Event { return p.events }

// BatchSize is how many packets one Read may return.
func (p *Port) BatchSize() int { return transportBatch }

// Close ends the transport's use of the port: a Read waiting for packets
// returns os.ErrClosed, so that the transport can stop even while lc0 is
// open (when it fails to start, for one). It does not wait for the lc0
// reader (Bridge.Close does). Close is idempotent.
func (p *Port) Close() error {
	p.closeOnce.Do(func() {
		close(p.events)
		close(p.closed)
	})
	return nil
}
