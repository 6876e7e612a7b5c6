package peer

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/librecast/lcast/mld"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

// Timing of the subscription exchange.
const (
	// HelloInterval is how often a node tells each peer its epoch and
	// generation, so that a peer that missed a part asks for the state again.
	HelloInterval = time.Second
	// HoldTime is how long a peer's subscriptions stay without any message
	// from it (a dead or unreachable peer stops getting traffic then).
	HoldTime = 10 * time.Second
	// MaxGroupsPerPeer caps the subscriptions one peer can make.
	MaxGroupsPerPeer = 1 << 18
	// quietStart is how long after start a node with the higher overlay
	// address waits for a peer to speak first. Two WireGuard handshakes
	// that cross on the wire both fail and are retried only after the
	// 5 s rekey timeout; at a simultaneous start only one side initiates.
	quietStart = 500 * time.Millisecond
	// StateRate and stateBurst pace the datagrams of full states, across
	// all peers: a state of 100,000 groups is 1,640 datagrams per peer,
	// and sent unpaced on every change it would overflow lc0's queue
	// (a lost part costs a whole resend) and pile up in the transport.
	StateRate   = 20000 // datagrams per second
	stateBurst  = 64
	stateRcvBuf = 8 << 20 // bytes of receive buffer for incoming states
)

// Exchange keeps this node's subscriptions known to its peers and learns
// theirs, as soft state: a full state on every change, sent again each
// HelloInterval until the peer acknowledges it (a hello otherwise), a full
// state on request, and expiry after HoldTime of silence. The state toward
// each peer is its own (a relay subscribes at each peer for its other
// peers), and changes only when its content does.
//
// One goroutine sends full states, paced at StateRate: changes that come
// while it sends coalesce, and a state that changes while it is being
// sent is sent again from its first part.
type Exchange struct {
	conn    *net.UDPConn
	self    netip.Addr
	relay   bool
	started time.Time
	epoch   uint64
	log     *slog.Logger
	// state returns the subscriptions to make at a peer; apply receives
	// a peer's subscriptions whenever they change (nil when they expire)
	// and whether it relays.
	state func(peer netip.Addr) []mld.GroupState
	apply func(peer netip.Addr, relay bool, groups []mld.GroupState)

	changeMu sync.Mutex // serializes the computing of states
	mu       sync.Mutex
	gen      uint64 // the last generation given to a state
	peers    map[netip.Addr]*remote
	owed     map[netip.Addr]bool // peers the state sender owes a full state
	wake     chan struct{}       // wakes the state sender
	pace     *rate.Limiter

	// BadMessages counts datagrams dropped as malformed, from unknown
	// addresses or from an unprivileged port.
	BadMessages atomic.Uint64
	// OverCap counts the groups dropped from peers' states beyond
	// MaxGroupsPerPeer.
	OverCap atomic.Uint64
}

// remote is what this node knows of one peer's state, and the state it
// tells the peer.
type remote struct {
	mine    []mld.GroupState   // the state toward the peer
	parts   [][]mld.GroupState // mine, split into parts
	mineGen uint64             // its generation

	epoch     uint64 // the peer's epoch, 0 before the first message
	applied   bool   // a complete state of gen was applied
	gen       uint64
	pending   uint64 // generation being assembled
	received  map[uint16][]mld.GroupState
	held      int  // groups in parts
	capped    bool // groups of the pending state were dropped
	lastHeard time.Time
	// acked is this node's generation the peer acknowledged having
	// applied, valid while ackedOK (the peer knows this node's epoch).
	acked   uint64
	ackedOK bool
}

// NewExchange listens on [self]:SubscriptionPort. self must be an address of
// lc0; peers are the overlay addresses of the peers; relay tells them that
// this node passes multicast on; state and apply are as in Exchange.
func NewExchange(self netip.Addr, peers []netip.Addr, relay bool, state func(netip.Addr) []mld.GroupState,
	apply func(netip.Addr, bool, []mld.GroupState), log *slog.Logger) (*Exchange, error) {
	conn, err := net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(self, SubscriptionPort)))
	if err != nil {
		return nil, err
	}
	// A peer's full state arrives as a burst of up to thousands of parts.
	if rc, err := conn.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, stateRcvBuf) })
	}
	var e [8]byte
	rand.Read(e[:])
	x := &Exchange{
		conn:    conn,
		self:    self,
		relay:   relay,
		started: time.Now(),
		epoch:   binary.BigEndian.Uint64(e[:]) | 1,
		log:     log,
		state:   state,
		apply:   apply,
		peers:   map[netip.Addr]*remote{},
		owed:    map[netip.Addr]bool{},
		wake:    make(chan struct{}, 1),
		pace:    rate.NewLimiter(StateRate, stateBurst),
	}
	for _, p := range peers {
		x.peers[p] = &remote{}
	}
	x.Changed()
	return x, nil
}

