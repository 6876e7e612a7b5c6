package gateway

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/librecast/lcast/mld"
)

var (
	testAddr   = netip.MustParseAddr
	testPrefix = netip.MustParsePrefix
)

func anySourceState(group string) mld.GroupState {
	return mld.GroupState{Group: testAddr(group), Mode: mld.Exclude, Sources: []netip.Addr{}}
}

func filterState(group string, mode mld.FilterMode, sources ...string) mld.GroupState {
	s := mld.GroupState{Group: testAddr(group), Mode: mode, Sources: []netip.Addr{}}
	for _, src := range sources {
		s.Sources = append(s.Sources, testAddr(src))
	}
	return s
}

func testAddrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, testAddr(a))
	}
	return out
}

// testLayout is the table of a gateway with lc0 and two LANs: lan1 (two
// prefixes, one listed twice) and lan2.
func testLayout() layout {
	return newLayout("lcast_lc0", link{"lc0", 10}, []link{{"lan1", 11}, {"lan2", 12}}, [][]netip.Prefix{
		{testPrefix("2001:db8:1::/64"), testPrefix("fd00:1::/64"), testPrefix("2001:db8:1::/64")},
		{testPrefix("2001:db8:2::/64")},
	})
}

func opStrings(ops []setOp) []string {
	out := make([]string, len(ops))
	for i, o := range ops {
		out[i] = o.String()
	}
	return out
}

// A LAN's listener changes become the element changes of its sets, and
// nothing else: an any-source join is its group in the exclude set, a
// source it blocks a group . source in the blocked set, an SSM join its
// sources in the include set; a change of filter deletes what the old one
// had and the new one has not, and adds the reverse; groups that did not
// change cost nothing.
func TestLANChanges(t *testing.T) {
	base := []mld.GroupState{anySourceState("ff1e::1"), filterState("ff3e::2", mld.Exclude, "2001:db8:9::9"),
		filterState("ff3e::3", mld.Include, "2001:db8:9::1", "2001:db8:9::2")}
	for _, c := range []struct {
		name string
		from []mld.GroupState
		to   []mld.GroupState
		want []string
	}{
		{"from nothing", nil, base, []string{
			"+lan_lan1_exclude ff1e::1",
			"+lan_lan1_exclude ff3e::2", "+lan_lan1_blocked ff3e::2 . 2001:db8:9::9",
			"+lan_lan1_include ff3e::3 . 2001:db8:9::1", "+lan_lan1_include ff3e::3 . 2001:db8:9::2",
		}},
		{"no change", base, base, []string{}},
		{"to nothing", base, nil, []string{
			"-lan_lan1_exclude ff1e::1",
			"-lan_lan1_exclude ff3e::2", "-lan_lan1_blocked ff3e::2 . 2001:db8:9::9",
			"-lan_lan1_include ff3e::3 . 2001:db8:9::1", "-lan_lan1_include ff3e::3 . 2001:db8:9::2",
		}},
		{"one join among many", base, mld.UnionGroups(base, []mld.GroupState{anySourceState("ff1e::1:5")}),
			[]string{"+lan_lan1_exclude ff1e::1:5"}},
		{"one leave among many", base, slices.Delete(slices.Clone(base), 0, 1),
			[]string{"-lan_lan1_exclude ff1e::1"}},
		{"an SSM source more", base, []mld.GroupState{base[0], base[1],
			filterState("ff3e::3", mld.Include, "2001:db8:9::1", "2001:db8:9::2", "2001:db8:9::3")},
			[]string{"+lan_lan1_include ff3e::3 . 2001:db8:9::3"}},
		{"an SSM source less", base, []mld.GroupState{base[0], base[1], filterState("ff3e::3", mld.Include, "2001:db8:9::2")},
			[]string{"-lan_lan1_include ff3e::3 . 2001:db8:9::1"}},
		{"another blocked source", base, []mld.GroupState{base[0], filterState("ff3e::2", mld.Exclude, "2001:db8:9::8"), base[2]},
			[]string{"-lan_lan1_blocked ff3e::2 . 2001:db8:9::9", "+lan_lan1_blocked ff3e::2 . 2001:db8:9::8"}},
		{"any source to SSM", base, []mld.GroupState{filterState("ff1e::1", mld.Include, "2001:db8:9::1"), base[1], base[2]},
			[]string{"-lan_lan1_exclude ff1e::1", "+lan_lan1_include ff1e::1 . 2001:db8:9::1"}},
		{"SSM to blocking one source", base, []mld.GroupState{base[0], base[1], filterState("ff3e::3", mld.Exclude, "2001:db8:9::1")},
			[]string{
				"-lan_lan1_include ff3e::3 . 2001:db8:9::1", "-lan_lan1_include ff3e::3 . 2001:db8:9::2",
				"+lan_lan1_exclude ff3e::3", "+lan_lan1_blocked ff3e::3 . 2001:db8:9::1",
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := testLayout()
			s := newState(l)
			s.lanChanges(nil, l.lans[0], 0, c.from)
			ops, over := s.lanChanges(nil, l.lans[0], 0, c.to)
			if got := opStrings(ops); !slices.Equal(got, c.want) || over != 0 {
				t.Errorf("ops:\n%s\nwant:\n%s\n(over cap %d)", strings.Join(got, "\n"), strings.Join(c.want, "\n"), over)
			}
			if !slices.EqualFunc(s.lans[0].groups, c.to, mld.GroupState.Equal) {
				t.Errorf("state %v, want %v", s.lans[0].groups, c.to)
			}
			if s.lans[1].groups != nil || s.lc0 != nil {
				t.Errorf("a change on lan1 touched other state: %+v", s)
			}
			// The counts against the caps are those of the elements held.
			wantExclude, wantSources := 0, 0
			for _, g := range c.to {
				if g.Mode == mld.Exclude {
					wantExclude++
				}
				wantSources += len(g.Sources)
			}
			if s.lans[0].exclude != wantExclude || s.lans[0].sources != wantSources {
				t.Errorf("counted %d groups and %d sources, want %d and %d", s.lans[0].exclude, s.lans[0].sources, wantExclude, wantSources)
			}
		})
	}
}

