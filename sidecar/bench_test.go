package sidecar

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"math/big"
	"strconv"
	"strings"
	"testing"
	"time"

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
