package jwks

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The tests build every token themselves with the standard library, so they
// do not depend on the issuer's signing code.

const (
	verifyTestIssuer   = "https://issuer.example"
	verifyTestAudience = "demo-api"
	verifyTestNowUnix  = 1_700_000_000
)

var verifyTestNow = time.Unix(verifyTestNowUnix, 0)

type verifyTestEnv struct {
	ec  *ecdsa.PrivateKey
	ed  ed25519.PrivateKey
	rsa *rsa.PrivateKey
	ks  *KeySet
}

var (
	verifyTestEnvOnce sync.Once
	verifyTestEnvVal  *verifyTestEnv
	verifyTestEnvErr  error
)

// verifyTestKeys returns the shared test keys (RSA key generation is slow,
// so it happens once per test binary).
func verifyTestKeys(tb testing.TB) *verifyTestEnv {
	tb.Helper()
	verifyTestEnvOnce.Do(func() {
		e := &verifyTestEnv{}
		var err error
		if e.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			verifyTestEnvErr = err
			return
		}
		if _, e.ed, err = ed25519.GenerateKey(rand.Reader); err != nil {
			verifyTestEnvErr = err
			return
		}
		if e.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			verifyTestEnvErr = err
			return
		}
		e.ks, verifyTestEnvErr = NewKeySet(
			PublicKey{ID: "ec-1", Alg: ES256, Key: &e.ec.PublicKey},
			PublicKey{ID: "ed-1", Alg: EdDSA, Key: e.ed.Public().(ed25519.PublicKey)},
			PublicKey{ID: "rsa-1", Alg: RS256, Key: &e.rsa.PublicKey},
		)
		verifyTestEnvVal = e
	})
	if verifyTestEnvErr != nil {
		tb.Fatalf("test keys: %v", verifyTestEnvErr)
	}
	return verifyTestEnvVal
}

func (e *verifyTestEnv) kid(alg string) string {
	switch alg {
	case "ES256":
		return "ec-1"
	case "EdDSA":
		return "ed-1"
	case "RS256":
		return "rsa-1"
	}
	return "unknown"
}

func (e *verifyTestEnv) key(alg string) any {
	switch alg {
	case "ES256":
		return e.ec
	case "EdDSA":
		return e.ed
	case "RS256":
		return e.rsa
	}
	return nil
}

// good returns a valid token signed with the env key for alg; claims may
// modify the default claims.
func (e *verifyTestEnv) good(tb testing.TB, alg string, claims func(map[string]any)) string {
	tb.Helper()
	return verifyTestSign(tb, alg, e.key(alg), verifyTestHeader(alg, e.kid(alg), nil), verifyTestClaims(claims))
}

// goodHeader is like good but lets the header be modified.
func (e *verifyTestEnv) goodHeader(tb testing.TB, alg string, hdr func(map[string]any)) string {
	tb.Helper()
	return verifyTestSign(tb, alg, e.key(alg), verifyTestHeader(alg, e.kid(alg), hdr), verifyTestClaims(nil))
}

