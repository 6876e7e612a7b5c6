package netlab

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// Internet is a namespace that routes unicast between sites and carries no
// multicast between them: sites reach each other only through lcast.
type Internet struct {
	NS    *Namespace
	t     testing.TB
	sites int
}

// Site is a namespace attached to the Internet.
type Site struct {
	*Namespace
	// Addr is the site's underlay address (on its eth0).
	Addr netip.Addr
}

// NewInternet creates the routing namespace.
func NewInternet(t testing.TB) *Internet {
	t.Helper()
	in := &Internet{NS: NewNamespace(t, "lcast-inet"), t: t}
	in.NS.Run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	return in
}

// AddSite creates a site namespace with eth0 at 2001:db8:N::2/64, routed
// through the Internet (which holds 2001:db8:N::1).
func (in *Internet) AddSite(prefix string) *Site {
	in.t.Helper()
	in.sites++
	n := in.sites
	s := &Site{Namespace: NewNamespace(in.t, prefix), Addr: netip.MustParseAddr(fmt.Sprintf("2001:db8:%x::2", n))}
	up := fmt.Sprintf("up%d", n)
	in.NS.Run("ip", "link", "add", up, "type", "veth", "peer", "name", "eth0", "netns", s.Name)
	// Without DAD the link-local addresses are usable at once, so that
	// neighbor discovery works from the first packet.
	in.NS.Run("sysctl", "-qw", "net.ipv6.conf."+up+".accept_dad=0")
	s.Run("sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0")
	in.NS.Run("ip", "addr", "add", fmt.Sprintf("2001:db8:%x::1/64", n), "dev", up, "nodad")
	in.NS.Run("ip", "link", "set", up, "up")
	s.Run("ip", "addr", "add", s.Addr.String()+"/64", "dev", "eth0", "nodad")
	s.Run("ip", "link", "set", "eth0", "up")
	s.Run("ip", "-6", "route", "add", "default", "via", fmt.Sprintf("2001:db8:%x::1", n))
	// Wait until the link carries packets both ways: right after the veth
	// comes up, the kernel may hold packets while it sets up the link.
	gw := fmt.Sprintf("2001:db8:%x::1", n)
	if _, ok := Poll(5*time.Second, func() bool {
		return s.Command("ping", "-6", "-c1", "-W1", gw).Run() == nil
	}); !ok {
		in.t.Fatalf("site %s cannot reach its gateway %s", s.Name, gw)
	}
	return s
}
