package revocation

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/embeddednats"
	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

const testPrefix = "tokenwarden"

func newKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// natsEnv is a real embedded NATS server with JetStream that a test can
// stop and start again on the same port and store directory.
type natsEnv struct {
	t     testing.TB
	dir   string
	addr  string
	srv   *embeddednats.Server
	conns []*nats.Conn
}

func newNATS(t testing.TB) *natsEnv {
	t.Helper()
	n := &natsEnv{t: t, dir: filepath.Join(t.TempDir(), "nats"), addr: "127.0.0.1:0"}
	n.start()
	// The first start picked a free port; restarts reuse it.
	_, port, _ := net.SplitHostPort(n.srv.Addr().String())
	n.addr = net.JoinHostPort("127.0.0.1", port)
	t.Cleanup(func() {
		for _, c := range n.conns {
			c.Close()
		}
		if n.srv != nil {
			n.srv.Stop()
		}
	})
	return n
}

func (n *natsEnv) start() {
	n.t.Helper()
	srv, err := embeddednats.Start(embeddednats.Config{Addr: n.addr, StoreDir: n.dir})
	if err != nil {
		n.t.Fatal(err)
	}
	n.srv = srv
}

func (n *natsEnv) stop() {
	n.srv.Stop()
	n.srv = nil
}

func (n *natsEnv) url() string { return "nats://" + n.addr }

// connect opens a client that reconnects for ever, quickly, like a sidecar.
func (n *natsEnv) connect() (*nats.Conn, jetstream.JetStream) {
	n.t.Helper()
	nc, err := nats.Connect(n.url(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
		nats.RetryOnFailedConnect(true))
	if err != nil {
		n.t.Fatal(err)
	}
	n.conns = append(n.conns, nc)
	js, err := jetstream.New(nc)
	if err != nil {
		n.t.Fatal(err)
	}
	return nc, js
}

func ensureStream(t testing.TB, js jetstream.JetStream) jetstream.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := EnsureStream(ctx, js, StreamConfig{Prefix: testPrefix})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// recreateStream deletes the revocation stream and creates it again, as
// an operator who drops it would. A second stream stays in the account
// throughout: when an account's last stream is deleted, nats-server
// removes the emptied streams directory in a goroutine of its own, which
// races the new stream's mkdir ("could not create storage directory").
// The chart's account always holds the KV buckets' streams as well.
func recreateStream(t testing.TB, js jetstream.JetStream) jetstream.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "KEEP_ACCOUNT_DIR", Subjects: []string{"keep.account.dir"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(ctx, StreamName(testPrefix)); err != nil {
		t.Fatal(err)
	}
	return ensureStream(t, js)
}

// event makes a valid event of kind with value that expires in an hour.
func event(t testing.TB, kind Kind, value string) *Event {
	t.Helper()
	now := time.Now()
	e, err := NewEvent(kind, value, time.Time{}, now.Add(time.Hour), "", now)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// recorder is an Observer that remembers what it was told.
type recorder struct {
	mu      sync.Mutex
	applied []string
	delays  []time.Duration
	dropped map[string]int
	lag     uint64
}

func newRecorder() *recorder { return &recorder{dropped: map[string]int{}} }

func (r *recorder) Applied(e *Event, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applied = append(r.applied, e.ID)
	r.delays = append(r.delays, d)
}

func (r *recorder) Dropped(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dropped[reason]++
}

func (r *recorder) Lag(n uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lag = n
}

func (r *recorder) appliedIDs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.applied...)
}

func (r *recorder) drops(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dropped[reason]
}

// runConsumer starts c.Run in the background and stops it at cleanup,
// failing the test if Run returned an error.
func runConsumer(t testing.TB, c *Consumer) (stop func()) {
	t.Helper()
	return testenv.Run(t, 30*time.Second, c.Run)
}

// testInboxes is a connection's reply subjects for a test's reads.
func testInboxes(t testing.TB, nc *nats.Conn) *inboxes {
	t.Helper()
	in, err := newInboxes(nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(in.close)
	return in
}