// Changed tells the exchange that the states to make at peers may have
// changed: it asks state for each, and announces those that did change.
// The exchange keeps what state returns, so state must return slices it
// does not change afterwards.
func (x *Exchange) Changed() {
	x.changeMu.Lock()
	defer x.changeMu.Unlock()
	x.mu.Lock()
	addrs := slices.Collect(maps.Keys(x.peers))
	x.mu.Unlock()
	states := make([][]mld.GroupState, len(addrs))
	for i, a := range addrs {
		states[i] = x.state(a)
	}
	x.mu.Lock()
	for i, a := range addrs {
		r, ok := x.peers[a]
		if !ok || (r.parts != nil && slices.EqualFunc(r.mine, states[i], mld.GroupState.Equal)) {
			continue
		}
		x.gen++
		r.mine, r.parts, r.mineGen = states[i], SplitGroups(states[i]), x.gen
		x.owed[a] = true
	}
	x.mu.Unlock()
	x.wakeSender()
}

// SetPeers makes peers (overlay addresses) the exchange's peers: it
// forgets those no longer listed and owes the new ones their state. What
// it knows of the others carries on.
func (x *Exchange) SetPeers(peers []netip.Addr) {
	x.mu.Lock()
	listed := map[netip.Addr]bool{}
	for _, a := range peers {
		listed[a] = true
		if _, ok := x.peers[a]; !ok {
			x.peers[a] = &remote{}
		}
	}
	for a := range x.peers {
		if !listed[a] {
			delete(x.peers, a)
			delete(x.owed, a)
		}
	}
	x.mu.Unlock()
	x.Changed()
}

// Run receives messages and sends hellos until ctx is done; it closes the
// socket when it returns.
func (x *Exchange) Run(ctx context.Context) {
	go func() {
		<-ctx.Done()
		x.conn.Close()
	}()
	// Toward peers it kept quiet with at start (see quietStart) and has
	// still not heard from, the state goes as soon as the quiet ends, not
	// at the next hello.
	quietEnd := time.AfterFunc(quietStart, func() {
		x.mu.Lock()
		for a, r := range x.peers {
			if x.quietToward(a, r, x.started) {
				x.owed[a] = true
			}
		}
		x.mu.Unlock()
		x.wakeSender()
	})
	defer quietEnd.Stop()
	var wg sync.WaitGroup
	wg.Go(func() { x.tick(ctx) })
	wg.Go(func() { x.sendStates(ctx) })
	buf := make([]byte, 65536)
	for {
		n, from, err := x.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				break
			}
			continue
		}
		x.receive(from, buf[:n])
	}
	wg.Wait()
}

