package peer

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// KeepaliveInterval is how often an idle link sends a keepalive, which keeps
// NAT mappings open (WireGuard's persistent keepalive).
const KeepaliveInterval = 25 * time.Second

// Config is a peer as the transport needs it.
type Config struct {
	PublicKey Key
	// Endpoint is where to reach the peer; invalid for a peer that
	// connects to us (from behind NAT, for instance).
	Endpoint netip.AddrPort
	// Forget, with no Endpoint, drops the endpoint given before (an
	// introduced one that never answered: Introduced.Unreached), so that
	// no more handshakes go there: the peer is removed and added again.
	Forget bool
}

// Transport carries overlay packets to and from peers over UDP with
// WireGuard's protocol (Noise IK handshakes, ChaCha20-Poly1305, replay
// protection, roaming, cookies), using wireguard-go's device. It reads
// what to send from, and writes what it receives into, a tun.Device: the
// router's port. A peer may send only from its overlay address.
type Transport struct {
	dev  *device.Device
	self netip.Addr
	log  *slog.Logger

	mu     sync.Mutex
	peers  map[Key]Config     // as last configured
	byAddr map[netip.Addr]Key // their overlay addresses
	// later enable the keepalives delayed toward peers with a lower
	// overlay address (see NewTransport), one timer per start or change
	// (those that fired are pruned).
	later  []delayed
	closed bool
}

// Stats is a peer's link as the transport sees it.
type Stats struct {
	Endpoint      string
	LastHandshake time.Time // zero before the first
	RxBytes       uint64    // UDP payload bytes, handshakes included
	TxBytes       uint64
}

// Port is what the transport carries: it reads from a Port the packets to
// send to peers and writes into it what peers sent. Sent is called with
// the buffers of packets as the transport sends them (each buffer the one
// Read filled, encrypted in place), and Received with the datagrams the
// transport receives from the underlay, before it takes them (a size the
// port sets to 0 is skipped; bufs may go on past the datagrams, with the
// buffers of the last call's), so that the Port can bound how many the
// transport holds.
type Port interface {
	wgtun.Device
	Sent(bufs [][]byte)
	Received(bufs [][]byte, sizes []int)
}

// reportingBind tells the port which of its packets are being sent, and
// which datagrams were received. Being
// a wrapper, it turns off wireguard-go's watch of route changes for its own
// StdNetBind, which makes a peer's replies leave from a new source address
// at once when the route to the peer changes; without it, the source
// follows the address the peer's next packet arrives on (a hello, within a
// second), and TestUnderlayAddressChange measures the same recovery.
type reportingBind struct {
	conn.Bind
	port Port
}

func (b reportingBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	b.port.Sent(bufs)
	return b.Bind.Send(bufs, ep)
}

func (b reportingBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	for i, recv := range fns {
		// The buffers of the last call's datagrams that the transport did
		// not take are in their slots still: the port learns they are free.
		last := 0
		fns[i] = func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			n, err := recv(bufs, sizes, eps)
			b.port.Received(bufs[:max(n, min(last, len(bufs)))], sizes[:n])
			last = n
			return n, err
		}
	}
	return fns, actual, err
}

