package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/librecast/lcast/peer"
)

var (
	privA, _ = peer.GenerateKey()
	privB, _ = peer.GenerateKey()
	pubA     = privA.PublicKey()
	pubB     = privB.PublicKey()
)

func TestParseValid(t *testing.T) {
	doc := `
private_key = "` + privA.String() + `"
listen_port = 4000

[[peer]]
public_key = "` + pubB.String() + `"
endpoint = "[2001:db8::1]:4000"

[[peer]]
public_key = "` + privB.String() + `"
endpoint = "example.net:51840"
`
	c, err := Parse("lcast.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if c.Interface != "lc0" || c.Key != privA || c.Port != 4000 || c.MTU != DefaultMTU || c.ControlSocket != "@lcast/lc0" {
		t.Fatalf("parsed %+v", c)
	}
	if len(c.Peers) != 2 || c.Peers[0].PublicKey != pubB || c.Peers[1].Endpoint.String() != "example.net:51840" || c.Peers[0].Endpoint.Host != "2001:db8::1" {
		t.Fatalf("peers %+v", c.Peers)
	}
}

func TestPrivateKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(path, []byte(privA.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Parse("x.toml", []byte(`private_key_file = "`+path+`"`))
	if err != nil || c.Key != privA {
		t.Fatalf("Parse = %+v, %v", c, err)
	}
}

func TestParseErrors(t *testing.T) {
	key := `private_key = "` + privA.String() + `"` + "\n"
	tests := []struct {
		name, doc, want string
	}{
		{"unknown key", key + "listen_prot = 5\n", "x.toml:2: listen_prot: unknown key"},
		{"unknown peer key", key + "[[peer]]\npublic_key = \"" + pubB.String() + "\"\nendpiont = \"a:1\"\n", "x.toml:4: peer.endpiont: unknown key"},
		{"wrong type", key + "listen_port = \"x\"\n", "x.toml:2: listen_port:"},
		{"port out of range", key + "listen_port = 70000\n", "x.toml:2: listen_port: 70000 is not a port"},
		{"bad private key", `private_key = "abc"`, "x.toml:1: private_key:"},
		{"no key", "listen_port = 1\n", "x.toml: private_key: missing"},
		{"both keys", key + "private_key_file = \"/k\"\n", "x.toml:2: private_key_file: set private_key or private_key_file, not both"},
		{"missing key file", `private_key_file = "/nonexistent/key"`, "x.toml:1: private_key_file: open /nonexistent/key: no such file or directory"},
		{"bad peer key", key + "[[peer]]\npublic_key = \"nope\"\n", "x.toml:3: peer.public_key:"},
		{"peer without key", key + "[[peer]]\nendpoint = \"a:1\"\n", "x.toml:2: peer[1].public_key: missing"},
		{"own key as peer", key + "[[peer]]\npublic_key = \"" + pubA.String() + "\"\n", "x.toml:3: peer[1].public_key: is this node's own public key"},
		{"duplicate peer", key + "[[peer]]\npublic_key = \"" + pubB.String() + "\"\n[[peer]]\npublic_key = \"" + pubB.String() + "\"\n", "x.toml:5: peer[2].public_key: duplicates peer[1]"},
		{"endpoint without port", key + "[[peer]]\npublic_key = \"" + pubB.String() + "\"\nendpoint = \"2001:db8::1\"\n", "x.toml:4: peer.endpoint:"},
		{"endpoint bad port", key + "[[peer]]\npublic_key = \"" + pubB.String() + "\"\nendpoint = \"host:0\"\n", "port must be 1-65535"},
		{"bad interface", key + "interface = \"a/b\"\n", "x.toml:2: interface: \"a/b\" is not a valid interface name"},
		{"long interface", key + "interface = \"abcdefghijklmnop\"\n", "x.toml:2: interface:"},
		{"small mtu", key + "mtu = 1000\n", "x.toml:2: mtu: 1000 is outside"},
		{"syntax", "private_key = \n", "x.toml:1:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("x.toml", []byte(tt.doc))
			if err == nil {
				t.Fatalf("Parse succeeded, want error %q", tt.want)
			}
			if !strings.HasPrefix(err.Error(), tt.want) && !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error\n got %q\nwant %q", err, tt.want)
			}
		})
	}
}

// FuzzParse: no configuration text makes Parse panic or hang.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`private_key = "` + privA.String() + `"` + "\n[[peer]]\npublic_key = \"" + pubB.String() + "\"\nendpoint = \"[::1]:5\"\n"))
	f.Add([]byte("interface = \"lc1\"\nlisten_port = 9\nmtu = 1400\n"))
	f.Add([]byte("[[peer]]\n[[peer]]\n"))
	f.Fuzz(func(t *testing.T, doc []byte) {
		c, err := Parse("fuzz.toml", doc)
		if err == nil && (c.Key.IsZero() || c.Interface == "" || c.Port == 0) {
			t.Fatalf("accepted an incomplete config: %+v", c)
		}
	})
}
