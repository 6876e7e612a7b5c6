// Package config reads lcast's TOML configuration file strictly: unknown keys,
// values of the wrong type and invalid values stop start-up with an error
// that names the file, the line and the key.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/librecast/lcast/internal/control"
	"github.com/librecast/lcast/peer"
	"github.com/pelletier/go-toml/v2"
)

// Defaults.
const (
	DefaultInterface  = "lc0"
	DefaultListenPort = 51840
	// DefaultMTU leaves room, under a 1500-byte underlay MTU, for the peer
	// encapsulation: outer IPv6 (40) + UDP (8) + WireGuard (32) + the
	// router's wrapping (router.WrapLen: IPv6 40 + lcast 16).
	DefaultMTU = 1364
	// MinMTU is IPv6's minimum link MTU (RFC 8200).
	MinMTU = 1280
)

// Config is lcast's configuration, after defaults and validation.
type Config struct {
	Interface      string    `toml:"interface"`
	PrivateKey     *peer.Key `toml:"private_key"`
	PrivateKeyFile string    `toml:"private_key_file"`
	ListenPort     *int      `toml:"listen_port"`
	// ControlSocket is the control API's unix socket: a path, or a name
	// starting with "@" in the abstract namespace (weaker: any local user
	// can take such a name first). Default control.DefaultSocket: under
	// /run/lcast, one directory per network namespace.
	ControlSocket string `toml:"control_socket"`
	MTU           int    `toml:"mtu"`
	// ForwardLinkScope lets link-scope (ff02::/16) application groups,
	// mDNS for instance, cross between peers. MLD, Neighbor Discovery and
	// the all-nodes and all-routers groups never do.
	ForwardLinkScope bool `toml:"forward_link_scope"`
	// MetricsListen is the TCP "host:port" on which Prometheus metrics
	// are served at /metrics; empty for none.
	MetricsListen string `toml:"metrics_listen"`
	// Relay makes the node pass multicast between its peers, and subscribe
	// at each peer for what its other peers subscribed to.
	Relay bool `toml:"relay"`
	// LANInterfaces are the LAN interfaces this node is the multicast
	// router of (gateway mode); none is host mode.
	LANInterfaces []string `toml:"lan_interfaces"`
	Peers         []Peer   `toml:"peer"`

	// Key is the private key, from private_key or private_key_file.
	Key peer.Key `toml:"-"`
	// Port is listen_port or its default.
	Port int `toml:"-"`
}

// Peer is one [[peer]] table.
type Peer struct {
	PublicKey peer.Key `toml:"public_key"`
	// Endpoint is "[addr]:port" or "host:port"; empty for a peer that
	// connects to us (behind NAT, for instance).
	Endpoint Endpoint `toml:"endpoint"`
	// Relay trusts the peer to pass on other nodes' packets: its wrapped
	// multicast may carry any node's source. Without it, only the peer's
	// own packets are taken from it, whatever it says of itself. (The
	// top-level Relay makes this node relay.)
	Relay bool `toml:"relay"`
	// LANPrefixes are the prefixes of the LANs behind the peer, a gateway:
	// its multicast may carry sources in them, as well as its own address.
	LANPrefixes []netip.Prefix `toml:"lan_prefixes"`
	// Introducer accepts, as peers, the nodes the peer introduces: those
	// it lists as its own peers, at the endpoints it sees them at.
	Introducer bool `toml:"introducer"`
}

// Endpoint is a peer's "[addr]:port" or "host:port". The zero value means
// no endpoint.
type Endpoint struct {
	Host string // an IP address or a DNS name
	Port int
}

// UnmarshalText validates the endpoint's form.
func (e *Endpoint) UnmarshalText(text []byte) error {
	host, port, err := splitHostPort(string(text))
	if err != nil {
		return fmt.Errorf("endpoint %q: %w", text, err)
	}
	if host == "" {
		return fmt.Errorf("endpoint %q: no host", text)
	}
	*e = Endpoint{Host: host, Port: port}
	return nil
}

// splitHostPort splits "host:port" or "[addr]:port" (host may be empty)
// and checks the port.
func splitHostPort(s string) (string, int, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, errors.New(`want "[addr]:port" or "host:port"`)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", 0, errors.New("port must be 1-65535")
	}
	return host, n, nil
}

// IsZero reports whether no endpoint is set.
func (e Endpoint) IsZero() bool { return e.Host == "" }

// String returns the endpoint as "host:port" ("[addr]:port" for IPv6).
func (e Endpoint) String() string {
	if e.IsZero() {
		return ""
	}
	return net.JoinHostPort(e.Host, strconv.Itoa(e.Port))
}

