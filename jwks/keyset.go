package jwks

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"fmt"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// PublicKey is one verification key of a key set.
type PublicKey struct {
	ID  string
	Alg Algorithm
	Key crypto.PublicKey // *ecdsa.PublicKey, ed25519.PublicKey or *rsa.PublicKey
}

// KeySet is an immutable set of verification keys indexed by kid. It is what
// a verifier consults; it is built once per JWKS and never changed, so it can
// be shared between goroutines without locks.
type KeySet struct {
	keys map[string]PublicKey
}

// NewKeySet builds a set from keys, rejecting duplicate kids and keys whose
// type does not fit their algorithm.
func NewKeySet(keys ...PublicKey) (*KeySet, error) {
	m := make(map[string]PublicKey, len(keys))
	for _, k := range keys {
		if k.ID == "" {
			return nil, fmt.Errorf("key without kid")
		}
		if _, dup := m[k.ID]; dup {
			return nil, fmt.Errorf("duplicate kid %q", k.ID)
		}
		if err := checkKeyFitsAlg(k.Alg, k.Key); err != nil {
			return nil, fmt.Errorf("key %q: %w", k.ID, err)
		}
		m[k.ID] = k
	}
	return &KeySet{keys: m}, nil
}

// Lookup returns the key with kid.
func (s *KeySet) Lookup(kid string) (PublicKey, bool) {
	if s == nil {
		return PublicKey{}, false
	}
	k, ok := s.keys[kid]
	return k, ok
}

// Len is the number of keys in the set.
func (s *KeySet) Len() int {
	if s == nil {
		return 0
	}
	return len(s.keys)
}

// IDs returns the kids of the set in no particular order.
func (s *KeySet) IDs() []string {
	ids := make([]string, 0, s.Len())
	if s != nil {
		for id := range s.keys {
			ids = append(ids, id)
		}
	}
	return ids
}

// ParseKeySet decodes a JWKS document (RFC 7517). Every key must carry a kid,
// "use":"sig" (or no use), and an alg this package supports that fits its
// key type; anything else fails the whole set rather than being skipped, so
// a damaged document is noticed instead of silently shrinking the set.
func ParseKeySet(doc []byte) (*KeySet, error) {
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(doc, &raw); err != nil {
		return nil, fmt.Errorf("decode JWKS: %w", err)
	}
	keys := make([]PublicKey, 0, len(raw.Keys))
	for i, kb := range raw.Keys {
		k, err := jwk.ParseKey(kb)
		if err != nil {
			return nil, fmt.Errorf("JWKS key %d: %w", i, err)
		}
		kid, _ := k.KeyID()
		if use, ok := k.KeyUsage(); ok && use != "sig" {
			return nil, fmt.Errorf("JWKS key %q: use %q is not sig", kid, use)
		}
		a, ok := k.Algorithm()
		if !ok {
			return nil, fmt.Errorf("JWKS key %q: no alg", kid)
		}
		alg, err := ParseAlgorithm(a.String())
		if err != nil {
			return nil, fmt.Errorf("JWKS key %q: %w", kid, err)
		}
		var pub any
		if err := jwk.Export(k, &pub); err != nil {
			return nil, fmt.Errorf("JWKS key %q: %w", kid, err)
		}
		keys = append(keys, PublicKey{ID: kid, Alg: alg, Key: normalizePublic(pub)})
	}
	return NewKeySet(keys...)
}

// normalizePublic turns the value jwk.Export produced into the pointer or
// value form the verifier type-switches on.
func normalizePublic(k any) crypto.PublicKey {
	switch v := k.(type) {
	case ecdsa.PublicKey:
		return &v
	case rsa.PublicKey:
		return &v
	case *ed25519.PublicKey:
		return *v
	}
	return k
}

func checkKeyFitsAlg(alg Algorithm, key crypto.PublicKey) error {
	switch alg {
	case ES256:
		k, ok := key.(*ecdsa.PublicKey)
		// Nil coordinates would panic in ECDH(); reading them is the only check.
		if !ok || k.Curve != elliptic.P256() || k.X == nil || k.Y == nil { //nolint:staticcheck // see above
			return fmt.Errorf("ES256 needs a P-256 public key, got %T", key)
		}
		if _, err := k.ECDH(); err != nil { // rejects points off the curve
			return fmt.Errorf("ES256 key: %w", err)
		}
	case EdDSA:
		k, ok := key.(ed25519.PublicKey)
		if !ok || len(k) != ed25519.PublicKeySize {
			return fmt.Errorf("EdDSA needs an Ed25519 public key, got %T", key)
		}
	case RS256:
		k, ok := key.(*rsa.PublicKey)
		if !ok || k.N == nil || k.N.BitLen() < 2048 || k.E < 3 {
			return fmt.Errorf("RS256 needs an RSA public key of at least 2048 bits")
		}
	default:
		return fmt.Errorf("unsupported algorithm %q", alg)
	}
	return nil
}
