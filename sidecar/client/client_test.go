package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/sidecar"
	"github.com/tokenwarden/tokenwarden/sidecar/client"
)

// TestVerify drives the three-line API against a real sidecar: the
// identity of a valid token, and typed errors for every refusal.
func TestVerify(t *testing.T) {
	s := newSystem(t)
	sc := s.sidecar()
	c := client.New(sc.URL)
	ctx := context.Background()

	tok := s.login("read write")
	want := claims(t, tok)
	id, err := c.Verify(ctx, "Bearer "+tok, "read")
	if err != nil {
		t.Fatal(err)
	}
	if id.Subject != "alice" || id.ClientID != "app" || strings.Join(id.Scopes, " ") != "read write" ||
		id.TokenID != want["jti"] || id.ExpiresAt.Unix() != int64(want["exp"].(float64)) {
		t.Fatalf("identity %+v, claims %v", id, want)
	}
	if !id.HasScope("write") || id.HasScope("admin") {
		t.Fatalf("HasScope wrong for %v", id.Scopes)
	}
	if time.Until(id.ExpiresAt) <= 0 || time.Until(id.ExpiresAt) > 11*time.Minute {
		t.Fatalf("expires at %s", id.ExpiresAt)
	}
	// VerifyToken takes the bare token and several scopes, in one or more
	// arguments.
	if _, err := c.VerifyToken(ctx, tok, "read", "write"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.VerifyToken(ctx, tok, "read write"); err != nil {
		t.Fatal(err)
	}

	readOnly := s.login("read")
	for _, tc := range []struct {
		name, header string
		scopes       []string
		noToken      bool
		status       int
		code, desc   string
		scope        string
	}{
		{name: "empty header", header: "", noToken: true},
		{name: "other scheme", header: "Basic YWxpY2U6YWxpY2UtcHc=", noToken: true},
		{name: "malformed bearer", header: "Bearer a b", status: 401, code: "invalid_request", desc: "malformed bearer token"},
		{name: "garbage", header: "Bearer not-a-jwt", status: 401, code: "invalid_token"},
		{name: "tampered", header: "Bearer " + tamper(tok), status: 401, code: "invalid_token"},
		{name: "control character", header: "Bearer abc\x01def", status: 401, code: "invalid_token", desc: "malformed token"},
		{name: "missing scope", header: "Bearer " + readOnly, scopes: []string{"write"}, status: 403,
			code: "insufficient_scope", desc: "the token lacks a required scope", scope: "write"},
		{name: "missing one of two", header: "Bearer " + readOnly, scopes: []string{"read", "write"}, status: 403,
			code: "insufficient_scope", scope: "write"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := c.Verify(ctx, tc.header, tc.scopes...)
			if id != nil || err == nil {
				t.Fatalf("accepted: %+v", id)
			}
			if errors.Is(err, client.ErrUnavailable) {
				t.Fatalf("a verdict reported as unavailable: %v", err)
			}
			if tc.noToken {
				if !errors.Is(err, client.ErrNoToken) {
					t.Fatalf("want ErrNoToken, got %v", err)
				}
				return
			}
			var e *client.Error
			if !errors.As(err, &e) {
				t.Fatalf("want *client.Error, got %T %v", err, err)
			}
			if e.Status != tc.status || e.Code != tc.code || (tc.desc != "" && e.Description != tc.desc) || e.Scope != tc.scope {
				t.Fatalf("got %+v", e)
			}
			if e.Description == "" || errors.Is(err, client.ErrNoToken) {
				t.Fatalf("verdict without description, or taken for no token: %+v", e)
			}
		})
	}
	if _, err := c.VerifyToken(ctx, ""); !errors.Is(err, client.ErrNoToken) {
		t.Fatalf("empty token: %v", err)
	}
}

// verifiers are the three ways the middleware can reach the same
// sidecar: HTTP over TCP, HTTP over its Unix socket, and in-process.
func verifiers(sc *runningSidecar) map[string]client.Verifier {
	return map[string]client.Verifier{
		"tcp":        client.New(sc.URL),
		"unix":       client.New("unix://" + sc.Socket),
		"in-process": client.InProcess(sc.Verifier()),
	}
}