// NewTransport starts the transport on UDP port listenPort of bind (nil:
// the machine's own UDP, wireguard-go's default bind) with the node's
// private key and its peers.
func NewTransport(private Key, listenPort int, peers []Config, port Port, bind conn.Bind, log *slog.Logger) (*Transport, error) {
	if bind == nil {
		bind = conn.NewDefaultBind()
	}
	dev := device.NewDevice(port, reportingBind{bind, port}, wgLogger(log))
	// A persistent keepalive makes WireGuard contact the peer as soon as
	// the device is up. Toward peers with a lower overlay address it is
	// enabled only after quietStart, so that at a simultaneous start only
	// one side initiates the handshake (see quietStart).
	self := OverlayAddr(private.PublicKey())
	// The port is bound when it is set (if lc0 is up already) or when the
	// device comes up: either failure names it.
	if err := dev.IpcSet(fmt.Sprintf("listen_port=%d\n", listenPort)); err != nil {
		dev.Close()
		return nil, fmt.Errorf("listen_port %d: %w", listenPort, err)
	}
	t := &Transport{dev: dev, self: self, log: log}
	var b, later strings.Builder
	fmt.Fprintf(&b, "private_key=%s\nreplace_peers=true\n", hex.EncodeToString(private[:]))
	for _, p := range peers {
		t.writeNewPeer(&b, &later, p)
	}
	if err := dev.IpcSet(b.String()); err != nil {
		dev.Close()
		return nil, fmt.Errorf("configure transport: %w", err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("listen_port %d: %w", listenPort, err)
	}
	// The port's tun.Device brings wireguard-go's device up on its own
	// too; when that happens between the two calls above and the port is
	// taken, wireguard-go forgets the port and dev.Up binds any.
	if err := boundTo(dev, listenPort); err != nil {
		dev.Close()
		return nil, fmt.Errorf("listen_port %d: %w", listenPort, err)
	}
	t.setPeers(peers)
	t.enableLater(later.String())
	return t, nil
}

// boundTo returns nil if dev listens on port (or port is 0), else why
// port cannot be bound.
func boundTo(dev *device.Device, port int) error {
	text, err := dev.IpcGet()
	if err != nil || port == 0 || strings.Contains(text, fmt.Sprintf("listen_port=%d\n", port)) {
		return err
	}
	c, err := net.ListenUDP("udp", &net.UDPAddr{Port: port})
	if err != nil {
		return err
	}
	c.Close()
	return errors.New("the transport did not bind it")
}

// writeNewPeer writes a new peer's configuration into b: with its
// persistent keepalive if its overlay address is higher than this node's,
// else without, and the keepalive into later, to enable after quietStart.
func (t *Transport) writeNewPeer(b, later *strings.Builder, p Config) {
	if t.self.Compare(OverlayAddr(p.PublicKey)) > 0 {
		writePeer(b, p, false)
		fmt.Fprintf(later, "public_key=%s\nupdate_only=true\n%s", hex.EncodeToString(p.PublicKey[:]), keepaliveLine)
		return
	}
	writePeer(b, p, true)
}

// enableLater applies the configuration later after quietStart, unless
// it is empty or the transport is closed by then.
func (t *Transport) enableLater(later string) {
	if later == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	t.later = slices.DeleteFunc(t.later, func(d delayed) bool { return now.After(d.due) })
	t.later = append(t.later, delayed{due: now.Add(quietStart), timer: time.AfterFunc(quietStart, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.closed {
			return
		}
		// A peer removed meanwhile is skipped: update_only.
		if err := t.dev.IpcSet(later); err != nil {
			t.log.Warn("enabling keepalives", "err", err)
		}
	})})
}

// delayed is a configuration to apply at due.
type delayed struct {
	due   time.Time
	timer *time.Timer
}

var keepaliveLine = fmt.Sprintf("persistent_keepalive_interval=%d\n", int(KeepaliveInterval/time.Second))

// writePeer writes the configuration of a new peer in wireguard-go's IPC
// format, with the persistent keepalive or without.
func writePeer(b *strings.Builder, p Config, keepalive bool) {
	fmt.Fprintf(b, "public_key=%s\n", hex.EncodeToString(p.PublicKey[:]))
	if p.Endpoint.IsValid() {
		fmt.Fprintf(b, "endpoint=%s\n", p.Endpoint)
	}
	fmt.Fprintf(b, "allowed_ip=%s/128\nallowed_ip=%s/128\n", OverlayAddr(p.PublicKey), LinkLocalAddr(p.PublicKey))
	if keepalive {
		b.WriteString(keepaliveLine)
	}
}

// SetPeers makes peers the transport's peers: it removes those no longer
// listed and adds the new ones, and returns how many of each. The sessions
// of the others carry on; their endpoint changes only if its configuration
// did, so that a peer that roamed (behind NAT, say) stays reachable where
// it is.
func (t *Transport) SetPeers(peers []Config) (added, removed int, err error) {
	var later strings.Builder
	defer func() { t.enableLater(later.String()) }()
	t.mu.Lock()
	defer t.mu.Unlock()
	var b strings.Builder
	next := map[Key]bool{}
	for _, p := range peers {
		next[p.PublicKey] = true
		old, known := t.peers[p.PublicKey]
		switch {
		case !known:
			t.writeNewPeer(&b, &later, p)
			added++
		case p.Endpoint.IsValid() && p.Endpoint != old.Endpoint:
			fmt.Fprintf(&b, "public_key=%s\nupdate_only=true\nendpoint=%s\n", hex.EncodeToString(p.PublicKey[:]), p.Endpoint)
		case p.Forget && !p.Endpoint.IsValid() && old.Endpoint.IsValid():
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", hex.EncodeToString(p.PublicKey[:]))
			t.writeNewPeer(&b, &later, p)
		}
	}
	for k := range t.peers {
		if _, listed := next[k]; !listed {
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", hex.EncodeToString(k[:]))
			removed++
		}
	}
	if b.Len() > 0 {
		if err := t.dev.IpcSet(b.String()); err != nil {
			later.Reset()
			return 0, 0, fmt.Errorf("configure transport: %w", err)
		}
	}
	t.setPeers(peers)
	return added, removed, nil
}

