package issuer

import (
	"context"
	"errors"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/issuer/directory"
	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// tokenResponse is the RFC 6749 §5.1 success body.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	Scope        string `json:"scope"`
	RefreshToken string `json:"refresh_token,omitempty"`
}

// handleToken is POST /oauth2/token. It only parses and dispatches; the
// grants below decide, and every refusal is an *oauthError.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	form, err := s.readForm(w, r)
	grant := "unknown"
	var resp *tokenResponse
	if err == nil {
		grant = form.Get("grant_type")
		resp, err = s.grant(r.Context(), r, form)
	}
	if err != nil {
		oe := asOAuthError(err)
		if oe.Code == "server_error" || oe.Code == "temporarily_unavailable" {
			s.log.Error("token request failed", "grant", grant, "err", err)
		}
		label := grant
		if !slices.Contains([]string{directory.GrantPassword, directory.GrantClientCredentials, directory.GrantRefreshToken}, label) {
			label = "unknown"
		}
		s.metrics.tokenErrors.WithLabelValues(label, oe.Code).Inc()
		writeOAuthError(w, oe)
		return
	}
	s.metrics.tokensIssued.WithLabelValues(grant).Inc()
	w.Header().Set("Pragma", "no-cache")
	writeJSON(w, http.StatusOK, resp)
}

// readForm reads an application/x-www-form-urlencoded body of at most
// MaxBodyBytes and rejects repeated parameters (RFC 6749 §3.2).
func (s *Server) readForm(w http.ResponseWriter, r *http.Request) (url.Values, error) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return nil, &oauthError{Code: "invalid_request", Description: "use POST", status: http.StatusMethodNotAllowed}
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, errInvalidRequest("content type must be application/x-www-form-urlencoded")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, &oauthError{Code: "invalid_request", Description: "request body too large", status: http.StatusRequestEntityTooLarge}
		}
		return nil, errInvalidRequest("cannot read request body")
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, errInvalidRequest("malformed form body")
	}
	for k, v := range form {
		if len(v) > 1 {
			return nil, errInvalidRequest("parameter " + strconvQuote(k) + " repeated")
		}
	}
	return form, nil
}

func strconvQuote(s string) string {
	if len(s) > 40 {
		s = s[:40]
	}
	return `"` + strings.Map(func(r rune) rune {
		if r < 0x20 || r == '"' || r > 0x7e {
			return '?'
		}
		return r
	}, s) + `"`
}

func (s *Server) grant(ctx context.Context, r *http.Request, form url.Values) (*tokenResponse, error) {
	grant := form.Get("grant_type")
	if grant == "" {
		return nil, errInvalidRequest("grant_type missing")
	}
	if !slices.Contains([]string{directory.GrantPassword, directory.GrantClientCredentials, directory.GrantRefreshToken}, grant) {
		return nil, errUnsupportedGrant("grant type not supported")
	}
	ip := clientIP(r)
	client, err := s.authenticateClient(r, form, ip)
	if err != nil {
		return nil, err
	}
	if !client.AllowsGrant(grant) {
		return nil, errUnauthorizedClient("client may not use grant " + grant)
	}
	switch grant {
	case directory.GrantPassword:
		return s.passwordGrant(ctx, client, form, ip)
	case directory.GrantClientCredentials:
		return s.clientCredentialsGrant(client, form)
	default:
		return s.refreshGrant(ctx, client, form)
	}
}

