package natsconn

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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
