package jwks

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"
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

// SignDistributed makes a compact EdDSA JWS of v with the given typ and the
// distribution key's id as kid. Bundles and revocation events both travel
// this way.
func SignDistributed(v any, typ string, key ed25519.PrivateKey) ([]byte, error) {
	payload, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", typ, err)
	}
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.TypeKey, typ); err != nil {
		return nil, err
	}
	if err := hdr.Set(jws.KeyIDKey, DistributionKeyID(key.Public().(ed25519.PublicKey))); err != nil {
		return nil, err
	}
	out, err := jws.Sign(payload, jws.WithKey(jwa.EdDSA(), key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", typ, err)
	}
	return out, nil
}

// VerifyDistributed checks a distribution-key JWS of the given typ against
// the trusted keys and decodes its payload into v. Unknown payload fields are
// ignored (they are signed, and a newer issuer may add some during a rolling
// upgrade); a missing signature, another typ or trailing data are errors.
//
// It parses the compact form itself, as strictly as the token verifier:
// exactly three parts of canonical base64url, a header with only alg
// (EdDSA), typ and kid, a 64-byte signature checked with crypto/ed25519
// before the payload is decoded. A sidecar replaying a long revocation
// stream spends its time here, so there is no general JOSE machinery.
func VerifyDistributed(data []byte, typ string, trusted []ed25519.PublicKey, v any) error {
	if len(trusted) == 0 {
		return errors.New("no trusted distribution key configured")
	}
	first := bytes.IndexByte(data, '.')
	second := first + 1 + bytes.IndexByte(data[first+1:], '.')
	if first <= 0 || second <= first+1 || second == len(data)-1 || bytes.IndexByte(data[second+1:], '.') >= 0 {
		return errors.New("parse: not a compact JWS of three non-empty parts")
	}
	for _, c := range data {
		if c != '.' && !verifyB64Alphabet[c] {
			return errors.New("parse: not base64url")
		}
	}
	hdrJSON, err := verifyB64.DecodeString(string(data[:first]))
	if err != nil {
		return fmt.Errorf("parse header: %w", err)
	}
	var hdr struct {
		Alg string `json:"alg"`
		Typ string `json:"typ"`
		Kid string `json:"kid"`
	}
	dec := json.NewDecoder(bytes.NewReader(hdrJSON))
	dec.DisallowUnknownFields() // crit, jwk, jku, b64, ...: none belongs here
	if err := dec.Decode(&hdr); err != nil || dec.More() {
		return errors.New("parse header: want a JSON object with only alg, typ and kid")
	}
	if hdr.Alg != "EdDSA" {
		return errors.New("signature algorithm is not EdDSA")
	}
	if hdr.Typ != typ {
		return fmt.Errorf("typ is not %s", typ)
	}
	sig, err := verifyB64.DecodeString(string(data[second+1:]))
	if err != nil || len(sig) != ed25519.SignatureSize {
		return errors.New("parse signature: want 64 bytes of base64url")
	}
	input := data[:second]
	ok := false
	for _, pub := range trusted {
		if len(pub) != ed25519.PublicKeySize || (hdr.Kid != "" && hdr.Kid != DistributionKeyID(pub)) {
			continue
		}
		if ed25519.Verify(pub, input, sig) {
			ok = true
			break
		}
	}
	if !ok {
		return errors.New("signature does not verify with any trusted distribution key")
	}
	payload, err := verifyB64.DecodeString(string(data[first+1 : second]))
	if err != nil {
		return fmt.Errorf("decode payload: %w", err)
	}
	pdec := json.NewDecoder(bytes.NewReader(payload))
	if err := pdec.Decode(v); err != nil {
		return fmt.Errorf("decode payload: %w", err)
	}
	if pdec.More() {
		return errors.New("trailing data after payload")
	}
	return nil
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
