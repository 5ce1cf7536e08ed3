package proxies

// The real parts the proxies are tested against, as in test/integration:
// an embedded NATS with JetStream, a real issuer, and real sidecars fed by
// NATS, all in-process and on loopback.

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

type system struct {
	t         *testing.T
	nats      *embeddednats.Server
	issuerURL string
	dep       *testenv.Deployment
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newSystem(t *testing.T) *system {
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
	srv, err := issuer.New(cfg, issuer.WithLogger(quiet()))
	if err != nil {
		t.Fatal(err)
	}
	hs.Config.Handler = srv.Handler()
	hs.Start()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; hs.Close() })
	s := &system{t: t, nats: ns, issuerURL: hs.URL, dep: dep}
	waitOK(t, hs.URL+"/readyz")
	return s
}

// sidecar starts a sidecar connected to the system's NATS, requiring
// audience demo-api as in `tokenwarden dev`, and returns its base URL.
func (s *system) sidecar() string {
	t := s.t
	t.Helper()
	cfg := sidecar.DefaultConfig()
	cfg.Issuer = s.issuerURL
	cfg.Audience = []string{"demo-api"}
	cfg.NATS.URL = s.nats.URL()
	cfg.DistributionPublicKeys = []string{base64.StdEncoding.EncodeToString(s.dep.DistributionKey)}
	sc, err := sidecar.New(cfg, sidecar.WithLogger(quiet()))
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(sc.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = sc.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; hs.Close() })
	waitOK(t, hs.URL+"/readyz")
	return hs.URL
}

func waitOK(t testing.TB, u string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(u); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never answered 200", u)
}

// token gets an access token from the issuer.
func (s *system) token(client, secret string, form url.Values) string {
	t := s.t
	t.Helper()
	req, _ := http.NewRequest("POST", s.issuerURL+"/oauth2/token", strings.NewReader(form.Encode()))
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
	return m["access_token"].(string)
}

// login is alice's password-grant token through client app, with scope.
func (s *system) login(scope string) string {
	return s.token("app", "app-secret", url.Values{"grant_type": {"password"}, "username": {"alice"},
		"password": {"alice-pw"}, "scope": {scope}})
}

// claims decodes a token's payload without verifying it.
func claims(t testing.TB, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
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

// tamper changes one character in the middle of the signature.
func tamper(tok string) string {
	i := strings.LastIndexByte(tok, '.') + 10
	c := byte('A')
	if tok[i] == 'A' {
		c = 'B'
	}
	return tok[:i] + string(c) + tok[i+1:]
}
