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
	// HelloInterval is how often a node tells each peer the last update
	// it numbered and its state's digest, so that a peer that lacks the
	// state asks for it. Each hello is also a ping (see health.go).
	HelloInterval = time.Second
	// HoldTime is how long a peer's subscriptions stay without any message
	// from it (a dead or unreachable peer stops getting traffic then).
	HoldTime = 10 * time.Second
	// quietStart is how long after start, or after a peer is added, a
	// node with the higher overlay address waits for the peer to speak
	// first. Two WireGuard handshakes that cross on the wire both fail;
	// at a simultaneous start, or when an introducer introduces two nodes
	// to each other at once, only one side initiates (and health.go
	// repairs what crossing remains).
	quietStart = 500 * time.Millisecond
	// StateRate and stateBurst pace updates, across all peers: a full
	// state of 100,000 groups is about 2,330 datagrams per peer, and
	// sent unpaced it would overflow the transport's queues.
	StateRate  = 20000 // datagrams per second
	stateBurst = 64
	// inboxLen bounds the control messages received and not yet handled:
	// at most inboxLen*maxMsgPayload bytes (4.7 MiB) wait, since longer
	// messages are dropped before they are queued.
	inboxLen = 4096
	// applyGap is the least time between two hand-overs of one peer's
	// state to the router (each sorts the state and rebuilds the router's
	// table), for each 10,000 groups the peer holds.
	applyGap = 10 * time.Millisecond
	// ackAfter is how many updates a receiver takes before it
	// acknowledges them at once, even while more wait in its inbox.
	ackAfter = window / 4
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
// theirs, as soft state carried by acknowledged updates: a change sends a
// peer only what changed toward it, a digest in every message tells when
// the two sides drifted, and a full state goes only to a peer that starts,
// restarts, forgot this node or drifted (subscription.go). A peer's
// subscriptions expire after HoldTime of silence. The state toward each
// peer is its own (a relay subscribes at each peer for its other peers).
// Its messages travel inside the transport (Send, HandleControl), never
// through a socket. The same messages measure each session's health
// (health.go).
//
// Run's goroutines handle received messages, send hellos, resend what is
// not acknowledged and repair sessions (tick), and compute and send
// updates, paced at StateRate (sendStates).
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
	wake    chan struct{} // wakes the state sender
	pace    *rate.Limiter
	warn    *rate.Limiter // warnings of messages not sent

	applyMu  sync.Mutex // serializes hand-overs to apply
	mu       sync.Mutex
	peers    map[netip.Addr]*remote
	held     budget // what all peers' states hold
	inflight int    // updates waiting for acknowledgement, all peers
	bases    uint64 // numbering bases given out (see newOutState)
	ackOwed  map[netip.Addr]bool

	// BadMessages counts control messages dropped as malformed (longer
	// than lcast sends, too) or from addresses that are not peers.
	BadMessages atomic.Uint64
	// OverCap counts the groups peers subscribed to beyond
	// MaxGroupsPerPeer or MaxGroupsAllPeers (dropped).
	OverCap atomic.Uint64
	// SourcesOverCap counts the sources trimmed from peers' groups
	// beyond MaxSourcesPerGroup, MaxSourcesPerPeer or MaxSourcesAllPeers.
	SourcesOverCap atomic.Uint64
	// Incomplete counts the groups dropped while their sources arrived:
	// the next chunk did not come within pendingHold or did not follow.
	Incomplete atomic.Uint64
	// InboxFull counts control messages dropped because inboxLen waited.
	InboxFull atomic.Uint64
	// SendFailed counts subscription messages the transport did not take
	// (an update is sent again; a hello is followed by the next).
	SendFailed atomic.Uint64
	// Updates, Retransmits and Syncs count the updates sent, those sent
	// again and the full states started.
	Updates, Retransmits, Syncs atomic.Uint64
}

// inbound is a control message received from a peer.
type inbound struct {
	from netip.Addr
	msg  []byte
}