// lc0's set follows the groups wanted through it, deletions first.
func TestLc0Changes(t *testing.T) {
	s := newState(testLayout())
	ops, _ := s.lc0Changes(nil, testAddrs("ff1e::1", "ff1e::2", "ff3e::1"))
	want := []string{"+lc0_groups ff1e::1", "+lc0_groups ff1e::2", "+lc0_groups ff3e::1"}
	if got := opStrings(ops); !slices.Equal(got, want) {
		t.Errorf("ops %q, want %q", got, want)
	}
	ops, _ = s.lc0Changes(nil, testAddrs("ff1e::0", "ff1e::2", "ff3e::1", "ff3e::9"))
	want = []string{"-lc0_groups ff1e::1", "+lc0_groups ff1e::", "+lc0_groups ff3e::9"}
	if got := opStrings(ops); !slices.Equal(got, want) {
		t.Errorf("ops %q, want %q", got, want)
	}
	if ops, _ := s.lc0Changes(nil, testAddrs("ff1e::0", "ff1e::2", "ff3e::1", "ff3e::9")); len(ops) != 0 {
		t.Errorf("no change: ops %v", ops)
	}
}

// manyGroups returns n groups, sorted, from ff1e::1:0:0 on.
func manyGroups(n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range out {
		b := testAddr("ff1e::1:0:0").As16()
		b[12], b[13], b[14], b[15] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
		out[i] = netip.AddrFrom16(b)
	}
	return out
}

// lc0's set holds at most maxLc0Groups: groups beyond are left out and
// counted, those in it stay (first come), and a freed place is taken at
// the next change.
func TestLc0Cap(t *testing.T) {
	s := newState(testLayout())
	all := manyGroups(maxLc0Groups + 5)
	ops, over := s.lc0Changes(nil, slices.Clone(all[5:]))
	if len(ops) != maxLc0Groups || over != 0 {
		t.Fatalf("%d ops, %d over cap, want %d, 0", len(ops), over, maxLc0Groups)
	}
	ops, over = s.lc0Changes(nil, slices.Clone(all))
	if len(ops) != 0 || over != 5 || len(s.lc0) != maxLc0Groups || s.lc0[0] != all[5] {
		t.Fatalf("5 more: %d ops, %d over cap, %d held from %s", len(ops), over, len(s.lc0), s.lc0[0])
	}
	// Three leave: three of the five waiting take their places.
	ops, over = s.lc0Changes(nil, slices.Delete(slices.Clone(all), 10, 13))
	got := opStrings(ops)
	want := []string{"-lc0_groups " + all[10].String(), "-lc0_groups " + all[11].String(), "-lc0_groups " + all[12].String(),
		"+lc0_groups " + all[0].String(), "+lc0_groups " + all[1].String(), "+lc0_groups " + all[2].String()}
	if !slices.Equal(got, want) || over != 2 || len(s.lc0) != maxLc0Groups {
		t.Errorf("ops %q (over %d, held %d), want %q (over 2)", got, over, len(s.lc0), want)
	}
	if !slices.IsSortedFunc(s.lc0, netip.Addr.Compare) {
		t.Error("lc0's state is not sorted")
	}
}

