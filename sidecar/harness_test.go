package sidecar

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/embeddednats"
	"github.com/tokenwarden/tokenwarden/internal/testenv"
	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

const (
	testIssuer   = "https://issuer.test"
	testAudience = "demo-api"
)

type fakeClock = testenv.Clock

// world is what the issuer would provide: NATS with the JWKS bucket, a key
// ring and the distribution key. Bundles are published the way the issuer
// publishes them, so the sidecar is tested without importing the issuer.
type world struct {
	t     testing.TB
	nats  *embeddednats.Server
	kv    jetstream.KeyValue
	js    jetstream.JetStream
	ring  *jwks.Ring
	dist  ed25519.PrivateKey
	seq   uint64
	clock *fakeClock
	dir   string
	// connOpts are the options of the test's own NATS connections (the
	// credentials of a server that requires them).
	connOpts []nats.Option
}

func newWorld(t testing.TB, alg jwks.Algorithm) *world {
	t.Helper()
	dir := t.TempDir()
	ns, err := embeddednats.Start(embeddednats.Config{Addr: "127.0.0.1:0", StoreDir: filepath.Join(dir, "nats")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Stop)
	return newWorldOn(t, alg, ns, dir)
}

// newWorldOn is newWorld on a server the caller started (and stops); the
// test's own connections use connOpts.
func newWorldOn(t testing.TB, alg jwks.Algorithm, ns *embeddednats.Server, dir string, connOpts ...nats.Option) *world {
	t.Helper()
	_, dist, _ := ed25519.GenerateKey(rand.Reader)
	p := jwks.DefaultPolicy()
	p.Alg = alg
	ring, err := jwks.NewRing(time.Now(), p)
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, nats: ns, ring: ring, dist: dist, clock: testenv.NewClock(), dir: dir, connOpts: connOpts}
	w.kv = w.bucket()
	w.publish(ring)
	return w
}

func (w *world) bucket() jetstream.KeyValue {
	nc, err := nats.Connect(w.nats.URL(), w.connOpts...)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	kv, err := js.CreateOrUpdateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "tokenwarden_jwks", History: 1})
	if err != nil {
		w.t.Fatal(err)
	}
	// The revocation stream, as the issuer creates it.
	if _, err := revocation.EnsureStream(context.Background(), js, revocation.StreamConfig{Prefix: "tokenwarden"}); err != nil {
		w.t.Fatal(err)
	}
	w.js = js
	return kv
}

// publish puts a signed bundle of ring's keys with the next sequence.
func (w *world) publish(r *jwks.Ring) uint64 {
	w.t.Helper()
	w.seq++
	ks, err := r.KeySet()
	if err != nil {
		w.t.Fatal(err)
	}
	doc, _ := jwks.Document(ks)
	signed, err := jwks.SignBundle(&jwks.Bundle{Sequence: w.seq, IssuedAt: time.Now().Unix(), JWKS: doc}, w.dist)
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := w.kv.Put(context.Background(), "current", signed); err != nil {
		w.t.Fatal(err)
	}
	return w.seq
}

func (w *world) config() Config {
	cfg := DefaultConfig()
	cfg.Issuer = testIssuer
	cfg.Audience = []string{testAudience}
	cfg.NATS.URL = w.nats.URL()
	cfg.DistributionPublicKeys = []string{base64.StdEncoding.EncodeToString(w.dist.Public().(ed25519.PublicKey))}
	return cfg
}

// token signs claims for the test audience with the ring's active key.
func (w *world) token(mod ...func(*jwks.Claims)) string {
	w.t.Helper()
	now := w.clock.Now()
	c := &jwks.Claims{Issuer: testIssuer, Subject: "alice", Audience: jwks.Audience{testAudience}, Expiry: now.Add(10 * time.Minute).Unix(),
		IssuedAt: now.Unix(), ID: "jti-" + base64.RawURLEncoding.EncodeToString(randBytes(9)), ClientID: "demo-app", Scope: "read write", SessionID: "sid-1"}
	for _, m := range mod {
		m(c)
	}
	tok, err := w.ring.Active().Sign(c)
	if err != nil {
		w.t.Fatal(err)
	}
	return tok
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

type running struct {
	*Sidecar
	url string
	// grpcAddr is the gRPC server's, once serveGRPC started one.
	grpcAddr string
	cancel   context.CancelFunc
	done     chan struct{}
}

func (w *world) start(cfg Config, opts ...Option) *running {
	w.t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	sc, err := New(cfg, append([]Option{WithLogger(logger), WithClock(w.clock.Now)}, opts...)...)
	if err != nil {
		w.t.Fatal(err)
	}
	hs := httptest.NewServer(sc.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Sidecar: sc, url: hs.URL, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(r.done); _ = sc.Run(ctx) }()
	w.t.Cleanup(func() { r.stop(); hs.Close() })
	return r
}

func (r *running) stop() {
	r.cancel()
	<-r.done
}

func (r *running) waitReady(t testing.TB) {
	t.Helper()
	waitFor(t, "sidecar ready", func() bool {
		resp, err := http.Get(r.url + "/readyz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == 200
	})
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type answer struct {
	status int
	header http.Header
	body   string
}

func (r *running) verify(t testing.TB, method, path, token string, hdr ...string) answer {
	t.Helper()
	req, _ := http.NewRequest(method, r.url+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: string(b)}
}
