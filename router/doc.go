// Package router owns lcast's forwarding decisions, and no goroutines or
// I/O (package bridge moves the packets): the forwarding table (group to
// local listeners and subscribed peers with their source filters), which
// multicast scopes cross between peers (docs/design.md, "Scope policy")
// and which groups are routed to lc0, where unicast goes, duplicate
// suppression and relaying, the wrap format of multicast between peers and
// the packets of control messages (ProtoControl), typed drop reasons and
// per-peer counters.
package router
