//go:build race

package gateway

// raceEnabled: the race detector slows the scale test's sorting and
// diffing of 2^18 groups some tenfold.
const raceEnabled = true
