package mld

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/librecast/lcast/internal/ip6"
)

// ICMPv6 message types used by MLD.
const (
	TypeQuery    uint8 = 130 // Multicast Listener Query (v1 and v2)
	TypeV1Report uint8 = 131 // MLDv1 Multicast Listener Report
	TypeV1Done   uint8 = 132 // MLDv1 Multicast Listener Done
	TypeV2Report uint8 = 143 // MLDv2 Multicast Listener Report
)

// RecordType is the type of an MLDv2 multicast address record (RFC 3810 5.2.12).
type RecordType uint8

// Record types.
const (
	ModeIsInclude       RecordType = 1 // IS_IN: current state
	ModeIsExclude       RecordType = 2 // IS_EX: current state
	ChangeToIncludeMode RecordType = 3 // TO_IN: filter mode change
	ChangeToExcludeMode RecordType = 4 // TO_EX: filter mode change
	AllowNewSources     RecordType = 5 // ALLOW: source list change
	BlockOldSources     RecordType = 6 // BLOCK: source list change
	minRecordType                  = ModeIsInclude
	maxRecordType                  = BlockOldSources
)

var recordTypeNames = [...]string{"", "IS_IN", "IS_EX", "TO_IN", "TO_EX", "ALLOW", "BLOCK"}

func (t RecordType) String() string {
	if t >= minRecordType && t <= maxRecordType {
		return recordTypeNames[t]
	}
	return fmt.Sprintf("RecordType(%d)", uint8(t))
}

// Errors returned by Decode. ErrNotMLD marks a well-formed packet that is not
// an MLD message (a Router Solicitation, a UDP datagram...): callers ignore
// it quietly. The others mark malformed MLD and are counted as drops.
var (
	ErrNotMLD    = errors.New("not an MLD message")
	ErrTruncated = errors.New("truncated packet")
	ErrChecksum  = errors.New("bad ICMPv6 checksum")
	ErrMalformed = errors.New("malformed MLD message")
)

const (
	ipv6HeaderLen  = ip6.HeaderLen
	protoHopByHop  = ip6.ProtoHopByHop
	protoICMPv6    = ip6.ProtoICMPv6
	mldV1Len       = 24 // type, code, checksum, max delay, reserved, address
	mldV2QueryLen  = 28 // v1 layout + flags/QRV, QQIC, number of sources
	v2RecordHdrLen = 20 // type, aux len, number of sources, address
)

// Record is one multicast address record of an MLDv2 Report. Its source list
// refers to the decoded packet and is valid only while that buffer is.
type Record struct {
	Type    RecordType
	Group   netip.Addr
	sources []byte // 16 bytes per source
}

// NumSources returns the number of sources in the record.
func (r Record) NumSources() int { return len(r.sources) / 16 }

// Source returns the i'th source address.
func (r Record) Source(i int) netip.Addr {
	return netip.AddrFrom16([16]byte(r.sources[16*i : 16*i+16]))
}

// Message is a decoded MLD message. Decode fills a caller-owned Message and
// reuses its Records slice, so decoding allocates nothing once the slice has
// grown to the largest report seen.
type Message struct {
	Source      netip.Addr // IPv6 source address
	Destination netip.Addr // IPv6 destination address
	Type        uint8      // one of the Type constants
	// Group is the multicast address of a v1 Report or Done, or of a Query
	// (unspecified for a General Query).
	Group netip.Addr
	// MaxResponseCode is a Query's Maximum Response Code (milliseconds for
	// MLDv1; RFC 3810 5.1.3 encoding for MLDv2).
	MaxResponseCode uint16
	// V2 marks an MLDv2 Query (as opposed to an MLDv1 one).
	V2 bool
	// Suppress is an MLDv2 Query's S flag (Suppress Router-Side
	// Processing, RFC 3810 5.1.7): routers hearing it leave their timers.
	Suppress bool
	// QRV and QQIC are an MLDv2 Query's Querier's Robustness Variable
	// (5.1.8) and Querier's Query Interval Code (5.1.9); zero in MLDv1.
	QRV, QQIC uint8
	// Records holds the records of an MLDv2 Report.
	Records      []Record
	querySources []byte // an MLDv2 Query's sources, 16 bytes each
}

// MaxResponseDelay returns a Query's Maximum Response Delay, decoded from
// MaxResponseCode (RFC 3810 5.1.3; plain milliseconds in MLDv1).
func (m *Message) MaxResponseDelay() time.Duration {
	if !m.V2 {
		return time.Duration(m.MaxResponseCode) * time.Millisecond
	}
	return time.Duration(codeValue(uint32(m.MaxResponseCode), 12)) * time.Millisecond
}

