package simnet

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// Link is how one direction between two hosts treats datagrams. The zero
// Link delivers everything at once.
type Link struct {
	// Down drops everything (a partition, or a black hole).
	Down bool
	// Loss is the probability that a datagram is dropped.
	Loss float64
	// Burst, when more than 1, makes losses come in runs of 1 to Burst
	// consecutive datagrams (Loss is then the probability a run starts).
	Burst int
	// Delay is added to every datagram; Jitter, up to that much more,
	// chosen at random per datagram, which reorders them.
	Delay, Jitter time.Duration
}

// NAT is how a home router maps and filters a host's UDP.
type NAT int

// NAT kinds.
const (
	// NoNAT: the host has a public address.
	NoNAT NAT = iota
	// EndpointIndependent maps each inner address and port to one outer
	// port, whatever the destination, and lets in only datagrams from
	// addresses and ports the host sent to (a home router).
	EndpointIndependent
	// Symmetric maps each destination to an outer port of its own, and
	// filters as EndpointIndependent does: two such homes cannot meet
	// directly.
	Symmetric
)

// queueLen is how many datagrams a socket holds unread; beyond it they
// are dropped and counted, as a kernel's socket buffer does.
const queueLen = 4096

// host is one machine on the underlay: its address, and the NAT in front
// of it, if any.
type host struct {
	name   string
	addr   netip.Addr // its own address (inside the NAT, if behind one)
	public netip.Addr // its NAT's outer address, or addr
	nat    NAT
	// The NAT's state: outer port by inner port (and destination, for a
	// symmetric NAT), inner port by outer port, and which remote
	// addresses and ports may send to each outer port.
	out     map[natKey]uint16
	in      map[uint16]uint16
	allowed map[uint16]map[netip.AddrPort]bool
	next    uint16
}

type natKey struct {
	port uint16
	dst  netip.AddrPort // zero for an endpoint-independent mapping
}

// Net is the underlay: hosts that exchange UDP datagrams through links
// modelled in code. Delays run on real time (they are milliseconds);
// the randomness of loss and jitter comes from one seeded source.
type Net struct {
	mu      sync.Mutex
	rng     *rand.Rand
	hosts   map[string]*host
	byAddr  map[netip.Addr]*host // by public address
	sockets map[netip.AddrPort]*bind
	links   map[[2]string]Link
	burst   map[[2]string]int // datagrams left to drop of a lossy run
	wg      sync.WaitGroup    // delayed deliveries
	// Dropped counts datagrams the underlay dropped: lost, filtered by a
	// NAT, to nowhere, or to a full socket.
	Dropped atomic.Uint64
}

func newNet(seed uint64) *Net {
	return &Net{
		rng:     rand.New(rand.NewPCG(seed, seed^0x6c63617374)),
		hosts:   map[string]*host{},
		byAddr:  map[netip.Addr]*host{},
		sockets: map[netip.AddrPort]*bind{},
		links:   map[[2]string]Link{},
		burst:   map[[2]string]int{},
	}
}

// addHost adds a host with public address addr (its NAT's, when nat is
// not NoNAT: the host itself then gets a private address).
func (n *Net) addHost(name string, addr netip.Addr, nat NAT) *host {
	n.mu.Lock()
	defer n.mu.Unlock()
	h := &host{name: name, addr: addr, public: addr, nat: nat,
		out: map[natKey]uint16{}, in: map[uint16]uint16{}, allowed: map[uint16]map[netip.AddrPort]bool{}, next: 40000}
	if nat != NoNAT {
		a := addr.As16()
		a[0], a[1] = 0xfd, 0x00 // a private address, unreachable from outside
		h.addr = netip.AddrFrom16(a)
	}
	n.hosts[name] = h
	n.byAddr[addr] = h
	return h
}

// SetLink sets how datagrams from host a to host b are treated.
func (n *Net) SetLink(a, b string, l Link) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.links[[2]string{a, b}] = l
}

// SetLinks sets the link both ways between a and b.
func (n *Net) SetLinks(a, b string, l Link) {
	n.SetLink(a, b, l)
	n.SetLink(b, a, l)
}

// Partition cuts (down) or heals the links both ways between a and b.
func (n *Net) Partition(a, b string, down bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, k := range [][2]string{{a, b}, {b, a}} {
		l := n.links[k]
		l.Down = down
		n.links[k] = l
	}
}

// send carries one datagram from src (a socket of host h) to dst.
func (n *Net) send(h *host, src netip.AddrPort, dst netip.AddrPort, pkt []byte) {
	n.mu.Lock()
	outer := n.translateOut(h, src, dst)
	to := n.byAddr[dst.Addr()]
	var sock *bind
	if to != nil {
		if inner, ok := n.translateIn(to, outer, dst); ok {
			sock = n.sockets[inner]
		}
	}
	if sock == nil {
		n.mu.Unlock()
		n.Dropped.Add(1)
		return
	}
	delay, lost := n.fate(h.name, to.name)
	n.mu.Unlock()
	if lost {
		n.Dropped.Add(1)
		return
	}
	d := datagram{pkt: append([]byte(nil), pkt...), from: outer}
	if delay == 0 {
		n.deliver(sock, d)
		return
	}
	n.wg.Add(1)
	time.AfterFunc(delay, func() {
		defer n.wg.Done()
		n.deliver(sock, d)
	})
}

