// Package extauthz builds the envoy.service.auth.v3.CheckRequest that
// Envoy's HTTP ext_authz filter sends to a gRPC authorization service for a
// client request, so tests and load drivers can send the sidecar exactly
// what Envoy (plain, Istio's or Envoy Gateway's) sends, without an Envoy
// binary (Debian packages none).
//
// It follows Envoy's source/extensions/filters/common/ext_authz/
// check_request_utils.cc (CheckRequestUtils::createHttpCheck): source and
// destination socket addresses; request.time; request.http with the
// stream id, method, path (with its query), host, scheme, protocol, the
// bytes received so far as size, and the headers — lower-case names, the
// pseudo-headers :authority, :path, :method and :scheme first, repeated
// headers joined with commas, filtered by allowed_headers (for a gRPC
// service Envoy adds no header of its own to that list), or as header_map
// when encode_raw_headers is set; with with_request_body, the buffered body
// (up to max_request_bytes) and x-envoy-auth-partial-body; and the route's
// context_extensions.
package extauthz

import (
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Request is a client request as it reaches Envoy's filter chain.
type Request struct {
	Method string
	// Path is the request target: path and query.
	Path   string
	Host   string
	Scheme string // default "http"
	// Protocol is "HTTP/1.1" (the default), "HTTP/2" or "HTTP/1.0".
	Protocol string
	// Headers are the client's headers in order; Envoy's codecs lower-case
	// their names.
	Headers [][2]string
	Body    []byte
	// Source is the client, Destination Envoy's listener.
	Source, Destination netip.AddrPort
	StreamID            uint64
	Time                time.Time
}

// Pattern is one entry of an ext_authz allowed_headers list (a
// StringMatcher with exact or prefix).
type Pattern struct {
	Exact, Prefix string
	IgnoreCase    bool
}

func (p Pattern) match(name string) bool {
	switch {
	case p.Exact != "" && p.IgnoreCase:
		return strings.EqualFold(name, p.Exact)
	case p.Exact != "":
		return name == p.Exact
	case p.IgnoreCase:
		return len(name) >= len(p.Prefix) && strings.EqualFold(name[:len(p.Prefix)], p.Prefix)
	default:
		return strings.HasPrefix(name, p.Prefix)
	}
}

// Filter is what of an ext_authz filter's configuration (and its route's
// per-filter config) shapes the CheckRequest.
type Filter struct {
	// AllowedHeaders filters the headers sent; nil sends them all.
	AllowedHeaders []Pattern
	// WithRequestBody: buffer the body (up to MaxRequestBytes) and send
	// it; PackAsBytes sends it as raw_body instead of a UTF-8 string.
	WithRequestBody bool
	MaxRequestBytes int
	PackAsBytes     bool
	// EncodeRawHeaders sends header_map (raw values, repeats kept apart)
	// instead of the headers map.
	EncodeRawHeaders bool
	// ContextExtensions are the route's check_settings.context_extensions.
	ContextExtensions map[string]string
	// RequestIDs: what the HTTP connection manager adds before any filter
	// runs when the client sent none: x-request-id (generate_request_id
	// is on by default) and x-forwarded-proto. RequestID is its value.
	RequestID string
}

// CheckRequest returns the CheckRequest Envoy sends for r.
func (f Filter) CheckRequest(r Request) *authv3.CheckRequest {
	scheme := r.Scheme
	if scheme == "" {
		scheme = "http"
	}
	proto := r.Protocol
	if proto == "" {
		proto = "HTTP/1.1"
	}
	// Envoy's request header map: pseudo-headers first (the HTTP/1 codec
	// turns Host into :authority), then the client's headers, then what
	// the connection manager adds.
	hdrs := [][2]string{{":authority", r.Host}, {":path", r.Path}, {":method", r.Method}, {":scheme", scheme}}
	hasID, hasProto := false, false
	for _, h := range r.Headers {
		k := strings.ToLower(h[0])
		switch k {
		case "host":
			continue // already :authority
		case "x-request-id":
			hasID = true
		case "x-forwarded-proto":
			hasProto = true
		case "x-envoy-auth-partial-body":
			continue // Envoy drops a client's copy of its own header
		}
		hdrs = append(hdrs, [2]string{k, h[1]})
	}
	if !hasProto {
		hdrs = append(hdrs, [2]string{"x-forwarded-proto", scheme})
	}
	if !hasID && f.RequestID != "" {
		hdrs = append(hdrs, [2]string{"x-request-id", f.RequestID})
	}
	hr := &authv3.AttributeContext_HttpRequest{
		Id:       strconv.FormatUint(r.StreamID, 10),
		Method:   sanitize(r.Method),
		Path:     sanitize(r.Path),
		Host:     sanitize(r.Host),
		Scheme:   scheme,
		Protocol: proto,
	}
	var raw *corev3.HeaderMap
	if f.EncodeRawHeaders {
		raw = &corev3.HeaderMap{}
		hr.HeaderMap = raw
	} else {
		hr.Headers = map[string]string{}
	}
	put := func(k, v string) {
		if raw != nil {
			raw.Headers = append(raw.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
			return
		}
		v = sanitize(v)
		if old, ok := hr.Headers[k]; ok {
			hr.Headers[k] = old + "," + v
			return
		}
		hr.Headers[k] = v
	}
	for _, h := range hdrs {
		if f.allowed(h[0]) {
			put(h[0], h[1])
		}
	}
	if f.WithRequestBody && r.Body != nil {
		n := len(r.Body)
		if f.MaxRequestBytes > 0 {
			n = min(n, f.MaxRequestBytes)
		}
		if f.PackAsBytes {
			hr.RawBody = append([]byte(nil), r.Body[:n]...)
		} else {
			hr.Body = sanitize(string(r.Body[:n]))
		}
		partial := "false"
		if n < len(r.Body) {
			partial = "true"
		}
		put("x-envoy-auth-partial-body", partial)
		// Envoy waits for the body (up to the limit) before it checks:
		// that much has been received.
		hr.Size = int64(n)
	}
	t := r.Time
	if t.IsZero() {
		t = time.Now()
	}
	attrs := &authv3.AttributeContext{
		Source:      &authv3.AttributeContext_Peer{Address: address(r.Source)},
		Destination: &authv3.AttributeContext_Peer{Address: address(r.Destination)},
		Request:     &authv3.AttributeContext_Request{Time: timestamppb.New(t), Http: hr},
	}
	if len(f.ContextExtensions) > 0 {
		attrs.ContextExtensions = map[string]string{}
		for k, v := range f.ContextExtensions {
			attrs.ContextExtensions[k] = v
		}
	}
	return &authv3.CheckRequest{Attributes: attrs}
}

func (f Filter) allowed(name string) bool {
	if f.AllowedHeaders == nil {
		return true
	}
	for _, p := range f.AllowedHeaders {
		if p.match(name) {
			return true
		}
	}
	return false
}

func address(ap netip.AddrPort) *corev3.Address {
	if !ap.IsValid() {
		return nil
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ap.Addr().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(ap.Port())},
	}}}
}

// sanitize is Envoy's MessageUtil::sanitizeUtf8String: proto3 strings
// must be UTF-8, so invalid bytes are replaced.
func sanitize(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "!")
}
