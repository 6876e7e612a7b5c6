package e2e

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/netlab"
)

// The image and the manifest naming it, which make image builds and make
// check-deploy passes.
var (
	imageFlag    = flag.String("deploy.image", "", "lcast's image, an oci-archive, that TestImage runs with podman (make check-deploy passes it)")
	manifestFlag = flag.String("deploy.manifest", "", "the DaemonSet manifest that must name the image (make check-deploy passes it)")
)

// lcast's image runs under podman as the DaemonSet runs it: the genkey init
// container's command makes a key, 0600, on a read-only root; lcast with
// NET_ADMIN alone and /dev/net/tun, in a test namespace, brings lc0 up,
// answers status, and a stop (SIGTERM) removes lc0 and its routes. The
// manifest names exactly the image the archive holds. The image runs
// gateway mode too (it needs no nft command), with NET_RAW added: its
// nftables table appears, status lists the LAN, and the stop removes the
// table, with no complaint in the log.
func TestImage(t *testing.T) {
	if *imageFlag == "" || *manifestFlag == "" {
		t.Skip("make check-deploy runs this test with the image and manifest make image builds (-deploy.image, -deploy.manifest)")
	}
	netlab.Require(t, "podman", "runc")
	ref := imageRef(t, *imageFlag)
	manifest, err := os.ReadFile(*manifestFlag)
	if err != nil {
		t.Fatal(err)
	}
	named := regexp.MustCompile(`(?m)^\s*image:\s*(\S+)\s*$`).FindAllStringSubmatch(string(manifest), -1)
	if len(named) == 0 {
		t.Fatalf("%s names no image", *manifestFlag)
	}
	for _, m := range named {
		if m[1] != ref {
			t.Errorf("%s names image %s, want %s, the image built", *manifestFlag, m[1], ref)
		}
	}

	p := newPodman(t)
	start := time.Now()
	if out := p.must("load", "-i", *imageFlag); !strings.Contains(out, "Loaded image: "+ref) {
		t.Fatalf("podman load did not name the image %s:\n%s", ref, out)
	}
	t.Logf("podman load: %v", time.Since(start).Round(time.Millisecond))
	var inspect []struct {
		Config struct {
			Entrypoint, Cmd []string
			Labels          map[string]string
		}
	}
	if err := json.Unmarshal([]byte(p.must("image", "inspect", ref)), &inspect); err != nil || len(inspect) != 1 {
		t.Fatalf("podman image inspect: %v", err)
	}
	cfg := inspect[0].Config
	if !slices.Equal(cfg.Entrypoint, []string{"/usr/bin/lcast"}) || !slices.Equal(cfg.Cmd, []string{"up", "-c", "/etc/lcast/lc0.toml"}) {
		t.Errorf("the image runs %q %q, want lcast up -c /etc/lcast/lc0.toml", cfg.Entrypoint, cfg.Cmd)
	}
	for _, l := range []string{"title", "version", "revision", "created", "source"} {
		if cfg.Labels["org.opencontainers.image."+l] == "" {
			t.Errorf("the image has no label org.opencontainers.image.%s: %v", l, cfg.Labels)
		}
	}

	// The init container's command, as the DaemonSet runs it.
	dir := t.TempDir()
	keys, conf := filepath.Join(dir, "key"), filepath.Join(dir, "etc")
	for _, d := range []string{keys, conf} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	pub := p.must("run", "--rm", "--read-only", "--cap-drop", "all", "-v", keys+":/var/lib/lcast", ref, "genkey", "--file", "/var/lib/lcast/lc0.key")
	if fi, err := os.Stat(filepath.Join(keys, "lc0.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("genkey --file in the image: %v, %v", fi, err)
	}
	if again := p.must("run", "--rm", "--read-only", "--cap-drop", "all", "-v", keys+":/var/lib/lcast", ref, "genkey", "--file", "/var/lib/lcast/lc0.key"); again != pub {
		t.Errorf("the second start made a new key: public key %s, then %s", pub, again)
	}
	doc := fmt.Sprintf("private_key_file = \"/var/lib/lcast/lc0.key\"\nlisten_port = %d\n", listenPort)
	if err := os.WriteFile(filepath.Join(conf, "lc0.toml"), []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}

	ns := netlab.NewNamespace(t, "lcast-image")
	start = time.Now()
	p.must("run", "-d", "--name", "lcast", "--read-only", "--cap-drop", "all", "--cap-add", "NET_ADMIN",
		"--device", "/dev/net/tun", "--network", "ns:/run/netns/"+ns.Name,
		"-v", conf+":/etc/lcast:ro", "-v", keys+":/var/lib/lcast:ro", ref)
	if _, ok := netlab.Poll(10*time.Second, func() bool { return ns.Command("ip", "link", "show", "lc0", "up").Run() == nil }); !ok {
		t.Fatalf("lc0 did not come up:\n%s", p.logs())
	}
	t.Logf("podman run: lc0 up %v after the start", time.Since(start).Round(time.Millisecond))
	if out := p.must("exec", "lcast", "/usr/bin/lcast", "status", "-c", "/etc/lcast/lc0.toml"); !strings.Contains(out, pub) {
		t.Errorf("lcast status in the container does not give the node's key %s:\n%s", pub, out)
	}
	start = time.Now()
	p.must("stop", "lcast")
	t.Logf("podman stop: %v", time.Since(start).Round(time.Millisecond))
	if code := p.must("inspect", "-f", "{{.State.ExitCode}}", "lcast"); code != "0" {
		t.Errorf("lcast exited %s on podman stop", code)
	}
	if left := leftovers(ns, "lc0"); len(left) > 0 {
		t.Errorf("podman stop left %v", left)
	}
	if logs := p.logs(); !strings.Contains(logs, "removed interface") {
		t.Errorf("lcast did not log its clean stop:\n%s", logs)
	} else {
		t.Logf("lcast's log in the container:\n%s", logs)
	}
	p.must("rm", "lcast")

	// Gateway mode, of a LAN in another namespace.
	gw := netlab.NewNamespace(t, "lcast-image-gw")
	gw.Run("ip", "link", "add", "lan0", "type", "veth", "peer", "name", "host0")
	for _, dev := range []string{"lan0", "host0"} {
		gw.Run("ip", "link", "set", dev, "up")
	}
	gw.Run("ip", "addr", "add", "fe80::1/64", "dev", "lan0", "nodad")
	gw.Run("ip", "addr", "add", "2001:db8:101::1/64", "dev", "lan0", "nodad")
	doc += "lan_interfaces = [\"lan0\"]\n"
	if err := os.WriteFile(filepath.Join(conf, "lc0.toml"), []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	p.must("run", "-d", "--name", "lcast", "--read-only", "--cap-drop", "all", "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW",
		"--device", "/dev/net/tun", "--network", "ns:/run/netns/"+gw.Name,
		"-v", conf+":/etc/lcast:ro", "-v", keys+":/var/lib/lcast:ro", ref)
	if _, ok := netlab.Poll(10*time.Second, func() bool {
		return gw.Command("nft", "list", "table", "ip6", "lcast_lc0").Run() == nil
	}); !ok {
		t.Fatalf("the gateway's nftables table did not appear:\n%s", p.logs())
	}
	if out := p.must("exec", "lcast", "/usr/bin/lcast", "status", "-c", "/etc/lcast/lc0.toml"); !strings.Contains(out, "lan lan0") {
		t.Errorf("lcast status of the gateway in the container lists no LAN:\n%s", out)
	}
	p.must("stop", "lcast")
	if out, _ := gw.Command("nft", "list", "tables").Output(); len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("podman stop left nftables tables: %s", out)
	}
	if logs := p.logs(); strings.Contains(logs, "level=WARN") || strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, "removed interface") {
		t.Errorf("the gateway in the container complained, or did not stop cleanly:\n%s", logs)
	} else {
		t.Logf("the gateway's log in the container:\n%s", logs)
	}
}

