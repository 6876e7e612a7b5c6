package peer

import (
	"encoding/binary"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"time"

	"golang.org/x/crypto/blake2s"
)

// Introduction messages travel inside the transport like the subscription
// messages, with a magic of their own. A list (an introducer's members, or
// the peers a node reaches directly) is sent whole once, then as changes
// (docs/design.md, "Reach: introducers, direct paths, relays"): its
// sender numbers it (an epoch, random per start, and a version raised by
// each change) and names its content by a hash, so a receiver that has a
// list need not get it again, one a few versions behind gets the changes
// since, and one that drifted (the hash of what it made does not match)
// gets it whole:
//
//	0  "LCI" 3     magic and version
//	4  flags       bit 0: ask (send me your list: epoch, version and list
//	               name what I have, all 0 for nothing); bit 1: direct
//	               (the list is of the peers the sender reaches directly,
//	               for a relay); bit 2: same (no parts: the list is still
//	               the one named); bit 3: change (the parts carry the
//	               change from version-1 to version, not the list)
//	5  0           reserved
//	6  part, parts uint16 each; parts 0: an ask, or a list named unchanged
//	10 list        uint64: the list's identity (after the change)
//	18 epoch       uint32: the sender's epoch, so that a receiver tells a
//	               restarted introducer's first, partial lists from a
//	               change (see Introductions.keeps)
//	22 version     uint64: the list's version
//	30 count       uint16: members that follow (a change: added or moved)
//	32 gone        uint16: in a change, keys of members removed, after
//	               the members
//	34 per member: public key (32), endpoint address (16, IPv4-mapped for
//	               IPv4; all zero: none), port (2); per key gone: 32
//
// No message is longer than maxMsgPayload, what lcast's control packets
// carry at lc0's least MTU.
const (
	introHeaderLen  = 34
	introMemberLen  = KeyLen + 16 + 2
	introFlagAsk    = 1
	introFlagDirect = 2
	introFlagSame   = 4
	introFlagChange = 8
	introPerMessage = (maxMsgPayload - introHeaderLen) / introMemberLen
	// MaxIntroduced caps the members this node takes from all its
	// introducers together; the rest are counted
	// (Introductions.OverCap).
	MaxIntroduced = 4096
	// maxListMembers caps the members a list may have (a hub may
	// introduce more members than one member takes), and what a change
	// may carry.
	maxListMembers = 65536
	maxListParts   = (maxListMembers + introPerMessage - 1) / introPerMessage
	// maxIntroParts is how many parts carry MaxIntroduced members.
	maxIntroParts = (MaxIntroduced + introPerMessage - 1) / introPerMessage
	// maxLogMsgs bounds the messages of changes a sender keeps for
	// receivers a few versions behind (about 1.2 MB).
	maxLogMsgs = 1024
)

var introMagic = [4]byte{'L', 'C', 'I', 3}

// ErrBadIntroduction marks an introduction message that is malformed.
var ErrBadIntroduction = errors.New("malformed introduction message")

// IsIntroduction reports whether a control message is an introduction
// message (by its magic), to hand to Introductions.HandleControl.
func IsIntroduction(msg []byte) bool { return len(msg) >= 4 && [4]byte(msg[:4]) == introMagic }

// Member is a node in a list: its public key and, in an introducer's
// list, the endpoint the introducer sees it at (invalid if none).
type Member struct {
	PublicKey Key
	Endpoint  netip.AddrPort
}

// introMessage is a decoded introduction message.
type introMessage struct {
	ask, direct, same, change bool
	refused                   int // endpoints taken as none
	part, parts               uint16
	list                      uint64
	epoch                     uint32
	version                   uint64
	members                   []Member
	gone                      []Key
}

func appendIntro(b []byte, m *introMessage) []byte {
	b = append(b, introMagic[:]...)
	var flags byte
	for _, f := range []struct {
		on  bool
		bit byte
	}{{m.ask, introFlagAsk}, {m.direct, introFlagDirect}, {m.same, introFlagSame}, {m.change, introFlagChange}} {
		if f.on {
			flags |= f.bit
		}
	}
	b = append(b, flags, 0)
	b = binary.BigEndian.AppendUint16(b, m.part)
	b = binary.BigEndian.AppendUint16(b, m.parts)
	b = binary.BigEndian.AppendUint64(b, m.list)
	b = binary.BigEndian.AppendUint32(b, m.epoch)
	b = binary.BigEndian.AppendUint64(b, m.version)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.members)))
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.gone)))
	for _, mem := range m.members {
		b = append(b, mem.PublicKey[:]...)
		var a [16]byte
		if mem.Endpoint.IsValid() {
			a = mem.Endpoint.Addr().As16()
		}
		b = append(b, a[:]...)
		b = binary.BigEndian.AppendUint16(b, mem.Endpoint.Port())
	}
	for _, k := range m.gone {
		b = append(b, k[:]...)
	}
	return b
}

