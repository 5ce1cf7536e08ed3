package sidecar

import (
	"bufio"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/jwks"
)

// Fuzz targets for the rest of what the sidecar decodes from requests:
// the /introspect form (RFC 7662) and the request target of /verify (path
// and ?scope= query; FuzzVerifyRequest covers the headers). Seeds are in
// testdata/fuzz/<Name>/, written by TestWriteSidecarFuzzSeeds; the
// placeholder @TOKEN@ stands for a genuine token (scope "read") made when
// the target starts.

const phToken = "@TOKEN@"

// fuzzSidecar is the HTTP API of a sidecar holding one signed bundle from
// its disk cache, and a genuine token for it.
func fuzzSidecar(tb testing.TB) (http.Handler, string) {
	tb.Helper()
	sc, genuine := fuzzSidecarOf(tb)
	return sc.Handler(), genuine
}

// fuzzSidecarOf is the sidecar of fuzzSidecar itself.
func fuzzSidecarOf(tb testing.TB) (*Sidecar, string) {
	tb.Helper()
	dist := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	ring, err := jwks.NewRing(time.Now(), jwks.DefaultPolicy())
	if err != nil {
		tb.Fatal(err)
	}
	ks, _ := ring.KeySet()
	doc, _ := jwks.Document(ks)
	bundle, _ := jwks.SignBundle(&jwks.Bundle{Sequence: 1, IssuedAt: time.Now().Unix(), JWKS: doc}, dist)
	dir := tb.TempDir()
	if err := os.WriteFile(filepath.Join(dir, jwks.CacheFileName), bundle, 0o600); err != nil {
		tb.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Issuer, cfg.Audience, cfg.CacheDir = testIssuer, []string{testAudience}, dir
	cfg.DistributionPublicKeys = []string{base64.StdEncoding.EncodeToString(dist.Public().(ed25519.PublicKey))}
	sc, err := New(cfg, WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		tb.Fatal(err)
	}
	now := time.Now()
	genuine, err := ring.Active().Sign(&jwks.Claims{Issuer: testIssuer, Subject: "alice", Audience: jwks.Audience{testAudience},
		Expiry: now.Add(time.Hour).Unix(), IssuedAt: now.Unix(), ID: "j1", ClientID: "c", Scope: "read", SessionID: "s1"})
	if err != nil {
		tb.Fatal(err)
	}
	return sc, genuine
}

// peers are the remote addresses a fuzzed byte picks from: loopback,
// Unix socket, and addresses that must not get an answer.
var peers = []struct {
	addr     string
	loopback bool
}{
	{"127.0.0.1:5000", true},
	{"[::1]:5000", true},
	{"@", true},
	{"", true},
	{"[::ffff:127.0.0.1]:5000", true},
	{"127.0.0.6:5000", false},
	{"10.1.2.3:5000", false},
	{"[fe80::1%eth0]:5000", false},
	{"127.0.0.1", false},
}

// FuzzIntrospect: POST /introspect with a fuzzed method, content type,
// body and peer never panics, answers only 200, 400, 403 or 405 with a
// JSON body, serves only loopback and Unix-socket peers, and reports
// active only for the one genuine token.
func FuzzIntrospect(f *testing.F) {
	h, genuine := fuzzSidecar(f)
	f.Fuzz(func(t *testing.T, method, contentType string, body []byte, peer uint8) {
		body = []byte(strings.ReplaceAll(string(body), phToken, genuine))
		if strings.ContainsFunc(contentType, func(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f }) {
			return
		}
		req, err := http.NewRequest(method, "http://127.0.0.1/introspect", strings.NewReader(string(body)))
		if err != nil {
			return
		}
		p := peers[int(peer)%len(peers)]
		req.RemoteAddr = p.addr
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" || rec.Header().Get("Cache-Control") != "no-store" {
			t.Fatalf("%d with headers %v", rec.Code, rec.Header())
		}
		var resp map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
			t.Fatalf("%d with body %q", rec.Code, rec.Body)
		}
		switch rec.Code {
		case http.StatusMethodNotAllowed:
			if req.Method == http.MethodPost {
				t.Fatal("405 for POST")
			}
		case http.StatusForbidden:
			if p.loopback || req.Method != http.MethodPost {
				t.Fatalf("403 for %s from %q", req.Method, p.addr)
			}
		case http.StatusBadRequest, http.StatusOK:
			if !p.loopback || req.Method != http.MethodPost {
				t.Fatalf("%d for %s from %q", rec.Code, req.Method, p.addr)
			}
			if rec.Code == http.StatusBadRequest {
				if resp["error"] != "invalid_request" {
					t.Fatalf("400 body %v", resp)
				}
				return
			}
			active, _ := resp["active"].(bool)
			if !active {
				if len(resp) != 1 {
					t.Fatalf("inactive answer with claims: %v", resp)
				}
				return
			}
			form, err := url.ParseQuery(string(body))
			if err != nil || form.Get("token") != genuine || !strings.HasPrefix(contentType, "application/x-www-form-urlencoded") {
				t.Fatalf("active for body %q", body)
			}
			if resp["sub"] != "alice" || resp["jti"] != "j1" || resp["token_type"] != "Bearer" || resp["iss"] != testIssuer {
				t.Fatalf("active answer %v", resp)
			}
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
	})
}

