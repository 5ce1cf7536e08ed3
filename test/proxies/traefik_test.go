package proxies

import (
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
)

const exampleTraefik = "../../examples/traefik/dynamic.yml"

// forwardAuth is one forwardAuth middleware of the example.
type forwardAuth struct {
	address             string
	authRequestHeaders  []string
	authResponseHeaders []string
	trustForwardHeader  bool
}

func loadTraefikExample(t *testing.T) map[string]forwardAuth {
	t.Helper()
	cfg := loadYAML(t, exampleTraefik)
	out := map[string]forwardAuth{}
	for name, m := range dig(t, cfg, "http", "middlewares").(map[string]any) {
		fa := dig(t, m, "forwardAuth")
		out[name] = forwardAuth{
			address:             dig(t, fa, "address").(string),
			authRequestHeaders:  strs(t, dig(t, fa, "authRequestHeaders")),
			authResponseHeaders: strs(t, dig(t, fa, "authResponseHeaders")),
			trustForwardHeader:  dig(t, fa, "trustForwardHeader").(bool),
		}
	}
	// Every route to the app goes through a forwardAuth, but the health check.
	for name, r := range dig(t, cfg, "http", "routers").(map[string]any) {
		mws, _ := r.(map[string]any)["middlewares"].([]any)
		if name != "healthz" && len(mws) == 0 {
			t.Errorf("%s: router %s has no middleware", exampleTraefik, name)
		}
		for _, mw := range mws {
			if _, ok := out[mw.(string)]; !ok {
				t.Errorf("%s: router %s uses unknown middleware %v", exampleTraefik, name, mw)
			}
		}
	}
	for name, fa := range out {
		if !strings.HasPrefix(fa.address, "http://127.0.0.1:8181/verify") {
			t.Errorf("%s: %s address %q is not the sidecar's /verify", exampleTraefik, name, fa.address)
		}
		if !slices.Equal(fa.authResponseHeaders, authHeaders) {
			t.Errorf("%s: %s authResponseHeaders %q, want %q", exampleTraefik, name, fa.authResponseHeaders, authHeaders)
		}
		if !slices.Equal(fa.authRequestHeaders, []string{"Authorization"}) || fa.trustForwardHeader {
			t.Errorf("%s: %s must send only Authorization and not trust X-Forwarded-*", exampleTraefik, name)
		}
	}
	return out
}

// request is what Traefik's forwardAuth sends for the client request
// orig: GET to the address (the original method with
// preserveRequestMethod), no body; the client's headers minus hop-by-hop
// ones, filtered by authRequestHeaders; and X-Forwarded-For, -Method,
// -Proto, -Host and -Uri describing orig (the client's own values only
// with trustForwardHeader). Traefik is Go: header names are canonical.
func (fa forwardAuth) request(t *testing.T, sidecarURL, method string, orig *http.Request) *http.Request {
	t.Helper()
	addr := strings.Replace(fa.address, "http://127.0.0.1:8181", sidecarURL, 1)
	req, err := http.NewRequest(method, addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range orig.Header {
		if k == "Connection" || k == "Keep-Alive" || k == "Te" || k == "Upgrade" {
			continue
		}
		if len(fa.authRequestHeaders) > 0 && !slices.Contains(fa.authRequestHeaders, k) {
			continue
		}
		req.Header[k] = append([]string(nil), v...)
	}
	fwd := map[string]string{"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Method": orig.Method, "X-Forwarded-Proto": "https",
		"X-Forwarded-Host": orig.Host, "X-Forwarded-Uri": orig.URL.RequestURI()}
	for k, v := range fwd {
		if got := orig.Header.Get(k); fa.trustForwardHeader && got != "" {
			v = got
		}
		req.Header.Set(k, v)
	}
	return req
}

// TestTraefikForwardAuthRequests replays, against a real sidecar, the
// requests Traefik sends with examples/traefik/dynamic.yml (no Traefik
// binary in Debian). Traefik lets the request through on any 2xx, first
// deleting the client's authResponseHeaders and then copying the
// sidecar's; on any other status it answers the client with the sidecar's
// status, headers and body.
func TestTraefikForwardAuthRequests(t *testing.T) {
	mws := loadTraefikExample(t)
	anyToken, write := mws["tokenwarden"], mws["tokenwarden-write"]
	if anyToken.address != "http://127.0.0.1:8181/verify" || write.address != "http://127.0.0.1:8181/verify?scope=write" {
		t.Fatalf("example changed: %+v; update this test", mws)
	}
	s := newSystem(t)
	sc := s.sidecar()
	full := s.login("read write")
	readOnly := s.login("read")

	// A client request, with headers a client might send, including a
	// forged identity and forwarding headers.
	orig := func(method, target, auth string) *http.Request {
		r, _ := http.NewRequest(method, target, nil)
		r.Header = http.Header{"Accept": {"application/json"}, "User-Agent": {"curl/8.5.0"}, "Cookie": {"session=abc"},
			"Connection": {"keep-alive"}, "X-Auth-Subject": {"admin"}, "X-Auth-Scope": {"tokenwarden:admin"},
			"X-Forwarded-Uri": {"/healthz"}, "X-Required-Scope": {""}}
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		return r
	}
	send := func(t *testing.T, req *http.Request) *http.Response {
		t.Helper()
		// Traefik's client does not follow redirects.
		c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp
	}
	page := "https://shop.example.com/api/orders?x=1"

	// As configured, and as Traefik would send with no authRequestHeaders
	// (every client header) and trustForwardHeader: true.
	open := anyToken
	open.authRequestHeaders, open.trustForwardHeader = nil, true
	for name, fa := range map[string]forwardAuth{"example": anyToken, "all headers, trusted forwards": open} {
		t.Run(name, func(t *testing.T) {
			checkVerdict(t, send(t, fa.request(t, sc, "GET", orig("POST", page, "Bearer "+full))), 200, "alice")
			resp := send(t, fa.request(t, sc, "GET", orig("POST", page, "")))
			checkVerdict(t, resp, 401, "")
			if got := resp.Header.Get("WWW-Authenticate"); got != `Bearer realm="tokenwarden"` {
				t.Fatalf("WWW-Authenticate %q", got)
			}
			checkVerdict(t, send(t, fa.request(t, sc, "GET", orig("GET", page, "Bearer "+tamper(full)))), 401, "", `error="invalid_token"`)
			checkVerdict(t, send(t, fa.request(t, sc, "GET", orig("GET", page, "Basic YWxpY2U6YWxpY2UtcHc="))), 401, "")
			// preserveRequestMethod: true sends the original method.
			for _, m := range []string{"POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"} {
				checkVerdict(t, send(t, fa.request(t, sc, m, orig(m, page, "Bearer "+full))), 200, "alice")
			}
		})
	}
	t.Run("scope in the address", func(t *testing.T) {
		checkVerdict(t, send(t, write.request(t, sc, "GET", orig("POST", "https://shop.example.com/orders/1", "Bearer "+readOnly))), 403, "",
			`error="insufficient_scope"`, `scope="write"`)
		checkVerdict(t, send(t, write.request(t, sc, "GET", orig("POST", "https://shop.example.com/orders/1", "Bearer "+full))), 200, "alice")
		// The client's query is not the address's: it cannot lift the scope.
		checkVerdict(t, send(t, write.request(t, sc, "GET", orig("POST", "https://shop.example.com/orders/1?scope=", "Bearer "+readOnly))), 403, "")
	})
}