// Error is a configuration error, positioned where it is known.
type Error struct {
	File string
	Line int // 0 when not known
	Key  string
	Msg  string
	Err  error // the cause, when there is one to match with errors.Is
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		fmt.Fprintf(&b, ": %s", e.Key)
	}
	fmt.Fprintf(&b, ": %s", e.Msg)
	return b.String()
}

// Load reads and validates the configuration file at path.
func Load(path string) (*Config, error) {
	doc, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, doc)
}

// Parse validates doc, read from file (named in errors).
func Parse(file string, doc []byte) (*Config, error) {
	c, err := decode(file, doc)
	if err != nil {
		return nil, err
	}
	if err := c.validate(file, doc); err != nil {
		return nil, err
	}
	return c, nil
}

// ControlSocket returns the control socket of the configuration file at
// path, for clients of the running daemon: it decodes the file as strictly
// as Load but neither reads private_key_file nor checks the other keys.
func ControlSocket(path string) (string, error) {
	doc, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read config: %w", err)
	}
	c, err := decode(path, doc)
	if err != nil {
		return "", err
	}
	if err := c.validateControl(path, doc); err != nil {
		return "", err
	}
	return c.ControlSocket, nil
}

// decode decodes doc strictly.
func decode(file string, doc []byte) (*Config, error) {
	var c Config
	dec := toml.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, decodeError(file, err)
	}
	return &c, nil
}

func decodeError(file string, err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) && len(strict.Errors) > 0 {
		e := strict.Errors[0]
		row, _ := e.Position()
		return &Error{File: file, Line: row, Key: strings.Join(e.Key(), "."), Msg: "unknown key"}
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, _ := de.Position()
		return &Error{File: file, Line: row, Key: strings.Join(de.Key(), "."), Msg: de.Error()}
	}
	return &Error{File: file, Msg: err.Error()}
}

// validateControl checks and defaults what clients need: the interface and
// the control socket.
func (c *Config) validateControl(file string, doc []byte) error {
	if c.Interface == "" {
		c.Interface = DefaultInterface
	}
	if len(c.Interface) > 15 || strings.ContainsAny(c.Interface, "/ \t\n:") || c.Interface == "." || c.Interface == ".." {
		return &Error{File: file, Line: lineOf(doc, "interface", c.Interface), Key: "interface",
			Msg: fmt.Sprintf("%q is not a valid interface name (at most 15 characters, no '/', ':' or spaces)", c.Interface)}
	}
	if c.ControlSocket == "" {
		sock, err := control.DefaultSocket(c.Interface)
		if err != nil {
			return &Error{File: file, Key: "control_socket", Msg: fmt.Sprintf("no default: %v; set control_socket", err)}
		}
		c.ControlSocket = sock
	}
	return nil
}

