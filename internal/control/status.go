package control

import "time"

// Status is the daemon's state as `lcast status --json` prints it. Its field
// names are part of lcast's stable contract (README, DESIGN.md).
type Status struct {
	Interface   string       `json:"interface"`
	Address     string       `json:"address"`
	PublicKey   string       `json:"public_key"`
	ListenPort  int          `json:"listen_port"`
	LocalGroups []Group      `json:"local_groups"`
	Peers       []PeerStatus `json:"peers"`
	// Drops counts packets dropped, by reason.
	Drops map[string]uint64 `json:"drops"`
}

// Group is a multicast group with its source filter. In "include" mode,
// Sources are the sources listened to; in "exclude" mode, the sources not
// wanted (traffic from all others is).
type Group struct {
	Group   string   `json:"group"`
	Mode    string   `json:"mode"`
	Sources []string `json:"sources"`
}

// PeerStatus is one peer's link and subscriptions.
type PeerStatus struct {
	PublicKey     string     `json:"public_key"`
	Endpoint      string     `json:"endpoint"`
	Connected     bool       `json:"connected"`
	LastHandshake *time.Time `json:"last_handshake"` // null before the first
	RxBytes       uint64     `json:"rx_bytes"`
	TxBytes       uint64     `json:"tx_bytes"`
	RxPackets     uint64     `json:"rx_packets"`
	TxPackets     uint64     `json:"tx_packets"`
	Groups        []Group    `json:"groups"`
	// Drops counts, by reason, the packets from or for this peer that
	// were dropped (a subset of Status.Drops).
	Drops map[string]uint64 `json:"drops"`
}
