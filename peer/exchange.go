package peer

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/librecast/lcast/internal/clock"
	"github.com/librecast/lcast/mld"
	"golang.org/x/time/rate"
)

// Timing of the subscription exchange.
const (
	// HelloInterval is how often a node tells each peer its epoch and
	// generation, so that a peer that missed a part asks for the state
	// again. Each hello is also a ping (see health.go).
	HelloInterval = time.Second
	// HoldTime is how long a peer's subscriptions stay without any message
	// from it (a dead or unreachable peer stops getting traffic then).
	HoldTime = 10 * time.Second
	// MaxGroupsPerPeer caps the subscriptions one peer can make,
	// MaxSourcesPerGroup the sources of one of them and MaxSourcesPerPeer
	// the sources of all: at most about 9 MiB of state per peer. Groups
	// beyond them are dropped, sources trimmed (see sanitize.go), and
	// both counted.
	MaxGroupsPerPeer   = 1 << 18
	MaxSourcesPerGroup = 1024
	MaxSourcesPerPeer  = 1 << 18
	// quietStart is how long after start, or after a peer is added, a
	// node with the higher overlay address waits for the peer to speak
	// first. Two WireGuard handshakes that cross on the wire both fail;
	// at a simultaneous start, or when an introducer introduces two nodes
	// to each other at once, only one side initiates (and health.go
	// repairs what crossing remains).
	quietStart = 500 * time.Millisecond
	// StateRate and stateBurst pace the datagrams of full states, across
	// all peers: a state of 100,000 groups is 1,640 datagrams per peer,
	// and sent unpaced on every change it would overflow the transport's
	// queues (a lost part costs a whole resend).
	StateRate  = 20000 // datagrams per second
	stateBurst = 64
	// inboxLen bounds the control messages received and not yet handled:
	// at most inboxLen*maxMsgPayload bytes (5 MiB) wait.
	inboxLen = 4096
)

// ExchangeConfig is what an Exchange is made with.
type ExchangeConfig struct {
	// Self is this node's overlay address, Peers the peers'.
	Self  netip.Addr
	Peers []netip.Addr
	// Relay tells the peers that this node passes multicast on.
	Relay bool
	// State returns the subscriptions to make at a peer; the exchange
	// keeps the slice, so State must not change it afterwards.
	State func(peer netip.Addr) []mld.GroupState
	// Apply receives a peer's subscriptions whenever they change (nil
	// when they expire) and whether the peer says it relays (its word
	// only: whether to trust it as a relay is this node's config's).
	Apply func(peer netip.Addr, relay bool, groups []mld.GroupState)
	// Send sends a control message to a peer inside the transport; it
	// must not keep msg.
	Send func(peer netip.Addr, msg []byte) error
	// Repair starts a new handshake with each peer at addrs that has not
	// completed one within recent (Transport.Repair); nil repairs none.
	Repair func(addrs []netip.Addr, recent time.Duration)
	// LastRx returns when the last packet of any kind from a peer
	// arrived (zero if never), read on Clock; nil counts only control
	// messages.
	LastRx func(peer netip.Addr) time.Time
	// Watched reports the peers whose direct path is watched closely
	// (hellos every pathHello: a node that can fall back on a relay
	// learns within about half a second that the path broke); nil
	// watches none.
	Watched func(peer netip.Addr) bool
	// PathChanged is called, from Run's goroutine, when whether the path
	// to some peer is direct (Exchange.Direct) changed; nil for none.
	PathChanged func()
	Log         *slog.Logger
	// Clock is what the exchange's timers and times read; nil is
	// clock.Real. (The pacing of states, StateRate, runs on real time.)
	Clock clock.Clock
}

