package peer

import (
	"context"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/librecast/lcast/internal/clock"
	"golang.org/x/time/rate"
)

// Introductions let a node join by knowing one hub. A node whose
// configuration marks a peer `introducer` asks it, every AskInterval, to
// introduce it; the introducer answers with the members it introduces:
// the peers in its own configuration that asked (within IntroducedHold),
// each with the endpoint it sees the member at. The asker takes them as
// its peers; the others take it in the same way. So trust goes one hop
// from what an operator wrote: an introducer introduces only nodes its
// configuration lists, and a node takes introductions only from the peers
// its configuration marks. An introducer looks at its list every tellGap
// and tells every asker what changed: a list goes whole once, then as
// numbered changes (see publisher); an asker that has it all is sent the
// list's name. What a node sends, a goroutine of its own sends (sender),
// at introRate, so that the loop that receives never waits for the pace.
//
// A hub is a directory, not a single point of failure (docs/design.md,
// "Reach: introducers, direct paths, relays"): an introduced peer stays
// while some introducer lists it, and after that while it is heard from
// directly (within KeptHold), unless an introducer that introduced it
// has said otherwise: its list, settled in one epoch of the introducer
// (for settle), leaves the peer out. So a member the hub stops listing
// (a reload) is dropped at once, a hub that falls silent or goes for
// good changes nothing for members that meet directly, and a hub that
// restarts has settle for its members to ask again before its word
// counts. A peer kept that way goes when nothing came from it for
// KeptHold, or when the last introducer that introduced it is no longer
// marked introducer.
//
// The same messages tell each relay a node trusts which peers the node
// reaches directly (SetDirect), so that the relay passes on to it none of
// their packets (router.SetDirectOf): its changes as they come, and its
// name every AskInterval.
const (
	// AskInterval is how often a node asks each introducer once it has
	// an answer; before the first it asks every askFast.
	AskInterval = 5 * time.Second
	askFast     = 500 * time.Millisecond
	// IntroducedHold is how long introductions stand without an answer
	// from their introducer, how long an introducer keeps introducing a
	// member that stopped asking, and how long a relay keeps what a peer
	// said it reaches directly.
	IntroducedHold = time.Minute
	// KeptHold is how long an introduced peer that no introducer lists
	// any more, and none revoked, is kept after it was last heard from.
	KeptHold = IntroducedHold
	// settle is how long an introducer's list must have stood in one of
	// its epochs before a member it leaves out is dropped though heard
	// from directly: longer than its members take to ask again when it
	// restarted or came back (AskInterval, or askFast once their lists
	// expired).
	settle = 2 * AskInterval
	// Introduced endpoints never heard from are tried at most maxTrying
	// at once, maxTryingPerAddr at one address, started at most tryRate
	// a second, each for tryFor (see try).
	maxTrying        = 64
	maxTryingPerAddr = 4
	tryRate          = 20
	tryFor           = 30 * time.Second
	// A peer may send at most directRate direct-list messages a second
	// (directBurst at once: a whole list of MaxIntroduced and more);
	// beyond, they are dropped and counted. What peers reach directly is
	// applied (each time the router's table is rebuilt) at most every
	// directGap, whatever they send, but for the change of a peer whose
	// list had not changed for directGap: that one is applied at once,
	// within an allowance of directAtOnce at once and one per directGap
	// more (see flushDirect). So two members that meet directly through
	// their hub stop getting each other's packets from it as soon as each
	// says so, not one of them up to directGap later, and a peer that
	// changes its list again and again is applied with the gap only.
	directRate   = 50
	directBurst  = 2*maxIntroParts + 16
	directGap    = 250 * time.Millisecond
	directAtOnce = 4
	// changedGap is the least time between two calls of Changed.
	changedGap = 250 * time.Millisecond
	// partsHold is how long the parts of an incomplete list are kept.
	partsHold = 10 * time.Second
	// answerGap limits the answers to one asker.
	answerGap = 200 * time.Millisecond
	// tellGap is the least time between two looks at whether the list
	// changed, and so between two tellings of every asker.
	tellGap = 250 * time.Millisecond
	// introRate and introBurst pace the introduction messages a node
	// sends, across all peers.
	introRate     = 20000 // messages per second
	introBurst    = 256
	introInboxLen = 1024
	introTick     = 100 * time.Millisecond
)

