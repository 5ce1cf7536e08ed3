package jwks

import "fmt"

// Algorithm is a JWS signature algorithm a token key may use. Only asymmetric
// algorithms exist here: an HMAC key would have to be shared with every
// sidecar, and "none" is never a choice.
type Algorithm string

// The supported signing algorithms. ES256 is the default: small keys, small
// signatures and fast verification.
const (
	ES256 Algorithm = "ES256"
	EdDSA Algorithm = "EdDSA"
	RS256 Algorithm = "RS256"
)

// SupportedAlgorithms lists every algorithm a key may use.
func SupportedAlgorithms() []Algorithm { return []Algorithm{ES256, EdDSA, RS256} }

// ParseAlgorithm returns the Algorithm named s or an error naming the choices.
func ParseAlgorithm(s string) (Algorithm, error) {
	for _, a := range SupportedAlgorithms() {
		if string(a) == s {
			return a, nil
		}
	}
	return "", fmt.Errorf("unsupported signing algorithm %q (want one of ES256, EdDSA, RS256)", s)
}
