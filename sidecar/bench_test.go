package sidecar

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"math/big"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// benchSidecar is a sidecar with keys loaded, not serving HTTP: the
// benchmarks measure the in-process verification pipeline.
func benchSidecar(b *testing.B, alg jwks.Algorithm, cacheSize int) (*world, *Verifier) {
	w := newWorld(b, alg)
	cfg := w.config()
	cfg.TokenCacheSize = cacheSize
	sc := w.start(cfg)
	sc.waitReady(b)
	return w, sc.Verifier()
}

// BenchmarkVerify compares, per algorithm, a cache-miss verification
// through the whole pipeline with the bare standard-library verification of
// the same signature (SHA-256 of the signing input plus the signature
// check): the physical floor. Report: miss/bare ns/op.
func BenchmarkVerify(b *testing.B) {
	for _, alg := range jwks.SupportedAlgorithms() {
		w, v := benchSidecar(b, alg, 0)
		tok := w.token()
		b.Run(string(alg)+"/miss", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := v.Verify(tok); err != nil {
					b.Fatal(err)
				}
			}
		})
		pub := w.ring.Active().Public().Key
		dot := strings.LastIndexByte(tok, '.')
		input := []byte(tok[:dot])
		sig, _ := base64.RawURLEncoding.DecodeString(tok[dot+1:])
		b.Run(string(alg)+"/bare", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if !bareVerify(alg, pub, input, sig) {
					b.Fatal("bare verify failed")
				}
			}
		})
	}
}

func bareVerify(alg jwks.Algorithm, pub crypto.PublicKey, input, sig []byte) bool {
	switch alg {
	case jwks.ES256:
		h := sha256.Sum256(input)
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		return ecdsa.Verify(pub.(*ecdsa.PublicKey), h[:], r, s)
	case jwks.EdDSA:
		return ed25519.Verify(pub.(ed25519.PublicKey), input, sig)
	default:
		h := sha256.Sum256(input)
		return rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), crypto.SHA256, h[:], sig) == nil
	}
}

// BenchmarkVerifyCacheHit is a repeat of a verified token: SHA-256 of the
// token, a map lookup, the expiry and revocation checks. Target < 1µs and
// ≤ 2 allocations.
func BenchmarkVerifyCacheHit(b *testing.B) {
	w, v := benchSidecar(b, jwks.ES256, 10_000)
	tok := w.token()
	if _, _, err := v.Verify(tok); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, hit, err := v.Verify(tok); err != nil || !hit {
				b.Fatal(err, hit)
			}
		}
	})
}

// BenchmarkVerifyCacheHitRevocations100k is BenchmarkVerifyCacheHit with
// 100,000 live revocation events of every kind in the set (none matching):
// the difference is what the revocation check adds to a verification.
func BenchmarkVerifyCacheHitRevocations100k(b *testing.B) {
	w, v := benchSidecar(b, jwks.ES256, 10_000)
	set := v.revoked.(*revocation.Set)
	now := time.Now()
	kinds := []revocation.Kind{revocation.KindJTI, revocation.KindSID, revocation.KindSub, revocation.KindClient}
	for i := range 100_000 {
		e, err := revocation.NewEvent(kinds[i%4], "v"+strconv.Itoa(i), now.Add(-time.Hour), now.Add(time.Hour), "", now)
		if err != nil {
			b.Fatal(err)
		}
		set.Apply(e)
	}
	tok := w.token()
	if _, _, err := v.Verify(tok); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, hit, err := v.Verify(tok); err != nil || !hit {
				b.Fatal(err, hit)
			}
		}
	})
}

// BenchmarkTransports compares, in one run, the same question (a valid
// token, a cache hit, scope read required) asked over HTTP /verify and over
// gRPC Check with the CheckRequest Envoy sends, each to a real loopback
// server, with 32 concurrent callers: keep-alive HTTP/1.1 connections, and
// for gRPC one HTTP/2 connection per 8 callers (Envoy keeps one per worker
// thread). grpc/http is gRPC's throughput over HTTP's (target ≥ 0.9).
func BenchmarkTransports(b *testing.B) {
	const callers = 32
	w := newWorld(b, jwks.ES256)
	cfg := w.config()
	// The transports alone: the access log's cost is the same line on
	// either (test/sidecarload measures with the defaults).
	cfg.AccessLog = false
	sc := w.start(cfg)
	sc.waitReady(b)
	tok := w.token()
	var conns []authv3.AuthorizationClient
	for range callers / 8 {
		conns = append(conns, authv3.NewAuthorizationClient(sc.serveGRPCConn(b)))
	}
	req := envoyFilter("read").CheckRequest(envoyRequest([2]string{"authorization", "Bearer " + tok}))
	parallelism := max(callers/runtime.GOMAXPROCS(0), 1)
	var httpNs float64
	b.Run("http", func(b *testing.B) {
		tr := &http.Transport{MaxIdleConnsPerHost: callers, MaxConnsPerHost: callers, DisableCompression: true}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr}
		b.SetParallelism(parallelism)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			r, _ := http.NewRequest("GET", sc.url+"/verify/api/orders", nil)
			r.Header.Set("Authorization", "Bearer "+tok)
			r.Header.Set(HeaderRequiredScope, "read")
			for pb.Next() {
				resp, err := client.Do(r)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatal(resp.Status)
				}
			}
		})
		httpNs = float64(b.Elapsed()) / float64(b.N)
	})
	b.Run("grpc", func(b *testing.B) {
		var next atomic.Uint32
		b.SetParallelism(parallelism)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			client := conns[int(next.Add(1))%len(conns)]
			ctx := context.Background()
			for pb.Next() {
				resp, err := client.Check(ctx, req)
				if err != nil || resp.GetOkResponse() == nil {
					b.Fatal(err, resp)
				}
			}
		})
		if httpNs > 0 {
			b.ReportMetric(httpNs/(float64(b.Elapsed())/float64(b.N)), "grpc/http")
		}
	})
}
