package issuer

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// Revoking a signing key is the answer to a leaked private key. A forger
// holding it chooses every claim, iat and jti included, so no other kind
// of revocation names all of its tokens; the kid does. The order below is
// what makes it safe to retry and to race:
//
//  1. The kid event goes to the stream first, under an ID derived from the
//     kid, so two replicas revoking the same key at once store one event
//     (JetStream's duplicate window), and a crash before step 2 leaves the
//     key refused everywhere, never the reverse.
//  2. The ring is changed by compare-and-set: the key becomes revoked (its
//     private half destroyed), the next key signs at once if the active
//     one was revoked, and the bundle without the key is published.
//
// If step 2 never happens (the replica dies, NATS loses its leader, the
// request is cancelled), every replica finishes it: reconcileKeys runs on
// each maintenance tick and before signing with a key the set names, and
// revokes in the ring every key that a kid event names. Until then no
// replica signs with the key (accessToken). The event is kept for
// keyEventRetention, far longer than that can take, so the ring, which
// never publishes a revoked key again, always catches up before the
// event is gone.

// Errors of revokeKey, mapped to HTTP in revokeKeyHTTP.
var (
	errOnlySigningKey = errors.New("only signing key")
)

// keyRevocationPolicy is the ring's policy for revoking a key: the revoked
// record lives as long as its event, so that a replica finishing the
// revocation from the event (reconcileKeys) and the one that started it
// apply the same ring change.
func (s *Server) keyRevocationPolicy() jwks.Policy {
	p := s.policy()
	p.RetainRetired = max(p.RetainRetired, keyEventRetention)
	return p
}

// keyEventRetention is how long a kid event is kept at least: longer than
// any token the key signed can be valid (the ring's RetainRetired), and a
// day, so that reconcileKeys has ample time to finish a revocation whose
// ring update failed. Kid events are rare; keeping them costs nothing.
const keyEventRetention = 24 * time.Hour

// maxKIDLen bounds a kid in the admin API. The issuer's kids are 22
// characters (a truncated SHA-256, base64url).
const maxKIDLen = 64

// validKID reports whether kid could be a kid of this issuer: base64url,
// not empty, not longer than maxKIDLen.
func validKID(kid string) bool {
	if kid == "" || len(kid) > maxKIDLen {
		return false
	}
	for i := 0; i < len(kid); i++ {
		if !isBase64URLByte(kid[i]) {
			return false
		}
	}
	return true
}