func (x *Exchange) tick(ctx context.Context) {
	t := time.NewTicker(HelloInterval)
	defer t.Stop()
	for {
		x.mu.Lock()
		now := time.Now()
		var hellos []netip.Addr
		for a, r := range x.peers {
			if r.ackedOK && r.acked == r.mineGen {
				hellos = append(hellos, a)
			} else {
				x.owed[a] = true
			}
			if r.epoch != 0 && now.Sub(r.lastHeard) > HoldTime {
				// Forget the peer: its next message starts afresh.
				x.log.Info("peer silent, dropping its subscriptions", "peer", a, "silent_for", now.Sub(r.lastHeard).Round(time.Second))
				*r = remote{mine: r.mine, parts: r.parts, mineGen: r.mineGen}
				x.apply(a, false, nil)
			}
		}
		x.mu.Unlock()
		x.wakeSender()
		for _, a := range hellos {
			x.send(a, 0, false)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (x *Exchange) receive(from netip.AddrPort, b []byte) {
	addr := from.Addr().Unmap()
	x.mu.Lock()
	r, known := x.peers[addr]
	if !known || from.Port() != SubscriptionPort {
		x.mu.Unlock()
		x.BadMessages.Add(1)
		return
	}
	m, err := ParseMessage(b)
	if err != nil {
		x.mu.Unlock()
		x.BadMessages.Add(1)
		return
	}
	r.lastHeard = time.Now()
	if m.PeerEpoch == x.epoch {
		r.acked, r.ackedOK = m.PeerGeneration, true
	}
	if m.Epoch != r.epoch {
		// The peer (re)started: its state is to be learnt afresh. What it
		// subscribed to before stays until the new state is complete.
		r.epoch, r.applied, r.pending, r.received = m.Epoch, false, 0, nil
	}
	var changed []mld.GroupState
	apply, dropped := false, 0
	if m.Parts > 0 {
		changed, apply, dropped = r.collect(m)
	}
	capped := apply && r.capped
	want := m.Parts == 0 && (!r.applied || r.gen != m.Generation)
	sendState := m.Want || m.PeerEpoch != x.epoch
	if sendState {
		x.owed[addr] = true
	}
	x.mu.Unlock()

	if dropped > 0 {
		x.OverCap.Add(uint64(dropped))
	}
	if apply {
		if capped {
			x.log.Warn("peer subscribed to too many groups; keeping the first ones", "peer", addr, "cap", MaxGroupsPerPeer)
		}
		x.apply(addr, m.Relay, changed)
		x.log.Debug("applied peer subscriptions", "peer", addr, "generation", m.Generation, "groups", len(changed))
	}
	switch {
	case sendState:
		x.wakeSender()
	case want:
		x.send(addr, 0, true)
	case apply:
		x.send(addr, 0, false) // acknowledge at once: the peer stops resending
	}
}

// collect adds a part of a state; when the state is complete it returns it.
// Groups beyond MaxGroupsPerPeer in a state are dropped as their parts
// arrive, so a peer cannot make this node hold more; collect returns how
// many it dropped of this part (r.capped tells whether the state lost any).
func (r *remote) collect(m *Message) (all []mld.GroupState, complete bool, dropped int) {
	if r.applied && m.Generation <= r.gen {
		return nil, false, 0 // stale or repeated
	}
	if m.Generation != r.pending || r.received == nil {
		r.pending, r.received, r.held, r.capped = m.Generation, map[uint16][]mld.GroupState{}, 0, false
	}
	r.held -= len(r.received[m.Part]) // a part sent again replaces itself
	groups := m.Groups
	if room := MaxGroupsPerPeer - r.held; len(groups) > room {
		groups, dropped, r.capped = groups[:room], len(groups)-room, true
	}
	r.received[m.Part] = groups
	r.held += len(groups)
	if len(r.received) < int(m.Parts) {
		return nil, false, dropped
	}
	all = make([]mld.GroupState, 0, r.held)
	for i := range m.Parts {
		all = append(all, r.received[i]...)
	}
	r.applied, r.gen, r.received, r.held = true, m.Generation, nil, 0
	return all, true, dropped
}

// Silence returns how long the peer at addr has sent nothing, counted from
// the exchange's start if it never did (or was forgotten, after
// HoldTime); 0 for a peer the exchange does not know.
func (x *Exchange) Silence(addr netip.Addr, now time.Time) time.Duration {
	x.mu.Lock()
	defer x.mu.Unlock()
	r, ok := x.peers[addr]
	switch {
	case !ok:
		return 0
	case r.lastHeard.IsZero():
		return now.Sub(x.started)
	}
	return now.Sub(r.lastHeard)
}

func (x *Exchange) wakeSender() {
	select {
	case x.wake <- struct{}{}:
	default:
	}
}

// sendStates sends the full state to the peers it is owed, paced, until
// ctx is done.
func (x *Exchange) sendStates(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-x.wake:
		}
		for {
			x.mu.Lock()
			var addr netip.Addr
			for a := range x.owed {
				addr = a
				break
			}
			delete(x.owed, addr)
			var gen uint64
			var parts int
			if r, ok := x.peers[addr]; ok {
				gen, parts = r.mineGen, len(r.parts)
			}
			x.mu.Unlock()
			if !addr.IsValid() {
				break
			}
			for i := range parts {
				if x.pace.Wait(ctx) != nil {
					return
				}
				x.mu.Lock()
				r, ok := x.peers[addr]
				changed := !ok || r.mineGen != gen
				x.mu.Unlock()
				if changed {
					break // the peer is owed the new state, from its start (or is gone)
				}
				x.send(addr, i+1, false)
			}
		}
	}
}

// quietToward reports whether, at time now, this node keeps quiet toward
// the peer at addr (see quietStart): it has the higher overlay address and
// has not heard from the peer since it started.
func (x *Exchange) quietToward(addr netip.Addr, r *remote, now time.Time) bool {
	return r.epoch == 0 && x.self.Compare(addr) > 0 && now.Sub(x.started) < quietStart
}

// send sends part (1-based; 0 for a hello) of the local state to addr.
func (x *Exchange) send(addr netip.Addr, part int, want bool) {
	x.mu.Lock()
	r, ok := x.peers[addr]
	if !ok || part > len(r.parts) || x.quietToward(addr, r, time.Now()) {
		x.mu.Unlock()
		return
	}
	m := Message{Want: want, Relay: x.relay, Epoch: x.epoch, PeerEpoch: r.epoch, Generation: r.mineGen}
	if r.applied {
		m.PeerGeneration = r.gen
	}
	if part > 0 {
		m.Part, m.Parts, m.Groups = uint16(part-1), uint16(len(r.parts)), r.parts[part-1]
	}
	b := AppendMessage(nil, &m)
	x.mu.Unlock()
	if _, err := x.conn.WriteToUDPAddrPort(b, netip.AddrPortFrom(addr, SubscriptionPort)); err != nil && !errors.Is(err, net.ErrClosed) {
		x.log.Debug("sending subscription message", "peer", addr, "err", err)
	}
}
