package peer

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"testing"

	"github.com/librecast/lcast/mld"
)

func TestMessageRoundTrip(t *testing.T) {
	groups := []mld.GroupState{
		{Group: netip.MustParseAddr("ff1e::1"), Mode: mld.Exclude, Sources: []netip.Addr{}, Hops: 3},
		{Group: netip.MustParseAddr("ff3e::8000:1"), Mode: mld.Include, Sources: []netip.Addr{netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("fd6c:6361:7374::1")}},
	}
	for _, m := range []Message{
		{Epoch: 7, PeerEpoch: 9, Generation: 3, PeerGeneration: 4},
		{Want: true, Epoch: 1},
		{Relay: true, Epoch: 1},
		{Epoch: 5, Generation: 2, Part: 1, Parts: 2, Groups: groups},
		{Epoch: 5, Generation: 2, Part: 0, Parts: 1, Groups: []mld.GroupState{}},
	} {
		got, err := ParseMessage(AppendMessage(nil, &m))
		if err != nil {
			t.Fatalf("%+v: %v", m, err)
		}
		if m.Groups == nil {
			m.Groups = []mld.GroupState{}
		}
		if !reflect.DeepEqual(*got, m) {
			t.Fatalf("round trip\n got %+v\nwant %+v", *got, m)
		}
	}
}

func TestParseMessageRejects(t *testing.T) {
	valid := AppendMessage(nil, &Message{Epoch: 5, Generation: 2, Parts: 1, Groups: []mld.GroupState{{Group: netip.MustParseAddr("ff1e::1"), Mode: mld.Include, Sources: []netip.Addr{netip.MustParseAddr("2001:db8::1")}}}})
	mod := func(f func([]byte) []byte) []byte { return f(append([]byte(nil), valid...)) }
	for name, b := range map[string][]byte{
		"short":          valid[:10],
		"bad magic":      mod(func(b []byte) []byte { b[0] = 'X'; return b }),
		"bad version":    mod(func(b []byte) []byte { b[3] = 9; return b }),
		"zero epoch":     mod(func(b []byte) []byte { clear(b[10:18]); return b }),
		"part >= parts":  mod(func(b []byte) []byte { b[7] = 1; return b }),
		"hello w/groups": mod(func(b []byte) []byte { b[9] = 0; return b }),
		"truncated":      valid[:len(valid)-1],
		"trailing":       append(append([]byte(nil), valid...), 0),
		"unicast group":  mod(func(b []byte) []byte { b[msgHeaderLen] = 0x20; return b }),
		"bad mode":       mod(func(b []byte) []byte { b[msgHeaderLen+16] = 2; return b }),
		"many sources":   mod(func(b []byte) []byte { b[msgHeaderLen+18] = 0xff; return b }),
	} {
		if _, err := ParseMessage(b); !errors.Is(err, ErrBadMessage) {
			t.Errorf("%s: error %v, want ErrBadMessage", name, err)
		}
	}
}

func TestSplitGroupsFitsMessages(t *testing.T) {
	var groups []mld.GroupState
	for i := range 500 {
		g := mld.GroupState{Group: netip.MustParseAddr(fmt.Sprintf("ff1e::%x", i)), Mode: mld.Include}
		for j := range i % 5 {
			g.Sources = append(g.Sources, netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", j)))
		}
		groups = append(groups, g)
	}
	parts := SplitGroups(groups)
	total := 0
	for _, p := range parts {
		if n := len(AppendMessage(nil, &Message{Epoch: 1, Parts: 1, Groups: p})); n > maxMsgPayload {
			t.Fatalf("part of %d bytes", n)
		}
		total += len(p)
	}
	if total != 500 || len(SplitGroups(nil)) != 1 {
		t.Fatalf("split %d groups into %d parts; nil into %d", total, len(parts), len(SplitGroups(nil)))
	}
}

// FuzzParseMessage: no datagram makes ParseMessage panic, and what it
// accepts encodes back to the same bytes.
func FuzzParseMessage(f *testing.F) {
	f.Add(AppendMessage(nil, &Message{Epoch: 7, PeerEpoch: 9, Generation: 3}))
	f.Add(AppendMessage(nil, &Message{Epoch: 5, Generation: 2, Parts: 1, Groups: []mld.GroupState{{Group: netip.MustParseAddr("ff1e::1"), Mode: mld.Exclude, Sources: []netip.Addr{netip.MustParseAddr("2001:db8::1")}}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMessage(b)
		if err != nil {
			return
		}
		if again := AppendMessage(nil, m); string(again) != string(b) {
			// Only the reserved byte and unknown flag bits may differ.
			if len(again) != len(b) || string(again[6:]) != string(b[6:]) {
				t.Fatalf("re-encoded %x\nfrom %x", again, b)
			}
		}
	})
}
