package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/control"
	"github.com/librecast/lcast/internal/netlab"
	"github.com/librecast/lcast/peer"
	"golang.org/x/net/ipv6"
)

// lcastBin is the lcast binary built for these tests.
var lcastBin string

const helperEnv = "LCAST_E2E_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helper(mode, os.Args[1:]))
	}
	dir, err := os.MkdirTemp("", "lcast-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lcastBin = filepath.Join(dir, "lcast")
	// The daemons run as users run them, without the race detector: what
	// these tests check is what lcast does with the kernel, programs and
	// the network, and what users see of it. The race detector watches
	// the daemon's code where it runs in one process (the packages' own
	// tests, under -race). LCAST_E2E_RACE=1 builds the daemons with it
	// (but not for benchmarks, which need them fast), to look for races
	// only these tests reach.
	flag.Parse()
	build := []string{"build", "-o", lcastBin}
	if os.Getenv(raceEnv) != "" && flag.Lookup("test.bench").Value.String() == "" {
		build = append(build, "-race")
		lcastRace = true
	}
	if out, err := exec.Command("go", append(build, "github.com/librecast/lcast/cmd/lcast")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building lcast: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// raceEnv, set, makes lcastBin a race-detector build.
const raceEnv = "LCAST_E2E_RACE"

// lcastRace says whether lcastBin was built with the race detector.
var lcastRace bool

// plainLcast returns lcast built without the race detector, for tests
// whose figures are only meaningful for the daemon built for use: lcastBin
// itself, unless LCAST_E2E_RACE made that a race build (then one built on
// first use, next to it).
func plainLcast(t testing.TB) string {
	t.Helper()
	if !lcastRace {
		return lcastBin
	}
	bin, err := buildPlain()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

var buildPlain = sync.OnceValues(func() (string, error) {
	bin := lcastBin + "-plain"
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/librecast/lcast/cmd/lcast").CombinedOutput(); err != nil {
		return "", fmt.Errorf("building lcast without -race: %v\n%s", err, out)
	}
	return bin, nil
})

// helper runs this test binary as a small multicast program, for tests to
// start in a namespace: "join GROUP IFACE" (net.ListenMulticastUDP) or
// "join-ssm GROUP SOURCE IFACE" (a source-specific join). It prints
// "joined" and stays joined until killed.
func helper(mode string, args []string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, err); return 1 }
	switch mode {
	case "join":
		ifi, err := net.InterfaceByName(args[1])
		if err != nil {
			return fail(err)
		}
		c, err := net.ListenMulticastUDP("udp6", ifi, &net.UDPAddr{IP: net.ParseIP(args[0]), Port: 4242})
		if err != nil {
			return fail(err)
		}
		defer c.Close()
	case "join-ssm":
		ifi, err := net.InterfaceByName(args[2])
		if err != nil {
			return fail(err)
		}
		c, err := net.ListenPacket("udp6", "[::]:4242")
		if err != nil {
			return fail(err)
		}
		defer c.Close()
		p := ipv6.NewPacketConn(c)
		if err := p.JoinSourceSpecificGroup(ifi, &net.UDPAddr{IP: net.ParseIP(args[0])}, &net.UDPAddr{IP: net.ParseIP(args[1])}); err != nil {
			return fail(err)
		}
	case "recv":
		return recvHelper(args)
	case "send":
		return sendHelper(args, false)
	case "send-zerosum":
		return sendHelper(args, true)
	case "blast":
		return blastHelper(args)
	case "sink":
		return sinkHelper(args)
	case "joinlat":
		return joinLatencyHelper(args)
	case "leavelat":
		return leaveLatencyHelper(args)
	case "joinmany":
		return joinManyHelper(args)
	case "mldinject":
		return mldInjectHelper(args)
	case "soak":
		return soakHelper(args)
	case "scrape":
		return scrapeHelper(args)
	case "gate":
		return gateHelper(args)
	case "mldquerier":
		return mldquerierHelper(args)
	case "stream":
		return streamHelper(args)
	case "tcpsink":
		return tcpSinkHelper(args)
	case "tcpsend":
		return tcpSendHelper(args)
	default:
		return fail(fmt.Errorf("unknown helper %q", mode))
	}
	fmt.Println("joined")
	select {}
}

// node is one lcast daemon in a namespace.
type node struct {
	t   testing.TB
	ns  *netlab.Namespace
	cfg string // config file path
	// sock is the control socket's path, which the test asks directly
	// (paths are shared across namespaces); empty when the config names
	// its own socket, which `lcast status` in the namespace then asks.
	sock   string
	key    peer.Key
	daemon *netlab.Process
	// upAt is when `lcast up` last started: a user's start, from which
	// user-visible checks measure.
	upAt time.Time
	// bin is the lcast binary to run; empty means lcastBin.
	bin string
	// flags are lcast up's flags; nil means --debug if LCAST_E2E_DEBUG
	// is set, else none.
	flags []string
}

func newNode(t testing.TB, ns *netlab.Namespace, extra string) *node {
	t.Helper()
	return newNodeWithKey(t, ns, newKey(t), extra)
}

