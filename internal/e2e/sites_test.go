package e2e

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/netlab"
)

// send starts the send helper in site i.
func (m *mesh) send(i int, args ...string) *netlab.Process {
	return m.sites[i].Start("env", append([]string{helperEnv + "=send", lcastTestBinary()}, args...)...)
}

func waitExit(t testing.TB, p *netlab.Process, timeout time.Duration, what string) {
	t.Helper()
	if exited, err := p.Wait(timeout); !exited || err != nil {
		t.Fatalf("%s: exited=%v err=%v\n%s", what, exited, err, p.Output())
	}
}

// socat in sites 2 and 3 receives a Go program's stream from site 1; Go
// programs receive what socat sends; iperf2 servers receive an iperf2
// client's stream: complete and without duplicates, at 1000 packets/s.
func TestThreeSitesSocatAndIperf(t *testing.T) {
	netlab.Require(t, "socat", "iperf")
	m := newMesh(t, 3)

	t.Run("socat receives", func(t *testing.T) {
		var files []string
		for i := 1; i < 3; i++ {
			f := filepath.Join(t.TempDir(), "recv")
			files = append(files, f)
			r := startSocatRecv(t, m.sites[i].Namespace, "UDP6-RECV:4242,ipv6-join-group=[ff1e::2]:lc0", "OPEN:"+f+",creat,trunc")
			defer r.Stop()
			m.waitSubscribed(t, 0, i, "ff1e::2", true, 3*time.Second)
		}
		send := m.send(0, "ff1e::2", "2000", "1000", "1200")
		waitExit(t, send, 10*time.Second, "sender")
		time.Sleep(300 * time.Millisecond)
		for i, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[uint64]int{}
			for off := 0; off+1200 <= len(data); off += 1200 {
				seen[binary.BigEndian.Uint64(data[off:])]++
			}
			dups := len(data)/1200 - len(seen)
			t.Logf("socat in site %d: %d datagrams, %d unique", i+2, len(data)/1200, len(seen))
			if len(seen) != 2000 || dups != 0 || len(data)%1200 != 0 {
				var missing []int
				for seq := range 2000 {
					if seen[uint64(seq)] == 0 && len(missing) < 10 {
						missing = append(missing, seq)
					}
				}
				t.Errorf("socat in site %d got %d bytes: %d unique of 2000, %d duplicates, missing %v\nsender printed: %s\n%s",
					i+2, len(data), len(seen), dups, missing, send.Output(), m.diagnose(t))
			}
		}
	})

	t.Run("socat sends", func(t *testing.T) {
		var recvs []*netlab.Process
		for i := 1; i < 3; i++ {
			recvs = append(recvs, startHelper(t, m.sites[i].Namespace, "recv", "ff1e::4", "lc0"))
			m.waitSubscribed(t, 0, i, "ff1e::4", true, 3*time.Second)
		}
		// socat sends a datagram per 1200-byte block it reads; the
		// blocks are written into its standard input 1000 a second.
		send := m.sites[0].Command("socat", "-u", "-b", "1200", "-", "UDP6-SENDTO:[ff1e::4]:4242")
		stdin, err := send.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := send.Start(); err != nil {
			t.Fatal(err)
		}
		block := make([]byte, 1200)
		start := time.Now()
		for i := range 500 {
			time.Sleep(time.Until(start.Add(time.Duration(i) * time.Millisecond)))
			binary.BigEndian.PutUint64(block, uint64(i))
			if _, err := stdin.Write(block); err != nil {
				t.Fatal(err)
			}
		}
		stdin.Close()
		if err := send.Wait(); err != nil {
			t.Fatalf("socat sender: %v", err)
		}
		for i, r := range recvs {
			waitExit(t, r, 5*time.Second, "receiver")
			res := parseReceived(t, r.Output())
			t.Logf("site %d: %+v", i+2, res)
			if res.unique != 500 || res.dups != 0 {
				t.Errorf("site %d received %d of 500 unique with %d duplicates", i+2, res.unique, res.dups)
			}
		}
	})

	t.Run("iperf2", func(t *testing.T) {
		var servers []*netlab.Process
		for i := 1; i < 3; i++ {
			servers = append(servers, m.sites[i].Start("iperf", "-s", "-u", "-V", "-B", "ff1e::3%lc0", "-e", "-t", "6", "-i", "10"))
			m.waitSubscribed(t, 0, i, "ff1e::3", true, 3*time.Second)
		}
		client := m.sites[0].Start("iperf", "-c", "ff1e::3", "-u", "-V", "-l", "1200", "-b", "1000pps", "-t", "3", "-T", "1", "-e")
		waitExit(t, client, 10*time.Second, "iperf client")
		sent := regexp.MustCompile(`Sent (\d+) datagrams`).FindStringSubmatch(client.Output())
		lost := regexp.MustCompile(`(\d+)/(\d+) \(`)
		for i, s := range servers {
			waitExit(t, s, 10*time.Second, "iperf server")
			got := lost.FindStringSubmatch(s.Output())
			if got == nil || sent == nil {
				t.Fatalf("no iperf report in site %d:\n%s\nclient:\n%s", i+2, s.Output(), client.Output())
			}
			t.Logf("iperf2 in site %d: lost/total %s/%s, client sent %s", i+2, got[1], got[2], sent[1])
			total, _ := strconv.Atoi(got[2])
			if got[1] != "0" || total < 2990 {
				t.Errorf("iperf2 in site %d: lost %s of %s\n%s", i+2, got[1], got[2], m.diagnose(t))
			}
		}
	})
}

