package jwks

import (
	"encoding/json"
	"fmt"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"
)

// Sign makes a compact JWS of claims with header typ "at+jwt" and the key's
// kid (RFC 9068 §2.1).
func (k *Key) Sign(c *Claims) (string, error) {
	payload, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("encode claims: %w", err)
	}
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.KeyIDKey, k.ID); err != nil {
		return "", err
	}
	if err := hdr.Set(jws.TypeKey, TokenType); err != nil {
		return "", err
	}
	out, err := jws.Sign(payload, jws.WithKey(k.Alg.jwa(), k.signer, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return "", fmt.Errorf("sign token with key %s: %w", k.ID, err)
	}
	return string(out), nil
}

func (a Algorithm) jwa() jwa.SignatureAlgorithm {
	switch a {
	case EdDSA:
		return jwa.EdDSA()
	case RS256:
		return jwa.RS256()
	default:
		return jwa.ES256()
	}
}
