package proxies

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
)

const exampleEnvoy = "../../examples/envoy/envoy.yaml"

// envoyExtAuthz is what the request shape depends on in
// examples/envoy/envoy.yaml.
type envoyExtAuthz struct {
	pathPrefix   string
	headersToAdd []string // "name: value"
}

// loadEnvoyExample reads the example's ext_authz filter and checks the
// settings the integration relies on: fail closed with 503, the sidecar
// cluster on the sidecar's default port, the identity headers copied
// upstream and the challenge copied to the client, normalized paths.
func loadEnvoyExample(t *testing.T) envoyExtAuthz {
	t.Helper()
	cfg := loadYAML(t, exampleEnvoy)
	hcm := dig(t, cfg, "static_resources", "listeners", 0, "filter_chains", 0, "filters",
		[2]string{"name", "envoy.filters.network.http_connection_manager"}, "typed_config")
	for _, k := range []string{"normalize_path", "merge_slashes"} {
		if dig(t, hcm, k) != true {
			t.Errorf("%s: http_connection_manager %s is not true", exampleEnvoy, k)
		}
	}
	filters := dig(t, hcm, "http_filters").([]any)
	if last := dig(t, filters[len(filters)-1], "name"); last != "envoy.filters.http.router" {
		t.Errorf("%s: last HTTP filter is %v, not the router", exampleEnvoy, last)
	}
	ea := dig(t, filters, [2]string{"name", "envoy.filters.http.ext_authz"}, "typed_config")
	if dig(t, ea, "@type") != "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz" {
		t.Errorf("%s: ext_authz @type", exampleEnvoy)
	}
	if dig(t, ea, "failure_mode_allow") != false || dig(t, ea, "status_on_error", "code") != "ServiceUnavailable" {
		t.Errorf("%s: ext_authz must fail closed with 503", exampleEnvoy)
	}
	if got := fmt.Sprint(dig(t, ea, "allowed_headers", "patterns", 0, "exact")); got != "authorization" {
		t.Errorf("%s: allowed_headers %q", exampleEnvoy, got)
	}
	hs := dig(t, ea, "http_service")
	cluster := dig(t, hs, "server_uri", "cluster").(string)
	port := dig(t, cfg, "static_resources", "clusters", [2]string{"name", cluster}, "load_assignment", "endpoints", 0,
		"lb_endpoints", 0, "endpoint", "address", "socket_address", "port_value")
	if fmt.Sprint(port) != "8181" || dig(t, hs, "server_uri", "uri") != "http://127.0.0.1:8181" {
		t.Errorf("%s: sidecar cluster %s is not the sidecar's default 127.0.0.1:8181", exampleEnvoy, cluster)
	}
	var upstream []string
	for _, p := range dig(t, hs, "authorization_response", "allowed_upstream_headers", "patterns").([]any) {
		upstream = append(upstream, fmt.Sprint(dig(t, p, "exact")))
	}
	if strings.Join(upstream, " ") != strings.ToLower(strings.Join(authHeaders, " ")) {
		t.Errorf("%s: allowed_upstream_headers %q, want the sidecar's %q", exampleEnvoy, upstream, authHeaders)
	}
	var client []string
	for _, p := range dig(t, hs, "authorization_response", "allowed_client_headers", "patterns").([]any) {
		client = append(client, fmt.Sprint(dig(t, p, "exact")))
	}
	if !strings.Contains(strings.Join(client, " "), "www-authenticate") {
		t.Errorf("%s: allowed_client_headers %q lack www-authenticate", exampleEnvoy, client)
	}
	out := envoyExtAuthz{pathPrefix: dig(t, hs, "path_prefix").(string)}
	for _, h := range dig(t, hs, "authorization_request", "headers_to_add").([]any) {
		out.headersToAdd = append(out.headersToAdd, fmt.Sprintf("%s: %s", dig(t, h, "key"), dig(t, h, "value")))
	}
	return out
}

