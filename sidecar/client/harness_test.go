package client_test

// The real parts the client is tested against (see internal/testenv/system):
// an embedded NATS with JetStream, a real issuer, and real sidecars fed by
// NATS, all in-process and on loopback.

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	sys "github.com/tokenwarden/tokenwarden/internal/testenv/system"
	"github.com/tokenwarden/tokenwarden/sidecar"
)

type system struct {
	*sys.System
	t *testing.T
}

func newSystem(t *testing.T) *system { return &system{System: sys.Start(t, nil), t: t} }

// runningSidecar is a sidecar connected to the system's NATS, served over
// TCP (URL) and a Unix socket (Socket).
type runningSidecar struct {
	*sidecar.Sidecar
	URL    string
	Socket string
	// conns counts TCP connections accepted.
	conns chan struct{}
}

func (s *system) sidecar(opts ...sidecar.Option) *runningSidecar {
	t := s.t
	t.Helper()
	sc := s.StartSidecar(s.SidecarConfig(), opts...)
	rs := &runningSidecar{Sidecar: sc, conns: make(chan struct{}, 10_000)}
	hs := httptest.NewUnstartedServer(sc.Handler())
	hs.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			rs.conns <- struct{}{}
		}
	}
	hs.Start()
	rs.URL = hs.URL

	// Unix socket paths are limited to ~108 bytes: t.TempDir() can be
	// longer, so use a short directory of our own.
	dir, err := os.MkdirTemp("", "twc")
	if err != nil {
		t.Fatal(err)
	}
	rs.Socket = filepath.Join(dir, "sidecar.sock")
	ln, err := net.Listen("unix", rs.Socket)
	if err != nil {
		t.Fatal(err)
	}
	us := &http.Server{Handler: sc.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = us.Serve(ln) }()
	t.Cleanup(func() {
		hs.Close()
		_ = us.Close()
		_ = os.RemoveAll(dir)
	})
	return rs
}

// token gets an access token from the issuer.
func (s *system) token(client, secret string, form url.Values) string {
	s.t.Helper()
	return s.Token(s.t, client, secret, form)["access_token"].(string)
}

// login is alice's password-grant token through client app, with scope.
func (s *system) login(scope string) string {
	s.t.Helper()
	return s.Login(s.t, scope)
}

func claims(t testing.TB, tok string) map[string]any { return sys.Claims(t, tok) }

func tamper(tok string) string { return sys.Tamper(tok) }

func waitOK(t testing.TB, u string) { sys.WaitOK(t, u) }
