package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeUID is a uidFunc that says every connection's other end runs as uid.
func fakeUID(uid int) uidFunc { return func(net.Conn) (int, error) { return uid, nil } }

// serveGuarded serves the control API on path behind a guard that sees
// connections through uidOf, and counts the status requests that get in.
func serveGuarded(t *testing.T, path string, uidOf uidFunc, maxConns int) *atomic.Int64 {
	t.Helper()
	ln, err := listen(path)
	if err != nil {
		t.Fatal(err)
	}
	var asked atomic.Int64
	srv := NewServer(func() Status { asked.Add(1); return Status{Interface: "lc0"} }, nil, slog.New(slog.DiscardHandler))
	go srv.Serve(newGuard(ln, uidOf, maxConns))
	t.Cleanup(func() { srv.Close() })
	return &asked
}

// The default socket is a path under RunDir, named after the network
// namespace's inode, not an abstract name any user could take.
func TestDefaultSocket(t *testing.T) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		t.Skip("no /proc/self/ns/net:", err)
	}
	got, err := DefaultSocket("lc0")
	if want := filepath.Join(RunDir, strconv.FormatUint(st.Ino, 10), "lc0.sock"); err != nil || got != want {
		t.Fatalf("DefaultSocket = %q, %v; want %q", got, err, want)
	}
	if _, err := defaultSocket(RunDir, "/nonexistent/ns/net", "lc0"); err == nil {
		t.Fatal("no error without a namespace to name")
	}
}

// Listen refuses a socket directory another user could change.
func TestListenRefusesUnsafeDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o777)
	if _, err := Listen(filepath.Join(dir, "lcast.sock")); !errors.Is(err, ErrUnsafeDir) {
		t.Fatalf("Listen in a mode 0777 directory: %v, want ErrUnsafeDir", err)
	}
	if os.Geteuid() == 0 {
		os.Chmod(dir, 0o700)
		os.Chown(dir, 65534, 65534)
		if _, err := Listen(filepath.Join(dir, "lcast.sock")); !errors.Is(err, ErrUnsafeDir) {
			t.Fatalf("Listen in nobody's directory: %v, want ErrUnsafeDir", err)
		}
	}
}

// A connection from a user other than root is closed as it is accepted: no
// request of it reaches a handler (simulated with a fake credential).
func TestGuardClosesNonRoot(t *testing.T) {
	path := abstractName(t)
	asked := serveGuarded(t, path, fakeUID(1000), MaxConns)
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: lcast\r\n\r\n", StatusPath)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("a non-root connection was answered (%d bytes, %v)", n, err)
	}
	if asked.Load() != 0 {
		t.Fatal("a non-root request reached the handler")
	}
}

// Beyond MaxConns, connections wait until one closes.
func TestGuardLimitsConnections(t *testing.T) {
	const limit = 3
	path := abstractName(t)
	serveGuarded(t, path, fakeUID(0), limit)
	var idle []net.Conn
	for range limit {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := getStatus(ctx, path, client(path, fakeUID(0))); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("with %d connections open: %v, want a wait", limit, err)
	}
	idle[0].Close()
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := getStatus(ctx, path, client(path, fakeUID(0))); err != nil {
		t.Fatalf("after one closed: %v", err)
	}
}

// The client refuses a listener that is not root (simulated with a fake
// credential), before sending it anything.
func TestClientRefusesNonRootListener(t *testing.T) {
	path := abstractName(t)
	asked := serveGuarded(t, path, fakeUID(0), MaxConns)
	if _, err := getStatus(context.Background(), path, client(path, fakeUID(1000))); !errors.Is(err, ErrNotRoot) {
		t.Fatalf("GetStatus from a uid 1000 listener: %v, want ErrNotRoot", err)
	}
	if asked.Load() != 0 {
		t.Fatal("the client sent its request anyway")
	}
}

// A squatter, a process of user nobody listening on the old default
// abstract name "@lcast/<interface>", neither stops the daemon from
// opening its default socket nor fools `lcast status`, which refuses it
// (real credentials: the squatter runs as uid 65534).
func TestSquatter(t *testing.T) {
	if name := os.Getenv("LCAST_CONTROL_SQUAT"); name != "" {
		ln, err := net.Listen("unix", name)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Println("listening")
		http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			json.NewEncoder(w).Encode(Status{Interface: "squatted"})
		}))
		return
	}
	iface := fmt.Sprintf("sq%d", os.Getpid()%100000)
	old := "@lcast/" + iface
	cmd := asNobody(t, "TestSquatter", "LCAST_CONTROL_SQUAT="+old)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || strings.TrimSpace(line) != "listening" {
		t.Fatalf("squatter: %q %v", line, err)
	}
	if _, err := GetStatus(context.Background(), old); !errors.Is(err, ErrNotRoot) {
		t.Fatalf("GetStatus from the squatter: %v, want ErrNotRoot", err)
	}
	path, err := defaultSocket(t.TempDir(), "/proc/self/ns/net", iface)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, path)
	if st, err := GetStatus(context.Background(), path); err != nil || st.Interface != "lc0" {
		t.Fatalf("GetStatus from the daemon's default socket: %+v, %v", st, err)
	}
}

// A reload still waiting when Shutdown's grace period ends has its
// context cancelled, and Shutdown returns only after its handler did: no
// handler outlives the server.
func TestShutdownEndsWaitingReload(t *testing.T) {
	path := abstractName(t)
	ln, err := listen(path)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	var returned atomic.Bool
	srv := NewServer(func() Status { return Status{} }, func(ctx context.Context) (string, error) {
		close(started)
		<-ctx.Done()                      // the daemon's loop has stopped taking reloads
		time.Sleep(50 * time.Millisecond) // and the handler takes a while to return
		returned.Store(true)
		return "", ctx.Err()
	}, slog.New(slog.DiscardHandler))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(newGuard(ln, fakeUID(0), MaxConns)) }()
	reloaded := make(chan error, 1)
	go func() {
		_, err := call(context.Background(), path, client(path, fakeUID(0)), http.MethodPost, ReloadPath)
		reloaded <- err
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want context.DeadlineExceeded", err)
	}
	if !returned.Load() {
		t.Fatal("Shutdown returned while the reload's handler ran")
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve: %v, want http.ErrServerClosed", err)
	}
	if err := <-reloaded; err == nil {
		t.Fatal("the cut-short reload reported success")
	}
}
