package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/netlab"
	"github.com/librecast/lcast/peer"
)

// Unmodified programs join ff1e::1234 on lc0: status shows the group within
// 1 s of the join and drops it within 1 s of the leave.
func TestJoinAndLeaveShowInStatus(t *testing.T) {
	netlab.Require(t, "socat")
	ns := netlab.NewNamespace(t, "lcast-join")
	n := newNode(t, ns, "")
	n.up()
	programs := map[string]func() *netlab.Process{
		"go net.ListenMulticastUDP": func() *netlab.Process { return startHelper(t, ns, "join", "ff1e::1234", "lc0") },
		"socat": func() *netlab.Process {
			return startSocatRecv(t, ns, "UDP6-RECV:4242,ipv6-join-group=[ff1e::1234]:lc0", "/dev/null")
		},
	}
	for name, start := range programs {
		t.Run(name, func(t *testing.T) {
			p := start()
			joined := n.waitGroup(t, "ff1e::1234", true, time.Second)
			g, _ := n.group(t, "ff1e::1234")
			if g.Mode != "exclude" || len(g.Sources) != 0 {
				t.Fatalf("any-source join shows as %+v, want exclude with no sources", g)
			}
			p.Cmd.Process.Kill()
			left := n.waitGroup(t, "ff1e::1234", false, time.Second)
			t.Logf("%s: join to status %v, leave to status %v", name, joined.Round(time.Millisecond), left.Round(time.Millisecond))
		})
	}
}

// Logs are quiet by default: a start, a program's join and leave, and a
// stop log exactly one line for the start and one for the stop. --debug
// adds the start's steps and each change of memberships.
func TestLogLevels(t *testing.T) {
	ns := netlab.NewNamespace(t, "lcast-log")
	msgRE := regexp.MustCompile(`\bmsg=("(?:[^"\\]|\\.)*"|\S+)`)
	for _, tc := range []struct {
		flags []string
		want  []string
		exact bool // else want must be among the messages
	}{
		{[]string{}, []string{"lcast is up", "removed interface"}, true},
		{[]string{"--debug"}, []string{"created interface", "set addresses", "added multicast routes", "lcast is up",
			"local memberships changed", "removed interface"}, false},
	} {
		t.Run(fmt.Sprint(tc.flags), func(t *testing.T) {
			n := newNode(t, ns, "")
			n.flags = tc.flags
			n.up()
			p := startHelper(t, ns, "join", "ff1e::77", "lc0")
			n.waitGroup(t, "ff1e::77", true, time.Second)
			p.Stop()
			n.waitGroup(t, "ff1e::77", false, time.Second)
			n.stop(syscall.SIGTERM)
			var msgs []string
			for _, line := range strings.Split(strings.TrimSpace(n.daemon.Output()), "\n") {
				m := msgRE.FindStringSubmatch(line)
				if m == nil {
					t.Fatalf("not a log line: %q", line)
				}
				msgs = append(msgs, strings.Trim(m[1], `"`))
			}
			ok := slices.Equal(msgs, tc.want)
			if !tc.exact {
				ok = !slices.ContainsFunc(tc.want, func(w string) bool { return !slices.Contains(msgs, w) })
			}
			if !ok {
				t.Fatalf("logged %q, want %q:\n%s", msgs, tc.want, n.daemon.Output())
			}
		})
	}
}

// A source-specific join shows as include with its one source.
func TestSourceSpecificJoin(t *testing.T) {
	ns := netlab.NewNamespace(t, "lcast-ssm")
	n := newNode(t, ns, "")
	n.up()
	p := startHelper(t, ns, "join-ssm", "ff3e::8000:1", "2001:db8::1", "lc0")
	n.waitGroup(t, "ff3e::8000:1", true, time.Second)
	g, _ := n.group(t, "ff3e::8000:1")
	if g.Mode != "include" || !slices.Equal(g.Sources, []string{"2001:db8::1"}) {
		t.Fatalf("source-specific join shows as %+v, want include [2001:db8::1]", g)
	}
	p.Cmd.Process.Kill()
	n.waitGroup(t, "ff3e::8000:1", false, time.Second)
}