// parseIntro decodes b. An endpoint that is no global unicast address
// (loopback, multicast, link-local, unspecified...), or lies in the
// overlay, is taken as none, and counted in refused.
func parseIntro(b []byte) (*introMessage, error) {
	if len(b) < introHeaderLen || len(b) > maxMsgPayload || !IsIntroduction(b) {
		return nil, ErrBadIntroduction
	}
	m := &introMessage{
		ask:     b[4]&introFlagAsk != 0,
		direct:  b[4]&introFlagDirect != 0,
		same:    b[4]&introFlagSame != 0,
		change:  b[4]&introFlagChange != 0,
		part:    binary.BigEndian.Uint16(b[6:8]),
		parts:   binary.BigEndian.Uint16(b[8:10]),
		list:    binary.BigEndian.Uint64(b[10:18]),
		epoch:   binary.BigEndian.Uint32(b[18:22]),
		version: binary.BigEndian.Uint64(b[22:30]),
	}
	n, gone := int(binary.BigEndian.Uint16(b[30:32])), int(binary.BigEndian.Uint16(b[32:34]))
	rest := b[introHeaderLen:]
	parts := m.parts > 0
	switch {
	case len(rest) != n*introMemberLen+gone*KeyLen, m.parts > maxListParts, parts && m.part >= m.parts,
		parts == (m.ask || m.same), m.ask && m.same, m.change && !parts, m.change && m.version == 0, !parts && n+gone > 0, !m.change && gone > 0:
		return nil, ErrBadIntroduction
	}
	if n > 0 {
		m.members = make([]Member, n)
	}
	for i := range n {
		e := rest[i*introMemberLen:]
		mem := Member{PublicKey: Key(e[:KeyLen])}
		a := netip.AddrFrom16([16]byte(e[KeyLen : KeyLen+16])).Unmap()
		switch ep := netip.AddrPortFrom(a, binary.BigEndian.Uint16(e[KeyLen+16:])); {
		case acceptable(ep):
			mem.Endpoint = ep
		case !a.IsUnspecified() || ep.Port() != 0:
			m.refused++
		}
		m.members[i] = mem
	}
	for i := range gone {
		m.gone = append(m.gone, Key(rest[n*introMemberLen+i*KeyLen:]))
	}
	return m, nil
}

// acceptable reports whether an introducer may name ep as a member's
// endpoint: a global unicast address outside the overlay (not
// link-local, loopback, multicast or unspecified), and a port.
func acceptable(ep netip.AddrPort) bool {
	a := ep.Addr().Unmap()
	return a.IsGlobalUnicast() && ep.Port() != 0 && !OverlayPrefix.Contains(a)
}

// listID returns the identity of a list: 64 bits of a BLAKE2s-256 hash of
// its members (members choose part of what is hashed, so the hash must
// resist collisions), never 0. An endpoint no member may have counts as
// none, as a receiver takes it.
func listID(members []Member) uint64 {
	h, _ := blake2s.New256(nil)
	var b [KeyLen + 18]byte
	for _, m := range members {
		var a [16]byte
		var port uint16
		if acceptable(m.Endpoint) {
			a, port = m.Endpoint.Addr().As16(), m.Endpoint.Port()
		}
		copy(b[:], m.PublicKey[:])
		copy(b[KeyLen:], a[:])
		binary.BigEndian.PutUint16(b[KeyLen+16:], port)
		h.Write(b[:])
	}
	return binary.BigEndian.Uint64(h.Sum(nil)) | 1
}

// listParts cuts a list, of version of the sender's epoch, into the
// messages that carry it whole, flagged direct or not.
func listParts(members []Member, direct bool, epoch uint32, version uint64) [][]byte {
	id := listID(members)
	parts := max(1, (len(members)+introPerMessage-1)/introPerMessage)
	out := make([][]byte, parts)
	for i := range parts {
		chunk := members[min(i*introPerMessage, len(members)):min((i+1)*introPerMessage, len(members))]
		out[i] = appendIntro(nil, &introMessage{direct: direct, part: uint16(i), parts: uint16(parts), list: id, epoch: epoch,
			version: version, members: chunk})
	}
	return out
}

