package tun

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// Alias marks an interface as created and managed by lcast. An interface
// without it is never adopted.
const Alias = "lcast-managed"

// RouteMetric is the metric of lc0's multicast routes in the local table,
// below the kernel's 256 so that lc0 wins for programs that name no interface.
const RouteMetric = 128

// routeProtocol tags the routes lcast adds (rtm_protocol), so they can be
// told apart from the kernel's and other daemons'.
const routeProtocol = 0x6c // 'l'

// Errors that explain why Open failed.
var (
	ErrNotOurs = errors.New("exists and was not created by lcast (its alias is not " + Alias + "); remove it or choose another interface name")
	ErrInUse   = errors.New("is in use by another process (is another lcast running?)")
)

// addrGenModeNone is IN6_ADDR_GEN_MODE_NONE (linux/if_link.h), which
// x/sys/unix does not define: the kernel generates no IPv6 address.
const addrGenModeNone = 1

// TxQueueLen is the interface's queue length, in packets.
const TxQueueLen = 4096

// Config describes the interface to create.
type Config struct {
	Name      string
	MTU       int
	Addr      netip.Prefix   // overlay address with the overlay prefix length
	LinkLocal netip.Addr     // the interface's only link-local address
	Routes    []netip.Prefix // multicast prefixes to route to the interface
}

// Interface is a configured lc0.
type Interface struct {
	// Device reads and writes packets of the interface; Read corrects
	// the UDP checksums wireguard-go computes (see device).
	Device wgtun.Device
	// Adopted reports that the interface survived an earlier daemon and was
	// taken over rather than created.
	Adopted bool
	cfg     Config
	index   int
	log     *slog.Logger

	// drained is closed when the goroutine that drains wireguard-go's
	// events has returned: after the device closed.
	drained chan struct{}
	// mu guards closing and the starts of watchers: none starts once
	// Close has begun.
	mu       sync.Mutex
	closing  bool
	stop     chan struct{}  // closed by Close: ends the watchers
	watchers sync.WaitGroup // WatchMemberships' goroutines

	closeOnce sync.Once
	closeErr  error
}

// Open creates and configures the interface, or adopts one lcast left
// persistent. Each change is logged. If configuration fails half way, what
// Open created is removed again.
func Open(cfg Config, log *slog.Logger) (ifc *Interface, err error) {
	adopted := false
	if link, lerr := netlink.LinkByName(cfg.Name); lerr == nil {
		if link.Type() != "tuntap" || link.Attrs().Alias != Alias {
			return nil, fmt.Errorf("interface %s %w", cfg.Name, ErrNotOurs)
		}
		adopted = true
	}
	dev, err := wgtun.CreateTUN(cfg.Name, cfg.MTU)
	if err != nil {
		return nil, explainCreate(cfg.Name, err)
	}
	ifc = &Interface{Device: device{dev}, Adopted: adopted, cfg: cfg, log: log,
		drained: make(chan struct{}), stop: make(chan struct{})}
	// wireguard-go's link watchers send up/down and MTU events and block
	// once nobody reads them; lcast needs none, so they are drained until
	// closing the device ends the watchers, which close the channel.
	go func() {
		defer close(ifc.drained)
		for range dev.Events() {
		}
	}()
	if adopted {
		log.Info("adopted interface left by an earlier lcast", "interface", cfg.Name)
	} else {
		log.Debug("created interface", "interface", cfg.Name)
	}
	defer func() {
		if err != nil && !adopted {
			ifc.Close()
		} else if err != nil {
			ifc.stopWatchers()
			dev.Close() // leave the adopted interface as we found it
			<-ifc.drained
		}
	}()
	if err := ifc.setPersist(true); err != nil {
		return ifc, fmt.Errorf("make %s persistent: %w", cfg.Name, err)
	}
	link, err := netlink.LinkByName(cfg.Name)
	if err != nil {
		return ifc, fmt.Errorf("find %s: %w", cfg.Name, err)
	}
	ifc.index = link.Attrs().Index
	if err := netlink.LinkSetAlias(link, Alias); err != nil {
		return ifc, fmt.Errorf("mark %s: %w", cfg.Name, err)
	}
	// A deeper queue than a TUN's 500 packets absorbs the bursts programs
	// and the subscription exchange write while lcast's reader is busy.
	if err := netlink.LinkSetTxQLen(link, TxQueueLen); err != nil {
		return ifc, fmt.Errorf("set the queue length of %s: %w", cfg.Name, err)
	}
	// The kernel must not make a link-local address of its own: the one
	// lcast sets identifies this node to its peers. Set through netlink,
	// not /proc/sys, so that the unit can keep ProtectKernelTunables=yes.
	if err := netlink.LinkSetIP6AddrGenMode(link, addrGenModeNone); err != nil {
		return ifc, fmt.Errorf("set addr_gen_mode of %s: %w", cfg.Name, err)
	}
	for _, p := range []netip.Prefix{cfg.Addr, netip.PrefixFrom(cfg.LinkLocal, 64)} {
		addr := &netlink.Addr{IPNet: prefixToIPNet(p), Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return ifc, fmt.Errorf("add address %s to %s: %w", p, cfg.Name, err)
		}
	}
	log.Debug("set addresses", "interface", cfg.Name, "address", cfg.Addr, "link_local", cfg.LinkLocal, "mtu", cfg.MTU)
	if err := netlink.LinkSetUp(link); err != nil {
		return ifc, fmt.Errorf("bring %s up: %w", cfg.Name, err)
	}
	if err := ifc.addRoutes(); err != nil {
		return ifc, err
	}
	return ifc, nil
}

