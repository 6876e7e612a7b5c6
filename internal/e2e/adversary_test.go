package e2e

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/control"
	"github.com/librecast/lcast/internal/ip6"
	"github.com/librecast/lcast/internal/netlab"
	"github.com/librecast/lcast/mld"
	"github.com/librecast/lcast/peer"
	"github.com/librecast/lcast/router"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// adversaryResult is what an adversary helper prints, as JSON.
type adversaryResult struct {
	// States counts the full states the target sent it (first parts): a
	// peer that never acknowledges must cost the target little.
	States int `json:"states"`
	// Sent counts the hostile packets it sent.
	Sent int `json:"sent"`
}

// adversaryHelper: "adversary -key K -peer P -endpoint A:PORT -listen PORT
// -victim ADDR -group G -attacks a,b... -for D": a peer with a valid key
// the target lists, speaking the transport through wireguard-go's device
// as lcast does, that sends crafted packets, built with lcast's own
// message and control formats, instead of a router's. The attacks:
//
//	forge      wrapped multicast to G with the victim's address as inner
//	           source and sequence numbers the victim also sends
//	relay      the same with a new epoch, and with sequence numbers near
//	           2^64 in the victim's epoch unknown to it: what a trusted
//	           relay could send to silence the victim's direct packets
//	unicast    unicast from its overlay address to a destination that is
//	           not the target's (an underlay address)
//	multicast  multicast to G, not wrapped
//	underlay   a state of the group underlayGroup, as a subscription
//	           message in a plain UDP datagram from the underlay to the
//	           target's overlay address (the port lcast's messages once
//	           used), with the victim's address as source
//	states     twenty claims of a new start, then a subscription state of
//	           100,000 sources in one group (65,535 of them: what a record
//	           announces) and one of the same group
//	           10,000 times; it never acknowledges the target's state and
//	           asks for it in every message
//
// Each attack repeats every 20 ms (states: 500 ms), in turn, for D in
// all; it then prints an adversaryResult.
func adversaryHelper(args []string) int {
	fs := flag.NewFlagSet("adversary", flag.ContinueOnError)
	keyArg := fs.String("key", "", "private key")
	peerArg := fs.String("peer", "", "the target's public key")
	endpoint := fs.String("endpoint", "", "the target's underlay address and port")
	listen := fs.Int("listen", listenPort, "UDP port")
	victimArg := fs.String("victim", "", "the overlay address of a node to impersonate")
	groupArg := fs.String("group", "", "the group to send to")
	attacks := fs.String("attacks", "", "comma-separated attacks")
	dur := fs.Duration("for", 5*time.Second, "how long to attack")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	key, err := peer.ParseKey(*keyArg)
	if err != nil {
		return helperFail(err)
	}
	target, err := peer.ParseKey(*peerArg)
	if err != nil {
		return helperFail(err)
	}
	ep, err := netip.ParseAddrPort(*endpoint)
	if err != nil {
		return helperFail(err)
	}
	a := &adversary{
		self: peer.OverlayAddr(key.PublicKey()), target: peer.OverlayAddr(target),
		victim: netip.MustParseAddr(*victimArg), group: netip.MustParseAddr(*groupArg),
		epoch: rand.Uint64() | 1, tun: tuntest.NewChannelTUN(),
	}
	a.router = router.New(router.Config{Self: a.self, Overlay: peer.OverlayPrefix})
	// wireguard-go's device as lcast's transport makes it, but routing
	// every destination to the target (lcast's allows only the peer's
	// addresses): what a modified peer can send.
	dev := device.NewDevice(a.tun.TUN(), conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
	if err := dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\npublic_key=%s\nendpoint=%s\nallowed_ip=::/0\npersistent_keepalive_interval=1\n",
		hex.EncodeToString(key[:]), *listen, hex.EncodeToString(target[:]), ep)); err != nil {
		return helperFail(err)
	}
	if err := dev.Up(); err != nil {
		return helperFail(err)
	}
	states, done := make(chan int), make(chan struct{})
	go func() { states <- a.countStates(done) }()
	fmt.Println("ready")
	end := time.Now().Add(*dur)
	names := strings.Split(*attacks, ",")
	for _, name := range names {
		for until := time.Now().Add(*dur / time.Duration(len(names))); time.Now().Before(until); {
			pause, err := a.attack(name)
			if err != nil {
				dev.Close()
				return helperFail(err)
			}
			time.Sleep(pause)
		}
	}
	time.Sleep(time.Until(end))
	if a.udp != nil {
		a.udp.Close()
	}
	dev.Close()
	close(done)
	return helperJSON(adversaryResult{States: <-states, Sent: a.sent})
}

