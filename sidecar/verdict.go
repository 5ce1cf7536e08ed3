package sidecar

import (
	"net/http"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/jwks"
)

// transport names the API a verification came through: the value of the
// metrics' transport label.
type transport int

const (
	transportHTTP transport = iota // /verify and /introspect
	transportGRPC                  // envoy.service.auth.v3.Authorization/Check
	numTransports
)

func (t transport) String() string {
	if t == transportGRPC {
		return "grpc"
	}
	return "http"
}

// verdict is the answer to one authorization question, whatever the
// transport: /verify writes it as an HTTP status and headers, Check as a
// CheckResponse. Both come from decide, so they cannot disagree.
type verdict struct {
	// code is 200, 401 or 403.
	code int
	// challenge is the WWW-Authenticate value of a denial.
	challenge string
	// noStore: the denial also carries Cache-Control: no-store (every
	// RFC 6750 error does; the bare "no token" challenge does not).
	noStore bool
	// claims are the verified token's, on 200 only.
	claims *jwks.Claims
}

// decide is the verification path shared by /verify and Check.
// authorization holds every Authorization header value of the request (a
// token must come in exactly one), required the space-separated scopes the
// route requires. It counts the verification in the metrics of t.
func (s *Sidecar) decide(authorization []string, required string, t transport) verdict {
	token, problem := bearerOf(authorization)
	if token == "" {
		if problem != "" {
			s.metrics.count(t, resultInvalid)
			return denial(http.StatusUnauthorized, "invalid_request", problem, "")
		}
		s.metrics.count(t, resultNoToken)
		return verdict{code: http.StatusUnauthorized, challenge: realm}
	}
	start := time.Now()
	c, _, err := s.verifier.Verify(token)
	s.metrics.latencyOf[t].Observe(time.Since(start).Seconds())
	if err != nil {
		s.metrics.count(t, resultOf(err))
		return denial(http.StatusUnauthorized, "invalid_token", reasonOf(err), "")
	}
	if missing := MissingScopes(c, required); missing != "" {
		s.metrics.count(t, resultInsufficientScope)
		return denial(http.StatusForbidden, "insufficient_scope", "the token lacks a required scope", missing)
	}
	s.metrics.count(t, resultValid)
	return verdict{code: http.StatusOK, claims: c}
}

// denial is an RFC 6750 §3 error. desc is fixed text (a VerifyError's
// Reason), never token content; scope holds only RFC 6749 scope-tokens
// (MissingScopes sees to it), so neither can break out of the quotes.
func denial(code int, errCode, desc, scope string) verdict {
	v := realm + `, error="` + errCode + `", error_description="` + desc + `"`
	if scope != "" {
		v += `, scope="` + scope + `"`
	}
	return verdict{code: code, challenge: v, noStore: true}
}

// bearerOf extracts the RFC 6750 bearer token from the Authorization
// header values. None (or another scheme) is no token; several values or a
// malformed Bearer value is a problem worth saying.
func bearerOf(vals []string) (token, problem string) {
	if len(vals) == 0 {
		return "", ""
	}
	if len(vals) > 1 {
		return "", "more than one Authorization header"
	}
	scheme, rest, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", ""
	}
	rest = strings.TrimSpace(rest)
	// Two IndexByte scans, not ContainsAny: over a token of hundreds of
	// bytes they are vectorized, ContainsAny goes byte by byte (a tenth
	// of a cache hit's handler time).
	if rest == "" || strings.IndexByte(rest, ' ') >= 0 || strings.IndexByte(rest, '\t') >= 0 {
		return "", "malformed bearer token"
	}
	return rest, ""
}