// changeParts cuts a change (members added or moved, keys gone) that
// makes version of a list named id into the messages that carry it.
func changeParts(upserts []Member, gone []Key, direct bool, epoch uint32, version, id uint64) [][]byte {
	var chunks []*introMessage
	m := &introMessage{}
	room := func(bytes int) {
		if introHeaderLen+len(m.members)*introMemberLen+len(m.gone)*KeyLen+bytes > maxMsgPayload {
			chunks = append(chunks, m)
			m = &introMessage{}
		}
	}
	for _, u := range upserts {
		room(introMemberLen)
		m.members = append(m.members, u)
	}
	for _, k := range gone {
		room(KeyLen)
		m.gone = append(m.gone, k)
	}
	chunks = append(chunks, m)
	out := make([][]byte, len(chunks))
	for i, c := range chunks {
		c.change, c.direct, c.part, c.parts, c.list, c.epoch, c.version = true, direct, uint16(i), uint16(len(chunks)), id, epoch, version
		out[i] = appendIntro(nil, c)
	}
	return out
}

// publisher is a list this node sends (its introductions, or the peers it
// reaches directly): whole to a receiver that has none, or another epoch,
// or a version older than its log; else as the changes since the
// receiver's version.
type publisher struct {
	direct  bool
	epoch   uint32
	version uint64
	members []Member // by key
	id      uint64
	log     []change // the latest changes, oldest first
	logMsgs int      // their messages
}

// change is the messages that make version of a list from the one before.
type change struct {
	version uint64
	msgs    [][]byte
}

func newPublisher(direct bool, epoch uint32) *publisher {
	return &publisher{direct: direct, epoch: epoch, members: []Member{}, id: listID(nil)}
}

// set makes members (sorted by key, each key once) the list, and reports
// whether it changed: a change raises the version and is logged.
func (p *publisher) set(members []Member) bool {
	var upserts []Member
	var gone []Key
	i, j := 0, 0
	for i < len(p.members) || j < len(members) {
		switch {
		case j == len(members) || (i < len(p.members) && p.members[i].PublicKey.Compare(members[j].PublicKey) < 0):
			gone = append(gone, p.members[i].PublicKey)
			i++
		case i == len(p.members) || p.members[i].PublicKey.Compare(members[j].PublicKey) > 0:
			upserts = append(upserts, members[j])
			j++
		default:
			if p.members[i] != members[j] {
				upserts = append(upserts, members[j])
			}
			i, j = i+1, j+1
		}
	}
	if len(upserts) == 0 && len(gone) == 0 {
		return false
	}
	p.version++
	p.members, p.id = members, listID(members)
	c := change{version: p.version, msgs: changeParts(upserts, gone, p.direct, p.epoch, p.version, p.id)}
	p.log = append(p.log, c)
	p.logMsgs += len(c.msgs)
	for len(p.log) > 0 && p.logMsgs > maxLogMsgs {
		p.logMsgs -= len(p.log[0].msgs)
		p.log = p.log[1:]
	}
	return true
}

// messages returns what brings a receiver that has version has of the
// list of epoch up to date: nothing, or with answer the list named
// unchanged, if it is; the changes since, if the log has them; else the
// whole list (full).
func (p *publisher) messages(epoch uint32, has uint64, answer bool) (msgs [][]byte, full bool) {
	if epoch == p.epoch && has == p.version {
		if !answer {
			return nil, false
		}
		return [][]byte{appendIntro(nil, &introMessage{same: true, direct: p.direct, list: p.id, epoch: p.epoch, version: p.version})}, false
	}
	if epoch == p.epoch && has < p.version && len(p.log) > 0 && p.log[0].version <= has+1 {
		if last := p.log[len(p.log)-1]; last.version == has+1 {
			return last.msgs, false // the common case: one change behind
		}
		for _, c := range p.log {
			if c.version > has {
				msgs = append(msgs, c.msgs...)
			}
		}
		return msgs, false
	}
	return listParts(p.members, p.direct, p.epoch, p.version), true
}

// list is a list received from one peer, and the list or change being
// assembled.
type list struct {
	members  []Member
	id       uint64    // members' identity, 0 before the first
	complete time.Time // when members came whole, or were named unchanged
	changed  time.Time // when members last changed (another identity)
	// epoch and version are the sender's when members came; since is
	// when the list first came whole in that epoch (see
	// Introductions.keeps).
	epoch   uint32
	version uint64
	since   time.Time
	index   map[Key]int // members' positions, by key (the first of each)
	// gone are the members the sender removed in its epoch (see
	// Introductions.keeps).
	gone map[Key]bool
	// limit caps the members of the list, and what its parts hold while
	// assembled: maxListMembers for an introducer's, MaxIntroduced for
	// a direct list (0: maxListMembers).
	limit int
	// The list or change being assembled: its parts, what they hold in
	// all, and when its first part came.
	pending      *introMessage // the first part, for what it names
	parts        map[uint16]*introMessage
	held         int
	pendingSince time.Time
}

