package netlab

import (
	"fmt"
	"net/netip"
	"strings"
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

// AddNATSite creates a site behind a NAT, as at home: a router namespace
// attached to the Internet like a site (see AddSite), and behind it the
// site itself, with eth0 at the unique local fd00:N::2/64, which the
// Internet does not route. The router masquerades (nftables) what the
// site sends out, so the site reaches the Internet but nothing there can
// reach the site unless the site spoke first. Like a home router's
// firewall, it drops the UDP datagrams from the Internet that answer
// nothing sent: left to the router's stack, each would make a connection
// entry whose ports the masquerade then avoids, and a peer that sent
// first would close the mapping it is trying to open.
func (in *Internet) AddNATSite(prefix string) (site, router *Site) {
	in.t.Helper()
	return in.addNATSite(prefix, "masquerade")
}

// AddSymmetricNATSite is AddNATSite with a symmetric NAT: the router
// masquerades with a random source port for each destination (nftables
// `masquerade random`), so no one but the node the site spoke to can
// reach it at the address and port that node sees.
func (in *Internet) AddSymmetricNATSite(prefix string) (site, router *Site) {
	in.t.Helper()
	return in.addNATSite(prefix, "masquerade random")
}

// addNATSite is AddNATSite with the nftables masquerade statement masq.
func (in *Internet) addNATSite(prefix, masq string) (site, router *Site) {
	in.t.Helper()
	router = in.AddSite(prefix + "-nat")
	n := in.sites
	site = &Site{Namespace: NewNamespace(in.t, prefix), Addr: netip.MustParseAddr(fmt.Sprintf("fd00:%x::2", n))}
	gw := fmt.Sprintf("fd00:%x::1", n)
	router.Run("ip", "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", site.Name)
	router.Run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	router.Run("sysctl", "-qw", "net.ipv6.conf.lan0.accept_dad=0")
	site.Run("sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0")
	router.Run("ip", "addr", "add", gw+"/64", "dev", "lan0", "nodad")
	router.Run("ip", "link", "set", "lan0", "up")
	site.Run("ip", "addr", "add", site.Addr.String()+"/64", "dev", "eth0", "nodad")
	site.Run("ip", "link", "set", "eth0", "up")
	site.Run("ip", "-6", "route", "add", "default", "via", gw)
	nat := router.Command("nft", "-f", "-")
	nat.Stdin = strings.NewReader(`table ip6 lcastnat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth0" ` + masq + `
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		iifname "lan0" accept
		ct state established,related accept
	}
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "eth0" meta l4proto udp ct state new drop
	}
}
`)
	if out, err := nat.CombinedOutput(); err != nil {
		in.t.Fatalf("nft in %s: %v: %s", router.Name, err, out)
	}
	if _, ok := Poll(5*time.Second, func() bool {
		return site.Command("ping", "-6", "-c1", "-W1", gw).Run() == nil
	}); !ok {
		in.t.Fatalf("site %s cannot reach its NAT router %s", site.Name, gw)
	}
	return site, router
}
