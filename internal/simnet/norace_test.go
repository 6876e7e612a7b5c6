//go:build !race

package simnet

// raceEnabled tells that the race detector runs, which slows the daemons
// several times.
const raceEnabled = false
