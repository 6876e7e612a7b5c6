package netlab

import (
	"fmt"
	"net/netip"
	"time"
)

// LAN is an Ethernet segment behind a gateway namespace: a bridge there
// (the gateway's LAN interface, at the prefix's ::1) with hosts in
// namespaces of their own, attached by veth pairs. The bridge does no MLD
// snooping, so it floods multicast like a hub: what reaches each host is
// what the gateway routes onto the LAN, not what a switch decided.
type LAN struct {
	// Interface is the gateway's LAN interface; Addr its address on it.
	Interface string
	Prefix    netip.Prefix
	Addr      netip.Addr
	Hosts     []*Namespace
	HostAddrs []netip.Addr // Hosts[i]'s address, on its eth0
}

// AddLAN creates a LAN named name (at most 15 characters) behind the
// gateway namespace gw, with the given prefix (a /64) and hosts hosts
// (prefix::10 upwards).
func AddLAN(gw *Namespace, name string, prefix netip.Prefix, hosts int) *LAN {
	gw.t.Helper()
	l := &LAN{Interface: name, Prefix: prefix, Addr: prefix.Addr().Next()}
	// Without DAD the addresses are usable at once, link-local ones too.
	gw.Run("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
	gw.Run("ip", "link", "add", "name", name, "type", "bridge", "mcast_snooping", "0")
	gw.Run("ip", "addr", "add", fmt.Sprintf("%s/%d", l.Addr, prefix.Bits()), "dev", name, "nodad")
	gw.Run("ip", "link", "set", name, "up")
	for range hosts {
		l.AddHost(gw)
	}
	return l
}

// AddHost attaches a new host namespace to the LAN, with eth0 at the next
// free address (prefix::10 for the first), and returns it.
func (l *LAN) AddHost(gw *Namespace) *Namespace {
	gw.t.Helper()
	h := NewNamespace(gw.t, fmt.Sprintf("%s-h%d", l.Interface, len(l.Hosts)+1))
	a := l.Prefix.Addr().As16()
	a[15] = byte(0x10 + len(l.Hosts))
	addr := netip.AddrFrom16(a)
	port := fmt.Sprintf("%.11s-%d", l.Interface, len(l.Hosts)+1)
	h.Run("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
	gw.Run("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.Name)
	gw.Run("ip", "link", "set", port, "master", l.Interface, "up")
	h.Run("ip", "addr", "add", fmt.Sprintf("%s/%d", addr, l.Prefix.Bits()), "dev", "eth0", "nodad")
	h.Run("ip", "link", "set", "eth0", "up")
	h.Run("ip", "-6", "route", "add", "default", "via", l.Addr.String())
	if _, ok := Poll(5*time.Second, func() bool {
		return h.Command("ping", "-6", "-c1", "-W1", l.Addr.String()).Run() == nil
	}); !ok {
		gw.t.Fatalf("LAN host %s cannot reach its gateway %s", h.Name, l.Addr)
	}
	l.Hosts = append(l.Hosts, h)
	l.HostAddrs = append(l.HostAddrs, addr)
	return h
}
