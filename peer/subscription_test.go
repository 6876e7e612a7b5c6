package peer

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"

	"github.com/librecast/lcast/mld"
)

var (
	src1 = netip.MustParseAddr("2001:db8::1")
	src2 = netip.MustParseAddr("fd6c:6361:7374::1")
)

func TestMessageRoundTrip(t *testing.T) {
	for name, m := range map[string]Message{
		"hello": {Epoch: 7, PeerEpoch: 9, Seq: 3, Ack: 4, Stamp: 5, Echo: 6, Ping: true},
		"want":  {Want: true, Epoch: 1},
		"relay": {Relay: true, Pong: true, Epoch: 1, Digest: Digest{1, 2, 3}, DigestOK: true},
		"empty": {Update: true, Sync: true, Sweep: true, End: true, Epoch: 5, Seq: 2},
		"update": {Update: true, Epoch: 5, Seq: 9, Ack: 1, DigestOK: true, Digest: Digest{15: 9}, Records: []Record{
			{Group: netip.MustParseAddr("ff1e::1"), Mode: mld.Exclude, Hops: 3, Sources: []netip.Addr{}},
			{Group: netip.MustParseAddr("ff3e::8000:1"), Mode: mld.Include, Total: 120, First: 60, Sources: []netip.Addr{src1, src2}},
			{Group: netip.MustParseAddr("ff1e::2"), Remove: true},
		}},
	} {
		t.Run(name, func(t *testing.T) {
			b := AppendMessage(nil, &m)
			got, err := ParseMessage(b)
			if err != nil {
				t.Fatal(err)
			}
			if m.Records == nil {
				m.Records = []Record{}
			}
			for i := range m.Records {
				if m.Records[i].Sources == nil && !m.Records[i].Remove {
					m.Records[i].Sources = []netip.Addr{}
				}
			}
			if !reflect.DeepEqual(*got, m) {
				t.Fatalf("round trip\n got %+v\nwant %+v", *got, m)
			}
		})
	}
}

func TestParseMessageRejects(t *testing.T) {
	valid := AppendMessage(nil, &Message{Update: true, Epoch: 5, Seq: 2, Records: []Record{
		{Group: netip.MustParseAddr("ff1e::1"), Mode: mld.Include, Total: 1, Sources: []netip.Addr{src1}}}})
	mod := func(f func([]byte) []byte) []byte { return f(append([]byte(nil), valid...)) }
	rec := msgHeaderLen
	for name, b := range map[string][]byte{
		"short":            valid[:10],
		"bad magic":        mod(func(b []byte) []byte { b[0] = 'X'; return b }),
		"old version":      mod(func(b []byte) []byte { b[3] = 3; return b }),
		"zero epoch":       mod(func(b []byte) []byte { clear(b[8:16]); return b }),
		"zero seq":         mod(func(b []byte) []byte { clear(b[24:32]); return b }),
		"unknown flag":     mod(func(b []byte) []byte { b[5] |= 2; return b }),
		"hello w/records":  mod(func(b []byte) []byte { b[4] &^= flagUpdate; return b }),
		"hello w/sweep":    AppendMessage(nil, &Message{Epoch: 1, Sweep: true}),
		"truncated":        valid[:len(valid)-1],
		"trailing":         append(append([]byte(nil), valid...), 0),
		"count too high":   mod(func(b []byte) []byte { b[7] = 2; return b }),
		"unicast group":    mod(func(b []byte) []byte { b[rec] = 0x20; return b }),
		"bad op":           mod(func(b []byte) []byte { b[rec+16] = 2; return b }),
		"bad mode":         mod(func(b []byte) []byte { b[rec+17] = 2; return b }),
		"reserved":         mod(func(b []byte) []byte { b[rec+19] = 1; return b }),
		"chunk past total": mod(func(b []byte) []byte { b[rec+23] = 1; return b }),
		"sources missing":  mod(func(b []byte) []byte { b[rec+25] = 2; b[rec+21] = 2; return b }),
		"remove w/sources": mod(func(b []byte) []byte { b[rec+16] = opRemove; return b }),
		"longer than sent": append(AppendMessage(nil, &Message{Epoch: 1}), make([]byte, maxMsgPayload)...),
	} {
		if _, err := ParseMessage(b); !errors.Is(err, ErrBadMessage) {
			t.Errorf("%s: error %v, want ErrBadMessage", name, err)
		}
	}
}

// Any state is carried, whatever its shape: a group of 1,000 sources is
// cut into chunks, no message is longer than maxMsgPayload, and the
// receiver rebuilds the state exactly, with the sender's digest.
func TestFullStateFitsMessages(t *testing.T) {
	var groups []mld.GroupState
	for i := range 500 {
		g := mld.GroupState{Group: numbered(groupsBase, i), Mode: mld.Include, Sources: []netip.Addr{}}
		n := i % 5
		if i == 250 {
			n = 1000
		}
		for j := range n {
			g.Sources = append(g.Sources, numbered(sourcesBase, j))
		}
		groups = append(groups, g)
	}
	msgs := FullState(7, 1, groups)
	var in inState
	var b budget
	var c counts
	var last *Message
	for _, raw := range msgs {
		if len(raw) > maxMsgPayload {
			t.Fatalf("message of %d bytes", len(raw))
		}
		m, err := ParseMessage(raw)
		if err != nil {
			t.Fatal(err)
		}
		if in.take(m, &b, t0, &c) {
			t.Fatalf("update %d asks for a full state", m.Seq)
		}
		last = m
	}
	if got := in.snapshot(); !reflect.DeepEqual(got, groups) {
		t.Fatalf("rebuilt %d groups, want %d", len(got), len(groups))
	}
	if !last.Sweep || !last.End || !last.DigestOK || last.Digest != in.digest || in.digest != digestOf(groups) {
		t.Fatalf("last update %+v; receiver's digest %x, state's %x", last, in.digest, digestOf(groups))
	}
	if c != (counts{}) || b.groups != 500 {
		t.Fatalf("counted %+v, held %+v", c, b)
	}
}

// FuzzParseMessage: no datagram makes ParseMessage panic, and what it
// accepts encodes back to the same bytes.
func FuzzParseMessage(f *testing.F) {
	f.Add(AppendMessage(nil, &Message{Epoch: 7, PeerEpoch: 9, Seq: 3, Ack: 2, DigestOK: true}))
	for _, m := range FullState(5, 2, []mld.GroupState{{Group: netip.MustParseAddr("ff1e::1"), Mode: mld.Exclude, Sources: []netip.Addr{src1}}}) {
		f.Add(m)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMessage(b)
		if err != nil {
			return
		}
		if again := AppendMessage(nil, m); string(again) != string(b) {
			t.Fatalf("re-encoded %x\nfrom %x", again, b)
		}
		var in inState
		var bud budget
		var c counts
		in.take(m, &bud, t0, &c) // whatever it holds, it does not panic
	})
}
