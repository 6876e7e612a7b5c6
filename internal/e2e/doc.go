// Package e2e holds lcast's end-to-end tests: the lcast binary, run in
// network namespaces the tests create, with unmodified programs (Go's
// standard library, socat, iperf, Librecast's channel API) joining and
// sending on lc0. They test what touches the kernel: lc0 and the kernel's
// MLD, routes, nftables and conntrack NAT, capabilities, the CLI, systemd,
// podman and real programs. Protocol behaviour (sessions, subscriptions,
// relays, introductions, loss, partitions, restarts, hostile peers) is
// tested in process, in internal/simnet. The package also holds
// BenchmarkSideBySide, which make bench runs: lcast against direct
// unicast, kernel VXLAN and tinc. It has no non-test code.
package e2e
