package jwks

import (
	"errors"
	"fmt"
	"time"
)

// Policy is how a Ring rotates. Its durations are the whole rotation
// timeline; see docs/operations.md.
type Policy struct {
	// Alg is the algorithm of newly generated keys.
	Alg Algorithm
	// RotationPeriod is how long a key signs before periodic rotation
	// replaces it.
	RotationPeriod time.Duration
	// PropagationDelay is the minimum time between publishing a key and
	// signing with it: at least one sidecar refresh interval, so no sidecar
	// meets a token whose kid it has not seen.
	PropagationDelay time.Duration
	// RetainRetired is how long a retired key stays published: the longest
	// access-token lifetime plus the verifiers' clock leeway, so every token
	// it signed has expired before the key disappears.
	RetainRetired time.Duration
}

// DefaultPolicy is the contract's default: ES256, rotate daily, publish five
// minutes ahead, keep retired keys for a 10-minute token plus 30s leeway.
func DefaultPolicy() Policy {
	return Policy{Alg: ES256, RotationPeriod: 24 * time.Hour, PropagationDelay: 5 * time.Minute, RetainRetired: 10*time.Minute + 30*time.Second}
}

// Validate reports the first problem with p.
func (p Policy) Validate() error {
	if _, err := ParseAlgorithm(string(p.Alg)); err != nil {
		return err
	}
	if p.PropagationDelay < 0 {
		return errors.New("propagation delay must not be negative")
	}
	if p.RotationPeriod <= p.PropagationDelay {
		return fmt.Errorf("rotation period %s must be longer than the propagation delay %s", p.RotationPeriod, p.PropagationDelay)
	}
	if p.RetainRetired <= 0 {
		return errors.New("retired-key retention must be positive")
	}
	return nil
}

// ErrNextNotReady is returned by Ring.Rotate when the next key has not been
// published for a full propagation delay yet: signing with it now could
// reach a sidecar before the key does.
var ErrNextNotReady = errors.New("next key not yet propagated")

// Ring is the issuer's key ring: exactly one active key, one next key, and
// the retired keys still needed to verify live tokens. A Ring is a value:
// every transition returns a new Ring with Sequence one higher, so the
// published bundle can carry a monotonically increasing sequence number.
type Ring struct {
	Keys     []*Key
	Sequence uint64
}

// NewRing starts a ring at now: the first key signs at once (nothing can
// hold an older JWKS yet) and a next key is published beside it.
func NewRing(now time.Time, p Policy) (*Ring, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	active, err := GenerateKey(p.Alg, now)
	if err != nil {
		return nil, err
	}
	active.State, active.ActivatedAt = StateActive, now.UTC()
	next, err := GenerateKey(p.Alg, now)
	if err != nil {
		return nil, err
	}
	return &Ring{Keys: []*Key{active, next}, Sequence: 1}, nil
}

// Active returns the signing key.
func (r *Ring) Active() *Key { return r.find(StateActive) }

// Next returns the published key that signs after the next rotation.
func (r *Ring) Next() *Key { return r.find(StateNext) }

func (r *Ring) find(s State) *Key {
	for _, k := range r.Keys {
		if k.State == s {
			return k
		}
	}
	return nil
}

// Validate checks the invariants a stored ring must satisfy.
func (r *Ring) Validate() error {
	var active, next int
	seen := map[string]bool{}
	for _, k := range r.Keys {
		if seen[k.ID] {
			return fmt.Errorf("key ring: duplicate kid %s", k.ID)
		}
		seen[k.ID] = true
		switch k.State {
		case StateActive:
			active++
		case StateNext:
			next++
		case StateRetired:
		case StateRevoked:
			continue // its private half is destroyed on revocation
		default:
			return fmt.Errorf("key ring: key %s has unknown state %q", k.ID, k.State)
		}
		if k.signer == nil {
			return fmt.Errorf("key ring: key %s has no private key", k.ID)
		}
	}
	if active != 1 || next != 1 {
		return fmt.Errorf("key ring: want one active and one next key, have %d and %d", active, next)
	}
	return nil
}

// ReadyAt is when the next key may start signing.
func (r *Ring) ReadyAt(p Policy) time.Time {
	return r.Next().CreatedAt.Add(p.PropagationDelay)
}

// Rotate promotes next to active, retires the active key and publishes a
// new next key. It fails with ErrNextNotReady while the next key is younger
// than the propagation delay, so even an on-demand rotation signs only with
// a key every sidecar already holds.
func (r *Ring) Rotate(now time.Time, p Policy) (*Ring, error) {
	if ready := r.ReadyAt(p); now.Before(ready) {
		return nil, fmt.Errorf("%w: key %s may sign from %s", ErrNextNotReady, r.Next().ID, ready.UTC().Format(time.RFC3339))
	}
	fresh, err := GenerateKey(p.Alg, now)
	if err != nil {
		return nil, err
	}
	out := &Ring{Sequence: r.Sequence + 1}
	for _, k := range r.Keys {
		c := *k
		switch k.State {
		case StateActive:
			c.State, c.RetiredAt, c.RemoveAt = StateRetired, now.UTC(), now.Add(p.RetainRetired).UTC()
		case StateNext:
			c.State, c.ActivatedAt = StateActive, now.UTC()
		}
		out.Keys = append(out.Keys, &c)
	}
	out.Keys = append(out.Keys, fresh)
	return out, nil
}

