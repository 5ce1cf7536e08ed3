package jwks

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// This file is the strict RFC 9068 access-token verifier used by the
// sidecar. It deliberately does not use a general JOSE library: every rule
// of the contract ("Verification rules, none optional") is checked here
// explicitly, fail-closed, and the hot path is one SHA-256 plus one
// signature verification with a handful of allocations.
//
// Order of work, cheapest and least trusting first:
//
//  1. size cap (before anything is decoded);
//  2. one pass over the bytes: only the base64url alphabet and exactly two
//     dots, every part non-empty;
//  3. strict base64url (no padding, no '+' '/', no CR/LF, canonical
//     trailing bits) of header and signature;
//  4. the header: a JSON object without duplicate members; alg, typ and kid
//     checked; key-carrying, crit, b64 and zip parameters rejected;
//  5. the key by kid from the KeySource (read once per call), its alg equal
//     to the header alg, and the signature;
//  6. only then the payload is decoded and parsed (again no duplicate
//     members) and the claims are checked.
//
// Decisions worth knowing:
//
//   - NumericDate claims (exp, iat, nbf) must be JSON integers written with
//     digits only, in 0 ≤ n ≤ 253402300799 (9999-12-31T23:59:59Z): no
//     fraction, no exponent, no sign, no string, no null. Anything else is
//     ErrMalformed. This keeps all time arithmetic far from overflow.
//   - exp is exclusive: a token is valid while now < exp+leeway, so at
//     now == exp+leeway it is expired. nbf and iat may be up to leeway in
//     the future (nbf/iat > now+leeway is ErrNotYetValid).
//   - Optional string claims (scope, sid) must be strings when present;
//     null is not accepted for any claim we interpret. Claims we do not
//     interpret are ignored, but duplicates are rejected everywhere at the
//     top level of header and payload, after JSON unescaping of the names.
//     Member names are compared exactly (case-sensitively), unlike Go's
//     encoding/json struct decoding.
//   - Header and payload must be valid UTF-8 and valid JSON.
//   - The strings in the returned Claims share memory with one copy of the
//     decoded payload (at most MaxTokenSize bytes), which is what makes the
//     claims a single allocation plus one string.

// Sentinel errors of Verify. Every error Verify returns is a *VerifyError
// that wraps exactly one of these, so errors.Is works on the result.
var (
	ErrMalformed      = errors.New("malformed token")
	ErrUnsupportedAlg = errors.New("unsupported algorithm")
	ErrUnknownKey     = errors.New("unknown key id")
	ErrBadSignature   = errors.New("bad signature")
	ErrWrongType      = errors.New("wrong token type")
	ErrExpired        = errors.New("token expired")
	ErrNotYetValid    = errors.New("token not yet valid")
	ErrWrongIssuer    = errors.New("wrong issuer")
	ErrWrongAudience  = errors.New("wrong audience")
	ErrTooLarge       = errors.New("token too large")
	ErrMissingClaim   = errors.New("missing required claim")
)

// VerifyError is the error type of Verify. Reason is short, fixed text that
// never contains data taken from the token, so it is safe to send to a
// client (e.g. as an RFC 6750 error_description). Err wraps one of the
// sentinel errors, possibly with detail meant for logs only.
type VerifyError struct {
	Reason string
	Err    error
	// KeyID is the token's kid when Err is ErrUnknownKey: a caller that
	// knows the key was revoked can say so instead of "unknown key id".
	// It comes from the unverified token: never trust it for anything else.
	KeyID string
}

func (e *VerifyError) Error() string {
	if e.Err == nil {
		return "invalid token: " + e.Reason
	}
	return "invalid token: " + e.Err.Error()
}

func (e *VerifyError) Unwrap() error { return e.Err }

// verifyFail builds a *VerifyError; detail (may be empty) is appended to the
// sentinel's text for logs. The reason must be fixed text.
func verifyFail(sentinel error, reason, detail string) *VerifyError {
	err := sentinel
	if detail != "" {
		err = fmt.Errorf("%w: %s", sentinel, detail)
	}
	return &VerifyError{Reason: reason, Err: err}
}