// QueryInterval returns an MLDv2 Query's Querier's Query Interval, decoded
// from QQIC (RFC 3810 5.1.9); zero if the querier did not say.
func (m *Message) QueryInterval() time.Duration {
	return time.Duration(codeValue(uint32(m.QQIC), 4)) * time.Second
}

// NumQuerySources returns the number of sources in an MLDv2 Query.
func (m *Message) NumQuerySources() int { return len(m.querySources) / 16 }

// QuerySource returns the i'th source of an MLDv2 Query.
func (m *Message) QuerySource(i int) netip.Addr {
	return netip.AddrFrom16([16]byte(m.querySources[16*i : 16*i+16]))
}

// Decode parses an IPv6 packet b carrying an MLD message into m. It walks
// extension headers (MLD messages carry a Hop-by-Hop header with a Router
// Alert option), verifies the ICMPv6 checksum, and validates every record.
// It returns ErrNotMLD for packets that are not MLD.
func Decode(b []byte, m *Message) error {
	if len(b) < ipv6HeaderLen {
		return ErrTruncated
	}
	if b[0]>>4 != 6 {
		return ErrNotMLD
	}
	payloadLen := int(binary.BigEndian.Uint16(b[4:6]))
	if ipv6HeaderLen+payloadLen > len(b) {
		return ErrTruncated
	}
	b = b[:ipv6HeaderLen+payloadLen]
	src := [16]byte(b[8:24])
	dst := [16]byte(b[24:40])
	next, off, ok := ip6.Upper(b)
	if !ok {
		return ErrTruncated
	}
	if next != protoICMPv6 {
		// Fragments and upper layers other than ICMPv6 are not MLD:
		// MLD messages are never fragmented in practice on lc0.
		return ErrNotMLD
	}
	icmp := b[off:]
	if len(icmp) < 4 {
		return ErrTruncated
	}
	typ := icmp[0]
	switch typ {
	case TypeQuery, TypeV1Report, TypeV1Done, TypeV2Report:
	default:
		return ErrNotMLD
	}
	if checksum(src, dst, icmp) != 0 {
		return ErrChecksum
	}
	*m = Message{
		Source:      netip.AddrFrom16(src),
		Destination: netip.AddrFrom16(dst),
		Type:        typ,
		Records:     m.Records[:0],
	}
	switch typ {
	case TypeV2Report:
		return decodeV2Report(icmp, m)
	case TypeQuery:
		return decodeQuery(icmp, m)
	default:
		if len(icmp) < mldV1Len {
			return ErrTruncated
		}
		m.Group = netip.AddrFrom16([16]byte(icmp[8:24]))
		if !m.Group.IsMulticast() {
			return ErrMalformed
		}
		return nil
	}
}

func decodeQuery(icmp []byte, m *Message) error {
	if len(icmp) < mldV1Len {
		return ErrTruncated
	}
	m.MaxResponseCode = binary.BigEndian.Uint16(icmp[4:6])
	m.Group = netip.AddrFrom16([16]byte(icmp[8:24]))
	if !m.Group.IsUnspecified() && !m.Group.IsMulticast() {
		return ErrMalformed // neither General nor specific
	}
	if len(icmp) == mldV1Len {
		return nil
	}
	if len(icmp) < mldV2QueryLen {
		return ErrTruncated
	}
	m.V2 = true
	m.Suppress = icmp[24]&SuppressFlag != 0
	m.QRV, m.QQIC = icmp[24]&7, icmp[25]
	n := int(binary.BigEndian.Uint16(icmp[26:28]))
	if mldV2QueryLen+16*n > len(icmp) {
		return ErrTruncated
	}
	m.querySources = icmp[mldV2QueryLen : mldV2QueryLen+16*n]
	return nil
}

func decodeV2Report(icmp []byte, m *Message) error {
	if len(icmp) < 8 {
		return ErrTruncated
	}
	n := int(binary.BigEndian.Uint16(icmp[6:8]))
	rest := icmp[8:]
	for range n {
		if len(rest) < v2RecordHdrLen {
			return ErrTruncated
		}
		typ := RecordType(rest[0])
		auxLen := 4 * int(rest[1])
		nsrc := int(binary.BigEndian.Uint16(rest[2:4]))
		end := v2RecordHdrLen + 16*nsrc + auxLen
		if end > len(rest) {
			return ErrTruncated
		}
		group := netip.AddrFrom16([16]byte(rest[4:20]))
		if typ < minRecordType || typ > maxRecordType || !group.IsMulticast() {
			return ErrMalformed
		}
		m.Records = append(m.Records, Record{
			Type:    typ,
			Group:   group,
			sources: rest[v2RecordHdrLen : v2RecordHdrLen+16*nsrc],
		})
		rest = rest[end:]
	}
	return nil
}