// IntroductionsConfig is what Introductions are made with.
type IntroductionsConfig struct {
	// Self is this node's public key.
	Self Key
	// Send sends a control message to the peer at an overlay address
	// inside the transport; it must not keep msg.
	Send func(peer netip.Addr, msg []byte) error
	// Lists reports whether this node's configuration lists the peer at
	// an overlay address (only those may be introduced), and Seen returns
	// them, with the endpoints this node sees them at now.
	Lists func(peer netip.Addr) bool
	Seen  func() map[netip.Addr]Member
	// Introducers returns the overlay addresses of the peers this node's
	// configuration marks introducer, Relays those it trusts as relays.
	Introducers, Relays func() []netip.Addr
	// LastRx returns when a packet of the peer at an overlay address
	// last came (zero if never). An introduced peer is no relay, so what
	// comes from it came directly. Nil: never.
	LastRx func(peer netip.Addr) time.Time
	// Changed is called, from Run's goroutine, when the introduced
	// members change, and DirectChanged when what peers said they reach
	// directly changed.
	Changed, DirectChanged func()
	Log                    *slog.Logger
	// Clock is what the introductions' timers and times read; nil is
	// clock.Real. (The pacing, introRate, runs on real time.)
	Clock clock.Clock
}

// Introductions asks this node's introducers to introduce it, keeps what
// they answer, answers the peers that ask this node, and tells relays
// which peers this node reaches directly. Run runs it.
type Introductions struct {
	cfg   IntroductionsConfig
	clock clock.Clock
	wake  chan struct{}
	inbox chan inbound
	pace  *rate.Limiter
	epoch uint32 // this node's, random, per start

	mu      sync.Mutex
	askers  map[netip.Addr]time.Time // configured peers that asked, when last
	answers map[netip.Addr]time.Time // when each asker was last answered
	from    map[netip.Addr]*list     // introducers' lists
	directs map[netip.Addr]*list     // what peers reach directly
	// pub is this node's introductions, sent to the askers (subs); dpub
	// the peers it reaches directly, sent to the relays it trusts
	// (dsubs). What each receiver is to be sent is worked out when its
	// turn comes to send (see next), by the sender goroutine, which
	// alone waits on the pace: the loop that receives never does.
	pub, dpub   *publisher
	subs, dsubs map[netip.Addr]*sub
	queue       []queued // receivers with something due, in turn
	misc        []outMsg // asks, at most maxMisc waiting
	sendWake    chan struct{}
	// kept are the introduced peers no introducer lists now, kept while
	// heard from (see keeps); introduced is what Introduced returned at
	// the last refresh, lists and kept together.
	kept, introduced map[Key]Introduced
	// attempts are the introduced endpoints tried, tries paces them,
	// trying tells that some are tried or wait (see try).
	attempts map[Key]*attempt
	tries    *rate.Limiter
	trying   bool
	heard    map[Key]bool // introduced peers with no endpoint, heard from
	quiet    bool         // some introduced peers are quiet
	quietDue time.Time    // when expire looks at them again (Run's alone)

	// directPace paces each peer's direct lists; directDirty tells that
	// what peers reach directly changed since DirectChanged was last
	// called, nextDirect when it may be called again, directNow the
	// allowance of changes of quiet peers applied before then (see
	// flushDirect; the last three Run's alone).
	directPace  map[netip.Addr]*rate.Limiter
	directDirty bool
	nextDirect  time.Time
	directNow   *rate.Limiter
	// introDirty and nextIntro are the same for Changed (see
	// flushIntroduced; Run's alone).
	introDirty bool
	nextIntro  time.Time
	// overCap are the members left out over MaxIntroduced, conflicts
	// the endpoints other introducers name that were not taken, at the
	// last refresh.
	overCap   map[Key]bool
	conflicts map[Key]netip.AddrPort
	// Untrusted counts introduction messages from peers that may not
	// send them (lists from peers that are not this node's introducers,
	// asks from peers its configuration does not list), Malformed those
	// that do not parse, InboxFull those dropped because introInboxLen
	// waited.
	Untrusted, Malformed, InboxFull atomic.Uint64
	// OverCap counts members introducers named that this node did not
	// take (beyond MaxIntroduced), EndpointsRefused endpoints they named
	// that no peer may have (overlay, link-local, loopback, multicast,
	// unspecified), EndpointConflicts endpoints an introducer named that
	// differ from the one another gave first, Unanswered introduced
	// endpoints tried for tryFor and never heard from.
	OverCap, EndpointsRefused, EndpointConflicts, Unanswered atomic.Uint64
	// DirectOverRate counts direct-list messages dropped beyond their
	// sender's pace; Unsent the messages this node did not send (asks
	// beyond maxMisc waiting, or the transport refused them).
	DirectOverRate, Unsent atomic.Uint64
}

// sub is what a receiver of a list (an asker of this node's, or a relay
// for the direct list) has of it: what it said it has, or what it was
// sent last; whether it is owed an answer (it asked) and is queued; when
// it was last sent the list whole.
type sub struct {
	epoch  uint32
	has    uint64
	answer bool
	queued bool
	fullAt time.Time
}