// authenticateClient accepts HTTP Basic (RFC 6749 §2.3.1, with the
// form-urlencoding of id and secret) or client_id/client_secret in the
// body, never both.
func (s *Server) authenticateClient(r *http.Request, form url.Values, ip string) (*directory.Client, error) {
	id, secret, basic := r.BasicAuth()
	if basic {
		if form.Has("client_secret") {
			return nil, errInvalidRequest("use one client authentication method, not two")
		}
		var err1, err2 error
		id, err1 = url.QueryUnescape(id)
		secret, err2 = url.QueryUnescape(secret)
		if err1 != nil || err2 != nil {
			return nil, errInvalidClient("malformed HTTP Basic credentials")
		}
		if formID := form.Get("client_id"); formID != "" && formID != id {
			return nil, errInvalidRequest("client_id does not match the authenticated client")
		}
	} else {
		id, secret = form.Get("client_id"), form.Get("client_secret")
		if id == "" || secret == "" {
			return nil, errInvalidClient("client authentication required")
		}
	}
	// Like a password login, the attempt is taken from the IP's bucket
	// before the secret is hashed and given back if it was right: so a
	// concurrent flood of wrong credentials gets no more argon2id checks
	// than the bucket holds.
	releaseIP, ok, wait := s.ipLimiter.attempt(ip, s.now())
	if !ok {
		s.metrics.rateLimited.WithLabelValues("ip").Inc()
		return nil, errRateLimited(wait)
	}
	c, err := s.directory().AuthenticateClient(id, secret)
	if err != nil {
		if errors.Is(err, directory.ErrInvalidCredentials) {
			s.log.Info("client authentication failed", "client_id", logSafe(id), "ip", ip)
			return nil, errInvalidClient("client authentication failed")
		}
		releaseIP()
		return nil, err
	}
	releaseIP()
	return c, nil
}

func (s *Server) passwordGrant(ctx context.Context, c *directory.Client, form url.Values, ip string) (*tokenResponse, error) {
	username, password := form.Get("username"), form.Get("password")
	if username == "" || password == "" {
		return nil, errInvalidRequest("username and password required")
	}
	// Refuse before hashing if state is unavailable: a login that cannot be
	// stored must not cost argon2 work or count as a failure.
	if s.needsRefresh(c) {
		if err := s.readyWithin(ctx); err != nil {
			return nil, errUnavailable(err.Error())
		}
	}
	// Each attempt takes a token from the user's and the IP's bucket before
	// the password is checked and gets it back only if it was right: so
	// concurrent guesses are counted as they start, not as they finish.
	now := s.now()
	releaseUser, ok, wait := s.userLimiter.attempt(username, now)
	if !ok {
		s.metrics.rateLimited.WithLabelValues("user").Inc()
		return nil, errRateLimited(wait)
	}
	releaseIP, ok, wait := s.ipLimiter.attempt(ip, now)
	if !ok {
		releaseUser()
		s.metrics.rateLimited.WithLabelValues("ip").Inc()
		return nil, errRateLimited(wait)
	}
	u, err := s.directory().AuthenticateUser(username, password)
	if err != nil {
		if errors.Is(err, directory.ErrInvalidCredentials) {
			s.log.Info("login failed", "username", logSafe(username), "client_id", c.ID, "ip", ip)
			return nil, errInvalidGrant("invalid username or password")
		}
		releaseUser()
		releaseIP()
		return nil, err
	}
	releaseUser()
	releaseIP()
	scope, err := grantScope(form.Get("scope"), c.Scopes, u.Scopes)
	if err != nil {
		return nil, err
	}
	sid, err := randomID()
	if err != nil {
		return nil, err
	}
	return s.issue(ctx, c, u.Username, sid, scope, true)
}

func (s *Server) clientCredentialsGrant(c *directory.Client, form url.Values) (*tokenResponse, error) {
	scope, err := grantScope(form.Get("scope"), c.Scopes, nil)
	if err != nil {
		return nil, err
	}
	return s.issue(context.Background(), c, c.ID, "", scope, false)
}

