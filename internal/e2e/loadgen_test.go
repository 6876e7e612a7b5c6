package e2e

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/librecast/lcast/mld"
	"golang.org/x/net/ipv6"
)

// The benchmark's load generator: helper modes that send and receive
// datagrams carrying a sequence number and their send time, through
// sendmmsg and recvmmsg so that the programs cost every system the same
// little. Every datagram starts with:
//
//	0 sequence number (uint64, from 0)
//	8 send time (int64, Unix nanoseconds; sites share the host's clock)
const (
	loadPort     = 4243
	loadHdrLen   = 16
	loadBatchLen = 64
)

// blastResult is what a blast helper prints, as JSON.
type blastResult struct {
	Sent    int   `json:"sent"`    // datagrams, counting each destination once
	Refused int   `json:"refused"` // sends the kernel refused
	Start   int64 `json:"start_ns"`
	End     int64 `json:"end_ns"`
	CPU     int64 `json:"cpu_ns"` // the sender's own CPU time, user and system
}

// blastHelper: "blast -to A[,B...] [-port P] [-rate PPS] [-dur D] [-size
// N] [-junk]": sends the same numbered datagram to every destination (a
// multicast group with its zone, or unicast addresses) at PPS datagrams per
// second (0: as fast as the kernel takes them) for D, then prints a
// blastResult. With -junk the datagrams are random bytes shaped like
// WireGuard's four message types instead (what an attacker who knows no
// key can send).
func blastHelper(args []string) int {
	fs := flag.NewFlagSet("blast", flag.ContinueOnError)
	to := fs.String("to", "", "destinations, comma-separated")
	port := fs.Int("port", loadPort, "destination UDP port")
	rate := fs.Int("rate", 0, "datagrams per second, 0 for as fast as possible")
	dur := fs.Duration("dur", 3*time.Second, "how long to send")
	size := fs.Int("size", 1200, "UDP payload bytes")
	junk := fs.Bool("junk", false, "send random WireGuard-shaped datagrams")
	hops := fs.Int("hops", 0, "multicast hop limit (0: the kernel's default, 1)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var dsts []*net.UDPAddr
	for _, d := range strings.Split(*to, ",") {
		a, err := net.ResolveUDPAddr("udp6", net.JoinHostPort(d, fmt.Sprint(*port)))
		if err != nil {
			return helperFail(err)
		}
		dsts = append(dsts, a)
	}
	c, err := net.ListenUDP("udp6", nil)
	if err != nil {
		return helperFail(err)
	}
	p := ipv6.NewPacketConn(c)
	if *hops > 0 {
		if err := p.SetMulticastHopLimit(*hops); err != nil {
			return helperFail(err)
		}
	}
	if z := dsts[0].Zone; z != "" && dsts[0].IP.IsMulticast() {
		ifi, err := net.InterfaceByName(z)
		if err != nil {
			return helperFail(err)
		}
		if err := p.SetMulticastInterface(ifi); err != nil {
			return helperFail(err)
		}
	}
	msgs := make([]ipv6.Message, loadBatchLen)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, max(*size, loadHdrLen))}
		if *junk {
			// Initiation, response, cookie reply and data, at their sizes.
			typ := 1 + i%4
			b := make([]byte, [...]int{148, 92, 64, *size}[typ-1])
			rand.Read(b)
			b[0], b[1], b[2], b[3] = byte(typ), 0, 0, 0
			msgs[i].Buffers[0] = b
		}
	}
	res := blastResult{Start: time.Now().UnixNano()}
	end := time.Now().Add(*dur)
	var seq uint64
	for now := time.Now(); now.Before(end); now = time.Now() {
		// Datagrams due by now: all of a batch when unpaced; else the
		// schedule's count, sent in a burst every 100 us at most.
		due := loadBatchLen / len(dsts)
		if *rate > 0 {
			due = int(float64(now.UnixNano()-res.Start)*float64(*rate)/1e9) - int(seq)
			if due <= 0 {
				time.Sleep(100 * time.Microsecond)
				continue
			}
		}
		for due > 0 {
			n := 0
			for ; n+len(dsts) <= len(msgs) && due > 0; due-- {
				for _, d := range dsts {
					if b := msgs[n].Buffers[0]; !*junk {
						binary.BigEndian.PutUint64(b, seq)
						binary.BigEndian.PutUint64(b[8:], uint64(time.Now().UnixNano()))
					}
					msgs[n].Addr = d
					n++
				}
				seq++
			}
			for off := 0; off < n; {
				k, err := p.WriteBatch(msgs[off:n], 0)
				if err != nil {
					res.Refused++
					k = max(k, 1)
				}
				off += k
			}
		}
	}
	res.End = time.Now().UnixNano()
	res.Sent = int(seq)
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		res.CPU = ru.Utime.Nano() + ru.Stime.Nano()
	}
	return helperJSON(res)
}