// queued is a receiver with something due: of pub, or with direct of
// dpub.
type queued struct {
	to     netip.Addr
	direct bool
}

// outMsg is a message to send as it is.
type outMsg struct {
	to  netip.Addr
	msg []byte
}

// maxMisc bounds the asks waiting to be sent.
const maxMisc = 1024

// Introduced is a member as introduced to this node.
type Introduced struct {
	Endpoint netip.AddrPort
	By       []netip.Addr // its introducers' overlay addresses
	// Unreached tells that the endpoint was tried and never answered:
	// the transport is to forget it.
	Unreached bool
	// Quiet tells that the peer was never heard from and its endpoint is
	// not being tried (it waits its turn, was tried in vain, or none was
	// given): the node does not speak to it first (no hellos, no
	// repairs), but takes it at once when it speaks (see try).
	Quiet bool
	// endpointBy is the introducer whose endpoint was taken.
	endpointBy netip.Addr
}

// NewIntroductions returns the introductions of cfg.
func NewIntroductions(cfg IntroductionsConfig) *Introductions {
	epoch := rand.Uint32() | 1
	return &Introductions{cfg: cfg, clock: clock.Or(cfg.Clock), wake: make(chan struct{}, 1), inbox: make(chan inbound, introInboxLen),
		pace: rate.NewLimiter(introRate, introBurst), epoch: epoch, askers: map[netip.Addr]time.Time{},
		answers: map[netip.Addr]time.Time{}, from: map[netip.Addr]*list{}, directs: map[netip.Addr]*list{},
		pub: newPublisher(false, epoch), dpub: newPublisher(true, epoch), subs: map[netip.Addr]*sub{}, dsubs: map[netip.Addr]*sub{},
		sendWake: make(chan struct{}, 1),
		kept:     map[Key]Introduced{}, introduced: map[Key]Introduced{}, attempts: map[Key]*attempt{},
		tries: rate.NewLimiter(tryRate, maxTrying), directPace: map[netip.Addr]*rate.Limiter{},
		directNow: rate.NewLimiter(rate.Every(directGap), directAtOnce), heard: map[Key]bool{}, overCap: map[Key]bool{}, conflicts: map[Key]netip.AddrPort{}}
}

// Introduced returns the members that the introducers intros (overlay
// addresses) introduce now, by public key, each with the introducers
// (sorted) that introduce it, as the last refresh found them: at most
// MaxIntroduced, peers kept after their introducers stopped listing them
// (see keeps) among them, each at the endpoint its first introducer gave
// while that one lists it (see listedBy), or at none while its endpoint
// waits its turn to be tried or was tried in vain (see try).
func (in *Introductions) Introduced(intros []netip.Addr) map[Key]Introduced {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := make(map[Key]Introduced, len(in.introduced))
	for k, i := range in.introduced {
		i.By = slices.DeleteFunc(slices.Clone(i.By), func(a netip.Addr) bool { return !slices.Contains(intros, a) })
		if len(i.By) > 0 {
			out[k] = i
		}
	}
	return out
}

// listedBy returns the members the complete lists of intros name, each
// with the introducers that name it (sorted) and the endpoint one of them
// gives: the one whose endpoint was taken before, while it names one (an
// endpoint from one introducer is not overridden by another's), else the
// first that names one. At most MaxIntroduced: those introduced before
// first, then the others by key. It also returns the members left out
// over the cap and, by member, the endpoint other introducers name that
// differs from the one taken. The caller holds mu.
func (in *Introductions) listedBy(intros []netip.Addr) (out map[Key]Introduced, over []Key, conflicts map[Key]netip.AddrPort) {
	intros = slices.SortedFunc(slices.Values(intros), netip.Addr.Compare)
	out = map[Key]Introduced{}
	for _, by := range intros {
		l := in.from[by]
		if l == nil || l.complete.IsZero() {
			continue
		}
		for _, m := range l.members {
			if m.PublicKey == in.cfg.Self {
				continue
			}
			i := out[m.PublicKey]
			if !slices.Contains(i.By, by) {
				i.By = append(i.By, by)
			}
			out[m.PublicKey] = i
		}
	}
	if len(out) > MaxIntroduced {
		keys := slices.SortedFunc(maps.Keys(out), func(a, b Key) int {
			_, hadA := in.introduced[a]
			_, hadB := in.introduced[b]
			switch {
			case hadA && !hadB:
				return -1
			case hadB && !hadA:
				return 1
			}
			return a.Compare(b)
		})
		over = keys[MaxIntroduced:]
		for _, k := range over {
			delete(out, k)
		}
	}
	conflicts = map[Key]netip.AddrPort{}
	for k, i := range out {
		endpoint := func(by netip.Addr) netip.AddrPort {
			l := in.from[by]
			return l.members[l.index[k]].Endpoint
		}
		i.endpointBy = netip.Addr{}
		if prev := in.introduced[k].endpointBy; slices.Contains(i.By, prev) && endpoint(prev).IsValid() {
			i.endpointBy = prev
		} else if j := slices.IndexFunc(i.By, func(by netip.Addr) bool { return endpoint(by).IsValid() }); j >= 0 {
			i.endpointBy = i.By[j]
		}
		if i.endpointBy.IsValid() {
			i.Endpoint = endpoint(i.endpointBy)
			for _, by := range i.By {
				if ep := endpoint(by); ep.IsValid() && ep != i.Endpoint {
					conflicts[k] = ep
				}
			}
		}
		out[k] = i
	}
	return out, over, conflicts
}

