package simnet

import (
	"net/netip"
	"time"

	"github.com/librecast/lcast/internal/control"
)

// What reach tests (relays, rings, introductions, paths) read of a node:
// its view of one peer and where it forwards a group; and time passing
// on the network's clock.

// PeerStatus returns n's view of o, as n's status lists it, and whether
// n has o as a peer at all.
func (n *Node) PeerStatus(o *Node) (control.PeerStatus, bool) {
	return peerIn(n.Status(), o)
}

// peerIn returns o's entry in st.
func peerIn(st control.Status, o *Node) (control.PeerStatus, bool) {
	want := o.Key.String()
	for _, p := range st.Peers {
		if p.PublicKey == want {
			return p, true
		}
	}
	return control.PeerStatus{}, false
}

// ForwardsTo returns the nodes of the network that n forwards group's
// packets to, as its status's forwarding lists them.
func (n *Node) ForwardsTo(group netip.Addr) []*Node {
	byKey := map[string]*Node{}
	for _, o := range n.w.all() {
		byKey[o.Key.String()] = o
	}
	var out []*Node
	for _, f := range n.Status().Forwarding {
		if f.Group != group.String() {
			continue
		}
		for _, to := range f.To {
			if o := byKey[to.PublicKey]; o != nil {
				out = append(out, o)
			}
		}
	}
	return out
}

// Running reports whether the node's daemon runs.
func (n *Node) Running() bool { return n.Daemon() != nil }

// Pass lets d of the network's clock go by in steps of step, each
// followed by pause of real time, so that the nodes' timers fire at about
// the pace of the time they cross and their messages cross the underlay
// before the next step: hold times of minutes are crossed in seconds while
// sessions, which answer each other within the pause, stay live. (One
// Advance of d would look to every node like d of silence from all its
// peers.)
func (w *Network) Pass(d, step, pause time.Duration) {
	for left := d; left > 0; left -= step {
		w.clock.Advance(min(step, left))
		time.Sleep(pause)
	}
}
