package e2e

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/librecast/lcast/internal/netlab"
	"github.com/librecast/lcast/peer"
)

// tcpSystem is a path for TCP from site 1 to site 2: where site 2's sink
// listens, and the daemons that carry it.
type tcpSystem struct {
	name    string
	to      string // [addr]:port
	daemons []*netlab.Process
}

// wireguardGo runs Debian's wireguard-go in sites 1 and 2, a plain
// WireGuard tunnel between fd77::1 and fd77::2 (its default MTU, 1420),
// configured through its UAPI socket: the baseline of lcast's TCP.
func (s *sideBySide) wireguardGo() tcpSystem {
	b := s.b
	netlab.Require(b, "wireguard-go")
	sys := tcpSystem{name: "wireguard-go", to: "[fd77::2]:5003"}
	keys := []peer.Key{newKey(b), newKey(b)}
	const port = 51990
	for i, site := range s.m.sites[:2] {
		// The UAPI socket's path is the host's: the name must be unique.
		name := fmt.Sprintf("wgb%d-%d", os.Getpid()%100000, i+1)
		sock := filepath.Join("/var/run/wireguard", name+".sock")
		b.Cleanup(func() { os.Remove(sock) })
		sys.daemons = append(sys.daemons, site.Start("env", "WG_PROCESS_FOREGROUND=1", "wireguard-go", "-f", name))
		if _, ok := netlab.Poll(5*time.Second, func() bool { _, err := os.Stat(sock); return err == nil }); !ok {
			b.Fatalf("wireguard-go made no UAPI socket %s:\n%s", sock, sys.daemons[i].Output())
		}
		other := s.m.sites[1-i]
		pub := keys[1-i].PublicKey()
		conf := fmt.Sprintf("set=1\nprivate_key=%s\nlisten_port=%d\nreplace_peers=true\npublic_key=%s\nendpoint=[%s]:%d\nallowed_ip=fd77::%d/128\n\n",
			hex.EncodeToString(keys[i][:]), port, hex.EncodeToString(pub[:]), other.Addr, port, 2-i)
		if err := uapiSet(sock, conf); err != nil {
			b.Fatalf("configuring wireguard-go: %v", err)
		}
		site.Run("ip", "addr", "add", fmt.Sprintf("fd77::%d/64", i+1), "dev", name, "nodad")
		site.Run("ip", "link", "set", name, "up")
	}
	return sys
}

// uapiSet sends a set request to a WireGuard UAPI socket.
func uapiSet(sock, req string) error {
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(req)); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "errno=0" {
		return fmt.Errorf("wireguard-go answered %q", line)
	}
	return nil
}

// tcp measures TCP from site 1 to site 2 over lcast's overlay and over a
// plain wireguard-go tunnel, alternating, benchRounds times for tcpDur
// each, and adds the medians: throughput and the daemons' CPU per MB.
func (s *sideBySide) tcp(rep *benchReport) {
	const tcpDur = 5 * time.Second
	lcast := tcpSystem{name: "lcast", to: fmt.Sprintf("[%s]:5003", peer.OverlayAddr(s.m.nodes[1].key.PublicKey()))}
	for _, n := range s.m.nodes[:2] {
		lcast.daemons = append(lcast.daemons, n.daemon)
	}
	systems := []tcpSystem{lcast, s.wireguardGo()}
	mbits, cpu := map[string][]float64{}, map[string][]float64{}
	for r := range benchRounds {
		for i := range systems {
			sys := systems[(r+i)%len(systems)]
			before := daemonsCPU(sys.daemons)
			res := measureTCP(s.b, s.m.sites[0].Namespace, s.m.sites[1].Namespace, sys.to, tcpDur)
			used := daemonsCPU(sys.daemons) - before
			secs := time.Duration(res.Last - res.First).Seconds()
			mb := float64(res.Bytes) / 1e6
			rate, perMB := mb*8/max(secs, 1e-9), float64(used.Microseconds())/max(mb, 1e-9)
			mbits[sys.name] = append(mbits[sys.name], rate)
			cpu[sys.name] = append(cpu[sys.name], perMB)
			fmt.Printf("  %-12s TCP site 1 -> site 2: %5.0f Mbit/s, daemons' CPU %4.0f us per MB\n", sys.name, rate, perMB)
		}
	}
	for _, sys := range systems {
		rep.Rows = append(rep.Rows,
			benchRow{sys.name, "TCP site 1 -> site 2: Mbit/s", median(mbits[sys.name])},
			benchRow{sys.name, "TCP site 1 -> site 2: daemons' CPU us per MB", median(cpu[sys.name])})
	}
}
