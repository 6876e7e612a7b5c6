// Package netlab gives tests throwaway network namespaces: named ones made
// with `ip netns add`, and Isolate, which re-runs the calling test inside a
// fresh anonymous namespace. Everything a test creates is removed when it
// ends. Tests that cannot get what they need skip with the reason, except
// under CI (CI set in the environment), where they fail.
package netlab

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Require skips the test unless it runs as root with /dev/net/tun and the
// named commands. Under CI it fails instead, so that nothing is silently skipped.
func Require(t testing.TB, commands ...string) {
	t.Helper()
	missing := func(reason string) {
		t.Helper()
		if os.Getenv("CI") != "" {
			t.Fatalf("CI must run this test, but %s", reason)
		}
		t.Skipf("skipped: %s", reason)
	}
	if os.Geteuid() != 0 {
		missing("it needs root (network namespaces, TUN)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		missing("/dev/net/tun is missing")
	}
	for _, c := range append([]string{"ip", "unshare", "ping", "sysctl"}, commands...) {
		if _, err := exec.LookPath(c); err != nil {
			missing(c + " is not installed")
		}
	}
}

const isolatedEnv = "LCAST_NETLAB_ISOLATED"

// Isolate runs the calling test in a fresh network namespace with lo up.
// It returns true in the child, which is the copy of the test binary running
// inside the namespace and should carry out the test; in the parent it runs
// the child, reports its result and returns false.
func Isolate(t *testing.T) bool {
	t.Helper()
	if os.Getenv(isolatedEnv) == t.Name() {
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Fatalf("lo up: %v: %s", err, out)
		}
		return true
	}
	Require(t)
	cmd := exec.Command("unshare", "--net", "--", os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), isolatedEnv+"="+t.Name())
	out, err := cmd.CombinedOutput()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		t.Log(line)
	}
	if err != nil {
		t.Fatalf("test in its own network namespace failed: %v", err)
	}
	return false
}

// Namespace is a named network namespace.
type Namespace struct {
	Name string
	t    testing.TB
}

// NewNamespace creates a namespace named prefix plus a random suffix, with
// lo up, and removes it (killing what still runs in it) when the test ends.
func NewNamespace(t testing.TB, prefix string) *Namespace {
	t.Helper()
	Require(t)
	var b [3]byte
	rand.Read(b[:])
	ns := &Namespace{Name: prefix + "-" + hex.EncodeToString(b[:]), t: t}
	if out, err := exec.Command("ip", "netns", "add", ns.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns.Name, err, out)
	}
	t.Cleanup(ns.remove)
	ns.Run("ip", "link", "set", "lo", "up")
	return ns
}

func (ns *Namespace) remove() {
	out, _ := exec.Command("ip", "netns", "pids", ns.Name).Output()
	for _, pid := range strings.Fields(string(out)) {
		exec.Command("kill", "-9", pid).Run()
	}
	if out, err := exec.Command("ip", "netns", "del", ns.Name).CombinedOutput(); err != nil {
		ns.t.Errorf("ip netns del %s: %v: %s", ns.Name, err, out)
	}
}

// Command returns a command that runs name with args inside the namespace.
func (ns *Namespace) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Run runs a command in the namespace and returns its standard output; it
// fails the test if the command fails.
func (ns *Namespace) Run(name string, args ...string) string {
	ns.t.Helper()
	var stderr bytes.Buffer
	cmd := ns.Command(name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		ns.t.Fatalf("in %s: %s %s: %v: %s", ns.Name, name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// Process is a command running in the background.
type Process struct {
	Cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// Start starts a command in the namespace; it is killed when the test ends
// if it still runs. Its combined output is kept for Output.
func (ns *Namespace) Start(name string, args ...string) *Process {
	ns.t.Helper()
	return StartCommand(ns.t, ns.Command(name, args...))
}

// StartCommand starts cmd as Start does, where cmd says (the host's
// namespaces, for one).
func StartCommand(t testing.TB, cmd *exec.Cmd) *Process {
	t.Helper()
	p := &Process{Cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	p.Cmd.Stdout, p.Cmd.Stderr = p.out, p.out
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	go func() { p.err = p.Cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		if p.Cmd.Process != nil {
			p.Cmd.Process.Kill()
		}
		<-p.done
	})
	return p
}

// Stop kills the process and waits for it to end.
func (p *Process) Stop() {
	p.Cmd.Process.Kill()
	<-p.done
}

// Signal sends sig to the process.
func (p *Process) Signal(sig syscall.Signal) error { return p.Cmd.Process.Signal(sig) }

// Wait waits up to timeout for the process to exit and returns its error.
func (p *Process) Wait(timeout time.Duration) (exited bool, err error) {
	select {
	case <-p.done:
		return true, p.err
	case <-time.After(timeout):
		return false, nil
	}
}

// Output returns what the process printed so far.
func (p *Process) Output() string { return p.out.String() }

// WaitOutput waits up to timeout until the process has printed s.
func (p *Process) WaitOutput(s string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(p.Output(), s) {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return false
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Poll calls cond every few milliseconds until it returns true or timeout
// passes, and returns how long that took and whether cond came true.
func Poll(timeout time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > timeout {
			return time.Since(start), false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// String names the namespace.
func (ns *Namespace) String() string { return fmt.Sprintf("netns %s", ns.Name) }