// sinkResult is what a sink helper prints, as JSON.
type sinkResult struct {
	Received int   `json:"received"`
	Unique   int   `json:"unique"`
	Dups     int   `json:"duplicates"`
	First    int64 `json:"first_ns"` // arrival of the first datagram
	Last     int64 `json:"last_ns"`
	// One-way latency from send time to the program's receive, in
	// microseconds.
	P50 float64 `json:"p50_us"`
	P99 float64 `json:"p99_us"`
}

// sinkHelper: "sink [-group G%IFACE] [-dur D] [-idle I]": receives load
// datagrams on loadPort (joined to G if given) until D passes, or I passes
// without a datagram after the first; prints "ready" once listening and a
// sinkResult at the end.
func sinkHelper(args []string) int {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	group := fs.String("group", "", "multicast group and zone to join")
	dur := fs.Duration("dur", 10*time.Second, "longest time to listen")
	idle := fs.Duration("idle", time.Second, "silence that ends the listening, after the first datagram")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	p, err := listenLoad(*group)
	if err != nil {
		return helperFail(err)
	}
	fmt.Println("ready")
	var res sinkResult
	var seen []uint64 // a bit per sequence number
	var lat []int64
	end := time.Now().Add(*dur)
	msgs := loadMessages()
	for {
		deadline := end
		if t := time.Now().Add(*idle); res.Received > 0 && t.Before(end) {
			deadline = t
		}
		p.SetReadDeadline(deadline)
		n, err := p.ReadBatch(msgs, 0)
		if err != nil {
			break
		}
		now := time.Now().UnixNano()
		for _, m := range msgs[:n] {
			if m.N < loadHdrLen {
				continue
			}
			b := m.Buffers[0]
			seq := binary.BigEndian.Uint64(b)
			if res.Received == 0 {
				res.First = now
			}
			res.Received++
			res.Last = now
			word, bit := seq/64, uint64(1)<<(seq%64)
			if word >= 1<<26 {
				continue // not a load datagram
			}
			for uint64(len(seen)) <= word {
				seen = append(seen, 0)
			}
			if seen[word]&bit != 0 {
				res.Dups++
			} else {
				res.Unique++
			}
			seen[word] |= bit
			lat = append(lat, now-int64(binary.BigEndian.Uint64(b[8:])))
		}
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		res.P50 = float64(lat[len(lat)/2]) / 1e3
		res.P99 = float64(lat[len(lat)*99/100]) / 1e3
	}
	return helperJSON(res)
}

// listenLoad opens a socket on loadPort with a large receive buffer,
// joined to group (G%IFACE) unless group is empty.
func listenLoad(group string) (*ipv6.PacketConn, error) {
	c, err := net.ListenUDP("udp6", &net.UDPAddr{Port: loadPort})
	if err != nil {
		return nil, err
	}
	forceBuffers(c, 16<<20, syscall.SO_RCVBUFFORCE)
	p := ipv6.NewPacketConn(c)
	if group == "" {
		return p, nil
	}
	addr, zone, _ := strings.Cut(group, "%")
	ifi, err := net.InterfaceByName(zone)
	if err != nil {
		c.Close()
		return nil, err
	}
	if err := p.JoinGroup(ifi, &net.UDPAddr{IP: net.ParseIP(addr)}); err != nil {
		c.Close()
		return nil, err
	}
	return p, nil
}

func loadMessages() []ipv6.Message {
	msgs := make([]ipv6.Message, loadBatchLen)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	return msgs
}

