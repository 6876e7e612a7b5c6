package simnet

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/clock"
	"github.com/librecast/lcast/internal/config"
	"github.com/librecast/lcast/internal/control"
	"github.com/librecast/lcast/internal/daemon"
	"github.com/librecast/lcast/peer"
	"github.com/librecast/lcast/tun"
)

// ListenPort is every node's listen_port.
const ListenPort = 51820

// Network is an in-process network of complete lcast nodes: each a
// daemon.Daemon with its bridge, router, transport, exchange,
// introductions and MLD, on a simulated lc0 (its kernel's side is code
// here), over an in-memory underlay (Net) whose links lose, delay,
// reorder and partition, behind NATs modelled as code, all on one Warp
// clock. Tests of protocol behaviour run here, under -race, in seconds.
type Network struct {
	*Net
	t     testing.TB
	clock *clock.Warp
	dir   string // control sockets

	mu    sync.Mutex
	nodes []*Node
}

// New returns an empty network whose nodes are stopped when the test
// ends; their logs are printed if it failed. Loss and jitter are drawn
// from a source seeded by the test's name, so a run can be repeated.
// The test runs in parallel with the other tests of networks of their own
// (go test's -parallel of them at once): a network spends most of its
// time waiting on real time, for wireguard-go's timers and streams.
func New(t testing.TB) *Network {
	if p, ok := t.(interface{ Parallel() }); ok {
		p.Parallel()
	}
	return newNetwork(t)
}

// NewAlone returns an empty network as New does, for a test that must
// have the process to itself (it measures the process's goroutines or
// heap, which the other tests' networks share): the test does not run in
// parallel, so go test runs it before it lets any parallel test start.
func NewAlone(t testing.TB) *Network { return newNetwork(t) }

func newNetwork(t testing.TB) *Network {
	dir, err := os.MkdirTemp("", "lcsim")
	if err != nil {
		t.Fatal(err)
	}
	var seed uint64
	for _, c := range t.Name() {
		seed = seed*31 + uint64(c)
	}
	w := &Network{Net: newNet(seed), t: t, clock: clock.NewWarp(), dir: dir}
	t.Cleanup(func() {
		for _, n := range w.all() {
			n.Stop()
		}
		w.Net.wg.Wait()
		os.RemoveAll(dir)
		if t.Failed() {
			for _, n := range w.all() {
				t.Logf("log of %s:\n%s", n.Name, n.logs.String())
			}
		}
	})
	return w
}

// Clock returns the network's clock, which every node's own timers read.
func (w *Network) Clock() *clock.Warp { return w.clock }

func (w *Network) all() []*Node {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]*Node(nil), w.nodes...)
}

// Options are a node's settings beyond its peers.
type Options struct {
	// NAT puts the node behind a home router of that kind.
	NAT NAT
	// Relay makes the node relay (relay = true).
	Relay bool
	// Config is more TOML for the node's configuration file.
	Config string
}

// Node is one lcast node: a host on the underlay, a kernel with programs
// on lc0, and the daemon, which can be stopped, crashed and started again.
type Node struct {
	Name string
	// Key is the node's public key; Addr its overlay address.
	Key  peer.Key
	Addr netip.Addr

	w       *Network
	private peer.Key
	opts    Options
	host    *host
	bind    *bind
	kernel  *kernel
	logs    lockedBuffer
	logger  *slog.Logger

	mu     sync.Mutex
	peers  []peerTable
	d      *daemon.Daemon
	cancel context.CancelFunc
	done   chan error
}

// peerTable is one [[peer]] table of a node's configuration.
type peerTable struct {
	node *Node
	PeerOptions
}

// PeerOptions are the settings of a [[peer]] table.
type PeerOptions struct {
	// NoEndpoint leaves the endpoint out (a peer that connects to us).
	NoEndpoint bool
	Relay      bool
	Introducer bool
	// LANPrefixes are the peer's lan_prefixes.
	LANPrefixes []string
}

