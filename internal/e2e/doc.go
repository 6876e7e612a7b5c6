// Package e2e holds lcast's end-to-end tests: the lcast binary, run in
// network namespaces the tests create, with unmodified programs (Go's
// standard library, socat) joining and sending on lc0. It has no non-test code.
package e2e
