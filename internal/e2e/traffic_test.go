package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"golang.org/x/net/ipv6"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/librecast/lcast/internal/ip6"
)

// recvHelper: "recv GROUP IFACE [IDLE [SOURCE]]": join GROUP on IFACE (port 4242; from SOURCE only, if given)
// and count datagrams carrying sequence numbers. It prints "joined T" (T in
// Unix nanoseconds), "first SEQ at T" on the first datagram, and once IDLE
// (default 2 s) passes without a datagram after the first, the summary
// "received N unique U duplicates D first F last L maxgap G" (G: the longest
// silence between two datagrams, in milliseconds). Once a stream's last
// datagram has come (the send helper marks it: see endMark), it waits
// only endLinger for more, if that is shorter than IDLE.
func recvHelper(args []string) int {
	ifi, err := net.InterfaceByName(args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	source := ""
	if len(args) > 3 {
		source = args[3]
	}
	c, err := listenGroup(ifi, args[0], source)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	forceBuffers(c, 8<<20, syscall.SO_RCVBUFFORCE)
	idle := 2 * time.Second
	if len(args) > 2 {
		d, _ := time.ParseDuration(args[2])
		idle = d
	}
	fmt.Printf("joined %d\n", time.Now().UnixNano())
	seen := map[uint64]bool{}
	var prev time.Time
	var maxGap time.Duration
	var total, dups int
	var first, last uint64
	buf := make([]byte, 65536)
	for {
		if total > 0 {
			c.SetReadDeadline(time.Now().Add(idle))
		}
		n, err := c.Read(buf)
		if err != nil {
			break
		}
		if n < 8 {
			continue
		}
		if endMarked(buf[:n]) {
			// IDLE bounds the silences a test allows inside a stream
			// (a restart, a path that breaks): after the last datagram
			// the wait is only for stragglers and duplicates.
			idle = min(idle, endLinger)
		}
		now := time.Now()
		if !prev.IsZero() && now.Sub(prev) > maxGap {
			maxGap = now.Sub(prev)
		}
		prev = now
		seq := binary.BigEndian.Uint64(buf[:8])
		if total == 0 {
			first = seq
			fmt.Printf("first %d at %d\n", seq, now.UnixNano())
		}
		total++
		if seen[seq] {
			dups++
		}
		seen[seq] = true
		last = seq
	}
	fmt.Printf("received %d unique %d duplicates %d first %d last %d maxgap %d\n", total, len(seen), dups, first, last, maxGap.Milliseconds())
	var missing []uint64
	for seq := first; seq <= last && len(missing) < 10; seq++ {
		if !seen[seq] {
			missing = append(missing, seq)
		}
	}
	if len(missing) > 0 {
		fmt.Printf("missing %v\n", missing)
	}
	return 0
}

// forceBuffers sets the socket's buffers named by opts (SO_RCVBUFFORCE,
// SO_SNDBUFFORCE: root may exceed rmem_max and wmem_max) to size bytes, so
// that a pause of the test machine, or of a race-built helper, delays the
// datagrams at the socket rather than drops them.
func forceBuffers(c syscall.Conn, size int, opts ...int) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		for _, opt := range opts {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, opt, size)
		}
	})
}

