// Package simnet is lcast's in-process network: complete nodes (the
// daemon with its bridge, router, transport, exchange, introductions and
// MLD) on simulated lc0 interfaces, over an in-memory underlay whose
// links lose, delay, reorder and partition and whose homes sit behind
// NATs, all on one clock a test can move forward. Protocol behaviour
// (sessions, subscriptions, relays, introductions, loss, partitions,
// restarts, hostile peers) is tested here, under -race, in seconds; the
// namespace tests in internal/e2e keep what touches the kernel
// (docs/design.md, "Testing").
//
// The simulated kernel does what Linux does on lc0 as far as lcast can
// tell: it writes MLDv2 reports of its programs' joins and leaves,
// answers queries with current-state reports, keeps memberships across a
// crashed daemon, and delivers what the daemon writes to the programs
// that joined. wireguard-go's own timers run on real time; lcast's run on
// the network's Warp clock, which follows real time until a test
// advances it.
package simnet
