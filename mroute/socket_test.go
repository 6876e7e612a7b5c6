package mroute

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/netlab"
)

// These tests need root and a network namespace, but not the kernel's
// multicast routing.

// hasMroute tells whether the kernel has IPv6 multicast routing.
func hasMroute() bool {
	_, err := os.Stat("/proc/net/ip6_mr_vif")
	return err == nil
}

// The socket takes no ICMPv6 (nothing queues on it while it is held), and
// Close unblocks a read.
func TestFilterAndCloseUnblocksRead(t *testing.T) {
	if !netlab.Isolate(t) {
		return
	}
	s, err := listen()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	unfiltered, err := net.ListenIP("ip6:ipv6-icmp", &net.IPAddr{IP: net.IPv6unspecified})
	if err != nil {
		t.Fatal(err)
	}
	defer unfiltered.Close()

	// ICMPv6 reaches a raw socket without the filter, not the one with it.
	if out, err := exec.Command("ping", "-6", "-c", "2", "-i", "0.1", "::1").CombinedOutput(); err != nil {
		t.Fatalf("ping ::1: %v: %s", err, out)
	}
	buf := make([]byte, 1500)
	unfiltered.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := unfiltered.Read(buf); err != nil || n < 1 || buf[0] != 128 && buf[0] != 129 {
		t.Fatalf("the unfiltered socket read %x, %v; want an echo request or reply", buf[:n], err)
	}
	s.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := s.conn.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the filtered socket read %x, %v; want nothing", buf[:n], err)
	}
	s.conn.SetReadDeadline(time.Time{})

	read := make(chan error)
	go func() { // blocks in Read until Close
		_, err := s.conn.Read(buf)
		read <- err
	}()
	select {
	case err := <-read:
		t.Fatalf("Read returned before Close: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-read:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Error("Close did not unblock Read")
		s.conn.Close()
		<-read
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// holdRaw starts socat holding a raw IPv6 socket of protocol proto until
// the test ends.
func holdRaw(t *testing.T, proto string) int {
	t.Helper()
	cmd := exec.Command("socat", "-u", "IP6-RECV:"+proto, "/dev/null")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd.Process.Pid
}

// The holders named are the processes with raw ICMPv6 sockets, not those
// with other raw sockets.
func TestFindHolders(t *testing.T) {
	if !netlab.Isolate(t) {
		return
	}
	if _, err := exec.LookPath("socat"); err != nil {
		t.Skip("skipped: socat is not installed")
	}
	if h := findHolders(); len(h) != 0 {
		t.Fatalf("holders %+v in a new namespace", h)
	}
	icmp := holdRaw(t, "58")
	holdRaw(t, "17") // raw UDP: not a candidate
	want := []Holder{{Comm: "socat", PID: icmp}}
	if _, ok := netlab.Poll(2*time.Second, func() bool { return slices.Equal(findHolders(), want) }); !ok {
		t.Fatalf("holders %+v, want %+v", findHolders(), want)
	}
	err := &InUseError{Holders: findHolders()}
	t.Log(err)

	s, err2 := listen()
	if err2 != nil {
		t.Fatal(err2)
	}
	defer s.Close()
	comm, _ := os.ReadFile("/proc/self/comm")
	me := Holder{Comm: string(comm[:len(comm)-1]), PID: os.Getpid()}
	want = append(want, me)
	slices.SortFunc(want, func(a, b Holder) int { return a.PID - b.PID })
	if got := findHolders(); !slices.Equal(got, want) {
		t.Fatalf("holders %+v, want %+v", got, want)
	}
}

// Without MRT6 in the kernel, Open says so and leaves nothing open.
func TestOpenWithoutKernelSupport(t *testing.T) {
	if hasMroute() {
		t.Skip("skipped: this kernel has IPv6 multicast routing")
	}
	if !netlab.Isolate(t) {
		return
	}
	fds := func() int {
		entries, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(entries)
	}
	before := fds()
	s, err := Open()
	if !errors.Is(err, ErrUnsupported) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("Open: %v, want ErrUnsupported", err)
	}
	t.Log(err)
	if after := fds(); after != before {
		t.Fatalf("%d open files before Open, %d after it failed", before, after)
	}
}
