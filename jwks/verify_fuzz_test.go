package jwks

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The committed seed corpus in testdata/fuzz/FuzzVerify holds real tokens
// signed by the fixed keys below (one file per attack or valid shape; files
// named valid-* must verify, all others must fail). The keys are derived
// deterministically so the seeds stay valid: Ed25519 from a fixed seed,
// P-256 from a fixed scalar.

const (
	verifyFuzzIssuer   = "https://issuer.fuzz.example"
	verifyFuzzAudience = "fuzz-api"
	verifyFuzzNowUnix  = 1_700_000_100
	verifyFuzzECKid    = "fuzz-ec"
	verifyFuzzEdKid    = "fuzz-ed"
)

type verifyFuzzKeySet struct {
	ec *ecdsa.PrivateKey
	ed ed25519.PrivateKey
	ks *KeySet
}

var (
	verifyFuzzKeysOnce sync.Once
	verifyFuzzKeysVal  *verifyFuzzKeySet
	verifyFuzzKeysErr  error
)

// verifyFuzzKeys returns the fixed fuzz keys.
func verifyFuzzKeys(tb testing.TB) *verifyFuzzKeySet {
	tb.Helper()
	verifyFuzzKeysOnce.Do(func() {
		k := &verifyFuzzKeySet{}
		edSeed := sha256.Sum256([]byte("tokenwarden FuzzVerify Ed25519 seed"))
		k.ed = ed25519.NewKeyFromSeed(edSeed[:])
		scalar := sha256.Sum256([]byte("tokenwarden FuzzVerify P-256 scalar"))
		k.ec, verifyFuzzKeysErr = ecdsa.ParseRawPrivateKey(elliptic.P256(), scalar[:])
		if verifyFuzzKeysErr != nil {
			return
		}
		k.ks, verifyFuzzKeysErr = NewKeySet(
			PublicKey{ID: verifyFuzzECKid, Alg: ES256, Key: &k.ec.PublicKey},
			PublicKey{ID: verifyFuzzEdKid, Alg: EdDSA, Key: k.ed.Public().(ed25519.PublicKey)},
		)
		verifyFuzzKeysVal = k
	})
	if verifyFuzzKeysErr != nil {
		tb.Fatalf("fuzz keys: %v", verifyFuzzKeysErr)
	}
	return verifyFuzzKeysVal
}