// checksum returns the ICMPv6 checksum over the pseudo-header and msg; it is
// zero for a message whose checksum field is correct.
func checksum(src, dst [16]byte, msg []byte) uint16 {
	return ip6.Checksum(src, dst, protoICMPv6, msg)
}

// hopByHopRouterAlert is the 8-byte Hop-by-Hop header every MLD message
// carries: next header ICMPv6, length 0, Router Alert (type 5, length 2,
// value 0 = MLD), then a PadN of 2 bytes.
var hopByHopRouterAlert = [8]byte{protoICMPv6, 0, 5, 2, 0, 0, 1, 0}

// appendPacket appends an IPv6 packet from src to dst with hop limit 1, a
// Hop-by-Hop Router Alert header and the ICMPv6 message built by body, and
// fills in the ICMPv6 checksum.
func appendPacket(b []byte, src, dst netip.Addr, body func([]byte) []byte) []byte {
	start := len(b)
	b = append(b, 0x60, 0, 0, 0, 0, 0, protoHopByHop, 1)
	b = append(b, src.AsSlice()...)
	b = append(b, dst.AsSlice()...)
	b = append(b, hopByHopRouterAlert[:]...)
	icmpStart := len(b)
	b = body(b)
	binary.BigEndian.PutUint16(b[start+4:], uint16(len(b)-start-ipv6HeaderLen))
	sum := checksum(src.As16(), dst.As16(), b[icmpStart:])
	binary.BigEndian.PutUint16(b[icmpStart+2:], sum)
	return b
}

// AllNodes is ff02::1, the destination of General Queries.
var AllNodes = netip.MustParseAddr("ff02::1")

// Destinations of reports and Done messages.
var (
	allRouters  = netip.MustParseAddr("ff02::2")  // MLDv1 Done
	allRouters2 = netip.MustParseAddr("ff02::16") // MLDv2 Reports
)

// SuppressFlag, or'ed into AppendQuery's qrv, sets a Query's S flag
// (Suppress Router-Side Processing, RFC 3810 5.1.7), as it sits in the
// query's byte of flags and QRV.
const SuppressFlag uint8 = 1 << 3

// AppendQuery appends an MLDv2 Query packet from the link-local address src.
// An unspecified group makes a General Query, sent to ff02::1; otherwise the
// query is sent to the group itself. maxResponse is the Maximum Response Code
// (milliseconds, exact below 32768), qrv the Querier's Robustness Variable
// (0 to 7, or'ed with SuppressFlag to set the S flag) and qqic the Querier's
// Query Interval Code (seconds, exact below 128).
func AppendQuery(b []byte, src, group netip.Addr, sources []netip.Addr, maxResponse uint16, qrv, qqic uint8) []byte {
	dst := group
	if !group.IsValid() || group.IsUnspecified() {
		group, dst = netip.IPv6Unspecified(), AllNodes
	}
	return appendPacket(b, src, dst, func(b []byte) []byte {
		b = append(b, TypeQuery, 0, 0, 0)
		b = binary.BigEndian.AppendUint16(b, maxResponse)
		b = append(b, 0, 0)
		b = append(b, group.AsSlice()...)
		b = append(b, qrv&(SuppressFlag|7), qqic)
		b = binary.BigEndian.AppendUint16(b, uint16(len(sources)))
		for _, s := range sources {
			b = append(b, s.AsSlice()...)
		}
		return b
	})
}

// AppendV1 appends an MLDv1 Report or Done (typ) for group from src.
// Reports go to the group, Done messages to ff02::2 (RFC 2710 section 5).
func AppendV1(b []byte, typ uint8, src, group netip.Addr) []byte {
	dst := group
	if typ == TypeV1Done {
		dst = allRouters
	}
	return appendPacket(b, src, dst, func(b []byte) []byte {
		b = append(b, typ, 0, 0, 0, 0, 0, 0, 0)
		return append(b, group.AsSlice()...)
	})
}

// ReportRecord describes one record for AppendV2Report.
type ReportRecord struct {
	Type    RecordType
	Group   netip.Addr
	Sources []netip.Addr
}

// AppendV2Report appends an MLDv2 Report from src to ff02::16 with records.
func AppendV2Report(b []byte, src netip.Addr, records []ReportRecord) []byte {
	return appendPacket(b, src, allRouters2, func(b []byte) []byte {
		b = append(b, TypeV2Report, 0, 0, 0, 0, 0)
		b = binary.BigEndian.AppendUint16(b, uint16(len(records)))
		for _, r := range records {
			b = append(b, byte(r.Type), 0)
			b = binary.BigEndian.AppendUint16(b, uint16(len(r.Sources)))
			b = append(b, r.Group.AsSlice()...)
			for _, s := range r.Sources {
				b = append(b, s.AsSlice()...)
			}
		}
		return b
	})
}