// TestMiddlewareMatchesSidecar runs each case through the middleware
// with each verifier and checks that it answers what the sidecar's own
// /verify answers for the same request — status and WWW-Authenticate,
// byte for byte — and that the app runs, with the Identity, exactly when
// the answer is 200.
func TestMiddlewareMatchesSidecar(t *testing.T) {
	s := newSystem(t)
	sc := s.sidecar()
	full := s.login("read write")
	readOnly := s.login("read")
	other := s.token("other", "other-secret", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}})
	service := s.token("service", "service-secret", url.Values{"grant_type": {"client_credentials"}})

	cases := []struct {
		name    string
		auth    []string // Authorization header values
		scopes  []string
		status  int
		subject string
		inWWW   string // must be in WWW-Authenticate
	}{
		{name: "valid", auth: []string{"Bearer " + full}, status: 200, subject: "alice"},
		{name: "valid with scopes", auth: []string{"Bearer " + full}, scopes: []string{"read", "write"}, status: 200, subject: "alice"},
		{name: "valid client credentials", auth: []string{"Bearer " + service}, scopes: []string{"read"}, status: 200, subject: "service"},
		{name: "lower-case scheme", auth: []string{"bearer " + full}, status: 200, subject: "alice"},
		{name: "missing", status: 401, inWWW: `Bearer realm="tokenwarden"`},
		{name: "basic auth", auth: []string{"Basic YWxpY2U6YWxpY2UtcHc="}, status: 401, inWWW: `Bearer realm="tokenwarden"`},
		// HTTP trims the field value: "Bearer " arrives as "Bearer", no token.
		{name: "empty bearer", auth: []string{"Bearer "}, status: 401, inWWW: `Bearer realm="tokenwarden"`},
		{name: "malformed bearer", auth: []string{"Bearer a b"}, status: 401, inWWW: `error="invalid_request", error_description="malformed bearer token"`},
		{name: "two tokens", auth: []string{"Bearer " + full, "Bearer " + full}, status: 401, inWWW: `error="invalid_request"`},
		{name: "garbage", auth: []string{"Bearer abc.def.ghi"}, status: 401, inWWW: `error="invalid_token"`},
		{name: "tampered", auth: []string{"Bearer " + tamper(full)}, status: 401, inWWW: `error="invalid_token"`},
		{name: "wrong audience", auth: []string{"Bearer " + other}, status: 401, inWWW: `error="invalid_token"`},
		{name: "oversized", auth: []string{"Bearer " + strings.Repeat("a", 9000)}, status: 401, inWWW: `error="invalid_token"`},
		{name: "insufficient scope", auth: []string{"Bearer " + readOnly}, scopes: []string{"write"}, status: 403,
			inWWW: `error="insufficient_scope", error_description="the token lacks a required scope", scope="write"`},
		{name: "insufficient of several", auth: []string{"Bearer " + readOnly}, scopes: []string{"read write admin"}, status: 403,
			inWWW: `scope="write admin"`},
		{name: "unrequestable scope", auth: []string{"Bearer " + full}, scopes: []string{`a"b`}, status: 403,
			inWWW: `scope="invalid-scope-requested"`},
	}
	for name, v := range verifiers(sc) {
		for _, tc := range cases {
			t.Run(name+"/"+tc.name, func(t *testing.T) {
				// What the sidecar itself answers.
				q := ""
				if len(tc.scopes) > 0 {
					q = "?" + url.Values{"scope": {strings.Join(tc.scopes, " ")}}.Encode()
				}
				sreq, _ := http.NewRequest("GET", sc.URL+"/verify"+q, nil)
				sreq.Header["Authorization"] = tc.auth
				sresp, err := http.DefaultClient.Do(sreq)
				if err != nil {
					t.Fatal(err)
				}
				_ = sresp.Body.Close()

				var got *client.Identity
				app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					got, _ = client.IdentityFrom(r.Context())
					w.WriteHeader(200)
				})
				h := client.Middleware(v, client.WithScopes(tc.scopes...))(app)
				req := httptest.NewRequest("GET", "/api/orders", nil)
				req.Header["Authorization"] = tc.auth
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)

				if rec.Code != tc.status || sresp.StatusCode != tc.status {
					t.Fatalf("middleware %d, sidecar %d, want %d (%s)", rec.Code, sresp.StatusCode, tc.status, rec.Body)
				}
				mw, sw := rec.Header().Values("WWW-Authenticate"), sresp.Header.Values("WWW-Authenticate")
				if strings.Join(mw, "|") != strings.Join(sw, "|") {
					t.Fatalf("WWW-Authenticate differs:\nmiddleware %q\nsidecar    %q", mw, sw)
				}
				if tc.status == 200 {
					if got == nil || got.Subject != tc.subject || got.Subject != sresp.Header.Get(sidecar.HeaderSubject) ||
						got.TokenID != sresp.Header.Get(sidecar.HeaderTokenID) {
						t.Fatalf("identity %+v, sidecar headers %v", got, sresp.Header)
					}
					return
				}
				if got != nil {
					t.Fatal("the app ran for a refused request")
				}
				if len(mw) != 1 || !strings.Contains(mw[0], tc.inWWW) {
					t.Fatalf("WWW-Authenticate %q lacks %q", mw, tc.inWWW)
				}
				if rec.Header().Get("Cache-Control") != "no-store" {
					t.Fatal("error answer without Cache-Control: no-store")
				}
				var body map[string]string
				if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body["error"] == "" {
					t.Fatalf("body %q", rec.Body)
				}
			})
		}
	}
}

