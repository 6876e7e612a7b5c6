package simnet

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/librecast/lcast/mld"
	"github.com/librecast/lcast/peer"
	"github.com/librecast/lcast/router"
	"golang.org/x/time/rate"
	wgdevice "golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// What the other side can do that lcast would not: a stranger on the
// underlay that sends any datagram from any address (Inject), a program
// that sends from an address not its node's (SendFrom), and a hostile
// peer (Hostile) that holds a key nodes list but sends the packets a test
// crafts instead of what a router makes (docs/design.md, "Source
// authentication"; docs/security.md).

// Inject puts pkt on the underlay as a datagram from src to dst, as anyone
// on the internet can send one: src need not be the sender's (the
// underlay checks no sources), and no socket need listen there. It meets
// dst's NAT, and, when src is a host's public address, the link from that
// host. It reports whether the datagram is on its way to a socket (false:
// nothing listens at dst, a NAT filtered it or the link lost it; each
// counted in Dropped).
func (n *Net) Inject(src, dst netip.AddrPort, pkt []byte) bool {
	n.mu.Lock()
	from, to := n.byAddr[src.Addr()], n.byAddr[dst.Addr()]
	var sock *bind
	if to != nil {
		if inner, ok := n.translateIn(to, src, dst); ok {
			sock = n.sockets[inner]
		}
	}
	if sock == nil {
		n.mu.Unlock()
		n.Dropped.Add(1)
		return false
	}
	var delay time.Duration
	lost := false
	if from != nil {
		delay, lost = n.fate(from.name, to.name)
	}
	n.mu.Unlock()
	if lost {
		n.Dropped.Add(1)
		return false
	}
	d := datagram{pkt: append([]byte(nil), pkt...), from: src}
	if delay == 0 {
		if !sock.enqueue(d) {
			n.Dropped.Add(1)
			return false
		}
		return true
	}
	n.wg.Add(1)
	time.AfterFunc(delay, func() {
		defer n.wg.Done()
		n.deliver(sock, d)
	})
	return true
}

// SendFrom has a program on the node send a UDP datagram from src, which
// need not be the node's (a program can send from any address added to
// lc0, or with IPV6_FREEBIND), to dst on lc0; it reports whether lc0 took
// it.
func (n *Node) SendFrom(src, dst netip.Addr, port uint16, payload string) bool {
	return n.kernel.write(udp(src, dst, port, payload))
}

// UDP returns an IPv6/UDP datagram from src to dst, with hop limit 1 and
// no checksum, as Send writes one into lc0: for a hostile peer to send as
// its own or another node's.
func UDP(src, dst netip.Addr, port uint16, payload string) []byte {
	return udp(src, dst, port, payload)
}

// Wrapped returns inner wrapped as multicast from the node at src to the
// peer at dst, with the originator's epoch and sequence number and hop
// limit hops, in the format router.WrapLen documents.
func Wrapped(src, dst netip.Addr, epoch uint32, seq uint64, hops uint8, inner []byte) []byte {
	b := make([]byte, router.WrapLen, router.WrapLen+len(inner))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(16+len(inner)))
	b[6], b[7] = 253, hops
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	b[40] = 41
	binary.BigEndian.PutUint32(b[44:], epoch)
	binary.BigEndian.PutUint64(b[48:], seq)
	return append(b, inner...)
}

// Hostile is a peer with a valid key that nodes list, built from lcast's
// own parts as lcast's transport is (wireguard-go's device, on the node's
// host and socket) but with no router behind it: it sends what the test
// hands it, packets a router would never make, and routes every
// destination to its first peer (lcast's transport routes only a peer's
// own addresses to it). It reads what its peers send it: the full states
// (States) and the multicast headers (Heard). Its Node is its identity and
// host, for other nodes' [[peer]] tables; its daemon is never started.
type Hostile struct {
	*Node
	dev  *wgdevice.Device
	tun  *tuntest.ChannelTUN
	ctl  *router.Router  // makes its control packets
	ctx  context.Context // done when the test ends
	stop context.CancelFunc
	wg   sync.WaitGroup

	// Sent counts the packets handed to its transport.
	Sent atomic.Uint64
	pace atomic.Pointer[rate.Limiter] // nil: as fast as the transport takes them

	mu     sync.Mutex
	epoch  uint64 // of its subscription messages
	gen    uint64
	states int
	heard  map[netip.Addr]Heard
}

// Heard is the last wrapped multicast a hostile peer received from one
// sender: the sender's epoch and sequence number, as the sender's node
// wrapped it.
type Heard struct {
	Epoch uint32
	Seq   uint64
}

// AddHostile adds a hostile peer, with a key and a host of its own, not
// connected: other nodes list it with Peer(h.Node, ...), and Dial brings
// its transport up.
func (w *Network) AddHostile(name string) *Hostile {
	n := w.Add(name, Options{})
	h := &Hostile{Node: n, tun: tuntest.NewChannelTUN(), epoch: 1 << 40, heard: map[netip.Addr]Heard{}}
	h.ctx, h.stop = context.WithCancel(context.Background())
	h.ctl = router.New(router.Config{Self: n.Addr, Overlay: peer.OverlayPrefix})
	// Registered after New's, this runs before it: the device is closed
	// (and with it the socket) before the network waits for deliveries.
	w.t.Cleanup(h.close)
	return h
}

