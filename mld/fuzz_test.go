package mld

import (
	"net/netip"
	"testing"
)

// FuzzDecode feeds arbitrary packets to Decode: it must never panic, and
// whatever it accepts as a report, Done or MLDv2 Query re-encodes to a
// packet that decodes the same (but for the destination, which the encoder
// picks by message type).
func FuzzDecode(f *testing.F) {
	for _, s := range []string{kernelJoinASM, kernelJoinSSM, kernelExclude, kernelCurrent, kernelLeave, kernelBlock, kernelV1Join, kernelV1Done, kernelRS} {
		f.Add(mustHex(f, s))
	}
	f.Add(AppendQuery(nil, kernelSource, netip.Addr{}, nil, 10000, 2, 125))
	f.Add(AppendQuery(nil, kernelSource, g2, []netip.Addr{s1, s2}, 250, 2|SuppressFlag, 125))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		var m Message
		if err := Decode(pkt, &m); err != nil || (m.Type == TypeQuery && !m.V2) {
			return
		}
		m.Destination = netip.Addr{}
		want := summary(&m)
		var again Message
		if err := Decode(reencode(&m), &again); err != nil {
			t.Fatalf("re-encoded %s does not decode: %v", want, err)
		}
		again.Destination = netip.Addr{}
		if got := summary(&again); got != want {
			t.Fatalf("round trip\n got %s\nwant %s", got, want)
		}
	})
}
