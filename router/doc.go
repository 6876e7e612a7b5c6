// Package router owns the forwarding decisions of lcast: which multicast
// scopes cross between peers (decision 2 of DESIGN.md), and which groups are
// routed to lc0 so that programs that name no interface use it.
package router
