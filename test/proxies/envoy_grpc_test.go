package proxies

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenwarden/tokenwarden/injector"
	"github.com/tokenwarden/tokenwarden/internal/extauthz"
	"github.com/tokenwarden/tokenwarden/sidecar"
)

const exampleEnvoyGRPC = "../../examples/envoy/envoy-grpc.yaml"

// envoyGRPCExample is what the CheckRequest depends on in
// examples/envoy/envoy-grpc.yaml: the filter's settings and each route's
// context_extensions (nil: the check is disabled on that route).
type envoyGRPCExample struct {
	filter extauthz.Filter
	routes map[string]map[string]string // path or prefix → context_extensions
}

// loadEnvoyGRPCExample reads the example and checks what the integration
// relies on: fail closed with 503, a gRPC service over HTTP/2 to the
// sidecar's default gRPC address, the headers the sidecar reads (and
// x-auth-*, so forged ones can be removed) sent with the check.
func loadEnvoyGRPCExample(t *testing.T) envoyGRPCExample {
	t.Helper()
	cfg := loadYAML(t, exampleEnvoyGRPC)
	hcm := dig(t, cfg, "static_resources", "listeners", 0, "filter_chains", 0, "filters",
		[2]string{"name", "envoy.filters.network.http_connection_manager"}, "typed_config")
	filters := dig(t, hcm, "http_filters").([]any)
	if last := dig(t, filters[len(filters)-1], "name"); last != "envoy.filters.http.router" {
		t.Errorf("%s: last HTTP filter is %v, not the router", exampleEnvoyGRPC, last)
	}
	ea := dig(t, filters, [2]string{"name", "envoy.filters.http.ext_authz"}, "typed_config")
	if dig(t, ea, "failure_mode_allow") != false || dig(t, ea, "status_on_error", "code") != "ServiceUnavailable" {
		t.Errorf("%s: ext_authz must fail closed with 503", exampleEnvoyGRPC)
	}
	if dig(t, ea, "transport_api_version") != "V3" {
		t.Errorf("%s: transport_api_version must be V3", exampleEnvoyGRPC)
	}
	cluster := dig(t, ea, "grpc_service", "envoy_grpc", "cluster_name").(string)
	c := dig(t, cfg, "static_resources", "clusters", [2]string{"name", cluster})
	addr := dig(t, c, "load_assignment", "endpoints", 0, "lb_endpoints", 0, "endpoint", "address", "socket_address")
	if got := fmt.Sprintf("%v:%v", dig(t, addr, "address"), dig(t, addr, "port_value")); got != sidecar.DefaultGRPCAddr {
		t.Errorf("%s: cluster %s is %s, not the sidecar's default gRPC address %s", exampleEnvoyGRPC, cluster, got, sidecar.DefaultGRPCAddr)
	}
	dig(t, c, "typed_extension_protocol_options", "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "explicit_http_config", "http2_protocol_options")
	var ex envoyGRPCExample
	for _, p := range dig(t, ea, "allowed_headers", "patterns").([]any) {
		m := p.(map[string]any)
		pat := extauthz.Pattern{IgnoreCase: m["ignore_case"] == true}
		pat.Exact, _ = m["exact"].(string)
		pat.Prefix, _ = m["prefix"].(string)
		ex.filter.AllowedHeaders = append(ex.filter.AllowedHeaders, pat)
	}
	for _, h := range []string{"authorization", "x-required-scope", "x-auth-subject", "x-auth-role"} {
		if !allowed(ex.filter.AllowedHeaders, h) {
			t.Errorf("%s: allowed_headers do not send %s to the sidecar", exampleEnvoyGRPC, h)
		}
	}
	if _, ok := ea.(map[string]any)["with_request_body"]; ok {
		ex.filter.WithRequestBody = true
	}
	ex.routes = map[string]map[string]string{}
	for _, r := range dig(t, hcm, "route_config", "virtual_hosts", 0, "routes").([]any) {
		m := dig(t, r, "match").(map[string]any)
		key, _ := m["path"].(string)
		if key == "" {
			key, _ = m["prefix"].(string)
		}
		pf, _ := r.(map[string]any)["typed_per_filter_config"].(map[string]any)
		per, _ := pf["envoy.filters.http.ext_authz"].(map[string]any)
		if per["disabled"] == true {
			ex.routes[key] = nil
			continue
		}
		ext := map[string]string{}
		if cs, ok := per["check_settings"].(map[string]any); ok {
			for k, v := range cs["context_extensions"].(map[string]any) {
				ext[k] = fmt.Sprint(v)
			}
		}
		ex.routes[key] = ext
	}
	return ex
}

func allowed(ps []extauthz.Pattern, name string) bool {
	for _, p := range ps {
		if p.Exact == name || (p.Prefix != "" && strings.HasPrefix(name, p.Prefix)) {
			return true
		}
	}
	return false
}

// check is the CheckRequest Envoy sends, configured as the example, for a
// client request to the route with that key.
func (ex envoyGRPCExample) check(t *testing.T, route, method, path string, body []byte, headers ...[2]string) *authv3.CheckRequest {
	t.Helper()
	ext, ok := ex.routes[route]
	if !ok || ext == nil {
		t.Fatalf("%s: no checked route %q", exampleEnvoyGRPC, route)
	}
	f := ex.filter
	f.ContextExtensions = ext
	f.RequestID = "6f1d3c1e-0b7e-4a39-9a4e-2f8f2c1d7b10"
	if body != nil {
		// The example sends no body; a variant with with_request_body
		// (max_request_bytes 8192) sends it, which the sidecar ignores.
		f.WithRequestBody, f.MaxRequestBytes = true, 8192
	}
	return f.CheckRequest(extauthz.Request{Method: method, Path: path, Host: "shop.example.com", Body: body,
		Headers: append([][2]string{{"user-agent", "curl/8.5.0"}, {"accept", "*/*"}}, headers...),
		Source:  netip.MustParseAddrPort("203.0.113.7:40112"), Destination: netip.MustParseAddrPort("127.0.0.1:8000"),
		StreamID: 4242, Time: time.Now()})
}

// TestEnvoyExtAuthzGRPC sends a real sidecar's gRPC server, through a
// client of the same official types, the CheckRequests Envoy sends with
// examples/envoy/envoy-grpc.yaml (no Envoy binary in Debian), and reads
// the answers as Envoy does: OK lets the request through with the
// OkHttpResponse's headers set and headers_to_remove removed; a denial
// sends the client the DeniedHttpResponse's status and headers.
func TestEnvoyExtAuthzGRPC(t *testing.T) {
	ex := loadEnvoyGRPCExample(t)
	if hz, ok := ex.routes["/healthz"]; !ok || hz != nil || ex.routes["/"]["scope"] != "read" || ex.routes["/admin/"]["scope"] != "read admin" {
		t.Fatalf("example changed: routes %v; update this test", ex.routes)
	}
	s := newSystem(t)
	sc := s.StartSidecar(s.SidecarConfig())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := sc.NewGRPCServer()
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	client := authv3.NewAuthorizationClient(conn)
	full := s.login("read write")
	writeOnly := s.token("app", "app-secret", url.Values{"grant_type": {"client_credentials"}, "scope": {"write"}})
	ask := func(t *testing.T, req *authv3.CheckRequest) *authv3.CheckResponse {
		t.Helper()
		resp, err := client.Check(t.Context(), req)
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		return resp
	}
	bearer := func(tok string) [2]string { return [2]string{"authorization", "Bearer " + tok} }

	for _, method := range []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} {
		t.Run("valid "+method, func(t *testing.T) {
			envoyAllows(t, ask(t, ex.check(t, "/", method, "/api/orders?x=1&y=%2F", nil, bearer(full))), "alice")
		})
	}
	t.Run("with a body", func(t *testing.T) {
		envoyAllows(t, ask(t, ex.check(t, "/", "POST", "/api/orders", []byte(`{"item":"42"}`), bearer(full),
			[2]string{"content-type", "application/json"}, [2]string{"content-length", "13"})), "alice")
	})
	t.Run("no token", func(t *testing.T) {
		envoyDenies(t, ask(t, ex.check(t, "/", "POST", "/api/orders", nil)), 401, `Bearer realm="tokenwarden"`)
	})
	t.Run("invalid token", func(t *testing.T) {
		envoyDenies(t, ask(t, ex.check(t, "/", "GET", "/api/orders", nil, bearer(tamper(full)))), 401, `error="invalid_token"`)
	})
	t.Run("route scope missing", func(t *testing.T) {
		envoyDenies(t, ask(t, ex.check(t, "/", "GET", "/api/orders", nil, bearer(writeOnly))), 403, `error="insufficient_scope"`, `scope="read"`)
		envoyDenies(t, ask(t, ex.check(t, "/admin/", "GET", "/admin/users", nil, bearer(full))), 403, `scope="admin"`)
	})
	t.Run("a client's x-required-scope only adds", func(t *testing.T) {
		envoyDenies(t, ask(t, ex.check(t, "/", "GET", "/api", nil, bearer(full), [2]string{"x-required-scope", "admin"})), 403, `scope="admin"`)
		envoyDenies(t, ask(t, ex.check(t, "/", "GET", "/api", nil, bearer(writeOnly), [2]string{"x-required-scope", ""})), 403, `scope="read"`)
	})
	t.Run("client-sent identity headers never reach the app", func(t *testing.T) {
		resp := ask(t, ex.check(t, "/", "GET", "/", nil, bearer(full), [2]string{"X-Auth-Subject", "admin"},
			[2]string{"x-auth-scope", "tokenwarden:admin"}, [2]string{"x-auth-role", "root"}))
		envoyAllows(t, resp, "alice")
		if got := strings.Join(resp.GetOkResponse().GetHeadersToRemove(), ","); got != "x-auth-role" {
			t.Errorf("headers_to_remove %q, want x-auth-role (the five are overwritten)", got)
		}
	})
}

