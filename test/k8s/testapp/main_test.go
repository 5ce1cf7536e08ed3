package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// fakeSidecar answers /verify as the sidecar does for two tokens: "rw"
// (scopes read write) and "ro" (read); anything else is invalid.
func fakeSidecar(t *testing.T) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			return // 200
		}
		if r.URL.Path != "/verify" {
			http.NotFound(w, r)
			return
		}
		scopes := map[string]string{"Bearer rw": "read write", "Bearer ro": "read"}[r.Header.Get("Authorization")]
		switch {
		case r.Header.Get("Authorization") == "":
			w.Header().Set("WWW-Authenticate", `Bearer realm="tokenwarden"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		case scopes == "":
			w.Header().Set("WWW-Authenticate", `Bearer realm="tokenwarden", error="invalid_token", error_description="token revoked"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		for _, need := range strings.Fields(r.URL.Query().Get("scope")) {
			if !strings.Contains(" "+scopes+" ", " "+need+" ") {
				w.Header().Set("WWW-Authenticate", `Bearer realm="tokenwarden", error="insufficient_scope", error_description="the token lacks a required scope", scope="`+need+`"`)
				w.WriteHeader(http.StatusForbidden)
				return
			}
		}
		w.Header().Set("X-Auth-Subject", "demo")
		w.Header().Set("X-Auth-Client-Id", "demo-app")
		w.Header().Set("X-Auth-Scope", scopes)
		w.Header().Set("X-Auth-Token-Id", "jti-1")
		w.Header().Set("X-Auth-Expires-At", "2000000000")
	}))
	t.Cleanup(s.Close)
	return s
}

func get(t *testing.T, url, token string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// TestApp runs the real program (flags, listener, shutdown) against a fake
// sidecar and checks every route's answers.
func TestApp(t *testing.T) {
	sc := fakeSidecar(t)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	var logs strings.Builder // written before ready is sent, read after
	go func() { done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-sidecar", sc.URL}, &logs, ready) }()
	var base string
	select {
	case a := <-ready:
		base = "http://" + a
	case err := <-done:
		t.Fatal(err)
	}
	// test/k8s reads this line to tell that the app started after its sidecar was ready.
	if !strings.Contains(logs.String(), "sidecar ready at start: 200") {
		t.Errorf("start-up log without the sidecar's readiness:\n%s", logs.String())
	}

	resp, body := get(t, base+"/healthz", "")
	if resp.StatusCode != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", resp.StatusCode, body)
	}

	resp, body = get(t, base+"/hello", "ro")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("/hello: %d %s", resp.StatusCode, body)
	}
	var a Answer
	if err := json.Unmarshal([]byte(body), &a); err != nil {
		t.Fatal(err)
	}
	if a.Subject != "demo" || a.ClientID != "demo-app" || strings.Join(a.Scopes, " ") != "read" ||
		a.TokenID != "jti-1" || a.ExpiresAt != 2000000000 || a.Path != "/hello" || a.Method != "GET" {
		t.Fatalf("answer %+v", a)
	}

	for _, tc := range []struct {
		path, token string
		status      int
		challenge   string
	}{
		{"/", "", 401, `Bearer realm="tokenwarden"`},
		{"/hello", "bad", 401, `error="invalid_token"`},
		{"/write", "ro", 403, `error="insufficient_scope"`},
		{"/write/x", "ro", 403, `scope="write"`},
		{"/write", "rw", 200, ""},
	} {
		resp, body := get(t, base+tc.path, tc.token)
		if resp.StatusCode != tc.status || !strings.Contains(resp.Header.Get("WWW-Authenticate"), tc.challenge) {
			t.Errorf("%s with %q: %d %q %s", tc.path, tc.token, resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
		}
	}

	// The sidecar gone: fail closed with 503, probes still pass.
	sc.Close()
	if resp, body := get(t, base+"/hello", "rw"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("sidecar down: %d %s", resp.StatusCode, body)
	}
	if resp, _ := get(t, base+"/healthz", ""); resp.StatusCode != 200 {
		t.Fatalf("/healthz with the sidecar down: %d", resp.StatusCode)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no shutdown")
	}
}

func TestBadFlag(t *testing.T) {
	if err := run(context.Background(), []string{"-nope"}, io.Discard, nil); err == nil {
		t.Fatal("a bad flag was accepted")
	}
}
