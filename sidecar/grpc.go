package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// ScopeContextExtension is the key of Envoy's per-route
// check_settings.context_extensions that names the scopes a route requires
// (space-separated), the gRPC counterpart of /verify's ?scope=.
const ScopeContextExtension = "scope"

// AuthorizationService is the full name of Envoy's external authorization
// service, as grpc.health.v1 knows it.
const AuthorizationService = "envoy.service.auth.v3.Authorization"

// maxCheckRequestOverhead is what a CheckRequest may carry besides a token
// of the largest accepted size: the other headers, and a body if Envoy is
// told to send one (with_request_body). Larger requests are refused with
// ResourceExhausted before they are decoded.
const maxCheckRequestOverhead = 1 << 20

// healthPoll is how often a grpc.health.v1 Watch re-reads readiness.
const healthPoll = time.Second

// NewGRPCServer returns a gRPC server (plaintext HTTP/2, for a loopback
// listener or a Unix socket) serving Envoy's external authorization,
// envoy.service.auth.v3.Authorization/Check, with the same verdicts as
// /verify, and grpc.health.v1, which follows /readyz. opts are added to
// the sidecar's own.
func (s *Sidecar) NewGRPCServer(opts ...grpc.ServerOption) *grpc.Server {
	gs := grpc.NewServer(append([]grpc.ServerOption{
		grpc.MaxRecvMsgSize(s.cfg.MaxTokenSize + maxCheckRequestOverhead),
		// A pool of goroutines serves the streams, instead of a new one
		// per call whose stack grows on every Check.
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))), // #nosec G115 -- GOMAXPROCS is small and positive
		// Fixed windows large enough for any CheckRequest: no BDP pings
		// on a loopback connection.
		grpc.InitialWindowSize(1 << 20),
		grpc.InitialConnWindowSize(1 << 20),
		grpc.ForceServerCodecV2(checkCodec{}),
		grpc.ChainUnaryInterceptor(recoverUnary(s.log)),
		grpc.ChainStreamInterceptor(recoverStream(s.log)),
	}, opts...)...)
	authv3.RegisterAuthorizationServer(gs, &authorizationServer{s: s})
	healthpb.RegisterHealthServer(gs, &healthServer{s: s, poll: healthPoll})
	return gs
}

// recoverUnary turns a panic in a unary handler into an Internal error,
// which Envoy treats as a denial (unless failure_mode_allow is set). Unlike
// net/http, grpc-go does not recover handler panics: one would end the
// sidecar, and with it every request of the pod, not just this one.
func recoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer recovered(log, info.FullMethod, &err)
		return handler(ctx, req)
	}
}

// recoverStream is recoverUnary for streams (grpc.health.v1 Watch).
func recoverStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		defer recovered(log, info.FullMethod, &err)
		return handler(srv, ss)
	}
}

// recovered, deferred, turns a panic into an Internal error in *err.
func recovered(log *slog.Logger, method string, err *error) {
	if p := recover(); p != nil {
		log.Error("gRPC handler panicked: denied", "method", method, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
		*err = status.Error(codes.Internal, "internal error")
	}
}

// authorizationServer is Envoy's ext_authz gRPC service.
type authorizationServer struct {
	authv3.UnimplementedAuthorizationServer
	s *Sidecar
}

// checkInput is what Check reads from a CheckRequest: the Authorization
// and X-Required-Scope values, and the names of client-sent x-auth-*
// headers to strip from the upstream request.
type checkInput struct {
	authorization []string
	required      string
	strip         []string
}

// Check answers one Envoy ext_authz request. It reads the request headers
// Envoy forwards (attributes.request.http.headers, or header_map when
// Envoy encodes raw headers) and the route's context_extensions; the
// method, path, host and body do not matter, as for /verify. The verdict
// is decide's, so /verify and Check never disagree.
func (a *authorizationServer) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := time.Now()
	hr := req.GetAttributes().GetRequest().GetHttp()
	if hr == nil {
		// A network-level (TCP) ext_authz filter, or not Envoy at all:
		// there is no HTTP request, hence no token to verify.
		return nil, status.Error(codes.InvalidArgument, "check request without attributes.request.http: only HTTP requests can be authorized")
	}
	in := readCheck(hr)
	if scope := req.GetAttributes().GetContextExtensions()[ScopeContextExtension]; scope != "" {
		in.required += " " + scope
	}
	v := a.s.decide(in.authorization, in.required, transportGRPC)
	a.s.logCheck(ctx, v.code, time.Since(start))
	return checkResponse(v, in.strip), nil
}