// KeySource supplies the verification keys. The verifier calls KeySet once
// per Verify (and never caches the result), so a cache can swap in a new
// *KeySet atomically and every later Verify sees it. A nil *KeySet is an
// empty set.
type KeySource interface {
	KeySet() *KeySet
}

type verifyStaticKeys struct{ ks *KeySet }

func (s verifyStaticKeys) KeySet() *KeySet { return s.ks }

// StaticKeys returns a KeySource that always returns ks.
func StaticKeys(ks *KeySet) KeySource { return verifyStaticKeys{ks: ks} }

// Defaults of VerifierConfig.
const (
	DefaultLeeway       = 30 * time.Second
	DefaultMaxTokenSize = 8192
)

// VerifierConfig configures a Verifier.
type VerifierConfig struct {
	// Issuer must equal the token's iss exactly. Required.
	Issuer string
	// Audience: the token's aud must contain at least one of these.
	// Required, no empty entries.
	Audience []string
	// AnyAudience skips the audience check (Audience must then be empty).
	// Only for an issuer inspecting tokens it signed itself, e.g. to revoke
	// one (RFC 7009), where who the token was for does not matter.
	AnyAudience bool
	// Algorithms is the allow-list of header algs; empty means all of
	// SupportedAlgorithms(). Anything else (none, HS*, …) is refused.
	Algorithms []Algorithm
	// Leeway is the clock skew allowed for exp, nbf and iat. Zero means
	// DefaultLeeway (30s); negative is an error.
	Leeway time.Duration
	// MaxTokenSize is the largest token in bytes. Zero means
	// DefaultMaxTokenSize (8192); negative is an error.
	MaxTokenSize int
	// Now returns the current time; nil means time.Now. For tests.
	Now func() time.Time
}

// Verifier verifies RFC 9068 access tokens. It is immutable and safe for
// concurrent use.
type Verifier struct {
	issuer      string
	audience    []string
	anyAudience bool
	allowES256  bool
	allowEdDSA  bool
	allowRS256  bool
	leeway      time.Duration
	maxSize     int
	now         func() time.Time
	keys        KeySource
}

// NewVerifier validates cfg, applies its defaults and returns a Verifier
// taking its keys from keys.
func NewVerifier(cfg VerifierConfig, keys KeySource) (*Verifier, error) {
	if keys == nil {
		return nil, errors.New("jwks: NewVerifier: key source is nil")
	}
	if cfg.Issuer == "" {
		return nil, errors.New("jwks: verifier config: issuer is required")
	}
	switch {
	case cfg.AnyAudience && len(cfg.Audience) > 0:
		return nil, errors.New("jwks: verifier config: AnyAudience with an audience list")
	case !cfg.AnyAudience && len(cfg.Audience) == 0:
		return nil, errors.New("jwks: verifier config: at least one audience is required")
	}
	for i, a := range cfg.Audience {
		if a == "" {
			return nil, fmt.Errorf("jwks: verifier config: audience %d is empty", i)
		}
	}
	if cfg.Leeway < 0 {
		return nil, fmt.Errorf("jwks: verifier config: leeway %v is negative", cfg.Leeway)
	}
	if cfg.MaxTokenSize < 0 {
		return nil, fmt.Errorf("jwks: verifier config: max token size %d is negative", cfg.MaxTokenSize)
	}
	v := &Verifier{
		issuer:      cfg.Issuer,
		audience:    append([]string(nil), cfg.Audience...),
		anyAudience: cfg.AnyAudience,
		leeway:      cfg.Leeway,
		maxSize:     cfg.MaxTokenSize,
		now:         cfg.Now,
		keys:        keys,
	}
	algs := cfg.Algorithms
	if len(algs) == 0 {
		algs = SupportedAlgorithms()
	}
	for _, a := range algs {
		switch a {
		case ES256:
			v.allowES256 = true
		case EdDSA:
			v.allowEdDSA = true
		case RS256:
			v.allowRS256 = true
		default:
			return nil, fmt.Errorf("jwks: verifier config: algorithm %q is not allowed (want any of ES256, EdDSA, RS256; none and HMAC are never accepted)", string(a))
		}
	}
	if v.leeway == 0 {
		v.leeway = DefaultLeeway
	}
	if v.maxSize == 0 {
		v.maxSize = DefaultMaxTokenSize
	}
	if v.now == nil {
		v.now = time.Now
	}
	return v, nil
}

