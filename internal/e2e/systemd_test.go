package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/control"
	"github.com/librecast/lcast/internal/netlab"
)

// debFlag names the package TestSystemd installs; make check-deploy builds
// it and passes it.
var debFlag = flag.String("deploy.deb", "", "the lcast .deb TestSystemd boots in a container (make check-deploy passes it)")

// rootfsPackages are what the container's Debian has beyond minbase: what
// boots it with systemd as PID 1, and nothing lcast might lean on unsaid.
const rootfsPackages = "systemd,systemd-sysv"

// The .deb, installed on a minimal Debian 12 booted with systemd as PID 1
// (systemd-nspawn, the container in its own network namespace with
// /dev/net/tun bound in), works as an operator uses it: enable --now is
// ready with lc0 up; lcast status answers; systemctl reload applies a
// changed [[peer]] table while a stream to another node flows on, complete
// and once; after a SIGKILL systemd restarts lcast, which adopts lc0;
// systemctl stop removes lc0 and its routes; the journal has the start,
// reload and stop lines and nothing the unit's sandbox denied.
func TestSystemd(t *testing.T) {
	if *debFlag == "" {
		t.Skip("make check-deploy runs this test with the .deb it builds (-deploy.deb)")
	}
	netlab.Require(t, "mmdebstrap", "systemd-nspawn", "nsenter")
	deb, err := filepath.Abs(*debFlag)
	if err != nil {
		t.Fatal(err)
	}
	m := newMeshSitesOnly(t, 2)
	other := m.nodes[1]
	other.bin = plainLcast(t)
	other.up()

	start := time.Now()
	c := bootContainer(t, m.sites[0].Namespace, deb)
	t.Logf("rootfs, install and boot: %v", time.Since(start).Round(time.Millisecond))

	// The container's lcast is site 1's node: its key, site 2 its peer.
	key := m.nodes[0].key
	c.writeFile("/etc/lcast/lc0.key", key.String()+"\n")
	conf := fmt.Sprintf("private_key_file = \"/etc/lcast/lc0.key\"\nlisten_port = %d\n\n", listenPort) + peerTable(other.key, m.sites[1])
	c.writeFile("/etc/lcast/lc0.toml", conf)

	start = time.Now()
	c.must("systemctl", "enable", "--now", "lcast@lc0")
	t.Logf("systemctl enable --now lcast@lc0: ready in %v", time.Since(start).Round(time.Millisecond))
	if err := c.site.Command("ip", "link", "show", "lc0").Run(); err != nil {
		t.Fatalf("lc0 is not up once the unit is ready\n%s", c.journal())
	}
	if out := c.must("lcast", "status", "-c", "/etc/lcast/lc0.toml"); !strings.Contains(out, other.key.PublicKey().String()) {
		t.Fatalf("lcast status does not list the peer:\n%s", out)
	}

	// The stream from a program in the container's network namespace to
	// site 2 flows through the reload. The test waits until site 1 knows
	// site 2's subscription: what it checks is the reload, not start-up.
	const group, count = "ff1e::20", 4000
	recv := startHelper(t, m.sites[1].Namespace, "recv", group, "lc0", "2s")
	if took, ok := netlab.Poll(10*time.Second, func() bool { return subscribed(c.status(), other.key.PublicKey().String(), group) }); !ok {
		t.Fatalf("site 1 did not learn site 2's subscription in %v\n%s", took, c.journal())
	}
	send := m.sites[0].Start("env", helperEnv+"=send", lcastTestBinary(), group, strconv.Itoa(count), "1000", "1200")
	time.Sleep(time.Second) // a second of the stream before the reload
	added := newKey(t).PublicKey()
	c.writeFile("/etc/lcast/lc0.toml", conf+fmt.Sprintf("\n[[peer]]\npublic_key = %q\nendpoint = \"[2001:db8:ff::2]:%d\"\n", added, listenPort))
	start = time.Now()
	c.must("systemctl", "reload", "lcast@lc0")
	t.Logf("systemctl reload lcast@lc0: %v", time.Since(start).Round(time.Millisecond))
	if st := c.status(); len(st.Peers) != 2 {
		t.Fatalf("after the reload lcast has %d peers, want 2", len(st.Peers))
	}
	waitExit(t, send, 10*time.Second, "sender")
	waitExit(t, recv, 10*time.Second, "receiver")
	if res := parseReceived(t, recv.Output()); res.unique != count || res.dups != 0 || res.maxGap > 200 {
		t.Errorf("site 2 received %d of %d unique, %d duplicates, longest gap %d ms, across the reload\n%s", res.unique, count, res.dups, res.maxGap, c.journal())
	} else {
		t.Logf("across the reload site 2 received %d of %d once, longest gap %d ms", res.unique, count, res.maxGap)
	}
	t.Logf("the journal around the reload:\n%s", grepLines(c.journal(), "Reload|reload"))

	// SIGKILL: systemd restarts lcast (Restart=on-failure, 2 s later),
	// which adopts lc0 with its programs' memberships.
	pid := c.must("systemctl", "show", "-P", "MainPID", "lcast@lc0")
	index := c.site.Run("cat", "/sys/class/net/lc0/ifindex")
	c.must("systemctl", "kill", "--signal=SIGKILL", "lcast@lc0")
	took, ok := netlab.Poll(10*time.Second, func() bool {
		now, err := c.run("systemctl", "show", "-P", "MainPID", "lcast@lc0")
		return err == nil && now != pid && now != "0" && c.active()
	})
	if !ok {
		t.Fatalf("lcast did not come back after SIGKILL\n%s", c.journal())
	}
	t.Logf("restarted %v after SIGKILL (RestartSec=2s)", took.Round(time.Millisecond))
	if !strings.Contains(c.journal(), "adopted interface left by an earlier lcast") {
		t.Errorf("the restart did not adopt lc0\n%s", c.journal())
	}
	if now := c.site.Run("cat", "/sys/class/net/lc0/ifindex"); now != index {
		t.Errorf("lc0 is a new interface (index %s, was %s) after the restart", now, index)
	}
	c.must("lcast", "status", "-c", "/etc/lcast/lc0.toml")

	start = time.Now()
	c.must("systemctl", "stop", "lcast@lc0")
	t.Logf("systemctl stop lcast@lc0: %v", time.Since(start).Round(time.Millisecond))
	if left := leftovers(c.site, "lc0"); len(left) > 0 {
		t.Errorf("systemctl stop left %v", left)
	}
	journal := c.journal()
	for _, line := range []string{"Started lcast@lc0.service", "lcast is up", "Reloaded lcast@lc0.service", "msg=reloaded peers=2 added=1 removed=0", "removed interface", "Stopped lcast@lc0.service"} {
		if !strings.Contains(journal, line) {
			t.Errorf("the journal has no %q", line)
		}
	}
	if denied := grepLines(journal, `(?i)denied|not permitted|level=(ERROR|WARN)`); denied != "" {
		t.Errorf("the journal shows lcast refused something:\n%s", denied)
	}
	t.Logf("the journal of lcast@lc0:\n%s", journal)
	if t.Failed() {
		t.Logf("the container's console:\n%s", c.nspawn.Output())
	}
}