// Exchange keeps this node's subscriptions known to its peers and learns
// theirs, as soft state: a full state on every change, sent again each
// HelloInterval until the peer acknowledges it (a hello otherwise), a full
// state on request, and expiry after HoldTime of silence. The state toward
// each peer is its own (a relay subscribes at each peer for its other
// peers), and changes only when its content does. Its messages travel
// inside the transport (Send, HandleControl), never through a socket. The
// same messages measure each session's health (health.go).
//
// Run's goroutines handle received messages, send hellos and repair
// sessions (tick), and send full states, paced at StateRate: changes that
// come while it sends coalesce, and a state that changes while it is being
// sent is sent again from its first part.
type Exchange struct {
	self    netip.Addr
	relay   bool
	clock   clock.Clock
	started time.Time
	epoch   uint64
	log     *slog.Logger
	state   func(peer netip.Addr) []mld.GroupState
	apply   func(peer netip.Addr, relay bool, groups []mld.GroupState)
	out     func(peer netip.Addr, msg []byte) error
	repair  func(addrs []netip.Addr, recent time.Duration)
	lastRx  func(peer netip.Addr) time.Time
	watched func(peer netip.Addr) bool
	pathed  func()
	inbox   chan inbound

	changeMu sync.Mutex // serializes the computing of states
	mu       sync.Mutex
	gen      uint64 // the last generation given to a state
	peers    map[netip.Addr]*remote
	owed     map[netip.Addr]bool // peers the state sender owes a full state
	wake     chan struct{}       // wakes the state sender
	pace     *rate.Limiter

	// BadMessages counts control messages dropped as malformed or from
	// addresses that are not peers.
	BadMessages atomic.Uint64
	// OverCap counts the groups dropped from peers' states beyond
	// MaxGroupsPerPeer.
	OverCap atomic.Uint64
	// SourcesOverCap counts the sources trimmed from peers' states beyond
	// MaxSourcesPerGroup or MaxSourcesPerPeer.
	SourcesOverCap atomic.Uint64
	// InboxFull counts control messages dropped because inboxLen waited.
	InboxFull atomic.Uint64
}

// inbound is a control message received from a peer.
type inbound struct {
	from netip.Addr
	msg  []byte
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
	heldSrcs  int  // sources in parts
	capped    bool // groups of the pending state were dropped
	lastHeard time.Time
	// acked is this node's generation the peer acknowledged having
	// applied, valid while ackedOK (the peer knows this node's epoch).
	acked   uint64
	ackedOK bool
	resend       // when the full state is owed again (sendstate.go)
	direct  bool // the path is direct, as tick last found (see isDirect)
	// quietUntil is when the quiet toward the peer ends (see quietStart);
	// zero once tick has seen it end.
	quietUntil time.Time

	health
}

// NewExchange returns the exchange of cfg; Run runs it.
func NewExchange(cfg ExchangeConfig) *Exchange {
	var e [8]byte
	rand.Read(e[:])
	clk := clock.Or(cfg.Clock)
	x := &Exchange{
		self:    cfg.Self,
		relay:   cfg.Relay,
		clock:   clk,
		started: clk.Now(),
		epoch:   binary.BigEndian.Uint64(e[:]) | 1,
		log:     cfg.Log,
		state:   cfg.State,
		apply:   cfg.Apply,
		out:     cfg.Send,
		repair:  cfg.Repair,
		lastRx:  cfg.LastRx,
		watched: cfg.Watched,
		pathed:  cfg.PathChanged,
		inbox:   make(chan inbound, inboxLen),
		peers:   map[netip.Addr]*remote{},
		owed:    map[netip.Addr]bool{},
		wake:    make(chan struct{}, 1),
		pace:    rate.NewLimiter(StateRate, stateBurst),
	}
	for _, p := range cfg.Peers {
		x.peers[p] = &remote{quietUntil: x.started.Add(quietStart)}
	}
	x.Changed()
	return x
}

// HandleControl takes a control message that the transport received from
// the peer at from (authenticated); it copies msg. When inboxLen messages
// wait, it drops msg and counts it (InboxFull).
func (x *Exchange) HandleControl(from netip.Addr, msg []byte) {
	enqueue(x.inbox, from, msg, &x.InboxFull)
}

// enqueue puts a copy of msg, from the peer at from, into inbox, or counts
// it in full when inbox is full.
func enqueue(inbox chan<- inbound, from netip.Addr, msg []byte, full *atomic.Uint64) {
	select {
	case inbox <- inbound{from, bytes.Clone(msg)}:
	default:
		full.Add(1)
	}
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
		r.resend = freshState(x.clock.Now())
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
			x.peers[a] = &remote{quietUntil: x.clock.Now().Add(quietStart)}
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

// Run handles received messages, sends hellos and states and repairs
// sessions until ctx is done, and waits for its goroutines.
func (x *Exchange) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { x.tick(ctx) })
	wg.Go(func() { x.sendStates(ctx) })
	for {
		select {
		case <-ctx.Done():
			return
		case in := <-x.inbox:
			x.receive(in.from, in.msg)
		}
	}
}

