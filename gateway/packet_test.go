package gateway

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/librecast/lcast/mld"
	"golang.org/x/sys/unix"
)

// packetPort is a packet socket on one interface of the test's namespace:
// it sends IPv6 packets onto it and counts those that arrive.
type packetPort struct {
	fd    int
	index int
}

func openPort(t *testing.T, index int) *packetPort {
	t.Helper()
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IPV6)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IPV6), Ifindex: index}); err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval(int64(50 * time.Millisecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return &packetPort{fd: fd, index: index}
}

// send sends a UDP packet from src to group with hop limit hops.
func (p *packetPort) send(t *testing.T, src, group netip.Addr, hops uint8) {
	t.Helper()
	pkt := make([]byte, 48)
	pkt[0] = 0x60
	binary.BigEndian.PutUint16(pkt[4:], 8)
	pkt[6], pkt[7] = unix.IPPROTO_UDP, hops
	s, d := src.As16(), group.As16()
	copy(pkt[8:], s[:])
	copy(pkt[24:], d[:])
	binary.BigEndian.PutUint16(pkt[40:], 4242)
	binary.BigEndian.PutUint16(pkt[42:], 4242)
	binary.BigEndian.PutUint16(pkt[44:], 8)
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IPV6), Ifindex: p.index, Halen: 6,
		Addr: [8]byte{0x33, 0x33, d[12], d[13], d[14], d[15]}}
	if err := unix.Sendto(p.fd, pkt, 0, to); err != nil {
		t.Fatal(err)
	}
}

// received returns the hop limits of the UDP packets to port 4242 that
// arrived since the last call, from src to group, waiting a little for
// them.
func (p *packetPort) received(src, group netip.Addr) []uint8 {
	var hops []uint8
	buf := make([]byte, 2048)
	for {
		n, from, err := unix.Recvfrom(p.fd, buf, 0)
		if err != nil {
			return hops // the timeout: nothing more
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if n >= 48 && buf[6] == unix.IPPROTO_UDP && netip.AddrFrom16([16]byte(buf[8:24])) == src &&
			netip.AddrFrom16([16]byte(buf[24:40])) == group && binary.BigEndian.Uint16(buf[42:]) == 4242 {
			hops = append(hops, buf[7])
		}
	}
}

// The rules copy real packets as the design says, in a namespace of the
// test's own (veth pairs for lc0 and two LANs; the test sends and counts
// on their other ends): only to the LANs whose filters want the source
// (any source; excluding one source; including one), with one taken off
// the hop limit; never a packet with hop limit 1, nor one from lc0 with a
// LAN's source; from a LAN host into lc0 for lc0's groups and onto the
// other LAN; a LAN packet whose source is not on its LAN nowhere, and
// counted.
func TestRulesCopyPackets(t *testing.T) {
	ns, index := testNamespace(t, "lc0", "lan1", "lan2")
	l := newLayout("lcast_lc0", link{"lc0", index["lc0"]}, []link{{"lan1", index["lan1"]}, {"lan2", index["lan2"]}},
		[][]netip.Prefix{{testPrefix("2001:db8:1::/64")}, {testPrefix("2001:db8:2::/64")}})
	k, err := newNftKernel(l.table, int(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer k.close()
	if err := k.create(l); err != nil {
		t.Fatal(err)
	}
	var lc0, lan1, lan2 *packetPort
	inNamespace(t, ns, func() {
		lc0, lan1, lan2 = openPort(t, index["plc0"]), openPort(t, index["plan1"]), openPort(t, index["plan2"])
	})
	const (
		any  = "ff1e::1" // lan1 and lan2 from any source, and lc0
		ex   = "ff3e::2" // lan1 excluding far1
		in   = "ff3e::3" // lan2 including far1
		none = "ff1e::4" // nobody
	)
	far1, far2 := testAddr("2001:db8:9::1"), testAddr("2001:db8:9::2")
	host1, host2 := testAddr("2001:db8:1::10"), testAddr("2001:db8:2::10")
	s := newState(l)
	ops, _ := s.lc0Changes(nil, testAddrs(any, "ff1e::1:1"))
	ops, _ = s.lanChanges(ops, l.lans[0], 0, []mld.GroupState{anySourceState(any), filterState(ex, mld.Exclude, far1.String())})
	ops, _ = s.lanChanges(ops, l.lans[1], 1, []mld.GroupState{anySourceState(any), filterState(in, mld.Include, far1.String())})
	if err := k.change(ops); err != nil {
		t.Fatal(err)
	}
	type port struct {
		name string
		p    *packetPort
	}
	ports := []port{{"lc0", lc0}, {"lan1", lan1}, {"lan2", lan2}}
	for _, c := range []struct {
		name  string
		from  *packetPort
		src   netip.Addr
		group string
		hops  uint8
		want  map[string]uint8 // port → the copy's hop limit
	}{
		{"from lc0, any source", lc0, far1, any, 8, map[string]uint8{"lan1": 7, "lan2": 7}},
		{"from lc0, hop limit 2", lc0, far1, any, 2, map[string]uint8{"lan1": 1, "lan2": 1}},
		{"from lc0, hop limit 1", lc0, far1, any, 1, nil},
		{"from lc0, the excluded source", lc0, far1, ex, 8, nil},
		{"from lc0, another source than the excluded", lc0, far2, ex, 8, map[string]uint8{"lan1": 7}},
		{"from lc0, the included source", lc0, far1, in, 8, map[string]uint8{"lan2": 7}},
		{"from lc0, another source than the included", lc0, far2, in, 8, nil},
		{"from lc0, a group nobody wants", lc0, far1, none, 8, nil},
		{"from lc0, link scope", lc0, far1, "ff02::1:3", 8, nil},
		{"from lc0, a source on a LAN", lc0, host1, any, 8, nil},
		{"from lan1, its host", lan1, host1, any, 8, map[string]uint8{"lc0": 7, "lan2": 7}},
		{"from lan1, its host, to lc0 only", lan1, host1, "ff1e::1:1", 8, map[string]uint8{"lc0": 7}},
		{"from lan2, its host, excluded nowhere", lan2, host2, ex, 8, map[string]uint8{"lan1": 7}},
		{"from lan1, its host, hop limit 1", lan1, host1, any, 1, nil},
		{"from lan1, a foreign source", lan1, host2, any, 8, nil},
	} {
		group := testAddr(c.group)
		c.from.send(t, c.src, group, c.hops)
		for _, p := range ports {
			if p.p == c.from {
				p.p.received(c.src, group) // its own packet, going out
				continue
			}
			got := p.p.received(c.src, group)
			want, ok := c.want[p.name]
			switch {
			case !ok && len(got) > 0:
				t.Errorf("%s: copied onto %s (hop limits %v), want not", c.name, p.name, got)
			case ok && (len(got) != 1 || got[0] != want):
				t.Errorf("%s: onto %s hop limits %v, want one with %d", c.name, p.name, got, want)
			}
		}
	}
	if n, err := k.counter(l.lans[0].counter()); n != 1 || err != nil {
		t.Errorf("lan1's foreign sources: %d (%v), want 1", n, err)
	}
	if n, err := k.counter(l.lans[1].counter()); n != 0 || err != nil {
		t.Errorf("lan2's foreign sources: %d (%v), want 0", n, err)
	}
}
