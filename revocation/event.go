package revocation

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tokenwarden/tokenwarden/jwks"
)

// EventType is the JOSE "typ" of a signed revocation event. It differs from
// jwks.BundleType, so a JWKS bundle signed with the same distribution key is
// never accepted as an event, nor an event as a bundle.
const EventType = "tokenwarden-revocation+jws"

// Kind is what an event revokes.
type Kind string

// The kinds of revocation.
const (
	// KindJTI revokes the one access token whose jti is the event's value.
	KindJTI Kind = "jti"
	// KindSID revokes every token of the session (sid) named by the value.
	KindSID Kind = "sid"
	// KindSub revokes the subject's tokens issued at or before IssuedBefore.
	KindSub Kind = "sub"
	// KindClient revokes the client's tokens issued at or before IssuedBefore.
	KindClient Kind = "client"
	// KindAll revokes every token issued at or before IssuedBefore.
	KindAll Kind = "all"
	// KindKID revokes every token signed by the key whose kid is the
	// value, whatever its iat or jti: a forger holding a leaked key
	// chooses those, so only the key names every forged token.
	KindKID Kind = "kid"
)

// Kinds lists every kind, in the order Check consults them.
var Kinds = []Kind{KindKID, KindJTI, KindSID, KindSub, KindClient, KindAll}

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool {
	switch k {
	case KindJTI, KindSID, KindSub, KindClient, KindAll, KindKID:
		return true
	}
	return false
}

// needsIssuedBefore reports whether events of kind k are bounded by
// IssuedBefore (sub, client, all) rather than naming one token or session.
func (k Kind) needsIssuedBefore() bool {
	return k == KindSub || k == KindClient || k == KindAll
}

// Limits of an event, checked by Validate.
const (
	// MaxValueLen bounds Event.Value in bytes.
	MaxValueLen = 256
	// MaxReasonLen bounds Event.Reason in bytes.
	MaxReasonLen = 512
	// MaxIDLen bounds Event.ID in bytes (NewEvent makes 22).
	MaxIDLen = 64
	// MaxActorLen bounds Event.Actor in bytes.
	MaxActorLen = 256
	// MaxEventSize bounds a signed event on the wire; Verify rejects larger
	// input before parsing it.
	MaxEventSize = 4096
	// MaxIssuedBeforeSkew is how far IssuedBefore may lie after the event's
	// own IssuedAt. A little slack lets an issuer cover replicas whose clocks
	// run slightly ahead of its own; more would turn a revocation into a ban
	// on tokens not yet issued, which is the users/clients files' job.
	MaxIssuedBeforeSkew = 60 * time.Second
)

// Errors of Verify, so that a consumer can tell an attack (or a
// misconfigured key) from an issuer bug.
var (
	// ErrForged: the data is not a revocation event signed by a trusted
	// distribution key (bad signature, unknown key, another typ, not a JWS).
	ErrForged = errors.New("revocation event not signed by a trusted distribution key")
	// ErrInvalid: the signature holds but the payload is not a valid event.
	ErrInvalid = errors.New("invalid revocation event")
	// ErrExpired is returned by NewEvent and Publisher.Publish for an event
	// whose expires_at has already passed: no token it matches can still be
	// valid, so there is nothing to publish.
	ErrExpired = errors.New("revocation event already expired")
)

