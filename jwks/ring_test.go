package jwks

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"math/big"
	"slices"
	"testing"
	"time"
)

func testPolicy(alg Algorithm) Policy {
	return Policy{Alg: alg, RotationPeriod: 24 * time.Hour, PropagationDelay: 5 * time.Minute, RetainRetired: 10*time.Minute + 30*time.Second}
}

func TestRingLifecycle(t *testing.T) {
	for _, alg := range SupportedAlgorithms() {
		t.Run(string(alg), func(t *testing.T) {
			p := testPolicy(alg)
			t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			r, err := NewRing(t0, p)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Validate(); err != nil {
				t.Fatal(err)
			}
			k1, k2 := r.Active(), r.Next()
			if k1.ActivatedAt != t0 || k2.CreatedAt != t0 || k1.ID == k2.ID || r.Sequence != 1 {
				t.Fatalf("new ring: %+v %+v seq %d", k1, k2, r.Sequence)
			}
			if _, err := r.Rotate(t0.Add(p.PropagationDelay-time.Second), p); !errors.Is(err, ErrNextNotReady) {
				t.Fatalf("rotation before propagation: %v", err)
			}
			if got, changed, _ := r.Advance(t0.Add(p.RotationPeriod-time.Second), p); changed || got != r {
				t.Fatal("advance changed the ring before the rotation period")
			}
			if nt := r.NextTransition(p); !nt.Equal(t0.Add(p.RotationPeriod)) {
				t.Fatalf("next transition %v", nt)
			}
			t1 := t0.Add(p.RotationPeriod)
			r2, changed, err := r.Advance(t1, p)
			if err != nil || !changed {
				t.Fatalf("advance at rotation time: %v %v", changed, err)
			}
			if r2.Active().ID != k2.ID || r2.Next() == nil || r2.Next().ID == k1.ID || r2.Sequence != 2 {
				t.Fatalf("after rotation: %+v", r2.Keys)
			}
			retired := r2.find(StateRetired)
			if retired.ID != k1.ID || !retired.RetiredAt.Equal(t1) || !retired.RemoveAt.Equal(t1.Add(p.RetainRetired)) {
				t.Fatalf("retired %+v", retired)
			}
			// The original ring value is untouched (rings are values).
			if r.Active().ID != k1.ID || r.Active().State != StateActive {
				t.Fatal("Rotate mutated its receiver")
			}
			if nt := r2.NextTransition(p); !nt.Equal(retired.RemoveAt) {
				t.Fatalf("next transition %v, want removal %v", nt, retired.RemoveAt)
			}
			r3, changed, _ := r2.Advance(retired.RemoveAt.Add(-time.Second), p)
			if changed || len(r3.Keys) != 3 {
				t.Fatal("retired key removed early")
			}
			r3, changed, _ = r2.Advance(retired.RemoveAt, p)
			if !changed || len(r3.Keys) != 2 || r3.find(StateRetired) != nil || r3.Sequence != 3 {
				t.Fatalf("removal: %+v", r3.Keys)
			}
			ks, err := r3.KeySet()
			if err != nil || ks.Len() != 2 {
				t.Fatal(err)
			}
		})
	}
}

