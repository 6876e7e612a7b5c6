package peer

import (
	"slices"
	"testing"

	"golang.zx2c4.com/wireguard/conn"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// fakeBind receives, on each call, the number of datagrams next gives.
type fakeBind struct {
	conn.Bind
	next []int
}

func (b *fakeBind) Open(uint16) ([]conn.ReceiveFunc, uint16, error) {
	return []conn.ReceiveFunc{func(bufs [][]byte, sizes []int, _ []conn.Endpoint) (int, error) {
		n := b.next[0]
		b.next = b.next[1:]
		for i := range n {
			sizes[i] = len(bufs[i])
		}
		return n, nil
	}}, 1, nil
}

// recordingPort records how many buffers and datagrams each Received got.
type recordingPort struct {
	wgtun.Device
	calls [][2]int
}

func (p *recordingPort) Sent([][]byte) {}
func (p *recordingPort) Received(bufs [][]byte, sizes []int) {
	p.calls = append(p.calls, [2]int{len(bufs), len(sizes)})
}

// The port hears of every datagram received, and of the buffers of the
// last call's that the transport reads into again (those it did not take).
func TestBindReportsReceived(t *testing.T) {
	port := &recordingPort{}
	b := reportingBind{&fakeBind{next: []int{5, 2, 0, 8}}, port}
	fns, _, _ := b.Open(0)
	bufs, sizes := make([][]byte, 8), make([]int, 8)
	for i := range bufs {
		bufs[i] = make([]byte, 16)
	}
	for range 4 {
		fns[0](bufs, sizes, make([]conn.Endpoint, 8))
	}
	if want := [][2]int{{5, 5}, {5, 2}, {2, 0}, {8, 8}}; !slices.Equal(port.calls, want) {
		t.Fatalf("Received got (buffers, datagrams) %v, want %v", port.calls, want)
	}
}
