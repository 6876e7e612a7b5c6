package mroute

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ErrInUse is matched (errors.Is) by Open's error when another socket
// already holds the namespace's multicast routing.
var ErrInUse = errors.New("IPv6 multicast routing is already in use in this network namespace")

// InUseError is Open's error when another socket holds the namespace's
// multicast routing. It matches ErrInUse.
type InUseError struct {
	// Holders are the processes that hold a raw ICMPv6 socket in this
	// namespace, one of which holds multicast routing; empty when none was
	// found (it may run in a PID namespace this process cannot see).
	Holders []Holder
}

// Holder is a process that may hold multicast routing.
type Holder struct {
	Comm string // its command name (/proc/PID/comm)
	PID  int
}

// Error says that multicast routing is in use, and by whom if known.
func (e *InUseError) Error() string {
	var by string
	switch len(e.Holders) {
	case 0:
		by = "its holder could not be found"
	case 1:
		by = fmt.Sprintf("by %s, pid %d", e.Holders[0].Comm, e.Holders[0].PID)
	default:
		var hs []string
		for _, h := range e.Holders {
			hs = append(hs, fmt.Sprintf("%s, pid %d", h.Comm, h.PID))
		}
		by = "by one of " + strings.Join(hs, "; ")
	}
	return fmt.Sprintf("%s (%s): only one multicast router can run here (pim6sd, smcroute, another lcast)", ErrInUse, by)
}

// Unwrap returns ErrInUse.
func (e *InUseError) Unwrap() error { return ErrInUse }

// findHolders returns the processes holding raw ICMPv6 sockets of this
// network namespace, sorted by PID. The kernel does not say which socket is
// the multicast routing one; usually there is only one raw ICMPv6 socket.
func findHolders() []Holder {
	inodes := rawICMPv6Inodes("/proc/net/raw6")
	if len(inodes) == 0 {
		return nil
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	var holders []Holder
	for _, dir := range procs {
		pid, err := strconv.Atoi(filepath.Base(dir))
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join(dir, "fd"))
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
			if err != nil || !inodes[link] {
				continue
			}
			comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
			holders = append(holders, Holder{Comm: strings.TrimSpace(string(comm)), PID: pid})
			break
		}
	}
	slices.SortFunc(holders, func(a, b Holder) int { return a.PID - b.PID })
	return holders
}

// rawICMPv6Inodes reads a /proc/net/raw6 table and returns its ICMPv6
// sockets as the targets of their file descriptors' links, "socket:[inode]".
// A raw socket's local port column is its protocol.
func rawICMPv6Inodes(path string) map[string]bool {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	inodes := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		if inode, ok := parseRaw6Line(sc.Text()); ok {
			inodes["socket:["+inode+"]"] = true
		}
	}
	return inodes
}

// parseRaw6Line returns the inode of a /proc/net/raw6 line's socket if it
// is an ICMPv6 (protocol 58) one.
func parseRaw6Line(line string) (inode string, ok bool) {
	// sl local_address remote_address st tx_queue:rx_queue tr:tm->when
	// retrnsmt uid timeout inode ...
	f := strings.Fields(line)
	if len(f) < 10 {
		return "", false
	}
	_, port, found := strings.Cut(f[1], ":")
	if proto, err := strconv.ParseUint(port, 16, 16); !found || err != nil || proto != 58 {
		return "", false
	}
	if _, err := strconv.ParseUint(f[9], 10, 64); err != nil || f[9] == "0" {
		return "", false
	}
	return f[9], true
}