// Event is one revocation, as signed by the issuer and applied by sidecars.
type Event struct {
	// ID is random (128 bits, base64url) and unique; it is the JetStream
	// Nats-Msg-Id, which makes publishing idempotent, and Set.Apply ignores
	// an ID it already holds.
	ID    string `json:"id"`
	Kind  Kind   `json:"kind"`
	Value string `json:"value,omitempty"`
	// IssuedBefore (Unix seconds) bounds sub, client and all events: they
	// revoke tokens with iat <= IssuedBefore. Required for those kinds,
	// ignored for jti and sid.
	IssuedBefore int64 `json:"issued_before,omitempty"`
	// ExpiresAt (Unix seconds): after it no token the event matches can still
	// be valid, so the event is garbage, in the stream and in every Set.
	ExpiresAt int64 `json:"expires_at"`
	// Reason is the administrator's free text. It is kept for audit
	// (Set.Events) but never shown to token holders.
	Reason string `json:"reason,omitempty"`
	// Actor is who asked for the revocation, for audit: the admin client
	// id; "client:<id>" for a client revoking its own token (RFC 7009) or
	// logging out; "issuer" for the issuer's own (refresh-token reuse).
	// Never shown to token holders.
	Actor string `json:"actor,omitempty"`
	// IssuedAt (Unix seconds) is when the event was made.
	IssuedAt int64 `json:"iat"`
	// IssuedAtMs is IssuedAt in milliseconds, for the propagation-delay
	// metric, which whole seconds would make meaningless. Optional; when set
	// it must agree with IssuedAt.
	IssuedAtMs int64 `json:"iat_ms,omitempty"`
}

// NewEvent makes an event with a fresh random ID and validates it.
//
// issuedBefore matters only for sub, client and all; a zero issuedBefore
// there means now. It is truncated to whole seconds (token iat is whole
// seconds), expiresAt rounded up. expiresAt is required (see ExpiryFor); an
// event that has already expired at now is ErrExpired.
func NewEvent(kind Kind, value string, issuedBefore, expiresAt time.Time, reason string, now time.Time) (*Event, error) {
	if expiresAt.IsZero() {
		return nil, fmt.Errorf("%w: expires_at required", ErrInvalid)
	}
	if !expiresAt.After(now) {
		return nil, ErrExpired
	}
	e := &Event{
		ID:         newID(),
		Kind:       kind,
		Value:      value,
		ExpiresAt:  ceilUnix(expiresAt),
		Reason:     reason,
		IssuedAt:   now.Unix(),
		IssuedAtMs: now.UnixMilli(),
	}
	if kind.needsIssuedBefore() {
		if issuedBefore.IsZero() {
			issuedBefore = now
		}
		e.IssuedBefore = issuedBefore.Unix()
	}
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return e, nil
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// ceilUnix is t in Unix seconds, rounded up.
func ceilUnix(t time.Time) int64 {
	s := t.Unix()
	if t.Nanosecond() > 0 {
		s++
	}
	return s
}

// Validate checks an event's fields; every error wraps ErrInvalid.
func (e *Event) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
	}
	if e.ID == "" {
		return bad("id missing")
	}
	if len(e.ID) > MaxIDLen {
		return bad("id longer than %d bytes", MaxIDLen)
	}
	for i := 0; i < len(e.ID); i++ {
		if !isBase64URL(e.ID[i]) {
			return bad("id is not base64url")
		}
	}
	if !e.Kind.Valid() {
		return bad("unknown kind %q", truncate(string(e.Kind), 32))
	}
	if e.Kind == KindAll {
		if e.Value != "" {
			return bad("kind all takes no value")
		}
	} else if e.Value == "" {
		return bad("value required for kind %s", e.Kind)
	}
	if len(e.Value) > MaxValueLen {
		return bad("value longer than %d bytes", MaxValueLen)
	}
	if !printable(e.Value) {
		return bad("value is not printable UTF-8")
	}
	if len(e.Reason) > MaxReasonLen {
		return bad("reason longer than %d bytes", MaxReasonLen)
	}
	if !printable(e.Reason) {
		return bad("reason is not printable UTF-8")
	}
	if len(e.Actor) > MaxActorLen {
		return bad("actor longer than %d bytes", MaxActorLen)
	}
	if !printable(e.Actor) {
		return bad("actor is not printable UTF-8")
	}
	if e.IssuedAt <= 0 {
		return bad("iat missing")
	}
	if e.IssuedAtMs < 0 || (e.IssuedAtMs != 0 && floorDiv(e.IssuedAtMs, 1000) != e.IssuedAt) {
		return bad("iat_ms does not match iat")
	}
	if e.ExpiresAt <= 0 {
		return bad("expires_at missing")
	}
	if e.IssuedBefore < 0 {
		return bad("issued_before negative")
	}
	if e.Kind.needsIssuedBefore() {
		if e.IssuedBefore == 0 {
			return bad("issued_before required for kind %s", e.Kind)
		}
		if e.IssuedBefore > e.IssuedAt+int64(MaxIssuedBeforeSkew/time.Second) {
			return bad("issued_before more than %s after iat", MaxIssuedBeforeSkew)
		}
		if e.ExpiresAt < e.IssuedBefore {
			return bad("expires_at before issued_before")
		}
	}
	return nil
}