// A program on Librecast's channel API in one site receives what the same
// program sends in another, neither naming an interface.
func TestLibrecastChannels(t *testing.T) {
	bin := buildLcchat(t)
	m := newMesh(t, 3)
	var recvs []*netlab.Process
	for i := 1; i < 3; i++ {
		r := m.sites[i].Start(bin, "recv", "lcast-test-channel", "20")
		if !r.WaitOutput("ready", 5*time.Second) {
			t.Fatalf("lcchat recv: %s", r.Output())
		}
		recvs = append(recvs, r)
	}
	// The channel's group is what both ends joined: find it from status.
	var group string
	netlab.Poll(3*time.Second, func() bool {
		for _, g := range m.nodes[1].status(t).LocalGroups {
			if strings.HasPrefix(g.Group, "ff1e:") {
				group = g.Group
			}
		}
		return group != ""
	})
	if group == "" {
		t.Fatal("the Librecast channel's group never showed in status")
	}
	for i := 1; i < 3; i++ {
		m.waitSubscribed(t, 0, i, group, true, 3*time.Second)
	}
	waitExit(t, m.sites[0].Start(bin, "send", "lcast-test-channel", "20"), 10*time.Second, "lcchat send")
	for i, r := range recvs {
		waitExit(t, r, 5*time.Second, "lcchat recv")
		if n := strings.Count(r.Output(), "got message "); n != 20 {
			t.Errorf("site %d received %d of 20 messages:\n%s", i+2, n, r.Output())
		}
	}
	t.Logf("channel group %s; site 2 printed:\n%s", group, recvs[0].Output())
}

// buildLcchat builds testdata/lcchat.c, a program on Librecast's channel
// API, and returns its path.
func buildLcchat(t *testing.T) string {
	t.Helper()
	netlab.Require(t, "gcc")
	bin := filepath.Join(t.TempDir(), "lcchat")
	if out, err := exec.Command("gcc", "-Wall", "-o", bin, "testdata/lcchat.c", "-llibrecast").CombinedOutput(); err != nil {
		if os.Getenv("CI") == "" {
			t.Skipf("skipped: cannot build against liblibrecast-dev (apt-get install liblibrecast-dev libsodium-dev): %v\n%s", err, out)
		}
		t.Fatalf("building lcchat: %v\n%s", err, out)
	}
	return bin
}