// refresh looks again at what the introducers introduce, at now: the
// peers no introducer lists any more are kept or dropped (see keeps),
// endpoints are tried (see try), and it reports whether what Introduced
// returns changed. It runs in Run's goroutine, which alone changes the
// lists.
func (in *Introductions) refresh(now time.Time) bool {
	intros := in.cfg.Introducers()
	in.mu.Lock()
	listed, _, _ := in.listedBy(intros)
	var unlisted, ask []Key
	for k := range in.introduced {
		if _, ok := listed[k]; !ok {
			unlisted = append(unlisted, k)
		}
	}
	ask = append(ask, unlisted...)
	for k := range listed {
		if a := in.attempts[k]; (a == nil && !in.heard[k]) || (a != nil && !a.proven) {
			ask = append(ask, k)
		}
	}
	in.mu.Unlock()
	heard := make(map[Key]time.Time, len(ask))
	for _, k := range ask {
		if in.cfg.LastRx != nil {
			heard[k] = in.cfg.LastRx(OverlayAddr(k))
		}
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	kept := make(map[Key]Introduced, len(unlisted))
	for _, k := range unlisted {
		i := in.introduced[k]
		i.By = slices.DeleteFunc(slices.Clone(i.By), func(a netip.Addr) bool { return !slices.Contains(intros, a) })
		switch why := in.keeps(k, i, heard[k], now); {
		case why == "":
			if _, was := in.kept[k]; !was {
				in.cfg.Log.Info("introduced peer kept: no introducer lists it now, and it is heard from directly", "peer", k, "by", i.By)
			}
			kept[k] = i
		default:
			in.cfg.Log.Info("introduced peer no longer kept", "peer", k, "reason", why)
		}
	}
	in.kept = kept
	next, over, conflicts := in.listedBy(intros)
	for k, i := range kept {
		next[k] = i
	}
	for _, k := range over {
		if !in.overCap[k] {
			in.OverCap.Add(1)
		}
	}
	in.overCap = map[Key]bool{}
	for _, k := range over {
		in.overCap[k] = true
	}
	for k, ep := range conflicts {
		if in.conflicts[k] != ep {
			in.EndpointConflicts.Add(1)
			in.cfg.Log.Warn("introducers name different endpoints: the first one's stands", "peer", k,
				"endpoint", next[k].Endpoint, "by", next[k].endpointBy, "other", ep)
		}
	}
	in.conflicts = conflicts
	in.try(next, heard, now)
	changed := !maps.EqualFunc(next, in.introduced, func(a, b Introduced) bool {
		return a.Endpoint == b.Endpoint && a.Unreached == b.Unreached && a.Quiet == b.Quiet && slices.Equal(a.By, b.By)
	})
	in.introduced = next
	in.quiet = slices.ContainsFunc(slices.Collect(maps.Values(next)), func(i Introduced) bool { return i.Quiet })
	return changed
}

// attempt is an introduced endpoint as this node tries it.
type attempt struct {
	endpoint netip.AddrPort
	since    time.Time // when it was first given to the transport; zero while it waits
	proven   bool      // the peer was heard from
	over     bool      // tried for tryFor, never heard from
}

// try bounds how fast this node sends handshakes to endpoints that
// introducers name (a hostile one may name a third party's): an
// introduced peer never heard from gets its endpoint only while it is
// tried, at most maxTrying at once, maxTryingPerAddr at one address,
// started at most tryRate a second, each for tryFor; after that, unless
// the peer was heard from, the transport forgets the endpoint
// (Introduced.Unreached) and the peer, which has this node's endpoint
// from the introducer too, may still reach this node, or be reached
// through a relay. A peer heard from has its endpoint for good; a new
// endpoint is tried afresh. It sets the endpoints in next, whose peers
// were last heard from at heard, at now. The caller holds mu.
func (in *Introductions) try(next map[Key]Introduced, heard map[Key]time.Time, now time.Time) {
	for k := range in.attempts {
		if _, ok := next[k]; !ok {
			delete(in.attempts, k)
		}
	}
	trying, at := 0, map[netip.Addr]int{}
	var waiting []Key
	for k, i := range next {
		if !i.Endpoint.IsValid() {
			delete(in.attempts, k)
			continue
		}
		a := in.attempts[k]
		if a == nil || a.endpoint != i.Endpoint {
			a = &attempt{endpoint: i.Endpoint}
			in.attempts[k] = a
		}
		switch {
		case a.proven:
		case !heard[k].IsZero():
			a.proven = true
		case a.over:
		case a.since.IsZero():
			waiting = append(waiting, k)
		case now.Sub(a.since) >= tryFor:
			a.over = true
			in.Unanswered.Add(1)
			in.cfg.Log.Info("introduced endpoint never answered: no longer tried", "peer", k, "endpoint", a.endpoint)
		default:
			trying++
			at[a.endpoint.Addr()]++
		}
	}
	slices.SortFunc(waiting, Key.Compare)
	for _, k := range waiting {
		a := in.attempts[k]
		if trying >= maxTrying || at[a.endpoint.Addr()] >= maxTryingPerAddr {
			continue
		}
		if !in.tries.AllowN(now, 1) {
			break
		}
		a.since = now
		trying++
		at[a.endpoint.Addr()]++
	}
	in.trying = trying > 0 || len(waiting) > 0
	for k, i := range next {
		a := in.attempts[k]
		switch {
		case a == nil:
			i.Quiet = heard[k].IsZero() && !in.heard[k]
		case a.proven || (!a.since.IsZero() && !a.over):
		case a.over:
			i.Endpoint, i.Unreached, i.Quiet = netip.AddrPort{}, true, true
		default:
			i.Endpoint, i.Quiet = netip.AddrPort{}, true
		}
		if !heard[k].IsZero() {
			in.heard[k] = true
		}
		next[k] = i
	}
	for k := range in.heard {
		if _, ok := next[k]; !ok {
			delete(in.heard, k)
		}
	}
}

// keeps returns why the introduced peer k (as i, introduced by i.By, of
// the introducers marked now), which no introducer lists now, last heard
// from at heard, is not kept at now; "" if it is. It is kept while heard
// from within KeptHold, unless an introducer that introduced it said it
// is gone: a change, or a list, of the epoch that listed it, removed it
// (the introducer no longer lists it, or it stopped asking); or a list
// settled in a new epoch (for settle) leaves it out (the introducer
// restarted, has heard from its members since, and does not introduce
// it). The caller holds mu.
func (in *Introductions) keeps(k Key, i Introduced, heard, now time.Time) string {
	switch {
	case len(i.By) == 0:
		return "none of its introducers is marked introducer"
	case heard.IsZero() || now.Sub(heard) > KeptHold:
		return "not heard from directly"
	}
	for _, by := range i.By {
		l := in.from[by]
		switch {
		case l == nil || l.complete.IsZero() || l.names(k):
		case l.gone[k]:
			return "its introducer removed it"
		case now.Sub(l.since) >= settle:
			return "its introducer stopped listing it"
		}
	}
	return ""
}

// DirectOf returns, by peer, the overlay addresses of the peers it said
// it reaches directly.
func (in *Introductions) DirectOf() map[netip.Addr][]netip.Addr {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := make(map[netip.Addr][]netip.Addr, len(in.directs))
	for p, l := range in.directs {
		for _, m := range l.members {
			out[p] = append(out[p], OverlayAddr(m.PublicKey))
		}
	}
	return out
}

// SetDirect sets the peers this node reaches directly, to tell the relays
// it trusts.
func (in *Introductions) SetDirect(keys []Key) {
	members := make([]Member, len(keys))
	for i, k := range slices.SortedFunc(slices.Values(keys), Key.Compare) {
		members[i] = Member{PublicKey: k}
	}
	relays := in.cfg.Relays()
	in.mu.Lock()
	if in.dpub.set(members) {
		for _, r := range relays {
			in.due(r, true, false)
		}
	}
	in.mu.Unlock()
}

// HandleControl takes an introduction message from the peer at from
// (authenticated by the transport), for Run to handle (see enqueue); one
// longer than lcast sends is dropped and counted (Malformed), so the
// inbox holds at most its length times maxMsgPayload bytes.
func (in *Introductions) HandleControl(from netip.Addr, msg []byte) {
	if len(msg) > maxMsgPayload {
		in.Malformed.Add(1)
		return
	}
	enqueue(in.inbox, from, msg, &in.InboxFull)
}

func (in *Introductions) poke() {
	select {
	case in.wake <- struct{}{}:
	default:
	}
}

// Run handles the messages received, asks the introducers, tells relays
// what this node reaches directly, forgets what is older than
// IntroducedHold, and tells every asker when what this node introduces
// changes, until ctx is done. What it sends, a goroutine of its own sends,
// at introRate, and Run waits for it before it returns.
func (in *Introductions) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() { in.sender(ctx) })
	t := in.clock.NewTicker(introTick)
	defer t.Stop()
	asked, directSent := map[netip.Addr]time.Time{}, time.Time{}
	var nextTell time.Time
	for {
		now := in.clock.Now()
		in.ask(now, asked)
		directSent = in.sendDirect(now, directSent)
		in.expire(now)
		if !now.Before(nextTell) {
			in.tell()
			nextTell = now.Add(tellGap)
		}
	wait:
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				break wait
			case <-in.wake:
				break wait
			case m := <-in.inbox:
				in.receive(m.from, m.msg)
			}
		}
	}
}

