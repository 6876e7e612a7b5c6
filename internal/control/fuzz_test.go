package control

import (
	"bufio"
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzRequest: no request read from the control socket makes the API
// panic or fail inside; unknown ones get a client error.
func FuzzRequest(f *testing.F) {
	f.Add([]byte("GET " + StatusPath + " HTTP/1.1\r\nHost: lcast\r\n\r\n"))
	f.Add([]byte("POST " + StatusPath + " HTTP/1.1\r\nHost: lcast\r\nContent-Length: 2\r\n\r\n{}"))
	f.Add([]byte("GET /debug/pprof/ HTTP/1.1\r\nHost: lcast\r\n\r\n"))
	f.Add([]byte("GET /v1/../v1/status?x=%zz HTTP/1.0\r\n\r\n"))
	// A hang CI found: "seconds" percent-encoded.
	f.Add([]byte("GET /debug/pprof/heap?second%73=3 HTTP/1.1\r\nHost: lcast\r\n\r\n"))
	h := handler(func() Status { return Status{Interface: "lc0"} }, nil, slog.New(slog.DiscardHandler))
	f.Fuzz(func(t *testing.T, raw []byte) {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return // the server answers 400 before any handler runs
		}
		// The profiler's handlers wait for the seconds asked for, in the
		// query or a form body, however encoded.
		if req.ParseForm(); req.Form.Has("seconds") || strings.HasPrefix(req.URL.Path, "/debug/pprof/profile") {
			return
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code >= 500 {
			t.Fatalf("%q: status %d", raw, w.Code)
		}
	})
}