// Advance applies every transition that is due at now: retired keys past
// their removal time leave the ring, and the active key is rotated once it
// has signed for a full rotation period (and the next key is ready). It
// returns the ring unchanged (and false) when nothing is due.
func (r *Ring) Advance(now time.Time, p Policy) (*Ring, bool, error) {
	out, changed := r, false
	if due := r.Active().ActivatedAt.Add(p.RotationPeriod); !now.Before(due) && !now.Before(r.ReadyAt(p)) {
		rotated, err := r.Rotate(now, p)
		if err != nil {
			return nil, false, err
		}
		out, changed = rotated, true
	}
	kept := make([]*Key, 0, len(out.Keys))
	for _, k := range out.Keys {
		if (k.State == StateRetired || k.State == StateRevoked) && !now.Before(k.RemoveAt) {
			changed = true
			continue
		}
		kept = append(kept, k)
	}
	if !changed {
		return r, false, nil
	}
	seq := r.Sequence + 1
	return &Ring{Keys: kept, Sequence: seq}, true, nil
}

// NextTransition is the earliest time at which Advance will change the ring.
func (r *Ring) NextTransition(p Policy) time.Time {
	t := r.Active().ActivatedAt.Add(p.RotationPeriod)
	if ready := r.ReadyAt(p); ready.After(t) {
		t = ready
	}
	for _, k := range r.Keys {
		if (k.State == StateRetired || k.State == StateRevoked) && k.RemoveAt.Before(t) {
			t = k.RemoveAt
		}
	}
	return t
}

// KeySet returns the public keys of every published key (next, active and
// retired): what verifiers must accept. Revoked keys are not published.
func (r *Ring) KeySet() (*KeySet, error) {
	pubs := make([]PublicKey, 0, len(r.Keys))
	for _, k := range r.Keys {
		if k.State != StateRevoked {
			pubs = append(pubs, k.Public())
		}
	}
	return NewKeySet(pubs...)
}

// Errors of Ring.Revoke.
var (
	// ErrKeyNotFound: the ring holds no key with that kid.
	ErrKeyNotFound = errors.New("no such key")
	// ErrAlreadyRevoked: the key was revoked before; nothing changes.
	ErrAlreadyRevoked = errors.New("key already revoked")
)

// Revocation is what Ring.Revoke did besides marking the key.
type Revocation struct {
	// Key is the revoked key as it now stands in the ring.
	Key *Key
	// WasState is the state the key had.
	WasState State
	// Activated is the key that signs from now on when the active key was
	// revoked (the former next key), nil otherwise.
	Activated *Key
	// CutShort is how much of the activated key's propagation delay was
	// skipped: sidecars that have not fetched it yet meet an unknown kid
	// and fetch the bundle (single-flight) before its tokens verify.
	CutShort time.Duration
}

// Revoke takes the key kid out of service at now, for an administrator
// (actor) who says why (reason). The key leaves the published set at
// once and its private half is dropped; it stays in the ring, revoked,
// until RemoveAt (now plus RetainRetired: the longest token lifetime and
// leeway, after which no token it signed can be valid) so `keys list` can
// show it. Revoking the active key activates the next key immediately,
// cutting its propagation delay short, and a fresh next key is made, as
// it is when the next key itself is revoked: the ring always keeps one
// active and one next key.
func (r *Ring) Revoke(kid string, now time.Time, p Policy, reason, actor string) (*Ring, *Revocation, error) {
	var target *Key
	for _, k := range r.Keys {
		if k.ID == kid {
			target = k
		}
	}
	switch {
	case target == nil:
		return nil, nil, fmt.Errorf("%w: %s", ErrKeyNotFound, kid)
	case target.State == StateRevoked:
		return nil, &Revocation{Key: target, WasState: StateRevoked}, ErrAlreadyRevoked
	}
	out := &Ring{Sequence: r.Sequence + 1}
	rev := &Revocation{WasState: target.State}
	needNext := target.State == StateActive || target.State == StateNext
	for _, k := range r.Keys {
		c := *k
		switch {
		case k.ID == kid:
			c.State, c.signer = StateRevoked, nil
			c.RevokedAt, c.RevokedBy, c.RevokeReason = now.UTC(), actor, reason
			c.RemoveAt = now.Add(p.RetainRetired).UTC()
			rev.Key = &c
		case k.State == StateNext && target.State == StateActive:
			c.State, c.ActivatedAt, c.ActivatedBy = StateActive, now.UTC(), actor
			rev.Activated = &c
			if ready := k.CreatedAt.Add(p.PropagationDelay); now.Before(ready) {
				rev.CutShort = ready.Sub(now)
			}
		}
		out.Keys = append(out.Keys, &c)
	}
	if needNext {
		fresh, err := GenerateKey(p.Alg, now)
		if err != nil {
			return nil, nil, err
		}
		out.Keys = append(out.Keys, fresh)
	}
	return out, rev, out.Validate()
}