// imageRef returns the reference the oci-archive's index names its image by.
func imageRef(t *testing.T, archive string) string {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			t.Fatalf("%s has no index.json", archive)
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name != "index.json" {
			continue
		}
		var index struct {
			Manifests []struct{ Annotations map[string]string }
		}
		if err := json.NewDecoder(tr).Decode(&index); err != nil || len(index.Manifests) != 1 {
			t.Fatalf("%s: index.json: %v, %d manifests, want 1", archive, err, len(index.Manifests))
		}
		ref := index.Manifests[0].Annotations["org.opencontainers.image.ref.name"]
		if ref == "" {
			t.Fatalf("%s: the manifest has no org.opencontainers.image.ref.name", archive)
		}
		return ref
	}
}

// podman runs podman with its own storage, removed when the test ends.
type podman struct {
	t    *testing.T
	args []string
}

func newPodman(t *testing.T) *podman {
	dir := t.TempDir()
	p := &podman{t: t, args: []string{
		"--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "run"), "--tmpdir", filepath.Join(dir, "tmp"),
		// vfs needs nothing from the kernel; cgroupfs, no systemd as PID 1.
		"--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
		// crun refuses a hybrid cgroup hierarchy such as this machine's
		// (cgroup v1 controllers beside cgroup2); runc takes it.
		"--runtime", "runc",
	}}
	t.Cleanup(func() {
		p.run("rm", "-a", "-f")
		p.run("rmi", "-a", "-f")
	})
	return p
}

// run runs a podman command and returns its trimmed combined output.
// Containers get explicit limits: podman's defaults for root (1048576 open
// files) exceed the hard limits of an unprivileged test machine, which
// runc may not raise; lcast@.service allows 1024 files too.
func (p *podman) run(args ...string) (string, error) {
	if args[0] == "run" {
		args = append([]string{"run", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"}, args[1:]...)
	}
	out, err := exec.Command("podman", append(slices.Clone(p.args), args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (p *podman) must(args ...string) string {
	p.t.Helper()
	out, err := p.run(args...)
	if err != nil {
		p.t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// logs returns the lcast container's output.
func (p *podman) logs() string {
	out, _ := p.run("logs", "lcast")
	return out
}