func verifyFuzzVerifier(tb testing.TB) *Verifier {
	tb.Helper()
	v, err := NewVerifier(VerifierConfig{
		Issuer:   verifyFuzzIssuer,
		Audience: []string{verifyFuzzAudience},
		Now:      func() time.Time { return time.Unix(verifyFuzzNowUnix, 0) },
	}, StaticKeys(verifyFuzzKeys(tb).ks))
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

var verifyFuzzSentinels = []error{
	ErrMalformed, ErrUnsupportedAlg, ErrUnknownKey, ErrBadSignature, ErrWrongType,
	ErrExpired, ErrNotYetValid, ErrWrongIssuer, ErrWrongAudience, ErrTooLarge, ErrMissingClaim,
}

// verifyFuzzCheck asserts the invariants of one Verify result.
func verifyFuzzCheck(t *testing.T, tok string, c *Claims, err error) {
	t.Helper()
	if err != nil {
		if c != nil {
			t.Fatalf("claims returned with error %v", err)
		}
		var ve *VerifyError
		if !errors.As(err, &ve) || ve.Reason == "" {
			t.Fatalf("error %v (%T) is not a *VerifyError with a reason", err, err)
		}
		n := 0
		for _, s := range verifyFuzzSentinels {
			if errors.Is(err, s) {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("error %v wraps %d sentinels", err, n)
		}
		return
	}
	if c == nil {
		t.Fatal("nil claims without error")
	}
	if c.Subject == "" || c.ID == "" || c.ClientID == "" || c.Expiry == 0 || c.IssuedAt < 0 {
		t.Fatalf("verified token with incomplete claims %+v", c)
	}
	if c.Issuer != verifyFuzzIssuer || !c.Audience.Contains(verifyFuzzAudience) {
		t.Fatalf("verified token with iss %q aud %q", c.Issuer, c.Audience)
	}
	now := time.Unix(verifyFuzzNowUnix, 0)
	if !now.Before(time.Unix(c.Expiry, 0).Add(DefaultLeeway)) ||
		time.Unix(c.NotBefore, 0).After(now.Add(DefaultLeeway)) ||
		time.Unix(c.IssuedAt, 0).After(now.Add(DefaultLeeway)) {
		t.Fatalf("verified token outside its validity: %+v", c)
	}

	// Independent re-check with the lenient standard decoders: what
	// verified must be canonical and agree with them.
	parts := strings.Split(tok, ".")
	if len(parts) != 3 || len(tok) > DefaultMaxTokenSize {
		t.Fatalf("verified token with %d parts, %d bytes", len(parts), len(tok))
	}
	var dec [3][]byte
	for i, p := range parts {
		b, err := base64.RawURLEncoding.DecodeString(p)
		if err != nil || base64.RawURLEncoding.EncodeToString(b) != p || len(b) == 0 {
			t.Fatalf("verified token with non-canonical part %d %q", i, p)
		}
		dec[i] = b
	}
	var hdr map[string]any
	if err := json.Unmarshal(dec[0], &hdr); err != nil {
		t.Fatalf("verified token whose header encoding/json rejects: %v", err)
	}
	if a := hdr["alg"]; a != "ES256" && a != "EdDSA" {
		t.Fatalf("verified token with alg %v", a)
	}
	if typ, _ := hdr["typ"].(string); !strings.EqualFold(strings.TrimPrefix(strings.ToLower(typ), "application/"), "at+jwt") {
		t.Fatalf("verified token with typ %q", typ)
	}
	for _, name := range []string{"jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256", "crit", "b64", "zip"} {
		if _, ok := hdr[name]; ok {
			t.Fatalf("verified token with header %s", name)
		}
	}
	var pay map[string]any
	if err := json.Unmarshal(dec[1], &pay); err != nil {
		t.Fatalf("verified token whose payload encoding/json rejects: %v", err)
	}
	if pay["sub"] != c.Subject || pay["jti"] != c.ID || pay["client_id"] != c.ClientID || pay["iss"] != c.Issuer {
		t.Fatalf("claims %+v disagree with encoding/json %v", c, pay)
	}
}

func FuzzVerify(f *testing.F) {
	k := verifyFuzzKeys(f)
	v := verifyFuzzVerifier(f)
	for _, s := range []string{"", ".", "..", "a.b.c", "e30.e30.e30", strings.Repeat(".", 100)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tok := string(data)
		c, err := v.Verify(tok)
		verifyFuzzCheck(t, tok, c, err)

		// Mutated tokens almost never carry a good signature, so the
		// claim checks would go unexplored. Sign whatever header and
		// payload the fuzzer made with the fixed Ed25519 key and verify
		// that too.
		if i := strings.LastIndexByte(tok, '.'); i > 0 && len(tok) <= DefaultMaxTokenSize {
			resigned := tok[:i+1] + base64.RawURLEncoding.EncodeToString(ed25519.Sign(k.ed, []byte(tok[:i])))
			c, err = v.Verify(resigned)
			verifyFuzzCheck(t, resigned, c, err)
		}
	})
}

// TestVerifyFuzzSeeds checks that the committed corpus still holds what its
// file names say: valid-* verify, everything else is rejected.
func TestVerifyFuzzSeeds(t *testing.T) {
	v := verifyFuzzVerifier(t)
	files, err := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzVerify", "*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 40 {
		t.Fatalf("only %d seed files", len(files))
	}
	valid := 0
	for _, file := range files {
		tok, err := verifyReadCorpusFile(file)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		c, err := v.Verify(tok)
		name := filepath.Base(file)
		if strings.HasPrefix(name, "valid-") {
			valid++
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		} else if err == nil {
			t.Errorf("%s verified: %+v", name, c)
		}
	}
	if valid == 0 {
		t.Error("no valid seeds")
	}
}

// verifyReadCorpusFile reads a one-value "go test fuzz v1" []byte file.
func verifyReadCorpusFile(name string) (string, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return "", err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	var lines []string
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) != 2 || lines[0] != "go test fuzz v1" ||
		!strings.HasPrefix(lines[1], "[]byte(") || !strings.HasSuffix(lines[1], ")") {
		return "", errors.New("not a one-value go test fuzz v1 []byte file")
	}
	return strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
}
