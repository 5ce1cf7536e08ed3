package issuer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"time"

	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// The issuer both publishes revocation events and follows the stream into a
// set of its own, like every sidecar: that set answers GET
// /admin/v1/revocations, refuses refresh tokens of revoked sessions, users
// and clients, and guards the admin API against revoked admin tokens.

// publishTimeout bounds how long a revocation waits for JetStream's ack.
const publishTimeout = 5 * time.Second

// revocationRequest is the body of POST /admin/v1/revocations.
type revocationRequest struct {
	Kind         revocation.Kind `json:"kind"`
	Value        string          `json:"value"`
	IssuedBefore *time.Time      `json:"issued_before,omitempty"`
	Reason       string          `json:"reason"`
}

// storedRevocation is the answer: the event as stored, with its stream
// sequence.
type storedRevocation struct {
	*revocation.Event
	Sequence uint64 `json:"sequence"`
}

// maxTokenTTL is the longest access-token lifetime any client has now; a
// revocation must outlive every token it can match.
func (s *Server) maxTokenTTL() time.Duration {
	return max(s.cfg.AccessTokenTTL, s.directory().MaxAccessTokenTTL())
}

// publish stores e on the revocation stream, waiting for JetStream's
// acknowledgement; only then is the revocation durable.
func (s *Server) publish(ctx context.Context, e *revocation.Event) (uint64, error) {
	if s.readyWithin(ctx) != nil || s.publisher == nil {
		return 0, errors.New("NATS is not available")
	}
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	// The deny record first: once the event is out, the refresh tokens it
	// covers must stay dead after the event has expired.
	if err := s.denied.add(ctx, e); err != nil {
		return 0, err
	}
	seq, err := s.publisher.Publish(ctx, e)
	if err != nil {
		return 0, err
	}
	// Apply it here at once, not only when the consumer delivers it back:
	// a refresh right after the 201 must already see it. Apply is
	// idempotent by event id, so the later delivery changes nothing.
	s.revocations.Apply(e)
	s.metrics.revocationsPublished.WithLabelValues(string(e.Kind)).Inc()
	s.log.Info("revocation stored", "id", e.ID, "kind", e.Kind, "sequence", seq, "expires_at", e.Expires().UTC())
	return seq, nil
}

// revokeEvent builds an event of kind for value that outlives every token
// it can match, and publishes it.
func (s *Server) revokeEvent(ctx context.Context, kind revocation.Kind, value string, tokenExp time.Time, reason, actor string) (*revocation.Event, uint64, error) {
	now := s.now()
	exp := revocation.ExpiryFor(kind, tokenExp, now, s.maxTokenTTL(), s.cfg.Leeway)
	e, err := revocation.NewEvent(kind, value, time.Time{}, exp, reason, now)
	if err != nil {
		return nil, 0, err
	}
	e.Actor = actor
	seq, err := s.publish(ctx, e)
	return e, seq, err
}

func (s *Server) handleCreateRevocation(w http.ResponseWriter, r *http.Request) {
	req, oe := decodeRevocationRequest(w, r)
	if oe != nil {
		s.audit(r, "revocation.create", "", "", "refused: "+oe.Description)
		writeOAuthError(w, oe)
		return
	}
	if req.Kind == revocation.KindKID {
		// A key revocation is more than an event: the ring must stop
		// signing with the key and unpublish it.
		s.revokeKeyHTTP(w, r, req.Value, req.Reason, false, true)
		return
	}
	target := string(req.Kind) + " " + req.Value
	now := s.now()
	issuedBefore := time.Time{}
	if req.IssuedBefore != nil {
		issuedBefore = *req.IssuedBefore
		// A revocation of tokens not issued yet would lock users out until
		// then; the leeway allows for clock skew with the caller.
		if issuedBefore.After(now.Add(s.cfg.Leeway)) {
			s.audit(r, "revocation.create", target, req.Reason, "refused: issued_before is in the future")
			writeOAuthError(w, errInvalidRequest("issued_before is in the future"))
			return
		}
	}
	// issued_before bounds sub, client and all; a jti or sid event ignores
	// it and must outlive every token issued until now.
	horizon := now
	if !issuedBefore.IsZero() && req.Kind != revocation.KindJTI && req.Kind != revocation.KindSID {
		horizon = issuedBefore
	}
	exp := revocation.ExpiryFor(req.Kind, time.Time{}, horizon, s.maxTokenTTL(), s.cfg.Leeway)
	e, err := revocation.NewEvent(req.Kind, req.Value, issuedBefore, exp, req.Reason, now)
	if err == nil {
		e.Actor = actor(r)
		err = e.Validate()
	}
	switch {
	case errors.Is(err, revocation.ErrExpired):
		s.audit(r, "revocation.create", target, req.Reason, "refused: nothing to revoke")
		writeOAuthError(w, errInvalidRequest("every token issued before issued_before has already expired: nothing to revoke"))
		return
	case err != nil:
		s.audit(r, "revocation.create", target, req.Reason, "refused: "+err.Error())
		writeOAuthError(w, errInvalidRequest(err.Error()))
		return
	}
	seq, err := s.publish(r.Context(), e)
	if err != nil {
		s.log.Error("revocation not stored", "kind", e.Kind, "err", err)
		s.audit(r, "revocation.create", target, req.Reason, "failed: "+err.Error())
		writeOAuthError(w, errUnavailable("revocation not stored: "+err.Error()))
		return
	}
	s.audit(r, "revocation.create", target, req.Reason, "ok: event "+e.ID)
	writeJSON(w, http.StatusCreated, storedRevocation{Event: e, Sequence: seq})
}