// verifyB64 is the only decoder used: base64url, no padding, canonical
// trailing bits. It would still skip CR and LF, which the alphabet check in
// Verify rules out beforehand.
var verifyB64 = base64.RawURLEncoding.Strict()

// verifyB64Alphabet marks the bytes of the base64url alphabet.
var verifyB64Alphabet = func() (t [256]bool) {
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	t['-'] = true
	t['_'] = true
	return t
}()

// verifyP256Order is N of P-256, big-endian.
var verifyP256Order = [32]byte{
	0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00,
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84,
	0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
}

// verifyDERMax is the longest DER ECDSA P-256 signature:
// SEQUENCE(2) + 2 × (INTEGER header(2) + 0x00 + 32 bytes).
const verifyDERMax = 2 + 2*(2+1+32)

// Verify checks token against every rule and returns its claims. Every error
// is a *VerifyError wrapping one of the Err* sentinels.
func (v *Verifier) Verify(token string) (*Claims, error) {
	// 1. Size before anything else.
	if len(token) > v.maxSize {
		return nil, verifyFail(ErrTooLarge, "token too large", "")
	}
	// 2. Alphabet and structure in one pass.
	d1, d2 := -1, -1
	for i := 0; i < len(token); i++ {
		c := token[i]
		if c == '.' {
			switch {
			case d1 < 0:
				d1 = i
			case d2 < 0:
				d2 = i
			default:
				return nil, verifyFail(ErrMalformed, "malformed token", "more than three parts")
			}
			continue
		}
		if !verifyB64Alphabet[c] {
			return nil, verifyFail(ErrMalformed, "malformed token", "character outside the base64url alphabet")
		}
	}
	if d2 < 0 {
		return nil, verifyFail(ErrMalformed, "malformed token", "fewer than three parts")
	}
	if d1 == 0 || d2 == d1+1 || d2 == len(token)-1 {
		return nil, verifyFail(ErrMalformed, "malformed token", "empty part")
	}

	// One buffer for everything: a copy of the token (the signing input
	// and the base64 sources), then the decoded header, signature and
	// payload, the digest and the DER signature.
	hdrLen := verifyB64.DecodedLen(d1)
	payLen := verifyB64.DecodedLen(d2 - d1 - 1)
	sigLen := verifyB64.DecodedLen(len(token) - d2 - 1)
	buf := make([]byte, len(token)+hdrLen+payLen+sigLen+sha256.Size+verifyDERMax)
	copy(buf, token)
	src := buf[:len(token)]
	dst := buf[len(token):]
	signingInput := src[:d2]

	// 3 and 4. The header.
	n, err := verifyB64.Decode(dst[:hdrLen], src[:d1])
	if err != nil {
		return nil, verifyFail(ErrMalformed, "malformed token", "header is not unpadded base64url")
	}
	hdr := dst[:n]
	dst = dst[hdrLen:]
	if !utf8.Valid(hdr) || !json.Valid(hdr) {
		return nil, verifyFail(ErrMalformed, "malformed token", "header is not JSON")
	}
	alg, kid, verr := v.verifyParseHeader(string(hdr))
	if verr != nil {
		return nil, verr
	}

	// 5. Key and signature.
	key, ok := v.keys.KeySet().Lookup(kid)
	if !ok {
		ve := verifyFail(ErrUnknownKey, "unknown key id", fmt.Sprintf("kid %q", kid))
		ve.KeyID = kid
		return nil, ve
	}
	if key.Alg != alg {
		return nil, verifyFail(ErrUnsupportedAlg, "algorithm does not match key",
			fmt.Sprintf("key %q is for %s, header says %s", kid, key.Alg, alg))
	}
	n, err = verifyB64.Decode(dst[:sigLen], src[d2+1:])
	if err != nil {
		return nil, verifyFail(ErrMalformed, "malformed token", "signature is not unpadded base64url")
	}
	sig := dst[:n]
	dst = dst[sigLen:]
	payDst := dst[:payLen]
	scratch := dst[payLen:]
	if verr := verifySignature(key, signingInput, sig, scratch); verr != nil {
		return nil, verr
	}

	// 6. The payload, now that its signature is known to be good.
	n, err = verifyB64.Decode(payDst, src[d1+1:d2])
	if err != nil {
		return nil, verifyFail(ErrMalformed, "malformed token", "payload is not unpadded base64url")
	}
	payload := payDst[:n]
	if !utf8.Valid(payload) || !json.Valid(payload) {
		return nil, verifyFail(ErrMalformed, "malformed token", "payload is not JSON")
	}
	c, err := v.verifyClaims(string(payload))
	if err != nil {
		return nil, err
	}
	c.KeyID = kid
	return c, nil
}