// underlayGroup is the group of the states the underlay attack sends, and
// oldControlPort the port lcast's subscription messages once used.
var underlayGroup = netip.MustParseAddr("ff1e::16:99")

const oldControlPort = 847

type adversary struct {
	udp                         net.PacketConn // for the underlay attack
	self, target, victim, group netip.Addr
	epoch                       uint64 // of its subscription messages
	gen                         uint64
	seq                         uint64 // of its forged multicast
	tun                         *tuntest.ChannelTUN
	router                      *router.Router // builds control packets
	sent                        int
}

// send hands pkt to the transport, to go to the target.
func (a *adversary) send(pkt []byte) {
	a.tun.Outbound <- pkt
	a.sent++
}

// attack sends one round of the attack name and returns the pause before
// the next.
func (a *adversary) attack(name string) (time.Duration, error) {
	switch name {
	case "forge":
		a.seq++
		a.send(wrapped(a.self, a.target, rand.Uint32(), a.seq, loadDatagram(a.victim, a.group, a.seq)))
	case "relay":
		a.seq++
		a.send(wrapped(a.self, a.target, rand.Uint32(), a.seq, loadDatagram(a.victim, a.group, a.seq)))
		a.send(wrapped(a.self, a.target, rand.Uint32(), ^uint64(0)-1, loadDatagram(a.victim, a.group, ^uint64(0)-1)))
	case "unicast":
		a.send(loadDatagram(a.self, netip.MustParseAddr("2001:db8:ffff::1"), 1))
	case "multicast":
		a.send(loadDatagram(a.self, a.group, 1))
	case "underlay":
		return 20 * time.Millisecond, a.underlay()
	case "states":
		// Twenty claims of a new start, each asking for the target's
		// state; then one group of 100,000 sources, 70 to an entry (one
		// message each), and the same group 10,000 times.
		for range 20 {
			a.epoch++
			a.send(a.router.AppendControl(nil, a.target, peer.AppendMessage(nil, &peer.Message{Want: true, Epoch: a.epoch})))
		}
		many := make([]netip.Addr, 100000)
		for i := range many {
			b := [16]byte{0x20, 0x01, 0x0d, 0xb8}
			binary.BigEndian.PutUint32(b[12:], uint32(i+1))
			many[i] = netip.AddrFrom16(b)
		}
		a.state([]mld.GroupState{{Group: a.group, Mode: mld.Include, Sources: many}})
		same := make([]mld.GroupState, 10000)
		for i := range same {
			same[i] = mld.GroupState{Group: a.group, Mode: mld.Include, Sources: many[i : i+1]}
		}
		a.state(same)
		return 500 * time.Millisecond, nil
	default:
		return 0, fmt.Errorf("unknown attack %q", name)
	}
	return 20 * time.Millisecond, nil
}

// underlay sends a state of underlayGroup, from the victim's address, in
// a UDP datagram through the underlay to the target's overlay address.
func (a *adversary) underlay() error {
	if a.udp == nil {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var err error
			c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1) })
			return err
		}}
		pc, err := lc.ListenPacket(context.Background(), "udp6", netip.AddrPortFrom(a.victim, 0).String())
		if err != nil {
			return err
		}
		a.udp = pc
	}
	a.gen++
	msg := peer.FullState(a.epoch, a.gen, []mld.GroupState{{Group: underlayGroup, Mode: mld.Exclude, Sources: []netip.Addr{}}})[0]
	a.sent++
	_, err := a.udp.WriteTo(msg, net.UDPAddrFromAddrPort(netip.AddrPortFrom(a.target, oldControlPort)))
	return err
}

// state sends groups as a full state (its updates numbered on from the
// last), each message asking for the target's state and acknowledging
// none.
func (a *adversary) state(groups []mld.GroupState) {
	for _, msg := range peer.FullState(a.epoch, a.gen+1, groups) {
		m, err := peer.ParseMessage(msg)
		if err != nil {
			panic(err)
		}
		m.Want = true
		a.gen = m.Seq
		a.send(a.router.AppendControl(nil, a.target, peer.AppendMessage(nil, m)))
	}
}

// countStates reads what the target sends until done, and counts the full
// states (their first updates, flagged sync) among it.
func (a *adversary) countStates(done <-chan struct{}) int {
	n := 0
	for {
		select {
		case <-done:
			return n
		case pkt := <-a.tun.Inbound:
			if len(pkt) < 40 || pkt[6] != router.ProtoControl {
				continue
			}
			if m, err := peer.ParseMessage(pkt[40:]); err == nil && m.Sync {
				n++
			}
		}
	}
}