// due queues the receiver at to of pub (or with direct of dpub), owed an
// answer if answer; the caller holds mu.
func (in *Introductions) due(to netip.Addr, direct, answer bool) {
	subs := in.subs
	if direct {
		subs = in.dsubs
	}
	s := subs[to]
	if s == nil {
		s = &sub{}
		subs[to] = s
	}
	s.answer = s.answer || answer
	if !s.queued {
		s.queued = true
		in.queue = append(in.queue, queued{to, direct})
	}
	in.wakeSender()
}

// sendMisc queues msg to the peer at to, unless maxMisc wait (counted);
// the caller holds mu.
func (in *Introductions) sendMisc(to netip.Addr, msg []byte) {
	if len(in.misc) >= maxMisc {
		in.Unsent.Add(1)
		return
	}
	in.misc = append(in.misc, outMsg{to, msg})
	in.wakeSender()
}

func (in *Introductions) wakeSender() {
	select {
	case in.sendWake <- struct{}{}:
	default:
	}
}

// sender sends what is due, in turn, paced at introRate, until ctx is
// done.
func (in *Introductions) sender(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-in.sendWake:
		}
		for {
			to, msgs, ok := in.next()
			if !ok {
				break
			}
			for _, msg := range msgs {
				if in.pace.Wait(ctx) != nil {
					return
				}
				if err := in.cfg.Send(to, msg); err != nil {
					in.Unsent.Add(1)
					in.cfg.Log.Debug("sending introductions", "peer", to, "err", err)
				}
			}
		}
	}
}

