package peer

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/device"
)

// wgWarnEvery is how often one kind of wireguard-go error is logged: a
// peer out of reach fails every handshake the same way (several a second
// while lcast repairs its session), and one line says it.
const wgWarnEvery = 10 * time.Second

// wgLogger passes wireguard-go's messages to log: its verbose ones at
// debug level, its errors as warnings, each kind (format) at most once per
// wgWarnEvery, with how many like it were held back meanwhile.
func wgLogger(log *slog.Logger) *device.Logger {
	var mu sync.Mutex
	type seen struct {
		at   time.Time
		held int
	}
	last := map[string]*seen{}
	return &device.Logger{
		Verbosef: func(format string, args ...any) { log.Debug("wireguard: " + fmt.Sprintf(format, args...)) },
		Errorf: func(format string, args ...any) {
			mu.Lock()
			s, ok := last[format]
			if !ok {
				s = &seen{}
				last[format] = s
			}
			now := time.Now()
			if ok && now.Sub(s.at) < wgWarnEvery {
				s.held++
				mu.Unlock()
				return
			}
			held := s.held
			s.at, s.held = now, 0
			mu.Unlock()
			if held > 0 {
				log.Warn("wireguard: "+fmt.Sprintf(format, args...), "like_it_held_back", held)
			} else {
				log.Warn("wireguard: " + fmt.Sprintf(format, args...))
			}
		},
	}
}