// grepLines returns the lines of text that match the regular expression.
func grepLines(text, expr string) string {
	re := regexp.MustCompile(expr)
	var out []string
	for _, line := range strings.Split(text, "\n") {
		if re.MatchString(line) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// container is a Debian booted with systemd-nspawn in a site's network
// namespace.
type container struct {
	t      *testing.T
	site   *netlab.Namespace
	root   string
	nspawn *netlab.Process
	pid1   string // the container's init, as the host sees it
}

// bootContainer unpacks a minimal Debian 12, installs deb in it with dpkg,
// and boots it with systemd in site's network namespace, with the
// capabilities lcast@.service grants and /dev/net/tun. It powers the
// container off when the test ends.
func bootContainer(t *testing.T, site *netlab.Namespace, deb string) *container {
	t.Helper()
	c := &container{t: t, site: site, root: filepath.Join(t.TempDir(), "root")}
	if err := os.Mkdir(c.root, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("tar", "-C", c.root, "-xf", debianRootfs(t)).CombinedOutput(); err != nil {
		t.Fatalf("unpack the rootfs: %v\n%s", err, out)
	}
	// The container's /tmp is a fresh tmpfs: the package goes in /var/tmp.
	data, err := os.ReadFile(deb)
	if err != nil {
		t.Fatal(err)
	}
	c.writeFile("/var/tmp/lcast.deb", string(data))
	nspawn := []string{"-q", "--register=no", "--keep-unit", "-D", c.root}
	if out, err := exec.Command("systemd-nspawn", append(nspawn, "--pipe", "dpkg", "-i", "/var/tmp/lcast.deb")...).CombinedOutput(); err != nil {
		t.Fatalf("dpkg -i in the container: %v\n%s", err, out)
	}
	// The host's PID 1 is not systemd here, hence --register=no and
	// --keep-unit. nspawn drops CAP_NET_ADMIN unless told: the unit's
	// capabilities are for the container to grant, so it must hold them.
	// nspawn runs in the host's namespaces, where it finds the cgroup
	// hierarchy (ip netns exec mounts a /sys without it).
	c.nspawn = netlab.StartCommand(t, exec.Command("systemd-nspawn", append(nspawn, "--boot",
		"--capability=CAP_NET_ADMIN,CAP_NET_RAW",
		"--network-namespace-path=/run/netns/"+site.Name,
		"--bind=/dev/net/tun")...))
	t.Cleanup(c.poweroff)
	if _, ok := netlab.Poll(20*time.Second, func() bool { c.pid1 = c.findInit(); return c.pid1 != "" }); !ok {
		t.Fatalf("systemd-nspawn started no init:\n%s", c.nspawn.Output())
	}
	// Wait for the boot to finish: the operator's commands come after it.
	// Until systemd listens on its socket, systemctl cannot ask it, and
	// says so (the state it prints then is "offline").
	var state string
	netlab.Poll(20*time.Second, func() bool {
		state, _ = c.run("systemctl", "is-system-running", "--wait")
		state = strings.TrimSpace(state)
		return state != "" && !strings.Contains(state, "offline") && !strings.Contains(state, "Failed to connect to bus")
	})
	if state != "running" {
		failed, _ := c.run("systemctl", "--failed", "--no-legend")
		t.Logf("the container booted %s; failed units:\n%s", state, failed)
	}
	return c
}

// findInit returns the PID of the container's init: nspawn's child that
// runs systemd (before it does, the child is nspawn's own).
func (c *container) findInit() string {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", c.nspawn.Cmd.Process.Pid))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, pid := range strings.Fields(string(b)) {
			if comm, err := os.ReadFile("/proc/" + pid + "/comm"); err == nil && string(comm) == "systemd\n" {
				return pid
			}
		}
	}
	return ""
}

// poweroff shuts the container down and waits for nspawn to exit.
func (c *container) poweroff() {
	if c.pid1 != "" {
		c.run("systemctl", "poweroff")
	}
	if exited, _ := c.nspawn.Wait(30 * time.Second); !exited {
		c.t.Errorf("the container did not power off in 30 s:\n%s", c.nspawn.Output())
	}
}

// run runs a command in the container (all its namespaces) and returns
// its trimmed combined output.
func (c *container) run(args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"-t", c.pid1, "-a"}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// must runs a command in the container and fails the test if it fails.
func (c *container) must(args ...string) string {
	c.t.Helper()
	out, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("%s in the container: %v\n%s\njournal:\n%s", strings.Join(args, " "), err, out, c.journal())
	}
	return out
}

