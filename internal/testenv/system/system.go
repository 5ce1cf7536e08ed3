// Package system starts a whole tokenwarden deployment in-process for
// tests: an embedded NATS server with JetStream, a real issuer on a
// loopback HTTP server, and real sidecars fed only through NATS. Only
// tests import it (package issuer's own tests use testenv instead, which
// does not import the issuer).
package system

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/embeddednats"
	"github.com/tokenwarden/tokenwarden/internal/testenv"
	"github.com/tokenwarden/tokenwarden/issuer"
	"github.com/tokenwarden/tokenwarden/sidecar"
)

// System is one running deployment. Its users and clients are those of
// testenv.NewDeployment.
type System struct {
	T          testing.TB
	NATS       *embeddednats.Server
	IssuerURL  string
	Issuer     *issuer.Server
	Deployment *testenv.Deployment
}

// Quiet is a logger that discards everything.
func Quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// Start runs NATS and an issuer (its config adjusted by mod, if not nil)
// until the test ends, and waits until the issuer is ready.
func Start(t testing.TB, mod func(*issuer.Config)) *System {
	t.Helper()
	dir := t.TempDir()
	ns := testenv.NATS(t, dir)
	dep := testenv.NewDeployment(t, dir)
	hs := httptest.NewUnstartedServer(nil)
	cfg := issuer.DefaultConfig()
	cfg.Issuer = "http://" + hs.Listener.Addr().String()
	cfg.NATS.URL = ns.URL()
	cfg.UsersFile, cfg.ClientsFile = dep.UsersFile, dep.ClientsFile
	cfg.DistributionKeyFile, cfg.KeyEncryptionKey = dep.DistributionKeyFile, dep.KeyEncryptionKey
	if mod != nil {
		mod(&cfg)
	}
	srv, err := issuer.New(cfg, issuer.WithLogger(Quiet()))
	if err != nil {
		t.Fatal(err)
	}
	hs.Config.Handler = srv.Handler()
	hs.Start()
	run(t, srv.Run, hs.Close)
	WaitOK(t, hs.URL+"/readyz")
	return &System{T: t, NATS: ns, IssuerURL: hs.URL, Issuer: srv, Deployment: dep}
}

// run runs f until the test ends, then closes what follows.
func run(t testing.TB, f func(context.Context) error, closers ...func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		for _, c := range closers {
			c()
		}
	})
}

// SidecarConfig is a sidecar configuration for this system, requiring
// audience demo-api as `tokenwarden dev` does.
func (s *System) SidecarConfig() sidecar.Config {
	cfg := sidecar.DefaultConfig()
	cfg.Issuer = s.IssuerURL
	cfg.Audience = []string{"demo-api"}
	cfg.NATS.URL = s.NATS.URL()
	cfg.DistributionPublicKeys = []string{base64.StdEncoding.EncodeToString(s.Deployment.DistributionKey)}
	return cfg
}

// StartSidecar runs a sidecar with cfg until the test ends and waits until
// it is ready. It serves no HTTP: callers serve its Handler as they need.
func (s *System) StartSidecar(cfg sidecar.Config, opts ...sidecar.Option) *sidecar.Sidecar {
	t := s.T
	t.Helper()
	sc, err := sidecar.New(cfg, append([]sidecar.Option{sidecar.WithLogger(Quiet())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	run(t, sc.Run)
	deadline := time.Now().Add(20 * time.Second)
	for !sc.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("sidecar not ready within 20s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return sc
}

// Sidecar runs a sidecar (its config adjusted by mod, if not nil) on a
// loopback HTTP server and returns its base URL.
func (s *System) Sidecar(mod func(*sidecar.Config)) string {
	cfg := s.SidecarConfig()
	if mod != nil {
		mod(&cfg)
	}
	sc := s.StartSidecar(cfg)
	hs := httptest.NewServer(sc.Handler())
	s.T.Cleanup(hs.Close)
	return hs.URL
}

// WaitOK polls u until it answers 200, failing the test after 20s.
func WaitOK(t testing.TB, u string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(u); err == nil { // #nosec G107 -- a loopback test URL
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never answered 200", u)
}

// Token posts form to the token endpoint as client and returns the answer;
// anything but 200 fails the test.
func (s *System) Token(t testing.TB, client, secret string, form url.Values) map[string]any {
	t.Helper()
	req, _ := http.NewRequest("POST", s.IssuerURL+"/oauth2/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(client, secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	if resp.StatusCode != 200 {
		t.Fatalf("token: %d %v", resp.StatusCode, m)
	}
	return m
}

// Login is alice's access token from a password grant through client app
// (scope empty: everything allowed).
func (s *System) Login(t testing.TB, scope string) string {
	t.Helper()
	f := url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}}
	if scope != "" {
		f.Set("scope", scope)
	}
	return s.Token(t, "app", "app-secret", f)["access_token"].(string)
}

// Claims decodes a token's payload without verifying it.
func Claims(t testing.TB, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWS: %q", tok)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// Tamper changes one character in the middle of the signature.
func Tamper(tok string) string {
	i := strings.LastIndexByte(tok, '.') + 10
	c := byte('A')
	if tok[i] == 'A' {
		c = 'B'
	}
	return tok[:i] + string(c) + tok[i+1:]
}
