package mld

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// Packets the Linux kernel (6.18) wrote into a TUN in a test namespace, as
// programs joined and left groups on it (captured with tun.Open).
const (
	kernelJoinASM = "6000000000240001fe80000000000000de40933f7e48563dff0200000000000000000000000000163a000502000001008f0017b50000000104000000ff1e0000000000000000000000001234"
	kernelJoinSSM = "6000000000480001fe80000000000000de40933f7e48563dff0200000000000000000000000000163a000502000001008f0065940000000205000001ff3e000000000000000000008000000120010db800000000000000000000000104000000ff1e0000000000000000000000001234"
	kernelExclude = "6000000000340001fe80000000000000de40933f7e48563dff0200000000000000000000000000163a000502000001008f00a5a50000000104000001ff1e000000000000000000000000567820010db8000000000000000000000001"
	kernelCurrent = "60000000007c0001fe80000000000000de40933f7e48563dff0200000000000000000000000000163a000502000001008f00b8500000000302000001ff1e000000000000000000000000567820010db800000000000000000000000101000002ff3e000000000000000000008000000120010db800000000000000000000000120010db800000000000000000000000202000000ff1e0000000000000000000000001234"
	kernelLeave   = "6000000000240001fe80000000000000de40933f7e48563dff0200000000000000000000000000163a000502000001008f0018b50000000103000000ff1e0000000000000000000000001234"
	kernelBlock   = "6000000000340001fe80000000000000de40933f7e48563dff0200000000000000000000000000163a000502000001008f0079fc0000000106000001ff3e000000000000000000008000000120010db8000000000000000000000001"
	kernelV1Join  = "6000000000200001fe80000000000000de40933f7e48563dff1e00000000000000000000000012343a000502000001008300158000000000ff1e0000000000000000000000001234"
	kernelV1Done  = "6000000000200001fe80000000000000de40933f7e48563dff0200000000000000000000000000023a00050200000100840026ce00000000ff1e0000000000000000000000001234"
	// A Router Solicitation (no Hop-by-Hop header): not MLD.
	kernelRS = "6000000000083afffe80000000000000de40933f7e48563dff0200000000000000000000000000028500373100000000"
)

var kernelSource = netip.MustParseAddr("fe80::de40:933f:7e48:563d")

