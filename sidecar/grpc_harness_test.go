package sidecar

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenwarden/tokenwarden/internal/extauthz"
)

// serveGRPC serves the sidecar's gRPC API (with opts added) on a loopback
// port until the test ends and returns a client connection to it.
func (r *running) serveGRPC(t testing.TB, opts ...grpc.ServerOption) *grpc.ClientConn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := r.NewGRPCServer(opts...)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	r.grpcAddr = ln.Addr().String()
	return r.serveGRPCConn(t)
}

// serveGRPCConn is one more client connection to the gRPC server that
// serveGRPC started (which it starts on first use).
func (r *running) serveGRPCConn(t testing.TB) *grpc.ClientConn {
	t.Helper()
	if r.grpcAddr == "" {
		return r.serveGRPC(t)
	}
	conn, err := grpc.NewClient(r.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// outcome is one transport's answer, reduced to what a proxy passes on:
// the status, the challenge and Cache-Control to the client, and on allow
// the x-auth-* headers to the upstream.
type outcome struct {
	code         int
	challenge    string
	cacheControl string
	auth         string // "name=value" of each x-auth-* header, sorted, lower-case names
}

func (o outcome) String() string {
	return strconv.Itoa(o.code) + " www-authenticate=" + strconv.Quote(o.challenge) + " cache-control=" + o.cacheControl + " auth=[" + o.auth + "]"
}

// askHTTP sends /verify the request a proxy sends: the client's
// Authorization header(s), and the route's required scopes in
// X-Required-Scope.
func askHTTP(t testing.TB, base string, authorization []string, scope string) outcome {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/verify/api/orders", nil)
	for _, a := range authorization {
		req.Header.Add("Authorization", a)
	}
	if scope != "" {
		req.Header.Set(HeaderRequiredScope, scope)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	o := outcome{code: resp.StatusCode, challenge: strings.Join(resp.Header.Values("WWW-Authenticate"), "|"),
		cacheControl: resp.Header.Get("Cache-Control")}
	var auth []string
	for k, vs := range resp.Header {
		if strings.HasPrefix(strings.ToLower(k), "x-auth-") {
			for _, v := range vs {
				auth = append(auth, strings.ToLower(k)+"="+v)
			}
		}
	}
	slices.Sort(auth)
	o.auth = strings.Join(auth, " ")
	return o
}

// envoyFilter is the ext_authz filter of examples/envoy/envoy-grpc.yaml
// (test/proxies checks the example says so): the headers the sidecar reads
// and every x-auth-* header a client may send.
func envoyFilter(scope string) extauthz.Filter {
	f := extauthz.Filter{
		AllowedHeaders: []extauthz.Pattern{{Exact: "authorization"}, {Exact: "x-required-scope"}, {Prefix: "x-auth-"}},
		RequestID:      "0b9c4a4e-7f3d-4b0e-9d55-6b0d8e0f1a2c",
	}
	if scope != "" {
		f.ContextExtensions = map[string]string{ScopeContextExtension: scope}
	}
	return f
}

// envoyRequest is a client's GET /api/orders?x=1 as Envoy receives it.
func envoyRequest(headers ...[2]string) extauthz.Request {
	return extauthz.Request{Method: "GET", Path: "/api/orders?x=1", Host: "shop.example.com", Headers: headers,
		Source: netip.MustParseAddrPort("10.1.2.3:53122"), Destination: netip.MustParseAddrPort("10.1.2.9:8080"),
		StreamID: 12897459017398471, Time: time.Now()}
}

// askGRPC sends Check what Envoy sends for the client's request. With
// viaExtension the route's scope comes from context_extensions, else from
// an x-required-scope request header (headers_to_add, or a client's).
// raw encodes the headers as header_map (encode_raw_headers), which keeps
// repeated headers apart.
func askGRPC(t testing.TB, client authv3.AuthorizationClient, authorization []string, scope string, viaExtension, raw bool) outcome {
	t.Helper()
	var hdrs [][2]string
	for _, a := range authorization {
		hdrs = append(hdrs, [2]string{"authorization", a})
	}
	f := envoyFilter("")
	if viaExtension {
		f = envoyFilter(scope)
	} else if scope != "" {
		hdrs = append(hdrs, [2]string{"x-required-scope", scope})
	}
	f.EncodeRawHeaders = raw
	resp, err := client.Check(t.Context(), f.CheckRequest(envoyRequest(hdrs...)))
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	return grpcOutcome(t, resp)
}

// grpcOutcome reads a CheckResponse as Envoy does, and checks its parts
// agree with one another.
func grpcOutcome(t testing.TB, resp *authv3.CheckResponse) outcome {
	t.Helper()
	var o outcome
	if codes.Code(resp.GetStatus().GetCode()) == codes.OK {
		ok := resp.GetOkResponse()
		if ok == nil || resp.GetDeniedResponse() != nil {
			t.Fatalf("OK status without an OkHttpResponse: %v", resp)
		}
		o.code = http.StatusOK
		var auth []string
		for _, h := range ok.GetHeaders() {
			if h.GetAppendAction().String() != "OVERWRITE_IF_EXISTS_OR_ADD" {
				t.Errorf("%s is %s: a client's header of that name would survive", h.GetHeader().GetKey(), h.GetAppendAction())
			}
			auth = append(auth, h.GetHeader().GetKey()+"="+h.GetHeader().GetValue())
		}
		slices.Sort(auth)
		o.auth = strings.Join(auth, " ")
		for _, r := range ok.GetHeadersToRemove() {
			// Envoy removes after it sets: removing one of the five would
			// drop the sidecar's own header.
			if isSidecarAuthHeader(r) {
				t.Errorf("headers_to_remove names %s, which the sidecar sets", r)
			}
		}
		return o
	}
	d := resp.GetDeniedResponse()
	if d == nil {
		t.Fatalf("denial without a DeniedHttpResponse: %v", resp)
	}
	o.code = int(d.GetStatus().GetCode())
	want := map[int]codes.Code{http.StatusUnauthorized: codes.Unauthenticated, http.StatusForbidden: codes.PermissionDenied}[o.code]
	if got := codes.Code(resp.GetStatus().GetCode()); got != want || want == codes.OK {
		t.Errorf("HTTP %d with gRPC status %s", o.code, got)
	}
	var www []string
	for _, h := range d.GetHeaders() {
		switch h.GetHeader().GetKey() {
		case "www-authenticate":
			www = append(www, h.GetHeader().GetValue())
		case "cache-control":
			o.cacheControl = h.GetHeader().GetValue()
		default:
			t.Errorf("denial carries %s", h.GetHeader().GetKey())
		}
	}
	o.challenge = strings.Join(www, "|")
	if d.GetBody() != "" {
		t.Errorf("denial body %q; /verify sends none", d.GetBody())
	}
	return o
}
