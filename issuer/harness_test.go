package issuer

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/embeddednats"
	"github.com/tokenwarden/tokenwarden/issuer/directory"
	"github.com/tokenwarden/tokenwarden/jwks"
)

// fakeClock is the one fake the tests use: key rotation is hours long.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now().Truncate(time.Second)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// testParams keep argon2id cheap in tests; production parameters are
// exercised by the directory package's own tests.
var testParams = directory.Params{Memory: 64, Time: 1, Threads: 1}

// env is what one test shares between issuer instances: a NATS server and
// the files of a deployment.
type env struct {
	t    testing.TB
	nats *embeddednats.Server
	dir  string
	cfg  Config
	// issuer is the shared issuer identifier, set by the first start.
	issuer string
}

func hash(t testing.TB, s string) string {
	h, err := directory.HashPassword([]byte(s), testParams)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func newEnv(t testing.TB) *env {
	t.Helper()
	dir := t.TempDir()
	ns, err := embeddednats.Start(embeddednats.Config{Addr: "127.0.0.1:0", StoreDir: filepath.Join(dir, "nats")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Stop)
	e := &env{t: t, nats: ns, dir: dir}
	e.writeFiles()
	return e
}

func (e *env) writeFiles() {
	t := e.t
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	pemKey, err := EncodeDistributionKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		p := filepath.Join(e.dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	kek := make([]byte, 32)
	_, _ = rand.Read(kek)
	e.cfg = DefaultConfig()
	e.cfg.Listen = "127.0.0.1:0"
	e.cfg.NATS.URL = e.nats.URL()
	e.cfg.DistributionKeyFile = write("dist.key", string(pemKey))
	e.cfg.KeyEncryptionKey = base64.StdEncoding.EncodeToString(kek)
	e.cfg.UsersFile = write("users.yaml", fmt.Sprintf(`users:
  - username: alice
    password_hash: %q
  - username: bob
    password_hash: %q
    scopes: [read]
`, hash(t, "alice-pw"), hash(t, "bob-pw")))
	e.cfg.ClientsFile = write("clients.yaml", fmt.Sprintf(`clients:
  - id: app
    secret_hash: %q
    grants: [password, refresh_token, client_credentials]
    scopes: [read, write]
    audience: demo-api
  - id: other
    secret_hash: %q
    grants: [password, refresh_token]
    scopes: [read, write]
    audience: other-api
  - id: service
    secret_hash: %q
    grants: [client_credentials]
    scopes: [read]
    audience: [demo-api, reports]
  - id: admin
    secret_hash: %q
    grants: [client_credentials]
    scopes: ["tokenwarden:admin"]
`, hash(t, "app-secret"), hash(t, "other-secret"), hash(t, "service-secret"), hash(t, "admin-secret")))
}

// instance is one running issuer replica behind a real HTTP server.
type instance struct {
	*Server
	url    string
	http   *httptest.Server
	cancel context.CancelFunc
	done   chan struct{}
}

func (e *env) start(opts ...Option) *instance {
	t := e.t
	t.Helper()
	// Replicas share one issuer identifier: the URL of the first instance
	// (so OIDC discovery against it matches). The HTTP server starts
	// unstarted to learn its address before the issuer is built.
	hs := httptest.NewUnstartedServer(nil)
	if e.issuer == "" {
		e.issuer = "http://" + hs.Listener.Addr().String()
	}
	cfg := e.cfg
	cfg.Issuer = e.issuer
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	srv, err := New(cfg, append([]Option{WithLogger(logger), WithTickInterval(time.Hour)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	hs.Config.Handler = srv.Handler()
	hs.Start()
	ctx, cancel := context.WithCancel(context.Background())
	inst := &instance{Server: srv, url: hs.URL, http: hs, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(inst.done); _ = srv.Run(ctx) }()
	t.Cleanup(inst.stop)
	return inst
}

func (in *instance) stop() {
	in.cancel()
	<-in.done
	in.http.Close()
}

// waitReady polls /readyz until it answers 200.
func (in *instance) waitReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(in.url + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("issuer %s not ready after 20s", in.url)
}

type tokenResult struct {
	Status int
	Header http.Header
	Body   map[string]any
}

func (r tokenResult) str(k string) string { s, _ := r.Body[k].(string); return s }

// post sends form to the token endpoint with HTTP Basic client
// authentication when clientID is not empty.
func (in *instance) post(t testing.TB, clientID, secret string, form url.Values) tokenResult {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, in.url+"/oauth2/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if clientID != "" {
		req.SetBasicAuth(url.QueryEscape(clientID), url.QueryEscape(secret))
	}
	return do(t, req)
}

func do(t testing.TB, req *http.Request) tokenResult {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body := map[string]any{}
	b, _ := io.ReadAll(resp.Body)
	if len(b) > 0 && strings.Contains(resp.Header.Get("Content-Type"), "json") {
		if err := json.Unmarshal(b, &body); err != nil {
			t.Fatalf("decode %s: %v", b, err)
		}
	}
	return tokenResult{Status: resp.StatusCode, Header: resp.Header, Body: body}
}

func (in *instance) login(t testing.TB, scope string) tokenResult {
	t.Helper()
	f := url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}}
	if scope != "" {
		f.Set("scope", scope)
	}
	r := in.post(t, "app", "app-secret", f)
	if r.Status != 200 {
		t.Fatalf("login: %d %v", r.Status, r.Body)
	}
	return r
}

func (in *instance) refresh(t testing.TB, token, scope string) tokenResult {
	t.Helper()
	f := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {token}}
	if scope != "" {
		f.Set("scope", scope)
	}
	return in.post(t, "app", "app-secret", f)
}

func (in *instance) adminToken(t testing.TB) string {
	t.Helper()
	r := in.post(t, "admin", "admin-secret", url.Values{"grant_type": {"client_credentials"}, "scope": {AdminScope}})
	if r.Status != 200 {
		t.Fatalf("admin token: %d %v", r.Status, r.Body)
	}
	return r.str("access_token")
}

// publishedKeys fetches /.well-known/jwks.json.
func (in *instance) publishedKeys(t testing.TB) *jwks.KeySet {
	t.Helper()
	resp, err := http.Get(in.url + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	ks, err := jwks.ParseKeySet(b)
	if err != nil {
		t.Fatalf("parse JWKS %s: %v", b, err)
	}
	return ks
}

// verifierFor verifies tokens of in against keys, the way a sidecar would.
func verifierFor(t testing.TB, issuerURL string, keys *jwks.KeySet, now func() time.Time, aud ...string) *jwks.Verifier {
	t.Helper()
	if len(aud) == 0 {
		aud = []string{"demo-api"}
	}
	v, err := jwks.NewVerifier(jwks.VerifierConfig{Issuer: issuerURL, Audience: aud, Now: now}, jwks.StaticKeys(keys))
	if err != nil {
		t.Fatal(err)
	}
	return v
}