func (c *Config) validate(file string, doc []byte) error {
	fail := func(key, needle, format string, args ...any) error {
		return &Error{File: file, Line: lineOf(doc, key, needle), Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	if err := c.validateControl(file, doc); err != nil {
		return err
	}
	switch {
	case c.PrivateKey != nil && c.PrivateKeyFile != "":
		return fail("private_key_file", "", "set private_key or private_key_file, not both")
	case c.PrivateKey != nil:
		c.Key = *c.PrivateKey
	case c.PrivateKeyFile != "":
		key, err := ReadKeyFile(c.PrivateKeyFile)
		if err != nil {
			return &Error{File: file, Line: lineOf(doc, "private_key_file", ""), Key: "private_key_file", Msg: err.Error(), Err: err}
		}
		c.Key = key
	default:
		return &Error{File: file, Key: "private_key", Msg: "missing: set private_key or private_key_file (make one with `lcast genkey`)"}
	}
	if c.Key.IsZero() {
		return fail("private_key", "", "the all-zero key is not a private key")
	}
	c.Port = DefaultListenPort
	if c.ListenPort != nil {
		c.Port = *c.ListenPort
		if c.Port < 1 || c.Port > 65535 {
			return fail("listen_port", "", "%d is not a port (1-65535)", c.Port)
		}
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.MTU < MinMTU || c.MTU > 65535 {
		return fail("mtu", "", "%d is outside %d-65535 (IPv6 needs at least %d)", c.MTU, MinMTU, MinMTU)
	}
	if c.MetricsListen != "" {
		if _, _, err := splitHostPort(c.MetricsListen); err != nil {
			return fail("metrics_listen", "", "%q: %v", c.MetricsListen, err)
		}
	}
	if err := c.validateLANs(file, doc); err != nil {
		return err
	}
	own := c.Key.PublicKey()
	seen := map[peer.Key]int{}
	for i, p := range c.Peers {
		key := fmt.Sprintf("peer[%d].public_key", i+1)
		switch {
		case p.PublicKey.IsZero():
			return &Error{File: file, Line: lineOfNth(doc, "[[peer]]", i), Key: key, Msg: "missing"}
		case p.PublicKey == own:
			return fail(key, p.PublicKey.String(), "is this node's own public key")
		}
		if j, dup := seen[p.PublicKey]; dup {
			return &Error{File: file, Line: lineOfNth(doc, p.PublicKey.String(), 1), Key: key,
				Msg: fmt.Sprintf("duplicates peer[%d]", j+1)}
		}
		seen[p.PublicKey] = i
	}
	return c.validatePrefixes(file, doc)
}

// validateLANs checks lan_interfaces: each names an existing multicast
// interface other than lc0, once.
func (c *Config) validateLANs(file string, doc []byte) error {
	for i, name := range c.LANInterfaces {
		fail := func(format string, args ...any) error {
			return &Error{File: file, Line: lineOf(doc, "lan_interfaces", ""), Key: "lan_interfaces",
				Msg: fmt.Sprintf("%q: ", name) + fmt.Sprintf(format, args...)}
		}
		switch {
		case name == c.Interface:
			return fail("is lcast's own interface; name the LAN interfaces behind this node")
		case slices.Contains(c.LANInterfaces[:i], name):
			return fail("is named twice")
		}
		ifc, err := net.InterfaceByName(name)
		switch {
		case err != nil:
			return fail("no such interface")
		case ifc.Flags&net.FlagMulticast == 0:
			return fail("is not a multicast interface")
		}
	}
	return nil
}

// validatePrefixes checks the peers' lan_prefixes: unicast IPv6 prefixes,
// written as prefixes (no host bits), outside the overlay and link-local
// ranges, and no two peers' overlapping (a LAN lies behind one gateway).
func (c *Config) validatePrefixes(file string, doc []byte) error {
	type owned struct {
		prefix netip.Prefix
		peer   int
	}
	var all []owned
	for i, p := range c.Peers {
		key := fmt.Sprintf("peer[%d].lan_prefixes", i+1)
		for _, pfx := range p.LANPrefixes {
			fail := func(format string, args ...any) error {
				return &Error{File: file, Line: lineOf(doc, "lan_prefixes", pfx.Addr().String()), Key: key,
					Msg: fmt.Sprintf("%s: ", pfx) + fmt.Sprintf(format, args...)}
			}
			a := pfx.Addr()
			switch {
			case !a.Is6() || a.Is4In6():
				return fail("not an IPv6 prefix")
			case pfx != pfx.Masked():
				return fail("has host bits set (the prefix is %s)", pfx.Masked())
			case a.IsMulticast() || a.IsLinkLocalUnicast() || a.IsUnspecified() || a.IsLoopback() || pfx.Bits() < 8:
				return fail("is not a prefix of LAN hosts' unicast addresses")
			case pfx.Overlaps(peer.OverlayPrefix):
				return fail("overlaps the overlay prefix %s", peer.OverlayPrefix)
			}
			for _, o := range all {
				if o.prefix.Overlaps(pfx) {
					return fail("overlaps %s of peer[%d]: a LAN lies behind one gateway", o.prefix, o.peer+1)
				}
			}
			all = append(all, owned{pfx, i})
		}
	}
	return nil
}

// lineOf returns the line of the first assignment to key whose line also
// holds needle, or 0 when there is none.
func lineOf(doc []byte, key, needle string) int {
	bare := key[strings.LastIndexByte(key, '.')+1:]
	for i, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), bare) && strings.Contains(line, needle) {
			return i + 1
		}
	}
	return 0
}

// lineOfNth returns the line of the n'th (from 0) occurrence of s, or 0.
func lineOfNth(doc []byte, s string, n int) int {
	for i, line := range strings.Split(string(doc), "\n") {
		if strings.Contains(line, s) {
			if n == 0 {
				return i + 1
			}
			n--
		}
	}
	return 0
}

// NeedRestart returns the keys whose values differ between c and next and
// that a running daemon cannot change: everything but the [[peer]] tables.
func (c *Config) NeedRestart(next *Config) []string {
	var keys []string
	for _, k := range []struct {
		key  string
		same bool
	}{
		{"interface", c.Interface == next.Interface},
		{"private_key", c.Key == next.Key},
		{"listen_port", c.Port == next.Port},
		{"control_socket", c.ControlSocket == next.ControlSocket},
		{"mtu", c.MTU == next.MTU},
		{"forward_link_scope", c.ForwardLinkScope == next.ForwardLinkScope},
		{"metrics_listen", c.MetricsListen == next.MetricsListen},
		{"relay", c.Relay == next.Relay},
		{"lan_interfaces", slices.Equal(c.LANInterfaces, next.LANInterfaces)},
	} {
		if !k.same {
			keys = append(keys, k.key)
		}
	}
	return keys
}
