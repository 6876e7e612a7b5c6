package control

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// RunDir holds the default control sockets, one directory per network
// namespace. Only root can create it under /run, so no other user can take
// the name before the daemon does.
const RunDir = "/run/lcast"

// MaxConns is how many control connections the daemon serves at a time.
// Only root gets this far, `lcast status` uses one, and a profile holds one
// for its duration: 16 leaves room for scripts polling in parallel while
// bounding the goroutines and buffers a stuck client can pin. Connections
// beyond it wait in the kernel's backlog.
const MaxConns = 16

// Errors of the control socket's checks.
var (
	// ErrNotRoot means the process listening on the control socket does
	// not run as root, so it is not an lcast daemon to trust.
	ErrNotRoot = errors.New("the process listening there does not run as root, so it is not trusted (another user may have taken the name)")
	// ErrNeedRoot means the daemon refused a caller that is not root.
	ErrNeedRoot = errors.New("the lcast control API answers root only; run this as root")
	// ErrUnsafeDir means the control socket's directory could be changed
	// by someone other than the daemon's user.
	ErrUnsafeDir = errors.New("is writable by group or others, or not owned by the daemon's user; choose a directory only root can write")
)

// DefaultSocket returns the default control socket of the interface:
// RunDir/<netns>/<iface>.sock, where <netns> is the inode number of this
// process's network namespace (/proc/self/ns/net). The inode identifies a
// namespace uniquely while it exists (the kernel's nsfs numbers live
// namespaces without reuse), needs no name (`ip netns` names are optional
// and per mount namespace) and is the same for `lcast up` and `lcast
// status` run in one namespace, so daemons in separate namespaces never
// collide. A number can come back once its namespace is gone, but a running
// daemon keeps its namespace alive, so a live socket never shares it.
func DefaultSocket(iface string) (string, error) {
	return defaultSocket(RunDir, "/proc/self/ns/net", iface)
}

func defaultSocket(runDir, nsPath, iface string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(nsPath, &st); err != nil {
		return "", fmt.Errorf("network namespace of this process (%s): %w", nsPath, err)
	}
	return filepath.Join(runDir, strconv.FormatUint(st.Ino, 10), iface+".sock"), nil
}

// checkDir refuses a socket directory that someone other than this
// process's user could change: one not owned by it, or writable by group
// or others. Such a user could replace the socket with their own.
func checkDir(dir string) error {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("control socket directory %s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || int(st.Uid) != os.Geteuid() || st.Mode&0o022 != 0 {
		return fmt.Errorf("control socket directory %s (uid %d, mode %04o) %w", dir, st.Uid, st.Mode&0o7777, ErrUnsafeDir)
	}
	return nil
}

// uidFunc returns the uid of the process at the other end of a connection.
type uidFunc func(net.Conn) (int, error)

// peerUID returns the uid of the process at the other end of a unix socket
// connection (SO_PEERCRED): for an accepted connection the client's, for a
// dialled one the process that listened.
func peerUID(c net.Conn) (int, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return -1, fmt.Errorf("%T is not a unix socket", c)
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := rc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return -1, err
	}
	if credErr != nil {
		return -1, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	return int(cred.Uid), nil
}

// guard is a listener that hands on only connections from root, closing
// the others as they are accepted (before a byte is read), and at most
// cap(slots) of them at a time.
type guard struct {
	net.Listener
	uidOf     uidFunc
	slots     chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func newGuard(ln net.Listener, uidOf uidFunc, maxConns int) *guard {
	return &guard{Listener: ln, uidOf: uidOf, slots: make(chan struct{}, maxConns), done: make(chan struct{})}
}

// Accept waits for a free slot, then returns the next connection from root.
func (g *guard) Accept() (net.Conn, error) {
	for {
		select {
		case g.slots <- struct{}{}:
		case <-g.done:
			return nil, net.ErrClosed
		}
		c, err := g.Listener.Accept()
		if err != nil {
			<-g.slots
			return nil, err
		}
		if uid, err := g.uidOf(c); err != nil || uid != 0 {
			c.Close()
			<-g.slots
			continue
		}
		return &slotConn{Conn: c, free: func() { <-g.slots }}, nil
	}
}

// Close closes the listener and ends waiting Accepts. It is idempotent.
func (g *guard) Close() error {
	err := net.ErrClosed
	g.closeOnce.Do(func() {
		close(g.done)
		err = g.Listener.Close()
	})
	return err
}

// slotConn gives its slot back when closed.
type slotConn struct {
	net.Conn
	once sync.Once
	free func()
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.free)
	return err
}
