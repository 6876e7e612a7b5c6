package peer

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// One kind of wireguard-go error is logged once per wgWarnEvery, the next
// line saying how many were held back; other kinds and verbose messages
// are not held back.
func TestWireguardErrorsRateLimited(t *testing.T) {
	var b bytes.Buffer
	l := wgLogger(slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug})))
	for i := range 5 {
		l.Errorf("%v - Failed to send handshake initiation: %v", "peer(x)", i)
	}
	l.Errorf("another kind: %d", 1)
	l.Verbosef("verbose %d", 1)
	l.Verbosef("verbose %d", 2)
	out := b.String()
	if n := strings.Count(out, "Failed to send handshake initiation"); n != 1 {
		t.Errorf("%d lines of one kind within %v, want 1:\n%s", n, wgWarnEvery, out)
	}
	if !strings.Contains(out, "another kind: 1") || strings.Count(out, "verbose") != 2 {
		t.Errorf("other messages held back:\n%s", out)
	}
}
