package router

import "net/netip"

// Multicast scopes (RFC 4291 section 2.7, RFC 7346).
const (
	ScopeLinkLocal = 0x2
	ScopeRealm     = 0x3
	ScopeReserved  = 0xf
)

// ScopePolicy decides which multicast groups cross between peers. By default
// realm scope (3) and wider do; link scope (ff02::/16) application groups only
// when LinkLocal is set; MLD, Neighbor Discovery and the all-nodes and
// all-routers groups never do.
type ScopePolicy struct {
	LinkLocal bool
}

// solicitedNode is ff02::1:ff00:0/104, the Neighbor Discovery groups.
var solicitedNode = netip.MustParsePrefix("ff02::1:ff00:0/104")

// mldv2Routers is ff02::16, where MLDv2 reports go.
var mldv2Routers = netip.MustParseAddr("ff02::16")

// Forwards reports whether packets to group may cross between peers.
func (p ScopePolicy) Forwards(group netip.Addr) bool {
	if !group.Is6() || !group.IsMulticast() {
		return false
	}
	a := group.As16()
	scope := a[1] & 0x0f
	switch {
	case scope == ScopeReserved || scope < ScopeLinkLocal:
		return false
	case scope == ScopeLinkLocal && !p.LinkLocal:
		return false
	}
	if isAllNodesOrRouters(a) || group == mldv2Routers || solicitedNode.Contains(group) {
		return false
	}
	return true
}

// isAllNodesOrRouters matches the permanent groups ff0s::1 and ff0s::2 of
// any scope s.
func isAllNodesOrRouters(a [16]byte) bool {
	if a[1]&0xf0 != 0 {
		return false
	}
	for _, b := range a[2:15] {
		if b != 0 {
			return false
		}
	}
	return a[15] == 1 || a[15] == 2
}

// validFlags are the multicast flag nibbles RFC 4291 and RFC 3956 define:
// permanent (0), transient (1), prefix-based (3, which holds SSM ff3x::/32)
// and embedded-RP (7).
var validFlags = [...]byte{0x0, 0x1, 0x3, 0x7}

// RoutePrefixes returns the multicast prefixes to route to lc0 so that a
// program that names no interface sends to, and joins, every group of realm
// scope or wider there: per valid flag nibble F, ffF3::/16 (realm),
// ffF4::/14 (scopes 4-7) and ffF8::/13 (scopes 8-15). Link-scope groups are
// never routed to lc0: programs that use them name their interface.
func RoutePrefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, f := range validFlags {
		for _, sp := range []struct {
			scope byte
			bits  int
		}{{0x3, 16}, {0x4, 14}, {0x8, 13}} {
			var a [16]byte
			a[0], a[1] = 0xff, f<<4|sp.scope
			out = append(out, netip.PrefixFrom(netip.AddrFrom16(a), sp.bits))
		}
	}
	return out
}
