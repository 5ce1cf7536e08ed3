package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// fakeProgram answers /work and /readyz and records whether Run's context
// was still alive when a request was served.
type fakeProgram struct {
	runCtx  atomic.Pointer[context.Context]
	stopped chan struct{}
}

func (p *fakeProgram) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /work", func(w http.ResponseWriter, _ *http.Request) {
		// The issuer needs its NATS connection (held by Run) for a token:
		// Run must still be running while requests are served.
		if c := p.runCtx.Load(); c == nil || (*c).Err() != nil {
			http.Error(w, "program stopped", http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, "done")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ready") })
	return mux
}

func (p *fakeProgram) Run(ctx context.Context) error {
	p.runCtx.Store(&ctx)
	<-ctx.Done()
	close(p.stopped)
	return nil
}

func getStatus(t *testing.T, url string) (int, error) {
	t.Helper()
	// A fresh connection each time, as a new client behind a Service would.
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// checkDrain cancels the signal context, then checks that during delay
// /readyz answers 503 while other requests succeed, and that the listener
// is closed once serve returns.
func checkDrain(t *testing.T, base string, cancel context.CancelFunc, delay time.Duration, done <-chan error) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if code, err := getStatus(t, base+"/readyz"); err == nil && code == http.StatusOK {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	signalled := time.Now()
	cancel() // SIGTERM
	served := 0
	for time.Since(signalled) < delay*3/4 {
		if code, err := getStatus(t, base+"/readyz"); err != nil || code != http.StatusServiceUnavailable {
			t.Fatalf("/readyz while draining: %d %v, want 503", code, err)
		}
		if code, err := getStatus(t, base+"/work"); err != nil || code != http.StatusOK {
			t.Fatalf("request %d while draining: %d %v, want 200", served, code, err)
		}
		served++
		time.Sleep(20 * time.Millisecond)
	}
	if served < 3 {
		t.Fatalf("only %d requests during the delay", served)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(delay + 5*time.Second):
		t.Fatal("did not stop after the delay")
	}
	if time.Since(signalled) < delay {
		t.Fatalf("stopped after %s, before the %s delay", time.Since(signalled), delay)
	}
	if _, err := getStatus(t, base+"/work"); err == nil {
		t.Fatal("the listener still accepts after shutdown")
	}
}

// TestRunDrainingKeepsServingThenCloses: after SIGTERM, /readyz fails at
// once, requests still succeed (with the program running) for the delay,
// then the listener closes and the program stops.
func TestRunDrainingKeepsServingThenCloses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &fakeProgram{stopped: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const delay = 600 * time.Millisecond
	done := make(chan error, 1)
	go func() { done <- runDraining(ctx, slog.New(slog.DiscardHandler), "test", p, delay, ln) }()
	checkDrain(t, "http://"+ln.Addr().String(), cancel, delay, done)
	select {
	case <-p.stopped:
	default:
		t.Fatal("the program was not stopped")
	}
}

// TestRunInjectorDrains: the injector drains the same way.
func TestRunInjectorDrains(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &fakeProgram{stopped: make(chan struct{})}
	alive := context.Background()
	p.runCtx.Store(&alive)
	d := &drainer{}
	hs := newHTTPServer(slog.New(slog.DiscardHandler), d.wrap(p.Handler()))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const delay = 600 * time.Millisecond
	done := make(chan error, 1)
	go func() { done <- runInjector(ctx, slog.New(slog.DiscardHandler), hs, d, delay, ln) }()
	checkDrain(t, "http://"+ln.Addr().String(), cancel, delay, done)
}

// TestRunDrainingWithoutDelayStopsAtOnce: delay 0 (dev, the sidecar) stops
// promptly.
func TestRunDrainingWithoutDelayStopsAtOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runProgram(ctx, slog.New(slog.DiscardHandler), "test", &fakeProgram{stopped: make(chan struct{})}, ln)
	}()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %s to stop", d)
	}
}

// TestDrainLeavesIdleConnectionsToTheirNextRequest: a keep-alive connection
// that is idle when the drain begins still gets an answer to its next
// request, which closes it. Before, the drain closed idle connections at
// once, and a client sending on one at that moment failed: the API server
// failed a pod admission with "write: broken pipe" in test/k8s's injector
// rollout (it calls webhooks over HTTP/1.1 keep-alive connections).
func TestDrainLeavesIdleConnectionsToTheirNextRequest(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &fakeProgram{stopped: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- runDraining(ctx, slog.New(slog.DiscardHandler), "test", p, 2*time.Second, ln) }()
	base := "http://" + ln.Addr().String()

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	br := bufio.NewReader(conn)
	ask := func() (*http.Response, error) {
		if _, err := io.WriteString(conn, "GET /work HTTP/1.1\r\nHost: tokenwarden\r\n\r\n"); err != nil {
			return nil, err
		}
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return nil, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp, nil
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		resp, err := ask()
		if err == nil && resp.StatusCode == http.StatusOK && !resp.Close {
			break // the connection is kept alive, and the program runs
		}
		if time.Now().After(deadline) {
			t.Fatalf("before the drain: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel() // SIGTERM; the connection is idle
	for deadline := time.Now().Add(5 * time.Second); ; {
		if code, err := getStatus(t, base+"/readyz"); err == nil && code == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz did not fail after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // whatever the drain does at its start is done
	resp, err := ask()
	if err != nil {
		t.Fatalf("a request on a connection that was idle when the drain began: %v", err)
	}
	if resp.StatusCode != http.StatusOK || !resp.Close {
		t.Fatalf("draining answer: %d, close %v; want 200 that closes the connection", resp.StatusCode, resp.Close)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