// listenGroup joins group on ifi at port 4242: from any source, or from
// source only if it is not empty.
func listenGroup(ifi *net.Interface, group, source string) (*net.UDPConn, error) {
	if ip := net.ParseIP(group); ip != nil && !ip.IsMulticast() { // a unicast stream to this address
		return net.ListenUDP("udp6", &net.UDPAddr{IP: ip, Port: 4242})
	}
	if source == "" {
		return net.ListenMulticastUDP("udp6", ifi, &net.UDPAddr{IP: net.ParseIP(group), Port: 4242})
	}
	pc, err := net.ListenPacket("udp6", "[::]:4242")
	if err != nil {
		return nil, err
	}
	c := pc.(*net.UDPConn)
	if err := ipv6.NewPacketConn(c).JoinSourceSpecificGroup(ifi, &net.UDPAddr{IP: net.ParseIP(group)}, &net.UDPAddr{IP: net.ParseIP(source)}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// sendHelper: "send GROUP COUNT RATE SIZE [SOURCE [HOPS]]": send COUNT
// datagrams of SIZE bytes to [GROUP]:4242 at RATE per second, naming no
// interface (but binding SOURCE if given and not empty; with hop limit
// HOPS if given, else the default of 1); each starts with its sequence number
// (from 0), and the last ends with endMark if SIZE leaves room for it.
// Prints "sent N, F refused by the kernel". With zeroSum (mode
// "send-zerosum") the two bytes after the sequence number make each
// datagram's UDP checksum compute to zero, which UDP sends as 0xffff.
func sendHelper(args []string, zeroSum bool) int {
	count, _ := strconv.Atoi(args[1])
	rate, _ := strconv.Atoi(args[2])
	size, _ := strconv.Atoi(args[3])
	var laddr *net.UDPAddr
	if len(args) > 4 && args[4] != "" {
		laddr = &net.UDPAddr{IP: net.ParseIP(args[4])}
	}
	// GROUP may carry a zone (ff02::fb%lc0): link-scope groups need one.
	raddr, err := net.ResolveUDPAddr("udp6", net.JoinHostPort(args[0], "4242"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	c, err := net.DialUDP("udp6", laddr, raddr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if len(args) > 5 {
		hops, _ := strconv.Atoi(args[5])
		if err := ipv6.NewPacketConn(c).SetMulticastHopLimit(hops); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	buf := make([]byte, max(size, 8))
	if zeroSum && size < 10 {
		fmt.Fprintln(os.Stderr, "send-zerosum needs SIZE >= 10")
		return 1
	}
	failed := 0
	start := time.Now()
	for i := range count {
		if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); d > 0 {
			time.Sleep(d)
		}
		binary.BigEndian.PutUint64(buf, uint64(i))
		if i == count-1 && len(buf) >= endMarkMin {
			copy(buf[len(buf)-len(endMark):], endMark)
		}
		if zeroSum {
			zeroChecksum(buf, c.LocalAddr().(*net.UDPAddr), raddr)
		}
		if _, err := c.Write(buf); err != nil {
			// A send can fail while the local lcast restarts (no route
			// for a moment); the sequence gap shows at the receivers.
			fmt.Fprintf(os.Stderr, "datagram %d: %v\n", i, err)
			failed++
		}
	}
	fmt.Printf("sent %d, %d refused by the kernel\n", count-failed, failed)
	return 0
}

// endMark ends the last datagram of a send helper's stream (of at least
// endMarkMin bytes: the sequence number, the two bytes send-zerosum sets,
// and the mark), so that a receiver need not wait out its idle time to
// know the stream is over. Other datagrams end in zeros there.
var endMark = []byte("lcastEND")

const endMarkMin = 8 + 2 + 8

// endLinger is how long a receiver waits for more after a stream's last
// datagram: for one overtaken on the way (by a few milliseconds) or a
// duplicate.
const endLinger = time.Second

// endMarked reports whether datagram b is the last of a send helper's
// stream.
func endMarked(b []byte) bool {
	return len(b) >= endMarkMin && bytes.Equal(b[len(b)-len(endMark):], endMark)
}

// zeroChecksum sets payload[8:10] so that the UDP checksum of payload from
// src to dst computes to zero: the one's complement sum of the datagram
// and its pseudo-header is then 0xffff.
func zeroChecksum(payload []byte, src, dst *net.UDPAddr) {
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], uint16(src.Port))
	binary.BigEndian.PutUint16(udp[2:], uint16(dst.Port))
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	payload[8], payload[9] = 0, 0
	copy(udp[8:], payload)
	// Checksum returns the complement of the sum without the two bytes;
	// adding exactly that complement makes the sum 0xffff.
	sum := ip6.Checksum([16]byte(src.IP.To16()), [16]byte(dst.IP.To16()), ip6.ProtoUDP, udp)
	binary.BigEndian.PutUint16(payload[8:], sum)
}
