package simnet

import (
	"log/slog"
	"net/netip"
	"strings"
)

// What the session tests need beyond node.go and underlay.go: a host
// whose underlay address changes under its running daemon, a NAT that
// forgets its mappings, and a node that logs as lcast up --debug does.

// Move gives n's host the underlay address addr, as when a machine's
// address changes under its running daemon (DHCP, a new prefix): its
// socket stays open and now sends from addr, and what peers send to the
// old address goes nowhere. For a host behind a NAT, addr is the NAT's
// new outer address, and the NAT's mappings are gone with the old one.
func (w *Network) Move(n *Node, addr netip.Addr) {
	u := w.Net
	u.mu.Lock()
	defer u.mu.Unlock()
	h := n.host
	delete(u.byAddr, h.public)
	u.byAddr[addr] = h
	if h.nat != NoNAT {
		h.public = addr
		forgetMappings(h)
		return
	}
	for local, b := range u.sockets {
		if local.Addr() != h.addr {
			continue
		}
		moved := netip.AddrPortFrom(addr, local.Port())
		delete(u.sockets, local)
		u.sockets[moved] = b
		b.mu.Lock()
		b.local = moved
		b.mu.Unlock()
	}
	h.addr, h.public = addr, addr
}

// Remap has the NAT in front of n forget its mappings, as a home router
// that restarts or expires them does: n's next datagram out gets a new
// outer port, and what peers send to the old one is dropped.
func (w *Network) Remap(n *Node) {
	w.Net.mu.Lock()
	defer w.Net.mu.Unlock()
	forgetMappings(n.host)
}

// forgetMappings clears h's NAT state; the next mapping takes a port not
// used before. Net.mu is held.
func forgetMappings(h *host) {
	clear(h.out)
	clear(h.in)
	clear(h.allowed)
}

// Mapped returns the address and port n's NAT maps n's listen port to
// (endpoint-independent NAT), where peers that learnt it send; false if
// there is no mapping (n is not behind such a NAT, or sent nothing since
// the last Remap).
func (n *Node) Mapped() (netip.AddrPort, bool) {
	u := n.w.Net
	u.mu.Lock()
	defer u.mu.Unlock()
	h := n.host
	if h.nat != EndpointIndependent {
		return netip.AddrPort{}, false
	}
	port, ok := h.out[natKey{port: ListenPort}]
	if !ok {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(h.public, port), true
}

// Debug makes n log at debug level from its next start, as lcast up
// --debug does: its sessions' repairs among the rest. Call it before
// Start.
func (n *Node) Debug() {
	n.logger = slog.New(slog.NewTextHandler(&n.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Log returns what n's daemons logged so far.
func (n *Node) Log() string { return n.logs.String() }

// repairMsg is the debug line the exchange logs when it repairs sessions
// that answer nothing (peer/exchange.go).
const repairMsg = "repairing sessions that answer nothing"

// Repairs returns how many times n's daemons repaired sessions (new
// handshakes forced because a session seemed to carry nothing), counted
// in the log from byte offset from on; n must log at debug level (Debug).
func (n *Node) Repairs(from int) int {
	log := n.Log()
	if from > len(log) {
		return 0
	}
	return strings.Count(log[from:], repairMsg)
}