// next returns the next messages to send, and to whom: an ask waiting,
// else what the first receiver queued is due (see publisher.messages),
// noting that it has it now; false if nothing is due.
func (in *Introductions) next() (netip.Addr, [][]byte, bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if len(in.misc) > 0 {
		m := in.misc[0]
		in.misc = in.misc[1:]
		if len(in.misc) == 0 {
			in.misc = nil
		}
		return m.to, [][]byte{m.msg}, true
	}
	now := in.clock.Now()
	for len(in.queue) > 0 {
		q := in.queue[0]
		in.queue = in.queue[1:]
		if len(in.queue) == 0 {
			in.queue = nil
		}
		subs, pub := in.subs, in.pub
		if q.direct {
			subs, pub = in.dsubs, in.dpub
		}
		s := subs[q.to]
		if s == nil {
			continue // gone meanwhile
		}
		s.queued = false
		msgs, full := pub.messages(s.epoch, s.has, s.answer)
		if full && s.answer && now.Sub(s.fullAt) < askFast {
			// The whole list goes at most every askFast to one
			// receiver that asks (it lost a part, say), so that one
			// cannot take the pace of all by asking again; it asks
			// again.
			s.answer = false
			continue
		}
		if full {
			s.fullAt = now
		}
		s.epoch, s.has, s.answer = pub.epoch, pub.version, false
		if len(msgs) > 0 {
			return q.to, msgs, true
		}
	}
	return netip.Addr{}, nil, false
}

