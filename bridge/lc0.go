package bridge

import (
	"errors"
	"os"
	"time"

	"github.com/librecast/lcast/router"
)

// After a failed read, the lc0 reader waits before it reads again, from
// minReadBackoff doubling up to maxReadBackoff while reads keep failing,
// so that a persistent error does not spin.
const (
	minReadBackoff = time.Millisecond
	maxReadBackoff = time.Second
)

// readLc0 fills free batches from lc0, each with one read of up to
// readSize packets (a GSO super-packet's segments), until lc0 or the port
// is closed. Packets that stay on the link go to the link handler there
// and then; the others go to Read. Each failed read is counted
// (router.DropLc0Read) and backed off.
func (p *Port) readLc0() {
	defer close(p.lc0Done)
	var backoff time.Duration
	for {
		var b *batch
		select {
		case b = <-p.free:
		case <-p.closed:
			return
		}
		n, err := p.lc0.Read(b.bufs, b.sizes, 0)
		switch {
		case errors.Is(err, os.ErrClosed):
			return
		case err != nil:
			p.r.Drop(router.DropLc0Read, nil)
			backoff = min(max(2*backoff, minReadBackoff), maxReadBackoff)
		default:
			backoff = 0
		}
		b.relayed = false
		if b.n = p.keepForPeers(b, n); b.n > 0 {
			p.full <- b // never blocks: it has room for every batch
		} else {
			p.free <- b
		}
		if backoff > 0 && !p.sleep(backoff) {
			return
		}
	}
}

// keepForPeers hands the first n packets of b that stay on the link to the
// link handler, moves the others to the front of b, and returns how many
// those are.
func (p *Port) keepForPeers(b *batch, n int) int {
	kept := 0
	for i := range n {
		pkt := b.bufs[i][:b.sizes[i]]
		if p.r.OnLink(pkt) {
			if p.link == nil || !p.link.HandleLinkPacket(pkt) {
				p.r.Drop(router.DropLinkLocal, nil)
			}
			continue
		}
		b.bufs[kept], b.bufs[i] = b.bufs[i], b.bufs[kept]
		b.sizes[kept] = b.sizes[i]
		kept++
	}
	return kept
}

// sleep waits for d, and reports false if the port closed meanwhile.
func (p *Port) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.closed:
		return false
	}
}
