package peer

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"time"

	"golang.org/x/crypto/blake2s"
)

// Introduction messages travel inside the transport like the subscription
// messages, with a magic of their own. A list (an introducer's members, or
// the peers a node reaches directly) goes in parts; its identity is a hash
// of its content, so a node that has a list need not get it again:
//
//	0  "LCI" 2     magic and version
//	4  flags       bit 0: ask (introduce me; list: the last list I have
//	               from you, 0 for none); bit 1: direct (the list is of the
//	               peers the sender reaches directly, for a relay); bit 2:
//	               same (no parts: the list is still the one named)
//	5  0           reserved
//	6  part, parts uint16 each; parts 0: an ask, or a list named unchanged
//	10 list        uint64: the list's identity
//	18 epoch       uint32: the sender's epoch (random, per start), so
//	               that a receiver tells a restarted introducer's first,
//	               partial lists from a change (see Introductions.keeps)
//	22 count       uint16: members that follow
//	24 per member: public key (32), endpoint address (16, IPv4-mapped for
//	               IPv4; all zero: none), port (2)
const (
	introHeaderLen  = 24
	introMemberLen  = KeyLen + 16 + 2
	introFlagAsk    = 1
	introFlagDirect = 2
	introFlagSame   = 4
	introPerMessage = (maxMsgPayload - introHeaderLen) / introMemberLen
	// MaxIntroduced caps the members this node takes from one list, and
	// from all its introducers together; the rest are counted
	// (Introductions.OverCap).
	MaxIntroduced = 4096
	// maxListMembers caps the members a list may have: a hub may
	// introduce more members than one member takes.
	maxListMembers = 65536
	maxListParts   = (maxListMembers + introPerMessage - 1) / introPerMessage
	// maxIntroParts is how many parts carry MaxIntroduced members.
	maxIntroParts = (MaxIntroduced + introPerMessage - 1) / introPerMessage
)

var introMagic = [4]byte{'L', 'C', 'I', 2}

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
	ask, direct, same bool
	refused           int // endpoints taken as none
	part, parts       uint16
	list              uint64
	epoch             uint32
	members           []Member
}