// setPeers records peers as configured; the caller holds t.mu or owns t.
func (t *Transport) setPeers(peers []Config) {
	t.peers, t.byAddr = map[Key]Config{}, map[netip.Addr]Key{}
	for _, p := range peers {
		t.peers[p.PublicKey] = p
		t.byAddr[OverlayAddr(p.PublicKey)] = p.PublicKey
	}
}

// Repair starts a new handshake with each peer at addrs (overlay
// addresses) that has not completed one within recent: it drops the
// peer's keys, whose session carries nothing (see health.go), and sends an
// initiation at once rather than after WireGuard's rekey timeout. Packets
// for the peer wait for the new session.
func (t *Transport) Repair(addrs []netip.Addr, recent time.Duration) {
	stats, err := t.Stats()
	if err != nil {
		return
	}
	now := time.Now()
	t.mu.Lock()
	keys := make([]Key, 0, len(addrs))
	for _, a := range addrs {
		if k, ok := t.byAddr[a]; ok {
			keys = append(keys, k)
		}
	}
	t.mu.Unlock()
	for _, k := range keys {
		if hs := stats[k].LastHandshake; !hs.IsZero() && now.Sub(hs) < recent {
			continue
		}
		p := t.dev.LookupPeer(device.NoisePublicKey(k))
		if p == nil {
			continue
		}
		p.ExpireCurrentKeypairs()
		// An error (no endpoint known yet, for a peer behind NAT) leaves
		// the peer to contact this node.
		p.SendHandshakeInitiation(false)
	}
}

// SetEndpoint makes ep the endpoint of the peer with key k (one that moved,
// say), and reports whether it differs from the one configured or set
// before.
func (t *Transport) SetEndpoint(k Key, ep netip.AddrPort) (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.peers[k]
	if !ok {
		return false, fmt.Errorf("no peer %s", k)
	}
	if err := t.dev.IpcSet(fmt.Sprintf("public_key=%s\nupdate_only=true\nendpoint=%s\n", hex.EncodeToString(k[:]), ep)); err != nil {
		return false, fmt.Errorf("configure transport: %w", err)
	}
	changed := p.Endpoint != ep
	p.Endpoint = ep
	t.peers[k] = p
	return changed, nil
}

// Close stops the transport.
func (t *Transport) Close() {
	t.mu.Lock()
	t.closed = true
	for _, l := range t.later {
		l.timer.Stop()
	}
	t.mu.Unlock()
	t.dev.Close()
}

// Stats returns the link state of every peer, by public key.
func (t *Transport) Stats() (map[Key]Stats, error) {
	text, err := t.dev.IpcGet()
	if err != nil {
		return nil, err
	}
	out := map[Key]Stats{}
	var cur *Stats
	var curKey Key
	var hsSec, hsNsec int64
	flush := func() {
		if cur != nil {
			if hsSec != 0 || hsNsec != 0 {
				cur.LastHandshake = time.Unix(hsSec, hsNsec)
			}
			out[curKey] = *cur
		}
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "public_key":
			flush()
			raw, err := hex.DecodeString(v)
			if err != nil || len(raw) != KeyLen {
				return nil, fmt.Errorf("transport reported a bad key %q", v)
			}
			curKey, cur, hsSec, hsNsec = Key(raw), &Stats{}, 0, 0
		case "endpoint":
			if cur != nil {
				cur.Endpoint = v
			}
		case "last_handshake_time_sec":
			hsSec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			hsNsec, _ = strconv.ParseInt(v, 10, 64)
		case "rx_bytes":
			if cur != nil {
				cur.RxBytes, _ = strconv.ParseUint(v, 10, 64)
			}
		case "tx_bytes":
			if cur != nil {
				cur.TxBytes, _ = strconv.ParseUint(v, 10, 64)
			}
		}
	}
	flush()
	return out, nil
}

// ErrNoAddress means an endpoint's host name resolved to no address.
var ErrNoAddress = errors.New("resolves to no address")

// ResolveEndpoint turns "host" and port into an address, looking the host
// up in DNS when it is a name. IPv6 addresses are preferred.
func ResolveEndpoint(ctx context.Context, host string, port int) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(a.Unmap(), uint16(port)), nil
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("endpoint %s: %w", host, err)
	}
	if len(addrs) == 0 {
		return netip.AddrPort{}, fmt.Errorf("endpoint %s: %w", host, ErrNoAddress)
	}
	best := addrs[0]
	for _, a := range addrs {
		if a.Unmap().Is6() {
			best = a
			break
		}
	}
	return netip.AddrPortFrom(best.Unmap(), uint16(port)), nil
}

// Done is closed when the transport stops, also when it stops on its own
// because its packet source (lc0) failed.
func (t *Transport) Done() <-chan struct{} { return t.dev.Wait() }