// request is what Envoy's ext_authz filter, configured as the example,
// sends to the HTTP authorization service for a client request: the
// original method; path_prefix followed by the original path and query;
// the original Host; Content-Length: 0 and no body; the always-included
// Authorization (the example's allowed_headers); headers_to_add; and what
// Envoy's own HTTP client adds (x-envoy-*, x-forwarded-*, x-request-id).
// Envoy writes HTTP/1.1 header names in lower case.
func (e envoyExtAuthz) request(method, pathAndQuery, authorization string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s%s HTTP/1.1\r\n", method, e.pathPrefix, pathAndQuery)
	b.WriteString("host: shop.example.com\r\n")
	if authorization != "" {
		fmt.Fprintf(&b, "authorization: %s\r\n", authorization)
	}
	b.WriteString("content-length: 0\r\n")
	b.WriteString("x-forwarded-for: 203.0.113.7\r\n")
	b.WriteString("x-forwarded-proto: https\r\n")
	b.WriteString("x-request-id: 6f1d3c1e-0b7e-4a39-9a4e-2f8f2c1d7b10\r\n")
	b.WriteString("x-envoy-expected-rq-timeout-ms: 250\r\n")
	b.WriteString("x-envoy-internal: true\r\n")
	for _, h := range append(append([]string(nil), e.headersToAdd...), extra...) {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// TestEnvoyExtAuthzRequests replays, against a real sidecar, the requests
// Envoy sends with examples/envoy/envoy.yaml (no Envoy binary in Debian).
// Envoy lets the client request through only on 200, copying the
// allowed_upstream_headers (x-auth-*) onto it and replacing the client's;
// on any other status it answers the client with the sidecar's status and
// allowed_client_headers (WWW-Authenticate).
func TestEnvoyExtAuthzRequests(t *testing.T) {
	envoy := loadEnvoyExample(t)
	if envoy.pathPrefix != "/verify" || len(envoy.headersToAdd) != 1 || envoy.headersToAdd[0] != "x-required-scope: read" {
		t.Fatalf("example changed: path_prefix %q, headers_to_add %q; update this test", envoy.pathPrefix, envoy.headersToAdd)
	}
	s := newSystem(t)
	addr := strings.TrimPrefix(s.sidecar(), "http://")
	full := s.login("read write")
	writeOnly := s.token("app", "app-secret", url.Values{"grant_type": {"client_credentials"}, "scope": {"write"}})

	for _, method := range []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} {
		t.Run("valid "+method, func(t *testing.T) {
			checkVerdict(t, rawRequest(t, addr, envoy.request(method, "/api/orders?x=1&y=%2F", "Bearer "+full)), 200, "alice")
		})
	}
	for _, p := range []string{"/", "/api/orders/42", "/api/a%20b", "/api/orders?q=" + url.QueryEscape("a b&c"), "/verify"} {
		t.Run("path "+p, func(t *testing.T) {
			checkVerdict(t, rawRequest(t, addr, envoy.request("GET", p, "Bearer "+full)), 200, "alice")
		})
	}
	t.Run("no token", func(t *testing.T) {
		resp := rawRequest(t, addr, envoy.request("POST", "/api/orders", ""))
		checkVerdict(t, resp, 401, "")
		if got := resp.Header.Get("WWW-Authenticate"); got != `Bearer realm="tokenwarden"` {
			t.Fatalf("WWW-Authenticate %q", got)
		}
	})
	t.Run("invalid token", func(t *testing.T) {
		checkVerdict(t, rawRequest(t, addr, envoy.request("GET", "/api/orders", "Bearer "+tamper(full))), 401, "",
			`error="invalid_token"`, `error_description="`)
	})
	t.Run("scope of headers_to_add missing", func(t *testing.T) {
		checkVerdict(t, rawRequest(t, addr, envoy.request("POST", "/api/orders", "Bearer "+writeOnly)), 403, "",
			`error="insufficient_scope"`, `scope="read"`)
	})
	t.Run("the client's query cannot lift the configured scope", func(t *testing.T) {
		// The client's query lands on /verify, so a client may add
		// ?scope=…: the sidecar adds it to x-required-scope, never replaces.
		for _, q := range []string{"?scope=", "?scope=write", "?scope=&scope=write"} {
			checkVerdict(t, rawRequest(t, addr, envoy.request("POST", "/api/orders"+q, "Bearer "+writeOnly)), 403, "",
				`error="insufficient_scope"`)
		}
		checkVerdict(t, rawRequest(t, addr, envoy.request("GET", "/api?scope=admin", "Bearer "+full)), 403, "", `scope="admin"`)
	})
	t.Run("client-supplied x-auth headers are not echoed", func(t *testing.T) {
		checkVerdict(t, rawRequest(t, addr, envoy.request("GET", "/", "Bearer "+full, "x-auth-subject: admin", "x-auth-scope: tokenwarden:admin")),
			200, "alice")
	})
	t.Run("unnormalized paths fail closed", func(t *testing.T) {
		// The example normalizes paths first (normalize_path,
		// merge_slashes). Were a dot segment or double slash to reach the
		// sidecar, it must still never yield a 2xx without a verified
		// identity.
		for _, p := range []string{"//api", "/api//orders", "/api/../x", "/./x"} {
			for _, auth := range []string{"", "Bearer " + tamper(full)} {
				resp := rawRequest(t, addr, envoy.request("GET", p, auth))
				if resp.StatusCode/100 == 2 || resp.Header.Get("X-Auth-Subject") != "" {
					t.Errorf("%s with %.12q: %d %v", p, auth, resp.StatusCode, resp.Header)
				}
			}
		}
	})
}
