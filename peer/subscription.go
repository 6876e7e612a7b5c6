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
// or receive them (docs/design.md, "Soft-state subscriptions").
//
// A node's state toward a peer is carried as numbered updates: each
// update has the next sequence number of that peer's numbering and a list
// of records, each setting one group (mode, hops and sources, replacing
// what the group held) or removing it. The receiver applies updates in
// order only, and acknowledges the last it applied in every message it
// sends; the sender keeps the unacknowledged ones and sends them again.
// A group with more sources than fit one message is set by consecutive
// records that carry its sources in chunks (first, count of total); the
// receiver replaces the group when its last chunk arrives.
//
// A full state (a sync) is an update flagged sync, whose sequence number
// the receiver takes whatever it applied before, then records setting
// every group, then sweep on the update with the last of them: the
// receiver removes every group not set since the sync. Until the sweep the
// receiver's previous groups stay, so a full state never empties a peer's
// subscriptions for the time it takes to arrive. End marks the last update
// of a batch: the receiver hands what it holds to the router then.
//
// Every message carries a digest of the sender's state toward the
// receiver as of the last update it numbered (seq), when it is known (not
// during a sync before its sweep): the sum of BLAKE2s hashes of the
// groups (digest.go). A receiver that applied exactly that update and
// holds another digest has drifted (a bug, a restart, a cap) and asks for
// a full state (want). A message that is not an update (a hello, an ack)
// numbers nothing and carries no records.
//
// Every message also carries the sender's clock (stamp) and echoes the
// newest stamp it received from the receiver, so that each side knows
// when the peer last got one of its messages: the session's health (see
// health.go). A ping asks for an immediate pong, which echoes at once.
//
//	0  "LCS" 4          magic and version
//	4  flags            bit 0 want (send me your full state); bit 1 relay
//	                    (the sender says it passes multicast on; the
//	                    receiver's config alone decides whether it trusts
//	                    the sender as a relay); bit 2 ping; bit 3 pong;
//	                    bit 4 update; bit 5 sync; bit 6 sweep; bit 7 end
//	5  flags            bit 0: digest valid
//	6  count            uint16: records that follow (0 unless update)
//	8  epoch            uint64: the sender's (random per start, not 0)
//	16 peer epoch       uint64: the receiver's, as last heard (0: none)
//	24 seq              uint64: this update's number, or the last the
//	                    sender numbered toward the receiver
//	32 ack              uint64: the receiver's last update applied in order
//	40 stamp            uint64: microseconds since the sender's start
//	48 echo             uint64: the receiver's newest stamp heard (0: none)
//	56 digest           16 bytes: see above
//	72 per record:      group (16), op (1: 0 set, 1 remove), mode (1: 0
//	                    include, 1 exclude), hops (1: relays between the
//	                    sender and the nearest listener), 0 (1), total
//	                    sources of the group (uint16), first (uint16),
//	                    count (uint16), sources (16 each); a remove has
//	                    mode, hops, total, first and count 0
//
// A message is at most maxMsgPayload bytes; a longer one is malformed.
const (
	msgHeaderLen  = 72
	msgVersion    = 4
	recordHdrLen  = 26
	maxMsgPayload = 1200 // fits lc0's minimum MTU of 1280 with the IPv6 header

	flagWant   = 1
	flagRelay  = 2
	flagPing   = 4
	flagPong   = 8
	flagUpdate = 16
	flagSync   = 32
	flagSweep  = 64
	flagEnd    = 128
	flagDigest = 1

	opSet    = 0
	opRemove = 1
)

var msgMagic = [3]byte{'L', 'C', 'S'}

// ErrBadMessage marks a subscription message that is malformed.
var ErrBadMessage = errors.New("malformed subscription message")

// Message is a decoded subscription message.
type Message struct {
	Want, Relay, Ping, Pong bool
	// Update tells that the message is update Seq; Sync, Sweep and End
	// are an update's flags (see above).
	Update, Sync, Sweep, End bool
	Epoch, PeerEpoch         uint64
	Seq                      uint64
	// Ack is the receiver's last update the sender applied in order
	// (meaningful when PeerEpoch is the receiver's epoch).
	Ack uint64
	// Stamp is the sender's clock, Echo the receiver's newest Stamp the
	// sender heard (meaningful when PeerEpoch is the receiver's epoch).
	Stamp, Echo uint64
	// Digest is the sender's state's as of Seq, when DigestOK.
	Digest   Digest
	DigestOK bool
	Records  []Record
}

// Record is one group's change in an update: set (a chunk of its sources,
// First to First+len(Sources) of Total) or Remove.
type Record struct {
	Group        netip.Addr
	Remove       bool
	Mode         mld.FilterMode
	Hops         uint8
	Total, First uint16
	Sources      []netip.Addr
}

// recordLen is the encoded length of a record with n sources.
func recordLen(n int) int { return recordHdrLen + 16*n }

