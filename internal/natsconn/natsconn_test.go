package natsconn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/tokenwarden/tokenwarden/internal/embeddednats"
)

func TestBackoffBounds(t *testing.T) {
	b := Backoff(100*time.Millisecond, 2*time.Second)
	for attempt := 0; attempt < 40; attempt++ {
		want := min(100*time.Millisecond<<min(attempt, 20), 2*time.Second)
		for range 50 {
			if d := b(attempt); d < want/2 || d > want {
				t.Fatalf("attempt %d: %s outside [%s, %s]", attempt, d, want/2, want)
			}
		}
	}
}

func TestRetryStopsOnSuccessAndOnCancel(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var n atomic.Int32
	err := Retry(t.Context(), log, "thing", func() error {
		if n.Add(1) < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || n.Load() != 3 {
		t.Fatalf("err %v after %d attempts", err, n.Load())
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if err := Retry(ctx, log, "never", func() error { return errors.New("down") }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled retry: %v", err)
	}
}

// TestConnectWaitsForServer: Connect succeeds with the server down,
// reports the state, and connects once the server comes up; a restart of
// the server is reported as down then up again.
func TestConnectWaitsForServer(t *testing.T) {
	dir := t.TempDir()
	probe, err := embeddednats.Start(embeddednats.Config{Addr: "127.0.0.1:0", StoreDir: filepath.Join(dir, "a")})
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.Addr().String()
	probe.Stop()

	var ups, downs atomic.Int32
	nc, err := Connect(Options{URL: "nats://" + addr, Name: "test", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnState: func(up bool) {
			if up {
				ups.Add(1)
			} else {
				downs.Add(1)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if nc.IsConnected() || downs.Load() != 1 {
		t.Fatalf("connected %v, downs %d", nc.IsConnected(), downs.Load())
	}
	ns, err := embeddednats.Start(embeddednats.Config{Addr: addr, StoreDir: filepath.Join(dir, "b")})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return nc.IsConnected() && ups.Load() >= 1 })
	ns.Stop()
	waitUntil(t, func() bool { return downs.Load() >= 2 })
	ns, err = embeddednats.Start(embeddednats.Config{Addr: addr, StoreDir: filepath.Join(dir, "b")})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Stop()
	waitUntil(t, func() bool { return nc.IsConnected() && ups.Load() >= 2 })
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 15s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                        "nats://127.0.0.1:4222",
		"nats://user:s3cret@host:4222":                 "nats://user:xxxxx@host:4222",
		"nats://tok3n@host:4222,nats://a:b@other:4222": "nats://xxxxx@host:4222,nats://a:xxxxx@other:4222",
	} {
		if got := Redact(in); got != want || strings.Contains(got, "s3cret") || strings.Contains(got, "tok3n") {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

// authServer starts a server (no JetStream) whose user "u" has password
// pw; reload changes it under running clients.
func authServer(t *testing.T, port int, pw string) *server.Server {
	t.Helper()
	srv, err := server.NewServer(authOptions(port, pw))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

func authOptions(port int, pw string) *server.Options {
	return &server.Options{Host: "127.0.0.1", Port: port, NoSigs: true, NoLog: true,
		Users: []*server.User{{Username: "u", Password: pw}}}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestConnectSurvivesAuthErrors: the server refuses the client's password
// many times in a row (nats.go closes the connection for good after the
// same auth error twice unless told otherwise); once the password is
// back, the client reconnects by itself.
func TestConnectSurvivesAuthErrors(t *testing.T) {
	port := freePort(t)
	srv := authServer(t, port, "one")
	var refused atomic.Int32
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	nc, err := Connect(Options{URL: fmt.Sprintf("nats://u:one@127.0.0.1:%d", port), Name: "test", Logger: log,
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	waitUntil(t, nc.IsConnected)
	nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrAuthorization) {
			refused.Add(1)
		}
	})
	if err := srv.ReloadOptions(authOptions(port, "two")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return refused.Load() >= 5 })
	if nc.IsClosed() {
		t.Fatal("connection closed for good after repeated authorization violations")
	}
	if err := srv.ReloadOptions(authOptions(port, "one")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, nc.IsConnected)
}

// TestRunRebuildsClosedConnection: when the connection closes for good
// (here closed under Run's feet), Run gives f a new one; it returns nil
// once ctx ends, and an error only for options that cannot connect at all.
func TestRunRebuildsClosedConnection(t *testing.T) {
	ns, err := embeddednats.Start(embeddednats.Config{Addr: "127.0.0.1:0", StoreDir: filepath.Join(t.TempDir(), "a")})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Stop()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	conns := make(chan *nats.Conn, 4)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{URL: ns.URL(), Name: "test", Logger: log}, func(ctx context.Context, nc *nats.Conn) {
			conns <- nc
			<-ctx.Done()
		})
	}()
	first := <-conns
	first.Close()
	select {
	case second := <-conns:
		if second == first {
			t.Fatal("the closed connection was given again")
		}
		waitUntil(t, second.IsConnected)
	case <-time.After(15 * time.Second):
		t.Fatal("no new connection after the first closed for good")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after ctx ended: %v", err)
	}
	if err := Run(t.Context(), Options{URL: "nats://%zz", Logger: log}, func(context.Context, *nats.Conn) {}); err == nil {
		t.Fatal("Run with a malformed URL returned nil")
	}
}

// TestReconnectPlan: the first attempt at a server after a disconnection
// waits a jittered time up to the spread, at a server picked among those
// tried least; once every server failed, the backoff of the attempts.
func TestReconnectPlan(t *testing.T) {
	const spread = 700 * time.Millisecond
	srv := func(name string, reconnects int) nats.Server {
		return nats.Server{URL: &url.URL{Scheme: "nats", Host: name + ":4222"}, Reconnects: reconnects}
	}
	for _, tc := range []struct {
		name      string
		pool      []nats.Server
		want      []string // the servers it may pick
		wantDelay time.Duration
	}{
		{"one server, first attempt", []nats.Server{srv("a", 0)}, []string{"a"}, spread},
		{"three servers, first attempts", []nats.Server{srv("a", 0), srv("b", 0), srv("c", 0)}, []string{"a", "b", "c"}, spread},
		{"the least tried", []nats.Server{srv("a", 1), srv("b", 0), srv("c", 2)}, []string{"b"}, spread},
		{"all tried once", []nats.Server{srv("a", 1), srv("b", 1)}, []string{"a", "b"}, time.Second},
		{"all tried three times", []nats.Server{srv("a", 3)}, []string{"a"}, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var drawn []time.Duration
			plan := reconnectPlan(spread, func(attempt int) time.Duration { return time.Duration(attempt) * time.Second },
				func(d time.Duration) time.Duration { drawn = append(drawn, d); return d })
			picked := map[string]bool{}
			for range 50 {
				s, d := plan(tc.pool, nats.ServerInfo{})
				if s == nil || !slices.Contains(tc.want, strings.TrimSuffix(s.URL.Host, ":4222")) {
					t.Fatalf("picked %v, want one of %v", s, tc.want)
				}
				if d != tc.wantDelay {
					t.Fatalf("delay %s, want %s", d, tc.wantDelay)
				}
				picked[s.URL.Host] = true
			}
			if len(picked) != len(tc.want) {
				t.Errorf("picked %v in 50 tries, want each of %v", picked, tc.want)
			}
			if first := tc.wantDelay == spread; first != (len(drawn) == 50) {
				t.Errorf("%d jittered draws, first attempts: %v", len(drawn), first)
			}
		})
	}
	if s, _ := reconnectPlan(spread, Backoff(time.Second, time.Second), nil)(nil, nats.ServerInfo{}); s != nil {
		t.Errorf("empty pool: picked %v", s)
	}
}

// TestConnectSpreadsReconnection: with ReconnectSpread, the reconnection
// after a server restart waits a time drawn from the spread (by the
// injected jitter) before its first attempt, and connects.
func TestConnectSpreadsReconnection(t *testing.T) {
	dir := t.TempDir()
	ns, err := embeddednats.Start(embeddednats.Config{Addr: "127.0.0.1:0", StoreDir: filepath.Join(dir, "a")})
	if err != nil {
		t.Fatal(err)
	}
	addr := ns.Addr().String()
	const spread = 1234 * time.Millisecond
	var draws atomic.Int32
	nc, err := Connect(Options{URL: "nats://" + addr, Name: "test", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 50 * time.Millisecond, ReconnectSpread: spread,
		jitter: func(d time.Duration) time.Duration {
			if d == spread {
				draws.Add(1)
			}
			return 20 * time.Millisecond
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	waitUntil(t, nc.IsConnected)
	if draws.Load() != 0 {
		t.Fatalf("%d spread draws before any disconnection", draws.Load())
	}
	ns.Stop()
	waitUntil(t, func() bool { return !nc.IsConnected() })
	ns, err = embeddednats.Start(embeddednats.Config{Addr: addr, StoreDir: filepath.Join(dir, "a")})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Stop()
	waitUntil(t, nc.IsConnected)
	if draws.Load() < 1 {
		t.Error("reconnected without a wait drawn from the spread")
	}
}