// readCheck collects the headers Check reads. Envoy sends header names in
// lower case; other clients are matched without regard to case all the
// same, as HTTP header names are, so that a second Authorization spelled
// differently counts as a second header (refused) rather than being
// ignored. Envoy joins repeated headers with commas into one value, which
// bearerOf refuses as malformed, and a joined X-Required-Scope names a
// scope no token holds: both fail closed.
func readCheck(hr *authv3.AttributeContext_HttpRequest) checkInput {
	var in checkInput
	add := func(k, v string) {
		switch {
		case strings.EqualFold(k, "authorization"):
			in.authorization = append(in.authorization, v)
		case strings.EqualFold(k, HeaderRequiredScope):
			in.required += " " + v
		case hasAuthPrefix(k):
			// The sidecar overwrites its five headers on allow; any other
			// x-auth-* the client sent is removed, so the app never sees
			// an identity header the sidecar did not write. Underscore
			// spellings (x_auth_subject) too: Envoy forwards them by
			// default, and CGI, WSGI and Rack apps read them as the same
			// header as x-auth-subject.
			if !isSidecarAuthHeader(k) {
				in.strip = append(in.strip, strings.ToLower(k))
			}
		}
	}
	if hm := hr.GetHeaderMap(); hm != nil {
		for _, h := range hm.GetHeaders() {
			v := h.GetValue()
			if len(h.GetRawValue()) > 0 {
				v = string(h.GetRawValue())
			}
			add(h.GetKey(), v)
		}
	}
	for k, v := range hr.GetHeaders() {
		add(k, v)
	}
	slices.Sort(in.strip) // map order is random; the answer need not be
	return in
}

const authHeaderPrefix = "x-auth-"

// isSidecarAuthHeader reports whether k names one of the five identity
// headers the sidecar sets on allow.
// hasAuthPrefix reports whether k starts with x-auth-, with any letter
// case and with '_' for either '-'.
func hasAuthPrefix(k string) bool {
	if len(k) < len(authHeaderPrefix) {
		return false
	}
	for i := 0; i < len(authHeaderPrefix); i++ {
		c := k[i]
		switch {
		case c == '_':
			c = '-'
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		}
		if c != authHeaderPrefix[i] {
			return false
		}
	}
	return true
}

func isSidecarAuthHeader(k string) bool {
	for _, h := range [...]string{HeaderSubject, HeaderClientID, HeaderScope, HeaderTokenID, HeaderExpiresAt} {
		if strings.EqualFold(k, h) {
			return true
		}
	}
	return false
}

// The five identity headers in lower case, as Envoy writes header names
// (TestGRPCHeaderNames keeps them equal to the Header* names).
const (
	lowerSubject   = "x-auth-subject"
	lowerClientID  = "x-auth-client-id"
	lowerScope     = "x-auth-scope"
	lowerTokenID   = "x-auth-token-id" // #nosec G101 -- a header name, not a credential
	lowerExpiresAt = "x-auth-expires-at"
)