// summary renders a decoded message compactly for comparison.
func summary(m *Message) string {
	var b strings.Builder
	fmt.Fprintf(&b, "type=%d src=%s dst=%s", m.Type, m.Source, m.Destination)
	if m.Type != TypeV2Report {
		fmt.Fprintf(&b, " group=%s", m.Group)
	}
	if m.Type == TypeQuery {
		fmt.Fprintf(&b, " mrc=%d v2=%v s=%v qrv=%d qqic=%d", m.MaxResponseCode, m.V2, m.Suppress, m.QRV, m.QQIC)
		for i := range m.NumQuerySources() {
			fmt.Fprintf(&b, " %s", m.QuerySource(i))
		}
	}
	for _, r := range m.Records {
		fmt.Fprintf(&b, " %s(%s", r.Type, r.Group)
		for i := range r.NumSources() {
			fmt.Fprintf(&b, " %s", r.Source(i))
		}
		b.WriteString(")")
	}
	return b.String()
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeKernelReports(t *testing.T) {
	tests := []struct {
		name, pkt, want string
	}{
		{"any-source join", kernelJoinASM, "type=143 src=fe80::de40:933f:7e48:563d dst=ff02::16 TO_EX(ff1e::1234)"},
		{"source-specific join", kernelJoinSSM, "type=143 src=fe80::de40:933f:7e48:563d dst=ff02::16 ALLOW(ff3e::8000:1 2001:db8::1) TO_EX(ff1e::1234)"},
		{"exclude a source", kernelExclude, "type=143 src=fe80::de40:933f:7e48:563d dst=ff02::16 TO_EX(ff1e::5678 2001:db8::1)"},
		{"current state after a query", kernelCurrent, "type=143 src=fe80::de40:933f:7e48:563d dst=ff02::16 IS_EX(ff1e::5678 2001:db8::1) IS_IN(ff3e::8000:1 2001:db8::1 2001:db8::2) IS_EX(ff1e::1234)"},
		{"leave", kernelLeave, "type=143 src=fe80::de40:933f:7e48:563d dst=ff02::16 TO_IN(ff1e::1234)"},
		{"block a source", kernelBlock, "type=143 src=fe80::de40:933f:7e48:563d dst=ff02::16 BLOCK(ff3e::8000:1 2001:db8::1)"},
		{"MLDv1 report", kernelV1Join, "type=131 src=fe80::de40:933f:7e48:563d dst=ff1e::1234 group=ff1e::1234"},
		{"MLDv1 done", kernelV1Done, "type=132 src=fe80::de40:933f:7e48:563d dst=ff02::2 group=ff1e::1234"},
	}
	var m Message
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := Decode(mustHex(t, tt.pkt), &m); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if got := summary(&m); got != tt.want {
				t.Fatalf("decoded\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

// Re-encoding a decoded kernel message gives back the kernel's exact bytes.
func TestRoundTripKernelBytes(t *testing.T) {
	for _, pkt := range []string{kernelJoinASM, kernelJoinSSM, kernelExclude, kernelCurrent, kernelLeave, kernelBlock, kernelV1Join, kernelV1Done} {
		orig := mustHex(t, pkt)
		var m Message
		if err := Decode(orig, &m); err != nil {
			t.Fatal(err)
		}
		got := reencode(&m)
		if string(got) != string(orig) {
			t.Errorf("re-encoded %s\n got %x\nwant %x", summary(&m), got, orig)
		}
	}
}

// reencode encodes a decoded report, Done or MLDv2 Query again.
func reencode(m *Message) []byte {
	if m.Type == TypeQuery {
		var sources []netip.Addr
		for i := range m.NumQuerySources() {
			sources = append(sources, m.QuerySource(i))
		}
		flags := m.QRV
		if m.Suppress {
			flags |= SuppressFlag
		}
		return AppendQuery(nil, m.Source, m.Group, sources, m.MaxResponseCode, flags, m.QQIC)
	}
	if m.Type != TypeV2Report {
		return AppendV1(nil, m.Type, m.Source, m.Group)
	}
	recs := make([]ReportRecord, len(m.Records))
	for i, r := range m.Records {
		recs[i] = ReportRecord{Type: r.Type, Group: r.Group}
		for j := range r.NumSources() {
			recs[i].Sources = append(recs[i].Sources, r.Source(j))
		}
	}
	return AppendV2Report(nil, m.Source, recs)
}

func TestQueryRoundTrip(t *testing.T) {
	sources := []netip.Addr{netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")}
	tests := []struct {
		name    string
		group   netip.Addr
		sources []netip.Addr
		dst     netip.Addr
	}{
		{"general", netip.Addr{}, nil, AllNodes},
		{"address specific", netip.MustParseAddr("ff1e::1"), nil, netip.MustParseAddr("ff1e::1")},
		{"address and source specific", netip.MustParseAddr("ff3e::1"), sources, netip.MustParseAddr("ff3e::1")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkt := AppendQuery(nil, kernelSource, tt.group, tt.sources, 1000, 2, 125)
			var m Message
			if err := Decode(pkt, &m); err != nil {
				t.Fatal(err)
			}
			wantGroup := tt.group
			if !wantGroup.IsValid() {
				wantGroup = netip.IPv6Unspecified()
			}
			var gotSources []netip.Addr
			for i := range m.NumQuerySources() {
				gotSources = append(gotSources, m.QuerySource(i))
			}
			if m.Type != TypeQuery || !m.V2 || m.Group != wantGroup || m.Destination != tt.dst ||
				m.MaxResponseCode != 1000 || !slices.Equal(gotSources, tt.sources) {
				t.Fatalf("decoded %+v, sources %v", m, gotSources)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	join := mustHex(t, kernelJoinSSM)
	corrupt := func(f func(b []byte) []byte) []byte { return f(slices.Clone(join)) }
	tests := []struct {
		name string
		pkt  []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"short IPv6 header", join[:39], ErrTruncated},
		{"payload length beyond packet", join[:len(join)-1], ErrTruncated},
		{"IPv4", corrupt(func(b []byte) []byte { b[0] = 0x45; return b }), ErrNotMLD},
		{"router solicitation", mustHex(t, kernelRS), ErrNotMLD},
		{"UDP", corrupt(func(b []byte) []byte { b[40] = 17; return b }), ErrNotMLD},
		{"fragment", corrupt(func(b []byte) []byte { b[40] = 44; return b }), ErrNotMLD},
		{"bad checksum", corrupt(func(b []byte) []byte { b[50] ^= 1; return b }), ErrChecksum},
		{"hop-by-hop length beyond packet", corrupt(func(b []byte) []byte { b[41] = 200; return b }), ErrTruncated},
		{"record count beyond packet", fixChecksum(corrupt(func(b []byte) []byte { b[55] = 9; return b })), ErrTruncated},
		{"source count beyond packet", fixChecksum(corrupt(func(b []byte) []byte { b[59] = 9; return b })), ErrTruncated},
		{"unknown record type", fixChecksum(corrupt(func(b []byte) []byte { b[56] = 7; return b })), ErrMalformed},
		{"unicast group", fixChecksum(corrupt(func(b []byte) []byte { b[60] = 0x20; return b })), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m Message
			if err := Decode(tt.pkt, &m); !errors.Is(err, tt.want) {
				t.Fatalf("Decode error = %v, want %v", err, tt.want)
			}
		})
	}
}

// fixChecksum recomputes the ICMPv6 checksum of a packet with an 8-byte
// Hop-by-Hop header, so a test can reach the checks behind it.
func fixChecksum(b []byte) []byte {
	icmp := b[48:]
	icmp[2], icmp[3] = 0, 0
	sum := checksum([16]byte(b[8:24]), [16]byte(b[24:40]), icmp)
	icmp[2], icmp[3] = byte(sum>>8), byte(sum)
	return b
}

func TestDecodeAllocatesNothing(t *testing.T) {
	pkt := mustHex(t, kernelCurrent)
	var m Message
	allocs := testing.AllocsPerRun(100, func() {
		if err := Decode(pkt, &m); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Decode allocates %v times per report, want 0", allocs)
	}
}

func BenchmarkDecodeOneRecord(b *testing.B) {
	pkt := mustHex(b, kernelJoinASM)
	var m Message
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		if err := Decode(pkt, &m); err != nil {
			b.Fatal(err)
		}
	}
}

func TestFloatCode(t *testing.T) {
	decode := func(code uint32, mantBits uint) uint32 {
		limit := uint32(1) << (mantBits + 3)
		if code < limit {
			return code
		}
		exp := (code >> mantBits) & 7
		mant := code & (1<<mantBits - 1)
		return (mant | 1<<mantBits) << (exp + 3)
	}
	for _, mantBits := range []uint{4, 12} {
		for _, v := range []uint32{0, 1, 125, 127, 128, 1000, 32767, 32768, 40000, 1 << 20, 8387584} {
			code := floatCode(v, mantBits)
			if code >= 1<<(mantBits+4) {
				t.Fatalf("floatCode(%d, %d) = %#x does not fit", v, mantBits, code)
			}
			got := decode(code, mantBits)
			max := decode(1<<(mantBits+4)-1, mantBits)
			if got > v || (v <= max && got < v-v/(1<<mantBits)) {
				t.Errorf("floatCode(%d, %d) = %#x decodes to %d", v, mantBits, code, got)
			}
		}
	}
}

// The fields of a Query that routers read: the S flag, QRV, QQIC and the
// Maximum Response Delay, exact and floating-point encoded, in MLDv2 and
// MLDv1.
func TestQueryFields(t *testing.T) {
	tests := []struct {
		name          string
		pkt           []byte
		s             bool
		qrv           uint8
		delay, qi     time.Duration
		wantV2        bool
		wantMalformed bool
	}{
		{"general", AppendQuery(nil, kernelSource, netip.Addr{}, nil, 10000, 2, 125), false, 2, 10 * time.Second, 125 * time.Second, true, false},
		{"S flag", AppendQuery(nil, kernelSource, g1, nil, 250, 7|SuppressFlag, 0), true, 7, 250 * time.Millisecond, 0, true, false},
		{"floating-point codes", AppendQuery(nil, kernelSource, g1, nil, uint16(floatCode(40000, 12)), 1, uint8(floatCode(300, 4))),
			false, 1, time.Duration(codeValue(floatCode(40000, 12), 12)) * time.Millisecond, 288 * time.Second, true, false},
		{"MLDv1", mldV1Query(t, g1, 1500), false, 0, 1500 * time.Millisecond, 0, false, false},
		{"unicast address", AppendQuery(nil, kernelSource, s1, nil, 250, 2, 125), false, 0, 0, 0, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m Message
			err := Decode(tt.pkt, &m)
			if tt.wantMalformed {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("Decode error = %v, want %v", err, ErrMalformed)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.V2 != tt.wantV2 || m.Suppress != tt.s || m.QRV != tt.qrv || m.MaxResponseDelay() != tt.delay || m.QueryInterval() != tt.qi {
				t.Fatalf("V2 %v S %v QRV %d delay %v QQI %v; want %v %v %d %v %v",
					m.V2, m.Suppress, m.QRV, m.MaxResponseDelay(), m.QueryInterval(), tt.wantV2, tt.s, tt.qrv, tt.delay, tt.qi)
			}
		})
	}
}

// mldV1Query builds an MLDv1 Multicast Address Specific Query (24 bytes).
func mldV1Query(t *testing.T, group netip.Addr, maxDelayMs uint16) []byte {
	t.Helper()
	pkt := AppendV1(nil, TypeV1Report, kernelSource, group)
	pkt[48] = TypeQuery
	pkt[52], pkt[53] = byte(maxDelayMs>>8), byte(maxDelayMs)
	return fixChecksum(pkt)
}

// codeValue decodes what floatCode encodes, to within floatCode's rounding
// down and its cap at the largest code.
func TestCodeValue(t *testing.T) {
	for _, mantBits := range []uint{4, 12} {
		for _, v := range []uint32{0, 1, 127, 128, 300, 32767, 32768, 40000, 1 << 20} {
			got := codeValue(floatCode(v, mantBits), mantBits)
			largest := codeValue(1<<(mantBits+4)-1, mantBits)
			if got > v || got < min(v, largest)-min(v, largest)>>mantBits {
				t.Errorf("codeValue(floatCode(%d, %d)) = %d", v, mantBits, got)
			}
		}
	}
}
