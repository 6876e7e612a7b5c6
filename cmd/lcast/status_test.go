package main

import (
	"strings"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/control"
)

// lcast status prints aligned tables: peers trusted as relays, and those
// that only say they relay, marked; handshake ages (lapsed sessions
// marked), traffic in binary units, drops per peer and by reason, and at
// most three groups per peer.
func TestPrintStatus(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	recent, old := now.Add(-1500*time.Millisecond), now.Add(-200*time.Second)
	groups := func(names ...string) []control.Group {
		var out []control.Group
		for _, n := range names {
			out = append(out, control.Group{Group: n, Mode: "exclude", Sources: []string{}})
		}
		return out
	}
	st := &control.Status{
		Interface: "lc0", Address: "fd6c:6361:7374:a6e9::1", PublicKey: "pubA=", ListenPort: 51840,
		LocalGroups: append(groups("ff1e::1"), control.Group{Group: "ff3e::1234", Mode: "include", Sources: []string{"fd6c::1", "fd6c::2"}}),
		Peers: []control.PeerStatus{
			{PublicKey: "pubB=", Endpoint: "[2001:db8:2::2]:51840", Connected: true, Path: "direct", LastHandshake: &recent, LastRx: &recent,
				RxPackets: 3, RxBytes: 271, TxPackets: 123456, TxBytes: 150 << 20, Groups: groups("ff1e::1", "ff1e::2", "ff1e::3", "ff1e::4", "ff1e::5"),
				Drops: map[string]uint64{"no_listener": 2, "peer_queue_full": 5}},
			{PublicKey: "pubC=", Endpoint: "[2001:db8:3::2]:51840", Relay: true, Path: "direct", LastHandshake: &old, RxBytes: 1536, Drops: map[string]uint64{}},
			{PublicKey: "pubD=", SaysRelay: true, Path: "direct", Groups: []control.Group{}},
			{PublicKey: "pubE=", Endpoint: "[2001:db8:5::2]:51840", Path: "relayed", Learnt: "introduced", IntroducedBy: []string{"pubC="}},
		},
		Forwarding: []control.Forward{
			{Group: "ff1e::1", To: []control.ForwardTo{
				{PublicKey: "pubB=", Mode: "exclude", Sources: []string{}, Reason: "listeners on the peer"},
				{PublicKey: "pubC=", Mode: "include", Sources: []string{"fd6c::1"}, Hops: 2, Reason: "listeners 2 relay(s) beyond the peer"}}},
			{Group: "ff1e::2", To: []control.ForwardTo{{PublicKey: "pubB=", Mode: "exclude", Sources: []string{}, Reason: "listeners on the peer"}}},
		},
		Drops: map[string]uint64{"no_listener": 2, "peer_queue_full": 5, "no_subscriber": 9, "scope": 0},
	}
	var b strings.Builder
	printStatus(&b, st, now)
	want := `interface:    lc0
address:      fd6c:6361:7374:a6e9::1
public key:   pubA=
listen port:  51840
relay:        no

local groups: 2
  GROUP       MODE     SOURCES
  ff1e::1     exclude  -
  ff3e::1234  include  fd6c::1,fd6c::2

peers: 4
  PUBLIC KEY                       ENDPOINT               CONNECTED  PATH     LAST RX  HANDSHAKE  RX               TX                      DROPPED  GROUPS
  pubB=                            [2001:db8:2::2]:51840  yes        direct   2s ago   2s ago     3 pkts, 271 B    123456 pkts, 150.0 MiB  7        ff1e::1,ff1e::2,ff1e::3,+2 more
  pubC= (relay)                    [2001:db8:3::2]:51840  no         direct   never    3m20s ago  0 pkts, 1.5 KiB  0 pkts, 0 B             0        -
  pubD= (says relay, not trusted)  -                      no         direct   never    never      0 pkts, 0 B      0 pkts, 0 B             0        -
  pubE= (introduced)               [2001:db8:5::2]:51840  no         relayed  never    never      0 pkts, 0 B      0 pkts, 0 B             0        -

forwarding: 2 groups
  GROUP    TO PEER  MODE     SOURCES  WHY
  ff1e::1  pubB=    exclude  -        listeners on the peer
           pubC=    include  fd6c::1  listeners 2 relay(s) beyond the peer
  ff1e::2  pubB=    exclude  -        listeners on the peer

dropped: 16
  REASON           PACKETS
  no_listener      2
  no_subscriber    9
  peer_queue_full  5
`
	if got := b.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

// A gateway's status adds a section per LAN (its prefixes, its querier,
// marked when it is this node, its groups and the count of its packets
// from foreign sources) and LANs as destinations in the forwarding table,
// named "lan" and their interface.
func TestPrintStatusGateway(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	recent := now.Add(-1500 * time.Millisecond)
	anySource := control.Group{Group: "ff1e::1", Mode: "exclude", Sources: []string{}}
	ssm := control.Group{Group: "ff3e::1", Mode: "include", Sources: []string{"2001:db8:2::5", "2001:db8:9::1"}}
	st := &control.Status{
		Interface: "lc0", Address: "fd6c:6361:7374:a6e9::1", PublicKey: "pubA=", ListenPort: 51840,
		LocalGroups: []control.Group{},
		Peers: []control.PeerStatus{
			{PublicKey: "pubB=", Endpoint: "[2001:db8:2::2]:51840", Connected: true, Path: "direct", LastHandshake: &recent, LastRx: &recent,
				RxPackets: 10, RxBytes: 1000, TxPackets: 4, TxBytes: 2048, Groups: []control.Group{anySource}, Drops: map[string]uint64{}},
		},
		LANs: []control.LANStatus{
			{Interface: "lan1", Querier: "fe80::1", IsQuerier: true, Prefixes: []string{"2001:db8:1::/64", "fd00:1::/64"},
				Groups: []control.Group{anySource, ssm}},
			{Interface: "lan2", Querier: "fe80::2", Prefixes: []string{}, Groups: []control.Group{}, ForeignSources: 12},
			{Interface: "lan3", Prefixes: []string{}, Groups: []control.Group{}},
		},
		Forwarding: []control.Forward{
			{Group: "ff1e::1", To: []control.ForwardTo{
				{PublicKey: "pubB=", Mode: "exclude", Sources: []string{}, Reason: "listeners on the peer"},
				{Interface: "lan1", Mode: "exclude", Sources: []string{}, Reason: "listeners on the LAN"}}},
			{Group: "ff3e::1", To: []control.ForwardTo{
				{Interface: "lan1", Mode: "include", Sources: ssm.Sources, Reason: "listeners on the LAN"}}},
		},
		Drops: map[string]uint64{"no_listener": 0},
	}
	var b strings.Builder
	printStatus(&b, st, now)
	want := `interface:    lc0
address:      fd6c:6361:7374:a6e9::1
public key:   pubA=
listen port:  51840
relay:        no

local groups: 0

peers: 1
  PUBLIC KEY  ENDPOINT               CONNECTED  PATH    LAST RX  HANDSHAKE  RX               TX               DROPPED  GROUPS
  pubB=       [2001:db8:2::2]:51840  yes        direct  2s ago   2s ago     10 pkts, 1000 B  4 pkts, 2.0 KiB  0        ff1e::1

lan lan1: prefixes 2001:db8:1::/64,fd00:1::/64, querier fe80::1 (this node), 2 groups, 0 packets from foreign sources
  GROUP    MODE     SOURCES
  ff1e::1  exclude  -
  ff3e::1  include  2001:db8:2::5,2001:db8:9::1

lan lan2: prefixes -, querier fe80::2, 0 groups, 12 packets from foreign sources

lan lan3: prefixes -, querier -, 0 groups, 0 packets from foreign sources

forwarding: 2 groups
  GROUP    TO PEER   MODE     SOURCES                      WHY
  ff1e::1  pubB=     exclude  -                            listeners on the peer
           lan lan1  exclude  -                            listeners on the LAN
  ff3e::1  lan lan1  include  2001:db8:2::5,2001:db8:9::1  listeners on the LAN
`
	if got := b.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestBinaryBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 30: "5.0 GiB", 1<<64 - 1: "16384.0 PiB"} {
		if got := binaryBytes(n); got != want {
			t.Errorf("binaryBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