// rxBytes returns the bytes received on eth0 of site i.
func (m *mesh) rxBytes(t *testing.T, i int) int {
	t.Helper()
	out := m.sites[i].Run("cat", "/sys/class/net/eth0/statistics/rx_bytes")
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (m *mesh) txPackets(t *testing.T, from, to int) uint64 {
	return m.peerStatus(t, from, to).TxPackets
}

var joinedRE = regexp.MustCompile(`joined (\d+)`)
var firstRE = regexp.MustCompile(`first \d+ at (\d+)`)

// A site without listeners gets no data; a receiver that joins while the
// sender streams gets data within 1 s; after the last receiver of a site
// leaves, the sender's site stops sending to it within 1 s.
func TestJoinLeaveWhileStreaming(t *testing.T) {
	m := newMesh(t, 3)
	startHelper(t, m.sites[1].Namespace, "recv", "ff1e::6", "lc0", "10s")
	m.waitSubscribed(t, 0, 1, "ff1e::6", true, 3*time.Second)
	sender := m.send(0, "ff1e::6", "8000", "1000", "1200")

	// Site 3 has no listener: over a second of streaming (1.2 MB to site
	// 2), its underlay carries only handshakes, keepalives and hellos.
	time.Sleep(500 * time.Millisecond)
	before := m.rxBytes(t, 2)
	time.Sleep(time.Second)
	if got := m.rxBytes(t, 2) - before; got > 5000 {
		t.Fatalf("site 3 without listeners received %d bytes in 1 s of streaming", got)
	}

	recv := startHelper(t, m.sites[2].Namespace, "recv", "ff1e::6", "lc0", "10s")
	if !recv.WaitOutput("first ", time.Second) {
		t.Fatalf("no data within 1 s of joining:\n%s", recv.Output())
	}
	joined, _ := strconv.ParseInt(joinedRE.FindStringSubmatch(recv.Output())[1], 10, 64)
	first, _ := strconv.ParseInt(firstRE.FindStringSubmatch(recv.Output())[1], 10, 64)
	t.Logf("join to first packet: %v", time.Duration(first-joined).Round(100*time.Microsecond))

	recv.Signal(syscall.SIGKILL)
	left := time.Now()
	stopped := m.waitSubscribed(t, 0, 2, "ff1e::6", false, time.Second)
	t.Logf("leave to sender's site stopping: %v", stopped.Round(time.Millisecond))
	sentBefore := m.txPackets(t, 0, 2)
	time.Sleep(500 * time.Millisecond)
	if extra := m.txPackets(t, 0, 2) - sentBefore; extra > 2 {
		t.Fatalf("%d packets went to site 3 after its leave settled (%v ago)", extra, time.Since(left))
	}
	sender.Signal(syscall.SIGKILL)
}

// streamTo starts a program in site 2 receiving group (it ends after idle
// without data), waits until site 1 knows, starts site 1 sending n
// 1200-byte datagrams at 1000/s, and returns a second into the stream.
func (m *mesh) streamTo(t *testing.T, group string, n int, idle string) *netlab.Process {
	t.Helper()
	recv := startHelper(t, m.sites[1].Namespace, "recv", group, "lc0", idle)
	m.waitSubscribed(t, 0, 1, group, true, 3*time.Second)
	m.send(0, group, strconv.Itoa(n), "1000", "1200")
	time.Sleep(time.Second)
	return recv
}

// Unicast from site 3 to site 1's overlay address arrives.
func TestUnicastBetweenOverlayAddresses(t *testing.T) {
	netlab.Require(t, "socat")
	m := newMesh(t, 3)
	addr1 := m.nodes[0].status(t).Address
	recv := m.sites[0].Start("socat", "-u", "UDP6-RECV:5000,bind=["+addr1+"]", "-")
	// The datagram is sent once socat has bound its socket (else it is
	// refused, and the test is of nothing).
	if _, ok := netlab.Poll(5*time.Second, func() bool {
		out, _ := m.sites[0].Command("ss", "-Hlun", "sport = :5000").Output()
		return len(out) > 0
	}); !ok {
		t.Fatalf("socat did not bind port 5000:\n%s", recv.Output())
	}
	cmd := m.sites[2].Command("socat", "-u", "-", "UDP6-SENDTO:["+addr1+"]:5000")
	cmd.Stdin = strings.NewReader("hello from site 3\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("socat send: %v %s", err, out)
	}
	if !recv.WaitOutput("hello from site 3", 3*time.Second) {
		t.Fatalf("unicast did not arrive; site 1 printed %q", recv.Output())
	}
}

// Link-scope application groups (mDNS's ff02::fb here) cross only between
// sites that set forward_link_scope, carrying each node's link-local source.
func TestLinkScopeOptIn(t *testing.T) {
	for _, tc := range []struct {
		name    string
		extra   string
		crosses bool
	}{
		{"default", "", false},
		{"forward_link_scope", "forward_link_scope = true\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMeshSitesOnly(t, 2)
			for _, n := range m.nodes {
				doc, _ := os.ReadFile(n.cfg)
				os.WriteFile(n.cfg, append([]byte(tc.extra), doc...), 0o600)
				n.up()
			}
			// Without a session a wrong subscription could not be made in
			// the time the default case gives it.
			m.waitConnected(t)
			recv := startHelper(t, m.sites[1].Namespace, "recv", "ff02::fb", "lc0", "1s")
			m.nodes[1].waitGroup(t, "ff02::fb", true, time.Second)
			if tc.crosses {
				m.waitSubscribed(t, 0, 1, "ff02::fb", true, 3*time.Second)
			} else {
				time.Sleep(1500 * time.Millisecond) // time to (wrongly) subscribe
			}
			waitExit(t, m.send(0, "ff02::fb%lc0", "50", "1000", "100"), 5*time.Second, "sender")
			if !tc.crosses {
				time.Sleep(500 * time.Millisecond)
				if strings.Contains(recv.Output(), "first ") {
					t.Fatalf("link-scope traffic crossed without forward_link_scope:\n%s", recv.Output())
				}
				return
			}
			waitExit(t, recv, 5*time.Second, "receiver")
			if res := parseReceived(t, recv.Output()); res.unique != 50 {
				t.Fatalf("received %+v, want 50", res)
			}
		})
	}
}

