package gateway

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// kernel is the nftables the gateway keeps: over netlink (nftKernel), or a
// recording fake in tests.
type kernel interface {
	// create replaces the table with the layout's, its sets empty, in one
	// transaction (whatever an earlier run left is gone).
	create(l layout) error
	// change adds and deletes set elements. Each batch of them is one
	// transaction; a change too large for one is several.
	change(ops []setOp) error
	// counter returns the packets counted by the named counter object.
	counter(name string) (uint64, error)
	// remove deletes the table, if there is one.
	remove() error
	// close releases the kernel's netlink sockets.
	close()
}

// Batching: a netlink attribute is at most 64 KiB, so one message carries
// at most elemsPerMessage elements (44 bytes each for group . source);
// the batch sent in one write stays under the socket's default send buffer
// (212,992 bytes) with elemsPerFlush.
const (
	elemsPerMessage = 512
	elemsPerFlush   = 2048
)

// nftKernel speaks to nftables over netlink (github.com/google/nftables):
// no nft process, no ruleset text.
type nftKernel struct {
	table *nftables.Table

	mu   sync.Mutex     // serializes changes (conn batches what it is given)
	conn *nftables.Conn // changes
	sets map[string]*nftables.Set

	readMu sync.Mutex     // serializes reads, which may run beside a change
	read   *nftables.Conn // counters
}

// newNftKernel returns the nftables of table in the network namespace
// netns (an open file descriptor; 0 is this process's).
func newNftKernel(table string, netns int) (*nftKernel, error) {
	var opts []nftables.ConnOption
	if netns != 0 {
		opts = append(opts, nftables.WithNetNSFd(netns))
	}
	conn, err := nftables.New(append(opts, nftables.AsLasting())...)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	read, err := nftables.New(append(opts, nftables.AsLasting())...)
	if err != nil {
		conn.CloseLasting()
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return &nftKernel{table: &nftables.Table{Name: table, Family: nftables.TableFamilyIPv6}, conn: conn, read: read}, nil
}

func (k *nftKernel) close() {
	k.conn.CloseLasting()
	k.read.CloseLasting()
}

// dropTables queues the deletion of the table and of the table an lcast
// before this one counted foreign sources in (<table>_foreign), whether or
// not they exist: adding a table first makes sure it does.
func (k *nftKernel) dropTables() {
	for _, t := range []*nftables.Table{k.table, {Name: k.table.Name + "_foreign", Family: k.table.Family}} {
		k.conn.AddTable(t)
		k.conn.DelTable(t)
	}
}

func (k *nftKernel) remove() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.dropTables()
	if err := k.conn.Flush(); err != nil {
		return fmt.Errorf("nftables: removing table ip6 %s: %w", k.table.Name, err)
	}
	return nil
}

// Registers: 1 holds the destination (the group), 2 the source right
// after it (so that 1 with a 32-byte key is group . source), 3 dup's
// device.
const (
	regGroup  = 1
	regSource = 2
	regDev    = 3
)

// The IPv6 header's fields the rules read.
const (
	offHopLimit = 7
	offSource   = 8
	offDest     = 24
)

