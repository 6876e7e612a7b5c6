package httpserve

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain fails the tests if any goroutine outlives them.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// blocking serves a handler that waits for its request's context to end,
// then takes a while to return, and counts the handlers that returned. It returns the server, its
// address, a channel that receives once per handler that started, and the
// count.
func blocking(t *testing.T) (*Server, string, <-chan struct{}, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{}, 16)
	var returned atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/block", func(w http.ResponseWriter, r *http.Request) {
		defer returned.Add(1)
		started <- struct{}{}
		<-r.Context().Done()
		time.Sleep(50 * time.Millisecond) // winding up takes a while
	})
	mux.HandleFunc("/quick", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	s := New(&http.Server{Handler: mux})
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve returned %v, want http.ErrServerClosed", err)
		}
	})
	return s, "http://" + ln.Addr().String(), started, &returned
}

// request makes a request in the background and reports its error on the
// returned channel (nil for any answer).
func request(method, url, body string) <-chan error {
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		if body == "" {
			req.Body = nil
		}
		resp, err := http.DefaultTransport.(*http.Transport).Clone().RoundTrip(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		errc <- err
	}()
	return errc
}

// Requests finished before the grace period ends make a clean shutdown.
func TestShutdownGraceful(t *testing.T) {
	s, url, _, _ := blocking(t)
	if err := <-request("GET", url+"/quick", ""); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// A handler still running when the grace period ends has its context
// cancelled, and Shutdown returns only after it returned, whether the
// request's body was read (GET) or not (a POST with a body the handler
// never reads, where net/http does not watch the connection).
func TestShutdownWaitsForHandlers(t *testing.T) {
	s, url, started, returned := blocking(t)
	get := request("GET", url+"/block", "")
	post := request("POST", url+"/block", strings.Repeat("x", 100))
	<-started
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want context.DeadlineExceeded", err)
	}
	if n := returned.Load(); n != 2 {
		t.Fatalf("Shutdown returned with %d of 2 handlers returned", n)
	}
	<-get
	<-post
}

// Close ends the handlers under way and waits for them.
func TestCloseWaitsForHandlers(t *testing.T) {
	s, url, started, returned := blocking(t)
	errc := request("GET", url+"/block", "")
	<-started
	s.Close()
	if n := returned.Load(); n != 1 {
		t.Fatalf("Close returned with %d of 1 handler returned", n)
	}
	<-errc
}

// Serve after Shutdown refuses at once and closes the listener.
func TestServeAfterShutdown(t *testing.T) {
	s := New(&http.Server{Handler: http.NotFoundHandler()})
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve after Shutdown: %v, want http.ErrServerClosed", err)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on the listener Serve refused: %v, want net.ErrClosed", err)
	}
}
