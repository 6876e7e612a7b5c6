// Package control serves lcast's control API, HTTP+JSON over a unix socket
// that answers root only (checked by the caller's credentials when it
// connects), and is the client `lcast status` uses, which talks only to a
// daemon that runs as root (checked by the listener's credentials).
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
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/librecast/lcast/internal/httpserve"
)

// StatusPath is the API path of the daemon's status.
const StatusPath = "/v1/status"

// ReloadPath is where a POST makes the daemon read its configuration again
// (lcast reload).
const ReloadPath = "/v1/reload"

// ErrNoDaemon means nothing listens on the control socket.
var ErrNoDaemon = errors.New("no lcast daemon is listening there (is `lcast up` running in this network namespace?)")

// ErrInUse means a daemon already answers on the control socket.
var ErrInUse = errors.New("another lcast daemon is already listening there")

// Listen opens the control socket at path: a filesystem path or "@name" in
// the abstract namespace. A path's directory is created (mode 0700) if
// missing and must be owned by this process's user and writable by no one
// else (ErrUnsafeDir); the socket gets mode 0600. A stale socket file is
// replaced; a live one is an error. An abstract name is weaker: any local
// user can take it first, which stops the daemon from starting (clients
// still refuse a listener that is not root). The listener closes
// connections from users other than root as it accepts them and serves at
// most MaxConns at a time.
func Listen(path string) (net.Listener, error) {
	ln, err := listen(path)
	if err != nil {
		return nil, err
	}
	return newGuard(ln, peerUID, MaxConns), nil
}

func listen(path string) (net.Listener, error) {
	if !strings.HasPrefix(path, "@") {
		dir := filepath.Dir(path)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("control socket %s: %w", path, err)
		}
		if err := checkDir(dir); err != nil {
			return nil, err
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

// ReloadFunc reads the configuration again and applies it, as SIGHUP
// does, and says what changed; it returns an error, and changes nothing,
// if the configuration is invalid or cannot be applied.
type ReloadFunc func(ctx context.Context) (string, error)

// Server is the control API's HTTP server (see NewServer).
type Server = httpserve.Server

// NewServer returns an HTTP server for the control API, to serve a listener
// from Listen (which lets only root's connections through): GET StatusPath
// and the profiler, and POST ReloadPath (if reload is not nil). Unknown
// paths get 404; other methods 405. Its Shutdown and Close return only
// once no handler runs: a request still under way when Shutdown's context
// ends has its context cancelled (a profile stops, a reload that waits
// to be applied gives up), so reload must return once its context is done
// and status must not block.
func NewServer(status StatusFunc, reload ReloadFunc, log *slog.Logger) *Server {
	return httpserve.New(&http.Server{
		Handler:           handler(status, reload, log),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      70 * time.Second, // a CPU profile takes its time
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	})
}

// handler returns the control API's handler (see NewServer).
func handler(status StatusFunc, reload ReloadFunc, log *slog.Logger) http.Handler {
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
	if reload != nil {
		mux.HandleFunc("POST "+ReloadPath, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			msg, err := reload(r.Context())
			if err != nil {
				w.WriteHeader(http.StatusUnprocessableEntity)
				msg = err.Error()
			}
			fmt.Fprintln(w, msg)
		})
	}
	return limitBody(mux)
}

// limitBody bounds what a request body may hold.
func limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		next.ServeHTTP(w, r)
	})
}

// Client returns an HTTP client that reaches the control API on the unix
// socket at path, whatever host a URL names (http://lcast/... by custom).
// It refuses to talk to a listener that does not run as root (ErrNotRoot).
func Client(path string) *http.Client { return client(path, peerUID) }

func client(path string, uidOf uidFunc) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", path)
			if err != nil {
				return nil, err
			}
			uid, err := uidOf(c)
			if err == nil && uid != 0 {
				err = fmt.Errorf("%w (it runs as uid %d)", ErrNotRoot, uid)
			}
			if err != nil {
				c.Close()
				return nil, err
			}
			return c, nil
		},
		// One request per connection: a client is made per use, and an
		// idle connection would hold a goroutine in the daemon.
		DisableKeepAlives: true,
	}}
}

// GetStatus asks the daemon listening on the control socket at path.
func GetStatus(ctx context.Context, path string) (*Status, error) {
	return getStatus(ctx, path, client(path, peerUID))
}

func getStatus(ctx context.Context, path string, client *http.Client) (*Status, error) {
	body, err := call(ctx, path, client, http.MethodGet, StatusPath)
	if err != nil {
		return nil, err
	}
	var st Status
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("control socket %s: bad answer: %w", path, err)
	}
	return &st, nil
}

// Reload asks the daemon listening on the control socket at path to read
// its configuration again and apply it, and returns what it says changed.
// The error of a configuration the daemon refused says why.
func Reload(ctx context.Context, path string) (string, error) {
	body, err := call(ctx, path, client(path, peerUID), http.MethodPost, ReloadPath)
	return strings.TrimSpace(string(body)), err
}

// call makes one request of the control API and returns the body of a 200
// answer; other answers are errors that carry their body.
func call(ctx context.Context, path string, client *http.Client, method, urlPath string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://lcast"+urlPath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is always the same, and says nothing
		}
		switch {
		case errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED):
			err = ErrNoDaemon
		case os.Geteuid() != 0 && !errors.Is(err, ErrNotRoot):
			// The daemon closes a non-root caller's connection at
			// once (seen as EOF, EPIPE, ECONNRESET or a closed idle
			// connection, depending on timing), or its directory
			// lets no one else in (EACCES).
			err = fmt.Errorf("%w (%w)", ErrNeedRoot, err)
		}
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return body, nil
	case http.StatusUnprocessableEntity:
		return nil, errors.New(strings.TrimSpace(string(body)))
	}
	return nil, fmt.Errorf("control socket %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
}
