// Package mroute holds the Linux kernel's IPv6 multicast routing (MRT6,
// see linux/mroute6.h) for one network namespace: only one socket may take
// it per namespace, so a gateway that holds it never runs beside another
// multicast router there (pim6sd, smcroute), and when one holds it the
// error names it. lcast forwards with nftables rules instead (package
// gateway), so the socket is held, never used to route; kernels built
// without MRT6 have no such router to run beside (ErrUnsupported).
package mroute
