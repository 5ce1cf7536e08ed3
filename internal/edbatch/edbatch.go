// Package edbatch verifies many Ed25519 signatures by one public key at
// once.
//
// A sidecar that starts replays every live revocation event, all signed by
// the one distribution key. Checked one by one, each signature costs a
// 256-bit double-scalar multiplication; checked together, the doublings are
// shared by the whole batch and the key's term folds into one scalar, which
// makes a large batch several times cheaper per signature.
//
// The batch equation, with random 128-bit z_i that the signer cannot
// predict, is
//
//	[Σ z_i·S_i]B − Σ [z_i]R_i − [Σ z_i·k_i]A = 0,   k_i = SHA-512(R_i‖A‖M_i)
//
// It holds when every signature is valid, and fails with overwhelming
// probability when one is not. Verify answers only "all valid": a caller
// that gets false checks each signature with crypto/ed25519 to learn which
// failed, so a batch accepts nothing more than crypto/ed25519.Verify does
// but for one case that takes the private key to make: a signature valid
// only up to a small-order component (valid under RFC 8032's "cofactored"
// reading, which crypto/ed25519 does not take) passes a batch with a
// probability of up to 1/2, by the order of that component. Encodings
// crypto/ed25519 rejects (S ≥ L, a non-canonical R) make the whole batch
// fail.
package edbatch

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"

	"filippo.io/edwards25519"
)

// MinBatch is the size below which a batch is not worth it: Verify then
// checks each signature on its own.
const MinBatch = 4

// Verify reports whether sigs[i] is a valid Ed25519 signature of msgs[i]
// by pub for every i. It is false for malformed input (lengths, S ≥ L,
// non-canonical R, a public key that is not a point) and for mismatched
// slice lengths. See the package doc for how it relates to
// crypto/ed25519.Verify.
func Verify(pub ed25519.PublicKey, msgs, sigs [][]byte) bool {
	n := len(msgs)
	if n != len(sigs) || len(pub) != ed25519.PublicKeySize {
		return false
	}
	if n < MinBatch {
		for i := range msgs {
			if len(sigs[i]) != ed25519.SignatureSize || !ed25519.Verify(pub, msgs[i], sigs[i]) {
				return false
			}
		}
		return true
	}
	A, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil {
		return false
	}

	// z_i: 128 bits each from the CSPRNG, in the low half of a scalar.
	zs := make([]byte, 16*n)
	_, _ = rand.Read(zs) // never fails (Go ≥ 1.24)

	scalars := make([]*edwards25519.Scalar, n+2)
	points := make([]*edwards25519.Point, n+2)
	bSum := edwards25519.NewScalar() // Σ z_i·S_i
	aSum := edwards25519.NewScalar() // Σ z_i·k_i
	var buf [64]byte
	h := sha512.New()
	zScalars := make([]edwards25519.Scalar, n)
	rPoints := make([]edwards25519.Point, n)
	var S, k edwards25519.Scalar
	for i := range n {
		sig := sigs[i]
		if len(sig) != ed25519.SignatureSize || !canonicalPoint(sig[:32]) {
			return false
		}
		if _, err := S.SetCanonicalBytes(sig[32:]); err != nil {
			return false
		}
		R, err := rPoints[i].SetBytes(sig[:32])
		if err != nil {
			return false
		}
		h.Reset()
		h.Write(sig[:32])
		h.Write(pub)
		h.Write(msgs[i])
		if _, err := k.SetUniformBytes(h.Sum(buf[:0])); err != nil {
			return false
		}
		var zb [32]byte
		copy(zb[:16], zs[16*i:])
		z, err := zScalars[i].SetCanonicalBytes(zb[:])
		if err != nil {
			return false
		}
		bSum.MultiplyAdd(z, &S, bSum)
		aSum.MultiplyAdd(z, &k, aSum)
		// Negate the point, not the 128-bit scalar, which would become a
		// full-size one and double its share of the additions.
		scalars[i], points[i] = z, R.Negate(R)
	}
	scalars[n], points[n] = bSum, edwards25519.NewGeneratorPoint()
	scalars[n+1], points[n+1] = aSum.Negate(aSum), A
	sum := new(edwards25519.Point).VarTimeMultiScalarMult(scalars, points)
	return sum.Equal(edwards25519.NewIdentityPoint()) == 1
}

// canonicalPoint reports whether b is the canonical encoding of its y
// coordinate and sign: y < p, and no "negative zero" x (which only y = ±1
// could carry). crypto/ed25519 compares R's bytes with the encoding it
// computes, so it rejects every other encoding; so must a batch.
func canonicalPoint(b []byte) bool {
	// y ≥ p = 2²⁵⁵−19 only if y's top 250 bits are all ones and its low
	// byte is at least 0xed.
	top := b[31] & 0x7f
	allOnes := top == 0x7f
	for i := 1; allOnes && i < 31; i++ {
		allOnes = b[i] == 0xff
	}
	if allOnes && b[0] >= 0xed {
		return false
	}
	if b[31]&0x80 == 0 {
		return true
	}
	// x = 0 (y = 1 or y = p−1) with the sign bit set.
	yIs := func(low byte, rest byte, topByte byte) bool {
		if b[0] != low || top != topByte {
			return false
		}
		for i := 1; i < 31; i++ {
			if b[i] != rest {
				return false
			}
		}
		return true
	}
	return !yIs(1, 0, 0) && !yIs(0xec, 0xff, 0x7f)
}