// A LAN's sets hold at most its listener state's caps (which it never
// exceeds): a group that would go beyond is left out and counted.
func TestLANCap(t *testing.T) {
	l := testLayout()
	s := newState(l)
	groups := manyGroups(maxLANGroups + 1)
	want := make([]mld.GroupState, len(groups))
	for i, g := range groups {
		want[i] = mld.GroupState{Group: g, Mode: mld.Exclude, Sources: []netip.Addr{}}
	}
	ops, over := s.lanChanges(nil, l.lans[1], 1, want)
	if len(ops) != maxLANGroups || over != 1 || s.lans[1].exclude != maxLANGroups {
		t.Errorf("%d ops, %d over cap, %d held; want %d, 1, %d", len(ops), over, s.lans[1].exclude, maxLANGroups, maxLANGroups)
	}
	// An SSM group with more sources than room is left out whole.
	s = newState(l)
	src := manyGroups(maxLANSources) // any addresses will do as sources
	big := mld.GroupState{Group: testAddr("ff3e::1"), Mode: mld.Include, Sources: src[:maxLANSources-1]}
	more := mld.GroupState{Group: testAddr("ff3e::2"), Mode: mld.Include, Sources: src[:2]}
	if _, over := s.lanChanges(nil, l.lans[0], 0, []mld.GroupState{big, more}); over != 1 || s.lans[0].sources != maxLANSources-1 {
		t.Errorf("over %d, sources held %d; want 1, %d", over, s.lans[0].sources, maxLANSources-1)
	}
}

// Prefixes are deduplicated and those inside another dropped, as the
// rules match each once.
func TestDisjoint(t *testing.T) {
	got := disjoint([]netip.Prefix{testPrefix("2001:db8:1::/64"), testPrefix("fd00::/8"), testPrefix("2001:db8:1::/64"),
		testPrefix("fd00:1::/64"), testPrefix("2001:db8::/32"), testPrefix("2001:db9::/64")})
	want := []netip.Prefix{testPrefix("2001:db8::/32"), testPrefix("2001:db9::/64"), testPrefix("fd00::/8")}
	if !slices.Equal(got, want) {
		t.Errorf("disjoint = %v, want %v", got, want)
	}
}

// Each LAN has its own names in the table, unique even when two names
// make the same identifier.
func TestLayoutNames(t *testing.T) {
	l := newLayout("lcast_lc0", link{"lc0", 1}, []link{{"br-lan", 2}, {"br_lan", 3}, {"lan.2", 4}}, make([][]netip.Prefix, 3))
	var got []string
	for _, lan := range l.lans {
		got = append(got, lan.setExclude(), lan.chainFrom(), lan.counter())
	}
	want := []string{"lan_br_lan_exclude", "from_lan_br_lan", "lan_br_lan_foreign",
		"lan_br_lan_2_exclude", "from_lan_br_lan_2", "lan_br_lan_2_foreign",
		"lan_lan_2_exclude", "from_lan_lan_2", "lan_lan_2_foreign"}
	if !slices.Equal(got, want) {
		t.Errorf("names %q, want %q", got, want)
	}
}

// identifier makes an nftables identifier of any interface name: letters
// and digits stay, everything else becomes one underscore per character.
func TestIdentifier(t *testing.T) {
	for name, want := range map[string]string{
		"lan1":       "lan1",
		"LAN1":       "LAN1",
		"br-lan":     "br_lan",
		"eth0.100":   "eth0_100",
		"wg_0":       "wg_0",
		"lan:1 x":    "lan_1_x",
		"lanä":       "lan_",
		"":           "",
		"enp3s0f1np": "enp3s0f1np",
	} {
		if got := identifier(name); got != want {
			t.Errorf("identifier(%q) = %q, want %q", name, got, want)
		}
	}
}

// fakeKernel records what the gateway asks of nftables.
type fakeKernel struct {
	mu        sync.Mutex
	calls     []string // "create", "change", "remove", "close"
	changes   [][]string
	createErr error
	changeErr error
	counters  map[string]uint64
}

func (k *fakeKernel) record(call string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls = append(k.calls, call)
}

func (k *fakeKernel) create(layout) error { k.record("create"); return k.createErr }
func (k *fakeKernel) remove() error       { k.record("remove"); return nil }
func (k *fakeKernel) close()              { k.record("close") }