// receive handles an introduction message from the peer at from.
func (in *Introductions) receive(from netip.Addr, msg []byte) {
	m, err := parseIntro(msg)
	switch {
	case err != nil:
		in.Malformed.Add(1)
		return
	case m.direct && !in.directAllowed(from):
		in.DirectOverRate.Add(1)
	case m.direct && m.ask:
		// A relay that lacks this node's list, or some of its changes,
		// asks for it.
		if slices.Contains(in.cfg.Relays(), from) {
			in.mu.Lock()
			in.dsubs[from] = &sub{epoch: m.epoch, has: m.version}
			in.due(from, true, true)
			in.mu.Unlock()
		}
	case m.direct:
		// What a peer says it reaches directly changes only what this
		// node passes on to that peer.
		changed, ask, quiet := in.take(in.directs, from, m)
		if changed {
			in.directDirty = true
			in.flushDirect(in.clock.Now(), quiet)
		}
		if ask {
			in.askFor(from, true)
		}
	case m.ask:
		in.asked(from, m.epoch, m.version)
	case !slices.Contains(in.cfg.Introducers(), from):
		in.Untrusted.Add(1)
	default:
		in.EndpointsRefused.Add(uint64(m.refused))
		changed, ask, _ := in.take(in.from, from, m)
		if ask {
			in.askFor(from, false)
		}
		if changed && in.refresh(in.clock.Now()) {
			in.cfg.Log.Debug("introductions changed", "introducer", from)
			in.introDirty = true
			in.flushIntroduced(in.clock.Now())
		}
	}
}

// askFor asks the peer at from for its list (direct: of the peers it
// reaches directly), telling what this node has of it.
func (in *Introductions) askFor(from netip.Addr, direct bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	lists := in.from
	if direct {
		lists = in.directs
	}
	epoch, version, id := lists[from].have()
	in.sendMisc(from, appendIntro(nil, &introMessage{ask: true, direct: direct, epoch: epoch, version: version, list: id}))
}

// take adds m, from the peer at from, to its list in lists, and reports
// whether the list changed, whether to ask the peer for it, and whether
// the list had not changed for directGap before (a first list counts as
// such).
func (in *Introductions) take(lists map[netip.Addr]*list, from netip.Addr, m *introMessage) (changed, ask, quiet bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	l := lists[from]
	if l == nil {
		l = &list{}
		if m.direct {
			l.limit = MaxIntroduced
		}
		lists[from] = l
	}
	now := in.clock.Now()
	before := l.changed
	changed, ask = l.take(m, now)
	return changed, ask, before.IsZero() || now.Sub(before) >= directGap
}

// asked answers the ask of the peer at from, which has version of this
// node's list of epoch: a peer this node's configuration lists is
// answered (at most every answerGap) with what it lacks, or the list
// named if it lacks nothing; a new asker changes what the others are
// told (at the next tell).
func (in *Introductions) asked(from netip.Addr, epoch uint32, version uint64) {
	if !in.cfg.Lists(from) {
		in.Untrusted.Add(1)
		return
	}
	now := in.clock.Now()
	in.mu.Lock()
	defer in.mu.Unlock()
	_, known := in.askers[from]
	in.askers[from] = now
	if !known {
		in.poke() // the others are told about it
	}
	if now.Sub(in.answers[from]) < answerGap {
		return
	}
	in.answers[from] = now
	s := in.subs[from]
	if s == nil {
		s = &sub{}
		in.subs[from] = s
	}
	s.epoch, s.has = epoch, version
	in.due(from, false, true)
}

// members returns the list this node introduces: the askers it lists, at
// the endpoints seen gives, by key.
func (in *Introductions) members(seen map[netip.Addr]Member) []Member {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := []Member{}
	for a := range in.askers {
		if m, ok := seen[a]; ok {
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b Member) int { return a.PublicKey.Compare(b.PublicKey) })
	return out
}

