package sidecar

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/tokenwarden/tokenwarden/internal/extauthz"
	"github.com/tokenwarden/tokenwarden/jwks"
)

func TestGRPCHeaderNames(t *testing.T) {
	for lower, canon := range map[string]string{lowerSubject: HeaderSubject, lowerClientID: HeaderClientID, lowerScope: HeaderScope,
		lowerTokenID: HeaderTokenID, lowerExpiresAt: HeaderExpiresAt} {
		if lower != strings.ToLower(canon) {
			t.Errorf("%s is not %s in lower case", lower, canon)
		}
	}
}

// TestCheckEnvoyRequests sends Check what Envoy sends for client requests
// of every shape: with and without a body (with_request_body, as a string
// or raw bytes), raw header_map, the scope from context_extensions or a
// header, and client-sent identity headers, which never reach the app.
func TestCheckEnvoyRequests(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	sc := w.start(w.config())
	sc.waitReady(t)
	client := authv3.NewAuthorizationClient(sc.serveGRPC(t))
	tok := w.token()

	body := []byte(`{"order":42,"note":"caf\xc3\xa9"}` + "\xff")
	for _, c := range []struct {
		name   string
		filter extauthz.Filter
		req    extauthz.Request
		code   int
		strip  []string
	}{
		{name: "GET without a body", filter: envoyFilter("read"),
			req: envoyRequest([2]string{"Authorization", "Bearer " + tok}), code: 200},
		{name: "POST with a body", filter: func() extauthz.Filter {
			f := envoyFilter("read")
			f.WithRequestBody, f.MaxRequestBytes = true, 8192
			return f
		}(), req: func() extauthz.Request {
			r := envoyRequest([2]string{"authorization", "Bearer " + tok}, [2]string{"content-type", "application/json"})
			r.Method, r.Body = "POST", body
			return r
		}(), code: 200},
		{name: "POST with a partial raw body", filter: func() extauthz.Filter {
			f := envoyFilter("")
			f.WithRequestBody, f.MaxRequestBytes, f.PackAsBytes = true, 8, true
			return f
		}(), req: func() extauthz.Request {
			r := envoyRequest([2]string{"authorization", "Bearer " + tok})
			r.Method, r.Body, r.Protocol = "PUT", body, "HTTP/2"
			return r
		}(), code: 200},
		{name: "all headers sent, raw", filter: extauthz.Filter{EncodeRawHeaders: true, ContextExtensions: map[string]string{"scope": "write"}},
			req: envoyRequest([2]string{"authorization", "Bearer " + tok}, [2]string{"cookie", "a=b"}), code: 200},
		{name: "context_extensions scope missing", filter: envoyFilter("admin"),
			req: envoyRequest([2]string{"authorization", "Bearer " + tok}), code: 403},
		{name: "a client's x-required-scope only adds", filter: envoyFilter("admin"),
			req: envoyRequest([2]string{"authorization", "Bearer " + tok}, [2]string{"x-required-scope", "read"}), code: 403},
		{name: "client-sent identity headers", filter: envoyFilter("read"),
			req: envoyRequest([2]string{"authorization", "Bearer " + tok}, [2]string{"X-Auth-Subject", "admin"},
				[2]string{"x-auth-role", "root"}, [2]string{"X-Auth-Groups", "wheel"}, [2]string{"x-auth-scope", "tokenwarden:admin"}),
			code: 200, strip: []string{"x-auth-groups", "x-auth-role"}},
		{name: "underscore spellings of identity headers are removed too",
			req: envoyRequest([2]string{"authorization", "Bearer " + tok},
				[2]string{"x_auth_subject", "root"}, [2]string{"x-auth_role", "admin"}, [2]string{"X_Auth-Scope", "tokenwarden:admin"}),
			code: 200, strip: []string{"x-auth_role", "x_auth-scope", "x_auth_subject"}},
		{name: "client-sent identity headers, raw", filter: func() extauthz.Filter { f := envoyFilter(""); f.EncodeRawHeaders = true; return f }(),
			req:  envoyRequest([2]string{"authorization", "Bearer " + tok}, [2]string{"x-auth-role", "root"}, [2]string{"x-auth-role", "admin"}),
			code: 200, strip: []string{"x-auth-role", "x-auth-role"}},
		{name: "client-sent identity headers on a denial", filter: envoyFilter(""),
			req: envoyRequest([2]string{"x-auth-subject", "admin"}), code: 401},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, err := client.Check(t.Context(), c.filter.CheckRequest(c.req))
			if err != nil {
				t.Fatal(err)
			}
			o := grpcOutcome(t, resp)
			if o.code != c.code {
				t.Fatalf("%v, want %d", o, c.code)
			}
			if c.code != 200 {
				return
			}
			for _, want := range []string{"x-auth-subject=alice", "x-auth-client-id=demo-app", "x-auth-scope=read write", "x-auth-token-id=jti-", "x-auth-expires-at="} {
				if !strings.Contains(o.auth, want) {
					t.Errorf("identity headers %q lack %s", o.auth, want)
				}
			}
			if got := strings.Join(resp.GetOkResponse().GetHeadersToRemove(), " "); got != strings.Join(c.strip, " ") {
				t.Errorf("headers_to_remove %q, want %q", got, c.strip)
			}
		})
	}
}