// TestInProcessSameErrors checks that the in-process adapter and the
// client give identical errors and identities, field by field, including
// for an expired token (a sidecar whose clock is an hour ahead).
func TestInProcessSameErrors(t *testing.T) {
	s := newSystem(t)
	now := s.sidecar()
	later := s.sidecar(sidecar.WithClock(func() time.Time { return time.Now().Add(time.Hour) }))
	full, readOnly := s.login("read write"), s.login("read")
	ctx := context.Background()
	for _, sc := range []*runningSidecar{now, later} {
		for _, tc := range []struct {
			tok    string
			scopes []string
		}{
			{full, nil}, {full, []string{"write"}}, {readOnly, []string{"write"}}, {readOnly, []string{"read write x"}},
			{"", nil}, {"a.b.c", nil}, {tamper(full), nil}, {"x\ty", nil}, {strings.Repeat("a", 9000), nil},
		} {
			hid, herr := client.New(sc.URL).VerifyToken(ctx, tc.tok, tc.scopes...)
			pid, perr := client.InProcess(sc.Verifier()).VerifyToken(ctx, tc.tok, tc.scopes...)
			if fmt.Sprintf("%+v", hid) != fmt.Sprintf("%+v", pid) || fmt.Sprint(herr) != fmt.Sprint(perr) {
				t.Errorf("token %.20q scopes %q:\nhttp       %+v %v\nin-process %+v %v", tc.tok, tc.scopes, hid, herr, pid, perr)
			}
			if sc == later && tc.tok == full {
				var e *client.Error
				if !errors.As(herr, &e) || e.Code != client.CodeInvalidToken || !strings.Contains(e.Description, "expired") {
					t.Errorf("expired token: %v", herr)
				}
			}
		}
	}
}

// TestFailClosed: when the sidecar cannot be asked or answers something
// that is not a verdict, the client says ErrUnavailable and the
// middleware answers 503 without ever calling the app.
func TestFailClosed(t *testing.T) {
	s := newSystem(t)
	sc := s.sidecar()
	tok := s.login("read write")

	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	_ = ln.Close()
	fake := func(h http.HandlerFunc) string {
		hs := httptest.NewServer(h)
		t.Cleanup(hs.Close)
		return hs.URL
	}
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })

	cases := []struct {
		name     string
		v        client.Verifier
		scopes   []string
		deadline bool
	}{
		{name: "connection refused", v: client.New(dead)},
		{name: "unix socket missing", v: client.New("unix:///nonexistent/tokenwarden.sock")},
		{name: "sidecar 500", v: client.New(fake(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) }))},
		{name: "sidecar 503 not ready", v: client.New(fake(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(503) }))},
		{name: "wrong path prefix 404", v: client.New(sc.URL + "/nothing-here")},
		{name: "impostor says 200 for anyone", v: client.New(fake(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(200) }))},
		{name: "200 ignoring the required scope", scopes: []string{"admin"}, v: client.New(fake(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set(sidecar.HeaderSubject, "alice")
			w.Header().Set(sidecar.HeaderScope, "read")
			w.Header().Set(sidecar.HeaderExpiresAt, "4102444800")
		}))},
		{name: "bad expires-at", v: client.New(fake(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set(sidecar.HeaderSubject, "alice")
			w.Header().Set(sidecar.HeaderExpiresAt, "soon")
		}))},
		{name: "timeout", deadline: true, v: client.New(fake(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}), client.WithTimeout(100*time.Millisecond))},
		{name: "not an address", v: client.New("ftp://127.0.0.1:8181")},
		{name: "empty address", v: client.New("")},
		{name: "nil in-process verifier", v: client.InProcess(nil)},
		{name: "nil verifier", v: nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.v != nil {
				_, err := tc.v.VerifyToken(context.Background(), tok, tc.scopes...)
				var e *client.Error
				if !errors.Is(err, client.ErrUnavailable) || errors.As(err, &e) || errors.Is(err, client.ErrNoToken) {
					t.Fatalf("want ErrUnavailable and not a verdict, got %v", err)
				}
				if tc.deadline && !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("timeout not distinguishable: %v", err)
				}
			}
			called := false
			h := client.Middleware(tc.v, client.WithScopes(tc.scopes...))(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { called = true }))
			req := httptest.NewRequest("GET", "/", nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if called || rec.Code != http.StatusServiceUnavailable {
				t.Fatalf("called=%v status=%d, want 503 and the app untouched", called, rec.Code)
			}
			if rec.Header().Get("WWW-Authenticate") != "" || rec.Header().Get("Retry-After") == "" {
				t.Fatalf("503 headers %v", rec.Header())
			}
		})
	}
}

