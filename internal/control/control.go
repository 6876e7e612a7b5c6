// Package control serves lcast's control API, HTTP+JSON over a unix socket
// that answers root only (checked by the caller's credentials), and is the
// client `lcast status` uses.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// StatusPath is the API path of the daemon's status.
const StatusPath = "/v1/status"

// ErrNoDaemon means nothing listens on the control socket.
var ErrNoDaemon = errors.New("no lcast daemon is listening there (is `lcast up` running in this network namespace?)")

// ErrInUse means a daemon already answers on the control socket.
var ErrInUse = errors.New("another lcast daemon is already listening there")

// Listen opens the control socket at path: a filesystem path (created with
// mode 0600 in a directory of mode 0700 if missing) or "@name" in the
// abstract namespace. A stale socket file is replaced; a live one is an error.
func Listen(path string) (net.Listener, error) {
	if !strings.HasPrefix(path, "@") {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("control socket %s: %w", path, err)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s: %w", path, ErrInUse)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("control socket %s: %w", path, err)
		}
	}
	oldMask := syscall.Umask(0o077)
	ln, err := net.Listen("unix", path)
	syscall.Umask(oldMask)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("control socket %s: %w", path, ErrInUse)
	}
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return ln, nil
}

// StatusFunc returns the daemon's current status.
type StatusFunc func() Status

type uidKey struct{}

// NewServer returns an HTTP server for the control API. Callers other than
// root get 403; unknown paths 404; methods other than GET 405.
func NewServer(status StatusFunc, log *slog.Logger) *http.Server {
	mux := http.NewServeMux()
	// Go's profiler, for operators chasing where the time goes:
	// curl --unix-socket SOCKET http://lcast/debug/pprof/profile?seconds=10
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET "+StatusPath, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(status()); err != nil {
			log.Debug("writing status", "err", err)
		}
	})
	return &http.Server{
		Handler:           rootOnly(mux),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      70 * time.Second, // a CPU profile takes its time
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, uidKey{}, peerUID(c))
		},
	}
}

func rootOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if uid, _ := r.Context().Value(uidKey{}).(int); uid != 0 {
			http.Error(w, "the lcast control API answers root only", http.StatusForbidden)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		next.ServeHTTP(w, r)
	})
}

// peerUID returns the uid of the process at the other end of a unix socket
// connection, or -1 if it cannot be told.
func peerUID(c net.Conn) int {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return -1
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return -1
	}
	uid := -1
	rc.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			uid = int(cred.Uid)
		}
	})
	return uid
}

// Client returns an HTTP client that reaches the control API on the unix
// socket at path, whatever host a URL names (http://lcast/... by custom).
func Client(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		// One request per connection: a client is made per use, and an
		// idle connection would hold a goroutine in the daemon.
		DisableKeepAlives: true,
	}}
}

// GetStatus asks the daemon listening on the control socket at path.
func GetStatus(ctx context.Context, path string) (*Status, error) {
	client := Client(path)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://lcast"+StatusPath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("control socket %s: %w", path, ErrNoDaemon)
		}
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("control socket %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	var st Status
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("control socket %s: bad answer: %w", path, err)
	}
	return &st, nil
}