// verifyParseHeader checks the JOSE header and returns its alg and kid.
func (v *Verifier) verifyParseHeader(hdr string) (Algorithm, string, *VerifyError) {
	var o verifyObject
	if !o.init(hdr) {
		return "", "", verifyFail(ErrMalformed, "malformed token", "header is not a JSON object")
	}
	var algV, typV, kidV string
	var haveAlg, haveTyp, haveKid bool
	for {
		name, val, more, ok := o.next()
		if !ok {
			return "", "", verifyFail(ErrMalformed, "malformed token", "header: "+o.err)
		}
		if !more {
			break
		}
		switch name {
		case "alg":
			algV, haveAlg = verifyJSONString(val)
			if !haveAlg {
				return "", "", verifyFail(ErrMalformed, "malformed token", "header alg is not a string")
			}
		case "typ":
			typV, haveTyp = verifyJSONString(val)
			if !haveTyp {
				return "", "", verifyFail(ErrWrongType, "wrong token type", "header typ is not a string")
			}
		case "kid":
			kidV, haveKid = verifyJSONString(val)
			if !haveKid {
				return "", "", verifyFail(ErrMalformed, "malformed token", "header kid is not a string")
			}
		case "jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256":
			// Keys come only from the distributed key set.
			return "", "", verifyFail(ErrMalformed, "forbidden header parameter", "header parameter "+name+" is not accepted")
		case "crit":
			// We understand no extensions, so any crit is unknown.
			return "", "", verifyFail(ErrMalformed, "unsupported critical header parameter", "header has crit")
		case "b64", "zip":
			return "", "", verifyFail(ErrMalformed, "forbidden header parameter", "header parameter "+name+" is not accepted")
		}
	}
	if !haveAlg {
		return "", "", verifyFail(ErrMalformed, "malformed token", "header has no alg")
	}
	var alg Algorithm
	switch {
	case algV == string(ES256) && v.allowES256:
		alg = ES256
	case algV == string(EdDSA) && v.allowEdDSA:
		alg = EdDSA
	case algV == string(RS256) && v.allowRS256:
		alg = RS256
	default:
		return "", "", verifyFail(ErrUnsupportedAlg, "unsupported algorithm", fmt.Sprintf("alg %q", algV))
	}
	if !haveTyp {
		return "", "", verifyFail(ErrWrongType, "wrong token type", "header has no typ")
	}
	if !verifyTypOK(typV) {
		return "", "", verifyFail(ErrWrongType, "wrong token type", fmt.Sprintf("typ %q", typV))
	}
	if !haveKid || kidV == "" {
		return "", "", verifyFail(ErrMalformed, "malformed token", "header has no kid")
	}
	return alg, kidV, nil
}