func verifyTestB64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// verifyTestHeader is the JSON of a header; mod may change or delete
// members (a nil value deletes).
func verifyTestHeader(alg, kid string, mod func(map[string]any)) string {
	m := map[string]any{"alg": alg, "typ": "at+jwt", "kid": kid}
	if mod != nil {
		mod(m)
	}
	for k, v := range m {
		if v == nil {
			delete(m, k)
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// verifyTestClaims is the JSON of a valid claim set; mod may change or
// delete members (a nil value deletes; json.RawMessage writes raw JSON).
func verifyTestClaims(mod func(map[string]any)) string {
	m := map[string]any{
		"iss":       verifyTestIssuer,
		"sub":       "alice",
		"aud":       verifyTestAudience,
		"exp":       verifyTestNowUnix + 600,
		"iat":       verifyTestNowUnix - 60,
		"jti":       "tok-1",
		"client_id": "demo-app",
		"scope":     "read write",
		"sid":       "sess-1",
	}
	if mod != nil {
		mod(m)
	}
	for k, v := range m {
		if v == nil {
			delete(m, k)
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// verifyTestSig signs msg per JWS alg with key: ES256 as raw r||s, EdDSA,
// RS256 PKCS#1 v1.5, HS256 with key as the []byte secret.
func verifyTestSig(tb testing.TB, alg string, key any, msg []byte) []byte {
	tb.Helper()
	h := sha256.Sum256(msg)
	switch alg {
	case "ES256":
		r, s, err := ecdsa.Sign(rand.Reader, key.(*ecdsa.PrivateKey), h[:])
		if err != nil {
			tb.Fatal(err)
		}
		out := make([]byte, 64)
		r.FillBytes(out[:32])
		s.FillBytes(out[32:])
		return out
	case "EdDSA":
		return ed25519.Sign(key.(ed25519.PrivateKey), msg)
	case "RS256":
		sig, err := rsa.SignPKCS1v15(nil, key.(*rsa.PrivateKey), crypto.SHA256, h[:])
		if err != nil {
			tb.Fatal(err)
		}
		return sig
	case "HS256":
		m := hmac.New(sha256.New, key.([]byte))
		m.Write(msg)
		return m.Sum(nil)
	}
	tb.Fatalf("cannot sign %s", alg)
	return nil
}

// verifyTestSign builds a compact JWS from raw header and payload JSON.
func verifyTestSign(tb testing.TB, alg string, key any, header, payload string) string {
	tb.Helper()
	si := verifyTestB64([]byte(header)) + "." + verifyTestB64([]byte(payload))
	return si + "." + verifyTestB64(verifyTestSig(tb, alg, key, []byte(si)))
}

// verifyTestWithSig replaces the signature of tok by sig.
func verifyTestWithSig(tok string, sig []byte) string {
	return tok[:strings.LastIndexByte(tok, '.')+1] + verifyTestB64(sig)
}

func verifyTestConfig() VerifierConfig {
	return VerifierConfig{
		Issuer:   verifyTestIssuer,
		Audience: []string{verifyTestAudience},
		Now:      func() time.Time { return verifyTestNow },
	}
}

func verifyTestVerifier(tb testing.TB, ks *KeySet, mod func(*VerifierConfig)) *Verifier {
	tb.Helper()
	cfg := verifyTestConfig()
	if mod != nil {
		mod(&cfg)
	}
	v, err := NewVerifier(cfg, StaticKeys(ks))
	if err != nil {
		tb.Fatalf("NewVerifier: %v", err)
	}
	return v
}

// verifyTestReasons are all the Reason texts Verify may produce; none of
// them contains token data.
var verifyTestReasons = map[string]bool{
	"token too large":                       true,
	"malformed token":                       true,
	"forbidden header parameter":            true,
	"unsupported critical header parameter": true,
	"unsupported algorithm":                 true,
	"algorithm does not match key":          true,
	"unknown key id":                        true,
	"bad signature":                         true,
	"wrong token type":                      true,
	"token expired":                         true,
	"token not yet valid":                   true,
	"wrong issuer":                          true,
	"wrong audience":                        true,
	"missing required claim":                true,
}

// verifyTestCheckErr asserts err is a *VerifyError wrapping want.
func verifyTestCheckErr(tb testing.TB, c *Claims, err, want error) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("verified (claims %+v), want %v", c, want)
	}
	if c != nil {
		tb.Errorf("claims %+v returned with error %v", c, err)
	}
	var ve *VerifyError
	if !errors.As(err, &ve) {
		tb.Fatalf("error %v (%T) is not a *VerifyError", err, err)
	}
	if !verifyTestReasons[ve.Reason] {
		tb.Errorf("reason %q is not one of the fixed reasons", ve.Reason)
	}
	if !errors.Is(err, want) {
		tb.Fatalf("error %q (reason %q), want %v", err, ve.Reason, want)
	}
}

type verifyTestCase struct {
	name  string
	token func(t *testing.T, e *verifyTestEnv) string
	cfg   func(*VerifierConfig)
	want  error // nil: must verify
}

func verifyTestCases() []verifyTestCase {
	type tcs = []verifyTestCase
	claims := func(alg string, mod func(map[string]any)) func(*testing.T, *verifyTestEnv) string {
		return func(t *testing.T, e *verifyTestEnv) string { return e.good(t, alg, mod) }
	}
	header := func(alg string, mod func(map[string]any)) func(*testing.T, *verifyTestEnv) string {
		return func(t *testing.T, e *verifyTestEnv) string { return e.goodHeader(t, alg, mod) }
	}
	// rawHeader signs the given header JSON with the ES256 key.
	rawHeader := func(h string) func(*testing.T, *verifyTestEnv) string {
		return func(t *testing.T, e *verifyTestEnv) string {
			return verifyTestSign(t, "ES256", e.ec, h, verifyTestClaims(nil))
		}
	}
	// rawPayload signs the given payload with the ES256 key and a good header.
	rawPayload := func(p string) func(*testing.T, *verifyTestEnv) string {
		return func(t *testing.T, e *verifyTestEnv) string {
			return verifyTestSign(t, "ES256", e.ec, verifyTestHeader("ES256", "ec-1", nil), p)
		}
	}
	set := func(kv ...any) func(map[string]any) {
		return func(m map[string]any) {
			for i := 0; i+1 < len(kv); i += 2 {
				m[kv[i].(string)] = kv[i+1]
			}
		}
	}
	del := func(k string) func(map[string]any) { return func(m map[string]any) { m[k] = nil } }
	raw := func(s string) json.RawMessage { return json.RawMessage(s) }
	now := int64(verifyTestNowUnix)

	var cases tcs
	// Valid tokens.
	for _, alg := range []string{"ES256", "EdDSA", "RS256"} {
		cases = append(cases,
			verifyTestCase{name: "valid " + alg, token: claims(alg, nil)},
			verifyTestCase{name: "valid " + alg + " typ application/at+jwt", token: header(alg, set("typ", "application/at+jwt"))},
		)
	}
	cases = append(cases, tcs{
		{name: "valid typ Application/at+jwt (prefix case-insensitive)", token: header("ES256", set("typ", "Application/at+jwt"))},
		{name: "valid typ APPLICATION/at+jwt", token: header("EdDSA", set("typ", "APPLICATION/at+jwt"))},
		{name: "valid aud array", token: claims("ES256", set("aud", []string{"other-api", verifyTestAudience}))},
		{name: "valid aud array of one", token: claims("ES256", set("aud", []string{verifyTestAudience}))},
		{name: "valid second configured audience", token: claims("ES256", set("aud", "other-api")),
			cfg: func(c *VerifierConfig) { c.Audience = []string{verifyTestAudience, "other-api"} }},
		{name: "valid without optional scope sid nbf", token: claims("ES256", func(m map[string]any) { m["scope"], m["sid"] = nil, nil })},
		{name: "valid with nbf now", token: claims("ES256", set("nbf", now))},
		{name: "valid escaped header member name", token: rawHeader(`{"\u0061lg":"ES256","typ":"at\u002bjwt","kid":"ec-1"}`)},
		{name: "valid header names are case-sensitive (ALG is an unknown parameter)", token: rawHeader(`{"alg":"ES256","ALG":"none","typ":"at+jwt","kid":"ec-1"}`)},
		{name: "valid unknown claims and nested objects ignored", token: claims("ES256", set("cnf", map[string]any{"x": []any{1, "}", map[string]any{"y": "]"}}}, "extra", nil))},
		{name: "valid whitespace in JSON", token: rawHeader(" {\n \"alg\" : \"ES256\" ,\t\"typ\":\"at+jwt\", \"kid\":\"ec-1\" } ")},
		{name: "valid many header members (map duplicate check)", token: header("ES256", func(m map[string]any) {
			for i := 0; i < 40; i++ {
				m[fmt.Sprintf("p%02d", i)] = i
			}
		})},

		// Leeway (default 30s) at the edges. exp is exclusive.
		{name: "leeway exp 29s ago valid", token: claims("ES256", set("exp", now-29))},
		{name: "leeway exp exactly leeway ago expired", token: claims("ES256", set("exp", now-30)), want: ErrExpired},
		{name: "leeway exp 31s ago expired", token: claims("ES256", set("exp", now-31)), want: ErrExpired},
		{name: "leeway nbf 30s ahead valid", token: claims("ES256", set("nbf", now+30))},
		{name: "leeway nbf 31s ahead not yet valid", token: claims("ES256", set("nbf", now+31)), want: ErrNotYetValid},
		{name: "leeway iat 30s ahead valid", token: claims("ES256", set("iat", now+30))},
		{name: "leeway iat 31s ahead not yet valid", token: claims("ES256", set("iat", now+31)), want: ErrNotYetValid},
		{name: "custom leeway 5s exp 4s ago valid", token: claims("ES256", set("exp", now-4)),
			cfg: func(c *VerifierConfig) { c.Leeway = 5 * time.Second }},
		{name: "custom leeway 5s exp 5s ago expired", token: claims("ES256", set("exp", now-5)),
			cfg: func(c *VerifierConfig) { c.Leeway = 5 * time.Second }, want: ErrExpired},
		{name: "custom leeway 5s nbf 6s ahead", token: claims("ES256", set("nbf", now+6)),
			cfg: func(c *VerifierConfig) { c.Leeway = 5 * time.Second }, want: ErrNotYetValid},
		{name: "sub-second clock: exp+leeway minus 1ns valid", token: claims("ES256", set("exp", now)),
			cfg: func(c *VerifierConfig) {
				c.Now = func() time.Time { return verifyTestNow.Add(30*time.Second - time.Nanosecond) }
			}},

		// Times.
		{name: "expired", token: claims("EdDSA", set("exp", now-3600, "iat", now-4200)), want: ErrExpired},
		{name: "nbf in the future", token: claims("EdDSA", set("nbf", now+3600)), want: ErrNotYetValid},
		{name: "iat in the future", token: claims("RS256", set("iat", now+3600, "exp", now+4200)), want: ErrNotYetValid},

		// alg.
		{name: "alg none without signature", token: func(t *testing.T, e *verifyTestEnv) string {
			return verifyTestB64([]byte(verifyTestHeader("none", "ec-1", nil))) + "." + verifyTestB64([]byte(verifyTestClaims(nil))) + "."
		}, want: ErrMalformed},
		{name: "alg none with a signature", token: func(t *testing.T, e *verifyTestEnv) string {
			return verifyTestB64([]byte(verifyTestHeader("none", "ec-1", nil))) + "." + verifyTestB64([]byte(verifyTestClaims(nil))) + ".AAAA"
		}, want: ErrUnsupportedAlg},
		{name: "alg NONE", token: func(t *testing.T, e *verifyTestEnv) string {
			return verifyTestB64([]byte(verifyTestHeader("NONE", "ec-1", nil))) + "." + verifyTestB64([]byte(verifyTestClaims(nil))) + ".AAAA"
		}, want: ErrUnsupportedAlg},
		{name: "HS256 with the EC public key (SPKI DER) as secret", token: func(t *testing.T, e *verifyTestEnv) string {
			der, err := x509.MarshalPKIXPublicKey(&e.ec.PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			return verifyTestSign(t, "HS256", der, verifyTestHeader("HS256", "ec-1", nil), verifyTestClaims(nil))
		}, want: ErrUnsupportedAlg},
		{name: "HS256 with the RSA public key PEM as secret", token: func(t *testing.T, e *verifyTestEnv) string {
			der, err := x509.MarshalPKIXPublicKey(&e.rsa.PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			secret := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
			return verifyTestSign(t, "HS256", secret, verifyTestHeader("HS256", "rsa-1", nil), verifyTestClaims(nil))
		}, want: ErrUnsupportedAlg},
		{name: "HS256 with the Ed25519 public key as secret", token: func(t *testing.T, e *verifyTestEnv) string {
			return verifyTestSign(t, "HS256", []byte(e.ed.Public().(ed25519.PublicKey)), verifyTestHeader("HS256", "ed-1", nil), verifyTestClaims(nil))
		}, want: ErrUnsupportedAlg},
		{name: "alg ES384", token: header("ES256", set("alg", "ES384")), want: ErrUnsupportedAlg},
		{name: "alg not a string", token: header("ES256", set("alg", 256)), want: ErrMalformed},
		{name: "alg null", token: rawHeader(`{"alg":null,"typ":"at+jwt","kid":"ec-1"}`), want: ErrMalformed},
		{name: "alg missing", token: header("ES256", del("alg")), want: ErrMalformed},
		{name: "alg outside the allow-list", token: claims("RS256", nil),
			cfg: func(c *VerifierConfig) { c.Algorithms = []Algorithm{ES256, EdDSA} }, want: ErrUnsupportedAlg},
		{name: "key alg differs: ES256 key, header EdDSA", token: func(t *testing.T, e *verifyTestEnv) string {
			return verifyTestSign(t, "EdDSA", e.ed, verifyTestHeader("EdDSA", "ec-1", nil), verifyTestClaims(nil))
		}, want: ErrUnsupportedAlg},
		{name: "key alg differs: Ed25519 key, header ES256", token: func(t *testing.T, e *verifyTestEnv) string {
			return verifyTestSign(t, "ES256", e.ec, verifyTestHeader("ES256", "ed-1", nil), verifyTestClaims(nil))
		}, want: ErrUnsupportedAlg},
		{name: "key alg differs: EC key, header RS256", token: func(t *testing.T, e *verifyTestEnv) string {
			return verifyTestSign(t, "RS256", e.rsa, verifyTestHeader("RS256", "ec-1", nil), verifyTestClaims(nil))
		}, want: ErrUnsupportedAlg},

		// Signatures.
		{name: "ES256 zero r and s", token: func(t *testing.T, e *verifyTestEnv) string {
			return verifyTestWithSig(e.good(t, "ES256", nil), make([]byte, 64))
		}, want: ErrBadSignature},
		{name: "ES256 zero r", token: func(t *testing.T, e *verifyTestEnv) string {
			tok := e.good(t, "ES256", nil)
			sig, _ := base64.RawURLEncoding.DecodeString(tok[strings.LastIndexByte(tok, '.')+1:])
			clear(sig[:32])
			return verifyTestWithSig(tok, sig)
		}, want: ErrBadSignature},
		{name: "ES256 zero s", token: func(t *testing.T, e *verifyTestEnv) string {
			tok := e.good(t, "ES256", nil)
			sig, _ := base64.RawURLEncoding.DecodeString(tok[strings.LastIndexByte(tok, '.')+1:])
			clear(sig[32:])
			return verifyTestWithSig(tok, sig)
		}, want: ErrBadSignature},
		{name: "ES256 r = N", token: func(t *testing.T, e *verifyTestEnv) string {
			tok := e.good(t, "ES256", nil)
			sig, _ := base64.RawURLEncoding.DecodeString(tok[strings.LastIndexByte(tok, '.')+1:])
			elliptic.P256().Params().N.FillBytes(sig[:32])
			return verifyTestWithSig(tok, sig)
		}, want: ErrBadSignature},
		{name: "ES256 s above N (all ones)", token: func(t *testing.T, e *verifyTestEnv) string {
			tok := e.good(t, "ES256", nil)
			sig, _ := base64.RawURLEncoding.DecodeString(tok[strings.LastIndexByte(tok, '.')+1:])
			for i := 32; i < 64; i++ {
				sig[i] = 0xff
			}
			return verifyTestWithSig(tok, sig)
		}, want: ErrBadSignature},
		{name: "ES256 DER signature instead of raw", token: func(t *testing.T, e *verifyTestEnv) string {
			tok := e.good(t, "ES256", nil)
			si := tok[:strings.LastIndexByte(tok, '.')]
			h := sha256.Sum256([]byte(si))
			der, err := ecdsa.SignASN1(rand.Reader, e.ec, h[:])
			if err != nil {
				t.Fatal(err)
			}
			return verifyTestWithSig(tok, der)
		}, want: ErrBadSignature},
		{name: "ES256 63-byte signature", token: func(t *testing.T, e *verifyTestEnv) string {
			tok := e.good(t, "ES256", nil)
			sig, _ := base64.RawURLEncoding.DecodeString(tok[strings.LastIndexByte(tok, '.')+1:])
			return verifyTestWithSig(tok, sig[1:])
		}, want: ErrBadSignature},
		{name: "ES256 65-byte signature", token: func(t *testing.T, e *verifyTestEnv) string {
			tok := e.good(t, "ES256", nil)
			sig, _ := base64.RawURLEncoding.DecodeString(tok[strings.LastIndexByte(tok, '.')+1:])
			return verifyTestWithSig(tok, append([]byte{0}, sig...))
		}, want: ErrBadSignature},
		{name: "EdDSA 63-byte signature", token: func(t *testing.T, e *verifyTestEnv) string {
			tok := e.good(t, "EdDSA", nil)
			sig, _ := base64.RawURLEncoding.DecodeString(tok[strings.LastIndexByte(tok, '.')+1:])
			return verifyTestWithSig(tok, sig[:63])
		}, want: ErrBadSignature},
		{name: "RS256 short signature", token: func(t *testing.T, e *verifyTestEnv) string {
			tok := e.good(t, "RS256", nil)
			sig, _ := base64.RawURLEncoding.DecodeString(tok[strings.LastIndexByte(tok, '.')+1:])
			return verifyTestWithSig(tok, sig[1:])
		}, want: ErrBadSignature},
		{name: "RS256 flipped signature bit", token: func(t *testing.T, e *verifyTestEnv) string {
			tok := e.good(t, "RS256", nil)
			sig, _ := base64.RawURLEncoding.DecodeString(tok[strings.LastIndexByte(tok, '.')+1:])
			sig[100] ^= 1
			return verifyTestWithSig(tok, sig)
		}, want: ErrBadSignature},
		{name: "tampered payload keeps old signature", token: func(t *testing.T, e *verifyTestEnv) string {
			tok := e.good(t, "ES256", nil)
			parts := strings.Split(tok, ".")
			parts[1] = verifyTestB64([]byte(verifyTestClaims(set("sub", "admin"))))
			return strings.Join(parts, ".")
		}, want: ErrBadSignature},
		{name: "EdDSA tampered header", token: func(t *testing.T, e *verifyTestEnv) string {
			tok := e.good(t, "EdDSA", nil)
			parts := strings.Split(tok, ".")
			parts[0] = verifyTestB64([]byte(verifyTestHeader("EdDSA", "ed-1", set("x", 1))))
			return strings.Join(parts, ".")
		}, want: ErrBadSignature},
		{name: "signed by another key under a known kid", token: func(t *testing.T, e *verifyTestEnv) string {
			other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			return verifyTestSign(t, "ES256", other, verifyTestHeader("ES256", "ec-1", nil), verifyTestClaims(nil))
		}, want: ErrBadSignature},
		{name: "foreign kid", token: func(t *testing.T, e *verifyTestEnv) string {
			other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			return verifyTestSign(t, "ES256", other, verifyTestHeader("ES256", "attacker-1", nil), verifyTestClaims(nil))
		}, want: ErrUnknownKey},
		{name: "kid missing", token: header("ES256", del("kid")), want: ErrMalformed},
		{name: "kid empty", token: header("ES256", set("kid", "")), want: ErrMalformed},
		{name: "kid not a string", token: header("ES256", set("kid", 1)), want: ErrMalformed},

		// Keys from the token itself are never used.
		{name: "jwk header with the attacker's own key and a valid signature by it", token: func(t *testing.T, e *verifyTestEnv) string {
			att, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			jwk := map[string]any{"kty": "EC", "crv": "P-256",
				"x": verifyTestB64(att.X.FillBytes(make([]byte, 32))),
				"y": verifyTestB64(att.Y.FillBytes(make([]byte, 32)))}
			return verifyTestSign(t, "ES256", att, verifyTestHeader("ES256", "ec-1", set("jwk", jwk)), verifyTestClaims(nil))
		}, want: ErrMalformed},
		{name: "jwk header, attacker kid", token: func(t *testing.T, e *verifyTestEnv) string {
			att, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			jwk := map[string]any{"kty": "EC", "crv": "P-256", "kid": "att",
				"x": verifyTestB64(att.X.FillBytes(make([]byte, 32))),
				"y": verifyTestB64(att.Y.FillBytes(make([]byte, 32)))}
			return verifyTestSign(t, "ES256", att, verifyTestHeader("ES256", "att", set("jwk", jwk)), verifyTestClaims(nil))
		}, want: ErrMalformed},
		{name: "jwk header even with the legitimate key's signature", token: header("ES256", set("jwk", map[string]any{"kty": "EC"})), want: ErrMalformed},
		{name: "jku header", token: header("ES256", set("jku", "https://attacker.example/jwks.json")), want: ErrMalformed},
		{name: "x5u header", token: header("ES256", set("x5u", "https://attacker.example/cert.pem")), want: ErrMalformed},
		{name: "x5c header", token: header("ES256", set("x5c", []string{"MIIB"})), want: ErrMalformed},
		{name: "x5t header", token: header("ES256", set("x5t", "abc")), want: ErrMalformed},
		{name: "x5t#S256 header", token: header("ES256", set("x5t#S256", "abc")), want: ErrMalformed},
		{name: "jwk null still rejected", token: rawHeader(`{"alg":"ES256","typ":"at+jwt","kid":"ec-1","jwk":null}`), want: ErrMalformed},

		// Extensions.
		{name: "crit with a name", token: header("ES256", set("crit", []string{"exp"}, "exp", 1)), want: ErrMalformed},
		{name: "crit empty", token: header("ES256", set("crit", []string{})), want: ErrMalformed},
		{name: "b64 false", token: header("ES256", set("b64", false, "crit", nil)), want: ErrMalformed},
		{name: "zip", token: header("ES256", set("zip", "DEF")), want: ErrMalformed},

		// typ.
		{name: "typ JWT", token: header("ES256", set("typ", "JWT")), want: ErrWrongType},
		{name: "typ missing", token: header("ES256", del("typ")), want: ErrWrongType},
		{name: "typ at+JWT", token: header("ES256", set("typ", "at+JWT")), want: ErrWrongType},
		{name: "typ application/jwt", token: header("ES256", set("typ", "application/jwt")), want: ErrWrongType},
		{name: "typ application/at+jwt with trailing space", token: header("ES256", set("typ", "application/at+jwt ")), want: ErrWrongType},
		{name: "typ xpplication/at+jwt", token: header("ES256", set("typ", "xpplication/at+jwt")), want: ErrWrongType},
		{name: "typ not a string", token: header("ES256", set("typ", []string{"at+jwt"})), want: ErrWrongType},

		// Duplicates.
		{name: "duplicate header alg ES256 then none", token: rawHeader(`{"alg":"ES256","alg":"none","typ":"at+jwt","kid":"ec-1"}`), want: ErrMalformed},
		{name: "duplicate header alg none then ES256", token: rawHeader(`{"alg":"none","alg":"ES256","typ":"at+jwt","kid":"ec-1"}`), want: ErrMalformed},
		{name: "duplicate header alg via escape", token: rawHeader(`{"alg":"ES256","\u0061lg":"ES256","typ":"at+jwt","kid":"ec-1"}`), want: ErrMalformed},
		{name: "duplicate header kid", token: rawHeader(`{"alg":"ES256","typ":"at+jwt","kid":"other","kid":"ec-1"}`), want: ErrMalformed},
		{name: "duplicate unknown header member", token: rawHeader(`{"alg":"ES256","typ":"at+jwt","kid":"ec-1","x":1,"x":2}`), want: ErrMalformed},
		{name: "duplicate header member beyond the linear window", token: rawHeader(func() string {
			var b strings.Builder
			b.WriteString(`{"alg":"ES256","typ":"at+jwt","kid":"ec-1"`)
			for i := 0; i < 30; i++ {
				fmt.Fprintf(&b, `,"p%d":%d`, i, i)
			}
			b.WriteString(`,"p25":0}`)
			return b.String()
		}()), want: ErrMalformed},
		{name: "duplicate payload sub", token: rawPayload(`{"iss":"` + verifyTestIssuer + `","sub":"alice","aud":"demo-api","exp":` + fmt.Sprint(now+600) + `,"iat":` + fmt.Sprint(now) + `,"jti":"j","client_id":"c","sub":"admin"}`), want: ErrMalformed},
		{name: "duplicate payload exp via escape", token: rawPayload(`{"iss":"` + verifyTestIssuer + `","sub":"alice","aud":"demo-api","exp":` + fmt.Sprint(now-600) + `,"iat":` + fmt.Sprint(now) + `,"jti":"j","client_id":"c","\u0065xp":` + fmt.Sprint(now+600) + `}`), want: ErrMalformed},

		// Header and payload shape.
		{name: "header is an array", token: rawHeader(`["alg","ES256"]`), want: ErrMalformed},
		{name: "header is a string", token: rawHeader(`"ES256"`), want: ErrMalformed},
		{name: "header is invalid JSON", token: rawHeader(`{"alg":"ES256","typ":"at+jwt","kid":"ec-1"`), want: ErrMalformed},
		{name: "header with trailing data", token: rawHeader(`{"alg":"ES256","typ":"at+jwt","kid":"ec-1"}{}`), want: ErrMalformed},
		{name: "header with invalid UTF-8", token: rawHeader("{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\",\"x\":\"\xff\"}"), want: ErrMalformed},
		{name: "header empty object", token: rawHeader(`{}`), want: ErrMalformed},
		{name: "payload is an array", token: rawPayload(`[]`), want: ErrMalformed},
		{name: "payload is invalid JSON", token: rawPayload(`{"sub":`), want: ErrMalformed},
		{name: "payload with invalid UTF-8", token: rawPayload(strings.Replace(verifyTestClaims(nil), "alice", "al\xffice", 1)), want: ErrMalformed},
		{name: "payload null", token: rawPayload(`null`), want: ErrMalformed},

		// Claims.
		{name: "wrong iss", token: claims("ES256", set("iss", "https://evil.example")), want: ErrWrongIssuer},
		{name: "iss with trailing slash", token: claims("ES256", set("iss", verifyTestIssuer+"/")), want: ErrWrongIssuer},
		{name: "iss different case", token: claims("ES256", set("iss", strings.ToUpper(verifyTestIssuer))), want: ErrWrongIssuer},
		{name: "iss missing", token: claims("ES256", del("iss")), want: ErrMissingClaim},
		{name: "iss not a string", token: claims("ES256", set("iss", 1)), want: ErrMalformed},
		{name: "wrong aud", token: claims("ES256", set("aud", "other-api")), want: ErrWrongAudience},
		{name: "aud array without ours", token: claims("ES256", set("aud", []string{"a", "b"})), want: ErrWrongAudience},
		{name: "aud empty array", token: claims("ES256", set("aud", []string{})), want: ErrWrongAudience},
		{name: "aud missing", token: claims("ES256", del("aud")), want: ErrMissingClaim},
		{name: "aud number", token: claims("ES256", set("aud", 1)), want: ErrMalformed},
		{name: "aud array with a number", token: claims("ES256", set("aud", []any{verifyTestAudience, 1})), want: ErrMalformed},
		{name: "aud nested array", token: claims("ES256", set("aud", []any{[]string{verifyTestAudience}})), want: ErrMalformed},
		{name: "aud null", token: claims("ES256", set("aud", raw("null"))), want: ErrMalformed},
		{name: "sub missing", token: claims("ES256", del("sub")), want: ErrMissingClaim},
		{name: "sub empty", token: claims("ES256", set("sub", "")), want: ErrMissingClaim},
		{name: "sub null", token: claims("ES256", set("sub", raw("null"))), want: ErrMalformed},
		{name: "jti missing", token: claims("ES256", del("jti")), want: ErrMissingClaim},
		{name: "jti empty", token: claims("ES256", set("jti", "")), want: ErrMissingClaim},
		{name: "client_id missing", token: claims("ES256", del("client_id")), want: ErrMissingClaim},
		{name: "client_id empty", token: claims("ES256", set("client_id", "")), want: ErrMissingClaim},
		{name: "scope not a string", token: claims("ES256", set("scope", []string{"read"})), want: ErrMalformed},
		{name: "exp missing", token: claims("ES256", del("exp")), want: ErrMissingClaim},
		{name: "iat missing", token: claims("ES256", del("iat")), want: ErrMissingClaim},
		{name: "exp string", token: claims("ES256", set("exp", fmt.Sprint(now+600))), want: ErrMalformed},
		{name: "exp float", token: claims("ES256", set("exp", raw(fmt.Sprint(now+600)+".5"))), want: ErrMalformed},
		{name: "exp integral float", token: claims("ES256", set("exp", raw(fmt.Sprint(now+600)+".0"))), want: ErrMalformed},
		{name: "exp exponent", token: claims("ES256", set("exp", raw("1.8e9"))), want: ErrMalformed},
		{name: "exp huge", token: claims("ES256", set("exp", raw("99999999999999999999999999"))), want: ErrMalformed},
		{name: "exp beyond year 9999", token: claims("ES256", set("exp", raw("253402300800"))), want: ErrMalformed},
		{name: "exp max int64", token: claims("ES256", set("exp", raw("9223372036854775807"))), want: ErrMalformed},
		{name: "exp negative", token: claims("ES256", set("exp", raw("-1"))), want: ErrMalformed},
		{name: "exp null", token: claims("ES256", set("exp", raw("null"))), want: ErrMalformed},
		{name: "exp true", token: claims("ES256", set("exp", true)), want: ErrMalformed},
		{name: "nbf float", token: claims("ES256", set("nbf", 1.5)), want: ErrMalformed},
		{name: "nbf huge", token: claims("ES256", set("nbf", raw("9223372036854775807"))), want: ErrMalformed},
		{name: "iat string", token: claims("ES256", set("iat", "now")), want: ErrMalformed},

		// Serialization.
		{name: "empty token", token: func(*testing.T, *verifyTestEnv) string { return "" }, want: ErrMalformed},
		{name: "two dots only", token: func(*testing.T, *verifyTestEnv) string { return ".." }, want: ErrMalformed},
		{name: "two parts", token: func(t *testing.T, e *verifyTestEnv) string {
			tok := e.good(t, "ES256", nil)
			return tok[:strings.LastIndexByte(tok, '.')]
		}, want: ErrMalformed},
		{name: "four parts", token: func(t *testing.T, e *verifyTestEnv) string { return e.good(t, "ES256", nil) + ".AAAA" }, want: ErrMalformed},
		{name: "five parts (JWE shape)", token: func(t *testing.T, e *verifyTestEnv) string { return e.good(t, "ES256", nil) + ".AAAA.AAAA" }, want: ErrMalformed},
		{name: "trailing dot", token: func(t *testing.T, e *verifyTestEnv) string { return e.good(t, "ES256", nil) + "." }, want: ErrMalformed},
		{name: "empty payload", token: func(t *testing.T, e *verifyTestEnv) string {
			si := verifyTestB64([]byte(verifyTestHeader("EdDSA", "ed-1", nil))) + "."
			return si + "." + verifyTestB64(ed25519.Sign(e.ed, []byte(si)))
		}, want: ErrMalformed},
		{name: "empty header", token: func(t *testing.T, e *verifyTestEnv) string {
			tok := e.good(t, "ES256", nil)
			return tok[strings.IndexByte(tok, '.'):]
		}, want: ErrMalformed},
		{name: "padded header", token: verifyTestPadded(0), want: ErrMalformed},
		{name: "padded payload", token: verifyTestPadded(1), want: ErrMalformed},
		{name: "padded signature", token: verifyTestPadded(2), want: ErrMalformed},
		{name: "standard alphabet signature", token: func(t *testing.T, e *verifyTestEnv) string {
			for i := 0; i < 1000; i++ {
				tok := e.good(t, "ES256", nil)
				sig := tok[strings.LastIndexByte(tok, '.')+1:]
				if strings.ContainsAny(sig, "-_") {
					std := strings.NewReplacer("-", "+", "_", "/").Replace(sig)
					return tok[:len(tok)-len(sig)] + std
				}
			}
			t.Fatal("no signature with - or _ in 1000 tries")
			return ""
		}, want: ErrMalformed},
		{name: "standard alphabet payload", token: func(t *testing.T, e *verifyTestEnv) string {
			// "???" and ">>>" encode to '/' and '+' in the standard alphabet.
			p := verifyTestClaims(set("x", "???>>>??>>?>"))
			tok := verifyTestSign(t, "EdDSA", e.ed, verifyTestHeader("EdDSA", "ed-1", nil), p)
			parts := strings.Split(tok, ".")
			if !strings.ContainsAny(parts[1], "-_") {
				t.Fatal("payload encoding has no - or _")
			}
			parts[1] = base64.RawStdEncoding.EncodeToString([]byte(p))
			return strings.Join(parts, ".")
		}, want: ErrMalformed},
		{name: "non-canonical trailing bits in signature", token: func(t *testing.T, e *verifyTestEnv) string {
			tok := e.good(t, "EdDSA", nil) // 64-byte signature: last char carries 4 zero bits
			const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
			last := strings.IndexByte(alphabet, tok[len(tok)-1])
			return tok[:len(tok)-1] + string(alphabet[last|1])
		}, want: ErrMalformed},
		{name: "newline inside signature", token: func(t *testing.T, e *verifyTestEnv) string {
			tok := e.good(t, "ES256", nil)
			return tok[:len(tok)-10] + "\n" + tok[len(tok)-10:]
		}, want: ErrMalformed},
		{name: "CR inside header", token: func(t *testing.T, e *verifyTestEnv) string {
			tok := e.good(t, "ES256", nil)
			return tok[:4] + "\r" + tok[4:]
		}, want: ErrMalformed},
		{name: "Bearer prefix", token: func(t *testing.T, e *verifyTestEnv) string { return "Bearer " + e.good(t, "ES256", nil) }, want: ErrMalformed},
		{name: "trailing space", token: func(t *testing.T, e *verifyTestEnv) string { return e.good(t, "ES256", nil) + " " }, want: ErrMalformed},
		{name: "huge token", token: func(t *testing.T, e *verifyTestEnv) string {
			return e.good(t, "ES256", set("pad", strings.Repeat("x", 9000)))
		}, want: ErrTooLarge},
		{name: "huge garbage is too large before malformed", token: func(*testing.T, *verifyTestEnv) string {
			return strings.Repeat("!", DefaultMaxTokenSize+1)
		}, want: ErrTooLarge},
		{name: "exactly MaxTokenSize is allowed", token: func(t *testing.T, e *verifyTestEnv) string {
			for hx := 0; hx < 4; hx++ {
				h := verifyTestHeader("EdDSA", "ed-1", set("h", strings.Repeat("h", hx)))
				mk := func(pad int) string {
					return verifyTestSign(t, "EdDSA", e.ed, h, verifyTestClaims(set("pad", strings.Repeat("x", pad))))
				}
				base := len(mk(0))
				for pad := (DefaultMaxTokenSize-base)*3/4 + 4; pad >= 0; pad-- {
					tok := mk(pad)
					if len(tok) == DefaultMaxTokenSize {
						return tok
					}
					if len(tok) < DefaultMaxTokenSize {
						break
					}
				}
			}
			t.Fatal("cannot build a token of exactly the limit")
			return ""
		}},
		{name: "small MaxTokenSize", token: claims("ES256", nil),
			cfg: func(c *VerifierConfig) { c.MaxTokenSize = 200 }, want: ErrTooLarge},
	}...)
	return cases
}

// verifyTestPadded returns a token builder whose part i is base64url with
// '=' padding. The claims are chosen so every part needs padding.
func verifyTestPadded(i int) func(*testing.T, *verifyTestEnv) string {
	return func(t *testing.T, e *verifyTestEnv) string {
		for pad := 0; pad < 3; pad++ {
			h := verifyTestHeader("EdDSA", "ed-1", func(m map[string]any) { m["p"] = strings.Repeat("h", pad) })
			for pp := 0; pp < 3; pp++ {
				p := verifyTestClaims(func(m map[string]any) { m["p"] = strings.Repeat("p", pp) })
				if len(h)%3 == 0 || len(p)%3 == 0 {
					continue
				}
				tok := verifyTestSign(t, "EdDSA", e.ed, h, p)
				parts := strings.Split(tok, ".")
				padded := [][]byte{[]byte(h), []byte(p), ed25519.Sign(e.ed, []byte(parts[0]+"."+parts[1]))}
				parts[i] = base64.URLEncoding.EncodeToString(padded[i])
				if !strings.HasSuffix(parts[i], "=") {
					t.Fatalf("part %d has no padding", i)
				}
				return strings.Join(parts, ".")
			}
		}
		t.Fatal("no paddable header/payload found")
		return ""
	}
}

// verifyTestDetails maps a substring of a failing case's name to text its
// error must contain.
var verifyTestDetails = map[string]string{
	"duplicate":                  "duplicate member",
	"jwk header":                 "parameter jwk is not accepted",
	"jwk null":                   "parameter jwk is not accepted",
	"jku header":                 "parameter jku is not accepted",
	"x5u header":                 "parameter x5u is not accepted",
	"x5c header":                 "parameter x5c is not accepted",
	"x5t header":                 "parameter x5t is not accepted",
	"x5t#S256 header":            "parameter x5t#S256 is not accepted",
	"crit":                       "header has crit",
	"b64 false":                  "parameter b64 is not accepted",
	"zip":                        "parameter zip is not accepted",
	"padded":                     "outside the base64url alphabet",
	"standard alphabet":          "outside the base64url alphabet",
	"newline":                    "outside the base64url alphabet",
	"CR inside":                  "outside the base64url alphabet",
	"non-canonical":              "signature is not unpadded base64url",
	"two parts":                  "fewer than three parts",
	"four parts":                 "more than three parts",
	"five parts":                 "more than three parts",
	"empty payload":              "empty part",
	"empty header":               "empty part",
	"alg none without signature": "empty part",
	"key alg differs":            "header says",
	"exp string":                 "NumericDate",
	"exp float":                  "NumericDate",
	"exp integral float":         "NumericDate",
	"exp exponent":               "NumericDate",
	"exp huge":                   "NumericDate",
	"exp negative":               "NumericDate",
	"ES256 zero":                 "out of range",
	"ES256 r = N":                "out of range",
	"ES256 s above N":            "out of range",
	"ES256 63-byte":              "not 64 bytes",
	"ES256 DER":                  "not 64 bytes",
	"header with invalid UTF-8":  "header is not JSON",
	"payload with invalid UTF-8": "payload is not JSON",
	"HS256":                      `alg "HS256"`,
	"foreign kid":                `kid "attacker-1"`,
	"sub missing":                "claim: sub",
	"jti missing":                "claim: jti",
	"client_id missing":          "claim: client_id",
}

func TestVerify(t *testing.T) {
	e := verifyTestKeys(t)
	for _, tc := range verifyTestCases() {
		t.Run(tc.name, func(t *testing.T) {
			tok := tc.token(t, e)
			v := verifyTestVerifier(t, e.ks, tc.cfg)
			c, err := v.Verify(tok)
			if tc.want != nil {
				verifyTestCheckErr(t, c, err, tc.want)
				// Make sure the case fails for the reason it is about, not
				// an earlier accident.
				for substr, detail := range verifyTestDetails {
					if strings.Contains(tc.name, substr) && !strings.Contains(err.Error(), detail) {
						t.Errorf("error %q does not mention %q", err, detail)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if c == nil || c.Subject == "" || c.ID == "" || c.ClientID == "" || c.Expiry == 0 || c.Issuer != verifyTestIssuer {
				t.Fatalf("bad claims %+v", c)
			}
		})
	}
}

func TestVerifyClaimsContent(t *testing.T) {
	e := verifyTestKeys(t)
	v := verifyTestVerifier(t, e.ks, nil)
	for alg, kid := range map[string]string{"ES256": "ec-1", "EdDSA": "ed-1", "RS256": "rsa-1"} {
		c, err := v.Verify(e.good(t, alg, func(m map[string]any) {
			m["nbf"] = verifyTestNowUnix - 60
			m["sub"] = "al\u00e9ce \"q\""
		}))
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		want := Claims{
			Issuer: verifyTestIssuer, Subject: "al\u00e9ce \"q\"", Audience: Audience{verifyTestAudience},
			Expiry: verifyTestNowUnix + 600, IssuedAt: verifyTestNowUnix - 60, NotBefore: verifyTestNowUnix - 60,
			ID: "tok-1", ClientID: "demo-app", Scope: "read write", SessionID: "sess-1",
			KeyID: kid, // from the header: the key that signed it, for kid revocations
		}
		if fmt.Sprintf("%#v", *c) != fmt.Sprintf("%#v", want) {
			t.Errorf("%s: claims\n got %#v\nwant %#v", alg, *c, want)
		}
	}
	c, err := v.Verify(e.good(t, "ES256", func(m map[string]any) { m["aud"] = []string{"x", verifyTestAudience, "y"} }))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Audience) != 3 || c.Audience[1] != verifyTestAudience {
		t.Errorf("aud %q", c.Audience)
	}
}

// TestVerifyES256Many verifies many fresh ES256 signatures so that r and s
// with leading zero bytes and with the high bit set (the DER re-encoding
// cases) all occur.
func TestVerifyES256Many(t *testing.T) {
	e := verifyTestKeys(t)
	v := verifyTestVerifier(t, e.ks, nil)
	n := 300
	if testing.Short() {
		n = 50
	}
	for i := 0; i < n; i++ {
		tok := e.good(t, "ES256", nil)
		if _, err := v.Verify(tok); err != nil {
			t.Fatalf("token %d %s: %v", i, tok, err)
		}
	}
}

func TestVerifyDEREncoding(t *testing.T) {
	N := elliptic.P256().Params().N
	values := []*big.Int{
		big.NewInt(1), big.NewInt(0x7f), big.NewInt(0x80), big.NewInt(0xff), big.NewInt(0x100),
		new(big.Int).Sub(N, big.NewInt(1)),
		new(big.Int).Lsh(big.NewInt(1), 255),
		new(big.Int).Lsh(big.NewInt(1), 247),
		new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 248), big.NewInt(1)),
	}
	for _, r := range values {
		for _, s := range values {
			rb, sb := r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))
			got := verifyDER(make([]byte, 0, verifyDERMax), rb, sb)
			want, err := asn1.Marshal(struct{ R, S *big.Int }{r, s})
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want) {
				t.Errorf("r=%x s=%x: got %x want %x", r, s, got, want)
			}
		}
	}
	if new(big.Int).SetBytes(verifyP256Order[:]).Cmp(N) != 0 {
		t.Error("verifyP256Order is not the P-256 order")
	}
}

// verifyCountingSource counts KeySet calls and can be swapped atomically.
type verifyCountingSource struct {
	ks    atomic.Pointer[KeySet]
	calls atomic.Int64
}

func (s *verifyCountingSource) KeySet() *KeySet {
	s.calls.Add(1)
	return s.ks.Load()
}

func TestVerifyKeySourceSwap(t *testing.T) {
	e := verifyTestKeys(t)
	newEC, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	setA, err := NewKeySet(PublicKey{ID: "ec-1", Alg: ES256, Key: &e.ec.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	setB, err := NewKeySet(PublicKey{ID: "ec-2", Alg: ES256, Key: &newEC.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	src := &verifyCountingSource{}
	src.ks.Store(setA)
	v, err := NewVerifier(verifyTestConfig(), src)
	if err != nil {
		t.Fatal(err)
	}
	tokA := e.good(t, "ES256", nil)
	tokB := verifyTestSign(t, "ES256", newEC, verifyTestHeader("ES256", "ec-2", nil), verifyTestClaims(nil))

	if _, err := v.Verify(tokA); err != nil {
		t.Fatalf("A with set A: %v", err)
	}
	c, err := v.Verify(tokB)
	verifyTestCheckErr(t, c, err, ErrUnknownKey)
	if got := src.calls.Load(); got != 2 {
		t.Fatalf("KeySet called %d times for 2 verifications", got)
	}

	src.ks.Store(setB)
	c, err = v.Verify(tokA)
	verifyTestCheckErr(t, c, err, ErrUnknownKey)
	if _, err := v.Verify(tokB); err != nil {
		t.Fatalf("B with set B: %v", err)
	}
	if got := src.calls.Load(); got != 4 {
		t.Fatalf("KeySet called %d times for 4 verifications", got)
	}

	src.ks.Store(nil)
	c, err = v.Verify(tokB)
	verifyTestCheckErr(t, c, err, ErrUnknownKey)

	// Concurrent swaps and verifications (for -race).
	src.ks.Store(setA)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				_, err := v.Verify(tokA)
				if err != nil && !errors.Is(err, ErrUnknownKey) {
					t.Errorf("concurrent: %v", err)
				}
			}
		}()
	}
	for i := 0; i < 20; i++ {
		if i%2 == 0 {
			src.ks.Store(setB)
		} else {
			src.ks.Store(setA)
		}
	}
	wg.Wait()
}

func TestVerifyMalformedDoesNotReadKeys(t *testing.T) {
	src := &verifyCountingSource{}
	v, err := NewVerifier(verifyTestConfig(), src)
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{"", "a.b", "a.b.c.d", "!!.b.c", strings.Repeat("a", 9000)} {
		if _, err := v.Verify(tok); err == nil {
			t.Fatalf("%q verified", tok)
		}
	}
	if n := src.calls.Load(); n != 0 {
		t.Errorf("KeySet called %d times for structurally bad tokens", n)
	}
}

func TestNewVerifierConfig(t *testing.T) {
	e := verifyTestKeys(t)
	good := verifyTestConfig
	bad := []struct {
		name string
		mod  func(*VerifierConfig)
		keys KeySource
		want string
	}{
		{"no issuer", func(c *VerifierConfig) { c.Issuer = "" }, StaticKeys(e.ks), "issuer"},
		{"no audience", func(c *VerifierConfig) { c.Audience = nil }, StaticKeys(e.ks), "audience"},
		{"empty audience", func(c *VerifierConfig) { c.Audience = []string{"a", ""} }, StaticKeys(e.ks), "audience"},
		{"alg none", func(c *VerifierConfig) { c.Algorithms = []Algorithm{"none"} }, StaticKeys(e.ks), "none"},
		{"alg HS256", func(c *VerifierConfig) { c.Algorithms = []Algorithm{ES256, "HS256"} }, StaticKeys(e.ks), "HS256"},
		{"alg lowercase", func(c *VerifierConfig) { c.Algorithms = []Algorithm{"es256"} }, StaticKeys(e.ks), "es256"},
		{"negative leeway", func(c *VerifierConfig) { c.Leeway = -time.Second }, StaticKeys(e.ks), "leeway"},
		{"negative size", func(c *VerifierConfig) { c.MaxTokenSize = -1 }, StaticKeys(e.ks), "size"},
		{"nil keys", nil, nil, "key source"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good()
			if tc.mod != nil {
				tc.mod(&cfg)
			}
			v, err := NewVerifier(cfg, tc.keys)
			if err == nil || v != nil {
				t.Fatalf("accepted: %v", v)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}

	v, err := NewVerifier(VerifierConfig{Issuer: "i", Audience: []string{"a"}}, StaticKeys(nil))
	if err != nil {
		t.Fatal(err)
	}
	if v.leeway != 30*time.Second || v.maxSize != 8192 || v.now == nil ||
		!v.allowES256 || !v.allowEdDSA || !v.allowRS256 {
		t.Errorf("defaults not applied: %+v", v)
	}

	// The verifier keeps its own copy of the audience list.
	cfg := good()
	v, err = NewVerifier(cfg, StaticKeys(e.ks))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Audience[0] = "changed"
	if _, err := v.Verify(e.good(t, "ES256", nil)); err != nil {
		t.Errorf("audience slice aliased: %v", err)
	}
}

func TestVerifyErrorType(t *testing.T) {
	e := verifyTestKeys(t)
	v := verifyTestVerifier(t, e.ks, nil)
	_, err := v.Verify(verifyTestSign(t, "ES256", e.ec, verifyTestHeader("ES256", "secret-kid-\"<script>", nil), verifyTestClaims(nil)))
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("%T", err)
	}
	if ve.Reason != "unknown key id" || !errors.Is(err, ErrUnknownKey) || errors.Is(err, ErrBadSignature) {
		t.Errorf("reason %q err %v", ve.Reason, err)
	}
	if ve.Unwrap() == nil || ve.Error() == "" || !strings.Contains(ve.Error(), "unknown key id") {
		t.Errorf("Error() %q", ve.Error())
	}
	if strings.Contains(ve.Reason, "secret-kid") {
		t.Error("reason contains token data")
	}
}

// Benchmarks: each Verify benchmark has beside it the bare standard-library
// verification of the very same signature (digest precomputed), the floor.

type verifyBench struct {
	v      *Verifier
	tok    string
	digest [32]byte
	si     []byte
	sig    []byte
}

func verifyBenchSetup(b *testing.B, alg string) *verifyBench {
	e := verifyTestKeys(b)
	tok := e.good(b, alg, nil)
	i := strings.LastIndexByte(tok, '.')
	sig, err := base64.RawURLEncoding.DecodeString(tok[i+1:])
	if err != nil {
		b.Fatal(err)
	}
	// The token's times are relative to the fixed test clock, which the
	// verifier uses too.
	bench := &verifyBench{
		v:      verifyTestVerifier(b, e.ks, nil),
		tok:    tok,
		si:     []byte(tok[:i]),
		sig:    sig,
		digest: sha256.Sum256([]byte(tok[:i])),
	}
	if _, err := bench.v.Verify(tok); err != nil {
		b.Fatal(err)
	}
	return bench
}

func verifyBenchRun(b *testing.B, alg string) {
	bench := verifyBenchSetup(b, alg)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := bench.v.Verify(bench.tok); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyES256(b *testing.B) { verifyBenchRun(b, "ES256") }
func BenchmarkVerifyEdDSA(b *testing.B) { verifyBenchRun(b, "EdDSA") }
func BenchmarkVerifyRS256(b *testing.B) { verifyBenchRun(b, "RS256") }

func BenchmarkBareECDSAVerify(b *testing.B) {
	bench := verifyBenchSetup(b, "ES256")
	pub := &verifyTestKeys(b).ec.PublicKey
	r := new(big.Int).SetBytes(bench.sig[:32])
	s := new(big.Int).SetBytes(bench.sig[32:])
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if !ecdsa.Verify(pub, bench.digest[:], r, s) {
			b.Fatal("bad")
		}
	}
}

func BenchmarkBareEd25519Verify(b *testing.B) {
	bench := verifyBenchSetup(b, "EdDSA")
	pub := verifyTestKeys(b).ed.Public().(ed25519.PublicKey)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if !ed25519.Verify(pub, bench.si, bench.sig) {
			b.Fatal("bad")
		}
	}
}

func BenchmarkBareRSAVerify(b *testing.B) {
	bench := verifyBenchSetup(b, "RS256")
	pub := &verifyTestKeys(b).rsa.PublicKey
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, bench.digest[:], bench.sig); err != nil {
			b.Fatal(err)
		}
	}
}

// TestVerifyBrokenKey: a key set holding a structurally broken key (a
// programming error upstream) makes Verify fail, not panic.
func TestVerifyBrokenKey(t *testing.T) {
	e := verifyTestKeys(t)
	ks, err := NewKeySet(PublicKey{ID: "ec-1", Alg: ES256, Key: &ecdsa.PublicKey{Curve: elliptic.P256()}})
	if err != nil {
		t.Skipf("NewKeySet rejects the broken key itself: %v", err)
	}
	v := verifyTestVerifier(t, ks, nil)
	c, err := v.Verify(e.good(t, "ES256", nil))
	verifyTestCheckErr(t, c, err, ErrUnsupportedAlg)
}
