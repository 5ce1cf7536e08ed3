package issuer

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// AdminScope is the scope an access token needs for the admin API.
const AdminScope = "tokenwarden:admin"

// verifyOwn verifies a token of this issuer with v. A token signed by a
// key this replica has not loaded yet (another replica rotated, and this
// one's watch is behind) makes it read the ring again, once: without that,
// /oauth2/revoke would answer 200 and revoke nothing.
func (s *Server) verifyOwn(ctx context.Context, v *jwks.Verifier, tok string) (*jwks.Claims, error) {
	c, err := v.Verify(tok)
	var ve *jwks.VerifyError
	if errors.As(err, &ve) && errors.Is(err, jwks.ErrUnknownKey) {
		// A revoked key is no longer in the ring: say so, and do not
		// read the ring again for a key that will never come back.
		if s.revocations.Has(revocation.KindKID, ve.KeyID) {
			return nil, &jwks.VerifyError{Reason: revocation.ReasonKey, Err: ve}
		}
		// Verify again even when this call did not read the ring itself:
		// a concurrent request may just have installed the newer one.
		s.keys.refresh(ctx)
		c, err = v.Verify(tok)
	}
	return c, err
}

// adminClaimsKey is the request-context key of the admin's verified claims.
type adminClaimsKey struct{}

// actor is who makes an admin request: the client id of the admin token,
// which every stored admin action and audit line records.
func actor(r *http.Request) string {
	if c, ok := r.Context().Value(adminClaimsKey{}).(*jwks.Claims); ok {
		return c.ClientID
	}
	return ""
}

// audit writes the one structured line every admin action leaves, for
// "who did this?": the action, its target, the admin's reason, the actor
// and how it ended.
func (s *Server) audit(r *http.Request, action, target, reason, result string) {
	s.log.Info("audit", "action", action, "actor", actor(r), "target", logSafe(target),
		"reason", strings.ToValidUTF8(reason, "?"), "result", result)
}

// admin guards h: a Bearer access token issued by this issuer for its own
// audience, verified like any sidecar would, with scope tokenwarden:admin.
// No token or a bad one is 401; a good token without the scope is 403.
func (s *Server) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		authz := r.Header.Get("Authorization")
		scheme, tok, ok := strings.Cut(authz, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tokenwarden"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_token", "error_description": "bearer token required"})
			return
		}
		claims, err := s.verifyOwn(r.Context(), s.verifier, tok)
		if err != nil {
			desc := "invalid token"
			var ve *jwks.VerifyError
			if errors.As(err, &ve) {
				desc = ve.Reason
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="tokenwarden", error="invalid_token", error_description="`+desc+`"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_token", "error_description": desc})
			return
		}
		if revoked, reason := s.revocations.Check(claims); revoked {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tokenwarden", error="invalid_token", error_description="`+reason+`"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_token", "error_description": reason})
			return
		}
		if !claims.HasScope(AdminScope) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tokenwarden", error="insufficient_scope", scope="`+AdminScope+`"`)
			writeJSON(w, http.StatusForbidden, map[string]string{"error": "insufficient_scope", "error_description": "scope " + AdminScope + " required"})
			return
		}
		s.log.Debug("admin request", "method", r.Method, "path", r.URL.Path, "client_id", claims.ClientID, "sub", logSafe(claims.Subject))
		h(w, r.WithContext(context.WithValue(r.Context(), adminClaimsKey{}, claims)))
	}
}

// KeyInfo describes one key of the ring in the admin API.
type KeyInfo struct {
	ID          string     `json:"kid"`
	Alg         string     `json:"alg"`
	State       string     `json:"state"`
	CreatedAt   time.Time  `json:"created_at"`
	SignsFrom   *time.Time `json:"signs_from,omitempty"` // for next: earliest activation
	ActivatedAt *time.Time `json:"activated_at,omitempty"`
	// ActivatedBy is the admin whose rotation or key revocation made the
	// key sign; absent when the schedule did.
	ActivatedBy string     `json:"activated_by,omitempty"`
	RetiredAt   *time.Time `json:"retired_at,omitempty"`
	RemoveAt    *time.Time `json:"remove_at,omitempty"`
	// RevokedAt, RevokedBy and RevokeReason are set for revoked keys.
	RevokedAt    *time.Time `json:"revoked_at,omitempty"`
	RevokedBy    string     `json:"revoked_by,omitempty"`
	RevokeReason string     `json:"revoke_reason,omitempty"`
}

// KeyRingInfo is the body of GET /admin/v1/keys.
type KeyRingInfo struct {
	Sequence       uint64    `json:"sequence"`
	NextTransition time.Time `json:"next_transition"`
	Keys           []KeyInfo `json:"keys"`
}

func (s *Server) ringInfo(r *jwks.Ring) KeyRingInfo {
	p := s.policy()
	tp := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		return &t
	}
	info := KeyRingInfo{Sequence: r.Sequence, NextTransition: r.NextTransition(p).UTC()}
	for _, k := range r.Keys {
		ki := KeyInfo{ID: k.ID, Alg: string(k.Alg), State: string(k.State), CreatedAt: k.CreatedAt,
			ActivatedAt: tp(k.ActivatedAt), ActivatedBy: k.ActivatedBy, RetiredAt: tp(k.RetiredAt), RemoveAt: tp(k.RemoveAt),
			RevokedAt: tp(k.RevokedAt), RevokedBy: k.RevokedBy, RevokeReason: k.RevokeReason}
		if k.State == jwks.StateNext {
			ki.SignsFrom = tp(r.ReadyAt(p).UTC())
		}
		info.Keys = append(info.Keys, ki)
	}
	return info
}

func (s *Server) handleListKeys(w http.ResponseWriter, _ *http.Request) {
	st := s.keys.current()
	if st == nil {
		writeOAuthError(w, errUnavailable("signing keys not loaded yet"))
		return
	}
	writeJSON(w, http.StatusOK, s.ringInfo(st.ring))
}

func (s *Server) handleRotate(w http.ResponseWriter, r *http.Request) {
	if err := s.ready(); err != nil {
		writeOAuthError(w, errUnavailable(err.Error()))
		return
	}
	ring, err := s.keys.Rotate(r.Context(), actor(r))
	switch {
	case errors.Is(err, jwks.ErrNextNotReady):
		s.audit(r, "keys.rotate", "", "", "refused: "+err.Error())
		writeJSON(w, http.StatusConflict, map[string]string{"error": "next_key_not_ready", "error_description": err.Error()})
	case err != nil:
		s.log.Error("rotate keys", "err", err)
		s.audit(r, "keys.rotate", "", "", "failed: "+err.Error())
		writeOAuthError(w, errUnavailable("rotation failed: "+err.Error()))
	default:
		s.audit(r, "keys.rotate", ring.Active().ID, "", "ok")
		writeJSON(w, http.StatusOK, s.ringInfo(ring))
	}
}
