package bridge

import (
	"sync"
	"sync/atomic"
)

// controlQueueBytes bounds the control packets waiting for the transport:
// 4 MiB, thousands of subscription messages, so that only a transport
// stalled for long refuses more (ErrControlQueueFull), and the memory they
// take stays bounded.
const controlQueueBytes = 4 << 20

// controlQueue holds the control packets to hand to the transport, ahead
// of data, outside the data queues' admission and accounting.
type controlQueue struct {
	n     atomic.Int32 // packets waiting: Read checks it without the lock
	mu    sync.Mutex
	pkts  [][]byte
	bytes int
	// ready wakes a Read waiting for data when a control packet comes.
	ready chan struct{}
}

func (q *controlQueue) init() { q.ready = make(chan struct{}, 1) }

// push adds pkt, unless controlQueueBytes would be exceeded.
func (q *controlQueue) push(pkt []byte) error {
	q.mu.Lock()
	if q.bytes+len(pkt) > controlQueueBytes {
		q.mu.Unlock()
		return ErrControlQueueFull
	}
	q.pkts = append(q.pkts, pkt)
	q.bytes += len(pkt)
	q.n.Add(1)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return nil
}

// take moves the waiting packets, oldest first, into bufs (from offset)
// while there is room, and returns how many it moved.
func (q *controlQueue) take(bufs [][]byte, sizes []int, offset int) int {
	if q.n.Load() == 0 {
		return 0
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	n := min(len(q.pkts), len(bufs))
	for i, pkt := range q.pkts[:n] {
		sizes[i] = copy(bufs[i][offset:], pkt)
		q.bytes -= len(pkt)
	}
	clear(q.pkts[:n])
	q.pkts = q.pkts[n:]
	q.n.Add(-int32(n))
	return n
}