// checkResponse turns a verdict into Envoy's answer. Allowed: status OK
// and an OkHttpResponse that sets the five x-auth-* headers, replacing any
// the client sent, and removes the client's other x-auth-* headers (Envoy
// applies headers_to_remove after the headers it sets, so the five are
// never listed there). Denied: UNAUTHENTICATED or PERMISSION_DENIED and a
// DeniedHttpResponse with /verify's status and headers, which Envoy sends
// to the client.
func checkResponse(v verdict, strip []string) *authv3.CheckResponse {
	if v.code == http.StatusOK {
		c := v.claims
		set := func(k, val string) *corev3.HeaderValueOption {
			return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: val},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
		}
		return &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(codes.OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
				Headers: []*corev3.HeaderValueOption{
					set(lowerSubject, c.Subject),
					set(lowerClientID, c.ClientID),
					set(lowerScope, c.Scope),
					set(lowerTokenID, c.ID),
					set(lowerExpiresAt, strconv.FormatInt(c.Expiry, 10)),
				},
				HeadersToRemove: strip,
			}},
		}
	}
	code, httpCode := codes.Unauthenticated, typev3.StatusCode_Unauthorized
	if v.code == http.StatusForbidden {
		code, httpCode = codes.PermissionDenied, typev3.StatusCode_Forbidden
	}
	headers := []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "www-authenticate", Value: v.challenge},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}}
	if v.noStore {
		headers = append(headers, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "cache-control", Value: "no-store"},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD})
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(code)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: httpCode},
			Headers: headers,
		}},
	}
}

// logCheck writes Check's access-log line (when the access log is on):
// denials at Info, allowed requests at Debug, so a busy pod logs what
// needs attention. Never the request's headers or path: tokens and user
// data travel there.
func (s *Sidecar) logCheck(ctx context.Context, code int, d time.Duration) {
	if !s.cfg.AccessLog {
		return
	}
	level := slog.LevelInfo
	if code == http.StatusOK {
		level = slog.LevelDebug
	}
	if !s.log.Enabled(ctx, level) {
		return
	}
	var addr string
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = p.Addr.String()
	}
	s.log.LogAttrs(ctx, level, "request", slog.String("method", "Check"), slog.String("route", "grpc "+AuthorizationService+"/Check"),
		slog.Int("status", code), slog.Duration("duration", d), slog.String("peer", addr))
}

// healthServer is grpc.health.v1 for the sidecar: SERVING exactly when
// /readyz answers 200, for the server as a whole ("") and for the
// authorization service.
type healthServer struct {
	healthpb.UnimplementedHealthServer
	s    *Sidecar
	poll time.Duration
}

func (h *healthServer) status(service string) (healthpb.HealthCheckResponse_ServingStatus, bool) {
	if service != "" && service != AuthorizationService {
		return healthpb.HealthCheckResponse_SERVICE_UNKNOWN, false
	}
	if h.s.Ready() {
		return healthpb.HealthCheckResponse_SERVING, true
	}
	return healthpb.HealthCheckResponse_NOT_SERVING, true
}

func (h *healthServer) Check(_ context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	st, ok := h.status(req.GetService())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "unknown service %q", req.GetService())
	}
	return &healthpb.HealthCheckResponse{Status: st}, nil
}

func (h *healthServer) List(context.Context, *healthpb.HealthListRequest) (*healthpb.HealthListResponse, error) {
	out := &healthpb.HealthListResponse{Statuses: map[string]*healthpb.HealthCheckResponse{}}
	for _, svc := range []string{"", AuthorizationService} {
		st, _ := h.status(svc)
		out.Statuses[svc] = &healthpb.HealthCheckResponse{Status: st}
	}
	return out, nil
}

// Watch sends the status at once and then each change, read every poll,
// until the client goes away. An unknown service is SERVICE_UNKNOWN, as
// the protocol asks, not an error: it may be registered later.
func (h *healthServer) Watch(req *healthpb.HealthCheckRequest, stream grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	t := time.NewTicker(h.poll)
	defer t.Stop()
	last := healthpb.HealthCheckResponse_ServingStatus(-1)
	for {
		if st, _ := h.status(req.GetService()); st != last {
			if err := stream.Send(&healthpb.HealthCheckResponse{Status: st}); err != nil {
				return err
			}
			last = st
		}
		select {
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		case <-t.C:
		}
	}
}