// Add adds a node, not started, with the next public address.
func (w *Network) Add(name string, opts Options) *Node {
	private, err := peer.GenerateKey()
	if err != nil {
		w.t.Fatal(err)
	}
	w.mu.Lock()
	i := len(w.nodes) + 1
	w.mu.Unlock()
	pub := private.PublicKey()
	n := &Node{Name: name, Key: pub, Addr: peer.OverlayAddr(pub), w: w, private: private, opts: opts,
		kernel: newKernel(peer.OverlayAddr(pub), peer.LinkLocalAddr(pub))}
	n.host = w.addHost(name, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)}), opts.NAT)
	n.bind = &bind{net: w.Net, host: n.host}
	level := slog.LevelInfo
	if os.Getenv("LCAST_SIM_DEBUG") != "" {
		level = slog.LevelDebug
	}
	n.logger = slog.New(slog.NewTextHandler(&n.logs, &slog.HandlerOptions{Level: level}))
	w.mu.Lock()
	w.nodes = append(w.nodes, n)
	w.mu.Unlock()
	return n
}

// Endpoint returns where peers reach the node: its public address and
// listen port (its NAT's address, for a node behind one, where only the
// NAT's mappings lead in).
func (n *Node) Endpoint() netip.AddrPort { return netip.AddrPortFrom(n.host.public, ListenPort) }

// Peer adds a [[peer]] table for o to n's configuration (applied at the
// next start or Reload).
func (n *Node) Peer(o *Node, opts PeerOptions) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.peers = append(n.peers, peerTable{node: o, PeerOptions: opts})
}

// Unpeer removes o's [[peer]] table from n's configuration.
func (n *Node) Unpeer(o *Node) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, p := range n.peers {
		if p.node == o {
			n.peers = append(n.peers[:i], n.peers[i+1:]...)
			return
		}
	}
}

// Mesh makes every two of nodes peers of each other, with endpoints
// where the other has a public address.
func Mesh(nodes ...*Node) {
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				a.Peer(b, PeerOptions{NoEndpoint: b.opts.NAT != NoNAT})
			}
		}
	}
}

// configText returns the node's configuration file.
func (n *Node) configText() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "interface = %q\nprivate_key = %q\nlisten_port = %d\ncontrol_socket = %q\nrelay = %t\n%s\n",
		"lc0", n.private, ListenPort, filepath.Join(n.w.dir, n.Name+".sock"), n.opts.Relay, n.opts.Config)
	for _, p := range n.peers {
		fmt.Fprintf(&b, "\n[[peer]]\npublic_key = %q\nrelay = %t\nintroducer = %t\n", p.node.Key, p.Relay, p.Introducer)
		if !p.NoEndpoint {
			fmt.Fprintf(&b, "endpoint = %q\n", p.node.Endpoint())
		}
		if len(p.LANPrefixes) > 0 {
			fmt.Fprintf(&b, "lan_prefixes = [\"%s\"]\n", strings.Join(p.LANPrefixes, `", "`))
		}
	}
	return b.String()
}

// load parses the node's configuration as lcast up would read its file.
func (n *Node) load() (*config.Config, error) {
	return config.Parse(n.Name+".toml", []byte(n.configText()))
}

// Start starts the node's daemon, as `lcast up` does, failing the test if
// start-up fails.
func (n *Node) Start() {
	n.w.t.Helper()
	if err := n.TryStart(); err != nil {
		n.w.t.Fatalf("%s: %v", n.Name, err)
	}
}

// TryStart starts the node's daemon and returns why it could not.
func (n *Node) TryStart() error {
	cfg, err := n.load()
	if err != nil {
		return err
	}
	host := daemon.Host{
		OpenLc0: func(c tun.Config, _ *slog.Logger) (daemon.Lc0, error) { return n.kernel.open(c) },
		Bind:    n.bind,
		Clock:   n.w.clock,
	}
	d, err := daemon.New(context.Background(), cfg, n.logger, host, n.load)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, nil) }()
	n.mu.Lock()
	n.d, n.cancel, n.done = d, cancel, done
	n.mu.Unlock()
	return nil
}