// verifyTypOK accepts "at+jwt" and "application/at+jwt" (the "application/"
// prefix case-insensitively, RFC 7515 §4.1.9).
func verifyTypOK(t string) bool {
	if t == TokenType {
		return true
	}
	const prefix = "application/"
	return len(t) == len(prefix)+len(TokenType) &&
		strings.EqualFold(t[:len(prefix)], prefix) &&
		t[len(prefix):] == TokenType
}

// verifySignature checks sig over signingInput with key. scratch has room for
// a SHA-256 digest and a DER signature.
func verifySignature(key PublicKey, signingInput, sig, scratch []byte) *VerifyError {
	switch key.Alg {
	case ES256:
		pub, ok := key.Key.(*ecdsa.PublicKey)
		// Reading X and Y is the only way to spot a zero-value key, which
		// would panic inside crypto/ecdsa.
		if !ok || pub == nil || pub.Curve != elliptic.P256() || pub.X == nil || pub.Y == nil { //nolint:staticcheck // see above
			return verifyFail(ErrUnsupportedAlg, "algorithm does not match key", "ES256 key is not a P-256 public key")
		}
		if len(sig) != 64 {
			return verifyFail(ErrBadSignature, "bad signature", "ES256 signature is not 64 bytes")
		}
		r, s := sig[:32], sig[32:]
		if !verifyScalarOK(r) || !verifyScalarOK(s) {
			return verifyFail(ErrBadSignature, "bad signature", "ES256 r or s out of range")
		}
		digest := scratch[:sha256.Size]
		sum := sha256.Sum256(signingInput)
		copy(digest, sum[:])
		der := verifyDER(scratch[sha256.Size:sha256.Size:sha256.Size+verifyDERMax], r, s)
		if !ecdsa.VerifyASN1(pub, digest, der) {
			return verifyFail(ErrBadSignature, "bad signature", "")
		}
	case EdDSA:
		pub, ok := key.Key.(ed25519.PublicKey)
		if !ok || len(pub) != ed25519.PublicKeySize {
			return verifyFail(ErrUnsupportedAlg, "algorithm does not match key", "EdDSA key is not an Ed25519 public key")
		}
		if len(sig) != ed25519.SignatureSize {
			return verifyFail(ErrBadSignature, "bad signature", "EdDSA signature is not 64 bytes")
		}
		if !ed25519.Verify(pub, signingInput, sig) {
			return verifyFail(ErrBadSignature, "bad signature", "")
		}
	case RS256:
		pub, ok := key.Key.(*rsa.PublicKey)
		if !ok || pub == nil || pub.N == nil || pub.N.Sign() <= 0 {
			return verifyFail(ErrUnsupportedAlg, "algorithm does not match key", "RS256 key is not an RSA public key")
		}
		if len(sig) != pub.Size() {
			return verifyFail(ErrBadSignature, "bad signature", "RS256 signature length does not match the key")
		}
		digest := scratch[:sha256.Size]
		sum := sha256.Sum256(signingInput)
		copy(digest, sum[:])
		if rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest, sig) != nil {
			return verifyFail(ErrBadSignature, "bad signature", "")
		}
	default:
		return verifyFail(ErrUnsupportedAlg, "unsupported algorithm", "key has an unsupported algorithm")
	}
	return nil
}

// verifyScalarOK reports whether the 32-byte big-endian b is in [1, N-1].
func verifyScalarOK(b []byte) bool {
	nonZero := false
	for _, c := range b {
		if c != 0 {
			nonZero = true
			break
		}
	}
	return nonZero && bytes.Compare(b, verifyP256Order[:]) < 0
}