func TestPolicyValidate(t *testing.T) {
	bad := []Policy{
		{Alg: "HS256", RotationPeriod: time.Hour, RetainRetired: time.Minute},
		{Alg: ES256, RotationPeriod: time.Minute, PropagationDelay: time.Hour, RetainRetired: time.Minute},
		{Alg: ES256, RotationPeriod: time.Hour, PropagationDelay: -1, RetainRetired: time.Minute},
		{Alg: ES256, RotationPeriod: time.Hour},
	}
	for i, p := range bad {
		if err := p.Validate(); err == nil {
			t.Errorf("policy %d accepted: %+v", i, p)
		}
	}
	if err := DefaultPolicy().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestKeyPrivateRoundTrip(t *testing.T) {
	for _, alg := range SupportedAlgorithms() {
		k, err := GenerateKey(alg, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		der, err := k.MarshalPrivate()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Key{ID: k.ID, Alg: alg}.WithPrivate(der)
		if err != nil {
			t.Fatal(err)
		}
		if back.ID != k.ID {
			t.Fatal("kid changed")
		}
		other, _ := GenerateKey(alg, time.Now())
		if _, err := (Key{ID: other.ID, Alg: alg}).WithPrivate(der); err == nil {
			t.Fatal("private key accepted under another kid")
		}
	}
}

// TestSignVerifyRoundTrip signs with each algorithm and checks the token
// against the verifier and the published document.
func TestSignVerifyRoundTrip(t *testing.T) {
	for _, alg := range SupportedAlgorithms() {
		t.Run(string(alg), func(t *testing.T) {
			r, err := NewRing(time.Now(), testPolicy(alg))
			if err != nil {
				t.Fatal(err)
			}
			ks, _ := r.KeySet()
			doc, err := Document(ks)
			if err != nil {
				t.Fatal(err)
			}
			parsed, err := ParseKeySet(doc)
			if err != nil {
				t.Fatalf("parse own document %s: %v", doc, err)
			}
			now := time.Now()
			tok, err := r.Active().Sign(&Claims{Issuer: "https://iss", Subject: "s", Audience: Audience{"api"}, Expiry: now.Add(time.Minute).Unix(),
				IssuedAt: now.Unix(), ID: "j", ClientID: "c", Scope: "read"})
			if err != nil {
				t.Fatal(err)
			}
			v, err := NewVerifier(VerifierConfig{Issuer: "https://iss", Audience: []string{"api"}}, StaticKeys(parsed))
			if err != nil {
				t.Fatal(err)
			}
			c, err := v.Verify(tok)
			if err != nil {
				t.Fatal(err)
			}
			if c.Subject != "s" || c.Scope != "read" {
				t.Fatalf("claims %+v", c)
			}
		})
	}
}

func TestBundleSignVerify(t *testing.T) {
	r, _ := NewRing(time.Now(), DefaultPolicy())
	ks, _ := r.KeySet()
	doc, _ := Document(ks)
	_, priv, _ := generateEd25519()
	b := &Bundle{Sequence: 7, IssuedAt: time.Now().Unix(), JWKS: doc}
	signed, err := SignBundle(b, priv)
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifyBundle(signed, trustedOf(priv))
	if err != nil || got.Sequence != 7 {
		t.Fatalf("%v %+v", err, got)
	}
	if err := CheckNewer(got, 7); !errors.Is(err, ErrStaleBundle) {
		t.Fatal("equal sequence accepted as newer")
	}
	if err := CheckNewer(got, 6); err != nil {
		t.Fatal(err)
	}
	// A revocation-event JWS is not a bundle even with the right key.
	other, err := SignDistributed(b, "tokenwarden-revocation+jws", priv)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyBundle(other, trustedOf(priv)); err == nil {
		t.Fatal("JWS of another typ accepted as a bundle")
	}
	if _, err := VerifyBundle(signed, nil); err == nil {
		t.Fatal("bundle accepted with no trusted key")
	}
	_, priv2, _ := generateEd25519()
	if _, err := VerifyBundle(signed, trustedOf(priv2)); err == nil {
		t.Fatal("bundle accepted with a foreign key")
	}
	// Several trusted keys (a distribution-key rollover): the right one is used.
	if _, err := VerifyBundle(signed, append(trustedOf(priv2), trustedOf(priv)...)); err != nil {
		t.Fatal(err)
	}
}

func TestNewKeySetRejectsBrokenKeys(t *testing.T) {
	bad := []PublicKey{
		{ID: "a", Alg: RS256, Key: &rsa.PublicKey{}},
		{ID: "b", Alg: ES256, Key: &ecdsa.PublicKey{Curve: elliptic.P256()}},
		{ID: "c", Alg: ES256, Key: &ecdsa.PublicKey{Curve: elliptic.P256(), X: big.NewInt(1), Y: big.NewInt(1)}},
		{ID: "d", Alg: EdDSA, Key: ed25519.PublicKey{1, 2, 3}},
		{ID: "", Alg: EdDSA, Key: make(ed25519.PublicKey, 32)},
	}
	for _, k := range bad {
		if _, err := NewKeySet(k); err == nil {
			t.Errorf("key %q accepted", k.ID)
		}
	}
}

func TestAnyAudience(t *testing.T) {
	r, _ := NewRing(time.Now(), DefaultPolicy())
	ks, _ := r.KeySet()
	now := time.Now()
	tok, _ := r.Active().Sign(&Claims{Issuer: "https://iss", Subject: "s", Audience: Audience{"whatever"}, Expiry: now.Add(time.Minute).Unix(),
		IssuedAt: now.Unix(), ID: "j", ClientID: "c"})
	v, err := NewVerifier(VerifierConfig{Issuer: "https://iss", AnyAudience: true}, StaticKeys(ks))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(tok); err != nil {
		t.Fatal(err)
	}
	if _, err := NewVerifier(VerifierConfig{Issuer: "https://iss", AnyAudience: true, Audience: []string{"a"}}, StaticKeys(ks)); err == nil {
		t.Fatal("AnyAudience with an audience list accepted")
	}
	strict, _ := NewVerifier(VerifierConfig{Issuer: "https://iss", Audience: []string{"api"}}, StaticKeys(ks))
	if _, err := strict.Verify(tok); !errors.Is(err, ErrWrongAudience) {
		t.Fatalf("strict verifier: %v", err)
	}
}

// TestRingRevoke: every state can be revoked; the key leaves the published
// set at once, loses its private half, and the ring keeps one active and
// one next key; the record goes when no token of the key can be valid.
func TestRingRevoke(t *testing.T) {
	p := testPolicy(ES256)
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	base := func(t *testing.T) *Ring {
		t.Helper()
		r, err := NewRing(t0, p)
		if err != nil {
			t.Fatal(err)
		}
		// Rotate once so the ring has a retired key too.
		r, err = r.Rotate(t0.Add(p.PropagationDelay), p)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, state := range []State{StateActive, StateNext, StateRetired} {
		t.Run(string(state), func(t *testing.T) {
			r := base(t)
			target := r.find(state)
			now := t0.Add(p.PropagationDelay + time.Minute)
			out, rev, err := r.Revoke(target.ID, now, p, "leaked", "admin")
			if err != nil {
				t.Fatal(err)
			}
			if err := out.Validate(); err != nil || out.Sequence != r.Sequence+1 {
				t.Fatalf("ring after revoke: %v, seq %d", err, out.Sequence)
			}
			k := rev.Key
			if k.State != StateRevoked || k.RevokedBy != "admin" || k.RevokeReason != "leaked" || !k.RevokedAt.Equal(now) ||
				!k.RemoveAt.Equal(now.Add(p.RetainRetired)) || k.signer != nil || rev.WasState != state {
				t.Fatalf("revoked key %+v", k)
			}
			ks, err := out.KeySet()
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := ks.Lookup(target.ID); ok {
				t.Fatal("revoked key still published")
			}
			switch state {
			case StateActive:
				if out.Active().ID != r.Next().ID || out.Active().ActivatedBy != "admin" || rev.Activated.ID != r.Next().ID {
					t.Fatalf("next key not activated: %+v", out.Active())
				}
				// The next key was made at the rotation, a minute ago.
				if rev.CutShort != p.PropagationDelay-time.Minute {
					t.Fatalf("cut short %v", rev.CutShort)
				}
			case StateNext:
				if out.Active().ID != r.Active().ID || out.Next().ID == target.ID || rev.Activated != nil {
					t.Fatalf("after revoking next: active %s next %s", out.Active().ID, out.Next().ID)
				}
			case StateRetired:
				if out.Active().ID != r.Active().ID || out.Next().ID != r.Next().ID || len(out.Keys) != len(r.Keys) {
					t.Fatal("revoking a retired key changed the others")
				}
			}
			if _, _, err := out.Revoke(target.ID, now, p, "again", "admin"); !errors.Is(err, ErrAlreadyRevoked) {
				t.Fatalf("second revoke: %v", err)
			}
			gone, changed, err := out.Advance(now.Add(p.RetainRetired), p)
			if err != nil || !changed {
				t.Fatalf("advance past retention: %v %v", changed, err)
			}
			if slices.ContainsFunc(gone.Keys, func(k *Key) bool { return k.ID == target.ID }) {
				t.Fatal("revoked key record outlived its retention")
			}
		})
	}
	t.Run("cut short", func(t *testing.T) {
		r, _ := NewRing(t0, p)
		_, rev, err := r.Revoke(r.Active().ID, t0.Add(time.Minute), p, "leak", "admin")
		if err != nil || rev.CutShort != p.PropagationDelay-time.Minute {
			t.Fatalf("cut short %v, err %v", rev.CutShort, err)
		}
	})
	t.Run("unknown", func(t *testing.T) {
		r, _ := NewRing(t0, p)
		if _, _, err := r.Revoke("nope", t0, p, "", ""); !errors.Is(err, ErrKeyNotFound) {
			t.Fatal(err)
		}
	})
}
