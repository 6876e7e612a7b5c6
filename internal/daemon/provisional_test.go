package daemon

import (
	"context"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/librecast/lcast/internal/clock"
	"github.com/librecast/lcast/mld"
	"github.com/librecast/lcast/router"
)

func newTestDaemon() *Daemon {
	return &Daemon{changed: make(chan struct{}, 1), provisional: map[netip.Addr]time.Time{}, provAdded: make(chan struct{}, 1),
		scope: router.ScopePolicy{}, clock: clock.NewWarp()}
}

func anySource(g string) mld.GroupState {
	return mld.GroupState{Group: netip.MustParseAddr(g), Mode: mld.Exclude, Sources: []netip.Addr{}}
}

// A join the kernel announces counts, for any source, until MLD reports
// the group; a leave announced ends it; groups that do not cross and SSM
// groups wait for their report.
func TestProvisionalJoins(t *testing.T) {
	d := newTestDaemon()
	for _, g := range []string{"ff1e::2", "ff1e::1", "ff02::fb", "ff3e::8000:1"} {
		d.membershipHint(netip.MustParseAddr(g), true)
	}
	select {
	case <-d.changed:
	default:
		t.Fatal("a join did not wake the announcer")
	}
	reported := []mld.GroupState{{Group: netip.MustParseAddr("ff1e::1"), Mode: mld.Include, Sources: []netip.Addr{netip.MustParseAddr("2001:db8::1")}}}
	got := d.withProvisional(reported)
	want := []mld.GroupState{reported[0], anySource("ff1e::2")}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("with a report of ff1e::1:\n got %v\nwant %v", got, want)
	}
	// The report's filter stays authoritative once it came.
	if got := d.withProvisional(nil); !reflect.DeepEqual(got, []mld.GroupState{anySource("ff1e::2")}) {
		t.Fatalf("after the report: %v", got)
	}
	d.membershipHint(netip.MustParseAddr("ff1e::2"), false)
	if got := d.withProvisional(nil); len(got) != 0 {
		t.Fatalf("after the leave: %v", got)
	}
	d.membershipHint(netip.MustParseAddr("ff1e::3"), true)
	d.clock.(*clock.Warp).Advance(provisionalHold + time.Millisecond)
	if got := d.withProvisional(nil); len(got) != 0 {
		t.Fatalf("an expired join counts: %v", got)
	}
}

// When a provisional join expires, the announcer is woken to drop it.
func TestProvisionalJoinExpiryWakesAnnouncer(t *testing.T) {
	d := newTestDaemon()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); d.expireProvisional(ctx) }()
	defer func() { cancel(); <-done }()
	d.membershipHint(netip.MustParseAddr("ff1e::3"), true)
	<-d.changed // the join's own wake-up
	// Real time (not the clock) bounds the wait for the expiry's wake-up;
	// give expireProvisional time to set its timer before the clock moves.
	time.Sleep(20 * time.Millisecond)
	d.clock.(*clock.Warp).Advance(provisionalHold)
	select {
	case <-d.changed:
	case <-time.After(5 * time.Second):
		t.Fatal("the expiry of a provisional join did not wake the announcer")
	}
}