// TestCheckMalformed: requests Envoy would not send, or that exceed the
// limits, get a denial or a gRPC error, never an allow or a crash.
func TestCheckMalformed(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	sc := w.start(w.config())
	sc.waitReady(t)
	client := authv3.NewAuthorizationClient(sc.serveGRPC(t))
	tok := w.token()
	huge := extauthz.Filter{}.CheckRequest(envoyRequest([2]string{"authorization", "Bearer " + tok},
		[2]string{"x-padding", strings.Repeat("p", w.config().MaxTokenSize+maxCheckRequestOverhead)}))
	for _, c := range []struct {
		name string
		req  *authv3.CheckRequest
		code codes.Code // the gRPC error; OK: a denial
	}{
		{"empty", &authv3.CheckRequest{}, codes.InvalidArgument},
		{"no request", &authv3.CheckRequest{Attributes: &authv3.AttributeContext{}}, codes.InvalidArgument},
		{"no http", &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{}}}, codes.InvalidArgument},
		{"no headers", &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
			Http: &authv3.AttributeContext_HttpRequest{}}}}, codes.OK},
		{"huge", huge, codes.ResourceExhausted},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, err := client.Check(t.Context(), c.req)
			if c.code != codes.OK {
				if status.Code(err) != c.code {
					t.Fatalf("got %v, %v; want %s", resp, err, c.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o := grpcOutcome(t, resp); o.code != 401 {
				t.Fatalf("%v", o)
			}
		})
	}
	// The server still answers afterwards.
	if o := askGRPC(t, client, []string{"Bearer " + tok}, "", false, false); o.code != 200 {
		t.Fatalf("after the malformed requests: %v", o)
	}
}

// TestGRPCHealth: grpc.health.v1 follows /readyz, for the server and the
// authorization service, in Check, List and Watch.
func TestGRPCHealth(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	if err := w.kv.Delete(t.Context(), "current"); err != nil {
		t.Fatal(err)
	}
	sc := w.start(w.config())
	health := healthpb.NewHealthClient(sc.serveGRPC(t))
	check := func(service string) healthpb.HealthCheckResponse_ServingStatus {
		resp, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetStatus()
	}
	for _, svc := range []string{"", AuthorizationService} {
		if got := check(svc); got != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("%q before a bundle: %s", svc, got)
		}
	}
	if _, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{Service: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown service: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	watch, err := health.Watch(ctx, &healthpb.HealthCheckRequest{Service: AuthorizationService})
	if err != nil {
		t.Fatal(err)
	}
	first, err := watch.Recv()
	if err != nil || first.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("first watched status: %v %v", first, err)
	}
	w.publish(w.ring)
	sc.waitReady(t)
	next, err := watch.Recv()
	if err != nil || next.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watched status once ready: %v %v", next, err)
	}
	if got := check(""); got != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("once ready: %s", got)
	}
	list, err := health.List(t.Context(), &healthpb.HealthListRequest{})
	if err != nil || len(list.GetStatuses()) != 2 || list.GetStatuses()[AuthorizationService].GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("list: %v %v", list, err)
	}
	unknown, err := health.Watch(ctx, &healthpb.HealthCheckRequest{Service: "nope"})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := unknown.Recv(); err != nil || st.GetStatus() != healthpb.HealthCheckResponse_SERVICE_UNKNOWN {
		t.Fatalf("watching an unknown service: %v %v", st, err)
	}
}

// TestGRPCUnixSocket: the gRPC API works over a Unix socket, as Istio's
// and Envoy Gateway's proxies can reach it in a shared volume.
func TestGRPCUnixSocket(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	sc := w.start(w.config())
	sc.waitReady(t)
	path := filepath.Join(t.TempDir(), "grpc.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	gs := sc.NewGRPCServer()
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	if o := askGRPC(t, authv3.NewAuthorizationClient(conn), []string{"Bearer " + w.token()}, "read", true, false); o.code != 200 {
		t.Fatalf("%v", o)
	}
}

// TestGRPCHandlerPanicIsADenial: a panic under a handler (a bug; the
// test injects one, inside the sidecar's own interceptors) becomes an
// Internal error, which Envoy treats as a denial, and the sidecar lives on
// to answer the next call. grpc-go itself would let the panic end the
// process (this test binary, here).
func TestGRPCHandlerPanicIsADenial(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	sc := w.start(w.config())
	sc.waitReady(t)
	conn := sc.serveGRPC(t, grpc.ChainUnaryInterceptor(func(context.Context, any, *grpc.UnaryServerInfo, grpc.UnaryHandler) (any, error) {
		panic("injected")
	}), grpc.ChainStreamInterceptor(func(any, grpc.ServerStream, *grpc.StreamServerInfo, grpc.StreamHandler) error {
		panic("injected")
	}))
	client := authv3.NewAuthorizationClient(conn)
	for range 2 {
		_, err := client.Check(t.Context(), envoyFilter("").CheckRequest(envoyRequest([2]string{"authorization", "Bearer " + w.token()})))
		if status.Code(err) != codes.Internal {
			t.Fatalf("Check after a panic: %v", err)
		}
		w, err := healthpb.NewHealthClient(conn).Watch(t.Context(), &healthpb.HealthCheckRequest{Service: AuthorizationService})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Recv(); status.Code(err) != codes.Internal {
			t.Fatalf("health Watch after a panic: %v", err)
		}
	}
}