func (k *nftKernel) create(l layout) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := k.conn
	k.dropTables()
	t := c.AddTable(k.table)
	k.sets = map[string]*nftables.Set{}
	var setErr error
	addSet := func(name string, concat bool) {
		s := &nftables.Set{Table: t, Name: name, KeyType: nftables.TypeIP6Addr, KeyByteOrder: binaryutil.BigEndian}
		if concat {
			s.KeyType = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeIP6Addr)
			s.Concatenation = true
		}
		// No size: a set with one gets a hash table of that many
		// buckets at once; the caps are kept in state instead.
		if err := c.AddSet(s, nil); err != nil && setErr == nil {
			setErr = err
		}
		k.sets[name] = s
	}
	addSet(setLc0, false)
	for _, lan := range l.lans {
		c.AddObj(&nftables.CounterObj{Table: t, Name: lan.counter()})
		addSet(lan.setExclude(), false)
		addSet(lan.setBlocked(), true)
		addSet(lan.setInclude(), true)
	}
	// Every chain comes before the rules, which jump to them by name.
	accept := nftables.ChainPolicyAccept
	pre := c.AddChain(&nftables.Chain{Name: chainPre, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: &accept})
	chains := map[string]*nftables.Chain{}
	chain := func(name string) *nftables.Chain {
		if chains[name] == nil {
			chains[name] = c.AddChain(&nftables.Chain{Name: name, Table: t})
		}
		return chains[name]
	}
	chain(chainFromL)
	for _, lan := range l.lans {
		chain(lan.chainFrom())
		if len(lan.prefixes) > 0 {
			chain(lan.chainRoute())
		}
	}
	rule := func(ch *nftables.Chain, exprs ...expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs})
	}

	// Only multicast of routable scope: wider than link scope (the low 4
	// bits of the destination's second byte above 2).
	rule(pre, load(offDest, 1), cmp(expr.CmpOpNeq, []byte{0xff}), verdict(expr.VerdictReturn, ""))
	rule(pre, load(offDest+1, 1), &expr.Bitwise{SourceRegister: regGroup, DestRegister: regGroup, Len: 1, Mask: []byte{0x0f}, Xor: []byte{0}},
		cmp(expr.CmpOpLte, []byte{2}), verdict(expr.VerdictReturn, ""))
	rule(pre, append(iifname(l.lc0.name), verdict(expr.VerdictGoto, chainFromL))...)
	for _, lan := range l.lans {
		rule(pre, append(iifname(lan.name), verdict(expr.VerdictGoto, lan.chainFrom()))...)
	}

	// From lc0: onto the LANs that want it, unless it came from one.
	from := chain(chainFromL)
	rule(from, load(offHopLimit, 1), cmp(expr.CmpOpLte, []byte{1}), verdict(expr.VerdictReturn, ""))
	for _, p := range l.ownPrefixes() {
		rule(from, append(sourceIn(p), verdict(expr.VerdictReturn, ""))...)
	}
	for _, to := range l.lans {
		k.dups(rule, from, to)
	}

	// From a LAN: a source on it goes on to the other LANs that want it
	// and into lc0 for the groups lc0 wants; any other is counted.
	for _, lan := range l.lans {
		in := chain(lan.chainFrom())
		if len(lan.prefixes) > 0 {
			route := chain(lan.chainRoute())
			for _, p := range lan.prefixes {
				rule(in, append(sourceIn(p), verdict(expr.VerdictGoto, lan.chainRoute()))...)
			}
			rule(route, load(offHopLimit, 1), cmp(expr.CmpOpLte, []byte{1}), verdict(expr.VerdictReturn, ""))
			for _, to := range l.lans {
				if to.id != lan.id {
					k.dups(rule, route, to)
				}
			}
			s := k.sets[setLc0]
			rule(route, append([]expr.Any{load(offDest, 16), &expr.Lookup{SourceRegister: regGroup, SetName: s.Name, SetID: s.ID}}, dup(l.lc0.index)...)...)
		}
		rule(in, &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: lan.counter()})
	}
	// Flushed even after an error, so that nothing stays queued.
	if err := errors.Join(setErr, c.Flush()); err != nil {
		return fmt.Errorf("nftables: making table ip6 %s: %w", k.table.Name, err)
	}
	return nil
}

