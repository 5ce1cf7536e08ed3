package issuer

import (
	"net/http"
	"slices"
	"strings"

	"github.com/tokenwarden/tokenwarden/issuer/directory"
)

// handleJWKS serves the public keys of the ring (next, active and retired).
// Sidecars get them signed over NATS; this is for everything else (OIDC
// libraries, API gateways).
func (s *Server) handleJWKS(w http.ResponseWriter, _ *http.Request) {
	st := s.keys.current()
	if st == nil {
		writeOAuthError(w, errUnavailable("signing keys not loaded yet"))
		return
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", "public, max-age=60")
	_, _ = w.Write(st.doc)
}

// handleDiscovery serves RFC 8414 metadata (and the same document as OIDC
// discovery). The signing algorithms are listed under the ID-token names
// too, because OIDC libraries such as go-oidc read the accepted algorithms
// from there.
func (s *Server) handleDiscovery(w http.ResponseWriter, _ *http.Request) {
	base := strings.TrimSuffix(s.cfg.Issuer, "/")
	algs := []string{string(s.policy().Alg)}
	if st := s.keys.current(); st != nil {
		algs = algs[:0]
		for _, k := range st.ring.Keys {
			if !slices.Contains(algs, string(k.Alg)) {
				algs = append(algs, string(k.Alg))
			}
		}
	}
	w.Header().Set("Cache-Control", "public, max-age=300")
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":              s.cfg.Issuer,
		"token_endpoint":      base + "/oauth2/token",
		"jwks_uri":            base + "/.well-known/jwks.json",
		"revocation_endpoint": base + "/oauth2/revoke",
		"revocation_endpoint_auth_methods_supported":       []string{"client_secret_basic", "client_secret_post"},
		"grant_types_supported":                            []string{directory.GrantPassword, directory.GrantClientCredentials, directory.GrantRefreshToken},
		"token_endpoint_auth_methods_supported":            []string{"client_secret_basic", "client_secret_post"},
		"token_endpoint_auth_signing_alg_values_supported": algs,
		"id_token_signing_alg_values_supported":            algs,
		"response_types_supported":                         []string{},
		"subject_types_supported":                          []string{"public"},
		"scopes_supported":                                 []string{AdminScope},
		"claims_supported":                                 []string{"iss", "sub", "aud", "exp", "iat", "jti", "client_id", "scope", "sid"},
		"access_token_signing_alg_values_supported":        algs,
	})
}