// AppendMessage encodes m; its records must fit maxMsgPayload.
func AppendMessage(b []byte, m *Message) []byte {
	b = append(b, msgMagic[0], msgMagic[1], msgMagic[2], msgVersion)
	var flags, flags2 byte
	for i, f := range []bool{m.Want, m.Relay, m.Ping, m.Pong, m.Update, m.Sync, m.Sweep, m.End} {
		if f {
			flags |= 1 << i
		}
	}
	if m.DigestOK {
		flags2 |= flagDigest
	}
	b = append(b, flags, flags2)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Records)))
	for _, v := range []uint64{m.Epoch, m.PeerEpoch, m.Seq, m.Ack, m.Stamp, m.Echo} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	b = append(b, m.Digest[:]...)
	for i := range m.Records {
		b = appendRecord(b, &m.Records[i])
	}
	return b
}

func appendRecord(b []byte, r *Record) []byte {
	b = append(b, r.Group.AsSlice()...)
	op := byte(opSet)
	if r.Remove {
		op = opRemove
	}
	b = append(b, op, byte(r.Mode), r.Hops, 0)
	b = binary.BigEndian.AppendUint16(b, r.Total)
	b = binary.BigEndian.AppendUint16(b, r.First)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Sources)))
	for _, s := range r.Sources {
		b = append(b, s.AsSlice()...)
	}
	return b
}

// ParseMessage decodes b: a message of at most maxMsgPayload bytes whose
// records are consistent (a set's chunk within its total, a remove with
// nothing else, groups multicast, records only in updates).
func ParseMessage(b []byte) (*Message, error) {
	if len(b) < msgHeaderLen || len(b) > maxMsgPayload || [3]byte(b[0:3]) != msgMagic || b[3] != msgVersion {
		return nil, ErrBadMessage
	}
	f := b[4]
	m := &Message{
		Want: f&flagWant != 0, Relay: f&flagRelay != 0, Ping: f&flagPing != 0, Pong: f&flagPong != 0,
		Update: f&flagUpdate != 0, Sync: f&flagSync != 0, Sweep: f&flagSweep != 0, End: f&flagEnd != 0,
		DigestOK:  b[5]&flagDigest != 0,
		Epoch:     binary.BigEndian.Uint64(b[8:16]),
		PeerEpoch: binary.BigEndian.Uint64(b[16:24]),
		Seq:       binary.BigEndian.Uint64(b[24:32]),
		Ack:       binary.BigEndian.Uint64(b[32:40]),
		Stamp:     binary.BigEndian.Uint64(b[40:48]),
		Echo:      binary.BigEndian.Uint64(b[48:56]),
		Digest:    Digest(b[56:72]),
	}
	n := int(binary.BigEndian.Uint16(b[6:8]))
	if m.Epoch == 0 || b[5]&^flagDigest != 0 || (!m.Update && (n > 0 || m.Sync || m.Sweep || m.End)) ||
		(m.Update && m.Seq == 0) {
		return nil, ErrBadMessage
	}
	rest := b[msgHeaderLen:]
	if n > len(rest)/recordHdrLen {
		return nil, ErrBadMessage
	}
	m.Records = make([]Record, 0, n)
	for range n {
		var r Record
		var err error
		if r, rest, err = parseRecord(rest); err != nil {
			return nil, err
		}
		m.Records = append(m.Records, r)
	}
	if len(rest) != 0 {
		return nil, ErrBadMessage
	}
	return m, nil
}

// parseRecord decodes the record at the start of b and returns the rest.
func parseRecord(b []byte) (Record, []byte, error) {
	if len(b) < recordHdrLen {
		return Record{}, nil, ErrBadMessage
	}
	r := Record{Group: netip.AddrFrom16([16]byte(b[0:16])), Mode: mld.FilterMode(b[17]), Hops: b[18],
		Total: binary.BigEndian.Uint16(b[20:22]), First: binary.BigEndian.Uint16(b[22:24])}
	op, reserved, count := b[16], b[19], int(binary.BigEndian.Uint16(b[24:26]))
	b = b[recordHdrLen:]
	switch {
	case !r.Group.IsMulticast() || reserved != 0:
		return Record{}, nil, ErrBadMessage
	case op == opRemove:
		if r.Mode != 0 || r.Hops != 0 || r.Total != 0 || r.First != 0 || count != 0 {
			return Record{}, nil, ErrBadMessage
		}
		r.Remove = true
		return r, b, nil
	case op != opSet || r.Mode > mld.Exclude || int(r.First)+count > int(r.Total) ||
		(count == 0 && r.Total != 0) || len(b) < 16*count:
		return Record{}, nil, ErrBadMessage
	}
	r.Sources = make([]netip.Addr, count)
	for i := range r.Sources {
		r.Sources[i] = netip.AddrFrom16([16]byte(b[16*i : 16*i+16]))
	}
	return r, b[16*count:], nil
}
