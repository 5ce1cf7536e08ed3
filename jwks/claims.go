package jwks

import (
	"encoding/json"
	"errors"
	"strings"
)

// TokenType is the JOSE "typ" of an RFC 9068 access token. Verifiers insist
// on it so that an ID token or any other JWT signed by the same keys can
// never be replayed as an access token.
const TokenType = "at+jwt"

// Claims are the claims of an RFC 9068 access token. Times are Unix seconds
// (JWT NumericDate) because that is what is on the wire; keeping them as
// integers avoids time.Time conversions on the verification hot path.
type Claims struct {
	Issuer    string   `json:"iss"`
	Subject   string   `json:"sub"`
	Audience  Audience `json:"aud"`
	Expiry    int64    `json:"exp"`
	IssuedAt  int64    `json:"iat"`
	NotBefore int64    `json:"nbf,omitempty"`
	ID        string   `json:"jti"`
	ClientID  string   `json:"client_id"`
	Scope     string   `json:"scope,omitempty"`
	SessionID string   `json:"sid,omitempty"`
	// KeyID is the kid of the key that signed the token (from its header,
	// set by Verifier.Verify), so a revoked signing key can be checked
	// like any other revocation, on cache hits too.
	KeyID string `json:"-"`
}

// Scopes returns the space-separated scope claim as a slice.
func (c *Claims) Scopes() []string { return strings.Fields(c.Scope) }

// HasScope reports whether the token grants scope s.
func (c *Claims) HasScope(s string) bool {
	for _, have := range strings.Fields(c.Scope) {
		if have == s {
			return true
		}
	}
	return false
}

// Audience is the "aud" claim: a single string or an array of strings on the
// wire (RFC 7519 §4.1.3). A single audience is written as a plain string,
// which is what most resource servers expect.
type Audience []string

// Contains reports whether aud names a.
func (a Audience) Contains(aud string) bool {
	for _, v := range a {
		if v == aud {
			return true
		}
	}
	return false
}

// MarshalJSON writes one audience as a string and several as an array.
func (a Audience) MarshalJSON() ([]byte, error) {
	if len(a) == 1 {
		return json.Marshal(a[0])
	}
	return json.Marshal([]string(a))
}

// UnmarshalJSON accepts a string or an array of strings and nothing else.
func (a *Audience) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*a = Audience{s}
		return nil
	}
	if len(b) > 0 && b[0] == '[' {
		var v []string
		if err := json.Unmarshal(b, &v); err != nil {
			return err
		}
		*a = v
		return nil
	}
	return errors.New("aud must be a string or an array of strings")
}
