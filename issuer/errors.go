package issuer

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
)

// oauthError is an RFC 6749 §5.2 error response. Every refusal of the token
// and revocation endpoints is one of these, built here and written by
// writeOAuthError, so status codes and headers are decided in one place.
type oauthError struct {
	Code        string `json:"error"`
	Description string `json:"error_description,omitempty"`
	status      int
	retryAfter  int // seconds, for 429
}

func (e *oauthError) Error() string { return e.Code + ": " + e.Description }

func errInvalidRequest(desc string) *oauthError {
	return &oauthError{Code: "invalid_request", Description: desc, status: http.StatusBadRequest}
}
func errInvalidClient(desc string) *oauthError {
	return &oauthError{Code: "invalid_client", Description: desc, status: http.StatusUnauthorized}
}
func errInvalidGrant(desc string) *oauthError {
	return &oauthError{Code: "invalid_grant", Description: desc, status: http.StatusBadRequest}
}
func errUnauthorizedClient(desc string) *oauthError {
	return &oauthError{Code: "unauthorized_client", Description: desc, status: http.StatusBadRequest}
}
func errUnsupportedGrant(desc string) *oauthError {
	return &oauthError{Code: "unsupported_grant_type", Description: desc, status: http.StatusBadRequest}
}
func errInvalidScope(desc string) *oauthError {
	return &oauthError{Code: "invalid_scope", Description: desc, status: http.StatusBadRequest}
}
func errUnavailable(desc string) *oauthError {
	return &oauthError{Code: "temporarily_unavailable", Description: desc, status: http.StatusServiceUnavailable, retryAfter: 1}
}
func errServer(desc string) *oauthError {
	return &oauthError{Code: "server_error", Description: desc, status: http.StatusInternalServerError}
}
func errRateLimited(retryAfter int) *oauthError {
	return &oauthError{Code: "slow_down", Description: "too many failed attempts, try again later", status: http.StatusTooManyRequests, retryAfter: retryAfter}
}

// asOAuthError maps any error to the response it deserves; an unexpected
// error becomes a server_error whose details stay in the log.
func asOAuthError(err error) *oauthError {
	var oe *oauthError
	if errors.As(err, &oe) {
		return oe
	}
	return errServer("internal error")
}

func writeOAuthError(w http.ResponseWriter, oe *oauthError) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	if oe.status == http.StatusUnauthorized {
		h.Set("WWW-Authenticate", `Basic realm="tokenwarden", charset="UTF-8"`)
	}
	if oe.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(oe.retryAfter))
	}
	w.WriteHeader(oe.status)
	_ = json.NewEncoder(w).Encode(oe)
}

// writeJSON writes v with status code; responses are no-store unless the
// handler chose a cache policy.
func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	if w.Header().Get("Cache-Control") == "" {
		w.Header().Set("Cache-Control", "no-store")
	}
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