// verifyDER appends to dst (capacity verifyDERMax) the DER encoding
// SEQUENCE { INTEGER r, INTEGER s } of the non-zero big-endian r and s.
func verifyDER(dst, r, s []byte) []byte {
	r = bytes.TrimLeft(r, "\x00")
	s = bytes.TrimLeft(s, "\x00")
	rl, sl := len(r), len(s)
	if r[0]&0x80 != 0 {
		rl++
	}
	if s[0]&0x80 != 0 {
		sl++
	}
	// r and s are at most 32 bytes each (checked by the caller), so every
	// length fits a byte.
	dst = append(dst, 0x30, byte(2+rl+2+sl), 0x02, byte(rl)) // #nosec G115 -- bounded above
	if r[0]&0x80 != 0 {
		dst = append(dst, 0)
	}
	dst = append(dst, r...)
	dst = append(dst, 0x02, byte(sl)) // #nosec G115 -- bounded above
	if s[0]&0x80 != 0 {
		dst = append(dst, 0)
	}
	return append(dst, s...)
}

// verifyClaimsAlloc holds the claims and room for a single audience, so the
// common case costs one allocation.
type verifyClaimsAlloc struct {
	c   Claims
	aud [1]string
}

// verifyMaxNumericDate is 9999-12-31T23:59:59Z.
const verifyMaxNumericDate = 253402300799

// verifyClaims parses and checks the (signed) payload.
func (v *Verifier) verifyClaims(payload string) (*Claims, error) {
	var o verifyObject
	if !o.init(payload) {
		return nil, verifyFail(ErrMalformed, "malformed token", "payload is not a JSON object")
	}
	a := &verifyClaimsAlloc{}
	c := &a.c
	var haveIss, haveAud, haveExp, haveIat, haveNbf bool
	for {
		name, val, more, ok := o.next()
		if !ok {
			return nil, verifyFail(ErrMalformed, "malformed token", "payload: "+o.err)
		}
		if !more {
			break
		}
		var dst *string
		var date *int64
		switch name {
		case "iss":
			dst, haveIss = &c.Issuer, true
		case "sub":
			dst = &c.Subject
		case "jti":
			dst = &c.ID
		case "client_id":
			dst = &c.ClientID
		case "scope":
			dst = &c.Scope
		case "sid":
			dst = &c.SessionID
		case "aud":
			aud, ok := verifyAudience(val, &a.aud)
			if !ok {
				return nil, verifyFail(ErrMalformed, "malformed token", "aud is not a string or an array of strings")
			}
			c.Audience, haveAud = aud, true
		case "exp":
			date, haveExp = &c.Expiry, true
		case "iat":
			date, haveIat = &c.IssuedAt, true
		case "nbf":
			date, haveNbf = &c.NotBefore, true
		}
		if dst != nil {
			s, ok := verifyJSONString(val)
			if !ok {
				return nil, verifyFail(ErrMalformed, "malformed token", "claim "+name+" is not a string")
			}
			*dst = s
		}
		if date != nil {
			t, ok := verifyNumericDate(val)
			if !ok {
				return nil, verifyFail(ErrMalformed, "malformed token", "claim "+name+" is not an integer NumericDate")
			}
			*date = t
		}
	}
	switch {
	case !haveIss:
		return nil, verifyFail(ErrMissingClaim, "missing required claim", "iss")
	case c.Subject == "":
		return nil, verifyFail(ErrMissingClaim, "missing required claim", "sub")
	case !haveAud:
		return nil, verifyFail(ErrMissingClaim, "missing required claim", "aud")
	case !haveExp:
		return nil, verifyFail(ErrMissingClaim, "missing required claim", "exp")
	case !haveIat:
		return nil, verifyFail(ErrMissingClaim, "missing required claim", "iat")
	case c.ID == "":
		return nil, verifyFail(ErrMissingClaim, "missing required claim", "jti")
	case c.ClientID == "":
		return nil, verifyFail(ErrMissingClaim, "missing required claim", "client_id")
	}
	if c.Issuer != v.issuer {
		return nil, verifyFail(ErrWrongIssuer, "wrong issuer", fmt.Sprintf("iss %q", c.Issuer))
	}
	audOK := v.anyAudience
	for _, want := range v.audience {
		if c.Audience.Contains(want) {
			audOK = true
			break
		}
	}
	if !audOK {
		return nil, verifyFail(ErrWrongAudience, "wrong audience", "")
	}
	now := v.now()
	if !now.Before(time.Unix(c.Expiry, 0).Add(v.leeway)) {
		return nil, verifyFail(ErrExpired, "token expired", "")
	}
	latest := now.Add(v.leeway)
	if haveNbf && time.Unix(c.NotBefore, 0).After(latest) {
		return nil, verifyFail(ErrNotYetValid, "token not yet valid", "nbf is in the future")
	}
	if time.Unix(c.IssuedAt, 0).After(latest) {
		return nil, verifyFail(ErrNotYetValid, "token not yet valid", "iat is in the future")
	}
	return c, nil
}