func (s *Server) refreshGrant(ctx context.Context, c *directory.Client, form url.Values) (*tokenResponse, error) {
	token := form.Get("refresh_token")
	if token == "" {
		return nil, errInvalidRequest("refresh_token missing")
	}
	fid, ok := parseRefreshToken(token)
	if !ok {
		return nil, errInvalidGrant("invalid refresh token")
	}
	if err := s.readyWithin(ctx); err != nil {
		return nil, errUnavailable(err.Error())
	}
	f, rev, err := s.families.get(ctx, fid)
	if errors.Is(err, errFamilyNotFound) {
		return nil, errInvalidGrant("invalid refresh token")
	}
	if err != nil {
		s.log.Warn("refresh failed: refresh token store unavailable", "client_id", c.ID, "err", err)
		return nil, errUnavailable("refresh token store unavailable")
	}
	if f.ClientID != c.ID {
		s.log.Warn("refresh token presented by another client", "family", f.ID, "client_id", c.ID)
		return nil, errInvalidGrant("invalid refresh token")
	}
	if f.Revoked {
		return nil, errInvalidGrant("refresh token revoked")
	}
	revoked, reason := s.familyRevoked(f)
	if !revoked {
		// This replica's copy of the deny records may be behind another
		// replica's revocation: ask the bucket (see coversStored).
		if revoked, reason, err = s.denied.coversStored(ctx, f); err != nil {
			s.log.Warn("refresh failed: deny records unavailable", "client_id", c.ID, "err", err)
			return nil, errUnavailable("refresh token store unavailable")
		}
	}
	if revoked {
		if _, err := s.families.revoke(ctx, f.ID, reason); err != nil {
			s.log.Warn("mark revoked refresh token family", "family", f.ID, "err", err)
		}
		return nil, errInvalidGrant("refresh token revoked: " + reason)
	}
	h := hashToken(token)
	if !hashEqual(h, f.Current) {
		for _, used := range f.Used {
			if hashEqual(h, used) {
				return nil, s.reuseDetected(ctx, f)
			}
		}
		return nil, errInvalidGrant("invalid refresh token")
	}
	now := s.now()
	if !now.Before(f.ExpiresAt) {
		return nil, errInvalidGrant("refresh token expired")
	}
	// The user may have been disabled or removed since login, and the client
	// or user may have lost scopes: what is granted now is what the original
	// grant, the request and today's directory all allow.
	u, ok := s.directory().User(f.Subject)
	if !ok || u.Disabled {
		return nil, errInvalidGrant("user no longer exists or is disabled")
	}
	original := strings.Fields(f.Scope)
	requested := form.Get("scope")
	if requested != "" {
		for _, sc := range strings.Fields(requested) {
			if !slices.Contains(original, sc) {
				return nil, errInvalidScope("a refresh may not widen the scope of the original grant")
			}
		}
	} else {
		requested = f.Scope
	}
	scope, err := grantScope(requested, intersect(c.Scopes, original), u.Scopes)
	if err != nil {
		return nil, err
	}
	newToken, newHash, err := newRefreshToken(f.ID)
	if err != nil {
		return nil, err
	}
	f.Used = append(f.Used, f.Current)
	if len(f.Used) > maxUsedHashes {
		f.Used = f.Used[len(f.Used)-maxUsedHashes:]
	}
	f.Current, f.ExpiresAt = newHash, now.Add(s.refreshTTL(c))
	switch err := s.families.update(ctx, f, rev); {
	case errors.Is(err, errFamilyConflict):
		// Another request rotated this family between our read and write
		// with the same token: the token was presented twice. That is reuse,
		// whether it came a second or a millisecond later (RFC 9700 §4.14.2).
		return nil, s.reuseDetected(ctx, f)
	case err != nil:
		s.log.Warn("refresh failed: refresh token store unavailable", "client_id", c.ID, "family", f.ID, "err", err)
		return nil, errUnavailable("refresh token store unavailable")
	}
	resp, err := s.accessToken(c, f.Subject, f.SessionID, scope)
	if err != nil {
		return nil, err
	}
	resp.RefreshToken = newToken
	return resp, nil
}

// reuseDetected handles an already-used refresh token: someone holds a copy
// of a token that was rotated, so the whole family is destroyed.
func (s *Server) reuseDetected(ctx context.Context, f *family) error {
	s.metrics.refreshReuse.Inc()
	s.log.Warn("refresh token reuse detected: family revoked", "family", f.ID, "client_id", f.ClientID, "sub", logSafe(f.Subject), "sid", f.SessionID)
	if _, err := s.families.revoke(ctx, f.ID, "refresh token reuse"); err != nil {
		s.log.Error("revoke refresh token family after reuse", "family", f.ID, "err", err)
		return errUnavailable("refresh token store unavailable")
	}
	// The access tokens of the session may be in the thief's hands too.
	if _, _, err := s.revokeEvent(ctx, revocation.KindSID, f.SessionID, time.Time{}, "refresh token reuse", "issuer"); err != nil {
		s.log.Error("revoke session after refresh token reuse", "sid", f.SessionID, "err", err)
		return errUnavailable("session revocation not stored")
	}
	return errInvalidGrant("refresh token already used; the session has been revoked")
}