// SIGKILL the daemon while a program stays joined, start it again: the group
// shows again within 2 s, the program doing nothing.
func TestCrashRelearnsMemberships(t *testing.T) {
	netlab.Require(t, "socat")
	ns := netlab.NewNamespace(t, "lcast-crash")
	n := newNode(t, ns, "")
	n.up()
	startSocatRecv(t, ns, "UDP6-RECV:4242,ipv6-join-group=[ff1e::1234]:lc0", "/dev/null")
	n.waitGroup(t, "ff1e::1234", true, time.Second)

	n.daemon.Signal(syscall.SIGKILL)
	n.daemon.Wait(5 * time.Second)
	if left := leftovers(ns, "lc0"); len(left) == 0 {
		t.Fatal("lc0 did not survive the crash")
	}
	start := time.Now()
	n.up()
	n.waitGroup(t, "ff1e::1234", true, 2*time.Second-time.Since(start))
	t.Logf("restart to relearned membership: %v", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(n.daemon.Output(), "adopted") {
		t.Fatalf("restarted daemon did not adopt lc0:\n%s", n.daemon.Output())
	}
	n.stop(syscall.SIGTERM)
	if left := leftovers(ns, "lc0"); len(left) > 0 {
		t.Fatalf("left behind after SIGTERM: %v", left)
	}
}

// SIGTERM and SIGINT leave no interface, route or control socket behind.
func TestCleanStopLeavesNothing(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			ns := netlab.NewNamespace(t, "lcast-stop")
			sock := filepath.Join(t.TempDir(), "lcast.sock")
			n := newNode(t, ns, "control_socket = \""+sock+"\"\n")
			n.up()
			startHelper(t, ns, "join", "ff1e::1", "lc0")
			n.waitGroup(t, "ff1e::1", true, 5*time.Second) // setup, through the slower CLI
			n.stop(sig)
			if left := leftovers(ns, "lc0"); len(left) > 0 {
				t.Fatalf("left behind: %v", left)
			}
			if _, err := os.Stat(sock); err == nil {
				t.Fatal("control socket file left behind")
			}
			if _, err := n.tryStatus(); err == nil || !strings.Contains(err.Error(), "exit status") {
				t.Fatalf("status after stop: %v, want a failure", err)
			}
		})
	}
}

// Two daemons with the same configuration in two namespaces do not collide.
func TestNamespacesDoNotCollide(t *testing.T) {
	// The default control socket (/run/lcast/<netns>/lc0.sock), asked
	// through `lcast status`; the comment keeps newNode from setting one.
	a := newNode(t, netlab.NewNamespace(t, "lcast-a"), "# control_socket: the default\n")
	b := &node{t: t, ns: netlab.NewNamespace(t, "lcast-b"), key: a.key, cfg: a.cfg}
	a.up()
	b.up()
	startHelper(t, a.ns, "join", "ff1e::a", "lc0")
	a.waitGroup(t, "ff1e::a", true, 5*time.Second) // setup, through the slower CLI
	if _, has := b.group(t, "ff1e::a"); has {
		t.Fatal("b's status shows a's group")
	}
	if got, want := b.status(t).Address, peer.OverlayAddr(a.key.PublicKey()).String(); got != want {
		t.Fatalf("b's address %s, want %s", got, want)
	}
}

// Start-up errors: a non-zero exit, one clear message, nothing left behind.
func TestStartErrors(t *testing.T) {
	netlab.Require(t, "socat", "setpriv", "mount")
	ns := netlab.NewNamespace(t, "lcast-err")
	run := func(t *testing.T, cfg string) string {
		t.Helper()
		out, err := ns.Command(lcastBin, "up", "-c", cfg).CombinedOutput()
		if err == nil {
			t.Fatalf("lcast up succeeded:\n%s", out)
		}
		return string(out)
	}
	t.Run("interface not created by lcast", func(t *testing.T) {
		ns.Run("ip", "link", "add", "lc0", "type", "veth", "peer", "name", "lc0peer")
		defer ns.Run("ip", "link", "del", "lc0")
		n := newNode(t, ns, "")
		out := run(t, n.cfg)
		if !strings.Contains(out, "interface lc0 exists and was not created by lcast") {
			t.Fatalf("message: %s", out)
		}
		if err := ns.Command("ip", "link", "show", "lc0peer").Run(); err != nil {
			t.Fatal("the foreign interface was touched")
		}
	})
	t.Run("second daemon for the same interface", func(t *testing.T) {
		n := newNode(t, ns, "")
		n.up()
		out := run(t, n.cfg)
		if !strings.Contains(out, "another lcast daemon is already listening") {
			t.Fatalf("message: %s", out)
		}
		if _, has := n.group(t, "ff1e::1"); has || n.status(t).Interface != "lc0" {
			t.Fatal("the first daemon was disturbed")
		}
		n.stop(syscall.SIGTERM)
	})
	// Each of these names the resource and leaves nothing behind.
	for _, tc := range []struct {
		name string
		// prefix is the command that runs lcast up (its args appended).
		prefix []string
		extra  string // configuration
		want   string
		setup  func(t *testing.T) func()
	}{
		{name: "listen port in use", want: fmt.Sprintf("listen_port %d: ", listenPort), setup: func(t *testing.T) func() {
			return startSocatRecv(t, ns, fmt.Sprintf("UDP6-RECV:%d", listenPort), "/dev/null").Stop
		}},
		{name: "metrics port in use", extra: "metrics_listen = \"[::1]:9847\"\n", want: "metrics_listen [::1]:9847: ", setup: func(t *testing.T) func() {
			p := ns.Start("socat", "-d", "-d", "TCP6-LISTEN:9847,bind=[::1]", "/dev/null")
			if !p.WaitOutput("listening on", 5*time.Second) {
				t.Fatalf("socat did not listen:\n%s", p.Output())
			}
			return p.Stop
		}},
		{name: "no CAP_NET_ADMIN", prefix: []string{"setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin"}, want: "lcast needs CAP_NET_ADMIN"},
		{name: "no /dev/net/tun", prefix: []string{"unshare", "--mount", "sh", "-c", `mount -t tmpfs none /dev/net && exec "$0" "$@"`}, want: "/dev/net/tun does not exist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				defer tc.setup(t)()
			}
			n := newNode(t, ns, tc.extra)
			args := append(slices.Clone(tc.prefix), lcastBin, "up", "-c", n.cfg)
			out, err := ns.Command(args[0], args[1:]...).CombinedOutput()
			if err == nil {
				t.Fatalf("lcast up succeeded:\n%s", out)
			}
			if !strings.Contains(string(out), tc.want) || strings.Count(string(out), "lcast: ") != 1 {
				t.Fatalf("want one error naming %q, got:\n%s", tc.want, out)
			}
			if left := leftovers(ns, "lc0"); len(left) > 0 {
				t.Fatalf("left behind: %v", left)
			}
		})
	}
	t.Run("bad config", func(t *testing.T) {
		n := newNode(t, ns, "listen_prot = 5\n")
		out := run(t, n.cfg)
		doc, _ := os.ReadFile(n.cfg)
		line := 1 + strings.Count(string(doc[:strings.Index(string(doc), "listen_prot")]), "\n")
		if !strings.Contains(out, fmt.Sprintf("%s:%d: listen_prot: unknown key", n.cfg, line)) {
			t.Fatalf("message: %s", out)
		}
		if left := leftovers(ns, "lc0"); len(left) > 0 {
			t.Fatalf("left behind: %v", left)
		}
	})
}

