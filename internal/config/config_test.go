package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/librecast/lcast/internal/control"
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
metrics_listen = "[::1]:9847"
relay = true

[[peer]]
public_key = "` + pubB.String() + `"
endpoint = "[2001:db8::1]:4000"
relay = true

[[peer]]
public_key = "` + privB.String() + `"
endpoint = "example.net:51840"
`
	c, err := Parse("lcast.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	sock, err := control.DefaultSocket("lc0")
	if err != nil {
		t.Fatal(err)
	}
	if c.Interface != "lc0" || c.Key != privA || c.Port != 4000 || c.MTU != DefaultMTU || c.ControlSocket != sock || c.MetricsListen != "[::1]:9847" || !c.Relay {
		t.Fatalf("parsed %+v", c)
	}
	if len(c.Peers) != 2 || c.Peers[0].PublicKey != pubB || c.Peers[1].Endpoint.String() != "example.net:51840" || c.Peers[0].Endpoint.Host != "2001:db8::1" ||
		!c.Peers[0].Relay || c.Peers[1].Relay {
		t.Fatalf("peers %+v", c.Peers)
	}
}

// A key file that group or others can read or write is refused, naming
// the file and the fix; one only its owner can is read.
func TestPrivateKeyFile(t *testing.T) {
	for _, tc := range []struct {
		mode os.FileMode
		want error
	}{
		{0o600, nil},
		{0o400, nil},
		{0o644, ErrKeyFileMode},
		{0o640, ErrKeyFileMode},
		{0o602, ErrKeyFileMode},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "key")
			if err := os.WriteFile(path, []byte(privA.String()+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			os.Chmod(path, tc.mode)
			c, err := Parse("x.toml", []byte(`private_key_file = "`+path+`"`))
			if tc.want == nil {
				if err != nil || c.Key != privA {
					t.Fatalf("Parse = %+v, %v", c, err)
				}
				return
			}
			want := fmt.Sprintf("x.toml:1: private_key_file: %s is accessible by group or others (mode %04o); chmod 600 it", path, tc.mode)
			if !errors.Is(err, tc.want) || err.Error() != want {
				t.Fatalf("error %v\nwant %s", err, want)
			}
		})
	}
	if os.Geteuid() == 0 {
		path := filepath.Join(t.TempDir(), "key")
		if err := os.WriteFile(path, []byte(privA.String()+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chown(path, 65534, 65534)
		if _, err := Parse("x.toml", []byte(`private_key_file = "`+path+`"`)); !errors.Is(err, ErrKeyFileOwner) {
			t.Fatalf("a key file of nobody's: %v, want ErrKeyFileOwner", err)
		}
	}
}

// ControlSocket finds the socket without reading the key file, which may
// be missing or unreadable to the caller, but still refuses unknown keys.
func TestControlSocket(t *testing.T) {
	dir := t.TempDir()
	write := func(doc string) string {
		path := filepath.Join(dir, "lcast.toml")
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	def, err := control.DefaultSocket("lc1")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ doc, want string }{
		{"private_key_file = \"/nonexistent/key\"\ninterface = \"lc1\"\n", def},
		{"private_key_file = \"/nonexistent/key\"\ncontrol_socket = \"@lcast-x\"\n", "@lcast-x"},
	} {
		if got, err := ControlSocket(write(tc.doc)); err != nil || got != tc.want {
			t.Errorf("ControlSocket of %q = %q, %v; want %q", tc.doc, got, err, tc.want)
		}
	}
	if _, err := ControlSocket(write("private_key_file = \"/k\"\ncontrol_sockett = \"x\"\n")); err == nil || !strings.Contains(err.Error(), "control_sockett: unknown key") {
		t.Errorf("an unknown key: %v", err)
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
		{"metrics without port", key + "metrics_listen = \"127.0.0.1\"\n", "x.toml:2: metrics_listen: \"127.0.0.1\": want"},
		{"metrics bad port", key + "metrics_listen = \"[::1]:http\"\n", "x.toml:2: metrics_listen: \"[::1]:http\": port must be 1-65535"},
		{"LAN is lc0", key + "lan_interfaces = [\"lc0\"]\n", "x.toml:2: lan_interfaces: \"lc0\": is lcast's own interface"},
		{"no such LAN", key + "lan_interfaces = [\"nope0\"]\n", "x.toml:2: lan_interfaces: \"nope0\": no such interface"},
		{"LAN not multicast", key + "lan_interfaces = [\"lo\"]\n", "x.toml:2: lan_interfaces: \"lo\": is not a multicast interface"},
		{"LAN prefix not a prefix", key + "[[peer]]\npublic_key = \"" + pubB.String() + "\"\n" + "lan_prefixes = [\"2001:db8::1\"]\n", "x.toml:4: peer.lan_prefixes:"},
		{"LAN prefix host bits", key + "[[peer]]\npublic_key = \"" + pubB.String() + "\"\n" + "lan_prefixes = [\"2001:db8:1::1/64\"]\n", "x.toml:4: peer[1].lan_prefixes: 2001:db8:1::1/64: has host bits set (the prefix is 2001:db8:1::/64)"},
		{"LAN prefix IPv4", key + "[[peer]]\npublic_key = \"" + pubB.String() + "\"\n" + "lan_prefixes = [\"10.0.0.0/8\"]\n", "x.toml:4: peer[1].lan_prefixes: 10.0.0.0/8: not an IPv6 prefix"},
		{"LAN prefix multicast", key + "[[peer]]\npublic_key = \"" + pubB.String() + "\"\n" + "lan_prefixes = [\"ff1e::/16\"]\n", "x.toml:4: peer[1].lan_prefixes: ff1e::/16: is not a prefix of LAN hosts' unicast addresses"},
		{"LAN prefix link-local", key + "[[peer]]\npublic_key = \"" + pubB.String() + "\"\n" + "lan_prefixes = [\"fe80::/64\"]\n", "is not a prefix of LAN hosts' unicast addresses"},
		{"LAN prefix in the overlay", key + "[[peer]]\npublic_key = \"" + pubB.String() + "\"\n" + "lan_prefixes = [\"fd6c:6361:7374::/64\"]\n", "overlaps the overlay prefix"},
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

// multicastInterface returns the name of one of this machine's multicast
// interfaces other than lc0, or skips the test.
func multicastInterface(t *testing.T) string {
	ifcs, _ := net.Interfaces()
	for _, ifc := range ifcs {
		if ifc.Flags&net.FlagMulticast != 0 && ifc.Name != DefaultInterface {
			return ifc.Name
		}
	}
	t.Skip("this machine has no multicast interface to name in lan_interfaces")
	return ""
}

// Gateway mode's keys: the LAN interfaces, once each, and the peers' LAN
// prefixes, which must not overlap, even across peers.
func TestLANKeys(t *testing.T) {
	lan := multicastInterface(t)
	key := "private_key = \"" + privA.String() + "\"\n"
	privC, _ := peer.GenerateKey()
	doc := key + "lan_interfaces = [\"" + lan + "\"]\n" +
		"[[peer]]\npublic_key = \"" + pubB.String() + "\"\nlan_prefixes = [\"2001:db8:1::/64\", \"fd00:1::/48\"]\n" +
		"[[peer]]\npublic_key = \"" + privC.PublicKey().String() + "\"\nlan_prefixes = [\"2001:db8:2::/64\"]\n"
	c, err := Parse("x.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.LANInterfaces, []string{lan}) || len(c.Peers[0].LANPrefixes) != 2 || c.Peers[1].LANPrefixes[0] != netip.MustParsePrefix("2001:db8:2::/64") {
		t.Fatalf("parsed %v, %+v", c.LANInterfaces, c.Peers)
	}
	for _, tc := range []struct{ doc, want string }{
		{strings.Replace(doc, `["`+lan+`"]`, `["`+lan+`", "`+lan+`"]`, 1), "x.toml:2: lan_interfaces: \"" + lan + "\": is named twice"},
		{strings.Replace(doc, "2001:db8:2::/64", "2001:db8::/32", 1), "x.toml:8: peer[2].lan_prefixes: 2001:db8::/32: overlaps 2001:db8:1::/64 of peer[1]: a LAN lies behind one gateway"},
	} {
		if _, err := Parse("x.toml", []byte(tc.doc)); err == nil || err.Error() != tc.want {
			t.Errorf("error\n got %v\nwant %s", err, tc.want)
		}
	}
	next, _ := Parse("x.toml", []byte(key))
	if got := c.NeedRestart(next); !slices.Equal(got, []string{"lan_interfaces"}) {
		t.Errorf("NeedRestart without the LANs = %v", got)
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

func TestNeedRestart(t *testing.T) {
	base := "private_key = \"" + privA.String() + "\"\n"
	parse := func(doc string) *Config {
		c, err := Parse("lcast.toml", []byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	old := parse(base)
	for _, tc := range []struct {
		name string
		doc  string
		want []string
	}{
		{"nothing changed", base, nil},
		{"a peer added", base + "[[peer]]\npublic_key = \"" + pubB.String() + "\"\n", nil},
		{"port and MTU", base + "listen_port = 5\nmtu = 1400\n", []string{"listen_port", "mtu"}},
		{"interface, and so the control socket", base + "interface = \"lc1\"\n", []string{"interface", "control_socket"}},
		{"link scope", base + "forward_link_scope = true\n", []string{"forward_link_scope"}},
		{"metrics", base + "metrics_listen = \"[::1]:9847\"\n", []string{"metrics_listen"}},
		{"relay", base + "relay = true\n", []string{"relay"}},
		{"a peer trusted as a relay", base + "[[peer]]\npublic_key = \"" + pubB.String() + "\"\nrelay = true\n", nil},
	} {
		if got := old.NeedRestart(parse(tc.doc)); !slices.Equal(got, tc.want) {
			t.Errorf("%s: NeedRestart = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// tomlKeys returns the TOML keys of struct type typ's fields.
func tomlKeys(typ reflect.Type) []string {
	var keys []string
	for f := range typ.Fields() {
		if k, _, _ := strings.Cut(f.Tag.Get("toml"), ","); k != "" && k != "-" {
			keys = append(keys, k)
		}
	}
	return keys
}

// lcast.toml(5) documents every key there is, and no other, and its
// example is a valid configuration.
func TestManPageMatchesKeys(t *testing.T) {
	doc, err := os.ReadFile("../../deploy/man/lcast.toml.5")
	if err != nil {
		t.Fatal(err)
	}
	page := string(doc)
	keysSection := page[strings.Index(page, ".SH KEYS"):strings.Index(page, ".SH RELOAD")]
	var documented []string
	for _, m := range regexp.MustCompile(`(?m)^\.TP\n\.B (\S+)\n`).FindAllStringSubmatch(keysSection, -1) {
		documented = append(documented, m[1])
	}
	var want []string
	for _, k := range tomlKeys(reflect.TypeFor[Config]()) {
		if k == "peer" {
			k = "[[peer]]"
		}
		want = append(want, k)
	}
	want = append(want, tomlKeys(reflect.TypeFor[Peer]())...)
	if !slices.Equal(documented, want) {
		t.Errorf("lcast.toml(5) documents keys %v; the configuration has %v", documented, want)
	}
	example := regexp.MustCompile(`(?s)\.SH EXAMPLE\n\.RS\n\.nf\n(.*?)\.fi\n`).FindStringSubmatch(page)
	if example == nil {
		t.Fatal("lcast.toml(5) has no example")
	}
	parseExample(t, "lcast.toml(5)", strings.ReplaceAll(example[1], `\-`, "-"))
}

// The example configuration installed with lcast is valid.
func TestExampleFile(t *testing.T) {
	doc, err := os.ReadFile("../../deploy/lcast.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	parseExample(t, "lcast.toml.example", string(doc))
}

// parseExample parses an example that reads its private key from
// /etc/lcast/lc0.key, with a key file of the test's in its place.
func parseExample(t *testing.T, name, doc string) {
	t.Helper()
	key := filepath.Join(t.TempDir(), "lc0.key")
	if err := os.WriteFile(key, []byte(privA.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(doc, `"/etc/lcast/lc0.key"`) {
		t.Fatalf("%s does not read /etc/lcast/lc0.key", name)
	}
	doc = strings.Replace(doc, `"/etc/lcast/lc0.key"`, strconv.Quote(key), 1)
	c, err := Parse(name, []byte(doc))
	if err != nil {
		t.Fatalf("%s: %v\n%s", name, err, doc)
	}
	if len(c.Peers) == 0 {
		t.Errorf("%s has no peer", name)
	}
}
