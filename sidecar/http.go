package sidecar

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tokenwarden/tokenwarden/internal/accesslog"
	"github.com/tokenwarden/tokenwarden/jwks"
)

// Response headers of a successful /verify, for the proxy to pass upstream.
const (
	HeaderSubject   = "X-Auth-Subject"
	HeaderClientID  = "X-Auth-Client-Id"
	HeaderScope     = "X-Auth-Scope"
	HeaderTokenID   = "X-Auth-Token-Id" // #nosec G101 -- a header name, not a credential
	HeaderExpiresAt = "X-Auth-Expires-At"
	// HeaderRequiredScope names scopes the token must have (space-separated),
	// as an alternative to the ?scope= query.
	HeaderRequiredScope = "X-Required-Scope"
)

const realm = `Bearer realm="tokenwarden"`

// Handler returns the sidecar's HTTP API.
func (s *Sidecar) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/introspect", s.handleIntrospect)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		checks, ready := s.readiness()
		code, status := http.StatusOK, "ready"
		if !ready {
			code, status = http.StatusServiceUnavailable, "not ready"
		}
		writeJSON(w, code, map[string]any{"status": status, "checks": checks})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
	// /verify/… is matched before the mux: ServeMux would answer a path
	// that is not in clean form (/verify/a//b, as Envoy forwards a client's
	// path) with a redirect instead of a verdict.
	var log *slog.Logger
	if s.cfg.AccessLog {
		log = s.log
	}
	policy := accesslog.Policy{Level: slog.LevelInfo, SuccessSample: s.cfg.AccessLogSuccessSample, Slow: s.cfg.AccessLogSlow}
	verify := accesslog.WrapPolicy(log, policy, "/verify", http.HandlerFunc(s.handleVerify), nil)
	other := map[string]http.Handler{}
	for _, route := range []string{"/introspect", "/healthz", "/readyz", "/metrics"} {
		other[route] = accesslog.WrapPolicy(log, policy, route, mux, nil)
	}
	unknown := accesslog.WrapPolicy(log, policy, "other", mux, nil)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.Path; p == "/verify" || strings.HasPrefix(p, "/verify/") {
			verify.ServeHTTP(w, r)
			return
		}
		if h, ok := other[r.URL.Path]; ok {
			h.ServeHTTP(w, r)
			return
		}
		unknown.ServeHTTP(w, r)
	})
}

// handleVerify answers any method on /verify and /verify/…: nginx
// auth_request, Traefik forwardAuth and Envoy ext_authz forward the
// original method and path, which do not matter here.
func (s *Sidecar) handleVerify(w http.ResponseWriter, r *http.Request) {
	v := s.decide(r.Header.Values("Authorization"), requiredScopes(r), transportHTTP)
	h := w.Header()
	if v.code != http.StatusOK {
		h.Set("WWW-Authenticate", v.challenge)
		if v.noStore {
			h.Set("Cache-Control", "no-store")
		}
		w.WriteHeader(v.code)
		return
	}
	c := v.claims
	h[HeaderSubject] = []string{c.Subject}
	h[HeaderClientID] = []string{c.ClientID}
	h[HeaderScope] = []string{c.Scope}
	h[HeaderTokenID] = []string{c.ID}
	h[HeaderExpiresAt] = []string{strconv.FormatInt(c.Expiry, 10)}
	w.WriteHeader(http.StatusOK)
}

// bearerToken extracts the RFC 6750 bearer token of r (see bearerOf).
func bearerToken(r *http.Request) (token, problem string) {
	return bearerOf(r.Header.Values("Authorization"))
}

// requiredScopes returns the scopes the request requires (?scope= and
// X-Required-Scope), space-separated. A repeated parameter or header
// requires every value, not only the first: an ambiguous requirement must
// fail closed.
func requiredScopes(r *http.Request) string {
	var required string
	// No query, no ?scope=: skip parsing it into a map, which most
	// requests (nginx, Envoy and Caddy send none of the client's) would
	// pay for nothing.
	if r.URL.RawQuery != "" {
		required = strings.Join(r.URL.Query()["scope"], " ")
	}
	for _, h := range r.Header[HeaderRequiredScope] { // the constant is canonical
		required += " " + h
	}
	return required
}