// When a site's underlay address changes under its running daemon (the old
// address removed, a new one in the same network added), delivery resumes
// in both directions without restarting anything: the site sends from its
// new address, and its peer learns that address from the first
// authenticated packet.
func TestUnderlayAddressChange(t *testing.T) {
	for _, tc := range []struct {
		name string
		site int // whose address changes: 0 the sender's, 1 the receiver's
	}{{"sender moves", 0}, {"receiver moves", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t, 2)
			recv := m.streamTo(t, "ff1e::8", 5000, "6s")
			s := m.sites[tc.site]
			moved := strings.Replace(s.Addr.String(), "::2", "::3", 1)
			s.Run("ip", "addr", "add", moved+"/64", "dev", "eth0", "nodad")
			s.Run("ip", "addr", "del", s.Addr.String()+"/64", "dev", "eth0")
			waitExit(t, recv, 15*time.Second, "receiver")
			res := parseReceived(t, recv.Output())
			t.Logf("%s: %+v (longest gap %d ms)", tc.name, res, res.maxGap)
			// The receiver's new address reaches the sender with its
			// next hello, at most a second later.
			if res.maxGap > 2000 || res.last < 4900 || res.dups != 0 {
				t.Fatalf("delivery after the address change: %+v\n%s", res, m.diagnose(t))
			}
		})
	}
}