// envoyAllows checks an answer Envoy lets through: status OK, the five
// identity headers replacing any of the client's, and nothing removed that
// the sidecar set.
func envoyAllows(t *testing.T, resp *authv3.CheckResponse, subject string) {
	t.Helper()
	if codes.Code(resp.GetStatus().GetCode()) != codes.OK || resp.GetOkResponse() == nil {
		t.Fatalf("not allowed: %v", resp)
	}
	got := map[string]string{}
	for _, h := range resp.GetOkResponse().GetHeaders() {
		if h.GetAppendAction().String() != "OVERWRITE_IF_EXISTS_OR_ADD" {
			t.Errorf("%s: %s would keep a client's value", h.GetHeader().GetKey(), h.GetAppendAction())
		}
		got[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	for _, h := range authHeaders {
		if _, ok := got[strings.ToLower(h)]; !ok {
			t.Errorf("OkHttpResponse lacks %s: %v", h, got)
		}
	}
	if got["x-auth-subject"] != subject {
		t.Errorf("x-auth-subject %q, want %q", got["x-auth-subject"], subject)
	}
	for _, r := range resp.GetOkResponse().GetHeadersToRemove() {
		if _, ok := got[r]; ok {
			t.Errorf("removes %s, which it sets: Envoy removes after it sets", r)
		}
	}
}

// envoyDenies checks an answer Envoy turns into the client's response.
func envoyDenies(t *testing.T, resp *authv3.CheckResponse, status int, www ...string) {
	t.Helper()
	d := resp.GetDeniedResponse()
	if codes.Code(resp.GetStatus().GetCode()) == codes.OK || d == nil {
		t.Fatalf("not denied: %v", resp)
	}
	if int(d.GetStatus().GetCode()) != status {
		t.Fatalf("status %d, want %d", d.GetStatus().GetCode(), status)
	}
	var challenge string
	for _, h := range d.GetHeaders() {
		if strings.HasPrefix(h.GetHeader().GetKey(), "x-auth-") {
			t.Errorf("denial carries %s", h.GetHeader().GetKey())
		}
		if h.GetHeader().GetKey() == "www-authenticate" {
			challenge = h.GetHeader().GetValue()
		}
	}
	for _, w := range append([]string{`Bearer realm="tokenwarden"`}, www...) {
		if !strings.Contains(challenge, w) {
			t.Errorf("WWW-Authenticate %q lacks %q", challenge, w)
		}
	}
}

// TestEnvoyGatewayExample checks examples/envoy-gateway/security-policy.yaml
// agrees with the sidecar and the injector: the sidecar injected into the
// Envoy pods with its gRPC port, a loopback Backend on that port, and a
// SecurityPolicy that fails closed, sends every header (so forged x-auth-*
// headers reach the sidecar) and passes the five identity headers on.
func TestEnvoyGatewayExample(t *testing.T) {
	const path = "../../examples/envoy-gateway/security-policy.yaml"
	docs := map[string]map[string]any{}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			break
		}
		docs[fmt.Sprint(m["kind"])] = m
	}
	ann := dig(t, docs["EnvoyProxy"], "spec", "provider", "kubernetes", "envoyDeployment", "pod", "annotations")
	if dig(t, ann, injector.AnnotationInject) != "true" || dig(t, ann, injector.AnnotationGRPCPort) != "9191" {
		t.Errorf("%s: the EnvoyProxy pods do not get the sidecar with gRPC on 9191: %v", path, ann)
	}
	ep := dig(t, docs["Backend"], "spec", "endpoints", 0, "ip")
	if got := fmt.Sprintf("%v:%v", dig(t, ep, "address"), dig(t, ep, "port")); got != sidecar.DefaultGRPCAddr {
		t.Errorf("%s: Backend %s, want %s", path, got, sidecar.DefaultGRPCAddr)
	}
	ea := dig(t, docs["SecurityPolicy"], "spec", "extAuth")
	if dig(t, ea, "failOpen") != false {
		t.Errorf("%s: extAuth must fail closed", path)
	}
	if _, ok := ea.(map[string]any)["headersToExtAuth"]; ok {
		t.Errorf("%s: headersToExtAuth would hide forged x-auth-* headers from the sidecar", path)
	}
	if got := strings.Join(strs(t, dig(t, ea, "headersToBackend")), " "); got != strings.ToLower(strings.Join(authHeaders, " ")) {
		t.Errorf("%s: headersToBackend %q", path, got)
	}
	ref := dig(t, ea, "grpc", "backendRefs", 0)
	if dig(t, ref, "kind") != "Backend" || dig(t, ref, "name") != dig(t, docs["Backend"], "metadata", "name") || fmt.Sprint(dig(t, ref, "port")) != "9191" {
		t.Errorf("%s: extAuth.grpc does not point at the Backend: %v", path, ref)
	}
}