// FuzzVerifyTarget: /verify with a fuzzed method and request target (path
// and ?scope=), with or without the genuine token, never panics, answers
// only 200, 401 or 403, and decides required scopes from the query as
// url.ParseQuery reads it.
func FuzzVerifyTarget(f *testing.F) {
	h, genuine := fuzzSidecar(f)
	f.Fuzz(func(t *testing.T, method, target string, withToken bool) {
		if !strings.HasPrefix(target, "/verify") {
			return
		}
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(method + " " + target + " HTTP/1.1\r\nHost: sidecar\r\n\r\n")))
		if err != nil {
			return // not a request an HTTP server would hand the handler
		}
		if p := req.URL.Path; p != "/verify" && !strings.HasPrefix(p, "/verify/") {
			return // another route
		}
		req.RemoteAddr = "127.0.0.1:5000"
		if withToken {
			req.Header.Set("Authorization", "Bearer "+genuine)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		q, qerr := url.ParseQuery(req.URL.RawQuery)
		var required []string
		for _, v := range q["scope"] {
			required = append(required, strings.Fields(v)...)
		}
		wantOK := withToken && !slices.ContainsFunc(required, func(s string) bool { return s != "read" })
		switch rec.Code {
		case http.StatusOK:
			if !withToken || rec.Header().Get(HeaderSubject) != "alice" || rec.Header().Get(HeaderExpiresAt) == "" {
				t.Fatalf("200 for %q (token %v): %v", target, withToken, rec.Header())
			}
			if _, err := strconv.ParseInt(rec.Header().Get(HeaderExpiresAt), 10, 64); err != nil {
				t.Fatal(err)
			}
			if !wantOK && qerr == nil {
				t.Fatalf("200 for %q though it requires %q", target, required)
			}
		case http.StatusForbidden:
			if !withToken || (wantOK && qerr == nil) {
				t.Fatalf("403 for %q (token %v, required %q)", target, withToken, required)
			}
			if !strings.Contains(rec.Header().Get("WWW-Authenticate"), `error="insufficient_scope"`) {
				t.Fatalf("403 challenge %q", rec.Header().Get("WWW-Authenticate"))
			}
		case http.StatusUnauthorized:
			if withToken {
				t.Fatalf("genuine token refused for %q: %v", target, rec.Header())
			}
		default:
			t.Fatalf("status %d for %s %q", rec.Code, method, target)
		}
	})
}

