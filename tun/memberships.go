package tun

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// ifaddrmsgLen is the size of struct ifaddrmsg, which heads rtnetlink
// address messages.
const ifaddrmsgLen = 8

// WatchMemberships reports, through fn, each multicast address the kernel
// adds to the interface (joined) or removes from it, as rtnetlink announces
// them (RTNLGRP_IPV6_MCADDR, Linux 6.13 and later). The kernel announces an
// address when its first socket joins and when its last one leaves, at
// once; its MLD reports follow several milliseconds later, and only they
// carry source filters. It returns an error if the kernel offers no such
// announcements or the interface is closed; otherwise it watches in a
// goroutine until ctx is done or Close, which waits for it (so fn must not
// wait for Close). fn is called from that one goroutine.
// Announcements the kernel drops when its queue overflows are lost: they
// are hints, and the MLD reports stay authoritative.
func (ifc *Interface) WatchMemberships(ctx context.Context, fn func(group netip.Addr, joined bool)) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("rtnetlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("rtnetlink bind: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, unix.RTNLGRP_IPV6_MCADDR); err != nil {
		unix.Close(fd)
		return fmt.Errorf("subscribing to multicast address announcements: %w", err)
	}
	f := os.NewFile(uintptr(fd), "rtnetlink") // reads through Go's poller; Close ends them
	ifc.mu.Lock()
	defer ifc.mu.Unlock()
	if ifc.closing {
		f.Close()
		return fmt.Errorf("watching memberships of %s: %w", ifc.cfg.Name, net.ErrClosed)
	}
	ifc.watchers.Go(func() {
		select {
		case <-ctx.Done():
		case <-ifc.stop:
		}
		f.Close()
	})
	ifc.watchers.Go(func() { ifc.readMemberships(f, fn) })
	return nil
}

// readMemberships reads rtnetlink's announcements from f and passes on
// those of this interface, until f is closed.
func (ifc *Interface) readMemberships(f *os.File, fn func(group netip.Addr, joined bool)) {
	buf := make([]byte, 1<<16)
	for {
		n, err := f.Read(buf)
		if errors.Is(err, os.ErrClosed) {
			return
		}
		if err != nil {
			continue // ENOBUFS: announcements were dropped
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if group, joined, ok := ifc.parseMembership(m); ok {
				fn(group, joined)
			}
		}
	}
}

// parseMembership decodes an RTM_NEWMULTICAST or RTM_DELMULTICAST message
// about this interface.
func (ifc *Interface) parseMembership(m syscall.NetlinkMessage) (group netip.Addr, joined, ok bool) {
	if m.Header.Type != unix.RTM_NEWMULTICAST && m.Header.Type != unix.RTM_DELMULTICAST {
		return group, false, false
	}
	if len(m.Data) < ifaddrmsgLen || m.Data[0] != unix.AF_INET6 || int(binary.NativeEndian.Uint32(m.Data[4:8])) != ifc.index {
		return group, false, false
	}
	for attrs := m.Data[ifaddrmsgLen:]; len(attrs) >= unix.SizeofRtAttr; {
		l := int(binary.NativeEndian.Uint16(attrs[0:2]))
		if l < unix.SizeofRtAttr || l > len(attrs) {
			break
		}
		if binary.NativeEndian.Uint16(attrs[2:4]) == unix.IFA_MULTICAST && l == unix.SizeofRtAttr+16 {
			group = netip.AddrFrom16([16]byte(attrs[unix.SizeofRtAttr:l]))
			return group, m.Header.Type == unix.RTM_NEWMULTICAST, group.IsMulticast()
		}
		attrs = attrs[min((l+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1), len(attrs)):]
	}
	return group, false, false
}