// remote is what this node knows of one peer's state, and the state it
// tells the peer.
type remote struct {
	out outState // the state toward the peer (sendstate.go)
	in  inState  // the peer's subscriptions (recvstate.go)

	epoch     uint64 // the peer's epoch, 0 before the first message
	relay     bool   // the peer says it relays
	ackedOK   bool   // the peer's messages name this node's epoch
	knownAt   uint64 // the stamp of its newest message that did
	lastHeard time.Time
	direct    bool // the path is direct, as tick last found (see isDirect)
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
		wake:    make(chan struct{}, 1),
		pace:    rate.NewLimiter(StateRate, stateBurst),
		warn:    rate.NewLimiter(rate.Every(10*time.Second), 1),
		peers:   map[netip.Addr]*remote{},
		ackOwed: map[netip.Addr]bool{},
	}
	for _, p := range cfg.Peers {
		x.peers[p] = x.newRemote(x.started)
	}
	return x
}

// newRemote returns a peer added at now. Its updates are numbered from a
// base of its own, above any given before, so that a peer removed and
// added again takes them (it drops numbers it already applied).
func (x *Exchange) newRemote(now time.Time) *remote {
	x.bases++
	return &remote{out: newOutState(x.bases << 32), quietUntil: now.Add(quietStart)}
}

// HandleControl takes a control message that the transport received from
// the peer at from (authenticated); it copies msg. A message longer than
// lcast sends is dropped and counted (BadMessages); when inboxLen messages
// wait, it drops msg and counts it (InboxFull).
func (x *Exchange) HandleControl(from netip.Addr, msg []byte) {
	if len(msg) > maxMsgPayload {
		x.BadMessages.Add(1)
		return
	}
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
// changed: the sender asks State for each, at most once per updateGap per
// peer, and sends what changed. The exchange keeps what State returns, so
// State must return slices it does not change afterwards.
func (x *Exchange) Changed() {
	x.mu.Lock()
	for _, r := range x.peers {
		r.out.stale = true
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
			x.peers[a] = x.newRemote(x.clock.Now())
		}
	}
	for a, r := range x.peers {
		if !listed[a] {
			var c counts
			r.in.forget(&x.held, &c)
			x.inflight -= r.out.dropInflight()
			delete(x.peers, a)
			delete(x.ackOwed, a)
		}
	}
	x.mu.Unlock()
	x.wakeSender()
}

// Run handles received messages, sends hellos and states and repairs
// sessions until ctx is done, and waits for its goroutines.
func (x *Exchange) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { x.tick(ctx) })
	wg.Go(func() { x.sendStates(ctx) })
	// A batch that ended within applyGap of the last hand-over is handed
	// over when the gap ends (due), not at the next tick.
	t := x.clock.NewTimer(time.Hour)
	defer t.Stop()
	var due time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case in := <-x.inbox:
			if at := x.receive(in.from, in.msg); !at.IsZero() && (due.IsZero() || at.Before(due)) {
				due = at
				t.Reset(max(at.Sub(x.clock.Now()), 0))
			}
			if len(x.inbox) == 0 {
				x.flushAcks()
			}
		case <-t.C:
			due = time.Time{}
			x.applyDirty()
		}
	}
}

// applyDirty hands the peers' states that changed to the router, where
// applyGap allows.
func (x *Exchange) applyDirty() {
	now := x.clock.Now()
	x.mu.Lock()
	var addrs []netip.Addr
	for a, r := range x.peers {
		if r.in.dirty && r.in.applyDue(now) {
			addrs = append(addrs, a)
		}
	}
	x.mu.Unlock()
	for _, a := range addrs {
		x.applyTo(a)
	}
}

