package client

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// RFC 6750 §3.1 error codes.
const (
	CodeInvalidRequest    = "invalid_request"
	CodeInvalidToken      = "invalid_token"
	CodeInsufficientScope = "insufficient_scope"
)

// ErrNoToken means the request carried no bearer token: the answer is 401
// with a bare challenge (RFC 6750 §3.1: no error code when the request
// lacks any authentication information).
var ErrNoToken = errors.New("tokenwarden: no bearer token")

// Error is a verdict against a token: the HTTP status to answer (401 or
// 403) and the RFC 6750 error from the sidecar's WWW-Authenticate
// challenge.
type Error struct {
	Status      int    // 401 or 403
	Code        string // invalid_token, invalid_request, insufficient_scope; empty for a bare challenge
	Description string // error_description: fixed text such as "token expired", never token content
	Scope       string // for insufficient_scope: the required scopes the token lacks, space-separated
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("tokenwarden: ")
	if e.Code == "" {
		b.WriteString("unauthorized")
	} else {
		b.WriteString(e.Code)
	}
	if e.Description != "" {
		b.WriteString(": ")
		b.WriteString(e.Description)
	}
	if e.Scope != "" {
		fmt.Fprintf(&b, " (missing scope %q)", e.Scope)
	}
	fmt.Fprintf(&b, " (HTTP %d)", e.Status)
	return b.String()
}

// Is makes a bare 401 challenge match ErrNoToken.
func (e *Error) Is(target error) bool {
	return target == ErrNoToken && e.Code == "" && e.Status == http.StatusUnauthorized
}

// errorFromChallenge builds the *Error of a 401/403 from its
// WWW-Authenticate value.
func errorFromChallenge(status int, challenge string) *Error {
	e := &Error{Status: status}
	params := parseChallenge(challenge)
	e.Code = params["error"]
	e.Description = params["error_description"]
	e.Scope = params["scope"]
	if e.Code == "" && status == http.StatusForbidden {
		// A 403 is a verdict even without a challenge.
		e.Code = CodeInsufficientScope
	}
	return e
}

// parseChallenge returns the auth-params of a Bearer challenge (RFC 7235
// §2.1: token68 is not used by Bearer; params are token=token or
// token=quoted-string, comma-separated). Names are lower-cased. Anything
// that is not a Bearer challenge yields no params.
func parseChallenge(s string) map[string]string {
	params := map[string]string{}
	scheme, rest, _ := strings.Cut(strings.TrimSpace(s), " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return params
	}
	for {
		rest = strings.TrimLeft(rest, " \t,")
		if rest == "" {
			return params
		}
		eq := strings.IndexByte(rest, '=')
		if eq <= 0 {
			return params
		}
		name := strings.ToLower(strings.TrimSpace(rest[:eq]))
		rest = strings.TrimLeft(rest[eq+1:], " \t")
		var val string
		if strings.HasPrefix(rest, `"`) {
			var b strings.Builder
			i := 1
			for ; i < len(rest) && rest[i] != '"'; i++ {
				if rest[i] == '\\' && i+1 < len(rest) {
					i++
				}
				b.WriteByte(rest[i])
			}
			val = b.String()
			if i < len(rest) {
				i++ // closing quote
			}
			rest = rest[i:]
		} else {
			end := strings.IndexAny(rest, ", \t")
			if end < 0 {
				end = len(rest)
			}
			val, rest = rest[:end], rest[end:]
		}
		if _, dup := params[name]; !dup {
			params[name] = val
		}
	}
}

// challenge is the WWW-Authenticate value for err, formatted exactly as
// the sidecar formats its own, or "" when err is not a verdict.
func challenge(realm string, err error) string {
	v := `Bearer realm="` + quotable(realm) + `"`
	var e *Error
	switch {
	case errors.As(err, &e) && e.Code != "":
		v += `, error="` + quotable(e.Code) + `", error_description="` + quotable(e.Description) + `"`
		if e.Scope != "" {
			v += `, scope="` + quotable(e.Scope) + `"`
		}
		return v
	case errors.Is(err, ErrNoToken):
		return v
	default:
		return ""
	}
}

// quotable keeps to the characters RFC 6750 allows inside its quoted
// values (%x20-21 / %x23-5B / %x5D-7E), so nothing a verifier says can
// break the header.
func quotable(s string) string {
	ok := true
	for i := 0; i < len(s); i++ {
		if b := s[i]; b < 0x20 || b > 0x7e || b == '"' || b == '\\' {
			ok = false
			break
		}
	}
	if ok {
		return s
	}
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			b[i] = '?'
		}
	}
	return string(b)
}