// joinLatencyHelper: "joinlat -group G%IFACE [-n N] [-gap D]": N times,
// joins G and measures the time until the first datagram arrives (while
// some other program streams to G), then leaves and waits D. Prints the
// times in microseconds as a JSON array.
func joinLatencyHelper(args []string) int {
	fs := flag.NewFlagSet("joinlat", flag.ContinueOnError)
	group := fs.String("group", "", "multicast group and zone")
	n := fs.Int("n", 10, "joins")
	gap := fs.Duration("gap", 500*time.Millisecond, "wait after each leave")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var took []float64
	msgs := loadMessages()
	for range *n {
		start := time.Now()
		p, err := listenLoad(*group)
		if err != nil {
			return helperFail(err)
		}
		p.SetReadDeadline(start.Add(2 * time.Second))
		_, err = p.ReadBatch(msgs[:1], 0)
		elapsed := time.Since(start)
		p.Close()
		if err != nil {
			return helperFail(fmt.Errorf("no datagram within 2 s of a join: %w", err))
		}
		took = append(took, float64(elapsed.Microseconds()))
		time.Sleep(*gap)
	}
	return helperJSON(took)
}

// leaveLatencyHelper: "leavelat -group G%IFACE -underlay IFACE [-port P
// [-dst]] [-n N]": N times, joins G, waits for its datagrams, leaves, and watches
// the site's underlay interface for the time the last data packet (UDP
// from port P, lcast's, of more than 1000 bytes) arrives after the leave:
// how long the network kept sending to this site. Prints the times in
// microseconds as a JSON array.
func leaveLatencyHelper(args []string) int {
	fs := flag.NewFlagSet("leavelat", flag.ContinueOnError)
	group := fs.String("group", "", "multicast group and zone")
	underlay := fs.String("underlay", "eth0", "the site's underlay interface")
	port := fs.Int("port", listenPort, "the UDP source port of the data packets")
	dst := fs.Bool("dst", false, "-port is the data packets' destination port (a LAN host watching the group's own datagrams)")
	n := fs.Int("n", 10, "leaves")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ifi, err := net.InterfaceByName(*underlay)
	if err != nil {
		return helperFail(err)
	}
	var took []float64
	msgs := loadMessages()
	for range *n {
		p, err := listenLoad(*group)
		if err != nil {
			return helperFail(err)
		}
		p.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := p.ReadBatch(msgs[:1], 0); err != nil {
			return helperFail(fmt.Errorf("no datagram within 2 s of a join: %w", err))
		}
		time.Sleep(100 * time.Millisecond)
		watch, err := watchUnderlay(ifi.Index)
		if err != nil {
			return helperFail(err)
		}
		left := time.Now()
		p.Close()
		last := lastDataPacket(watch, uint16(*port), *dst, left.Add(time.Second))
		syscall.Close(watch)
		took = append(took, float64(max(last.Sub(left), 0).Microseconds()))
	}
	return helperJSON(took)
}

// watchUnderlay opens a packet socket that sees the IPv6 packets arriving
// on the interface with index ifindex.
func watchUnderlay(ifindex int) (int, error) {
	fd, _, err := packetSocket(ifindex)
	if err != nil {
		return -1, err
	}
	tv := syscall.NsecToTimeval((10 * time.Millisecond).Nanoseconds())
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

// packetSocket opens a packet socket for IPv6 packets bound to the
// interface with index ifindex, and returns it with its address.
func packetSocket(ifindex int) (int, *syscall.SockaddrLinklayer, error) {
	const ethPIPv6 = 0x86dd
	proto := uint16(ethPIPv6>>8 | (ethPIPv6&0xff)<<8) // network byte order
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_DGRAM, int(proto))
	if err != nil {
		return -1, nil, err
	}
	addr := &syscall.SockaddrLinklayer{Protocol: proto, Ifindex: ifindex}
	if err := syscall.Bind(fd, addr); err != nil {
		syscall.Close(fd)
		return -1, nil, err
	}
	return fd, addr, nil
}

// lastDataPacket reads fd until deadline and returns when the last
// incoming UDP packet from port (to port, with dst) of more than 1000 bytes
// arrived (zero if none). Other large UDP packets, such as tinc's path MTU
// probes in the side-by-side benchmark, are not the data packets the leave
// should stop.
func lastDataPacket(fd int, port uint16, dst bool, deadline time.Time) time.Time {
	off := 40 // the UDP source port, after the IPv6 header
	if dst {
		off = 42
	}
	var last time.Time
	buf := make([]byte, 2048)
	for time.Now().Before(deadline) {
		n, from, err := syscall.Recvfrom(fd, buf, 0)
		if err != nil {
			continue
		}
		ll, ok := from.(*syscall.SockaddrLinklayer)
		if !ok || ll.Pkttype == syscall.PACKET_OUTGOING {
			continue
		}
		if n > 1000 && buf[6] == syscall.IPPROTO_UDP && binary.BigEndian.Uint16(buf[off:off+2]) == port {
			last = time.Now()
		}
	}
	return last
}

