package sidecar

import (
	"context"
	"crypto/sha256"
	"errors"
	"time"
	"unsafe"

	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// RevocationChecker says whether verified claims have been revoked, and
// whether a signing key has; the revocation set (revocation.Set)
// implements it.
type RevocationChecker interface {
	Check(c *jwks.Claims) (revoked bool, reason string)
	Has(kind revocation.Kind, value string) bool
}

// ErrRevoked is wrapped by the *jwks.VerifyError of a revoked token.
var ErrRevoked = errors.New("token revoked")

// Verifier is the sidecar's verification pipeline: the verified-token
// cache, the strict verifier of package jwks on a miss, and the revocation
// check on every call, hit or miss.
type Verifier struct {
	v       *jwks.Verifier
	keys    jwks.KeySource
	cache   *tokenCache // nil: caching disabled
	revoked RevocationChecker
	leeway  int64
	now     func() time.Time
	// unknownKID is told about tokens signed by a kid the set lacks, so the
	// key cache can refresh (rate-limited) in the background.
	unknownKID func()
	// awaitKID waits, until ctx ends, for a kid the set lacks to arrive
	// (jwks.Cache.AwaitKID); nil: a token of an unknown kid is refused at
	// once. waiters bounds how many verifications wait at once.
	awaitKID func(ctx context.Context, kid string) bool
	waiters  chan struct{}
}

// A token naming a kid the key set lacks is, when genuine, signed by a key
// that has just begun to sign: the next key activated at once by the
// revocation of the active one, before its bundle reached this sidecar.
// Its bundle is on its way (the watch), or in NATS for the refresh the
// unknown kid starts; a refusal would be a valid token refused. So the
// verification waits for the key, up to unknownKIDWait, and verifies
// again. test/propagation's "recovery window" measures what a new key's
// token meets: no refusal, and every sidecar accepting it within
// milliseconds of the revocation's 201 (the last of 1000 in-process
// sidecars on two cores within 0.15 s; seconds only when that machine's
// CPU is queued with other work). A made-up kid waits too, but at most
// maxKIDWaiters verifications wait at once: beyond that they are refused
// at once, so such tokens cannot pile up requests.
const (
	unknownKIDWait = 500 * time.Millisecond
	maxKIDWaiters  = 64
)

// Verify checks token and returns its claims. Every failure is a
// *jwks.VerifyError whose Reason can be sent to the client.
func (v *Verifier) Verify(token string) (*jwks.Claims, bool, error) {
	if len(token) > v.v.MaxTokenSize() {
		// Checked before hashing, so an oversized token costs nothing.
		return v.verifyMiss(token, nil, false)
	}
	// Hash the string's bytes in place: a []byte(token) copy would be the
	// one allocation of a cache hit.
	if v.cache == nil {
		return v.verifyMiss(token, nil, true)
	}
	k := sha256.Sum256(unsafe.Slice(unsafe.StringData(token), len(token))) // #nosec G103 -- read-only view; Sum256 does not retain or write it
	ks := v.keys.KeySet()
	if e, ok := v.cache.get(&k); ok {
		if e.keys == ks {
			if v.now().Unix() >= e.claims.Expiry+v.leeway {
				v.cache.remove(&k)
				return nil, true, &jwks.VerifyError{Reason: "token expired", Err: jwks.ErrExpired}
			}
			return v.checkRevoked(e.claims, true)
		}
		// The key set changed since this token was verified: verify again.
		v.cache.remove(&k)
	}
	return v.verifyMiss(token, &k, true)
}

// verifyMiss verifies token (k: its cache key, nil to not cache it); with
// await, a token of a kid the set lacks waits for the key (awaitNewKey)
// and is verified again if it came.
func (v *Verifier) verifyMiss(token string, k *[sha256.Size]byte, await bool) (*jwks.Claims, bool, error) {
	ks := v.keys.KeySet()
	c, err := v.v.Verify(token)
	if err != nil {
		var ve *jwks.VerifyError
		if errors.As(err, &ve) && errors.Is(err, jwks.ErrUnknownKey) {
			// A revoked key leaves the bundle: its tokens (a forger's
			// among them) are named for what they are, and do not make
			// the key cache fetch a bundle that will not have the key.
			if v.revoked.Has(revocation.KindKID, ve.KeyID) {
				return nil, false, &jwks.VerifyError{Reason: revocation.ReasonKey, Err: ErrRevoked}
			}
			if v.unknownKID != nil {
				v.unknownKID()
			}
			if await && v.awaitNewKey(ve.KeyID) {
				return v.verifyMiss(token, k, false)
			}
		}
		return nil, false, err
	}
	if k != nil {
		v.cache.put(k, cacheEntry{claims: c, keys: ks}, v.now().Unix()-v.leeway)
	}
	return v.checkRevoked(c, false)
}

func (v *Verifier) checkRevoked(c *jwks.Claims, hit bool) (*jwks.Claims, bool, error) {
	if revoked, reason := v.revoked.Check(c); revoked {
		return nil, hit, &jwks.VerifyError{Reason: reason, Err: ErrRevoked}
	}
	return c, hit, nil
}

// awaitNewKey waits up to unknownKIDWait for kid to reach the key set and
// reports whether it did; false at once when maxKIDWaiters already wait.
func (v *Verifier) awaitNewKey(kid string) bool {
	if v.awaitKID == nil {
		return false
	}
	select {
	case v.waiters <- struct{}{}:
	default:
		return false
	}
	defer func() { <-v.waiters }()
	ctx, cancel := context.WithTimeout(context.Background(), unknownKIDWait)
	defer cancel()
	return v.awaitKID(ctx, kid)
}
