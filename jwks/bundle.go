package jwks

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"
)

// BundleType is the JOSE "typ" of a signed JWKS bundle, so that no other JWS
// made with the distribution key can be mistaken for one.
const BundleType = "tokenwarden-jwks+jws"

// Bundle is what the issuer distributes to sidecars: the JWKS, a sequence
// number that grows with every change of the key ring, and when it was made.
// It travels as a JWS signed by the distribution key, which is separate from
// the token keys: a sidecar trusts a JWKS only because of that signature,
// never because of where it came from.
type Bundle struct {
	Sequence uint64          `json:"seq"`
	IssuedAt int64           `json:"iat"`
	JWKS     json.RawMessage `json:"jwks"`
}

// Time is when the bundle was made.
func (b *Bundle) Time() time.Time { return time.Unix(b.IssuedAt, 0) }

// KeySet decodes the bundle's JWKS.
func (b *Bundle) KeySet() (*KeySet, error) { return ParseKeySet(b.JWKS) }

// DistributionKeyID names an Ed25519 distribution public key: the first 16
// bytes of its SHA-256, base64url. It lets a verifier that trusts several
// keys (during a distribution-key rollover) pick the right one.
func DistributionKeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return base64.RawURLEncoding.EncodeToString(sum[:16])
}

// SignBundle signs b with the distribution key.
func SignBundle(b *Bundle, key ed25519.PrivateKey) ([]byte, error) {
	return SignDistributed(b, BundleType, key)
}

// VerifyBundle checks that data is a bundle signed by one of trusted and
// returns it. Anything else — another key, another typ, a tampered payload,
// an empty JWKS — is an error; the caller drops it.
func VerifyBundle(data []byte, trusted []ed25519.PublicKey) (*Bundle, error) {
	var b Bundle
	if err := VerifyDistributed(data, BundleType, trusted, &b); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	if b.Sequence == 0 {
		return nil, errors.New("bundle: sequence missing")
	}
	if len(b.JWKS) == 0 {
		return nil, errors.New("bundle: jwks missing")
	}
	return &b, nil
}

// ErrStaleBundle is returned by CheckNewer for a bundle that is not newer
// than the one held.
var ErrStaleBundle = errors.New("bundle is not newer than the one held")

// CheckNewer accepts b only if its sequence is above have: a higher
// sequence wins, and an older bundle (a replay, or a late publisher) never
// replaces a newer one.
func CheckNewer(b *Bundle, have uint64) error {
	if b.Sequence <= have {
		return fmt.Errorf("%w: sequence %d, holding %d", ErrStaleBundle, b.Sequence, have)
	}
	return nil
}

// ParseDistributionPublicKey accepts a PKIX PEM "PUBLIC KEY" block or the
// base64 (standard or URL alphabet, padded or not) of the 32 raw Ed25519
// bytes: the forms sidecars and issuers are configured with.
func ParseDistributionPublicKey(s string) (ed25519.PublicKey, error) {
	s = strings.TrimSpace(s)
	if blk, _ := pem.Decode([]byte(s)); blk != nil {
		if blk.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("PEM block %q, want PUBLIC KEY", blk.Type)
		}
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, err
		}
		ek, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("want an Ed25519 key, got %T", k)
		}
		return ek, nil
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == ed25519.PublicKeySize {
			return ed25519.PublicKey(b), nil
		}
	}
	return nil, errors.New("not a PEM public key nor base64 of 32 bytes")
}