// Stop stops the node's daemon as SIGTERM does (lc0 removed, programs'
// memberships with it) and waits for it; a node not running is left as
// it is.
func (n *Node) Stop() {
	n.mu.Lock()
	cancel, done := n.cancel, n.done
	n.d, n.cancel, n.done = nil, nil, nil
	n.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	if err := <-done; err != nil {
		n.w.t.Errorf("%s: %v", n.Name, err)
	}
}

// Crash stops the node's daemon as a crash would leave lc0: the programs'
// memberships stay, for the next daemon to relearn. (The daemon still
// shuts down in order: in one process there is no killing it.)
func (n *Node) Crash() {
	n.kernel.mu.Lock()
	n.kernel.crashed = true
	n.kernel.mu.Unlock()
	n.Stop()
}

// Daemon returns the running daemon, or nil.
func (n *Node) Daemon() *daemon.Daemon {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.d
}

// Status returns the running daemon's status, as lcast status shows it.
func (n *Node) Status() control.Status {
	d := n.Daemon()
	if d == nil {
		n.w.t.Fatalf("%s: not running", n.Name)
	}
	return d.Status()
}

// Reload has the running daemon read its configuration again, as lcast
// reload does.
func (n *Node) Reload() (string, error) {
	d := n.Daemon()
	if d == nil {
		return "", fmt.Errorf("%s: not running", n.Name)
	}
	return d.Reload(context.Background())
}

// Join has a program on the node join group on lc0 from any source, or
// from sources only.
func (n *Node) Join(group netip.Addr, sources ...netip.Addr) {
	n.kernel.join([]netip.Addr{group}, sources)
}

// Leave has the program leave group.
func (n *Node) Leave(group netip.Addr) { n.kernel.leave([]netip.Addr{group}) }

// JoinGroups has a program on the node join each of groups from any
// source at once (as one that opens many sockets together does), and
// LeaveGroups has it leave them: what a program churning through
// thousands of groups makes lcast handle. The kernel merges the changes
// into as few reports as lc0's MTU holds, as Linux does.
func (n *Node) JoinGroups(groups []netip.Addr) { n.kernel.join(groups, nil) }

// LeaveGroups has a program on the node leave groups at once (see
// JoinGroups).
func (n *Node) LeaveGroups(groups []netip.Addr) { n.kernel.leave(groups) }

// Received returns the datagrams delivered to the node's programs.
func (n *Node) Received() <-chan Datagram { return n.kernel.Received }

// Send has a program on the node send a UDP datagram to dst (a group, or
// another node's overlay address) on lc0, with hop limit 1; it reports
// whether lc0 took it (false while no daemon has lc0 open).
func (n *Node) Send(dst netip.Addr, port uint16, payload string) bool {
	return n.kernel.write(udp(n.Addr, dst, port, payload))
}

// udp returns an IPv6/UDP datagram with hop limit 1.
func udp(src, dst netip.Addr, port uint16, payload string) []byte {
	b := make([]byte, 48+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	b[6], b[7] = 17, 1
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	binary.BigEndian.PutUint16(b[40:], port)
	binary.BigEndian.PutUint16(b[42:], port)
	binary.BigEndian.PutUint16(b[44:], uint16(8+len(payload)))
	copy(b[48:], payload)
	return b
}

// Eventually waits until cond holds, checking every few milliseconds, and
// reports whether it did within timeout.
func Eventually(timeout time.Duration, cond func() bool) bool {
	return EventuallyEvery(timeout, 2*time.Millisecond, cond)
}

// EventuallyEvery waits until cond holds, checking every interval, and
// reports whether it did within timeout.
func EventuallyEvery(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}

// lockedBuffer is a log a daemon writes while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
