package issuer

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/embeddednats"
	"github.com/tokenwarden/tokenwarden/internal/testenv"
	"github.com/tokenwarden/tokenwarden/jwks"
)

// fakeClock is testenv.Clock: key rotation is hours long.
type fakeClock = testenv.Clock

func newFakeClock() *fakeClock { return testenv.NewClock() }

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

func newEnv(t testing.TB) *env {
	t.Helper()
	dir := t.TempDir()
	ns := testenv.NATS(t, dir)
	d := testenv.NewDeployment(t, dir)
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.NATS.URL = ns.URL()
	cfg.UsersFile, cfg.ClientsFile = d.UsersFile, d.ClientsFile
	cfg.DistributionKeyFile, cfg.KeyEncryptionKey = d.DistributionKeyFile, d.KeyEncryptionKey
	return &env{t: t, nats: ns, dir: dir, cfg: cfg}
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

// waitFor polls cond until it holds, for at most 20s.

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 20s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
