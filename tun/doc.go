// Package tun creates lcast's TUN interface (lc0) with wireguard-go's tun
// package and configures it with netlink: MTU, the node's overlay address,
// link up, and multicast routes in the local table. It marks the interface
// as lcast's (by its alias) and makes it persistent, so that memberships
// survive a crashed daemon and the next start adopts it; Close removes all
// of it.
package tun
