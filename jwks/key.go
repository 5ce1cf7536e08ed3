package jwks

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"time"
)

// State is where a key is in its life. Keys only ever move forward:
// next → active → retired → removed, or from any of those to revoked.
type State string

const (
	// StateNext keys are published in the JWKS but sign nothing yet, so every
	// sidecar holds them before the first token they sign reaches it.
	StateNext State = "next"
	// StateActive is the one key that signs new tokens.
	StateActive State = "active"
	// StateRetired keys sign nothing but stay published until every token
	// they signed has expired.
	StateRetired State = "retired"
	// StateRevoked keys were revoked by an administrator (a leaked private
	// key): unpublished at once, their private half destroyed, kept in the
	// ring only so that `keys list` can show when, why and by whom until
	// no token they signed can still be valid.
	StateRevoked State = "revoked"
)

// RSABits is the size of generated RSA keys. 2048 is the floor of RFC 7518
// §3.3; 3072 buys margin for keys that may live a few days.
const RSABits = 3072

// Key is a token signing key with its lifecycle timestamps. The private half
// never leaves the issuer; PublicKey is what is published.
type Key struct {
	ID    string
	Alg   Algorithm
	State State
	// CreatedAt is when the key was made and first published.
	CreatedAt time.Time
	// ActivatedAt is when it started signing (zero while next).
	ActivatedAt time.Time
	// ActivatedBy is the admin client id whose on-demand rotation or key
	// revocation made it sign; empty for the periodic schedule.
	ActivatedBy string
	// RetiredAt is when it stopped signing (zero until retired).
	RetiredAt time.Time
	// RemoveAt is when a retired key leaves the JWKS, or a revoked key the
	// ring (zero until retired or revoked).
	RemoveAt time.Time
	// RevokedAt, RevokedBy (the admin client id) and RevokeReason record
	// an administrator's revocation of the key.
	RevokedAt    time.Time
	RevokedBy    string
	RevokeReason string

	signer crypto.Signer
}

// GenerateKey makes a new key for alg in state next.
func GenerateKey(alg Algorithm, now time.Time) (*Key, error) {
	var (
		signer crypto.Signer
		err    error
	)
	switch alg {
	case ES256:
		signer, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case EdDSA:
		_, signer, err = ed25519.GenerateKey(rand.Reader)
	case RS256:
		signer, err = rsa.GenerateKey(rand.Reader, RSABits)
	default:
		return nil, fmt.Errorf("generate key: unsupported algorithm %q", alg)
	}
	if err != nil {
		return nil, fmt.Errorf("generate %s key: %w", alg, err)
	}
	return newKey(alg, signer, now)
}

func newKey(alg Algorithm, signer crypto.Signer, now time.Time) (*Key, error) {
	if err := checkKeyFitsAlg(alg, signer.Public()); err != nil {
		return nil, err
	}
	kid, err := thumbprintID(signer.Public())
	if err != nil {
		return nil, err
	}
	return &Key{ID: kid, Alg: alg, State: StateNext, CreatedAt: now.UTC(), signer: signer}, nil
}

// thumbprintID derives the kid from the public key (a truncated SHA-256 of
// its PKIX encoding), so a kid can never name two different keys.
func thumbprintID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("encode public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:16]), nil
}

// Public returns the key's public half for the JWKS.
func (k *Key) Public() PublicKey {
	return PublicKey{ID: k.ID, Alg: k.Alg, Key: k.signer.Public()}
}

// MarshalPrivate returns the private key as PKCS #8 DER, for sealing at rest.
func (k *Key) MarshalPrivate() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.signer)
	if err != nil {
		return nil, fmt.Errorf("encode private key %s: %w", k.ID, err)
	}
	return der, nil
}

// WithPrivate returns a copy of k that holds the PKCS #8 private key der,
// after checking that it is the key k.ID names.
func (k Key) WithPrivate(der []byte) (*Key, error) {
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("decode private key %s: %w", k.ID, err)
	}
	signer, ok := priv.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key %s: %T is not a signer", k.ID, priv)
	}
	if err := checkKeyFitsAlg(k.Alg, signer.Public()); err != nil {
		return nil, fmt.Errorf("private key %s: %w", k.ID, err)
	}
	kid, err := thumbprintID(signer.Public())
	if err != nil {
		return nil, err
	}
	if kid != k.ID {
		return nil, fmt.Errorf("private key does not match kid %s", k.ID)
	}
	k.signer = signer
	return &k, nil
}