func isBase64URL(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// printable reports whether s is valid UTF-8 without control characters
// (values and reasons end up in logs and headers).
func printable(s string) bool {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				return false
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 || unicode.IsControl(r) {
			return false
		}
		i += n
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// Expires is ExpiresAt as a time.
func (e *Event) Expires() time.Time { return time.Unix(e.ExpiresAt, 0) }

// Time is when the event was made, to the millisecond when IssuedAtMs is
// set.
func (e *Event) Time() time.Time {
	if e.IssuedAtMs != 0 {
		return time.UnixMilli(e.IssuedAtMs)
	}
	return time.Unix(e.IssuedAt, 0)
}

// Sign validates e and signs it with the distribution key.
func Sign(e *Event, key ed25519.PrivateKey) ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return jwks.SignDistributed(e, EventType, key)
}

// Verify checks that data is a revocation event signed by one of trusted,
// then decodes and validates it. The signature is checked before anything
// of the payload is looked at. Errors wrap ErrForged (not an event signed
// by a trusted key) or ErrInvalid (signed, but not a valid event).
func Verify(data []byte, trusted []ed25519.PublicKey) (*Event, error) {
	events, errs := VerifyBatch([][]byte{data}, trusted)
	return events[0], errs[0]
}

// VerifyBatch is Verify for many events at once, with the same answer for
// each: events[i] is set exactly when errs[i] is nil. The signatures of a
// batch are checked together, several times faster than one by one, which
// is what a sidecar replaying the stream needs (see
// jwks.VerifyDistributedBatch).
func VerifyBatch(data [][]byte, trusted []ed25519.PublicKey) (events []*Event, errs []error) {
	events, errs = make([]*Event, len(data)), make([]error, len(data))
	// Oversized input is refused before any parsing.
	sized := make([][]byte, 0, len(data))
	at := make([]int, 0, len(data))
	for i, d := range data {
		if len(d) > MaxEventSize {
			errs[i] = fmt.Errorf("%w: larger than %d bytes", ErrForged, MaxEventSize)
			continue
		}
		sized, at = append(sized, d), append(at, i)
	}
	payloads, verrs := jwks.VerifyDistributedBatch(sized, EventType, trusted)
	for j, i := range at {
		if verrs[j] != nil {
			errs[i] = fmt.Errorf("%w: %w", ErrForged, verrs[j])
			continue
		}
		var e Event
		if err := json.Unmarshal(payloads[j], &e); err != nil {
			errs[i] = fmt.Errorf("%w: decode: %w", ErrInvalid, err)
			continue
		}
		if err := e.Validate(); err != nil {
			errs[i] = err
			continue
		}
		events[i] = &e
	}
	return events, errs
}

// ExpiryFor computes an event's expires_at: the moment after which no token
// the event matches can still be valid.
//
// For a jti whose token expiry is known it is tokenExp + leeway. Otherwise
// (sid, sub, client, all, or a jti of unknown expiry) it is issuedBefore +
// maxTokenTTL + leeway, where issuedBefore is the event's issued_before for
// sub, client and all and now for jti and sid (the newest token a session
// revocation must cover was issued now: the issuer mints none after it),
// maxTokenTTL is the longest access-token lifetime the issuer grants and
// leeway the verifiers' clock leeway.
func ExpiryFor(kind Kind, tokenExp, issuedBefore time.Time, maxTokenTTL, leeway time.Duration) time.Time {
	if kind == KindJTI && !tokenExp.IsZero() {
		return tokenExp.Add(leeway)
	}
	return issuedBefore.Add(maxTokenTTL + leeway)
}
