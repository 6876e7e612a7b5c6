package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// requireRoot skips the test, saying why it needs root, when it does not
// run as root; under CI (CI set in the environment), which runs as root,
// it fails instead.
func requireRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("CI must run as root: %s", why)
	}
	t.Skipf("skipped: needs root: %s", why)
}

// serve serves the control API on path, as the daemon does; it answers
// root only.
func serve(t *testing.T, path string) {
	t.Helper()
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	var reloads atomic.Int32
	srv := NewServer(func() Status {
		return Status{Interface: "lc0", LocalGroups: []Group{{Group: "ff1e::1", Mode: "exclude", Sources: []string{}}}}
	}, func(context.Context) (string, error) {
		// Every other reload finds the configuration invalid.
		if reloads.Add(1)%2 == 0 {
			return "", errors.New("lcast.toml:3: listen_prot: unknown key")
		}
		return "reloaded: 2 peers, 1 added, 0 removed", nil
	}, slog.New(slog.DiscardHandler))
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func abstractName(t *testing.T) string {
	return fmt.Sprintf("@lcast-test/%s/%d", t.Name(), time.Now().UnixNano())
}

// lcast reload gets what the daemon says of the reload, and its refusal
// as an error with the daemon's reason; a GET does not reload.
func TestReloadRoundTrip(t *testing.T) {
	requireRoot(t, "the control socket answers root only, and the client trusts only a listener that runs as root")
	path := filepath.Join(t.TempDir(), "lcast.sock")
	serve(t, path)
	if msg, err := Reload(context.Background(), path); err != nil || msg != "reloaded: 2 peers, 1 added, 0 removed" {
		t.Fatalf("Reload = %q, %v", msg, err)
	}
	if msg, err := Reload(context.Background(), path); err == nil || err.Error() != "lcast.toml:3: listen_prot: unknown key" {
		t.Fatalf("Reload of an invalid configuration = %q, %v", msg, err)
	}
	resp, err := Client(path).Get("http://lcast" + ReloadPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET %s: %s, want 405", ReloadPath, resp.Status)
	}
}

func TestStatusRoundTrip(t *testing.T) {
	requireRoot(t, "the control socket answers root only, and the client trusts only a listener that runs as root")
	for _, path := range []string{abstractName(t), filepath.Join(t.TempDir(), "sub", "lcast.sock")} {
		serve(t, path)
		st, err := GetStatus(context.Background(), path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Interface != "lc0" || len(st.LocalGroups) != 1 || st.LocalGroups[0].Group != "ff1e::1" {
			t.Fatalf("status %+v", st)
		}
	}
}

func TestSocketFileIsPrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lcast.sock")
	serve(t, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("socket mode %v, want no group or other access", fi.Mode())
	}
}

func TestListenRefusesLiveSocketAndReplacesStale(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lcast.sock")
	serve(t, path)
	if _, err := Listen(path); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Listen error = %v, want ErrInUse", err)
	}
	name := abstractName(t)
	serve(t, name)
	if _, err := Listen(name); !errors.Is(err, ErrInUse) {
		t.Fatalf("second abstract Listen error = %v, want ErrInUse", err)
	}
	stale := filepath.Join(t.TempDir(), "stale.sock")
	if err := os.WriteFile(stale, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(stale)
	if err != nil {
		t.Fatalf("Listen over a stale file: %v", err)
	}
	ln.Close()
}

func TestNoDaemon(t *testing.T) {
	for _, path := range []string{abstractName(t), filepath.Join(t.TempDir(), "none.sock")} {
		if _, err := GetStatus(context.Background(), path); !errors.Is(err, ErrNoDaemon) {
			t.Fatalf("GetStatus(%s) error = %v, want ErrNoDaemon", path, err)
		}
	}
}

func TestMisuse(t *testing.T) {
	path := abstractName(t)
	serveGuarded(t, path, fakeUID(0), MaxConns) // the guard lets every caller in, as it does root
	plain := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}}
	defer plain.CloseIdleConnections()
	tests := []struct {
		name, method, path string
		body               io.Reader
		want               int
	}{
		{"unknown path", "GET", "/v1/nothing", nil, http.StatusNotFound},
		{"wrong method", "POST", StatusPath, strings.NewReader("{}"), http.StatusMethodNotAllowed},
		{"huge body", "PUT", StatusPath, strings.NewReader(strings.Repeat("x", 1<<20)), http.StatusMethodNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, "http://lcast"+tt.path, tt.body)
			resp, err := plain.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.want)
			}
		})
	}
	// Malformed HTTP gets a 400 and the server keeps answering.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "\x00\x01garbage\r\n\r\n")
	reply, _ := io.ReadAll(c)
	c.Close()
	if !strings.Contains(string(reply), "400") {
		t.Fatalf("garbage got %q, want a 400", reply)
	}
	if _, err := getStatus(context.Background(), path, client(path, fakeUID(0))); err != nil {
		t.Fatalf("after garbage: %v", err)
	}
}

// A caller that is not root is closed at accept, and told it needs root,
// even on an abstract socket that any process can connect to.
func TestNonRootRefused(t *testing.T) {
	if path := os.Getenv("LCAST_CONTROL_HELPER"); path != "" {
		if _, err := GetStatus(context.Background(), path); !errors.Is(err, ErrNeedRoot) {
			t.Fatalf("non-root GetStatus error = %v, want ErrNeedRoot", err)
		}
		return
	}
	path := abstractName(t)
	serve(t, path)
	out, err := asNobody(t, "TestNonRootRefused", "LCAST_CONTROL_HELPER="+path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PASS") {
		t.Fatalf("helper as nobody: %v\n%s", err, out)
	}
}

// asNobody returns a command that runs this test binary's test named run
// as user nobody, with env added.
func asNobody(t *testing.T, run string, env ...string) *exec.Cmd {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run as root")
		}
		t.Skip("needs root to run a helper as another user")
	}
	// Copy the test binary where user nobody can run it.
	dir, err := os.MkdirTemp("", "lcast-control")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "control.test")
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^"+run+"$")
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	return cmd
}