// ask asks each introducer that is due one: every askFast until it
// answered, then every AskInterval.
func (in *Introductions) ask(now time.Time, asked map[netip.Addr]time.Time) {
	intros := in.cfg.Introducers()
	for a := range asked {
		if !slices.Contains(intros, a) {
			delete(asked, a)
		}
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, a := range intros {
		every := askFast
		l := in.from[a]
		if l != nil && !l.complete.IsZero() && now.Sub(l.complete) < AskInterval {
			every = AskInterval
		}
		if now.Sub(asked[a]) < every {
			continue
		}
		asked[a] = now
		epoch, version, id := l.have()
		in.sendMisc(a, appendIntro(nil, &introMessage{ask: true, epoch: epoch, version: version, list: id}))
	}
}

// sendDirect tells the relays which peers this node reaches directly,
// every AskInterval (a change goes at once: SetDirect), and returns when
// it last did: each relay is sent what it lacks, or the list's name, and
// a relay that lacks what the name names asks for it.
func (in *Introductions) sendDirect(now, sent time.Time) time.Time {
	relays := in.cfg.Relays()
	in.mu.Lock()
	defer in.mu.Unlock()
	for a := range in.dsubs {
		if !slices.Contains(relays, a) {
			delete(in.dsubs, a)
		}
	}
	if now.Sub(sent) < AskInterval {
		return sent
	}
	for _, r := range relays {
		in.due(r, true, true)
	}
	return now
}

// expire forgets askers silent for IntroducedHold, lists not renewed
// within it, and the lists of peers that are no longer introducers.
func (in *Introductions) expire(now time.Time) {
	intros := in.cfg.Introducers()
	changed, directChanged := false, false
	in.mu.Lock()
	for a, at := range in.askers {
		if now.Sub(at) > IntroducedHold {
			delete(in.askers, a)
			delete(in.answers, a)
			delete(in.subs, a)
		}
	}
	for a, l := range in.from {
		if !slices.Contains(intros, a) || (!l.complete.IsZero() && now.Sub(l.complete) > IntroducedHold) {
			delete(in.from, a)
			changed = changed || !l.complete.IsZero()
			if !l.complete.IsZero() && slices.Contains(intros, a) {
				in.cfg.Log.Info("introducer silent: its introductions stand while their peers are heard from directly", "introducer", a,
					"silent", now.Sub(l.complete).Round(time.Second))
			}
		}
	}
	for a, l := range in.directs {
		if !l.complete.IsZero() && now.Sub(l.complete) > IntroducedHold {
			delete(in.directs, a)
			directChanged = true
		}
	}
	// Lists left incomplete go after partsHold; so do the peers' paces
	// once they are full again.
	for _, lists := range []map[netip.Addr]*list{in.from, in.directs} {
		for a, l := range lists {
			if l.parts != nil && now.Sub(l.pendingSince) > partsHold {
				l.pending, l.parts, l.held = nil, nil, 0
			}
			if l.parts == nil && l.complete.IsZero() {
				delete(lists, a)
			}
		}
	}
	for a, p := range in.directPace {
		if p.TokensAt(now) >= directBurst {
			delete(in.directPace, a)
		}
	}
	// Quiet peers are looked at every second, to notice when they speak.
	due := changed || len(in.kept) > 0 || in.trying || (in.quiet && !now.Before(in.quietDue))
	in.mu.Unlock()
	if due {
		in.quietDue = now.Add(time.Second)
	}
	if due && in.refresh(now) {
		in.introDirty = true
	}
	in.flushIntroduced(now)
	in.directDirty = in.directDirty || directChanged
	in.flushDirect(now, false)
}

// flushIntroduced calls Changed if the introduced peers changed since it
// last did, at most every changedGap: each call has the node apply its
// peers (the transport's, the router's table), so an introducer that
// flips its list costs at most that.
func (in *Introductions) flushIntroduced(now time.Time) {
	if !in.introDirty || now.Before(in.nextIntro) {
		return
	}
	in.introDirty, in.nextIntro = false, now.Add(changedGap)
	in.cfg.Changed()
}

// directAllowed reports whether a direct-list message from the peer at
// from is within its pace (directRate, directBurst).
func (in *Introductions) directAllowed(from netip.Addr) bool {
	now := in.clock.Now()
	in.mu.Lock()
	defer in.mu.Unlock()
	p := in.directPace[from]
	if p == nil {
		p = rate.NewLimiter(directRate, directBurst)
		in.directPace[from] = p
	}
	return p.AllowN(now, 1)
}

// flushDirect tells DirectChanged that what peers reach directly changed,
// if it did: at most every directGap, or at once for the change of a
// peer quiet for directGap (quiet) while directNow allows. Each telling
// rebuilds the router's table, so they are at most 1+directAtOnce at
// once and two per directGap over time; a peer that changes its list
// again and again is never quiet, and waits for the gap.
func (in *Introductions) flushDirect(now time.Time, quiet bool) {
	if !in.directDirty {
		return
	}
	switch {
	case !now.Before(in.nextDirect):
		in.nextDirect = now.Add(directGap)
	case quiet && in.directNow.AllowN(now, 1):
	default:
		return
	}
	in.directDirty = false
	in.cfg.DirectChanged()
}

// tell tells every asker the list when it changed (a member came, went
// or moved) since it last did: the sender sends each the change.
func (in *Introductions) tell() {
	in.mu.Lock()
	none := len(in.askers) == 0 && len(in.pub.members) == 0
	in.mu.Unlock()
	if none {
		return
	}
	members := in.members(in.cfg.Seen())
	in.mu.Lock()
	defer in.mu.Unlock()
	if !in.pub.set(members) {
		return
	}
	for a := range in.askers {
		in.due(a, false, false)
	}
}