// Someone deletes lc0 under the running daemon: it exits at once with a
// clear error, leaving no route behind.
func TestLc0DeletedUnderDaemon(t *testing.T) {
	ns := netlab.NewNamespace(t, "lcast-del")
	n := newNode(t, ns, "")
	n.up()
	ns.Run("ip", "link", "del", "lc0")
	exited, err := n.daemon.Wait(3 * time.Second)
	if !exited || err == nil {
		t.Fatalf("daemon after lc0 was deleted: exited=%v err=%v", exited, err)
	}
	if out := n.daemon.Output(); !strings.Contains(out, "interface lc0 was removed or failed under lcast") || strings.Count(out, "lcast: ") != 1 {
		t.Fatalf("want one clear error, got:\n%s", out)
	}
	if left := leftovers(ns, "lc0"); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}

// Under systemd (Type=notify) lcast reports READY=1 once lc0 is up, around
// a reload RELOADING=1 then READY=1, and STOPPING=1 when it stops. A reload
// of a broken file changes nothing.
func TestSystemdNotify(t *testing.T) {
	ns := netlab.NewNamespace(t, "lcast-notify")
	sock := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	next := func(want string) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil || strings.TrimSpace(string(buf[:n])) != want {
			t.Fatalf("want %q from lcast, got %q, %v", want, buf[:n], err)
		}
	}
	n := newNode(t, ns, "")
	n.daemon = ns.Start("env", "NOTIFY_SOCKET="+sock, lcastBin, "up", "-c", n.cfg)
	next("READY=1")
	if ns.Command("ip", "link", "show", "lc0").Run() != nil {
		t.Fatal("READY=1 came before lc0 was up")
	}
	doc, _ := os.ReadFile(n.cfg)
	n.reload(t, string(doc))
	next("RELOADING=1")
	next("READY=1")
	// A broken file is refused with the key and line, and lcast carries on.
	if err := os.WriteFile(n.cfg, append(doc, "listen_prot = 5\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	n.daemon.Signal(syscall.SIGHUP)
	if !n.daemon.WaitOutput("listen_prot: unknown key", 5*time.Second) || !strings.Contains(n.daemon.Output(), "reload: configuration not applied") {
		t.Fatalf("a broken configuration was not refused:\n%s", n.daemon.Output())
	}
	if n.status(t).Interface != "lc0" {
		t.Fatal("lcast did not carry on after refusing a configuration")
	}
	// lcast reload (systemctl reload) gets the same refusal, as its error,
	// and then applies the repaired file, saying what changed.
	if out, err := ns.Command(lcastBin, "reload", "-c", n.cfg).CombinedOutput(); err == nil || !strings.Contains(string(out), "listen_prot: unknown key") {
		t.Fatalf("lcast reload of a broken configuration: %v\n%s", err, out)
	}
	if err := os.WriteFile(n.cfg, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := ns.Command(lcastBin, "reload", "-c", n.cfg).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "reloaded: 0 peers, 0 added, 0 removed" {
		t.Fatalf("lcast reload: %v\n%s", err, out)
	}
	next("RELOADING=1")
	next("READY=1")
	n.stop(syscall.SIGTERM)
	next("STOPPING=1")
}
