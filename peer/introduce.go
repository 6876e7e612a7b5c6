package peer

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Introductions let a node join by knowing one hub. A node whose
// configuration marks a peer `introducer` asks it, every AskInterval, to
// introduce it; the introducer answers with the members it introduces:
// the peers in its own configuration that asked (within IntroducedHold),
// but the asker, each with the endpoint it sees the member at. The asker
// takes them as its peers; the others take it in the same way, from their
// answers. So trust goes one hop from what an operator wrote: an
// introducer introduces only nodes its configuration lists, and a node
// takes introductions only from the peers its configuration marks.
// Introduced peers are dropped when the introducer stops listing them, or
// when no complete answer came from it for IntroducedHold.
//
// Introduction messages travel inside the transport like the
// subscription messages, with a magic of their own:
//
//	0  "LCI" 1     magic and version
//	4  flags       bit 0: ask (introduce me, and tell me whom you introduce)
//	5  0           reserved
//	6  part, parts uint16 each; parts 0: an ask alone
//	10 list        uint64: the answer's identity, random, the same in its parts
//	18 count       uint16: members that follow
//	20 per member: public key (32), endpoint address (16, IPv4-mapped for
//	               IPv4; all zero: none seen), port (2)
const (
	// AskInterval is how often a node asks each introducer once it has
	// an answer; before the first it asks every askFast.
	AskInterval = 5 * time.Second
	askFast     = 500 * time.Millisecond
	// IntroducedHold is how long introductions stand without a complete
	// answer from their introducer, and how long an introducer keeps
	// introducing a member that stopped asking.
	IntroducedHold = time.Minute
	// answerGap limits the answers to one asker.
	answerGap = 200 * time.Millisecond
	// MaxIntroduced caps the members one introducer's answer may hold.
	MaxIntroduced = 4096

	introHeaderLen  = 20
	introMemberLen  = KeyLen + 16 + 2
	introFlagAsk    = 1
	introPerMessage = (maxMsgPayload - introHeaderLen) / introMemberLen
	introInboxLen   = 1024
)

var introMagic = [4]byte{'L', 'C', 'I', 1}

// ErrBadIntroduction marks an introduction message that is malformed.
var ErrBadIntroduction = errors.New("malformed introduction message")

// IsIntroduction reports whether a control message is an introduction
// message (by its magic), to hand to Introductions.HandleControl.
func IsIntroduction(msg []byte) bool { return len(msg) >= 4 && [4]byte(msg[:4]) == introMagic }

// Member is a node an introducer introduces: its public key and the
// endpoint the introducer sees it at (invalid if none).
type Member struct {
	PublicKey Key
	Endpoint  netip.AddrPort
}

// introMessage is a decoded introduction message.
type introMessage struct {
	ask         bool
	part, parts uint16
	list        uint64
	members     []Member
}

func appendIntro(b []byte, m *introMessage) []byte {
	b = append(b, introMagic[:]...)
	var flags byte
	if m.ask {
		flags |= introFlagAsk
	}
	b = append(b, flags, 0)
	b = binary.BigEndian.AppendUint16(b, m.part)
	b = binary.BigEndian.AppendUint16(b, m.parts)
	b = binary.BigEndian.AppendUint64(b, m.list)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.members)))
	for _, mem := range m.members {
		b = append(b, mem.PublicKey[:]...)
		var a [16]byte
		if mem.Endpoint.IsValid() {
			a = mem.Endpoint.Addr().As16()
		}
		b = append(b, a[:]...)
		b = binary.BigEndian.AppendUint16(b, mem.Endpoint.Port())
	}
	return b
}

func parseIntro(b []byte) (*introMessage, error) {
	if len(b) < introHeaderLen || !IsIntroduction(b) {
		return nil, ErrBadIntroduction
	}
	m := &introMessage{
		ask:   b[4]&introFlagAsk != 0,
		part:  binary.BigEndian.Uint16(b[6:8]),
		parts: binary.BigEndian.Uint16(b[8:10]),
		list:  binary.BigEndian.Uint64(b[10:18]),
	}
	n := int(binary.BigEndian.Uint16(b[18:20]))
	rest := b[introHeaderLen:]
	if (m.parts > 0 && m.part >= m.parts) || (m.parts == 0 && n > 0) || len(rest) != n*introMemberLen ||
		int(m.parts) > (MaxIntroduced+introPerMessage-1)/introPerMessage {
		return nil, ErrBadIntroduction
	}
	for i := range n {
		e := rest[i*introMemberLen:]
		mem := Member{PublicKey: Key(e[:KeyLen])}
		a := netip.AddrFrom16([16]byte(e[KeyLen : KeyLen+16])).Unmap()
		if port := binary.BigEndian.Uint16(e[KeyLen+16:]); !a.IsUnspecified() && port != 0 {
			mem.Endpoint = netip.AddrPortFrom(a, port)
		}
		m.members = append(m.members, mem)
	}
	return m, nil
}