func isBase64URLByte(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// keyEventID is the event ID of kid's revocation: the same on every
// replica, so concurrent revocations of one key are one stored event.
func keyEventID(kid string) string {
	sum := sha256.Sum256([]byte("tokenwarden kid revocation\x00" + kid))
	return base64.RawURLEncoding.EncodeToString(sum[:16])
}

// KeyRevocationResult is the body of a key revocation's answer.
type KeyRevocationResult struct {
	// Revocation is the stored kid event (its id and sequence).
	Revocation storedRevocation `json:"revocation"`
	// AlreadyRevoked: the key had been revoked before (answer 200).
	AlreadyRevoked bool `json:"already_revoked"`
	// Key is the revoked key's record.
	Key KeyInfo `json:"key"`
	// ActivatedKID is the key that signs from now on, when the revoked key
	// was the active one.
	ActivatedKID string `json:"activated_kid,omitempty"`
	// PropagationDelayCutShort is how much of the activated key's
	// propagation delay was skipped; Warning says what that means.
	PropagationDelayCutShort string `json:"propagation_delay_cut_short,omitempty"`
	Warning                  string `json:"warning,omitempty"`
}

// revokeKey revokes the signing key kid: see the comment at the top.
func (s *Server) revokeKey(ctx context.Context, kid, reason, actor string, force bool) (*KeyRevocationResult, error) {
	if err := s.readyWithin(ctx); err != nil {
		return nil, errUnavailable(err.Error())
	}
	cur, err := s.keys.read(ctx)
	if err != nil {
		return nil, errUnavailable("key ring unavailable: " + err.Error())
	}
	var target *jwks.Key
	for _, k := range cur.Keys {
		if k.ID == kid {
			target = k
		}
	}
	if target == nil {
		return nil, fmt.Errorf("%w: %s", jwks.ErrKeyNotFound, kid)
	}
	if target.State == jwks.StateActive && !force {
		// The next key takes over at once; when no bundle holding it has
		// been published, every sidecar would meet its tokens as an
		// unknown kid. That is the one case that needs --force.
		if ok, err := s.keys.nextPublished(ctx, cur); err != nil {
			return nil, errUnavailable("JWKS bundle unavailable: " + err.Error())
		} else if !ok {
			return nil, fmt.Errorf("%w: key %s is the only key the sidecars hold that can sign: its successor %s is not in the published bundle yet",
				errOnlySigningKey, kid, cur.Next().ID)
		}
	}

	now := s.now()
	p := s.keyRevocationPolicy()
	e, err := revocation.NewEvent(revocation.KindKID, kid, time.Time{}, now.Add(p.RetainRetired), reason, now)
	if err != nil {
		return nil, errInvalidRequest(err.Error())
	}
	e.ID, e.Actor = keyEventID(kid), actor
	if err := e.Validate(); err != nil {
		return nil, errInvalidRequest(err.Error())
	}
	res := &KeyRevocationResult{}
	if target.State == jwks.StateRevoked {
		// Revoked before. Its event may have been published under another
		// expiry; the stored one is what the set holds.
		if have, ok := s.keyEvent(kid); ok {
			res.AlreadyRevoked, res.Key = true, s.keyInfo(cur, target)
			res.Revocation = storedRevocation{Event: have}
			return res, nil
		}
		// The ring is ahead of this replica's set: another replica revoked
		// the key a moment ago and its event has not arrived here yet (or
		// the event has expired). Publishing ours below is a duplicate of
		// theirs within the stream's window (200), or stores the event
		// again (201), and the ring change finds the key revoked: either
		// way the answer names a stored event.
	}
	seq, dup, err := s.publishKeyEvent(ctx, e)
	if err != nil {
		return nil, errUnavailable("key revocation not stored: " + err.Error())
	}
	res.Revocation = storedRevocation{Event: e, Sequence: seq}
	if dup {
		if have, ok := s.keyEvent(kid); ok {
			res.Revocation.Event = have // the stored one: another replica's reason and actor
		}
	}

	// A request that stored the event or changed the ring revoked the key
	// (201); only one that did neither finds it already revoked (200). What
	// the ring change activated is reported by the request that made it.
	var rv *jwks.Revocation
	ring, err := s.keys.update(ctx, func(cur *jwks.Ring) (*jwks.Ring, error) {
		next, r, err := cur.Revoke(kid, s.now(), p, reason, actor)
		if errors.Is(err, jwks.ErrAlreadyRevoked) {
			rv, res.AlreadyRevoked = nil, dup
			return nil, nil // another replica got there first
		}
		rv, res.AlreadyRevoked = r, false
		return next, err
	})
	var warnings []string
	if errors.Is(err, errBundleNotPublished) {
		warnings = append(warnings, fmt.Sprintf("the JWKS bundle without key %s is not published yet (retried every maintenance tick); sidecars refuse the key from its revocation event already", kid))
		s.log.Warn("key revoked, bundle not published", "kid", kid, "err", err)
	} else if err != nil {
		// The event is stored: every sidecar refuses the key and this
		// replica signs with it no more. The ring catches up on a retry.
		return res, fmt.Errorf("key %s revoked in the stream but the key ring was not updated (retry the request): %w", kid, err)
	}
	for _, k := range ring.Keys {
		if k.ID == kid {
			res.Key = s.keyInfo(ring, k)
		}
	}
	if rv != nil && rv.Activated != nil {
		res.ActivatedKID = rv.Activated.ID
		if rv.CutShort > 0 {
			res.PropagationDelayCutShort = rv.CutShort.Round(time.Second).String()
			warnings = append(warnings, fmt.Sprintf("key %s signs now, %s before its propagation delay ended: a sidecar that has not received it yet fetches the bundle when it first meets one of its tokens", rv.Activated.ID, res.PropagationDelayCutShort))
			s.log.Warn("propagation delay cut short by a key revocation", "activated_kid", rv.Activated.ID, "cut_short", res.PropagationDelayCutShort)
		}
	}
	res.Warning = strings.Join(warnings, "; ")
	return res, nil
}

// publishKeyEvent stores e (a kid event with a deterministic ID) and
// reports whether JetStream already held it.
func (s *Server) publishKeyEvent(ctx context.Context, e *revocation.Event) (uint64, bool, error) {
	if s.readyWithin(ctx) != nil || s.publisher == nil {
		return 0, false, errors.New("NATS is not available")
	}
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	seq, dup, err := s.publisher.PublishOnce(ctx, e)
	if err != nil {
		return 0, false, err
	}
	if dup {
		// The stored event is another replica's (its reason, actor and
		// expiry): the consumer delivers that one; this copy is not stored.
		return seq, true, nil
	}
	s.revocations.Apply(e)
	{
		s.metrics.revocationsPublished.WithLabelValues(string(e.Kind)).Inc()
		s.log.Info("revocation stored", "id", e.ID, "kind", e.Kind, "sequence", seq, "expires_at", e.Expires().UTC())
	}
	return seq, dup, nil
}

func (s *Server) keyInfo(r *jwks.Ring, k *jwks.Key) KeyInfo {
	for _, ki := range s.ringInfo(r).Keys {
		if ki.ID == k.ID {
			return ki
		}
	}
	return KeyInfo{ID: k.ID}
}

type keyRevokeRequest struct {
	Reason string `json:"reason"`
	// Force allows revoking the only key the sidecars hold that can sign.
	Force bool `json:"force,omitempty"`
}

// handleRevokeKey is POST /admin/v1/keys/{kid}/revoke.
func (s *Server) handleRevokeKey(w http.ResponseWriter, r *http.Request) {
	kid := r.PathValue("kid")
	var req keyRevokeRequest
	if oe := decodeJSON(w, r, &req); oe != nil {
		s.writeKeyRevokeError(w, r, kid, "", oe)
		return
	}
	s.revokeKeyHTTP(w, r, kid, req.Reason, req.Force, false)
}

// revokeKeyHTTP answers a key revocation, from its own endpoint or from
// POST /admin/v1/revocations with kind "kid", which never forces and
// answers with the stored event alone, like every other kind (asEvent).
func (s *Server) revokeKeyHTTP(w http.ResponseWriter, r *http.Request, kid, reason string, force, asEvent bool) {
	switch {
	case !validKID(kid):
		s.writeKeyRevokeError(w, r, kid, reason, errInvalidRequest(fmt.Sprintf("malformed kid: want 1 to %d base64url characters", maxKIDLen)))
		return
	case reason == "":
		s.writeKeyRevokeError(w, r, kid, reason, errInvalidRequest("reason required: say why the key is revoked"))
		return
	}
	res, err := s.revokeKey(r.Context(), kid, reason, actor(r), force)
	if err != nil {
		s.writeKeyRevokeError(w, r, kid, reason, err)
		return
	}
	result, code := "ok: event "+res.Revocation.ID, http.StatusCreated
	if res.AlreadyRevoked {
		result, code = "ok: already revoked", http.StatusOK
	}
	if res.Warning != "" {
		result += "; " + res.Warning
	}
	s.audit(r, "keys.revoke", kid, reason, result)
	if asEvent {
		writeJSON(w, code, res.Revocation)
		return
	}
	writeJSON(w, code, res)
}

func (s *Server) writeKeyRevokeError(w http.ResponseWriter, r *http.Request, kid, reason string, err error) {
	var oe *oauthError
	switch {
	case errors.Is(err, jwks.ErrKeyNotFound):
		oe = &oauthError{Code: "not_found", Description: "no key with kid " + kid + " in the key ring", status: http.StatusNotFound}
	case errors.Is(err, errOnlySigningKey):
		oe = &oauthError{Code: "only_signing_key", Description: err.Error() + "; repeat with force (keys revoke --force) to revoke it anyway", status: http.StatusConflict}
	case errors.As(err, &oe):
	default:
		s.log.Error("revoke key", "kid", logSafe(kid), "err", err)
		oe = errUnavailable(err.Error())
	}
	s.audit(r, "keys.revoke", kid, reason, "refused: "+oe.Description)
	writeOAuthError(w, oe)
}

// reconcileKeys revokes in the ring every key that a kid event in the
// revocation set names but the ring still publishes: the second step of a
// key revocation whose first step (the event) is all that happened. It
// serializes on reconcileMu, so that a burst of token requests meeting a
// revoked active key makes one ring update, not one each.
func (s *Server) reconcileKeys(ctx context.Context) error {
	st := s.keys.current()
	if st == nil || !s.ringHasRevokedKey(st.ring) {
		return nil
	}
	s.reconcileMu.Lock()
	defer s.reconcileMu.Unlock()
	p := s.keyRevocationPolicy()
	var done []string
	_, err := s.keys.update(ctx, func(cur *jwks.Ring) (*jwks.Ring, error) {
		done = done[:0]
		next := cur
		for _, k := range cur.Keys {
			if k.State == jwks.StateRevoked {
				continue
			}
			ev, ok := s.keyEvent(k.ID)
			if !ok {
				continue
			}
			reason, actor := "revocation event "+ev.ID, ev.Actor
			if ev.Reason != "" {
				reason = ev.Reason
			}
			r, _, err := next.Revoke(k.ID, s.now(), p, reason, actor)
			if err != nil {
				return nil, err
			}
			next, done = r, append(done, k.ID)
		}
		if next == cur {
			return nil, nil // another replica finished it
		}
		next.Sequence = cur.Sequence + 1 // one change, however many keys
		return next, nil
	})
	if err != nil && !errors.Is(err, errBundleNotPublished) {
		return fmt.Errorf("finish key revocation: %w", err)
	}
	for _, kid := range done {
		s.log.Warn("finished a key revocation from its event: the ring still published the key", "kid", kid)
	}
	if err != nil {
		s.log.Warn("key revocation finished, bundle not published", "err", err)
	}
	return nil
}

// ringHasRevokedKey reports whether r publishes a key the set revokes.
func (s *Server) ringHasRevokedKey(r *jwks.Ring) bool {
	for _, k := range r.Keys {
		if k.State != jwks.StateRevoked && s.revocations.Has(revocation.KindKID, k.ID) {
			return true
		}
	}
	return false
}

// keyEvent returns the kid event of kid in the set, if the set holds it.
func (s *Server) keyEvent(kid string) (*revocation.Event, bool) {
	for _, e := range s.revocations.Events() {
		if e.Kind == revocation.KindKID && e.Value == kid {
			return e, true
		}
	}
	return nil, false
}
