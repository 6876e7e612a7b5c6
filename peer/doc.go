// Package peer owns peer identity: WireGuard-format Curve25519 key pairs and
// the overlay unicast address each node derives from its public key.
//
// The overlay prefix is fd6c:6361:7374::/48, a ULA (RFC 4193) whose global ID
// spells "lcast" in ASCII. A node's address is that prefix followed by the
// first 80 bits of BLAKE2s-256 of its public key.
package peer