func decodeRevocationRequest(w http.ResponseWriter, r *http.Request) (*revocationRequest, *oauthError) {
	var req revocationRequest
	if oe := decodeJSON(w, r, &req); oe != nil {
		return nil, oe
	}
	if !req.Kind.Valid() {
		return nil, errInvalidRequest(`kind must be one of "jti", "sid", "sub", "client", "all", "kid"`)
	}
	return &req, nil
}

// decodeJSON reads an admin request's body into v, strictly: JSON only, at
// most 16 KiB, no unknown fields, nothing after the object. A typo in a
// field name of a revocation must not silently revoke something else.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) *oauthError {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return errInvalidRequest("content type must be application/json")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 16<<10))
	if err != nil {
		return errInvalidRequest("request body unreadable or larger than 16 KiB")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errInvalidRequest(fmt.Sprintf("malformed JSON: %v", err))
	}
	if dec.More() {
		return errInvalidRequest("trailing data after the JSON object")
	}
	return nil
}

func (s *Server) handleListRevocations(w http.ResponseWriter, _ *http.Request) {
	events := s.revocations.Events()
	if events == nil {
		events = []*revocation.Event{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"revocations": events, "count": len(events)})
}

// handleRevoke is RFC 7009 token revocation. The client authenticates as at
// the token endpoint and may revoke only its own tokens. A refresh token
// destroys its family and revokes its session (logout); an access token is
// revoked by jti. Unknown, invalid or foreign tokens get 200 as well, so
// the endpoint reveals nothing about tokens the caller does not own.
func (s *Server) handleRevoke(w http.ResponseWriter, r *http.Request) {
	if err := s.revokeRequest(w, r); err != nil {
		oe := asOAuthError(err)
		if oe.Code == "server_error" || oe.Code == "temporarily_unavailable" {
			s.log.Error("token revocation failed", "err", err)
		}
		writeOAuthError(w, oe)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
}

func (s *Server) revokeRequest(w http.ResponseWriter, r *http.Request) error {
	form, err := s.readForm(w, r)
	if err != nil {
		return err
	}
	token := form.Get("token")
	if token == "" {
		return errInvalidRequest("token missing")
	}
	c, err := s.authenticateClient(r, form, clientIP(r))
	if err != nil {
		return err
	}
	return s.revoke(r.Context(), c.ID, token)
}

func (s *Server) revoke(ctx context.Context, clientID, token string) error {
	if fid, ok := parseRefreshToken(token); ok {
		return s.logout(ctx, clientID, fid, token)
	}
	c, err := s.verifyOwn(ctx, s.anyAudience, token)
	if err != nil {
		// Not a token of ours that is still valid: nothing to revoke, and
		// RFC 7009 §2.2 answers 200 for it all the same.
		return nil //nolint:nilerr // see above
	}
	if c.ClientID != clientID {
		s.log.Warn("client tried to revoke another client's access token", "client_id", clientID, "jti", c.ID)
		return nil
	}
	if s.revocations.Has(revocation.KindJTI, c.ID) {
		return nil // already revoked: publishing again would only load every sidecar
	}
	if _, _, err := s.revokeEvent(ctx, revocation.KindJTI, c.ID, time.Unix(c.Expiry, 0), "revoked by client "+clientID, "client:"+clientID); err != nil {
		return errUnavailable("revocation not stored")
	}
	return nil
}

// logout destroys a refresh-token family and revokes its session, so the
// access tokens of that login stop working too.
func (s *Server) logout(ctx context.Context, clientID, fid, token string) error {
	if err := s.readyWithin(ctx); err != nil {
		return errUnavailable(err.Error())
	}
	f, _, err := s.families.get(ctx, fid)
	if errors.Is(err, errFamilyNotFound) {
		return nil
	}
	if err != nil {
		s.log.Warn("logout failed: refresh token store unavailable", "client_id", clientID, "err", err)
		return errUnavailable("refresh token store unavailable")
	}
	if f.ClientID != clientID || !s.ownsToken(f, token) {
		return nil
	}
	if f.Revoked && s.revocations.Has(revocation.KindSID, f.SessionID) {
		return nil // logged out already
	}
	if _, err := s.families.revoke(ctx, f.ID, "logout"); err != nil {
		s.log.Warn("logout failed: refresh token store unavailable", "client_id", clientID, "family", f.ID, "err", err)
		return errUnavailable("refresh token store unavailable")
	}
	// Published even if the family was already revoked: a retry after a
	// failed publish must still reach the sidecars.
	if _, _, err := s.revokeEvent(ctx, revocation.KindSID, f.SessionID, time.Time{}, "logout", "client:"+clientID); err != nil {
		return errUnavailable("session revocation not stored")
	}
	s.log.Info("logout", "client_id", clientID, "sid", f.SessionID)
	return nil
}

// ownsToken reports whether token is the family's current or an earlier
// refresh token: presenting one proves the caller held that session.
func (s *Server) ownsToken(f *family, token string) bool {
	h := hashToken(token)
	if hashEqual(h, f.Current) {
		return true
	}
	for _, u := range f.Used {
		if hashEqual(h, u) {
			return true
		}
	}
	return false
}

// familyRevoked applies the revocation set and the deny records to a
// refresh-token family as if it were a token issued at login: a revoked
// session, user or client, or a revoke-all after the login, ends the
// family too.
func (s *Server) familyRevoked(f *family) (bool, string) {
	if revoked, reason := s.revocations.Check(&jwks.Claims{Subject: f.Subject, ClientID: f.ClientID, SessionID: f.SessionID, IssuedAt: f.CreatedAt.Unix()}); revoked {
		return true, reason
	}
	return s.denied.covers(f)
}
