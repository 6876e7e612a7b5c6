package control

import "time"

// Status is the daemon's state as `lcast status --json` prints it. Its field
// names are part of lcast's stable contract (docs/design.md, "Status JSON").
type Status struct {
	Interface  string `json:"interface"`
	Address    string `json:"address"`
	PublicKey  string `json:"public_key"`
	ListenPort int    `json:"listen_port"`
	// Relay tells whether this node passes multicast between its peers.
	Relay       bool         `json:"relay"`
	LocalGroups []Group      `json:"local_groups"`
	Peers       []PeerStatus `json:"peers"`
	// Forwarding tells, per group some peer subscribed to, where the
	// group's packets go and why.
	Forwarding []Forward `json:"forwarding"`
	// Drops counts packets dropped, by reason.
	Drops map[string]uint64 `json:"drops"`
	// LANs are, in gateway mode, the LAN interfaces this node is the
	// multicast router of.
	LANs []LANStatus `json:"lans,omitempty"`
}

// LANStatus is one LAN of a gateway: its MLD querier, its prefixes (the
// sources its hosts' packets may carry onward) and the groups its hosts
// listen to.
type LANStatus struct {
	Interface string `json:"interface"`
	// Querier is the address of the LAN's MLD querier; IsQuerier tells
	// whether that is this node.
	Querier   string   `json:"querier"`
	IsQuerier bool     `json:"is_querier"`
	Prefixes  []string `json:"prefixes"`
	Groups    []Group  `json:"groups"`
	// ForeignSources counts the LAN's multicast packets not routed because
	// their source does not lie on it.
	ForeignSources uint64 `json:"foreign_sources"`
}

// Forward is where the packets of a group go: to each peer in To (on a
// relay, except the peer a packet came from), and on a gateway to each LAN
// in To with listeners.
type Forward struct {
	Group string      `json:"group"`
	To    []ForwardTo `json:"to"`
}

// ForwardTo is one peer a group's packets go to, the source filter of its
// subscription and the reason it subscribed: "listeners on the peer", or
// "listeners N relay(s) beyond the peer" when it is a relay that speaks for
// other nodes (Hops is N). For a LAN of a gateway, Interface names it
// (PublicKey is empty) and the reason is "listeners on the LAN".
type ForwardTo struct {
	PublicKey string   `json:"public_key,omitempty"`
	Interface string   `json:"interface,omitempty"`
	Mode      string   `json:"mode"`
	Sources   []string `json:"sources"`
	Hops      int      `json:"hops"`
	Reason    string   `json:"reason"`
}

// Group is a multicast group with its source filter. In "include" mode,
// Sources are the sources listened to; in "exclude" mode, the sources not
// wanted (traffic from all others is).
type Group struct {
	Group   string   `json:"group"`
	Mode    string   `json:"mode"`
	Sources []string `json:"sources"`
	// Hops is, for a peer's subscription, how many relays lie between the
	// peer and the nearest listener; 0 for programs on the peer itself
	// (and for local groups).
	Hops int `json:"hops"`
}

// PeerStatus is one peer's link and subscriptions.
type PeerStatus struct {
	PublicKey string `json:"public_key"`
	Endpoint  string `json:"endpoint"`
	// Relay tells whether this node's configuration trusts the peer as a
	// relay ([[peer]] relay = true): only then may its packets carry other
	// nodes' sources.
	Relay bool `json:"relay"`
	// SaysRelay tells whether the peer says, in its subscription messages,
	// that it passes multicast on. It grants nothing: Relay does.
	SaysRelay bool `json:"says_relay"`
	// Connected tells whether traffic flows both ways: authenticated
	// traffic from the peer arrived recently and the peer acknowledged
	// this node's recently (not only that a handshake happened).
	Connected bool `json:"connected"`
	// Path is "direct" while traffic to the peer goes straight to it,
	// "relayed" while its own session carries nothing and unicast to it
	// goes through a relay this node trusts (multicast then comes
	// through the relays too).
	Path string `json:"path"`
	// Learnt tells where this node learnt of the peer: "configured" (a
	// [[peer]] table) or "introduced" (by the introducers in
	// IntroducedBy, by public key).
	Learnt        string     `json:"learnt"`
	IntroducedBy  []string   `json:"introduced_by,omitempty"`
	LastHandshake *time.Time `json:"last_handshake"` // null before the first
	// LastRx is when the last packet from the peer arrived (null before
	// the first).
	LastRx    *time.Time `json:"last_rx"`
	RxBytes   uint64     `json:"rx_bytes"`
	TxBytes   uint64     `json:"tx_bytes"`
	RxPackets uint64     `json:"rx_packets"`
	TxPackets uint64     `json:"tx_packets"`
	Groups    []Group    `json:"groups"`
	// Drops counts, by reason, the packets from or for this peer that
	// were dropped (a subset of Status.Drops).
	Drops map[string]uint64 `json:"drops"`
}