// tick runs step every tickInterval until ctx is done.
func (x *Exchange) tick(ctx context.Context) {
	t := x.clock.NewTicker(tickInterval)
	defer t.Stop()
	for {
		x.step()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// step sends hellos, owes unacknowledged states, forgets silent peers and
// repairs sessions that answer nothing: one tick's work.
func (x *Exchange) step() {
	now := x.clock.Now()
	x.mu.Lock()
	var hellos, repair []netip.Addr
	pathChanged := false
	for a, r := range x.peers {
		if (!r.ackedOK || r.acked != r.mineGen || r.requested) && r.mayResend(now) {
			x.owed[a] = true
		}
		last := x.lastFrom(a, r)
		silent := time.Duration(0)
		if !last.IsZero() {
			silent = now.Sub(last)
		}
		every := r.helloInterval(x.since(now), silent)
		if x.watched != nil && x.watched(a) {
			every = min(every, pathHello)
		}
		// Half a tick early is on time: a ticker's ticks are not
		// exactly tickInterval apart.
		if now.Sub(r.lastHello) >= every-tickInterval/2 {
			r.lastHello = now
			hellos = append(hellos, a)
		}
		if d := r.isDirect(now, x.since(now)); d != r.direct {
			r.direct, pathChanged = d, true
		}
		if !r.quietUntil.IsZero() && !now.Before(r.quietUntil) {
			// Toward a peer it kept quiet with (see quietStart) and
			// has still not heard from, the state goes as soon as
			// the quiet ends, not at the next resend.
			if x.waitsFor(a, r) {
				x.owed[a] = true
			}
			r.quietUntil = time.Time{}
		}
		if x.repairDue(a, r, now, last) {
			repair = append(repair, a)
		}
		if r.epoch != 0 && now.Sub(r.lastHeard) > HoldTime {
			// Forget the peer: its next message starts afresh.
			x.log.Info("peer silent, dropping its subscriptions", "peer", a, "silent_for", now.Sub(r.lastHeard).Round(time.Second))
			*r = remote{mine: r.mine, parts: r.parts, mineGen: r.mineGen, lastHeard: r.lastHeard, health: r.health}
			x.apply(a, false, nil)
		}
	}
	x.mu.Unlock()
	if pathChanged && x.pathed != nil {
		x.pathed()
	}
	x.wakeSender()
	for _, a := range hellos {
		x.send(a, 0, sendFlags{ping: true})
	}
	if len(repair) > 0 && x.repair != nil {
		x.log.Debug("repairing sessions that answer nothing", "peers", repair)
		x.repair(repair, minRTO)
	}
}

func (x *Exchange) receive(addr netip.Addr, b []byte) {
	x.mu.Lock()
	r, known := x.peers[addr]
	if !known {
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
	now := x.clock.Now()
	r.lastHeard = now
	r.heardFrom(now)
	if m.Epoch != r.epoch {
		// The peer (re)started: its state is to be learnt afresh. What it
		// subscribed to before stays until the new state is complete.
		r.epoch, r.applied, r.pending, r.received, r.heard, r.ackedOK = m.Epoch, false, 0, nil, 0, false
		r.resend.restart(now) // a new start is owed the state at once
	}
	r.heard = max(r.heard, m.Stamp)
	if m.PeerEpoch == x.epoch {
		r.acked, r.ackedOK = m.PeerGeneration, true
		r.echoed(m, x.since(now))
		if r.acked == r.mineGen {
			r.resend = resend{}
		}
	}
	var changed []mld.GroupState
	apply, dropped, trimmed := false, 0, 0
	if m.Parts > 0 {
		changed, apply, dropped, trimmed = r.collect(m)
	}
	capped := apply && r.capped
	want := m.Parts == 0 && (!r.applied || r.gen != m.Generation)
	// A request for the state is served at once the first time, then
	// at most as often as resends (sendstate.go).
	sendState := (m.Want || m.PeerEpoch != x.epoch) && r.mayResend(now)
	r.requested = r.requested || ((m.Want || m.PeerEpoch != x.epoch) && !sendState)
	if sendState {
		x.owed[addr] = true
	}
	pong := m.Ping && r.mayPong(x.since(now))
	x.mu.Unlock()

	if dropped > 0 {
		x.OverCap.Add(uint64(dropped))
	}
	if trimmed > 0 {
		x.SourcesOverCap.Add(uint64(trimmed))
	}
	if apply {
		if capped {
			x.log.Warn("peer subscribed to too many groups; keeping the first ones", "peer", addr, "cap", MaxGroupsPerPeer)
		}
		x.apply(addr, m.Relay, changed)
		x.log.Debug("applied peer subscriptions", "peer", addr, "generation", m.Generation, "groups", len(changed))
	}
	if sendState {
		x.wakeSender()
	}
	switch {
	case want:
		x.send(addr, 0, sendFlags{want: true, pong: pong})
	case apply || pong:
		x.send(addr, 0, sendFlags{pong: pong}) // acknowledge at once: the peer stops resending
	}
}

// collect adds a part of a state; when the state is complete it returns
// it, sanitized (sorted by group, each group once: see sanitize). Groups
// beyond MaxGroupsPerPeer, sources beyond MaxSourcesPerGroup in a group
// and beyond MaxSourcesPerPeer in the state are dropped as their parts
// arrive, so a peer cannot make this node hold more; collect returns how
// many groups and sources it dropped of this part (r.capped tells whether
// the state lost any groups).
func (r *remote) collect(m *Message) (all []mld.GroupState, complete bool, dropped, trimmed int) {
	if r.applied && m.Generation <= r.gen {
		return nil, false, 0, 0 // stale or repeated
	}
	if m.Generation != r.pending || r.received == nil {
		r.pending, r.received, r.held, r.heldSrcs, r.capped = m.Generation, map[uint16][]mld.GroupState{}, 0, 0, false
	}
	for _, g := range r.received[m.Part] { // a part sent again replaces itself
		r.held--
		r.heldSrcs -= len(g.Sources)
	}
	groups := m.Groups
	if room := MaxGroupsPerPeer - r.held; len(groups) > room {
		groups, dropped, r.capped = groups[:room], len(groups)-room, true
	}
	for i := range groups {
		room := min(MaxSourcesPerGroup, MaxSourcesPerPeer-r.heldSrcs)
		if n := len(groups[i].Sources); n > room {
			groups[i].Sources, trimmed = groups[i].Sources[:room], trimmed+n-room
		}
		r.heldSrcs += len(groups[i].Sources)
	}
	r.received[m.Part] = groups
	r.held += len(groups)
	if len(r.received) < int(m.Parts) {
		return nil, false, dropped, trimmed
	}
	all = make([]mld.GroupState, 0, r.held)
	for i := range m.Parts {
		all = append(all, r.received[i]...)
	}
	r.applied, r.gen, r.received, r.held, r.heldSrcs = true, m.Generation, nil, 0, 0
	all, merged := sanitize(all)
	return all, true, dropped, trimmed + merged
}

// isDirect reports whether, at now (since the exchange's start), the
// path to the peer is direct: the peer applied a state of this node's, so
// that it sends this node's groups straight to it, and its session
// answers both ways: no ping is overdue by half a ping interval (one lost
// ping or pong does not end a path, when the next is answered).
func (r *remote) isDirect(now time.Time, since time.Duration) bool {
	return r.epoch != 0 && r.ackedOK && r.acked != 0 && r.answered != 0 && now.Sub(r.lastHeard) < ConnectedWithin &&
		!r.overdue(since, pathHello/2)
}

// Direct reports whether the path to the peer at addr is direct, as the
// exchange last found (every tickInterval).
func (x *Exchange) Direct(addr netip.Addr) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	r, ok := x.peers[addr]
	return ok && r.direct
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

// quietToward reports whether, at time now, this node keeps quiet toward
// the peer at addr (see quietStart): it has the higher overlay address and
// has not heard from the peer since it started or added it, within
// quietStart.
func (x *Exchange) quietToward(addr netip.Addr, r *remote, now time.Time) bool {
	return x.waitsFor(addr, r) && now.Before(r.quietUntil)
}

// waitsFor reports whether this node waits for the peer at addr to speak
// first: it has the higher overlay address and has not heard from it.
func (x *Exchange) waitsFor(addr netip.Addr, r *remote) bool {
	return r.epoch == 0 && x.self.Compare(addr) > 0
}

// sendFlags are the flags of a message to send.
type sendFlags struct{ want, ping, pong bool }

// send sends part (1-based; 0 for a hello) of the local state to addr.
func (x *Exchange) send(addr netip.Addr, part int, f sendFlags) {
	x.mu.Lock()
	r, ok := x.peers[addr]
	now := x.clock.Now()
	if !ok || part > len(r.parts) || x.quietToward(addr, r, now) {
		x.mu.Unlock()
		return
	}
	stamp := stampOf(x.since(now))
	m := Message{Want: f.want, Ping: f.ping, Pong: f.pong, Relay: x.relay, Epoch: x.epoch, PeerEpoch: r.epoch, Generation: r.mineGen,
		Stamp: stamp, Echo: r.heard}
	if r.applied {
		m.PeerGeneration = r.gen
	}
	if part > 0 {
		m.Part, m.Parts, m.Groups = uint16(part-1), uint16(len(r.parts)), r.parts[part-1]
	}
	if f.ping {
		r.pinged(stamp)
	}
	b := AppendMessage(nil, &m)
	x.mu.Unlock()
	if err := x.out(addr, b); err != nil {
		x.log.Debug("sending subscription message", "peer", addr, "err", err)
	}
}
