package control

import (
	"encoding/json"
	"testing"
	"time"
)

// TestStatusJSONContract checks that `lcast status --json` has at least the
// fields the contract names (docs/design.md, "Status JSON"), under those
// names: tests outside this repository read them.
func TestStatusJSONContract(t *testing.T) {
	hs := time.Date(2026, 11, 25, 5, 0, 0, 0, time.UTC)
	group := Group{Group: "ff1e::1", Mode: "exclude", Sources: []string{}}
	b, err := json.Marshal(Status{
		Interface: "lc0", Address: "fd6c::1", PublicKey: "k=", ListenPort: 51840,
		LocalGroups: []Group{group},
		Peers:       []PeerStatus{{PublicKey: "p=", Endpoint: "[2001:db8::1]:51840", LastHandshake: &hs, Groups: []Group{group}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]any
	var st struct {
		LocalGroups []map[string]any `json:"local_groups"`
		Peers       []map[string]any `json:"peers"`
	}
	if err := json.Unmarshal(b, &top); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		where  string
		object map[string]any
		keys   []string
	}{
		{"status", top, []string{"interface", "address", "public_key", "listen_port", "local_groups", "peers"}},
		{"local_groups[0]", st.LocalGroups[0], []string{"group", "mode", "sources"}},
		{"peers[0]", st.Peers[0], []string{"public_key", "endpoint", "connected", "last_handshake", "last_rx", "rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "groups"}},
	} {
		for _, k := range c.keys {
			if _, ok := c.object[k]; !ok {
				t.Errorf("%s has no %q: %s", c.where, k, b)
			}
		}
	}
}
