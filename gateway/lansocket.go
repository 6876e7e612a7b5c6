package gateway

import (
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// lanSocket reads the MLD messages of one LAN and writes queries onto it:
// a packet socket bound to the interface that takes IPv6 packets without
// their link-layer header. The kernel filters it to packets with a
// hop-by-hop header (every MLD message has one, for its Router Alert), so
// that the LAN's data never reaches the daemon; the gateway's own packets
// going out are skipped.
type lanSocket struct {
	ifindex int
	f       *os.File
	rc      syscall.RawConn
	closed  atomic.Bool // the raw conn's error after close is not net.ErrClosed
}

// hopByHopOnly passes IPv6 packets whose next header is hop-by-hop (0).
var hopByHopOnly = []bpf.Instruction{
	bpf.LoadAbsolute{Off: 6, Size: 1},
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 0, SkipTrue: 1},
	bpf.RetConstant{Val: 0xffff},
	bpf.RetConstant{Val: 0},
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// openLANSocket opens the socket of the interface with index ifindex.
func openLANSocket(ifindex int) (*lanSocket, error) {
	// Protocol 0 takes nothing until the bind, so no unfiltered packet
	// queues before the filter is attached.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	raw, err := bpf.Assemble(hopByHopOnly)
	if err == nil {
		prog := unix.SockFprog{Len: uint16(len(raw)), Filter: (*unix.SockFilter)(unsafe.Pointer(&raw[0]))}
		err = unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog)
	}
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IPV6), Ifindex: ifindex})
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "mld")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &lanSocket{ifindex: ifindex, f: f, rc: rc}, nil
}

// read reads the next packet that arrived on the LAN into buf and returns
// its length. After close it returns an error.
func (s *lanSocket) read(buf []byte) (int, error) {
	for {
		var (
			n    int
			from unix.Sockaddr
			rerr error
		)
		err := s.rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		})
		switch {
		case err != nil && s.closed.Load():
			return 0, net.ErrClosed
		case err != nil:
			return 0, err
		case rerr != nil:
			return 0, rerr
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		return min(n, len(buf)), nil
	}
}

// write sends an IPv6 multicast packet onto the LAN, to the link-layer
// address its destination maps to (33:33 and its last 32 bits, RFC 2464).
func (s *lanSocket) write(pkt []byte) error {
	if len(pkt) < 40 || pkt[24] != 0xff {
		return fmt.Errorf("not an IPv6 multicast packet")
	}
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IPV6), Ifindex: s.ifindex, Halen: 6,
		Addr: [8]byte{0x33, 0x33, pkt[36], pkt[37], pkt[38], pkt[39]}}
	var werr error
	err := s.rc.Write(func(fd uintptr) bool {
		werr = unix.Sendto(int(fd), pkt, 0, to)
		return werr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	return werr
}

// close closes the socket; a read blocked on it returns.
func (s *lanSocket) close() error {
	s.closed.Store(true)
	return s.f.Close()
}
