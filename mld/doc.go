// Package mld implements the router side of Multicast Listener Discovery
// that lcast needs: decoding the MLDv1 (RFC 2710) and MLDv2 (RFC 3810)
// messages hosts send, encoding queries, and the listener state of RFC 3810
// section 7 with MLDv1 compatibility (section 8), kept by a Link and driven
// by a Querier, which sends the queries and runs the Link's timers when the
// first of them runs out. It serves two kinds of link, told apart by the
// Last Listener Query Time of their Timing.
//
// On lc0 (DefaultTiming), the only host is the local kernel, and its
// reports describe the whole host's membership. Where RFC 3810 would send a
// Multicast Address Specific or Multicast Address and Source Specific Query
// after a leave (to ask whether other hosts still listen), the Link instead
// lets the affected timers expire at once: no other host can answer, so a
// leave takes effect immediately. Last Listener Query Time is therefore
// zero, and the Querier, the only router, always queries. The bridge hands
// lc0's packets to Link.HandleLinkPacket.
//
// On a LAN (LANTiming), with many hosts and possibly other routers, the
// Link handles a leave as section 7.6.3 says: it lowers the affected timers
// to the Last Listener Query Time and asks the Querier to send Last
// Listener Query Count specific queries, Last Listener Query Interval
// apart. A remaining listener answers with a report that raises the timers
// again; without one, the timers run out and the leave takes effect. Every
// MLD packet read from the LAN goes to Querier.HandlePacket, which also
// hears other routers' queries for querier election (7.6.2): the router
// with the lowest link-local address queries; the others send no queries,
// lower their timers when the querier's specific queries say so (7.6.1),
// and take over when the querier falls silent.
package mld
