package jwks

import (
	"testing"
	"time"
)

// BenchmarkSign measures access-token signing per algorithm (what one
// issuance costs in crypto and encoding).
func BenchmarkSign(b *testing.B) {
	for _, alg := range SupportedAlgorithms() {
		b.Run(string(alg), func(b *testing.B) {
			k, err := GenerateKey(alg, time.Now())
			if err != nil {
				b.Fatal(err)
			}
			now := time.Now()
			c := &Claims{Issuer: "https://issuer.example", Subject: "alice", Audience: Audience{"demo-api"}, Expiry: now.Add(10 * time.Minute).Unix(),
				IssuedAt: now.Unix(), ID: "8Yh3cT0eQq2vZ1rP4xK9wA", ClientID: "demo-app", Scope: "read write", SessionID: "s1"}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := k.Sign(c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
