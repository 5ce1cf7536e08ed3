package sidecar

import (
	"errors"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// checkCodec is the gRPC server's codec: protobuf, as the default one,
// except that a CheckRequest is decoded only as far as Check reads it (the
// request headers and the context extensions), and a CheckResponse is
// encoded by its generated vtprotobuf code. Envoy sends peers, a
// timestamp, metadata and maybe a body with every Check; decoding all of
// that by reflection cost more than the verification itself.
// FuzzCheck holds decodeCheckRequest to proto.Unmarshal's reading of those
// fields.
type checkCodec struct{}

func (checkCodec) Name() string { return "proto" }

func (checkCodec) Marshal(v any) (mem.BufferSlice, error) {
	var (
		b   []byte
		err error
	)
	switch m := v.(type) {
	case interface{ MarshalVTStrict() ([]byte, error) }:
		b, err = m.MarshalVTStrict()
	case proto.Message:
		b, err = proto.Marshal(m)
	default:
		return nil, fmt.Errorf("grpc codec: cannot marshal %T, not a protobuf message", v)
	}
	if err != nil {
		return nil, fmt.Errorf("grpc codec: marshal %T: %w", v, err)
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (checkCodec) Unmarshal(data mem.BufferSlice, v any) error {
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	b := buf.ReadOnlyData()
	switch m := v.(type) {
	case *authv3.CheckRequest:
		if err := decodeCheckRequest(b, m); err != nil {
			return fmt.Errorf("grpc codec: CheckRequest: %w", err)
		}
		return nil
	case proto.Message:
		if err := proto.Unmarshal(b, m); err != nil {
			return fmt.Errorf("grpc codec: %T: %w", v, err)
		}
		return nil
	default:
		return fmt.Errorf("grpc codec: cannot unmarshal into %T, not a protobuf message", v)
	}
}

var errMalformed = errors.New("malformed protobuf")

// fields calls f with each length-delimited field of the message b (a
// sub-message, string or bytes) and skips the others, as proto.Unmarshal
// keeps a field of an unexpected wire type among the unknown fields. A
// repeated sub-message is merged into the one before, as protobuf does.
func fields(b []byte, f func(num protowire.Number, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errMalformed
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return errMalformed
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return errMalformed
		}
		b = b[n:]
		if err := f(num, v); err != nil {
			return err
		}
	}
	return nil
}

// Field numbers of what Check reads (envoy/service/auth/v3 and
// envoy/config/core/v3 protos).
const (
	fieldCheckAttributes     = 1  // CheckRequest.attributes
	fieldAttrRequest         = 4  // AttributeContext.request
	fieldAttrContextExt      = 10 // AttributeContext.context_extensions
	fieldRequestHTTP         = 2  // AttributeContext.Request.http
	fieldHTTPHeaders         = 3  // HttpRequest.headers
	fieldHTTPHeaderMap       = 13 // HttpRequest.header_map
	fieldHeaderMapHeaders    = 1  // HeaderMap.headers
	fieldHeaderValueKey      = 1  // HeaderValue.key, and a map entry's key
	fieldHeaderValueValue    = 2  // HeaderValue.value, and a map entry's value
	fieldHeaderValueRawValue = 3  // HeaderValue.raw_value
)

// decodeCheckRequest fills req with the fields Check reads.
func decodeCheckRequest(b []byte, req *authv3.CheckRequest) error {
	return fields(b, func(num protowire.Number, v []byte) error {
		if num != fieldCheckAttributes {
			return nil
		}
		if req.Attributes == nil {
			req.Attributes = &authv3.AttributeContext{}
		}
		return decodeAttributes(v, req.Attributes)
	})
}

func decodeAttributes(b []byte, a *authv3.AttributeContext) error {
	return fields(b, func(num protowire.Number, v []byte) error {
		switch num {
		case fieldAttrContextExt:
			if a.ContextExtensions == nil {
				a.ContextExtensions = map[string]string{}
			}
			return decodeMapEntry(v, a.ContextExtensions)
		case fieldAttrRequest:
			if a.Request == nil {
				a.Request = &authv3.AttributeContext_Request{}
			}
			return fields(v, func(num protowire.Number, v []byte) error {
				if num != fieldRequestHTTP {
					return nil
				}
				if a.Request.Http == nil {
					a.Request.Http = &authv3.AttributeContext_HttpRequest{}
				}
				return decodeHTTP(v, a.Request.Http)
			})
		}
		return nil
	})
}

func decodeHTTP(b []byte, h *authv3.AttributeContext_HttpRequest) error {
	return fields(b, func(num protowire.Number, v []byte) error {
		switch num {
		case fieldHTTPHeaders:
			if h.Headers == nil {
				h.Headers = map[string]string{}
			}
			return decodeMapEntry(v, h.Headers)
		case fieldHTTPHeaderMap:
			if h.HeaderMap == nil {
				h.HeaderMap = &corev3.HeaderMap{}
			}
			return fields(v, func(num protowire.Number, v []byte) error {
				if num != fieldHeaderMapHeaders {
					return nil
				}
				hv := &corev3.HeaderValue{}
				h.HeaderMap.Headers = append(h.HeaderMap.Headers, hv)
				return fields(v, func(num protowire.Number, v []byte) error {
					switch num {
					case fieldHeaderValueKey:
						hv.Key = string(v)
					case fieldHeaderValueValue:
						hv.Value = string(v)
					case fieldHeaderValueRawValue:
						hv.RawValue = append([]byte{}, v...)
					}
					return nil
				})
			})
		}
		return nil
	})
}

// decodeMapEntry adds one map<string, string> entry to m: a missing key
// or value is empty, and a later entry with the same key wins.
func decodeMapEntry(b []byte, m map[string]string) error {
	var k, v string
	err := fields(b, func(num protowire.Number, f []byte) error {
		switch num {
		case fieldHeaderValueKey:
			k = string(f)
		case fieldHeaderValueValue:
			v = string(f)
		}
		return nil
	})
	if err != nil {
		return err
	}
	m[k] = v
	return nil
}