// IntroductionsConfig is what Introductions are made with.
type IntroductionsConfig struct {
	// Self is this node's public key.
	Self Key
	// Send sends a control message to the peer at an overlay address
	// inside the transport; it must not keep msg.
	Send func(peer netip.Addr, msg []byte) error
	// Seen returns the peers this node's configuration lists, by overlay
	// address, with the endpoints it sees them at now: those it may
	// introduce.
	Seen func() map[netip.Addr]Member
	// Introducers returns the overlay addresses of the peers this node's
	// configuration marks introducer.
	Introducers func() []netip.Addr
	// Changed is called when the introduced members change (from Run's
	// or HandleControl's goroutine).
	Changed func()
	Log     *slog.Logger
}

// Introductions asks this node's introducers to introduce it, keeps what
// they answer, and answers the peers that ask this node. Run runs it.
type Introductions struct {
	cfg   IntroductionsConfig
	wake  chan struct{}
	inbox chan inbound

	mu      sync.Mutex
	askers  map[netip.Addr]time.Time // configured peers that asked, when last
	answers map[netip.Addr]time.Time // when each asker was last answered
	listed  map[Key]Member           // what the last answers introduced
	from    map[netip.Addr]*answer   // by introducer
	// Untrusted counts introduction messages from peers that may not
	// send them (answers from peers that are not this node's
	// introducers, asks from peers its configuration does not list),
	// Malformed those that do not parse, InboxFull those dropped because
	// introInboxLen waited.
	Untrusted, Malformed, InboxFull atomic.Uint64
}

// answer is what one introducer answered.
type answer struct {
	members  []Member // the last complete answer
	complete time.Time
	pending  uint64 // the answer being assembled
	parts    map[uint16][]Member
}

// NewIntroductions returns the introductions of cfg.
func NewIntroductions(cfg IntroductionsConfig) *Introductions {
	return &Introductions{cfg: cfg, wake: make(chan struct{}, 1), inbox: make(chan inbound, introInboxLen), askers: map[netip.Addr]time.Time{},
		answers: map[netip.Addr]time.Time{}, from: map[netip.Addr]*answer{}}
}

// Introduced returns the members this node's introducers introduce now,
// by public key, each with the introducers (overlay addresses, sorted)
// that introduce it; the endpoint is the first introducer's.
func (in *Introductions) Introduced() map[Key]Introduced {
	intros := in.cfg.Introducers()
	slices.SortFunc(intros, netip.Addr.Compare)
	in.mu.Lock()
	defer in.mu.Unlock()
	out := map[Key]Introduced{}
	for _, by := range intros {
		a := in.from[by]
		if a == nil || a.complete.IsZero() {
			continue
		}
		for _, m := range a.members {
			if m.PublicKey == in.cfg.Self {
				continue
			}
			i, ok := out[m.PublicKey]
			if !ok {
				i.Endpoint = m.Endpoint
			}
			i.By = append(i.By, by)
			out[m.PublicKey] = i
		}
	}
	return out
}

// Introduced is a member as introduced to this node.
type Introduced struct {
	Endpoint netip.AddrPort
	By       []netip.Addr // its introducers' overlay addresses
}

// HandleControl takes an introduction message from the peer at from
// (authenticated by the transport), for Run to handle; it copies msg.
// When introInboxLen messages wait, it drops msg and counts it
// (InboxFull).
func (in *Introductions) HandleControl(from netip.Addr, msg []byte) {
	select {
	case in.inbox <- inbound{from, bytes.Clone(msg)}:
	default:
		in.InboxFull.Add(1)
	}
}

// receive handles an introduction message from the peer at from.
func (in *Introductions) receive(from netip.Addr, msg []byte) {
	m, err := parseIntro(msg)
	if err != nil {
		in.Malformed.Add(1)
		return
	}
	if m.ask {
		in.asked(from)
	}
	if m.parts == 0 {
		return
	}
	if !slices.Contains(in.cfg.Introducers(), from) {
		in.Untrusted.Add(1)
		return
	}
	in.mu.Lock()
	a := in.from[from]
	if a == nil {
		a = &answer{}
		in.from[from] = a
	}
	if a.parts == nil || a.pending != m.list {
		a.pending, a.parts = m.list, map[uint16][]Member{}
	}
	a.parts[m.part] = m.members
	if len(a.parts) < int(m.parts) {
		in.mu.Unlock()
		return
	}
	var members []Member
	for i := range m.parts {
		members = append(members, a.parts[i]...)
	}
	members = members[:min(len(members), MaxIntroduced)]
	first := a.complete.IsZero()
	changed := first || !slices.Equal(members, a.members)
	a.members, a.complete, a.parts = members, time.Now(), nil
	in.mu.Unlock()
	if changed {
		in.cfg.Log.Debug("introductions", "introducer", from, "members", len(members))
		in.cfg.Changed()
	}
}