// joinManyHelper: "joinmany -base G -n N -iface IFACE": joins N groups
// from G upwards on IFACE, with as many sockets as the kernel's per-socket
// limit needs, prints {"start_ns", "end_ns"} of the joins (and the
// sockets used) and stays joined until killed.
func joinManyHelper(args []string) int {
	ifi, groups, err := manyGroupsFlags("joinmany", args)
	if err != nil {
		return helperFail(err)
	}
	var socks []*net.UDPConn // kept open: closing one leaves its groups
	var p *ipv6.PacketConn
	start := time.Now()
	for i := 0; i < len(groups); {
		if p == nil {
			c, err := net.ListenUDP("udp6", nil)
			if err != nil {
				return helperFail(err)
			}
			socks = append(socks, c)
			p = ipv6.NewPacketConn(c)
		}
		err := p.JoinGroup(ifi, &net.UDPAddr{IP: groups[i].AsSlice()})
		if errors.Is(err, syscall.ENOMEM) || errors.Is(err, syscall.ENOBUFS) {
			p = nil // this socket's option memory is full: go on with another
			continue
		}
		if err != nil {
			return helperFail(fmt.Errorf("joining group %d: %w", i, err))
		}
		i++
	}
	end := time.Now()
	helperJSON(map[string]int64{"start_ns": start.UnixNano(), "end_ns": end.UnixNano(), "sockets": int64(len(socks))})
	select {}
}

// mldInjectHelper: "mldinject -base G -n N -iface IFACE": writes into
// IFACE MLDv2 reports of any-source joins of N groups from G upwards, as
// the kernel would for N joins (which this kernel cannot do quickly: its
// joins take time quadratic in the interface's groups), prints
// {"start_ns", "end_ns"} of the writing, and on SIGTERM writes the leaves
// and exits.
func mldInjectHelper(args []string) int {
	ifi, groups, err := manyGroupsFlags("mldinject", args)
	if err != nil {
		return helperFail(err)
	}
	fd, to, err := packetSocket(ifi.Index)
	if err != nil {
		return helperFail(err)
	}
	src := netip.MustParseAddr("fe80::6c:6361:7374:1")
	write := func(typ mld.RecordType) error {
		const perReport = 64 // records of 20 bytes fit lc0's MTU
		var records []mld.ReportRecord
		for i, g := range groups {
			records = append(records, mld.ReportRecord{Type: typ, Group: g})
			if len(records) == perReport || i == len(groups)-1 {
				if err := syscall.Sendto(fd, mld.AppendV2Report(nil, src, records), 0, to); err != nil {
					return err
				}
				records = records[:0]
				if i/perReport%8 == 7 {
					time.Sleep(time.Millisecond) // 8,000 reports/s at most
				}
			}
		}
		return nil
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	start := time.Now()
	if err := write(mld.ChangeToExcludeMode); err != nil {
		return helperFail(err)
	}
	helperJSON(map[string]int64{"start_ns": start.UnixNano(), "end_ns": time.Now().UnixNano()})
	<-stop
	if err := write(mld.ChangeToIncludeMode); err != nil {
		return helperFail(err)
	}
	return 0
}

// manyGroupsFlags parses "-base G -n N -iface IFACE" and returns the
// interface and the N groups from G upwards.
func manyGroupsFlags(mode string, args []string) (*net.Interface, []netip.Addr, error) {
	fs := flag.NewFlagSet(mode, flag.ContinueOnError)
	base := fs.String("base", "ff1e::1:0", "first group")
	n := fs.Int("n", 1000, "groups")
	iface := fs.String("iface", "lc0", "interface")
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	ifi, err := net.InterfaceByName(*iface)
	if err != nil {
		return nil, nil, err
	}
	first, err := netip.ParseAddr(*base)
	if err != nil {
		return nil, nil, err
	}
	groups := make([]netip.Addr, *n)
	for i := range groups {
		g := first.As16()
		binary.BigEndian.PutUint32(g[12:], binary.BigEndian.Uint32(g[12:])+uint32(i))
		groups[i] = netip.AddrFrom16(g)
	}
	return ifi, groups, nil
}

func helperFail(err error) int {
	fmt.Fprintln(os.Stderr, err)
	return 1
}

// helperJSON prints v as one line of JSON.
func helperJSON(v any) int {
	b, err := json.Marshal(v)
	if err != nil {
		return helperFail(err)
	}
	fmt.Println(string(b))
	return 0
}