func explainCreate(name string, err error) error {
	switch {
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("interface %s %w", name, ErrInUse)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("create interface %s: %w (lcast needs CAP_NET_ADMIN)", name, err)
	case errors.Is(err, unix.ENOENT), errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("create interface %s: %w (is the tun module loaded, /dev/net/tun present?)", name, err)
	}
	return fmt.Errorf("create interface %s: %w", name, err)
}

// routes returns the netlink form of the configured multicast routes.
func (ifc *Interface) routes() []*netlink.Route {
	out := make([]*netlink.Route, len(ifc.cfg.Routes))
	for i, p := range ifc.cfg.Routes {
		out[i] = &netlink.Route{
			LinkIndex: ifc.index,
			Dst:       prefixToIPNet(p),
			Table:     unix.RT_TABLE_LOCAL,
			Type:      unix.RTN_MULTICAST,
			Priority:  RouteMetric,
			Protocol:  routeProtocol,
		}
	}
	return out
}

func (ifc *Interface) addRoutes() error {
	for _, r := range ifc.routes() {
		err := netlink.RouteAdd(r)
		if errors.Is(err, unix.EEXIST) && ifc.Adopted {
			continue // ours, from the daemon that crashed
		}
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add route multicast %s metric %d: another interface has it (is another lcast running in this network namespace?)", r.Dst, RouteMetric)
		}
		if err != nil {
			return fmt.Errorf("add route multicast %s dev %s: %w", r.Dst, ifc.cfg.Name, err)
		}
		ifc.log.Debug("added route", "route", "multicast "+r.Dst.String()+" table local", "interface", ifc.cfg.Name)
	}
	ifc.log.Debug("added multicast routes", "interface", ifc.cfg.Name, "count", len(ifc.cfg.Routes), "metric", RouteMetric)
	return nil
}

// Close stops the membership watchers (waiting for a call of their
// function under way to return), then removes the routes, the address
// and the interface, and returns once the goroutines the interface
// started have returned. It is what a clean stop does; after a crash the
// interface stays, persistent, for the next start. Reads and writes in
// progress return os.ErrClosed. Close is idempotent.
func (ifc *Interface) Close() error {
	ifc.closeOnce.Do(func() {
		ifc.stopWatchers()
		ifc.closeErr = ifc.remove()
		<-ifc.drained
	})
	return ifc.closeErr
}

// stopWatchers ends the membership watchers and waits for them; none
// starts after it.
func (ifc *Interface) stopWatchers() {
	ifc.mu.Lock()
	if !ifc.closing {
		ifc.closing = true
		close(ifc.stop)
	}
	ifc.mu.Unlock()
	ifc.watchers.Wait()
}

func (ifc *Interface) remove() error {
	var errs []error
	for _, r := range ifc.routes() {
		if err := netlink.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", r.Dst, err))
		}
	}
	// EBADFD: the interface is already gone (deleted under us).
	if err := ifc.setPersist(false); err != nil && !errors.Is(err, unix.EBADFD) {
		errs = append(errs, fmt.Errorf("clear persistence of %s: %w", ifc.cfg.Name, err))
	}
	// os.ErrClosed, EPIPE: wireguard-go's link watcher may have closed its
	// pipe first (both ends, or only the reading end so far), so that
	// Close's wake-up write finds no reader: the watcher is gone already.
	if err := ifc.Device.Close(); err != nil && !errors.Is(err, os.ErrClosed) && !errors.Is(err, unix.EPIPE) {
		errs = append(errs, fmt.Errorf("close %s: %w", ifc.cfg.Name, err))
	}
	// A non-persistent TUN disappears with its last file descriptor; make sure.
	if link, err := netlink.LinkByName(ifc.cfg.Name); err == nil && link.Attrs().Alias == Alias {
		if err := netlink.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", ifc.cfg.Name, err))
		}
	}
	ifc.log.Info("removed interface", "interface", ifc.cfg.Name)
	return errors.Join(errs...)
}

func (ifc *Interface) setPersist(on bool) error {
	rc, err := ifc.Device.File().SyscallConn()
	if err != nil {
		return err
	}
	v := 0
	if on {
		v = 1
	}
	var ioErr error
	if err := rc.Control(func(fd uintptr) { ioErr = unix.IoctlSetInt(int(fd), unix.TUNSETPERSIST, v) }); err != nil {
		return err
	}
	return ioErr
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