// TestUnixSocket: both spellings of a socket address reach the sidecar.
func TestUnixSocket(t *testing.T) {
	s := newSystem(t)
	sc := s.sidecar()
	tok := s.login("read")
	for _, addr := range []string{"unix://" + sc.Socket, "unix:" + sc.Socket} {
		id, err := client.New(addr).Verify(context.Background(), "Bearer "+tok, "read")
		if err != nil || id.Subject != "alice" {
			t.Fatalf("%s: %+v %v", addr, id, err)
		}
	}
}

// TestConnectionReuse: a client keeps its connections to the sidecar: a
// hundred sequential verifications use one, and parallel ones no more
// connections than there are callers.
func TestConnectionReuse(t *testing.T) {
	s := newSystem(t)
	sc := s.sidecar()
	tok := s.login("read")
	waitOK(t, sc.URL+"/readyz") // its connection is counted too
	base := len(sc.conns)
	c := client.New(sc.URL)
	ctx := context.Background()
	for range 100 {
		if _, err := c.VerifyToken(ctx, tok, "read"); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(sc.conns) - base; n != 1 {
		t.Fatalf("100 sequential verifications opened %d connections", n)
	}
	// Refusals must not cost a connection either.
	for range 20 {
		if _, err := c.VerifyToken(ctx, tok, "write"); err == nil {
			t.Fatal("accepted without scope")
		}
	}
	if n := len(sc.conns) - base; n != 1 {
		t.Fatalf("refusals opened connections: %d", n)
	}

	const workers = 8
	var wg sync.WaitGroup
	h := client.Middleware(c, client.WithScopes("read"))(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if id, ok := client.IdentityFrom(r.Context()); !ok || id.Subject != "alice" {
			t.Error("no identity")
		}
	}))
	for range workers {
		wg.Go(func() {
			for range 50 {
				req := httptest.NewRequest("GET", "/", nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != 200 {
					t.Errorf("status %d", rec.Code)
				}
			}
		})
	}
	wg.Wait()
	// A few more than one per worker can happen when a connection returns
	// to the pool while a dial for a waiting request is in flight.
	if n := len(sc.conns) - base; n > 2*workers+1 {
		t.Fatalf("%d workers opened %d connections", workers, n)
	}
}

// TestCustomErrorHandler: WithErrorHandler takes over the answer, with
// Status and WWWAuthenticate giving the default semantics.
func TestCustomErrorHandler(t *testing.T) {
	var seen error
	h := client.Middleware(client.InProcess(nil), client.WithErrorHandler(func(w http.ResponseWriter, _ *http.Request, err error) {
		seen = err
		if c := client.WWWAuthenticate(err); c != "" {
			w.Header().Set("WWW-Authenticate", c)
		}
		w.WriteHeader(client.Status(err))
	}))(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Fatal("app called") }))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != 401 || rec.Header().Get("WWW-Authenticate") != `Bearer realm="tokenwarden"` || !errors.Is(seen, client.ErrNoToken) {
		t.Fatalf("%d %v %v", rec.Code, rec.Header(), seen)
	}
	if _, ok := client.IdentityFrom(context.Background()); ok {
		t.Fatal("identity in an empty context")
	}
	id := &client.Identity{Subject: "x"}
	if got, ok := client.IdentityFrom(client.ContextWithIdentity(context.Background(), id)); !ok || got != id {
		t.Fatal("ContextWithIdentity")
	}
}
