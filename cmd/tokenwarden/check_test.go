package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestCheckFailures: every way an issuer can fail the check gives one
// clear error (main prints it on one line and exits 1).
func TestCheckFailures(t *testing.T) {
	fake := func(ready int, iss, jwks string) string {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(ready)
			_, _ = io.WriteString(w, `{"status":"x","checks":{"nats":"connecting to NATS","keys":"ok"}}`)
		})
		mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, `{"issuer":"`+iss+`"}`)
		})
		mux.HandleFunc("GET /.well-known/jwks.json", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, jwks) })
		srv := httptest.NewServer(mux)
		t.Cleanup(srv.Close)
		return srv.URL
	}
	const oneKey = `{"keys":[{"kid":"k1","kty":"EC"}]}`
	ok := fake(200, "https://auth.example.com", oneKey)
	if out, _, err := run(t, t.Context(), "", "check", "--issuer", "https://auth.example.com", "--url", ok); err != nil || !strings.Contains(out, "1 key(s)") {
		t.Fatalf("healthy issuer: %v %q", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	_ = ln.Close()
	for name, tc := range map[string]struct {
		url, want string
	}{
		"not ready":    {fake(503, "https://auth.example.com", oneKey), "not ready (HTTP 503): nats: connecting to NATS"},
		"wrong issuer": {fake(200, "http://other", oneKey), `names issuer "http://other", want "https://auth.example.com"`},
		"no keys":      {fake(200, "https://auth.example.com", `{"keys":[]}`), "holds no key"},
		"unreachable":  {closed, "connection refused"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := run(t, t.Context(), "", "check", "--issuer", "https://auth.example.com", "--url", tc.url)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("want one line with %q, got %v", tc.want, err)
			}
		})
	}
	if out, _, err := run(t, t.Context(), "", "check", "--help"); err != nil || !strings.Contains(out, "--issuer") {
		t.Fatalf("check --help: %v %q", err, out)
	}
}
