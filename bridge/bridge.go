package bridge

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"

	"github.com/librecast/lcast/router"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// LinkHandler takes the packets read from lc0 that stay on the link
// (router.OnLink): the MLD reports the kernel writes, Router
// Solicitations... HandleLinkPacket is called from the bridge's lc0
// reader, one packet at a time, and must not keep pkt. It reports whether
// the packet was its own (an MLD message, even a malformed one); the
// bridge counts the others as router.DropLinkLocal.
type LinkHandler interface {
	HandleLinkPacket(pkt []byte) bool
}

// ControlHandler takes the control messages peers send (router.ProtoControl
// packets). HandleControl is called from the bridge's Write, that is on
// the transport's receive path, one message at a time, with the peer's
// overlay address and the message; msg is valid only during the call, and
// the handler must not keep it (it copies what it needs).
type ControlHandler interface {
	HandleControl(from netip.Addr, msg []byte)
}

// Config is what a Bridge is made with, beyond lc0 and the router.
type Config struct {
	// Link takes the packets that stay on the link; with none, they are
	// dropped (router.DropLinkLocal).
	Link LinkHandler
	// Control takes the control messages from peers; with none, they are
	// dropped (router.DropControlUnhandled).
	Control ControlHandler
}

// Errors of SendControl.
var (
	ErrControlQueueFull = errors.New("control queue full")
	ErrControlTooBig    = errors.New("control message larger than the transport's MTU")
)

// Bridge moves packets between lc0 and the transport. It starts a
// goroutine that reads lc0 until lc0 is closed; Close waits for it.
type Bridge struct {
	port   Port
	reader sync.WaitGroup
}

// New returns a Bridge between lc0 and the transport, forwarding as r
// decides, and starts reading lc0.
func New(lc0 wgtun.Device, r *router.Router, cfg Config) *Bridge {
	b := &Bridge{}
	b.port.init(lc0, r, cfg)
	b.reader.Go(b.port.readLc0)
	return b
}

// Port returns the transport's side of the bridge, the tun.Device that
// wireguard-go reads and writes.
func (b *Bridge) Port() *Port { return &b.port }

// SendControl queues the control message msg for the peer at dst, as an
// IPv6 packet from this node's overlay address to dst with next header
// router.ProtoControl and hop limit 255. The transport's next Read hands
// it out before any data. It does not keep msg. It returns
// ErrControlQueueFull when controlQueueBytes wait already, ErrControlTooBig
// when the packet would not fit the transport's MTU, and os.ErrClosed once
// the bridge is closed.
func (b *Bridge) SendControl(dst netip.Addr, msg []byte) error {
	p := &b.port
	select {
	case <-p.closed:
		return fmt.Errorf("control message to %s: %w", dst, os.ErrClosed)
	default:
	}
	if mtu, _ := p.MTU(); headerLen+len(msg) > mtu {
		return fmt.Errorf("%w: %d bytes to %s", ErrControlTooBig, len(msg), dst)
	}
	pkt := p.r.AppendControl(nil, dst, msg)
	if err := p.control.push(pkt); err != nil {
		return fmt.Errorf("control message to %s: %w", dst, err)
	}
	if c := p.r.Counters(dst); c != nil {
		c.Sent(len(pkt))
	}
	return nil
}

// Close ends the transport's use of the bridge (a Read waiting for packets
// returns os.ErrClosed) and waits for the goroutine reading lc0, which
// ends when lc0 is closed: close lc0 first, or Close waits until it is.
// Close is idempotent.
func (b *Bridge) Close() error {
	b.port.Close()
	b.reader.Wait()
	return nil
}
