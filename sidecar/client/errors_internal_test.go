package client

import (
	"errors"
	"net/http"
	"testing"
)

func TestParseChallenge(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[string]string
	}{
		{`Bearer realm="tokenwarden"`, map[string]string{"realm": "tokenwarden"}},
		{`Bearer realm="tokenwarden", error="invalid_token", error_description="token expired"`,
			map[string]string{"realm": "tokenwarden", "error": "invalid_token", "error_description": "token expired"}},
		{`bearer Realm="r",error=insufficient_scope, scope="read write"`,
			map[string]string{"realm": "r", "error": "insufficient_scope", "scope": "read write"}},
		{`Bearer error_description="a \"quoted\" \\ word, with comma", error="invalid_token"`,
			map[string]string{"error_description": `a "quoted" \ word, with comma`, "error": "invalid_token"}},
		{`Bearer error="first", error="second"`, map[string]string{"error": "first"}},
		{`Bearer error="unterminated`, map[string]string{"error": "unterminated"}},
		{`Basic realm="x", error="invalid_token"`, map[string]string{}},
		{``, map[string]string{}},
		{`Bearer`, map[string]string{}},
		{`Bearer garbage`, map[string]string{}},
	} {
		got := parseChallenge(tc.in)
		if len(got) != len(tc.want) {
			t.Errorf("%q: got %v, want %v", tc.in, got, tc.want)
			continue
		}
		for k, v := range tc.want {
			if got[k] != v {
				t.Errorf("%q: %s=%q, want %q", tc.in, k, got[k], v)
			}
		}
	}
}

// TestChallengeRoundTrip: what the middleware writes parses back to the
// same error, and nothing in an error can break out of its quotes.
func TestChallengeRoundTrip(t *testing.T) {
	for _, e := range []*Error{
		{Status: 401, Code: CodeInvalidToken, Description: "token expired"},
		{Status: 403, Code: CodeInsufficientScope, Description: "the token lacks a required scope", Scope: "write admin"},
		{Status: 401, Code: CodeInvalidRequest, Description: "more than one Authorization header"},
	} {
		got := errorFromChallenge(e.Status, challenge("tokenwarden", e))
		if *got != *e {
			t.Errorf("round trip: %+v -> %+v", e, got)
		}
	}
	c := challenge("tokenwarden", &Error{Status: 401, Code: "invalid_token", Description: "evil\", error=\"none\r\nX-Injected: 1"})
	if got := parseChallenge(c); got["error"] != "invalid_token" || len(got) != 3 {
		t.Fatalf("description escaped its quotes: %q -> %v", c, got)
	}
	for _, b := range []byte(c) {
		if b < 0x20 || b > 0x7e {
			t.Fatalf("control byte in %q", c)
		}
	}
	if challenge("tokenwarden", ErrUnavailable) != "" {
		t.Fatal("a challenge for an unavailable sidecar")
	}
	if e := errorFromChallenge(http.StatusUnauthorized, `Bearer realm="tokenwarden"`); !errors.Is(e, ErrNoToken) {
		t.Fatal("a bare 401 is not ErrNoToken")
	}
	if e := errorFromChallenge(http.StatusForbidden, ""); e.Code != CodeInsufficientScope {
		t.Fatalf("bare 403: %+v", e)
	}
}

func TestParseAddr(t *testing.T) {
	for _, tc := range []struct{ in, base, socket string }{
		{"http://127.0.0.1:8181", "http://127.0.0.1:8181", ""},
		{"http://127.0.0.1:8181/", "http://127.0.0.1:8181", ""},
		{"127.0.0.1:8181", "http://127.0.0.1:8181", ""},
		{"https://sidecar.example:8443/tw", "https://sidecar.example:8443/tw", ""},
		{"unix:///run/tokenwarden/sidecar.sock", "http://tokenwarden-sidecar", "/run/tokenwarden/sidecar.sock"},
		{"unix:/run/s.sock", "http://tokenwarden-sidecar", "/run/s.sock"},
		{"unix:s.sock", "http://tokenwarden-sidecar", "s.sock"},
	} {
		base, socket, err := parseAddr(tc.in)
		if err != nil || base != tc.base || socket != tc.socket {
			t.Errorf("%q: %q %q %v", tc.in, base, socket, err)
		}
	}
	for _, bad := range []string{"", "unix:", "unix://", "ftp://x", "http://", "http://h:1/?q=1", "http://h/#f"} {
		if _, _, err := parseAddr(bad); !errors.Is(err, ErrUnavailable) {
			t.Errorf("%q accepted", bad)
		}
	}
}
