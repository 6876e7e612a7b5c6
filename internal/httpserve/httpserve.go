// Package httpserve serves HTTP with every goroutine joined: net/http's
// Shutdown gives up when its context ends and leaves the handlers still
// running, and Close does not wait for them. A Server here cancels its
// requests' contexts and closes their connections once the grace period
// is over, then waits until its Serve calls, its connections' goroutines
// and its handlers have all returned. Handlers must therefore return once
// their request's context is done.
package httpserve

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
)

// Server is an http.Server whose Shutdown and Close wait for everything
// it started.
type Server struct {
	srv    *http.Server
	cancel context.CancelFunc // ends the contexts of the requests

	mu      sync.Mutex
	active  int        // Serve calls, connections and handlers under way
	idle    *sync.Cond // signalled when active falls to 0
	closing bool       // Shutdown or Close began: Serve refuses
}

// New takes srv over: its handler and connection state hook are wrapped
// to count what runs, and its base context (which it replaces) is
// cancelled when Shutdown gives up waiting or Close is called. srv must
// not be used directly after.
func New(srv *http.Server) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{srv: srv, cancel: cancel}
	s.idle = sync.NewCond(&s.mu)
	srv.BaseContext = func(net.Listener) context.Context { return ctx }
	hook := srv.ConnState
	// A connection is counted from StateNew, which Serve sets before it
	// starts the connection's goroutine, until StateClosed, which that
	// goroutine sets last (or StateHijacked, when a handler takes the
	// connection over: the handler stays counted).
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		if hook != nil {
			hook(c, st)
		}
		switch st {
		case http.StateNew:
			s.add()
		case http.StateClosed, http.StateHijacked:
			s.done()
		}
	}
	next := srv.Handler
	if next == nil {
		next = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.add()
		defer s.done()
		next.ServeHTTP(w, r)
	})
	return s
}

func (s *Server) add() {
	s.mu.Lock()
	s.active++
	s.mu.Unlock()
}

func (s *Server) done() {
	s.mu.Lock()
	if s.active--; s.active == 0 {
		s.idle.Broadcast()
	}
	s.mu.Unlock()
}

// wait returns once nothing the server started runs.
func (s *Server) wait() {
	s.mu.Lock()
	for s.active > 0 {
		s.idle.Wait()
	}
	s.mu.Unlock()
}

// Serve serves ln until Shutdown or Close, and then returns
// http.ErrServerClosed (at once, and closing ln, if they came first).
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return http.ErrServerClosed
	}
	s.active++
	s.mu.Unlock()
	defer s.done()
	return s.srv.Serve(ln)
}

// Shutdown stops accepting connections and waits, until ctx is done, for
// the requests under way to finish; then it cancels the contexts of those
// left and closes their connections. It returns once every Serve call,
// connection and handler of the server has returned, with ctx's error if
// it had to cut requests short.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	err := s.srv.Shutdown(ctx)
	s.cancel()
	if err != nil {
		err = errors.Join(err, s.srv.Close())
	}
	s.wait()
	return err
}

// Close cancels the contexts of the requests under way, closes the
// listeners and connections, and returns once every Serve call,
// connection and handler of the server has returned.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	s.cancel()
	err := s.srv.Close()
	s.wait()
	return err
}