// MissingScopes returns the scopes of required (space-separated) that the
// token lacks, space-separated: the sidecar's rule, exported so an
// in-process verifier answers exactly as /verify does. A required "scope"
// that no token can carry (not an RFC 6749 scope-token) is reported as
// invalid-scope-requested, so it never reaches a quoted WWW-Authenticate
// value.
func MissingScopes(c *jwks.Claims, required string) string {
	var missing []string
	for _, sc := range strings.Fields(required) {
		if !validScopeToken(sc) {
			missing = append(missing, "invalid-scope-requested")
			continue
		}
		if !c.HasScope(sc) {
			missing = append(missing, sc)
		}
	}
	return strings.Join(missing, " ")
}

// validScopeToken reports whether s is an RFC 6749 scope-token:
// %x21 / %x23-5B / %x5D-7E.
func validScopeToken(s string) bool {
	for i := 0; i < len(s); i++ {
		b := s[i]
		if b < 0x21 || b > 0x7e || b == '"' || b == '\\' {
			return false
		}
	}
	return s != ""
}

func reasonOf(err error) string {
	var ve *jwks.VerifyError
	if errors.As(err, &ve) && ve.Reason != "" {
		return ve.Reason
	}
	return "invalid token"
}

func resultOf(err error) string {
	switch {
	case errors.Is(err, ErrRevoked):
		return "revoked"
	case errors.Is(err, jwks.ErrExpired):
		return "expired"
	case errors.Is(err, jwks.ErrUnknownKey):
		return "unknown_key"
	default:
		return "invalid"
	}
}

// introspection is the RFC 7662 answer for an active token.
type introspection struct {
	Active    bool          `json:"active"`
	Subject   string        `json:"sub,omitempty"`
	ClientID  string        `json:"client_id,omitempty"`
	Scope     string        `json:"scope,omitempty"`
	Expiry    int64         `json:"exp,omitempty"`
	IssuedAt  int64         `json:"iat,omitempty"`
	ID        string        `json:"jti,omitempty"`
	Issuer    string        `json:"iss,omitempty"`
	Audience  jwks.Audience `json:"aud,omitempty"`
	TokenType string        `json:"token_type,omitempty"`
	SessionID string        `json:"sid,omitempty"`
}

// handleIntrospect is RFC 7662 without client authentication, which is
// only safe because the caller is in the pod: requests from a non-loopback
// peer are refused.
func (s *Sidecar) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "invalid_request", "error_description": "use POST"})
		return
	}
	if !fromLoopback(r) {
		writeJSON(w, http.StatusForbidden, map[string]string{"error": "access_denied", "error_description": "introspection is served to loopback and Unix-socket clients only"})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, int64(s.cfg.MaxTokenSize)+1024)
	if err := r.ParseForm(); err != nil || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "error_description": "want an application/x-www-form-urlencoded body with token"})
		return
	}
	token := r.PostForm.Get("token")
	if token == "" || len(r.PostForm["token"]) > 1 {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "error_description": "exactly one token parameter is required"})
		return
	}
	c, _, err := s.verifier.Verify(token)
	if err != nil {
		s.metrics.count(transportHTTP, resultOf(err))
		accesslog.MarkDenied(w) // a 200, but a refusal: logged as a denial
		writeJSON(w, http.StatusOK, introspection{Active: false})
		return
	}
	s.metrics.count(transportHTTP, resultValid)
	writeJSON(w, http.StatusOK, introspection{Active: true, Subject: c.Subject, ClientID: c.ClientID, Scope: c.Scope, Expiry: c.Expiry,
		IssuedAt: c.IssuedAt, ID: c.ID, Issuer: c.Issuer, Audience: c.Audience, TokenType: "Bearer", SessionID: c.SessionID})
}

func fromLoopback(r *http.Request) bool {
	if r.RemoteAddr == "" || r.RemoteAddr == "@" || strings.HasPrefix(r.RemoteAddr, "/") {
		return true // Unix socket
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	// Exactly 127.0.0.1 or ::1, not all of 127/8: a service mesh such as
	// Istio forwards other pods' traffic from 127.0.0.6.
	ip := net.ParseIP(host)
	return ip != nil && (ip.Equal(net.IPv4(127, 0, 0, 1)) || ip.Equal(net.IPv6loopback))
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