// take adds m, a part of a list or of a change, or a list named
// unchanged, received at now. It reports whether the list changed, and
// whether the sender is to be asked for it (what this node has does not
// match what m names, or a change it made does not match its name).
func (l *list) take(m *introMessage, now time.Time) (changed, ask bool) {
	if m.same {
		if l.complete.IsZero() || m.list != l.id || m.epoch != l.epoch || m.version != l.version {
			return false, true
		}
		l.complete = now
		return false, false
	}
	if p := l.pending; p == nil || p.change != m.change || p.list != m.list || p.epoch != m.epoch || p.version != m.version ||
		p.parts != m.parts {
		l.pending, l.parts, l.held, l.pendingSince = m, map[uint16]*introMessage{}, 0, now
	}
	if _, dup := l.parts[m.part]; !dup {
		// What is held while a list or change is assembled is bounded
		// as the list is.
		if l.held += len(m.members) + len(m.gone); l.held > l.max() {
			l.pending, l.parts, l.held = nil, nil, 0
			return false, false
		}
		l.parts[m.part] = m
	}
	if len(l.parts) < int(m.parts) {
		return false, false
	}
	parts := l.parts
	l.pending, l.parts, l.held = nil, nil, 0
	var members []Member
	if !m.change {
		for i := range m.parts {
			members = append(members, parts[i].members...)
		}
	} else {
		switch {
		case l.complete.IsZero() || m.epoch != l.epoch || m.version > l.version+1:
			return false, true // a change of a list this node lacks
		case m.version <= l.version:
			return false, false // one applied already
		}
		byKey := make(map[Key]Member, len(l.members))
		for _, mem := range l.members {
			byKey[mem.PublicKey] = mem
		}
		for i := range m.parts {
			for _, mem := range parts[i].members {
				byKey[mem.PublicKey] = mem
			}
			for _, k := range parts[i].gone {
				delete(byKey, k)
			}
		}
		if len(byKey) > l.max() {
			return false, true
		}
		members = slices.SortedFunc(maps.Values(byKey), func(a, b Member) int { return a.PublicKey.Compare(b.PublicKey) })
	}
	if len(members) > l.max() {
		return false, false
	}
	if listID(members) != m.list {
		// Drifted, or a sender that does not hash what it sends: it is
		// asked for the whole list.
		l.version = 0
		return false, true
	}
	changed = l.id != m.list
	if changed {
		l.changed = now
	}
	sameEpoch := !l.complete.IsZero() && l.epoch == m.epoch
	old := l.index
	l.renew(m.epoch, now)
	l.members, l.id, l.complete, l.version = members, m.list, now, m.version
	l.index = make(map[Key]int, len(members))
	for i, mem := range members {
		if _, twice := l.index[mem.PublicKey]; !twice {
			l.index[mem.PublicKey] = i
		}
	}
	// Members the sender removed within its epoch: it said they are
	// gone. A new epoch starts afresh.
	if !sameEpoch || len(l.gone) > l.max() {
		l.gone = nil
	}
	for k := range old {
		if _, still := l.index[k]; !still && sameEpoch {
			if l.gone == nil {
				l.gone = map[Key]bool{}
			}
			l.gone[k] = true
		}
	}
	for k := range l.gone {
		if _, back := l.index[k]; back {
			delete(l.gone, k)
		}
	}
	return changed, false
}

// max returns the most members the list may have.
func (l *list) max() int {
	if l.limit == 0 {
		return maxListMembers
	}
	return l.limit
}

// have returns the epoch, version and name of what l holds, for an ask:
// zero if nothing whole.
func (l *list) have() (epoch uint32, version, id uint64) {
	if l == nil || l.complete.IsZero() {
		return 0, 0, 0
	}
	return l.epoch, l.version, l.id
}

// renew notes that the list came whole at now in the sender's epoch: a
// first list, or the first of a new epoch (the sender restarted), starts
// since afresh.
func (l *list) renew(epoch uint32, now time.Time) {
	if l.since.IsZero() || l.epoch != epoch {
		l.epoch, l.since = epoch, now
	}
}

// names reports whether the list names the member with key k.
func (l *list) names(k Key) bool {
	_, ok := l.index[k]
	return ok
}

// IntroductionList returns the messages that carry members as an
// introducer's list, version 1 of the introducer's epoch: what an
// introducer sends a node that has no list of it, for tests that play a
// hostile one (internal/simnet).
func IntroductionList(members []Member, epoch uint32) [][]byte {
	return listParts(members, false, epoch, 1)
}

// DirectList returns the messages that tell a relay that the sender
// reaches the peers keys directly, as version of the sender's epoch: for
// tests that play a hostile peer (internal/simnet).
func DirectList(keys []Key, epoch uint32, version uint64) [][]byte {
	members := make([]Member, len(keys))
	for i, k := range keys {
		members[i] = Member{PublicKey: k}
	}
	return listParts(members, true, epoch, version)
}
