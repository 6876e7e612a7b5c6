// Package e2e holds lcast's end-to-end tests: the lcast binary, run in
// network namespaces the tests create, with unmodified programs (Go's
// standard library, socat) joining and sending on lc0; and BenchmarkSideBySide,
// which make bench runs: lcast against direct unicast, kernel VXLAN and tinc.
// It has no non-test code.
package e2e
