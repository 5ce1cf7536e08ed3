package proxies

// The real parts the proxies are tested against (see internal/testenv/system):
// an embedded NATS with JetStream, a real issuer, and real sidecars fed by
// NATS, all in-process and on loopback.

import (
	"net/url"
	"testing"

	sys "github.com/tokenwarden/tokenwarden/internal/testenv/system"
)

type system struct {
	*sys.System
	t *testing.T
}

func newSystem(t *testing.T) *system { return &system{System: sys.Start(t, nil), t: t} }

// sidecar starts a sidecar requiring audience demo-api and returns its URL.
func (s *system) sidecar() string { return s.Sidecar(nil) }

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