// Dial brings the hostile peer's transport up with peers to: the first
// gets every destination but the others' addresses. Each has a persistent
// keepalive of a second, so the handshakes start at once.
func (h *Hostile) Dial(to ...*Node) {
	h.w.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "private_key=%s\nlisten_port=%d\nreplace_peers=true\n", hex.EncodeToString(h.private[:]), ListenPort)
	for i, p := range to {
		fmt.Fprintf(&b, "public_key=%s\nendpoint=%s\npersistent_keepalive_interval=1\n", hex.EncodeToString(p.Key[:]), p.Endpoint())
		if i == 0 {
			b.WriteString("allowed_ip=::/0\n")
		} else {
			fmt.Fprintf(&b, "allowed_ip=%s/128\nallowed_ip=%s/128\n", p.Addr, peer.LinkLocalAddr(p.Key))
		}
	}
	h.dev = wgdevice.NewDevice(h.tun.TUN(), h.bind, wgdevice.NewLogger(wgdevice.LogLevelSilent, ""))
	if err := h.dev.IpcSet(b.String()); err != nil {
		h.w.t.Fatalf("%s: %v", h.Name, err)
	}
	if err := h.dev.Up(); err != nil {
		h.w.t.Fatalf("%s: %v", h.Name, err)
	}
	h.wg.Add(1)
	go h.read()
}

func (h *Hostile) close() {
	h.stop()
	if h.dev == nil {
		return
	}
	h.dev.Close()
	h.wg.Wait()
}

// Session reports whether the hostile peer has completed a handshake
// with n.
func (h *Hostile) Session(n *Node) bool {
	text, err := h.dev.IpcGet()
	if err != nil {
		return false
	}
	key := "public_key=" + hex.EncodeToString(n.Key[:])
	_, rest, ok := strings.Cut(text, key+"\n")
	if !ok {
		return false
	}
	rest, _, _ = strings.Cut(rest, "public_key=")
	return !strings.Contains(rest, "last_handshake_time_sec=0\n")
}

// Pace makes the hostile peer send at most pps packets a second from now
// on (0: as fast as its transport takes them, the default).
func (h *Hostile) Pace(pps int) {
	if pps == 0 {
		h.pace.Store(nil)
		return
	}
	h.pace.Store(rate.NewLimiter(rate.Limit(pps), 16))
}

// Send hands pkt, an IPv6 packet, to the hostile peer's transport, to go
// to the peer its destination routes to.
func (h *Hostile) Send(pkt []byte) {
	if l := h.pace.Load(); l != nil {
		if l.Wait(h.ctx) != nil {
			return
		}
	}
	select {
	case h.tun.Outbound <- pkt:
		h.Sent.Add(1)
	case <-h.ctx.Done():
	}
}

// SendControl sends the control message msg to n, from the hostile
// peer's overlay address, as lcast's router wraps control messages.
func (h *Hostile) SendControl(n *Node, msg []byte) {
	h.Send(h.ctl.AppendControl(nil, n.Addr, msg))
}

// NewStart sends n a hello of a new epoch that asks for n's state, as a
// node that restarted does, and acknowledges nothing.
func (h *Hostile) NewStart(n *Node) {
	h.mu.Lock()
	h.epoch++
	m := &peer.Message{Want: true, Epoch: h.epoch}
	h.mu.Unlock()
	h.SendControl(n, peer.AppendMessage(nil, m))
}

// SendState sends n groups as the hostile peer's full state, its updates
// numbered on from the last, each asking for n's state and acknowledging
// none of it. The groups need be neither sorted, nor distinct, nor within
// any cap.
func (h *Hostile) SendState(n *Node, groups []mld.GroupState) {
	h.mu.Lock()
	epoch, seq := h.epoch, h.gen+1
	h.mu.Unlock()
	for _, msg := range peer.FullState(epoch, seq, groups) {
		m, err := peer.ParseMessage(msg)
		if err != nil {
			panic(err) // FullState makes what ParseMessage takes
		}
		m.Want = true
		h.mu.Lock()
		h.gen = m.Seq
		h.mu.Unlock()
		h.SendControl(n, peer.AppendMessage(nil, m))
	}
}

// States returns how many full states (their first updates, flagged
// sync) the hostile peer's peers have sent it.
func (h *Hostile) States() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.states
}

// Heard returns the last wrapped multicast from sender that reached the
// hostile peer.
func (h *Hostile) Heard(sender netip.Addr) (Heard, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	m, ok := h.heard[sender]
	return m, ok
}

// read takes what the hostile peer's transport received until it closes.
func (h *Hostile) read() {
	defer h.wg.Done()
	for {
		var pkt []byte
		select {
		case pkt = <-h.tun.Inbound:
		case <-h.ctx.Done():
			return
		}
		if len(pkt) < 40 {
			continue
		}
		switch pkt[6] {
		case router.ProtoControl:
			if m, err := peer.ParseMessage(pkt[40:]); err == nil && m.Sync {
				h.mu.Lock()
				h.states++
				h.mu.Unlock()
			}
		case 253:
			if len(pkt) < router.WrapLen+40 {
				continue
			}
			inner := pkt[router.WrapLen:]
			h.mu.Lock()
			h.heard[netip.AddrFrom16([16]byte(inner[8:24]))] = Heard{
				Epoch: binary.BigEndian.Uint32(pkt[44:]), Seq: binary.BigEndian.Uint64(pkt[48:])}
			h.mu.Unlock()
		}
	}
}
