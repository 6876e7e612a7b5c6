package gateway

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/librecast/lcast/mld"
)

// LAN is one LAN interface the gateway is the multicast router of.
type LAN struct {
	name     string
	index    int
	prefixes []netip.Prefix // of its global and unique-local addresses
	sock     *lanSocket
	link     *mld.Link
	querier  *mld.Querier
	counter  string      // the nftables counter of its foreign sources
	dirty    atomic.Bool // its listeners changed since the sets last followed them
}

// openLAN makes the interface name a multicast interface of the kernel's
// and opens its MLD socket.
func (g *Gateway) openLAN(name string) (*LAN, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return nil, err
	}
	l := &LAN{name: name, index: ifc.Index}
	var source netip.Addr
	addrs, err := ifc.Addrs()
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.To4() != nil {
			continue
		}
		ip, _ := netip.AddrFromSlice(ipn.IP)
		bits, _ := ipn.Mask.Size()
		switch {
		case ip.IsLinkLocalUnicast():
			if !source.IsValid() {
				source = ip
			}
		case ip.IsGlobalUnicast():
			l.prefixes = append(l.prefixes, netip.PrefixFrom(ip, bits).Masked())
		}
	}
	if !source.IsValid() {
		return nil, errors.New("no IPv6 link-local address: an MLD router sends its queries from one")
	}
	if l.sock, err = openLANSocket(ifc.Index); err != nil {
		return nil, err
	}
	l.link = mld.NewLink(mld.LANTiming, func() { g.lanChanged(l) })
	log := g.cfg.Log.With("lan", name)
	l.querier = &mld.Querier{Link: l.link, Source: source, Timing: mld.LANTiming, Send: l.sock.write, Log: log}
	return l, nil
}

// read hands every MLD packet that arrives on the LAN to its querier, until
// the socket closes.
func (l *LAN) read(log *slog.Logger) {
	buf := make([]byte, 1<<16)
	for {
		n, err := l.sock.read(buf)
		if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
			return
		}
		if err != nil {
			log.Error("LAN: reading MLD", "lan", l.name, "err", err)
			return
		}
		l.querier.HandlePacket(time.Now(), buf[:n])
	}
}

// Name returns the interface's name.
func (l *LAN) Name() string { return l.name }

// Prefixes returns the prefixes of the LAN's global and unique-local
// addresses: its hosts' packets go onward only with sources in them.
func (l *LAN) Prefixes() []netip.Prefix { return l.prefixes }

// Groups returns the groups with listeners on the LAN, sorted by group.
func (l *LAN) Groups() []mld.GroupState { return l.link.Groups() }

// Querier returns the LAN's MLD querier's address, and whether it is this
// gateway.
func (l *LAN) Querier() (netip.Addr, bool) { return l.querier.Querier() }

// Link returns the LAN's listener state, which the gateway keeps: for its
// counters (malformed messages, reports beyond its caps).
func (l *LAN) Link() *mld.Link { return l.link }

// String returns the LAN's name and prefixes.
func (l *LAN) String() string { return fmt.Sprintf("%s %v", l.name, l.prefixes) }
