// Package client lets an application verify bearer tokens with the
// tokenwarden sidecar next to it, in three lines:
//
//	c := client.New("http://127.0.0.1:8181") // or "unix:///run/tokenwarden/sidecar.sock"
//	id, err := c.Verify(ctx, r.Header.Get("Authorization"), "read")
//	// id.Subject, id.ClientID, id.Scopes, id.TokenID, id.ExpiresAt
//
// or, as HTTP middleware that answers 401/403/503 itself and hands the
// Identity to the handler through the request context:
//
//	h := client.Middleware(c, client.WithScopes("read"))(app)
//	// in app: id, _ := client.IdentityFrom(r.Context())
//
// Every failure is one of three kinds, and each fails closed:
//   - ErrNoToken: the request carried no bearer token (401);
//   - *Error: the sidecar (or the in-process verifier) rejected the token,
//     with the RFC 6750 error code parsed from its WWW-Authenticate
//     challenge (401 invalid_token / invalid_request, 403
//     insufficient_scope);
//   - anything else wraps ErrUnavailable: the sidecar could not be asked
//     or gave an answer that is not a verdict (network error, timeout, 5xx,
//     a 200 without the identity headers). The middleware answers 503 and
//     never lets such a request through.
//
// InProcess adapts a *sidecar.Verifier (an embedded sidecar) to the same
// Verifier interface, with the same answers.
package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/sidecar"
)

// DefaultTimeout bounds one verification round trip to the sidecar. The
// sidecar answers from memory on the same host, in well under a
// millisecond; a sidecar that has not answered in two seconds is not
// going to.
const DefaultTimeout = 2 * time.Second

// maxBody is how much of a response body is read (and discarded) so the
// connection can be reused; the sidecar's /verify answers have none.
const maxBody = 64 << 10

// Identity is who a verified token speaks for.
type Identity struct {
	Subject   string    // sub: the user, or the client for client_credentials
	ClientID  string    // client_id: the OAuth client the token was issued to
	Scopes    []string  // scope, split
	TokenID   string    // jti
	ExpiresAt time.Time // exp
}

// HasScope reports whether the token grants scope s.
func (id *Identity) HasScope(s string) bool {
	for _, have := range id.Scopes {
		if have == s {
			return true
		}
	}
	return false
}

// Verifier verifies a bearer token, requiring every scope given. Both
// *Client (through the sidecar's HTTP API) and InProcess (an embedded
// sidecar's verifier) implement it.
type Verifier interface {
	VerifyToken(ctx context.Context, token string, scopes ...string) (*Identity, error)
}

// Client asks a sidecar's /verify. It is safe for concurrent use and keeps
// connections to the sidecar open for reuse; make one and share it.
type Client struct {
	base    string       // http(s)://host[:port][/prefix], no trailing slash
	hc      *http.Client // never nil
	timeout time.Duration
	err     error // a bad address given to New, reported by every call
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient makes the client use hc (its transport, TLS settings,
// and so on) instead of its own. With a unix:// address the caller's
// transport must do the dialing; the client's own transport is only built
// when this option is absent.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) {
		if hc != nil {
			c.hc = hc
		}
	}
}

// WithTimeout bounds each verification (default DefaultTimeout); zero or
// negative means no bound beyond the caller's context.
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// New returns a client of the sidecar at addr: "http://127.0.0.1:8181",
// "127.0.0.1:8181" (http is assumed), "https://…", or
// "unix:///run/tokenwarden/sidecar.sock". New does not fail: a malformed
// address makes every call fail with an error wrapping ErrUnavailable, so
// a misconfigured app fails closed.
func New(addr string, opts ...Option) *Client {
	c := &Client{timeout: DefaultTimeout}
	for _, o := range opts {
		o(c)
	}
	base, socket, err := parseAddr(addr)
	if err != nil {
		c.err = err
		if c.hc == nil {
			c.hc = &http.Client{}
		}
		return c
	}
	c.base = base
	if c.hc == nil {
		c.hc = &http.Client{Transport: newTransport(socket)}
	}
	return c
}

// parseAddr turns addr into the base URL requests go to and, for a Unix
// socket, the socket's path (the URL's host is then only a Host header).
func parseAddr(addr string) (base, socket string, err error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return "", "", fmt.Errorf("%w: no sidecar address", ErrUnavailable)
	}
	if rest, ok := strings.CutPrefix(addr, "unix:"); ok {
		// unix:///abs/path, unix:/abs/path or unix:relative/path
		path := strings.TrimPrefix(rest, "//")
		if path == "" {
			return "", "", fmt.Errorf("%w: sidecar address %q names no socket path", ErrUnavailable, addr)
		}
		return "http://tokenwarden-sidecar", path, nil
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || u.RawQuery != "" || u.Fragment != "" {
		return "", "", fmt.Errorf("%w: sidecar address %q is not http(s)://host[:port] or unix:///path", ErrUnavailable, addr)
	}
	return strings.TrimSuffix(u.Scheme+"://"+u.Host+u.EscapedPath(), "/"), "", nil
}

// newTransport is tuned for one local peer: enough idle connections that
// a busy app does not open one per request, no proxy (HTTP_PROXY must
// never route token checks elsewhere), no compression of empty bodies.
func newTransport(socket string) *http.Transport {
	d := &net.Dialer{Timeout: DefaultTimeout, KeepAlive: 30 * time.Second}
	t := &http.Transport{
		Proxy:                 nil,
		DialContext:           d.DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: DefaultTimeout,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
	}
	if socket != "" {
		t.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", socket)
		}
	}
	return t
}