// loadDatagram returns an IPv6/UDP packet from src to dst:loadPort shaped
// as the load generator's datagram seq (what a sink counts), with a valid
// checksum, so that only lcast stands between it and a program.
func loadDatagram(src, dst netip.Addr, seq uint64) []byte {
	const payload = 64
	b := make([]byte, 48+payload)
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], 8+payload)
	b[6], b[7] = 17, 64
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	binary.BigEndian.PutUint16(b[40:], loadPort)
	binary.BigEndian.PutUint16(b[42:], loadPort)
	binary.BigEndian.PutUint16(b[44:], 8+payload)
	binary.BigEndian.PutUint64(b[48:], seq)
	binary.BigEndian.PutUint64(b[56:], uint64(time.Now().UnixNano()))
	binary.BigEndian.PutUint16(b[46:], ip6.Checksum(s, d, 17, b[40:]))
	return b
}

// wrapped returns inner wrapped as multicast from the node at src to the
// peer at dst, with the originator's epoch and sequence number, in the
// format router.WrapLen documents.
func wrapped(src, dst netip.Addr, epoch uint32, seq uint64, inner []byte) []byte {
	b := make([]byte, router.WrapLen, router.WrapLen+len(inner))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(16+len(inner)))
	b[6], b[7] = 253, router.MaxHops
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	b[40] = 41
	binary.BigEndian.PutUint32(b[44:], epoch)
	binary.BigEndian.PutUint64(b[48:], seq)
	return append(b, inner...)
}

