package simnet

import (
	"context"
	"encoding/binary"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/librecast/lcast/internal/daemon"
	"github.com/librecast/lcast/internal/ip6"
	"github.com/librecast/lcast/mld"
	"github.com/librecast/lcast/tun"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// Datagram is a UDP datagram a program on a node received from lc0.
type Datagram struct {
	Src, Dst netip.Addr
	Port     uint16
	Payload  string
}

// received is how many datagrams a node's programs hold unread; beyond it
// they are counted in Overflow and dropped.
const received = 1 << 16

// kernel is what a node's kernel does on lc0: it keeps its programs'
// memberships (which outlive a daemon that crashes, as a persistent TUN's
// do), writes MLDv2 reports of their changes into lc0, answers the
// daemon's queries, and delivers what the daemon writes into lc0 to the
// programs that joined. It is the other end of the daemon's lc0 device.
type kernel struct {
	addr, linkLocal netip.Addr // the node's overlay and link-local addresses

	mu      sync.Mutex
	joined  map[netip.Addr][]netip.Addr // group → sources (nil: any source)
	dev     *device                     // the open lc0, nil while none is
	hint    func(netip.Addr, bool)      // the daemon's membership watch
	crashed bool                        // the daemon's Close leaves lc0 (a crash)

	// Received holds the datagrams delivered to programs on the node.
	Received chan Datagram
	// Overflow counts datagrams delivered while Received was full.
	Overflow atomic.Uint64
}

func newKernel(addr, linkLocal netip.Addr) *kernel {
	return &kernel{addr: addr, linkLocal: linkLocal, joined: map[netip.Addr][]netip.Addr{}, Received: make(chan Datagram, received)}
}

// open is the daemon's Host.OpenLc0: it attaches a new device to the
// kernel's lc0, keeping the memberships programs hold.
func (k *kernel) open(cfg tun.Config) (daemon.Lc0, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.dev != nil {
		return nil, tun.ErrInUse
	}
	k.dev = &device{k: k, mtu: cfg.MTU, name: cfg.Name, in: make(chan []byte, 4096), closed: make(chan struct{}), events: make(chan wgtun.Event, 1)}
	k.dev.events <- wgtun.EventUp
	k.crashed = false
	return k.dev, nil
}

// write hands pkt to the daemon as read from lc0: dropped if no daemon
// has lc0 open, or its queue is full (as a TUN's queue drops).
func (k *kernel) write(pkt []byte) bool {
	k.mu.Lock()
	dev := k.dev
	k.mu.Unlock()
	if dev == nil {
		return false
	}
	select {
	case dev.in <- pkt:
		return true
	default:
		return false
	}
}

// join records a program's joins of groups (from sources only, if any
// are given) and writes the kernel's reports of the changes, as Linux
// does: TO_EX for any source, ALLOW for sources.
func (k *kernel) join(groups []netip.Addr, sources []netip.Addr) {
	recs := make([]mld.ReportRecord, 0, len(groups))
	k.mu.Lock()
	for _, g := range groups {
		k.joined[g] = slices.Clone(sources)
		if len(sources) > 0 {
			recs = append(recs, mld.ReportRecord{Type: mld.AllowNewSources, Group: g, Sources: sources})
		} else {
			recs = append(recs, mld.ReportRecord{Type: mld.ChangeToExcludeMode, Group: g})
		}
	}
	k.mu.Unlock()
	k.changed(recs, true)
}

// leave records a program's leaves of groups and writes TO_IN with no
// sources (or BLOCK of the sources of a source-specific join).
func (k *kernel) leave(groups []netip.Addr) {
	var recs []mld.ReportRecord
	k.mu.Lock()
	for _, g := range groups {
		sources, ok := k.joined[g]
		delete(k.joined, g)
		switch {
		case ok && len(sources) > 0:
			recs = append(recs, mld.ReportRecord{Type: mld.BlockOldSources, Group: g, Sources: sources})
		case ok:
			recs = append(recs, mld.ReportRecord{Type: mld.ChangeToIncludeMode, Group: g})
		}
	}
	k.mu.Unlock()
	k.changed(recs, false)
}

// changed tells the daemon's watch of the changes in recs (any-source
// joins and every leave, as Linux's rtnetlink does), then writes their
// reports.
func (k *kernel) changed(recs []mld.ReportRecord, joined bool) {
	k.mu.Lock()
	hint := k.hint
	k.mu.Unlock()
	if hint != nil {
		for _, r := range recs {
			if !joined || len(r.Sources) == 0 {
				hint(r.Group, joined)
			}
		}
	}
	k.report(recs)
}

// reportMTU is the largest report the kernel writes: lc0's least MTU.
const reportMTU = 1280

// report writes recs as Linux does: in as few reports as it takes for
// each to fit reportMTU, a record with more sources than fit one cut into
// records of the same type.
func (k *kernel) report(recs []mld.ReportRecord) {
	empty := len(mld.AppendV2Report(nil, k.linkLocal, nil))
	var out []mld.ReportRecord
	size := empty
	flush := func() {
		if len(out) > 0 {
			k.write(mld.AppendV2Report(nil, k.linkLocal, out))
		}
		out, size = nil, empty
	}
	for _, r := range recs {
		srcs := r.Sources
		for first := true; first || len(srcs) > 0; first = false {
			room := (reportMTU - size - 20) / 16
			if room < 1 && len(srcs) > 0 || size+20 > reportMTU {
				flush()
				room = (reportMTU - size - 20) / 16
			}
			n := min(room, len(srcs))
			part := r
			part.Sources = srcs[:n]
			srcs = srcs[n:]
			out = append(out, part)
			size += 20 + 16*n
		}
	}
	flush()
}

// current returns the current-state records of group (every group, if
// group is not valid).
func (k *kernel) current(group netip.Addr) []mld.ReportRecord {
	k.mu.Lock()
	defer k.mu.Unlock()
	var recs []mld.ReportRecord
	for g, sources := range k.joined {
		if group.IsValid() && !group.IsUnspecified() && g != group {
			continue
		}
		if len(sources) == 0 {
			recs = append(recs, mld.ReportRecord{Type: mld.ModeIsExclude, Group: g})
		} else {
			recs = append(recs, mld.ReportRecord{Type: mld.ModeIsInclude, Group: g, Sources: slices.Clone(sources)})
		}
	}
	slices.SortFunc(recs, func(a, b mld.ReportRecord) int { return a.Group.Compare(b.Group) })
	return recs
}

// wants reports whether a program on the node listens to group from src.
func (k *kernel) wants(group, src netip.Addr) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	sources, ok := k.joined[group]
	return ok && (len(sources) == 0 || slices.Contains(sources, src))
}

