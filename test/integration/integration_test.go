// Package integration runs the issuer and sidecars together on one real
// NATS server, in-process, as a deployment would: tokens flow from one to
// the other only through NATS and HTTP.
package integration

import (
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/embeddednats"
	sys "github.com/tokenwarden/tokenwarden/internal/testenv/system"
	"github.com/tokenwarden/tokenwarden/issuer"
	"github.com/tokenwarden/tokenwarden/sidecar"
)

// system wraps the in-process deployment of internal/testenv/system.
type system struct {
	*sys.System
	t         *testing.T
	issuerURL string
	nats      *embeddednats.Server
}

func newSystem(t *testing.T, mod func(*issuer.Config)) *system {
	st := sys.Start(t, mod)
	return &system{System: st, t: t, issuerURL: st.IssuerURL, nats: st.NATS}
}

func (s *system) sidecar(mod func(*sidecar.Config)) string { return s.Sidecar(mod) }

func waitOK(t testing.TB, u string) { sys.WaitOK(t, u) }

func (s *system) token(t testing.TB, client, secret string, form url.Values) map[string]any {
	t.Helper()
	return s.Token(t, client, secret, form)
}

func (s *system) login(t testing.TB) string {
	t.Helper()
	return s.Login(t, "")
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
