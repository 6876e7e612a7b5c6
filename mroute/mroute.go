package mroute

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"

	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// The socket options of linux/mroute6.h that Socket uses (level
// IPPROTO_IPV6; x/sys/unix has no MRT6 constants).
const (
	mrt6Init = 200 // MRT6_INIT: take the namespace's multicast routing
	mrt6Done = 201 // MRT6_DONE: release it
)

// ErrUnsupported is matched (errors.Is) by Open's error when the kernel
// has no IPv6 multicast routing (built without CONFIG_IPV6_MROUTE).
var ErrUnsupported = errors.New("this kernel has no IPv6 multicast routing (CONFIG_IPV6_MROUTE is not set)")

// Socket is this network namespace's IPv6 multicast routing socket, held:
// while it is open, no other program can take the namespace's multicast
// routing.
type Socket struct {
	conn *net.IPConn
	raw  syscall.RawConn

	mu     sync.Mutex
	closed bool
}

// Open takes the namespace's multicast routing socket: a raw ICMPv6 socket
// on which MRT6_INIT succeeded, with every ICMPv6 type filtered out
// (ICMP6_FILTER), so that nothing queues on it. If another socket holds
// multicast routing, the error is an *InUseError (matching ErrInUse) that
// names the processes that may hold it; if the kernel has no IPv6
// multicast routing, the error matches ErrUnsupported.
func Open() (*Socket, error) {
	s, err := listen()
	if err != nil {
		return nil, err
	}
	err = s.control(func(fd int) error {
		return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, mrt6Init, 1)
	})
	if err != nil {
		s.conn.Close() // before looking for holders, so that this socket is not one
		switch {
		case errors.Is(err, unix.EADDRINUSE):
			return nil, &InUseError{Holders: findHolders()}
		case errors.Is(err, unix.ENOPROTOOPT):
			return nil, fmt.Errorf("start IPv6 multicast routing (MRT6_INIT): %w", ErrUnsupported)
		}
		return nil, fmt.Errorf("start IPv6 multicast routing (MRT6_INIT): %w", err)
	}
	return s, nil
}

// listen opens the raw ICMPv6 socket with all of ICMPv6 filtered out.
func listen() (*Socket, error) {
	conn, err := net.ListenIP("ip6:ipv6-icmp", &net.IPAddr{IP: net.IPv6unspecified})
	if err != nil {
		return nil, fmt.Errorf("open raw ICMPv6 socket for multicast routing: %w", err)
	}
	var filter ipv6.ICMPFilter
	filter.SetAll(true)
	if err := ipv6.NewPacketConn(conn).SetICMPFilter(&filter); err != nil {
		conn.Close()
		return nil, fmt.Errorf("filter ICMPv6 out of the multicast routing socket: %w", err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("multicast routing socket: %w", err)
	}
	return &Socket{conn: conn, raw: raw}, nil
}

// control runs f on the socket's file descriptor and returns its error.
func (s *Socket) control(f func(fd int) error) error {
	var ferr error
	if err := s.raw.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// Close releases the namespace's multicast routing: MRT6_DONE, then it
// closes the socket. Calling Close again does nothing.
func (s *Socket) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	// Closing the socket releases multicast routing too, so MRT6_DONE's
	// error (there is none while this socket holds it) is of no use.
	s.control(func(fd int) error {
		return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, mrt6Done, 1)
	})
	if err := s.conn.Close(); err != nil {
		return fmt.Errorf("close multicast routing socket: %w", err)
	}
	return nil
}
