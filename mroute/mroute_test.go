package mroute

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/librecast/lcast/internal/netlab"
)

// requireMroute skips the test if the kernel has no IPv6 multicast routing;
// otherwise it runs the test in its own network namespace like
// netlab.Isolate, and returns whether this is the copy that should run it.
func requireMroute(t *testing.T) bool {
	t.Helper()
	if !hasMroute() {
		t.Skip("skipped: " + ErrUnsupported.Error())
	}
	return netlab.Isolate(t)
}

// Where the kernel has MRT6: a second Open in the namespace fails, naming
// the process that holds it.
func TestSecondOpenNamesHolder(t *testing.T) {
	if !requireMroute(t) {
		return
	}
	s, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = Open()
	var inUse *InUseError
	if !errors.Is(err, ErrInUse) || !errors.As(err, &inUse) {
		t.Fatalf("second Open: %v, want an InUseError", err)
	}
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	me := Holder{Comm: strings.TrimSpace(string(comm)), PID: os.Getpid()}
	if len(inUse.Holders) != 1 || inUse.Holders[0] != me {
		t.Fatalf("holders %+v, want %+v", inUse.Holders, me)
	}
	want := fmt.Sprintf("IPv6 multicast routing is already in use in this network namespace (by %s, pid %d): only one multicast router", me.Comm, me.PID)
	if !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("error %q\ndoes not start with %q", err, want)
	}
	t.Log(err)
}

// The message says what is in use, and by whom when it is known.
func TestInUseErrorMessage(t *testing.T) {
	const rest = ": only one multicast router can run here (pim6sd, smcroute, another lcast)"
	for _, c := range []struct {
		holders []Holder
		want    string
	}{
		{nil, "IPv6 multicast routing is already in use in this network namespace (its holder could not be found)" + rest},
		{[]Holder{{"smcroute", 1234}}, "IPv6 multicast routing is already in use in this network namespace (by smcroute, pid 1234)" + rest},
		{[]Holder{{"radvd", 12}, {"pim6sd", 99}}, "IPv6 multicast routing is already in use in this network namespace (by one of radvd, pid 12; pim6sd, pid 99)" + rest},
	} {
		err := error(&InUseError{Holders: c.holders})
		if err.Error() != c.want {
			t.Errorf("%+v:\n got %q\nwant %q", c.holders, err, c.want)
		}
		if !errors.Is(err, ErrInUse) {
			t.Errorf("%v does not match ErrInUse", err)
		}
	}
}

// /proc/net/raw6 lines of ICMPv6 sockets give their inodes; others, and
// malformed lines, none.
func TestParseRaw6Line(t *testing.T) {
	const icmp = "   3: 00000000000000000000000000000000:003A 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123456 2 0000000000000000 0"
	if inode, ok := parseRaw6Line(icmp); !ok || inode != "123456" {
		t.Errorf("ICMPv6 line: %q, %v", inode, ok)
	}
	for _, line := range []string{
		strings.Replace(icmp, ":003A", ":0011", 1),
		"  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops",
		"", "garbage",
	} {
		if inode, ok := parseRaw6Line(line); ok {
			t.Errorf("%q: inode %q", line, inode)
		}
	}
}

// No line makes parseRaw6Line panic, and an inode it returns is a number.
func FuzzParseRaw6Line(f *testing.F) {
	f.Add("   3: 00000000000000000000000000000000:003A 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123456 2 0000000000000000 0")
	f.Fuzz(func(t *testing.T, line string) {
		inode, ok := parseRaw6Line(line)
		if ok && (inode == "" || strings.Trim(inode, "0123456789") != "") {
			t.Fatalf("inode %q from %q", inode, line)
		}
	})
}
