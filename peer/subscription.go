package peer

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/librecast/lcast/mld"
)

// Subscription messages tell a peer which groups, with which source
// filters, this node's programs listen to. They travel inside the
// authenticated transport as lcast control packets (see bridge.SendControl),
// on a path of their own: no kernel socket, and no program on lc0 can send
// or receive them.
//
// A node's state has an epoch (random, per start) and a generation (raised
// on every change). A full state is sent as one or more parts; a message
// without parts is a hello that only announces epoch and generation. Every
// message also acknowledges the receiver's state: its epoch and the
// generation last applied from it. A relay's state toward each peer is its
// own, so a generation is a count of changes toward that peer; a relay
// says it is one, so that the peer accepts other nodes' packets from it.
//
// Every message also carries the sender's clock (stamp) and echoes the
// newest stamp it received from the receiver, so that each side knows
// when the peer last got one of its messages: the session's health (see
// health.go). A ping asks for an immediate pong, which echoes at once.
//
//	0  "LCS" 3          magic and version
//	4  flags            bit 0: want (send me your full state);
//	                    bit 1: relay (the sender says it passes multicast
//	                    on; the receiver's config alone decides whether
//	                    it trusts the sender as a relay);
//	                    bit 2: ping (answer at once); bit 3: pong (an answer)
//	5  0                reserved
//	6  part, parts      uint16 each; parts 0: a hello
//	10 epoch            uint64: the sender's
//	18 peer epoch       uint64: the receiver's, as last heard (0: none)
//	26 generation       uint64: the sender's
//	34 peer generation  uint64: the receiver's, as last applied
//	42 stamp            uint64: microseconds since the sender's start
//	50 echo             uint64: the receiver's newest stamp heard (0: none)
//	58 count            uint16: groups that follow
//	60 per group:       address (16), mode (1: 0 include, 1 exclude),
//	                    hops (1: relays between the sender and the
//	                    nearest listener), source count (uint16),
//	                    sources (16 each)
const (
	msgHeaderLen  = 60
	msgVersion    = 3
	groupHdrLen   = 20
	flagWant      = 1
	flagRelay     = 2
	flagPing      = 4
	flagPong      = 8
	maxMsgPayload = 1200 // fits lc0's minimum MTU of 1280 with the IPv6 header
)

var msgMagic = [3]byte{'L', 'C', 'S'}

// ErrBadMessage marks a subscription message that is malformed.
var ErrBadMessage = errors.New("malformed subscription message")

// Message is a decoded subscription message.
type Message struct {
	Want       bool
	Relay      bool
	Ping, Pong bool
	Part       uint16
	Parts      uint16
	Epoch      uint64
	PeerEpoch  uint64
	Generation uint64
	// PeerGeneration is the receiver's generation the sender last applied
	// (meaningful when PeerEpoch is the receiver's epoch).
	PeerGeneration uint64
	// Stamp is the sender's clock, Echo the receiver's newest Stamp the
	// sender heard (meaningful when PeerEpoch is the receiver's epoch).
	Stamp, Echo uint64
	Groups      []mld.GroupState
}

// AppendMessage encodes m; its groups must fit (see SplitGroups).
func AppendMessage(b []byte, m *Message) []byte {
	b = append(b, msgMagic[0], msgMagic[1], msgMagic[2], msgVersion)
	var flags byte
	if m.Want {
		flags |= flagWant
	}
	if m.Relay {
		flags |= flagRelay
	}
	if m.Ping {
		flags |= flagPing
	}
	if m.Pong {
		flags |= flagPong
	}
	b = append(b, flags, 0)
	b = binary.BigEndian.AppendUint16(b, m.Part)
	b = binary.BigEndian.AppendUint16(b, m.Parts)
	b = binary.BigEndian.AppendUint64(b, m.Epoch)
	b = binary.BigEndian.AppendUint64(b, m.PeerEpoch)
	b = binary.BigEndian.AppendUint64(b, m.Generation)
	b = binary.BigEndian.AppendUint64(b, m.PeerGeneration)
	b = binary.BigEndian.AppendUint64(b, m.Stamp)
	b = binary.BigEndian.AppendUint64(b, m.Echo)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Groups)))
	for _, g := range m.Groups {
		b = append(b, g.Group.AsSlice()...)
		b = append(b, byte(g.Mode), g.Hops)
		b = binary.BigEndian.AppendUint16(b, uint16(len(g.Sources)))
		for _, s := range g.Sources {
			b = append(b, s.AsSlice()...)
		}
	}
	return b
}

// ParseMessage decodes b.
func ParseMessage(b []byte) (*Message, error) {
	if len(b) < msgHeaderLen || [3]byte(b[0:3]) != msgMagic || b[3] != msgVersion {
		return nil, ErrBadMessage
	}
	m := &Message{
		Want:           b[4]&flagWant != 0,
		Relay:          b[4]&flagRelay != 0,
		Ping:           b[4]&flagPing != 0,
		Pong:           b[4]&flagPong != 0,
		Part:           binary.BigEndian.Uint16(b[6:8]),
		Parts:          binary.BigEndian.Uint16(b[8:10]),
		Epoch:          binary.BigEndian.Uint64(b[10:18]),
		PeerEpoch:      binary.BigEndian.Uint64(b[18:26]),
		Generation:     binary.BigEndian.Uint64(b[26:34]),
		PeerGeneration: binary.BigEndian.Uint64(b[34:42]),
		Stamp:          binary.BigEndian.Uint64(b[42:50]),
		Echo:           binary.BigEndian.Uint64(b[50:58]),
	}
	if m.Epoch == 0 || (m.Parts > 0 && m.Part >= m.Parts) {
		return nil, ErrBadMessage
	}
	n := int(binary.BigEndian.Uint16(b[58:60]))
	if m.Parts == 0 && n > 0 {
		return nil, ErrBadMessage
	}
	rest := b[msgHeaderLen:]
	m.Groups = make([]mld.GroupState, 0, min(n, len(rest)/groupHdrLen))
	for range n {
		if len(rest) < groupHdrLen {
			return nil, ErrBadMessage
		}
		g := mld.GroupState{Group: netip.AddrFrom16([16]byte(rest[0:16])), Mode: mld.FilterMode(rest[16]), Hops: rest[17]}
		nsrc := int(binary.BigEndian.Uint16(rest[18:20]))
		rest = rest[groupHdrLen:]
		if !g.Group.IsMulticast() || g.Mode > mld.Exclude || len(rest) < 16*nsrc {
			return nil, ErrBadMessage
		}
		g.Sources = make([]netip.Addr, nsrc)
		for i := range g.Sources {
			g.Sources[i] = netip.AddrFrom16([16]byte(rest[16*i : 16*i+16]))
		}
		rest = rest[16*nsrc:]
		m.Groups = append(m.Groups, g)
	}
	if len(rest) != 0 {
		return nil, ErrBadMessage
	}
	return m, nil
}

// SplitGroups cuts groups into parts that each fit one message. It always
// returns at least one part, so that an empty state is sent too.
func SplitGroups(groups []mld.GroupState) [][]mld.GroupState {
	var parts [][]mld.GroupState
	start, size := 0, msgHeaderLen
	for i, g := range groups {
		gs := groupHdrLen + 16*len(g.Sources)
		if size+gs > maxMsgPayload && i > start {
			parts = append(parts, groups[start:i])
			start, size = i, msgHeaderLen
		}
		size += gs
	}
	return append(parts, groups[start:])
}
