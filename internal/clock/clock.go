// Package clock is the time lcast's own timers read: the real clock in the
// daemon, and in the in-process network (internal/simnet) a Warp clock that
// runs with real time but can be moved forward at once, so that a test can
// cross a hold time of minutes in microseconds while the sessions that
// wireguard-go keeps on real time go on undisturbed (docs/design.md,
// "Testing").
package clock

import (
	"sync"
	"sync/atomic"
	"time"
)

// Clock tells the time and makes timers. Every timer lcast's own code
// waits on comes from one, so that a test can move time forward.
type Clock interface {
	Now() time.Time
	// NewTimer returns a timer that sends the time on C once d has passed.
	NewTimer(d time.Duration) *Timer
	// NewTicker returns a ticker that sends the time on C every d,
	// dropping ticks a slow reader misses, as time.Ticker does.
	NewTicker(d time.Duration) *Ticker
	// AfterFunc calls f in its own goroutine once d has passed, unless
	// the returned timer is stopped first.
	AfterFunc(d time.Duration, f func()) *Timer
}

// Real is the system clock.
var Real Clock = real{}

// Or returns c, or Real if c is nil: the default of every Config's Clock.
func Or(c Clock) Clock {
	if c == nil {
		return Real
	}
	return c
}

// Timer is a one-shot timer of a Clock.
type Timer struct {
	C <-chan time.Time
	// stop and reset are the clock's own.
	stop  func() bool
	reset func(time.Duration) bool
}

// Stop prevents the timer from firing; it reports whether it stopped one
// that had not fired.
func (t *Timer) Stop() bool { return t.stop() }

// Reset makes the timer fire d from now; it reports whether the timer
// was active.
func (t *Timer) Reset(d time.Duration) bool { return t.reset(d) }

// Ticker is a repeating timer of a Clock.
type Ticker struct {
	C     <-chan time.Time
	stop  func()
	reset func(time.Duration)
}

// Stop turns the ticker off.
func (t *Ticker) Stop() { t.stop() }

// Reset stops the ticker and makes it tick every d from now.
func (t *Ticker) Reset(d time.Duration) { t.reset(d) }

type real struct{}

func (real) Now() time.Time { return time.Now() }

func (real) NewTimer(d time.Duration) *Timer {
	t := time.NewTimer(d)
	return &Timer{C: t.C, stop: t.Stop, reset: t.Reset}
}

func (real) NewTicker(d time.Duration) *Ticker {
	t := time.NewTicker(d)
	return &Ticker{C: t.C, stop: t.Stop, reset: t.Reset}
}

func (real) AfterFunc(d time.Duration, f func()) *Timer {
	t := time.AfterFunc(d, f)
	return &Timer{stop: t.Stop, reset: t.Reset}
}

// Warp is a clock that runs with real time from a start, plus whatever
// Advance added: its timers fire when its time reaches them, whether real
// time or Advance took it there. The zero value is not usable; use
// NewWarp.
type Warp struct {
	offset atomic.Int64 // what Advance added, in nanoseconds; changed under mu
	mu     sync.Mutex
	timers map[*warpTimer]struct{} // active ones
}

// NewWarp returns a Warp clock that reads real time.
func NewWarp() *Warp { return &Warp{timers: map[*warpTimer]struct{}{}} }

// Now returns real time plus what Advance added. It takes no lock, so
// that code reading it for every packet pays little.
func (w *Warp) Now() time.Time { return time.Now().Add(time.Duration(w.offset.Load())) }

func (w *Warp) nowLocked() time.Time { return w.Now() }

// Advance moves the clock forward by d at once: timers due in that time
// fire now (each ticker once, as a time.Ticker that fell behind does).
func (w *Warp) Advance(d time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.offset.Add(int64(d))
	now := w.nowLocked()
	for t := range w.timers {
		t.real.Reset(max(0, t.due.Sub(now)))
	}
}

// warpTimer is a timer (or ticker, with period > 0) of a Warp clock: a
// real timer set to fire at due in the clock's time, set again whenever
// the clock moves.
type warpTimer struct {
	w      *Warp
	due    time.Time
	period time.Duration
	c      chan time.Time // nil for AfterFunc
	f      func()
	real   *time.Timer
}

func (w *Warp) start(d, period time.Duration, c chan time.Time, f func()) *warpTimer {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := &warpTimer{w: w, due: w.nowLocked().Add(d), period: period, c: c, f: f}
	t.real = time.AfterFunc(max(0, d), t.fire)
	w.timers[t] = struct{}{}
	return t
}

// fire runs when the real timer fires: if the clock has reached due (it
// may not have, if the timer was set again meanwhile), the timer fires,
// and a ticker is set for its next tick.
func (t *warpTimer) fire() {
	w := t.w
	w.mu.Lock()
	if _, active := w.timers[t]; !active {
		w.mu.Unlock()
		return
	}
	now := w.nowLocked()
	if now.Before(t.due) {
		t.real.Reset(t.due.Sub(now))
		w.mu.Unlock()
		return
	}
	if t.period > 0 {
		for !t.due.After(now) {
			t.due = t.due.Add(t.period)
		}
		t.real.Reset(t.due.Sub(now))
	} else {
		delete(w.timers, t)
	}
	w.mu.Unlock()
	if t.c != nil {
		select {
		case t.c <- now:
		default:
		}
		return
	}
	go t.f()
}

func (t *warpTimer) stop() bool {
	w := t.w
	w.mu.Lock()
	defer w.mu.Unlock()
	_, active := w.timers[t]
	delete(w.timers, t)
	t.real.Stop()
	return active
}

func (t *warpTimer) reset(d time.Duration) bool {
	w := t.w
	w.mu.Lock()
	defer w.mu.Unlock()
	_, active := w.timers[t]
	if t.period > 0 {
		t.period = d
	}
	t.due = w.nowLocked().Add(d)
	w.timers[t] = struct{}{}
	t.real.Reset(max(0, d))
	return active
}

// NewTimer returns a timer of the Warp clock.
func (w *Warp) NewTimer(d time.Duration) *Timer {
	c := make(chan time.Time, 1)
	t := w.start(d, 0, c, nil)
	return &Timer{C: c, stop: t.stop, reset: t.reset}
}

// NewTicker returns a ticker of the Warp clock.
func (w *Warp) NewTicker(d time.Duration) *Ticker {
	if d <= 0 {
		panic("clock: non-positive interval for NewTicker")
	}
	c := make(chan time.Time, 1)
	t := w.start(d, d, c, nil)
	return &Ticker{C: c, stop: func() { t.stop() }, reset: func(d time.Duration) { t.reset(d) }}
}

// AfterFunc calls f once the Warp clock has reached d from now.
func (w *Warp) AfterFunc(d time.Duration, f func()) *Timer {
	t := w.start(d, 0, nil, f)
	return &Timer{stop: t.stop, reset: t.reset}
}
