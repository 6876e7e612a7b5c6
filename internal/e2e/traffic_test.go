package e2e

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

// recvHelper: "recv GROUP IFACE": join GROUP on IFACE (port 4242) and
// count datagrams carrying sequence numbers; print "joined", then on every
// datagram nothing, and when 2 s pass without one after the first, or on
// SIGTERM-free exit after "idle" seconds, a line
// "received N unique U duplicates D first F last L".
func recvHelper(args []string) int {
	ifi, err := net.InterfaceByName(args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	c, err := net.ListenMulticastUDP("udp6", ifi, &net.UDPAddr{IP: net.ParseIP(args[0]), Port: 4242})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	c.SetReadBuffer(4 << 20)
	idle := 2 * time.Second
	if len(args) > 2 {
		d, _ := time.ParseDuration(args[2])
		idle = d
	}
	fmt.Println("joined")
	seen := map[uint64]bool{}
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
		seq := binary.BigEndian.Uint64(buf[:8])
		if total == 0 {
			first = seq
			fmt.Printf("first %d at %d\n", seq, time.Now().UnixNano())
		}
		total++
		if seen[seq] {
			dups++
		}
		seen[seq] = true
		last = seq
	}
	fmt.Printf("received %d unique %d duplicates %d first %d last %d\n", total, len(seen), dups, first, last)
	return 0
}

// sendHelper: "send GROUP COUNT RATE SIZE": send COUNT datagrams of SIZE
// bytes to [GROUP]:4242 at RATE per second, naming no interface; each
// starts with its sequence number (from 0). Prints "sent N".
func sendHelper(args []string) int {
	count, _ := strconv.Atoi(args[1])
	rate, _ := strconv.Atoi(args[2])
	size, _ := strconv.Atoi(args[3])
	c, err := net.DialUDP("udp6", nil, &net.UDPAddr{IP: net.ParseIP(args[0]), Port: 4242})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	buf := make([]byte, max(size, 8))
	start := time.Now()
	for i := range count {
		if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); d > 0 {
			time.Sleep(d)
		}
		binary.BigEndian.PutUint64(buf, uint64(i))
		if _, err := c.Write(buf); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	fmt.Printf("sent %d\n", count)
	return 0
}