// asked notes that the peer at from asked to be introduced: a peer this
// node's configuration lists is answered at once (at most every
// answerGap), and a new asker changes what the others are told.
func (in *Introductions) asked(from netip.Addr) {
	seen := in.cfg.Seen()
	if _, ok := seen[from]; !ok {
		in.Untrusted.Add(1)
		return
	}
	now := time.Now()
	in.mu.Lock()
	_, known := in.askers[from]
	in.askers[from] = now
	answer := now.Sub(in.answers[from]) >= answerGap
	if answer {
		in.answers[from] = now
	}
	in.mu.Unlock()
	if !known {
		in.poke() // the other askers are told about it
	}
	if answer {
		in.answer(from, in.members(seen))
	}
}

// members returns the members this node introduces: the askers it lists,
// at the endpoints seen gives.
func (in *Introductions) members(seen map[netip.Addr]Member) map[Key]Member {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := map[Key]Member{}
	for a := range in.askers {
		if m, ok := seen[a]; ok {
			out[m.PublicKey] = m
		}
	}
	return out
}

// answer sends to the asker at to the members but itself, in parts.
func (in *Introductions) answer(to netip.Addr, members map[Key]Member) {
	list := make([]Member, 0, len(members))
	for _, k := range slices.SortedFunc(maps.Keys(members), Key.Compare) {
		if OverlayAddr(k) != to {
			list = append(list, members[k])
		}
	}
	var id [8]byte
	rand.Read(id[:])
	parts := max(1, (len(list)+introPerMessage-1)/introPerMessage)
	for i := range parts {
		chunk := list[min(i*introPerMessage, len(list)):min((i+1)*introPerMessage, len(list))]
		msg := appendIntro(nil, &introMessage{part: uint16(i), parts: uint16(parts), list: binary.BigEndian.Uint64(id[:]), members: chunk})
		if err := in.cfg.Send(to, msg); err != nil {
			in.cfg.Log.Debug("sending introductions", "peer", to, "err", err)
		}
	}
}

func (in *Introductions) poke() {
	select {
	case in.wake <- struct{}{}:
	default:
	}
}

// Run asks the introducers, forgets askers and answers that are older
// than IntroducedHold, and tells every asker when what this node
// introduces changes, until ctx is done.
func (in *Introductions) Run(ctx context.Context) {
	t := time.NewTicker(askFast / 5)
	defer t.Stop()
	asked := map[netip.Addr]time.Time{}
	for {
		now := time.Now()
		in.ask(now, asked)
		in.expire(now)
		in.tell()
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

// ask sends an ask to each introducer that is due one: every askFast
// until it answered, then every AskInterval.
func (in *Introductions) ask(now time.Time, asked map[netip.Addr]time.Time) {
	intros := in.cfg.Introducers()
	for a := range asked {
		if !slices.Contains(intros, a) {
			delete(asked, a)
		}
	}
	for _, a := range intros {
		in.mu.Lock()
		every := askFast
		if ans := in.from[a]; ans != nil && now.Sub(ans.complete) < AskInterval {
			every = AskInterval
		}
		in.mu.Unlock()
		if now.Sub(asked[a]) < every {
			continue
		}
		asked[a] = now
		if err := in.cfg.Send(a, appendIntro(nil, &introMessage{ask: true})); err != nil {
			in.cfg.Log.Debug("asking for introductions", "introducer", a, "err", err)
		}
	}
}

// expire forgets askers silent for IntroducedHold and answers not renewed
// within it, and the answers of peers that are no longer introducers.
func (in *Introductions) expire(now time.Time) {
	intros := in.cfg.Introducers()
	changed := false
	in.mu.Lock()
	for a, at := range in.askers {
		if now.Sub(at) > IntroducedHold {
			delete(in.askers, a)
			delete(in.answers, a)
		}
	}
	for a, ans := range in.from {
		if !slices.Contains(intros, a) || (!ans.complete.IsZero() && now.Sub(ans.complete) > IntroducedHold) {
			delete(in.from, a)
			changed = changed || !ans.complete.IsZero()
		}
	}
	in.mu.Unlock()
	if changed {
		in.cfg.Changed()
	}
}

// tell answers every asker again when the members this node introduces
// (or where it sees them) changed since it last did.
func (in *Introductions) tell() {
	in.mu.Lock()
	none := len(in.askers) == 0 && len(in.listed) == 0
	in.mu.Unlock()
	if none {
		return
	}
	members := in.members(in.cfg.Seen())
	in.mu.Lock()
	if maps.Equal(members, in.listed) {
		in.mu.Unlock()
		return
	}
	in.listed = members
	askers := slices.Collect(maps.Keys(in.askers))
	now := time.Now()
	for _, a := range askers {
		in.answers[a] = now
	}
	in.mu.Unlock()
	for _, a := range askers {
		in.answer(a, members)
	}
}
