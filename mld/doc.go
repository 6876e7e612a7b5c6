// Package mld implements the parts of Multicast Listener Discovery that lcast
// needs on its lc0 link: decoding the MLDv1 (RFC 2710) and MLDv2 (RFC 3810)
// messages the kernel writes into the interface, encoding queries, and the
// router-side listener state of RFC 3810 section 7 with MLDv1 compatibility
// (section 8), driven by a Querier that sends General Queries.
//
// The only host on lc0 is the local kernel, and its reports describe the
// whole host's membership. Where RFC 3810 would send a Multicast Address
// Specific or Multicast Address and Source Specific Query after a leave (to
// ask whether other hosts still listen), this package instead lets the
// affected timers expire at once: no other host can answer, so a leave takes
// effect immediately. Last Listener Query Time is therefore zero.
package mld