// verifyNumericDate parses an integer NumericDate written with digits only
// and at most verifyMaxNumericDate.
func verifyNumericDate(val string) (int64, bool) {
	if len(val) == 0 || len(val) > 12 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(val); i++ {
		c := val[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if n > verifyMaxNumericDate || (len(val) > 1 && val[0] == '0') {
		return 0, false
	}
	return n, true
}

// verifyAudience decodes aud: a string (stored in one) or an array of
// strings. An empty array yields an empty, non-nil Audience.
func verifyAudience(val string, one *[1]string) (Audience, bool) {
	if len(val) == 0 {
		return nil, false
	}
	if val[0] == '"' {
		s, ok := verifyJSONString(val)
		if !ok {
			return nil, false
		}
		one[0] = s
		return one[:], true
	}
	if val[0] != '[' {
		return nil, false
	}
	i := verifySkipWS(val, 1)
	if i < len(val) && val[i] == ']' {
		return Audience{}, verifySkipWS(val, i+1) == len(val)
	}
	var out Audience
	for {
		if i >= len(val) || val[i] != '"' {
			return nil, false
		}
		end, ok := verifyScanString(val, i)
		if !ok {
			return nil, false
		}
		s, ok := verifyJSONString(val[i:end])
		if !ok {
			return nil, false
		}
		out = append(out, s)
		i = verifySkipWS(val, end)
		if i >= len(val) {
			return nil, false
		}
		switch val[i] {
		case ',':
			i = verifySkipWS(val, i+1)
		case ']':
			return out, verifySkipWS(val, i+1) == len(val)
		default:
			return nil, false
		}
	}
}

// verifyJSONString returns the value of the JSON string literal val
// (including its quotes). Literals without escapes are returned as a
// substring without copying.
func verifyJSONString(val string) (string, bool) {
	if len(val) < 2 || val[0] != '"' || val[len(val)-1] != '"' {
		return "", false
	}
	inner := val[1 : len(val)-1]
	if strings.IndexByte(inner, '\\') < 0 {
		return inner, true
	}
	var s string
	if err := json.Unmarshal([]byte(val), &s); err != nil {
		return "", false
	}
	return s, true
}

// verifyObject walks the members of one JSON object (already checked with
// json.Valid, but every step is bounds-checked anyway) and rejects
// duplicate member names, compared after unescaping. Work is linear in the
// input: up to len(seen) names are compared directly, beyond that a map is
// used.
type verifyObject struct {
	s     string
	i     int
	done  bool
	err   string
	n     int
	seen  [16]string
	extra map[string]struct{}
}

// init positions o on the first member of the object s; false if s is not
// an object.
func (o *verifyObject) init(s string) bool {
	o.s = s
	i := verifySkipWS(s, 0)
	if i >= len(s) || s[i] != '{' {
		return false
	}
	i = verifySkipWS(s, i+1)
	if i < len(s) && s[i] == '}' {
		o.done = true
		if verifySkipWS(s, i+1) != len(s) {
			return false
		}
	}
	o.i = i
	return true
}

// next returns the next member's name (unescaped) and raw value. more is
// false at the end of the object; ok is false on an error (in o.err).
func (o *verifyObject) next() (name, val string, more, ok bool) {
	if o.done {
		return "", "", false, true
	}
	s, i := o.s, o.i
	if i >= len(s) || s[i] != '"' {
		return o.fail("member name expected")
	}
	end, okStr := verifyScanString(s, i)
	if !okStr {
		return o.fail("bad member name")
	}
	name, okStr = verifyJSONString(s[i:end])
	if !okStr {
		return o.fail("bad member name")
	}
	i = verifySkipWS(s, end)
	if i >= len(s) || s[i] != ':' {
		return o.fail("colon expected")
	}
	i = verifySkipWS(s, i+1)
	vEnd, okVal := verifySkipValue(s, i)
	if !okVal {
		return o.fail("bad member value")
	}
	val = s[i:vEnd]
	if o.dup(name) {
		return o.fail("duplicate member " + verifyQuoteName(name))
	}
	i = verifySkipWS(s, vEnd)
	switch {
	case i < len(s) && s[i] == ',':
		i = verifySkipWS(s, i+1)
	case i < len(s) && s[i] == '}':
		o.done = true
		if verifySkipWS(s, i+1) != len(s) {
			return o.fail("data after the object")
		}
	default:
		return o.fail("comma or end of object expected")
	}
	o.i = i
	return name, val, true, true
}

// verifyQuoteName quotes a member name for a log message, cut to a sane
// length.
func verifyQuoteName(s string) string {
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return fmt.Sprintf("%q", s)
}

// fail records msg as o's error and ends the walk.
func (o *verifyObject) fail(msg string) (name, val string, more, ok bool) {
	o.err = msg
	o.done = true
	return "", "", false, false
}

// dup records name and reports whether it was seen before.
func (o *verifyObject) dup(name string) bool {
	if o.extra == nil {
		for _, k := range o.seen[:o.n] {
			if k == name {
				return true
			}
		}
		if o.n < len(o.seen) {
			o.seen[o.n] = name
			o.n++
			return false
		}
		o.extra = make(map[string]struct{}, 2*len(o.seen))
		for _, k := range o.seen {
			o.extra[k] = struct{}{}
		}
	}
	if _, ok := o.extra[name]; ok {
		return true
	}
	o.extra[name] = struct{}{}
	return false
}

// verifySkipWS returns the index of the first non-whitespace byte at or
// after i.
func verifySkipWS(s string, i int) int {
	for i < len(s) {
		switch s[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// verifyScanString returns the index just past the JSON string literal that
// starts at s[i] == '"'.
func verifyScanString(s string, i int) (int, bool) {
	if i >= len(s) || s[i] != '"' {
		return 0, false
	}
	for j := i + 1; j < len(s); j++ {
		switch c := s[j]; {
		case c == '\\':
			j++ // skip the escaped byte; \uXXXX digits are plain bytes
		case c == '"':
			return j + 1, true
		case c < 0x20:
			return 0, false
		}
	}
	return 0, false
}

// verifySkipValue returns the index just past the JSON value starting at i.
// Nested values are skipped iteratively (depth is a counter, not recursion).
func verifySkipValue(s string, i int) (int, bool) {
	if i >= len(s) {
		return 0, false
	}
	switch s[i] {
	case '"':
		return verifyScanString(s, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(s); {
			switch s[j] {
			case '"':
				end, ok := verifyScanString(s, j)
				if !ok {
					return 0, false
				}
				j = end
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, true
				}
			}
			j++
		}
		return 0, false
	default:
		j := i
		for j < len(s) {
			switch s[j] {
			case ',', '}', ']', ' ', '\t', '\n', '\r', ':', '"', '{', '[':
				if j == i {
					return 0, false
				}
				return j, true
			}
			j++
		}
		if j == i {
			return 0, false
		}
		return j, true
	}
}

// MaxTokenSize is the largest token Verify accepts, in bytes.
func (v *Verifier) MaxTokenSize() int { return v.maxSize }

// Leeway is the clock skew Verify allows.
func (v *Verifier) Leeway() time.Duration { return v.leeway }
