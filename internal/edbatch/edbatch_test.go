package edbatch

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"testing"

	"filippo.io/edwards25519"
)

func signed(t testing.TB, n int) (ed25519.PublicKey, ed25519.PrivateKey, [][]byte, [][]byte) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	msgs := make([][]byte, n)
	sigs := make([][]byte, n)
	for i := range n {
		msgs[i] = fmt.Appendf(nil, "message %d of a batch: %x", i, make([]byte, 200))
		sigs[i] = ed25519.Sign(priv, msgs[i])
	}
	return pub, priv, msgs, sigs
}

func TestVerify(t *testing.T) {
	for _, n := range []int{0, 1, MinBatch - 1, MinBatch, 64, 300} {
		pub, _, msgs, sigs := signed(t, n)
		if !Verify(pub, msgs, sigs) {
			t.Fatalf("n=%d: valid batch rejected", n)
		}
	}
}

// TestVerifyRejects breaks one signature of a batch in every way a
// verifier must notice, at the start, middle and end of the batch.
func TestVerifyRejects(t *testing.T) {
	const n = 33
	otherPub, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	L := []byte{0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10}
	cases := []struct {
		name    string
		corrupt func(pub ed25519.PublicKey, msgs, sigs [][]byte, i int)
	}{
		{"message changed", func(_ ed25519.PublicKey, msgs, _ [][]byte, i int) { msgs[i] = append([]byte("x"), msgs[i]...) }},
		{"R bit flipped", func(_ ed25519.PublicKey, _, sigs [][]byte, i int) { sigs[i][3] ^= 1 }},
		{"S bit flipped", func(_ ed25519.PublicKey, _, sigs [][]byte, i int) { sigs[i][40] ^= 1 }},
		{"signed by another key", func(_ ed25519.PublicKey, msgs, sigs [][]byte, i int) { sigs[i] = ed25519.Sign(otherPriv, msgs[i]) }},
		{"short signature", func(_ ed25519.PublicKey, _, sigs [][]byte, i int) { sigs[i] = sigs[i][:63] }},
		{"S plus L (non-canonical, same value mod L)", func(_ ed25519.PublicKey, _, sigs [][]byte, i int) {
			// S + L does not fit a Scalar: add byte-wise.
			carry := 0
			for j := 0; j < 32; j++ {
				v := int(sigs[i][32+j]) + int(L[j]) + carry
				sigs[i][32+j] = byte(v)
				carry = v >> 8
			}
		}},
		{"R as identity, S zero", func(_ ed25519.PublicKey, _, sigs [][]byte, i int) {
			copy(sigs[i], make([]byte, 64))
			sigs[i][0] = 1
		}},
		{"R non-canonical (y+p)", func(_ ed25519.PublicKey, _, sigs [][]byte, i int) {
			// y = 1 encoded as 1 + p: bytes 0xee, 0xff…, 0x7f.
			sigs[i][0] = 0xee
			for j := 1; j < 31; j++ {
				sigs[i][j] = 0xff
			}
			sigs[i][31] = 0x7f
		}},
	}
	for _, tc := range cases {
		for _, at := range []int{0, n / 2, n - 1} {
			t.Run(fmt.Sprintf("%s/at=%d", tc.name, at), func(t *testing.T) {
				pub, _, msgs, sigs := signed(t, n)
				tc.corrupt(pub, msgs, sigs, at)
				if ed25519.Verify(pub, msgs[at], sigs[at]) {
					t.Fatal("test case does not break the signature for crypto/ed25519")
				}
				if Verify(pub, msgs, sigs) {
					t.Fatal("batch with a broken signature accepted")
				}
			})
		}
	}
	pub, _, msgs, sigs := signed(t, n)
	if Verify(otherPub, msgs, sigs) {
		t.Fatal("batch accepted under another key")
	}
	if Verify(pub, msgs, sigs[:n-1]) {
		t.Fatal("mismatched lengths accepted")
	}
	if Verify(pub[:31], msgs, sigs) {
		t.Fatal("short public key accepted")
	}
}

// TestCanonicalPoint compares canonicalPoint with what decoding and
// encoding again gives.
func TestCanonicalPoint(t *testing.T) {
	var b [32]byte
	check := func(b []byte) {
		t.Helper()
		p, err := new(edwards25519.Point).SetBytes(b)
		if err != nil {
			return // not a point: SetBytes rejects it anyway
		}
		want := string(p.Bytes()) == string(b)
		if got := canonicalPoint(b); got != want {
			t.Errorf("canonicalPoint(%x) = %v, want %v", b, got, want)
		}
	}
	for low := range 256 {
		for _, fill := range []byte{0, 0xff} {
			for _, top := range []byte{0, 0x7f, 0x80, 0xff} {
				b[0] = byte(low)
				for j := 1; j < 31; j++ {
					b[j] = fill
				}
				b[31] = top
				check(b[:])
			}
		}
	}
	for range 1000 {
		_, _ = rand.Read(b[:])
		check(b[:])
	}
}

// FuzzVerify is differential: a batch of one fuzzed signature among valid
// ones is accepted only if crypto/ed25519 accepts the fuzzed one.
// The key is fixed so that the committed corpus (testdata/fuzz) holds
// signatures that verify.
func FuzzVerify(f *testing.F) {
	priv := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	pub := priv.Public().(ed25519.PublicKey)
	msgs := make([][]byte, MinBatch)
	sigs := make([][]byte, MinBatch)
	for i := range msgs {
		msgs[i] = fmt.Appendf(nil, "message %d", i)
		sigs[i] = ed25519.Sign(priv, msgs[i])
	}
	f.Add(msgs[0], sigs[0])
	f.Add([]byte("other"), sigs[0])
	f.Add(msgs[0], make([]byte, 64))
	f.Add(msgs[0], sigs[0][:10])
	f.Fuzz(func(t *testing.T, msg, sig []byte) {
		m := append([][]byte{msg}, msgs[1:]...)
		s := append([][]byte{sig}, sigs[1:]...)
		single := len(sig) == ed25519.SignatureSize && ed25519.Verify(pub, msg, sig)
		if got := Verify(pub, m, s); got != single {
			t.Fatalf("batch says %v, crypto/ed25519 says %v", got, single)
		}
	})
}

func BenchmarkVerify(b *testing.B) {
	for _, n := range []int{1, 16, 64, 256} {
		pub, _, msgs, sigs := signed(b, n)
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			for b.Loop() {
				if !Verify(pub, msgs, sigs) {
					b.Fatal("rejected")
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/sig")
		})
	}
	pub, _, msgs, sigs := signed(b, 1)
	b.Run("crypto/ed25519", func(b *testing.B) {
		for b.Loop() {
			if !ed25519.Verify(pub, msgs[0], sigs[0]) {
				b.Fatal("rejected")
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/sig")
	})
}