func (k *fakeKernel) change(ops []setOp) error {
	k.record("change")
	k.mu.Lock()
	defer k.mu.Unlock()
	k.changes = append(k.changes, opStrings(ops))
	err := k.changeErr
	k.changeErr = nil
	return err
}

func (k *fakeKernel) counter(name string) (uint64, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	n, ok := k.counters[name]
	if !ok {
		return 0, errors.New("no such counter")
	}
	return n, nil
}

// lastChange returns the ops of the last change and forgets the calls.
func (k *fakeKernel) take() (calls []string, changes [][]string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	calls, changes = k.calls, k.changes
	k.calls, k.changes = nil, nil
	return calls, changes
}

// fakeGateway is a gateway of two LANs (with listener state but no
// sockets) on a fake kernel, as open would make it; lc0 wants *lc0.
func fakeGateway(t *testing.T, lc0 *[]netip.Addr) (*Gateway, *fakeKernel) {
	k := &fakeKernel{counters: map[string]uint64{"lan_lan1_foreign": 7}}
	g := &Gateway{
		cfg: Config{
			Lc0Groups: func() []netip.Addr { return slices.Clone(*lc0) },
			Routable:  func(a netip.Addr) bool { return a.As16()[1]&0x0f > 2 },
			Log:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		},
		kernel: k, layout: testLayout(), wake: make(chan struct{}, 1),
	}
	for _, name := range []string{"lan1", "lan2"} {
		l := &LAN{name: name}
		l.link = mld.NewLink(mld.LANTiming, func() { g.lanChanged(l) })
		l.counter = "lan_" + name + "_foreign"
		g.lans = append(g.lans, l)
	}
	g.state = newState(g.layout)
	return g, k
}

// join has an MLDv1 listener on l join group (from any source).
func join(l *LAN, group string) {
	l.link.Handle(time.Now(), &mld.Message{Type: mld.TypeV1Report, Group: testAddr(group)})
}

// The gateway asks nftables only for what changed: a peer's new group is
// one element in lc0's set, a LAN host's join one in that LAN's, link
// scope none; a failed change makes the table anew with every element.
func TestGatewayChanges(t *testing.T) {
	lc0 := testAddrs("ff1e::1", "ff1e::2")
	g, k := fakeGateway(t, &lc0)
	step := func(name string, wantCalls []string, want ...[]string) {
		t.Helper()
		select {
		case <-g.wake:
		default:
		}
		err := g.apply()
		calls, changes := k.take()
		if !slices.Equal(calls, wantCalls) || fmt.Sprint(changes) != fmt.Sprint(want) {
			t.Errorf("%s: calls %q, changes %q; want %q, %q (apply: %v)", name, calls, changes, wantCalls, want, err)
		}
	}
	g.Update()
	step("start", []string{"change"}, []string{"+lc0_groups ff1e::1", "+lc0_groups ff1e::2"})
	step("nothing new", nil)
	lc0 = testAddrs("ff1e::1", "ff1e::2", "ff1e::3")
	g.Update()
	step("a peer's join", []string{"change"}, []string{"+lc0_groups ff1e::3"})
	join(g.lans[1], "ff1e::9")
	join(g.lans[1], "ff02::9") // link scope: never routed
	step("a LAN host's join", []string{"change"}, []string{"+lan_lan2_exclude ff1e::9"})

	// A change that fails: the next makes the table anew, with all.
	k.changeErr = errors.New("the kernel said no")
	lc0 = testAddrs("ff1e::1")
	g.Update()
	step("a failed change", []string{"change"}, []string{"-lc0_groups ff1e::2", "-lc0_groups ff1e::3"})
	step("after the failure", []string{"create", "change"}, []string{"+lc0_groups ff1e::1", "+lan_lan2_exclude ff1e::9"})

	if n := g.ForeignSources(g.lans[0]); n != 7 {
		t.Errorf("ForeignSources(lan1) = %d, want 7", n)
	}
	if n := g.ForeignSources(g.lans[1]); n != 0 {
		t.Errorf("ForeignSources(lan2), a counter that cannot be read = %d, want 0", n)
	}
	g.Close()
	g.Close()
	if calls, _ := k.take(); !slices.Equal(calls, []string{"remove", "close"}) {
		t.Errorf("Close, twice: calls %q, want remove and close once", calls)
	}
	g.Update()
	if err := g.apply(); err != nil {
		t.Errorf("apply after Close: %v", err)
	}
	if calls, _ := k.take(); len(calls) != 0 {
		t.Errorf("after Close: calls %q", calls)
	}
}