// fromDaemon takes a packet the daemon wrote into lc0: a query is
// answered, a UDP datagram delivered to the programs that want it.
func (k *kernel) fromDaemon(pkt []byte) {
	if len(pkt) < ip6.HeaderLen || pkt[0]>>4 != 6 {
		return
	}
	next, off, ok := ip6.Upper(pkt)
	if !ok {
		return
	}
	src := netip.AddrFrom16([16]byte(pkt[8:24]))
	dst := netip.AddrFrom16([16]byte(pkt[24:40]))
	switch next {
	case ip6.ProtoICMPv6:
		var m mld.Message
		if mld.Decode(pkt, &m) != nil || m.Type != mld.TypeQuery {
			return
		}
		k.report(k.current(m.Group))
	case ip6.ProtoUDP:
		if off+8 > len(pkt) {
			return
		}
		if dst.IsMulticast() && !k.wants(dst, src) || !dst.IsMulticast() && dst != k.addr {
			return
		}
		d := Datagram{Src: src, Dst: dst, Port: binary.BigEndian.Uint16(pkt[off+2:]), Payload: string(pkt[off+8:])}
		select {
		case k.Received <- d:
		default:
			k.Overflow.Add(1)
		}
	}
}

// device is lc0 as the daemon opened it: a wireguard tun.Device whose
// other end is the kernel.
type device struct {
	k         *kernel
	mtu       int
	name      string
	in        chan []byte // packets the kernel writes, for the daemon to read
	events    chan wgtun.Event
	closed    chan struct{}
	closeOnce sync.Once
}

var _ daemon.Lc0 = (*device)(nil)

func (d *device) TUN() wgtun.Device { return d }

// WatchMemberships has the kernel tell fn of joins before their reports,
// as Linux's rtnetlink does.
func (d *device) WatchMemberships(ctx context.Context, fn func(netip.Addr, bool)) error {
	d.k.mu.Lock()
	d.k.hint = fn
	d.k.mu.Unlock()
	return nil
}

// KeepRoutes has nothing to keep: the simulated kernel routes nothing.
func (d *device) KeepRoutes(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

// Close ends the daemon's use of lc0. After a crash (kernel.crashed) the
// programs' memberships stay, as on a persistent TUN; after a clean stop
// lc0 is gone, and they with it.
func (d *device) Close() error {
	d.closeOnce.Do(func() {
		close(d.closed)
		k := d.k
		k.mu.Lock()
		defer k.mu.Unlock()
		if k.dev == d {
			k.dev, k.hint = nil, nil
		}
		if !k.crashed {
			clear(k.joined)
		}
	})
	return nil
}

func (d *device) File() *os.File { return nil }

func (d *device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	var pkt []byte
	select {
	case pkt = <-d.in:
	case <-d.closed:
		return 0, os.ErrClosed
	}
	n := 0
	for {
		sizes[n] = copy(bufs[n][offset:], pkt)
		n++
		if n == len(bufs) {
			return n, nil
		}
		select {
		case pkt = <-d.in:
		default:
			return n, nil
		}
	}
}

func (d *device) Write(bufs [][]byte, offset int) (int, error) {
	select {
	case <-d.closed:
		return 0, os.ErrClosed
	default:
	}
	for _, b := range bufs {
		d.k.fromDaemon(b[offset:])
	}
	return len(bufs), nil
}

func (d *device) MTU() (int, error)          { return d.mtu, nil }
func (d *device) Name() (string, error)      { return d.name, nil }
func (d *device) Events() <-chan wgtun.Event { return d.events }
func (d *device) BatchSize() int             { return 16 }