func newKey(t testing.TB) peer.Key {
	t.Helper()
	key, err := peer.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func newNodeWithKey(t testing.TB, ns *netlab.Namespace, key peer.Key, extra string) *node {
	t.Helper()
	dir := t.TempDir()
	n := &node{t: t, ns: ns, key: key, cfg: filepath.Join(dir, "lcast.toml")}
	doc := fmt.Sprintf("private_key = %q\n", key)
	if !strings.Contains(extra, "control_socket") {
		n.sock = filepath.Join(dir, "lcast.sock")
		doc += fmt.Sprintf("control_socket = %q\n", n.sock)
	}
	doc += extra
	if err := os.WriteFile(n.cfg, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return n
}

// up starts the daemon and waits until it answers.
func (n *node) up() {
	n.t.Helper()
	n.upUnder()
}

// upUnder starts the daemon under the command prefix (setpriv and its
// arguments, say) and waits until it answers.
func (n *node) upUnder(prefix ...string) {
	n.t.Helper()
	n.start(prefix...)
	n.waitAnswers()
}

// start runs `lcast up` (under the command prefix, if any) without
// waiting for anything.
func (n *node) start(prefix ...string) {
	n.t.Helper()
	bin := n.bin
	if bin == "" {
		bin = lcastBin
	}
	args := append(prefix, bin, "up", "-c", n.cfg)
	if n.flags != nil {
		args = append(args, n.flags...)
	} else if os.Getenv("LCAST_E2E_DEBUG") != "" {
		args = append(args, "--debug")
	}
	n.upAt = time.Now()
	n.daemon = n.ns.Start(args[0], args[1:]...)
}

// waitAnswers waits until the daemon started answers on its control socket.
func (n *node) waitAnswers() {
	n.t.Helper()
	if _, ok := netlab.Poll(5*time.Second, func() bool { _, err := n.tryStatus(); return err == nil }); !ok {
		n.t.Fatalf("lcast did not come up in %s:\n%s", n.ns, n.daemon.Output())
	}
}

// reload writes doc as the node's configuration, signals the daemon to
// read it again, and waits until it logs that it applied it.
func (n *node) reload(t testing.TB, doc string) {
	t.Helper()
	before := strings.Count(n.daemon.Output(), `msg=reloaded`)
	if err := os.WriteFile(n.cfg, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := n.daemon.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if _, ok := netlab.Poll(5*time.Second, func() bool { return strings.Count(n.daemon.Output(), `msg=reloaded`) > before }); !ok {
		t.Fatalf("the daemon did not reload:\n%s", n.daemon.Output())
	}
}

func (n *node) tryStatus() (*control.Status, error) {
	if n.sock != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return control.GetStatus(ctx, n.sock)
	}
	out, err := n.ns.Command(lcastBin, "status", "-c", n.cfg, "--json").Output()
	if err != nil {
		return nil, err
	}
	var st control.Status
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("status --json: %w: %s", err, out)
	}
	return &st, nil
}

func (n *node) status(t testing.TB) *control.Status {
	t.Helper()
	st, err := n.tryStatus()
	if err != nil {
		t.Fatalf("lcast status: %v\ndaemon output:\n%s", err, n.daemon.Output())
	}
	return st
}

// group returns the local group g from status, if present.
func (n *node) group(t testing.TB, g string) (control.Group, bool) {
	for _, lg := range n.status(t).LocalGroups {
		if lg.Group == g {
			return lg, true
		}
	}
	return control.Group{}, false
}

// waitGroup polls status until group g is present (want) or absent, and
// returns how long that took.
func (n *node) waitGroup(t testing.TB, g string, want bool, timeout time.Duration) time.Duration {
	t.Helper()
	took, ok := netlab.Poll(timeout, func() bool { _, has := n.group(t, g); return has == want })
	if !ok {
		t.Fatalf("group %s present=%v not reached within %v; status: %+v", g, want, timeout, n.status(t).LocalGroups)
	}
	return took
}

// stop sends sig to the daemon and waits for a clean exit.
func (n *node) stop(sig syscall.Signal) {
	n.t.Helper()
	if err := n.daemon.Signal(sig); err != nil {
		n.t.Fatal(err)
	}
	exited, err := n.daemon.Wait(5 * time.Second)
	if !exited || err != nil {
		n.t.Fatalf("lcast after %v: exited=%v err=%v\n%s", sig, exited, err, n.daemon.Output())
	}
}

// startHelper starts this binary as a helper program in ns and waits until
// it has joined.
func startHelper(t testing.TB, ns *netlab.Namespace, args ...string) *netlab.Process {
	t.Helper()
	return startHelperUntil(t, ns, "joined", args...)
}

// startHelperUntil starts the helper mode args[0] of this binary in ns, and
// waits until it prints ready (unless ready is empty).
func startHelperUntil(t testing.TB, ns *netlab.Namespace, ready string, args ...string) *netlab.Process {
	t.Helper()
	p := ns.Start("env", append([]string{helperEnv + "=" + args[0], lcastTestBinary()}, args[1:]...)...)
	if ready != "" && !p.WaitOutput(ready, 5*time.Second) {
		t.Fatalf("helper %v did not print %q:\n%s", args, ready, p.Output())
	}
	return p
}

// startSocatRecv starts socat in ns reading address (a UDP6-RECV with its
// join) into sink, and waits until it has bound and joined.
func startSocatRecv(t testing.TB, ns *netlab.Namespace, address, sink string) *netlab.Process {
	t.Helper()
	p := ns.Start("socat", "-d", "-d", "-u", address, sink)
	if !p.WaitOutput("starting data transfer loop", 5*time.Second) {
		t.Fatalf("socat did not start:\n%s", p.Output())
	}
	return p
}

// lcastTestBinary is this test binary, which helper modes run as programs.
func lcastTestBinary() string { return os.Args[0] }

// leftovers lists what lcast left in ns: the interface and its routes.
func leftovers(ns *netlab.Namespace, ifname string) []string {
	var out []string
	if err := ns.Command("ip", "link", "show", ifname).Run(); err == nil {
		out = append(out, "interface "+ifname)
	}
	routes, _ := ns.Command("ip", "-6", "route", "show", "table", "all").Output()
	for _, line := range strings.Split(string(routes), "\n") {
		if strings.Contains(line, "dev "+ifname) || strings.Contains(line, "proto 108") {
			out = append(out, "route "+line)
		}
	}
	return out
}
