package tun

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// restoreDelay is how long KeepRoutes waits after a deletion before it
// restores: deletions within it coalesce, so a tool that deletes the
// routes over and over meets one restore per interval, never a busy loop.
const restoreDelay = 100 * time.Millisecond

// KeepRoutes puts lc0's multicast routes back when something deletes them
// while lcast runs, logging each time, until ctx is done. It returns an
// error at once if the kernel's route announcements cannot be watched.
// Close must come after KeepRoutes has returned, or the routes it removes
// could be restored.
func (ifc *Interface) KeepRoutes(ctx context.Context) error {
	updates := make(chan netlink.RouteUpdate, 256)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.RouteSubscribeWithOptions(updates, done, netlink.RouteSubscribeOptions{}); err != nil {
		return fmt.Errorf("watching routes: %w", err)
	}
	var restore <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-updates:
			if !ok {
				return fmt.Errorf("watching routes: the kernel's announcements stopped")
			}
			if u.Type == unix.RTM_DELROUTE && u.Route.LinkIndex == ifc.index && u.Route.Protocol == routeProtocol && restore == nil {
				restore = time.After(restoreDelay)
			}
		case <-restore:
			restore = nil
			ifc.restoreRoutes()
		}
	}
}

// restoreRoutes adds the routes that are missing.
func (ifc *Interface) restoreRoutes() {
	restored := 0
	for _, r := range ifc.routes() {
		err := netlink.RouteAdd(r)
		switch {
		case err == nil:
			restored++
		case errors.Is(err, unix.ENODEV):
			return // lc0 itself is gone, which ends the daemon
		case !errors.Is(err, unix.EEXIST):
			ifc.log.Warn("restoring a route deleted under lcast", "route", "multicast "+r.Dst.String()+" table local", "interface", ifc.cfg.Name, "err", err)
		}
	}
	if restored > 0 {
		ifc.log.Warn("restored multicast routes deleted under lcast", "interface", ifc.cfg.Name, "count", restored)
	}
}
