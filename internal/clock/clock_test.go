package clock

import (
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestWarpAdvanceFiresDueTimers(t *testing.T) {
	w := NewWarp()
	start := w.Now()
	timer := w.NewTimer(time.Hour)
	later := w.NewTimer(3 * time.Hour)
	defer later.Stop()
	fired := make(chan struct{})
	w.AfterFunc(90*time.Minute, func() { close(fired) })
	w.Advance(2 * time.Hour)
	select {
	case at := <-timer.C:
		if at.Sub(start) < 2*time.Hour {
			t.Errorf("timer fired at %v after start, want at least 2h", at.Sub(start))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a timer due within the advance did not fire")
	}
	select {
	case <-fired:
	case <-time.After(5 * time.Second):
		t.Fatal("a func due within the advance was not called")
	}
	select {
	case <-later.C:
		t.Fatal("a timer due after the advance fired")
	case <-time.After(20 * time.Millisecond):
	}
	if got := w.Now().Sub(start); got < 2*time.Hour || got > 2*time.Hour+time.Minute {
		t.Errorf("Now moved %v, want 2h and the real time since", got)
	}
}

func TestWarpTickerDropsMissedTicks(t *testing.T) {
	w := NewWarp()
	tick := w.NewTicker(time.Minute)
	defer tick.Stop()
	w.Advance(10 * time.Minute)
	<-tick.C
	select {
	case <-tick.C:
		t.Fatal("a ticker that fell behind sent more than one tick")
	case <-time.After(20 * time.Millisecond):
	}
	w.Advance(time.Minute)
	select {
	case <-tick.C:
	case <-time.After(5 * time.Second):
		t.Fatal("the ticker stopped after an advance")
	}
}

func TestWarpRunsWithRealTime(t *testing.T) {
	w := NewWarp()
	timer := w.NewTimer(10 * time.Millisecond)
	select {
	case <-timer.C:
	case <-time.After(5 * time.Second):
		t.Fatal("a timer did not fire in real time")
	}
	if timer.Stop() {
		t.Error("Stop of a fired timer reported it active")
	}
	stopped := w.NewTimer(10 * time.Millisecond)
	if !stopped.Stop() {
		t.Error("Stop of an active timer reported it inactive")
	}
	w.Advance(time.Second)
	select {
	case <-stopped.C:
		t.Fatal("a stopped timer fired")
	case <-time.After(30 * time.Millisecond):
	}
}