// A peer with a valid key is hostile (docs/design.md, "Source
// authentication"; docs/security.md): while site 1 streams to site 2 at 1000 datagrams/s, two
// adversaries in site 3, peers of site 2 built from lcast's transport,
// attack site 2 for 6 s. One is a plain peer: it forges site 1's source,
// sends unicast to an address not site 2's, sends multicast unwrapped, and
// sends states of 100,000 sources in one group and of one group 10,000
// times, never acknowledging. The other is a relay that site 2's config
// trusts: it forges site 1's packets with new epochs and sequence numbers
// near 2^64, which must not silence site 1's direct stream. Site 1's
// stream arrives complete and once, each attack is dropped or capped and
// counted, and the adversary is sent at most one full state per 250 ms.
// Subscription messages sent through the underlay to site 2's overlay
// address, from site 1's, arrive there and change nothing.
func TestHostilePeer(t *testing.T) {
	const group = "ff1e::16:1"
	inet := netlab.NewInternet(t)
	var sites []*netlab.Site
	for i := range 3 {
		sites = append(sites, inet.AddSite(fmt.Sprintf("lcast-site%d", i+1)))
	}
	kS, kR, kA, kB := newKey(t), newKey(t), newKey(t), newKey(t)
	adversaries := peerTable(kA, sites[2]) + fmt.Sprintf("[[peer]]\npublic_key = %q\nendpoint = \"[%s]:%d\"\nrelay = true\n",
		kB.PublicKey(), sites[2].Addr, listenPort+1)
	m := &mesh{inet: inet, sites: sites[:2], nodes: []*node{
		newNodeWithKey(t, sites[0].Namespace, kS, peerTable(kR, sites[1])),
		newNodeWithKey(t, sites[1].Namespace, kR, peerTable(kS, sites[0])+adversaries),
	}}
	m.runPlain(t) // the stream's completeness as users run lcast
	m.up()
	sink := startHelperUntil(t, sites[1].Namespace, "ready", "sink", "-group", group+"%lc0", "-dur", "30s", "-idle", "2s")
	// The stream is counted whole from its first datagram: site 1 starts
	// it once it knows site 2 listens (TestColdStart times start-up).
	m.waitSubscribed(t, 0, 1, group, true, 10*time.Second)
	blast := startHelperUntil(t, sites[0].Namespace, "", "blast", "-to", group+"%lc0", "-rate", "1000", "-dur", "8s")
	attack := func(key peer.Key, port int, attacks string) *netlab.Process {
		return startHelperUntil(t, sites[2].Namespace, "ready", "adversary", "-key", key.String(), "-peer", kR.PublicKey().String(),
			"-endpoint", fmt.Sprintf("[%s]:%d", sites[1].Addr, listenPort), "-listen", fmt.Sprint(port),
			"-victim", peer.OverlayAddr(kS.PublicKey()).String(), "-group", group, "-attacks", attacks, "-for", "6s")
	}
	// The underlay carries datagrams to site 2's overlay address (as a
	// router on the path could), and a counter on site 2's eth0 shows
	// that they arrive there.
	overlay2 := peer.OverlayAddr(kR.PublicKey()).String()
	inet.NS.Run("ip", "-6", "route", "add", overlay2+"/128", "via", sites[1].Addr.String())
	nftTable(t, sites[1].Namespace, "underlay", fmt.Sprintf("chain input { type filter hook input priority 0; iifname \"eth0\" ip6 daddr %s udp dport %d counter; }\n", overlay2, oldControlPort))
	plain := attack(kA, listenPort, "forge,unicast,multicast,underlay,states")
	relay := attack(kB, listenPort+1, "relay")
	var sent blastResult
	var plainRes, relayRes adversaryResult
	var got sinkResult
	waitExit(t, blast, 20*time.Second, "blast in site 1")
	decodeHelperJSON(t, blast, &sent)
	waitExit(t, plain, 20*time.Second, "plain adversary")
	decodeHelperJSON(t, plain, &plainRes)
	waitExit(t, relay, 20*time.Second, "relay adversary")
	decodeHelperJSON(t, relay, &relayRes)
	waitExit(t, sink, 20*time.Second, "sink in site 2")
	decodeHelperJSON(t, sink, &got)
	st := m.nodes[1].status(t)
	byKey := map[string]control.PeerStatus{}
	for _, p := range st.Peers {
		byKey[p.PublicKey] = p
	}
	a, b := byKey[kA.PublicKey().String()], byKey[kB.PublicKey().String()]
	t.Logf("site 1's stream: %d sent, %d received, %d unique, %d duplicates", sent.Sent, got.Received, got.Unique, got.Dups)
	t.Logf("plain adversary: %d packets sent, %d full states received; its drops at site 2: %v", plainRes.Sent, plainRes.States, nonZero(a.Drops))
	t.Logf("trusted relay adversary: %d packets sent; its drops at site 2: %v; site 2's drops: %v", relayRes.Sent, nonZero(b.Drops), nonZero(st.Drops))
	if got.Unique != sent.Sent || got.Dups != 0 {
		t.Errorf("site 1's stream under attack: %d of %d arrived, %d twice; want all, once", got.Unique, sent.Sent, got.Dups)
	}
	for _, c := range []struct {
		what   string
		drops  map[string]uint64
		reason string
	}{
		{"forged sources", a.Drops, "forged_source"},
		{"unicast not for site 2, multicast unwrapped", a.Drops, "not_for_node"},
		{"forged epochs and sequence numbers through a trusted relay", b.Drops, "relay_ahead"},
		{"sources beyond the cap", st.Drops, "peer_sources_over_cap"},
	} {
		if c.drops[c.reason] == 0 {
			t.Errorf("%s: none counted as %s", c.what, c.reason)
		}
	}
	if a.Drops["not_for_node"] < 2 {
		t.Errorf("unicast not for site 2 and unwrapped multicast: %d counted as not_for_node, want both kinds", a.Drops["not_for_node"])
	}
	for _, g := range a.Groups {
		if len(g.Sources) > peer.MaxSourcesPerGroup {
			t.Errorf("site 2 holds %d sources of the adversary's group %s, cap %d", len(g.Sources), g.Group, peer.MaxSourcesPerGroup)
		}
	}
	if len(a.Groups) != 1 {
		t.Errorf("the adversary's state of one group (100,000 sources, then 10,000 entries) is held as %d groups, want 1", len(a.Groups))
	}
	arrived := regexp.MustCompile(`counter packets (\d+)`).FindStringSubmatch(sites[1].Run("nft", "list", "table", "inet", "underlay"))
	if arrived == nil || arrived[1] == "0" {
		t.Errorf("no datagram from the underlay reached site 2's overlay address: %v", arrived)
	}
	for _, p := range st.Peers {
		for _, g := range p.Groups {
			if g.Group == underlayGroup.String() {
				t.Errorf("site 2 took a state from the underlay: %s of peer %s", g.Group, p.PublicKey)
			}
		}
	}
	t.Logf("subscription messages from the underlay to site 2's overlay address: %s arrived, none taken", arrived[1])
	// Resends back off from 250 ms, and a claimed new start gets a state
	// at once only if none went within 250 ms: at most one per 250 ms
	// (and the few sent before the session came up, flushed with it).
	if limit := 6*4 + 3; plainRes.States > limit {
		t.Errorf("a peer that never acknowledges and claims 60 new starts was sent %d full states in 6 s, want at most %d", plainRes.States, limit)
	}
}

// nonZero returns the counters of drops that are not zero.
func nonZero(drops map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range drops {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}
