package gateway

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/librecast/lcast/internal/control"
	"golang.org/x/sys/unix"
)

// lock is a gateway's hold on its network namespace's multicast routing:
// a lock file, one per namespace, that another lcast gateway cannot take
// while this one runs (the kernel releases it when the process ends,
// however it ends).
type lock struct{ f *os.File }

// takeLock takes the namespace's lock for the gateway of lc0, or says who
// holds it.
func takeLock(lc0 string) (*lock, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		return nil, fmt.Errorf("network namespace of this process: %w", err)
	}
	dir := filepath.Join(control.RunDir, strconv.FormatUint(st.Ino, 10))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "gateway.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another lcast is the multicast gateway of this network namespace (%s): only one multicast router can run here", strings.TrimSpace(string(holder)))
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	f.Truncate(0)
	fmt.Fprintf(f, "pid %d, %s\n", os.Getpid(), lc0)
	return &lock{f: f}, nil
}

// release gives the lock up.
func (l *lock) release() {
	if l != nil {
		l.f.Truncate(0)
		l.f.Close()
	}
}