// writeFile writes a file in the container, mode 0600.
func (c *container) writeFile(name, data string) {
	c.t.Helper()
	if err := os.WriteFile(filepath.Join(c.root, name), []byte(data), 0o600); err != nil {
		c.t.Fatal(err)
	}
}

// journal returns lcast@lc0's journal in the container.
func (c *container) journal() string {
	out, _ := c.run("journalctl", "--no-pager", "-o", "short-iso", "-u", "lcast@lc0")
	return out
}

func (c *container) active() bool {
	out, _ := c.run("systemctl", "is-active", "lcast@lc0")
	return out == "active"
}

// status is `lcast status --json` in the container.
func (c *container) status() *control.Status {
	c.t.Helper()
	var st control.Status
	if err := json.Unmarshal([]byte(c.must("lcast", "status", "--json", "-c", "/etc/lcast/lc0.toml")), &st); err != nil {
		c.t.Fatal(err)
	}
	return &st
}

// debianRootfs returns a tarball of a minimal Debian 12 with systemd, built
// with mmdebstrap (about 40 s) unless the cache has it:
// $LCAST_ROOTFS_CACHE, else /var/cache/lcast-test.
func debianRootfs(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("LCAST_ROOTFS_CACHE")
	if dir == "" {
		dir = "/var/cache/lcast-test"
	}
	args := []string{"--variant=minbase", "--include=" + rootfsPackages, "bookworm"}
	sum := sha256.Sum256([]byte(strings.Join(args, " ")))
	tarball := filepath.Join(dir, "debian-"+hex.EncodeToString(sum[:6])+".tar")
	if _, err := os.Stat(tarball); err == nil {
		return tarball
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	tmp := strings.TrimSuffix(tarball, ".tar") + ".tmp.tar" // mmdebstrap's format is the name's
	defer os.Remove(tmp)
	if out, err := exec.Command("mmdebstrap", append([]string{"--quiet"}, append(args, tmp)...)...).CombinedOutput(); err != nil {
		t.Fatalf("mmdebstrap: %v\n%s", err, out)
	}
	if err := os.Rename(tmp, tarball); err != nil {
		t.Fatal(err)
	}
	t.Logf("built the Debian rootfs in %v (cached in %s)", time.Since(start).Round(time.Second), tarball)
	return tarball
}