func appendIntro(b []byte, m *introMessage) []byte {
	b = append(b, introMagic[:]...)
	var flags byte
	for _, f := range []struct {
		on  bool
		bit byte
	}{{m.ask, introFlagAsk}, {m.direct, introFlagDirect}, {m.same, introFlagSame}} {
		if f.on {
			flags |= f.bit
		}
	}
	b = append(b, flags, 0)
	b = binary.BigEndian.AppendUint16(b, m.part)
	b = binary.BigEndian.AppendUint16(b, m.parts)
	b = binary.BigEndian.AppendUint64(b, m.list)
	b = binary.BigEndian.AppendUint32(b, m.epoch)
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

// parseIntro decodes b. An endpoint that is no global unicast address
// (loopback, multicast, link-local, unspecified...), or lies in the
// overlay, is taken as none, and counted in refused.
func parseIntro(b []byte) (*introMessage, error) {
	if len(b) < introHeaderLen || !IsIntroduction(b) {
		return nil, ErrBadIntroduction
	}
	m := &introMessage{
		ask:    b[4]&introFlagAsk != 0,
		direct: b[4]&introFlagDirect != 0,
		same:   b[4]&introFlagSame != 0,
		part:   binary.BigEndian.Uint16(b[6:8]),
		parts:  binary.BigEndian.Uint16(b[8:10]),
		list:   binary.BigEndian.Uint64(b[10:18]),
		epoch:  binary.BigEndian.Uint32(b[18:22]),
	}
	n := int(binary.BigEndian.Uint16(b[22:24]))
	rest := b[introHeaderLen:]
	if (m.parts > 0 && (m.part >= m.parts || m.ask || m.same)) || (m.parts == 0 && n > 0) || len(rest) != n*introMemberLen ||
		m.parts > maxListParts {
		return nil, ErrBadIntroduction
	}
	for i := range n {
		e := rest[i*introMemberLen:]
		mem := Member{PublicKey: Key(e[:KeyLen])}
		a := netip.AddrFrom16([16]byte(e[KeyLen : KeyLen+16])).Unmap()
		switch port := binary.BigEndian.Uint16(e[KeyLen+16:]); {
		case a.IsGlobalUnicast() && port != 0 && !OverlayPrefix.Contains(a):
			mem.Endpoint = netip.AddrPortFrom(a, port)
		case !a.IsUnspecified() || port != 0:
			m.refused++
		}
		m.members = append(m.members, mem)
	}
	return m, nil
}

// listID returns the identity of a list: 64 bits of a BLAKE2s-256 hash of
// its members (members choose part of what is hashed, so the hash must
// resist collisions), never 0.
func listID(members []Member) uint64 {
	h, _ := blake2s.New256(nil)
	for _, m := range members {
		h.Write(m.PublicKey[:])
		a := m.Endpoint.Addr().As16()
		h.Write(a[:])
		h.Write(binary.BigEndian.AppendUint16(nil, m.Endpoint.Port()))
	}
	return binary.BigEndian.Uint64(h.Sum(nil)) | 1
}

// listParts cuts a list into the messages that carry it, flagged direct
// or not, from the sender's epoch.
func listParts(members []Member, direct bool, epoch uint32) [][]byte {
	id := listID(members)
	parts := max(1, (len(members)+introPerMessage-1)/introPerMessage)
	out := make([][]byte, parts)
	for i := range parts {
		chunk := members[min(i*introPerMessage, len(members)):min((i+1)*introPerMessage, len(members))]
		out[i] = appendIntro(nil, &introMessage{direct: direct, part: uint16(i), parts: uint16(parts), list: id, epoch: epoch, members: chunk})
	}
	return out
}

// list is a list received from one peer, and the one being assembled.
type list struct {
	members  []Member
	id       uint64    // members' identity, 0 before the first
	complete time.Time // when members came whole, or were named unchanged
	// epoch is the sender's epoch when members came, since when the list
	// first came whole in that epoch (see Introductions.keeps).
	epoch   uint32
	since   time.Time
	index   map[Key]int // members' positions, by key (the first of each)
	pending uint64
	parts   map[uint16][]Member
	nparts  uint16
	held    int // members in parts
	// pendingSince is when the first part of pending came.
	pendingSince time.Time
	// overCap counts the members left out over MaxIntroduced, for the
	// caller to take.
	overCap int
}

// take adds m, a part of a list or a list named unchanged, received at
// now, and reports whether the list changed.
func (l *list) take(m *introMessage, now time.Time) bool {
	if m.same {
		if m.list == l.id {
			l.complete = now
			l.renew(m.epoch, now)
		}
		return false
	}
	if l.parts == nil || l.pending != m.list || l.nparts != m.parts {
		l.pending, l.nparts, l.parts, l.held, l.pendingSince = m.list, m.parts, map[uint16][]Member{}, 0, now
	}
	if _, dup := l.parts[m.part]; !dup {
		// What a list holds while it is assembled is bounded as the
		// list is: parts beyond MaxIntroduced members count, empty.
		keep := m.members[:min(len(m.members), MaxIntroduced-l.held)]
		l.overCap += len(m.members) - len(keep)
		l.parts[m.part] = slices.Clip(keep)
		l.held += len(keep)
	}
	if len(l.parts) < int(m.parts) {
		return false
	}
	members := make([]Member, 0, l.held)
	for i := range m.parts {
		members = append(members, l.parts[i]...)
	}
	changed := l.id != m.list
	l.renew(m.epoch, now)
	l.members, l.id, l.complete, l.parts = members, m.list, now, nil
	l.index = make(map[Key]int, len(members))
	for i, mem := range members {
		if _, twice := l.index[mem.PublicKey]; !twice {
			l.index[mem.PublicKey] = i
		}
	}
	return changed
}

// renew notes that the list came whole, or named unchanged, at now in
// the sender's epoch: a first list, or the first of a new epoch (the
// sender restarted), starts since afresh.
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
// introducer's list, from the introducer's epoch: what an introducer
// sends, for tests that play a hostile one (internal/simnet).
func IntroductionList(members []Member, epoch uint32) [][]byte {
	return listParts(members, false, epoch)
}

// DirectList returns the messages that tell a relay that the sender
// reaches the peers keys directly, from the sender's epoch: for tests
// that play a hostile peer (internal/simnet).
func DirectList(keys []Key, epoch uint32) [][]byte {
	members := make([]Member, len(keys))
	for i, k := range keys {
		members[i] = Member{PublicKey: k}
	}
	return listParts(members, true, epoch)
}