// dups adds to chain ch the rules that copy a packet onto LAN to when its
// listeners want it: its group in to's exclude set and group . source not
// in its blocked set, or group . source in its include set.
func (k *nftKernel) dups(rule func(*nftables.Chain, ...expr.Any), ch *nftables.Chain, to lanLayout) {
	lookup := func(name string, invert bool) expr.Any {
		s := k.sets[name]
		return &expr.Lookup{SourceRegister: regGroup, SetName: s.Name, SetID: s.ID, Invert: invert}
	}
	rule(ch, append([]expr.Any{load(offDest, 16), lookup(to.setExclude(), false),
		loadTo(regSource, offSource, 16), lookup(to.setBlocked(), true)}, dup(to.index)...)...)
	rule(ch, append([]expr.Any{load(offDest, 16), loadTo(regSource, offSource, 16),
		lookup(to.setInclude(), false)}, dup(to.index)...)...)
}

// load loads n bytes of the IPv6 header at off into the group register.
func load(off, n uint32) expr.Any { return loadTo(regGroup, off, n) }

func loadTo(reg, off, n uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}
}

func cmp(op expr.CmpOp, data []byte) expr.Any {
	return &expr.Cmp{Op: op, Register: regGroup, Data: data}
}

func verdict(kind expr.VerdictKind, chain string) expr.Any {
	return &expr.Verdict{Kind: kind, Chain: chain}
}

// iifname matches packets that came in on the interface name (by name,
// as nft's iifname: IFNAMSIZ bytes, zero padded).
func iifname(name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: regGroup}, cmp(expr.CmpOpEq, b)}
}

// sourceIn matches packets whose source lies in p.
func sourceIn(p netip.Prefix) []expr.Any {
	addr := p.Addr().As16()
	e := []expr.Any{load(offSource, 16)}
	if p.Bits() < 128 {
		m := make([]byte, 16)
		for i := range p.Bits() {
			m[i/8] |= 0x80 >> (i % 8)
		}
		e = append(e, &expr.Bitwise{SourceRegister: regGroup, DestRegister: regGroup, Len: 16, Mask: m, Xor: make([]byte, 16)})
	}
	return append(e, cmp(expr.CmpOpEq, addr[:]))
}

// dup copies the packet, to its own destination (the group in the group
// register), onto the interface index. The kernel takes one off the
// copy's hop limit, as a router does.
func dup(index int) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: regDev, Data: binaryutil.NativeEndian.PutUint32(uint32(index))},
		&expr.Dup{RegAddr: regGroup, RegDev: regDev, IsRegDevSet: true},
	}
}

func (k *nftKernel) change(ops []setOp) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := k.conn
	for _, o := range ops {
		if k.sets[o.set] == nil {
			return fmt.Errorf("nftables: no set %s", o.set)
		}
	}
	queued := 0
	for len(ops) > 0 {
		// One message: a run of ops of one kind on one set.
		n := 1
		for n < len(ops) && n < elemsPerMessage && ops[n].set == ops[0].set && ops[n].del == ops[0].del {
			n++
		}
		s := k.sets[ops[0].set]
		elems := make([]nftables.SetElement, n)
		for i, o := range ops[:n] {
			key := o.group.As16()
			elems[i].Key = key[:]
			if o.source.IsValid() {
				src := o.source.As16()
				elems[i].Key = append(elems[i].Key, src[:]...)
			}
		}
		var err error
		if ops[0].del {
			err = c.SetDeleteElements(s, elems)
		} else {
			err = c.SetAddElements(s, elems)
		}
		if err != nil {
			return fmt.Errorf("nftables: %w", err)
		}
		ops = ops[n:]
		if queued += n; queued >= elemsPerFlush || len(ops) == 0 {
			if err := c.Flush(); err != nil {
				return fmt.Errorf("nftables: changing the sets of table ip6 %s: %w", k.table.Name, err)
			}
			queued = 0
		}
	}
	return nil
}

func (k *nftKernel) counter(name string) (uint64, error) {
	k.readMu.Lock()
	defer k.readMu.Unlock()
	o, err := k.read.GetObject(&nftables.CounterObj{Table: k.table, Name: name})
	if err != nil {
		return 0, err
	}
	c, ok := o.(*nftables.CounterObj)
	if !ok {
		return 0, errors.New("nftables: not a counter")
	}
	return c.Packets, nil
}
