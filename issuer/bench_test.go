package issuer

import (
	"net/url"
	"testing"
)

// BenchmarkClientCredentials measures client_credentials issuance through
// the real HTTP handler and server (secret verification cached after the
// first request, ES256 signing). Read the result as req/s = 1e9 / ns/op.
func BenchmarkClientCredentials(b *testing.B) {
	e := newEnv(b)
	in := e.start()
	in.waitReady(b)
	form := url.Values{"grant_type": {"client_credentials"}}
	in.post(b, "service", "service-secret", form) // warm the secret cache
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if r := in.post(b, "service", "service-secret", form); r.Status != 200 {
				b.Errorf("status %d %v", r.Status, r.Body)
				return
			}
		}
	})
}

// BenchmarkRefreshToken measures refresh_token issuance: a KV read, a CAS
// write on NATS JetStream (file storage) and ES256 signing, per request.
// Each goroutine refreshes its own chain so there is no contention.
func BenchmarkRefreshToken(b *testing.B) {
	e := newEnv(b)
	in := e.start()
	in.waitReady(b)
	in.post(b, "app", "app-secret", url.Values{"grant_type": {"client_credentials"}})
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rt := in.login(b, "").str("refresh_token")
		for pb.Next() {
			r := in.refresh(b, rt, "")
			if r.Status != 200 {
				b.Errorf("status %d %v", r.Status, r.Body)
				return
			}
			rt = r.str("refresh_token")
		}
	})
}