// TestWriteSidecarFuzzSeeds writes the seed corpora of the targets above.
// It runs only with TOKENWARDEN_WRITE_FUZZ_SEEDS=1.
func TestWriteSidecarFuzzSeeds(t *testing.T) {
	if os.Getenv("TOKENWARDEN_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set TOKENWARDEN_WRITE_FUZZ_SEEDS=1 to rewrite the seed corpora")
	}
	q := strconv.Quote
	write := func(target string, seeds map[string]string) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		for name, content := range seeds {
			if err := os.WriteFile(filepath.Join(dir, name), []byte("go test fuzz v1\n"+content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	const form = "application/x-www-form-urlencoded"
	in := func(method, ct, body string, peer int) string {
		return "string(" + q(method) + ")\nstring(" + q(ct) + ")\n[]byte(" + q(body) + ")\nuint8(" + strconv.Itoa(peer) + ")\n"
	}
	write("FuzzIntrospect", map[string]string{
		"active":              in("POST", form, "token="+phToken, 0),
		"active-ipv6":         in("POST", form+"; charset=utf-8", "token="+phToken+"&token_type_hint=access_token", 1),
		"active-unix":         in("POST", form, "token="+phToken, 2),
		"active-mapped-v4":    in("POST", form, "token="+phToken, 4),
		"mesh-peer":           in("POST", form, "token="+phToken, 5),
		"remote-peer":         in("POST", form, "token="+phToken, 6),
		"zone-peer":           in("POST", form, "token="+phToken, 7),
		"peer-without-port":   in("POST", form, "token="+phToken, 8),
		"tampered":            in("POST", form, "token="+phToken+"x", 0),
		"garbage-token":       in("POST", form, "token=a.b.c", 0),
		"token-twice":         in("POST", form, "token="+phToken+"&token="+phToken, 0),
		"token-missing":       in("POST", form, "token_type_hint=access_token", 0),
		"bad-escape":          in("POST", form, "token=%zz", 0),
		"json-body":           in("POST", "application/json", `{"token":"`+phToken+`"}`, 0),
		"prefix-content-type": in("POST", form+"x", "token="+phToken, 0),
		"multipart":           in("POST", "multipart/form-data; boundary=b", "--b\r\nContent-Disposition: form-data; name=\"token\"\r\n\r\n"+phToken+"\r\n--b--\r\n", 0),
		"too-large":           in("POST", form, "token="+strings.Repeat("a", 10<<10), 0),
		"get":                 in("GET", form, "token="+phToken, 0),
		"empty":               in("POST", "", "", 0),
	})
	tgt := func(method, target string, tok bool) string {
		return "string(" + q(method) + ")\nstring(" + q(target) + ")\nbool(" + strconv.FormatBool(tok) + ")\n"
	}
	write("FuzzVerifyTarget", map[string]string{
		"plain":               tgt("GET", "/verify", true),
		"scope-held":          tgt("GET", "/verify?scope=read", true),
		"scope-missing":       tgt("GET", "/verify?scope=read+write", true),
		"scope-repeated":      tgt("GET", "/verify?scope=read&scope=admin", true),
		"scope-empty":         tgt("GET", "/verify?scope=", true),
		"scope-tab":           tgt("GET", "/verify?scope=read%09write", true),
		"scope-bad-escape":    tgt("GET", "/verify?scope=%zz", true),
		"scope-semicolon":     tgt("GET", "/verify?scope=read;write", true),
		"subpath-unclean":     tgt("POST", "/verify/a//b/../c?x=1", true),
		"subpath-no-token":    tgt("DELETE", "/verify/api", false),
		"absolute-form":       tgt("GET", "/verify?scope=read&scope=read", false),
		"percent-path":        tgt("GET", "/verify/%2e%2e/admin", true),
		"no-token-with-scope": tgt("GET", "/verify?scope=write", false),
	})
}

// TestRepeatedScopeRequirementsFailClosed: a repeated ?scope= parameter or
// X-Required-Scope header requires every value, not just the first.
func TestRepeatedScopeRequirementsFailClosed(t *testing.T) {
	h, genuine := fuzzSidecar(t)
	for _, tc := range []struct {
		target  string
		headers []string
		want    int
	}{
		{"/verify?scope=read", nil, 200},
		{"/verify?scope=read&scope=read", []string{"read", "read"}, 200},
		{"/verify?scope=read&scope=admin", nil, 403},
		{"/verify", []string{"read", "admin"}, 403},
		{"/verify?scope=read", []string{"read", "admin"}, 403},
	} {
		req := httptest.NewRequest("GET", tc.target, nil)
		req.Header.Set("Authorization", "Bearer "+genuine)
		for _, v := range tc.headers {
			req.Header.Add(HeaderRequiredScope, v)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.want {
			t.Errorf("%s %q: %d, want %d", tc.target, tc.headers, rec.Code, tc.want)
		}
	}
}
