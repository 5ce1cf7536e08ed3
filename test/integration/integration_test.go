// Package integration runs the issuer and sidecars together on one real
// NATS server, in-process, as a deployment would: tokens flow from one to
// the other only through NATS and HTTP.
package integration

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
	"sync"
	"sync/atomic"
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
	issuer    *issuer.Server
	dep       *testenv.Deployment
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// serve runs p's handler on a loopback HTTP server and p.Run until the test
// ends.
func serve(t *testing.T, h http.Handler, run func(context.Context) error) *httptest.Server {
	hs := httptest.NewServer(h)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; hs.Close() })
	return hs
}

func newSystem(t *testing.T, mod func(*issuer.Config)) *system {
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
	s := &system{t: t, nats: ns, issuerURL: hs.URL, issuer: srv, dep: dep}
	waitOK(t, hs.URL+"/readyz")
	return s
}

func (s *system) sidecar(mod func(*sidecar.Config)) string {
	cfg := sidecar.DefaultConfig()
	cfg.Issuer = s.issuerURL
	cfg.Audience = []string{"demo-api"}
	cfg.NATS.URL = s.nats.URL()
	cfg.DistributionPublicKeys = []string{base64.StdEncoding.EncodeToString(s.dep.DistributionKey)}
	if mod != nil {
		mod(&cfg)
	}
	sc, err := sidecar.New(cfg, sidecar.WithLogger(quiet()))
	if err != nil {
		s.t.Fatal(err)
	}
	hs := serve(s.t, sc.Handler(), sc.Run)
	waitOK(s.t, hs.URL+"/readyz")
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

func (s *system) token(t testing.TB, client, secret string, form url.Values) map[string]any {
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
	return m
}

func (s *system) login(t testing.TB) string {
	t.Helper()
	return s.token(t, "app", "app-secret", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}})["access_token"].(string)
}

func verify(t testing.TB, sidecarURL, tok string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", sidecarURL+"/verify", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp
}

func TestIssuedTokensVerifyAtSidecar(t *testing.T) {
	s := newSystem(t, nil)
	sc := s.sidecar(nil)
	resp := verify(t, sc, s.login(t))
	if resp.StatusCode != 200 || resp.Header.Get("X-Auth-Subject") != "alice" || resp.Header.Get("X-Auth-Client-Id") != "app" {
		t.Fatalf("%d %v", resp.StatusCode, resp.Header)
	}
	svc := s.token(t, "service", "service-secret", url.Values{"grant_type": {"client_credentials"}})["access_token"].(string)
	if resp := verify(t, sc, svc); resp.StatusCode != 200 || resp.Header.Get("X-Auth-Subject") != "service" {
		t.Fatalf("client_credentials: %d", resp.StatusCode)
	}
	other := s.token(t, "other", "other-secret", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}})["access_token"].(string)
	if resp := verify(t, sc, other); resp.StatusCode != 401 {
		t.Fatalf("token for other-api accepted: %d", resp.StatusCode)
	}
}

// TestRotationUnderLoad rotates the issuer's keys repeatedly while tokens
// are issued and verified through two sidecars without pause: no valid
// token may be rejected.
func TestRotationUnderLoad(t *testing.T) {
	s := newSystem(t, func(c *issuer.Config) { c.Keys.PropagationDelay = 300 * time.Millisecond })
	sidecars := []string{s.sidecar(nil), s.sidecar(nil)}
	var verified, rejected atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				tok := s.token(t, "service", "service-secret", url.Values{"grant_type": {"client_credentials"}})["access_token"].(string)
				for _, sc := range sidecars {
					if resp := verify(t, sc, tok); resp.StatusCode == 200 {
						verified.Add(1)
					} else {
						rejected.Add(1)
						t.Errorf("worker %d: valid token rejected: %d %s", i, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
					}
				}
			}
		})
	}
	admin := s.token(t, "admin", "admin-secret", url.Values{"grant_type": {"client_credentials"}, "scope": {issuer.AdminScope}})["access_token"].(string)
	rotations := 0
	for rotations < 5 {
		time.Sleep(350 * time.Millisecond)
		req, _ := http.NewRequest("POST", s.issuerURL+"/admin/v1/keys/rotate", nil)
		req.Header.Set("Authorization", "Bearer "+admin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("rotate: %d", resp.StatusCode)
		}
		rotations++
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("%d rotations, %d verifications, %d rejected", rotations, verified.Load(), rejected.Load())
	if verified.Load() == 0 || rejected.Load() != 0 {
		t.Fatalf("verified %d, rejected %d", verified.Load(), rejected.Load())
	}
}
