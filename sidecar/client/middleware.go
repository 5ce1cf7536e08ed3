package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

type ctxKey struct{}

// IdentityFrom returns the Identity the middleware verified for this
// request.
func IdentityFrom(ctx context.Context) (*Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(*Identity)
	return id, ok && id != nil
}

// ContextWithIdentity returns ctx carrying id, as the middleware stores
// it; for tests of handlers that read IdentityFrom.
func ContextWithIdentity(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// MiddlewareOption configures Middleware.
type MiddlewareOption func(*middleware)

// WithScopes requires every scope given (each argument may hold several,
// space-separated) for a request to pass: a token lacking one is answered
// 403 insufficient_scope.
func WithScopes(scopes ...string) MiddlewareOption {
	return func(m *middleware) { m.scopes = append(m.scopes, strings.Fields(strings.Join(scopes, " "))...) }
}

// WithRealm sets the realm of the WWW-Authenticate challenges (default
// "tokenwarden", as the sidecar's).
func WithRealm(realm string) MiddlewareOption { return func(m *middleware) { m.realm = realm } }

// WithErrorHandler replaces how a refused request is answered. err is
// ErrNoToken, an *Error (answer e.Status) or an error wrapping
// ErrUnavailable (answer 503): the handler must not call the next
// handler. WWWAuthenticate(err) gives the challenge to send.
func WithErrorHandler(h func(w http.ResponseWriter, r *http.Request, err error)) MiddlewareOption {
	return func(m *middleware) {
		if h != nil {
			m.onError = h
		}
	}
}

type middleware struct {
	v       Verifier
	scopes  []string
	realm   string
	onError func(http.ResponseWriter, *http.Request, error)
}

// Middleware verifies every request's bearer token with v (a *Client, or
// InProcess) before calling the next handler, which finds the Identity
// with IdentityFrom. It answers by itself, as the sidecar would:
//   - no token: 401, WWW-Authenticate: Bearer realm="tokenwarden";
//   - malformed Authorization, bad, expired or revoked token: 401 with
//     error="invalid_request" or "invalid_token" and error_description;
//   - a required scope (WithScopes) missing: 403, error="insufficient_scope";
//   - the verifier could not decide (sidecar unreachable, timeout, 5xx):
//     503 with Retry-After. It fails closed: the next handler is never
//     called for a request that was not verified.
func Middleware(v Verifier, opts ...MiddlewareOption) func(http.Handler) http.Handler {
	m := &middleware{v: v, realm: "tokenwarden"}
	for _, o := range opts {
		o(m)
	}
	if m.onError == nil {
		m.onError = m.writeError
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, err := m.verify(r)
			if err != nil {
				m.onError(w, r, err)
				return
			}
			next.ServeHTTP(w, r.WithContext(ContextWithIdentity(r.Context(), id)))
		})
	}
}

func (m *middleware) verify(r *http.Request) (*Identity, error) {
	if m.v == nil {
		return nil, fmt.Errorf("%w: middleware has no verifier", ErrUnavailable)
	}
	token, err := BearerToken(r.Header.Values("Authorization"))
	if err != nil {
		return nil, err
	}
	id, err := m.v.VerifyToken(r.Context(), token, m.scopes...)
	if err == nil && id == nil {
		err = fmt.Errorf("%w: verifier returned no identity and no error", ErrUnavailable)
	}
	return id, err
}

// WWWAuthenticate returns the challenge the middleware sends for err: a
// bare `Bearer realm="tokenwarden"` for ErrNoToken, with error,
// error_description and scope for an *Error, and "" for anything else
// (which is not the token's fault).
func WWWAuthenticate(err error) string { return challenge("tokenwarden", err) }

// Status returns the HTTP status the middleware answers for err: 401 for
// ErrNoToken, the *Error's status (401 or 403), and 503 for anything
// else, which includes every error wrapping ErrUnavailable.
func Status(err error) int {
	var e *Error
	switch {
	case errors.As(err, &e) && (e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden):
		return e.Status
	case errors.As(err, &e):
		return http.StatusUnauthorized
	case errors.Is(err, ErrNoToken):
		return http.StatusUnauthorized
	default:
		return http.StatusServiceUnavailable
	}
}

// writeError is the default answer: the sidecar's status and challenge,
// and a small RFC 6749-style JSON body.
func (m *middleware) writeError(w http.ResponseWriter, _ *http.Request, err error) {
	status := Status(err)
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Type", "application/json")
	body := map[string]string{}
	if c := challenge(m.realm, err); c != "" {
		h.Set("WWW-Authenticate", c)
	}
	var e *Error
	switch {
	case errors.As(err, &e) && e.Code != "":
		body["error"] = e.Code
		if e.Description != "" {
			body["error_description"] = e.Description
		}
		if e.Scope != "" {
			body["scope"] = e.Scope
		}
	case status == http.StatusServiceUnavailable:
		h.Set("Retry-After", "1")
		body["error"] = "temporarily_unavailable"
		body["error_description"] = "token verification is unavailable"
	default:
		body["error"] = "unauthorized"
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