// issue makes an access token and, for user logins by clients allowed to
// refresh, a new refresh-token family.
func (s *Server) issue(ctx context.Context, c *directory.Client, sub, sid, scope string, user bool) (*tokenResponse, error) {
	var refresh string
	if user && s.needsRefresh(c) {
		fid, err := randomID()
		if err != nil {
			return nil, err
		}
		tok, hash, err := newRefreshToken(fid)
		if err != nil {
			return nil, err
		}
		now := s.now()
		f := &family{ID: fid, ClientID: c.ID, Subject: sub, SessionID: sid, Scope: scope, Current: hash,
			CreatedAt: now, ExpiresAt: now.Add(s.refreshTTL(c))}
		if err := s.families.create(ctx, f); err != nil {
			s.log.Warn("token request failed: refresh token store unavailable", "client_id", c.ID, "err", err)
			return nil, errUnavailable("refresh token store unavailable")
		}
		refresh = tok
	}
	resp, err := s.accessToken(c, sub, sid, scope)
	if err != nil {
		return nil, err
	}
	resp.RefreshToken = refresh
	return resp, nil
}

func (s *Server) needsRefresh(c *directory.Client) bool {
	return c.AllowsGrant(directory.GrantRefreshToken)
}

func (s *Server) accessToken(c *directory.Client, sub, sid, scope string) (*tokenResponse, error) {
	st := s.keys.current()
	if st == nil {
		return nil, errUnavailable("signing keys not loaded yet")
	}
	if s.revocations.Has(revocation.KindKID, st.ring.Active().ID) {
		// The key was revoked and this replica's ring does not show it:
		// its watch lags, or the revocation stopped after its event.
		// Read the ring, finish the revocation if it must, and sign with
		// the successor; never with the dead key.
		ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
		s.keys.refresh(ctx)
		if err := s.reconcileKeys(ctx); err != nil {
			s.log.Error("finish key revocation", "err", err)
		}
		cancel()
		if st = s.keys.current(); s.revocations.Has(revocation.KindKID, st.ring.Active().ID) {
			return nil, errUnavailable("the signing key was revoked and its successor is not loaded yet")
		}
	}
	jti, err := randomID()
	if err != nil {
		return nil, err
	}
	now := s.now()
	ttl := s.accessTTL(c)
	aud := jwks.Audience(c.Audience)
	if len(aud) == 0 {
		aud = jwks.Audience{s.cfg.Issuer}
	}
	claims := &jwks.Claims{
		Issuer: s.cfg.Issuer, Subject: sub, Audience: aud, Expiry: now.Add(ttl).Unix(), IssuedAt: now.Unix(),
		ID: jti, ClientID: c.ID, Scope: scope, SessionID: sid,
	}
	tok, err := st.ring.Active().Sign(claims)
	if err != nil {
		return nil, err
	}
	return &tokenResponse{AccessToken: tok, TokenType: "Bearer", ExpiresIn: int64(ttl / time.Second), Scope: scope}, nil
}

func (s *Server) accessTTL(c *directory.Client) time.Duration {
	if c.AccessTokenTTL > 0 {
		return c.AccessTokenTTL
	}
	return s.cfg.AccessTokenTTL
}

func (s *Server) refreshTTL(c *directory.Client) time.Duration {
	if c.RefreshTokenTTL > 0 {
		return c.RefreshTokenTTL
	}
	return s.cfg.RefreshTokenTTL
}

// grantScope intersects the requested scope with what the client (and, for
// a user, the user) may have. An empty request means everything allowed.
// A request of which nothing is allowed is invalid_scope; a partly allowed
// request gets the allowed part, and the response's scope says which.
func grantScope(requested string, client, user []string) (string, error) {
	allowed := client
	if len(user) > 0 {
		allowed = intersect(client, user)
	}
	want := strings.Fields(requested)
	if len(want) == 0 {
		return strings.Join(allowed, " "), nil
	}
	var out []string
	for _, sc := range want {
		if slices.Contains(allowed, sc) && !slices.Contains(out, sc) {
			out = append(out, sc)
		}
	}
	if len(out) == 0 {
		return "", errInvalidScope("none of the requested scopes is allowed for this client")
	}
	return strings.Join(out, " "), nil
}

func intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// clientIP is the peer address. X-Forwarded-For is not trusted: a client
// could set it to dodge the per-IP limit.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// logSafe trims attacker-chosen strings before they are logged.
func logSafe(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}