func (n *Net) deliver(sock *bind, d datagram) {
	if !sock.enqueue(d) {
		n.Dropped.Add(1)
	}
}

// translateOut returns the address a datagram from src to dst leaves h's
// NAT with, and lets dst's answers in; n.mu is held.
func (n *Net) translateOut(h *host, src, dst netip.AddrPort) netip.AddrPort {
	if h.nat == NoNAT {
		return src
	}
	k := natKey{port: src.Port()}
	if h.nat == Symmetric {
		k.dst = dst
	}
	port, ok := h.out[k]
	if !ok {
		port = h.next
		h.next++
		h.out[k] = port
		h.in[port] = src.Port()
		h.allowed[port] = map[netip.AddrPort]bool{}
	}
	h.allowed[port][dst] = true
	return netip.AddrPortFrom(h.public, port)
}

// translateIn returns the socket address inside h that a datagram from
// `from` to dst reaches, or false if h's NAT filters it; n.mu is held.
func (n *Net) translateIn(h *host, from, dst netip.AddrPort) (netip.AddrPort, bool) {
	if h.nat == NoNAT {
		return dst, true
	}
	inner, ok := h.in[dst.Port()]
	if !ok || !h.allowed[dst.Port()][from] {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(h.addr, inner), true
}

// fate decides, by the link from a to b, whether a datagram is lost and
// how long it takes; n.mu is held.
func (n *Net) fate(a, b string) (time.Duration, bool) {
	k := [2]string{a, b}
	l := n.links[k]
	if l.Down {
		return 0, true
	}
	if n.burst[k] > 0 {
		n.burst[k]--
		return 0, true
	}
	if l.Loss > 0 && n.rng.Float64() < l.Loss {
		if l.Burst > 1 {
			n.burst[k] = n.rng.IntN(l.Burst)
		}
		return 0, true
	}
	d := l.Delay
	if l.Jitter > 0 {
		d += time.Duration(n.rng.Int64N(int64(l.Jitter)))
	}
	return d, false
}

// datagram is one datagram waiting in a socket.
type datagram struct {
	pkt  []byte
	from netip.AddrPort
}

// bind is a host's UDP socket as wireguard-go's device uses it.
type bind struct {
	net  *Net
	host *host

	mu     sync.Mutex
	local  netip.AddrPort // valid while open
	queue  chan datagram
	closed chan struct{}
}

var (
	_ conn.Bind     = (*bind)(nil)
	_ conn.Endpoint = endpoint{}
)

// ErrPortInUse means another socket of the host has the port.
var ErrPortInUse = errors.New("simnet: port in use")

func (b *bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	n := b.net
	n.mu.Lock()
	defer n.mu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.local.IsValid() {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	if port == 0 {
		for port = 50000; n.sockets[netip.AddrPortFrom(b.host.addr, port)] != nil; port++ {
		}
	}
	local := netip.AddrPortFrom(b.host.addr, port)
	if n.sockets[local] != nil {
		return nil, 0, fmt.Errorf("%w: %s", ErrPortInUse, local)
	}
	n.sockets[local] = b
	b.local = local
	b.queue = make(chan datagram, queueLen)
	b.closed = make(chan struct{})
	return []conn.ReceiveFunc{b.receiveFunc(b.queue, b.closed)}, port, nil
}

func (b *bind) receiveFunc(queue chan datagram, closed chan struct{}) conn.ReceiveFunc {
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		var d datagram
		select {
		case d = <-queue:
		case <-closed:
			return 0, net.ErrClosed
		}
		k := 0
		for {
			sizes[k] = copy(bufs[k], d.pkt)
			eps[k] = endpoint(d.from)
			k++
			if k == len(bufs) {
				return k, nil
			}
			select {
			case d = <-queue:
			default:
				return k, nil
			}
		}
	}
}

// enqueue puts d in the socket's queue; false if the socket is closed or
// its queue is full.
func (b *bind) enqueue(d datagram) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.local.IsValid() {
		return false
	}
	select {
	case b.queue <- d:
		return true
	default:
		return false
	}
}

func (b *bind) Close() error {
	n := b.net
	n.mu.Lock()
	defer n.mu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.local.IsValid() {
		return nil
	}
	delete(n.sockets, b.local)
	b.local = netip.AddrPort{}
	close(b.closed)
	return nil
}

func (b *bind) SetMark(uint32) error { return nil }

func (b *bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	b.mu.Lock()
	local := b.local
	b.mu.Unlock()
	if !local.IsValid() {
		return net.ErrClosed
	}
	dst, ok := ep.(endpoint)
	if !ok {
		return fmt.Errorf("simnet: endpoint of type %T", ep)
	}
	for _, pkt := range bufs {
		b.net.send(b.host, local, netip.AddrPort(dst), pkt)
	}
	return nil
}

func (b *bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return endpoint(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())), nil
}

func (b *bind) BatchSize() int { return 32 }

// endpoint is a remote address and port.
type endpoint netip.AddrPort

func (e endpoint) ClearSrc()           {}
func (e endpoint) SrcToString() string { return "" }
func (e endpoint) DstToString() string { return netip.AddrPort(e).String() }
func (e endpoint) DstToBytes() []byte {
	b, _ := netip.AddrPort(e).MarshalBinary()
	return b
}
func (e endpoint) DstIP() netip.Addr { return netip.AddrPort(e).Addr() }
func (e endpoint) SrcIP() netip.Addr { return netip.Addr{} }
