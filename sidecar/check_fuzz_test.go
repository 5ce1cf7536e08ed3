package sidecar

import (
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tokenwarden/tokenwarden/internal/extauthz"
)

// FuzzCheck drives the gRPC Check handler with a CheckRequest built the
// way Envoy builds one from fuzzed Authorization, x-required-scope and
// context_extensions values, merged with fuzzed protobuf bytes (any
// shape: missing attributes, odd headers, bodies). It must never panic,
// must answer a denial (401/403 with a well-formed challenge) or
// InvalidArgument for a request without HTTP attributes, and may allow
// only the one genuine token with scopes it holds, never echoing a
// client's identity header. Seeds: testdata/fuzz/FuzzCheck, written by
// TestWriteCheckFuzzSeeds; @TOKEN@ stands for the genuine token (scope
// "read").
func FuzzCheck(f *testing.F) {
	sc, genuine := fuzzSidecarOf(f)
	a := &authorizationServer{s: sc}
	f.Fuzz(func(t *testing.T, authorization, requiredScope, extScope string, wire []byte, raw bool) {
		authorization = strings.ReplaceAll(authorization, phToken, genuine)
		var hdrs [][2]string
		if authorization != "" {
			hdrs = append(hdrs, [2]string{"authorization", authorization})
		}
		if requiredScope != "" {
			hdrs = append(hdrs, [2]string{"x-required-scope", requiredScope})
		}
		filter := extauthz.Filter{EncodeRawHeaders: raw}
		if extScope != "" {
			filter.ContextExtensions = map[string]string{ScopeContextExtension: extScope}
		}
		req := filter.CheckRequest(extauthz.Request{Method: "GET", Path: "/", Host: "app", Headers: hdrs})
		if len(wire) > 0 {
			var extra authv3.CheckRequest
			if err := proto.Unmarshal(wire, &extra); err != nil {
				return
			}
			// The server's codec reads what Check reads exactly as
			// protobuf does.
			var partial authv3.CheckRequest
			if err := decodeCheckRequest(wire, &partial); err != nil {
				t.Fatalf("codec refused what proto accepts: %v", err)
			}
			if got, want := checkView(&partial), checkView(&extra); got != want {
				t.Fatalf("codec read %s, protobuf %s", got, want)
			}
			proto.Merge(req, &extra)
			if extra.GetAttributes() != nil && extra.GetAttributes().GetRequest() == nil {
				req = &extra // also: requests with parts missing
			}
		}
		resp, err := a.Check(t.Context(), req)
		if err != nil {
			if req.GetAttributes().GetRequest().GetHttp() != nil || status.Code(err) != codes.InvalidArgument {
				t.Fatalf("error %v for %v", err, req)
			}
			return
		}
		o := grpcOutcome(t, resp)
		in := readCheck(req.GetAttributes().GetRequest().GetHttp())
		switch o.code {
		case http.StatusOK:
			tok, _ := bearerOf(in.authorization)
			if tok != genuine {
				t.Fatalf("allowed %q", in.authorization)
			}
			required := in.required + " " + req.GetAttributes().GetContextExtensions()[ScopeContextExtension]
			for _, s := range strings.Fields(required) {
				if s != "read" {
					t.Fatalf("allowed though %q is required", s)
				}
			}
			if !strings.Contains(o.auth, "x-auth-subject=alice") {
				t.Fatalf("identity headers %q", o.auth)
			}
			for _, r := range resp.GetOkResponse().GetHeadersToRemove() {
				if !strings.HasPrefix(r, "x-auth-") || r != strings.ToLower(r) {
					t.Fatalf("removes %q", r)
				}
			}
		case http.StatusUnauthorized, http.StatusForbidden:
			if !strings.HasPrefix(o.challenge, realm) || strings.Count(o.challenge, `"`)%2 != 0 || strings.ContainsAny(o.challenge, "\r\n") {
				t.Fatalf("malformed challenge %q", o.challenge)
			}
		default:
			t.Fatalf("status %d", o.code)
		}
	})
}

// checkView is what Check reads of a request, as text.
func checkView(r *authv3.CheckRequest) string {
	a := r.GetAttributes()
	hr := a.GetRequest().GetHttp()
	var b strings.Builder
	fmt.Fprintf(&b, "attrs=%v request=%v http=%v ext=%s headers=%s", a != nil, a.GetRequest() != nil, hr != nil,
		sortedMap(a.GetContextExtensions()), sortedMap(hr.GetHeaders()))
	if hm := hr.GetHeaderMap(); hm != nil {
		b.WriteString(" header_map=")
		for _, h := range hm.GetHeaders() {
			fmt.Fprintf(&b, "[%q %q %q]", h.GetKey(), h.GetValue(), h.GetRawValue())
		}
	}
	return b.String()
}

func sortedMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%q=%q ", k, m[k])
	}
	return b.String()
}

// TestWriteCheckFuzzSeeds writes FuzzCheck's seed corpus: requests as
// Envoy sends them (built by package extauthz from the example configs'
// settings), and ones it never sends. It runs only with
// TOKENWARDEN_WRITE_FUZZ_SEEDS=1.
func TestWriteCheckFuzzSeeds(t *testing.T) {
	if os.Getenv("TOKENWARDEN_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set TOKENWARDEN_WRITE_FUZZ_SEEDS=1 to rewrite the seed corpora")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzCheck")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	q := strconv.Quote
	wire := func(r *authv3.CheckRequest) string {
		if r == nil {
			return ""
		}
		b, err := proto.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	seed := func(name, authz, scope, ext string, extra *authv3.CheckRequest, raw bool) {
		content := "go test fuzz v1\nstring(" + q(authz) + ")\nstring(" + q(scope) + ")\nstring(" + q(ext) + ")\n[]byte(" + q(wire(extra)) +
			")\nbool(" + strconv.FormatBool(raw) + ")\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	envoy := envoyFilter("read")
	post := envoyRequest([2]string{"content-type", "application/json"}, [2]string{"x-auth-subject", "admin"}, [2]string{"x-auth-role", "root"})
	post.Method, post.Body = "POST", []byte(`{"order":42}`)
	withBody := envoy
	withBody.WithRequestBody, withBody.MaxRequestBytes = true, 8192
	rawBody := withBody
	rawBody.PackAsBytes, rawBody.MaxRequestBytes = true, 4
	allHeaders := extauthz.Filter{EncodeRawHeaders: true, RequestID: "r1"}
	seed("genuine", "Bearer "+phToken, "", "", nil, false)
	seed("genuine-scope-held", "Bearer "+phToken, "read", "read", nil, false)
	seed("genuine-scope-missing", "Bearer "+phToken, "", "read write", nil, true)
	seed("genuine-bad-scope", "Bearer "+phToken, `a"b`, "", nil, false)
	seed("lower-case-scheme", "bearer "+phToken, "", "", nil, false)
	seed("no-token", "", "", "read", nil, false)
	seed("basic", "Basic YWxhZGRpbjpvcGVuc2VzYW1l", "", "", nil, false)
	seed("malformed", "Bearer "+phToken+" x", "", "", nil, false)
	seed("joined", "Bearer "+phToken+",Bearer "+phToken, "", "", nil, false)
	seed("tampered", "Bearer "+phToken+"x", "", "", nil, false)
	seed("envoy-get", "Bearer "+phToken, "", "", envoy.CheckRequest(envoyRequest()), false)
	seed("envoy-post-body", "Bearer "+phToken, "", "", withBody.CheckRequest(post), false)
	seed("envoy-post-raw-body", "Bearer "+phToken, "", "", rawBody.CheckRequest(post), true)
	seed("envoy-all-headers", "Bearer "+phToken, "", "", allHeaders.CheckRequest(post), true)
	seed("second-authorization", "Bearer "+phToken, "", "",
		extauthz.Filter{}.CheckRequest(extauthz.Request{Headers: [][2]string{{"Authorization", "Bearer x"}}}), true)
	seed("smuggled-identity", "Bearer "+phToken, "", "",
		extauthz.Filter{}.CheckRequest(extauthz.Request{Headers: [][2]string{{"X-Auth-Subject", "root"}, {"x-auth-admin", "1"}}}), false)
	seed("no-attributes", "", "", "", &authv3.CheckRequest{Attributes: &authv3.AttributeContext{ContextExtensions: map[string]string{"scope": "x"}}}, false)
	seed("no-http", "Bearer "+phToken, "", "", &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{}}}, false)
	seed("tcp-peers-only", "", "", "", &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Service: "x"}}}, false)
	seed("huge-header", "Bearer "+phToken, "", "", extauthz.Filter{}.CheckRequest(extauthz.Request{
		Headers: [][2]string{{"x-padding", strings.Repeat("p", 64<<10)}}, Source: netip.MustParseAddrPort("127.0.0.1:1")}), false)
	seed("huge-token", "Bearer "+strings.Repeat("a", 40000), "", "", nil, false)
	seed("garbage", "", "", "", nil, false)
}