// Verify verifies the token of an Authorization header value ("Bearer
// …"), requiring every scope given. An empty header or another scheme is
// ErrNoToken; a malformed Bearer value is an *Error (invalid_request),
// exactly as the sidecar would answer.
func (c *Client) Verify(ctx context.Context, authorization string, scopes ...string) (*Identity, error) {
	var vals []string
	if authorization != "" {
		vals = []string{authorization}
	}
	token, err := BearerToken(vals)
	if err != nil {
		return nil, err
	}
	return c.VerifyToken(ctx, token, scopes...)
}

// VerifyToken verifies token (without the "Bearer " prefix), requiring
// every scope given (each argument may itself hold several, space
// separated).
func (c *Client) VerifyToken(ctx context.Context, token string, scopes ...string) (*Identity, error) {
	if c.err != nil {
		return nil, c.err
	}
	if token == "" {
		return nil, ErrNoToken
	}
	if err := checkTokenSyntax(token); err != nil {
		return nil, err
	}
	required := strings.Fields(strings.Join(scopes, " "))
	u := c.base + "/verify"
	if len(required) > 0 {
		u += "?" + url.Values{"scope": {strings.Join(required, " ")}}.Encode()
	}
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	// The URL is the sidecar address the app was configured with; only the
	// query (scope names) comes from the call.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil) // #nosec G704 -- configured sidecar address
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("User-Agent", "tokenwarden-client")
	resp, err := c.hc.Do(req) // #nosec G704 -- configured sidecar address
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer func() {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
		_ = resp.Body.Close()
	}()
	return identityFromResponse(resp, required)
}

// identityFromResponse turns a /verify answer into an Identity or an
// error. Only a 200 carrying the identity headers (and, defensively, every
// required scope) is a success: anything else that is not a 401/403
// verdict means the sidecar could not decide, and fails closed.
func identityFromResponse(resp *http.Response, required []string) (*Identity, error) {
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusUnauthorized, http.StatusForbidden:
		return nil, errorFromChallenge(resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	case http.StatusRequestHeaderFieldsTooLarge:
		// The token itself was too large for the sidecar's HTTP server.
		return nil, &Error{Status: http.StatusUnauthorized, Code: CodeInvalidToken, Description: "token too large"}
	default:
		return nil, fmt.Errorf("%w: sidecar answered %s", ErrUnavailable, resp.Status)
	}
	h := resp.Header
	if len(h.Values(sidecar.HeaderSubject)) != 1 || len(h.Values(sidecar.HeaderExpiresAt)) != 1 {
		// Not the sidecar's /verify: a 200 that vouches for no one must
		// never be taken for a verdict.
		return nil, fmt.Errorf("%w: 200 without %s and %s: is the address a tokenwarden sidecar?",
			ErrUnavailable, sidecar.HeaderSubject, sidecar.HeaderExpiresAt)
	}
	exp, err := strconv.ParseInt(h.Get(sidecar.HeaderExpiresAt), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: bad %s %q", ErrUnavailable, sidecar.HeaderExpiresAt, h.Get(sidecar.HeaderExpiresAt))
	}
	id := &Identity{
		Subject:   h.Get(sidecar.HeaderSubject),
		ClientID:  h.Get(sidecar.HeaderClientID),
		Scopes:    strings.Fields(h.Get(sidecar.HeaderScope)),
		TokenID:   h.Get(sidecar.HeaderTokenID),
		ExpiresAt: time.Unix(exp, 0),
	}
	for _, s := range required {
		if !id.HasScope(s) {
			// The sidecar said yes without checking the scope (an old
			// sidecar ignoring ?scope=?): refuse rather than trust it.
			return nil, fmt.Errorf("%w: sidecar accepted a token without required scope %q", ErrUnavailable, s)
		}
	}
	return id, nil
}

// BearerToken extracts the RFC 6750 bearer token from the values of a
// request's Authorization headers, by the sidecar's rules: no header (or
// another scheme) is ErrNoToken; several headers or a malformed Bearer
// value is an *Error with code invalid_request.
func BearerToken(authorization []string) (string, error) {
	if len(authorization) == 0 {
		return "", ErrNoToken
	}
	if len(authorization) > 1 {
		return "", &Error{Status: http.StatusUnauthorized, Code: CodeInvalidRequest, Description: "more than one Authorization header"}
	}
	// HTTP trims a field value's surrounding whitespace (RFC 9110 §5.5),
	// so "Bearer " reaches the sidecar as "Bearer": no token.
	scheme, rest, ok := strings.Cut(strings.Trim(authorization[0], " \t"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", ErrNoToken
	}
	rest = strings.TrimSpace(rest)
	if rest == "" || strings.ContainsAny(rest, " \t") {
		return "", &Error{Status: http.StatusUnauthorized, Code: CodeInvalidRequest, Description: "malformed bearer token"}
	}
	return rest, nil
}

// checkTokenSyntax refuses, without asking anyone, a token that cannot be
// sent in an HTTP header (control characters, spaces, non-ASCII): no
// token the issuer signs looks like that. Both Client and InProcess apply
// it, so their answers agree.
func checkTokenSyntax(token string) error {
	for i := 0; i < len(token); i++ {
		if b := token[i]; b <= ' ' || b >= 0x7f {
			return &Error{Status: http.StatusUnauthorized, Code: CodeInvalidToken, Description: "malformed token"}
		}
	}
	return nil
}

var _ Verifier = (*Client)(nil)

// ErrUnavailable is wrapped by every error that is not a verdict on the
// token: the sidecar is unreachable, timed out, answered 5xx or something
// that is not a tokenwarden answer, or the client is misconfigured.
// Callers must fail closed on it (the middleware answers 503).
var ErrUnavailable = errors.New("tokenwarden: sidecar unavailable")
