// Package bridge moves packets between lc0 and the peer transport, as the
// router decides. It owns lc0's I/O: the goroutine that reads lc0 in
// batches as large as the device's (so that a GSO super-packet comes
// whole), the bounded set of batches between it and the transport, the
// accounting of the packets waiting in the transport for each peer
// (PeerQueueLimit, QueueLimit), the tun.Device that wireguard-go reads and
// writes (Port), the handoff of the packets a relay passes on, and the
// in-process path of control messages between peers (SendControl and a
// ControlHandler), which go ahead of data. Packets that stay on the link
// (MLD reports...) go from its lc0 reader to a LinkHandler.
//
// It decides nothing about where a packet goes: package router does.
package bridge