// flushAcks acknowledges the updates taken and not yet acknowledged.
func (x *Exchange) flushAcks() {
	x.mu.Lock()
	if len(x.ackOwed) == 0 {
		x.mu.Unlock()
		return
	}
	addrs := slices.Collect(maps.Keys(x.ackOwed))
	clear(x.ackOwed)
	x.mu.Unlock()
	for _, a := range addrs {
		x.send(a, sendFlags{})
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

// stepped is what one step found to do outside the lock.
type stepped struct {
	hellos, wants, repair, apply []netip.Addr
	pathChanged, wake            bool
}

// step sends hellos, resends what is not acknowledged, expires what
// peers withhold, forgets silent peers and repairs sessions that answer
// nothing: one tick's work.
func (x *Exchange) step() {
	now := x.clock.Now()
	var s stepped
	var c counts
	x.mu.Lock()
	for a, r := range x.peers {
		x.stepPeer(a, r, now, &s, &c)
	}
	x.mu.Unlock()
	x.count(&c)
	if s.pathChanged && x.pathed != nil {
		x.pathed()
	}
	if s.wake {
		x.wakeSender()
	}
	for _, a := range s.apply {
		x.applyTo(a)
	}
	for _, a := range s.wants {
		x.send(a, sendFlags{want: true})
	}
	for _, a := range s.hellos {
		x.send(a, sendFlags{ping: true})
	}
	if len(s.repair) > 0 && x.repair != nil {
		x.log.Debug("repairing sessions that answer nothing", "peers", s.repair)
		x.repair(s.repair, minRTO)
	}
}

// stepPeer is step's work for the peer at addr, under the lock.
func (x *Exchange) stepPeer(a netip.Addr, r *remote, now time.Time, s *stepped, c *counts) {

	if p := r.in.pend; p != nil && now.Sub(p.since) > pendingHold {
		r.in.dropPending(&x.held, c)
		r.in.wantOwed = true
	}
	if r.in.wantOwed && r.in.asks.allow(now) {
		r.in.wantOwed = false
		s.wants = append(s.wants, a)
	}
	if r.in.dirty && r.in.applyDue(now) {
		s.apply = append(s.apply, a)
	}
	last := x.lastFrom(a, r)
	silent := time.Duration(0)
	if !last.IsZero() {
		silent = now.Sub(last)
	}
	// Toward a peer heard from within a second, what is lost is resent
	// every rto; toward a silent one, less and less often.
	alive := !last.IsZero() && silent < time.Second
	if r.out.resendDue(now, alive, r.rto()) || r.out.syncOwed || r.out.stale ||
		len(r.out.inflight) < window && r.out.owes() {
		s.wake = true // (the sender is woken where these are set; this is a safety net)
	}
	every := r.helloInterval(x.since(now), silent)
	if x.watched != nil && x.watched(a) {
		every = min(every, pathHello)
	}
	// Half a tick early is on time: a ticker's ticks are not exactly
	// tickInterval apart.
	if now.Sub(r.lastHello) >= every-tickInterval/2 {
		r.lastHello = now
		s.hellos = append(s.hellos, a)
	}
	if d := r.isDirect(now, x.since(now)); d != r.direct {
		r.direct, s.pathChanged = d, true
	}
	if !r.quietUntil.IsZero() && !now.Before(r.quietUntil) {
		// Toward a peer it kept quiet with (see quietStart) and has still
		// not heard from, the state goes as soon as the quiet ends.
		r.quietUntil, s.wake = time.Time{}, true
	}
	if x.repairDue(a, r, now, last) {
		s.repair = append(s.repair, a)
	}
	if r.epoch != 0 && now.Sub(r.lastHeard) > HoldTime {
		// Forget the peer: its next message starts afresh.
		x.log.Info("peer silent, dropping its subscriptions", "peer", a, "silent_for", now.Sub(r.lastHeard).Round(time.Second))
		r.in.forget(&x.held, c)
		r.epoch, r.relay, r.ackedOK, r.heard, r.knownAt = 0, false, false, 0, 0
		s.apply = append(s.apply, a)
	}
}

// count adds what c counted to the exchange's counters.
func (x *Exchange) count(c *counts) {
	if c.groups > 0 {
		x.OverCap.Add(uint64(c.groups))
	}
	if c.sources > 0 {
		x.SourcesOverCap.Add(uint64(c.sources))
	}
	if c.incomplete > 0 {
		x.Incomplete.Add(uint64(c.incomplete))
	}
}

// applyTo hands the peer at addr's subscriptions to Apply, if they
// changed since it last did. Hand-overs are serialized, each of the state
// as it is then, so the last is of the newest.
func (x *Exchange) applyTo(addr netip.Addr) {
	x.applyMu.Lock()
	defer x.applyMu.Unlock()
	x.mu.Lock()
	r, ok := x.peers[addr]
	if !ok || !r.in.dirty {
		x.mu.Unlock()
		return
	}
	groups, relay := r.in.snapshot(), r.relay
	r.in.dirty, r.in.lastApply = false, x.clock.Now()
	x.mu.Unlock()
	x.apply(addr, relay, groups)
	x.log.Debug("applied peer subscriptions", "peer", addr, "groups", len(groups))
}
