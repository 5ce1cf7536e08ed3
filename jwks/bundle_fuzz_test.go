package jwks

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Fuzz targets for what a sidecar decodes from outside its process: the
// signed JWKS bundle (from NATS or the disk cache) and plain JWKS
// documents (inside a bundle, or from the HTTP fallback). The committed
// seeds under testdata/fuzz/<Name>/ are written by TestWriteBundleFuzzSeeds
// (run it with TOKENWARDEN_WRITE_FUZZ_SEEDS=1); seeds named valid-* must be
// accepted, every other one must be refused.

// bundleFuzzKeys are the fixed distribution keys of the fuzz targets: the
// trusted one, and another that no verifier trusts.
func bundleFuzzKeys() (trusted, other ed25519.PrivateKey) {
	a := sha256.Sum256([]byte("tokenwarden FuzzVerifyBundle trusted distribution key"))
	b := sha256.Sum256([]byte("tokenwarden FuzzVerifyBundle untrusted distribution key"))
	return ed25519.NewKeyFromSeed(a[:]), ed25519.NewKeyFromSeed(b[:])
}

func pubOf(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

// resign replaces the signature of a compact JWS with key's signature over
// its first two parts, so that mutated headers and payloads get past the
// signature check and their decoding is explored too.
func resign(data []byte, key ed25519.PrivateKey) ([]byte, bool) {
	i := bytes.LastIndexByte(data, '.')
	if i <= 0 || len(data) > 1<<20 {
		return nil, false
	}
	sig := base64.RawURLEncoding.EncodeToString(ed25519.Sign(key, data[:i]))
	return append(slices.Clip(data[:i+1]), sig...), true
}

// signedBy reports, with the standard decoders and independently of
// VerifyDistributed, whether data is a compact JWS whose signature verifies
// with pub.
func signedBy(data []byte, pub ed25519.PublicKey) bool {
	parts := strings.Split(string(data), ".")
	if len(parts) != 3 {
		return false
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return false
	}
	return ed25519.Verify(pub, []byte(parts[0]+"."+parts[1]), sig)
}

// checkBundle asserts the invariants of one VerifyBundle result.
func checkBundle(t *testing.T, data []byte, b *Bundle, err error, trusted, other ed25519.PrivateKey) {
	t.Helper()
	if (b == nil) == (err == nil) {
		t.Fatalf("VerifyBundle = %v, %v: want exactly one non-nil", b, err)
	}
	if err != nil {
		return
	}
	if !signedBy(data, pubOf(trusted)) {
		t.Fatalf("accepted a bundle not signed by the trusted key: %q", data)
	}
	if signedBy(data, pubOf(other)) {
		t.Fatalf("a bundle verifies with two keys: %q", data)
	}
	if b.Sequence == 0 || len(b.JWKS) == 0 {
		t.Fatalf("accepted a bundle without sequence or JWKS: %+v", b)
	}
	parts := strings.Split(string(data), ".")
	for i, p := range parts {
		raw, err := base64.RawURLEncoding.DecodeString(p)
		if err != nil || base64.RawURLEncoding.EncodeToString(raw) != p {
			t.Fatalf("accepted a bundle with non-canonical part %d", i)
		}
		if i == 0 {
			var hdr map[string]any
			if err := json.Unmarshal(raw, &hdr); err != nil || hdr["alg"] != "EdDSA" || hdr["typ"] != BundleType {
				t.Fatalf("accepted a bundle with header %s", raw)
			}
		}
		if i == 1 {
			var std Bundle
			if err := json.Unmarshal(raw, &std); err != nil || std.Sequence != b.Sequence || std.IssuedAt != b.IssuedAt {
				t.Fatalf("encoding/json reads the payload %s as %+v (%v), VerifyBundle as %+v", raw, std, err, b)
			}
		}
	}
	// What a cache does next with a verified bundle: it must not panic.
	_, _ = b.KeySet()
}

// FuzzVerifyBundle: VerifyBundle (VerifyDistributed with the bundle typ)
// never panics and accepts exactly the bundles signed by the trusted key;
// the same input re-signed by the trusted key explores payload decoding,
// re-signed by another key it is always refused.
func FuzzVerifyBundle(f *testing.F) {
	trusted, other := bundleFuzzKeys()
	only := []ed25519.PublicKey{pubOf(trusted)}
	for _, s := range []string{"", ".", "..", "a.b.c", "e30.e30.e30"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := VerifyBundle(data, only)
		checkBundle(t, data, b, err, trusted, other)
		if _, err := VerifyBundle(data, []ed25519.PublicKey{pubOf(other)}); err == nil && !signedBy(data, pubOf(other)) {
			t.Fatalf("a bundle verified with a key that did not sign it: %q", data)
		}
		if re, ok := resign(data, trusted); ok {
			b, err := VerifyBundle(re, only)
			checkBundle(t, re, b, err, trusted, other)
		}
		if re, ok := resign(data, other); ok {
			if b, err := VerifyBundle(re, only); err == nil {
				t.Fatalf("accepted a bundle signed by another key: %+v", b)
			}
		}
	})
}

// FuzzCacheLoadDisk: a sidecar starting with a damaged, foreign or
// malicious disk copy of the bundle never panics, and serves keys from it
// only if the file is a bundle signed by the trusted key with a usable
// key set.
func FuzzCacheLoadDisk(f *testing.F) {
	trusted, other := bundleFuzzKeys()
	dir := f.TempDir()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, CacheFileName), data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := NewCache(CacheConfig{Trusted: []ed25519.PublicKey{pubOf(trusted)}, Bucket: "tokenwarden_jwks", CacheDir: dir, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		b, verr := VerifyBundle(data, []ed25519.PublicKey{pubOf(trusted)})
		var usable bool
		if verr == nil {
			checkBundle(t, data, b, verr, trusted, other)
			ks, err := b.KeySet()
			usable = err == nil && ks.Len() > 0 && len(data) <= cacheMaxDocument
		}
		st := c.Status()
		switch {
		case usable && (!c.Ready() || st.Source != CacheSourceDisk || st.Sequence != b.Sequence):
			t.Fatalf("a good bundle on disk was not served: %+v", st)
		case !usable && (c.Ready() || c.KeySet().Len() != 0):
			t.Fatalf("served keys from a bad disk copy: %+v", st)
		}
	})
}

// FuzzParseKeySet: ParseKeySet (a bundle's JWKS, or the HTTP fallback's
// document) never panics; what it accepts has only usable keys with kids
// and survives a round trip through Document.
func FuzzParseKeySet(f *testing.F) {
	for _, s := range []string{"", "{}", `{"keys":[]}`, `{"keys":[{}]}`, `{"keys":null}`, "[]"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		ks, err := ParseKeySet(doc)
		if (ks == nil) == (err == nil) {
			t.Fatalf("ParseKeySet = %v, %v: want exactly one non-nil", ks, err)
		}
		if err != nil {
			return
		}
		for _, id := range ks.IDs() {
			k, _ := ks.Lookup(id)
			if id == "" || k.ID != id {
				t.Fatalf("key with kid %q filed under %q", k.ID, id)
			}
			if err := checkKeyFitsAlg(k.Alg, k.Key); err != nil {
				t.Fatalf("accepted key %q: %v", id, err)
			}
		}
		out, err := Document(ks)
		if err != nil {
			t.Fatalf("accepted a set Document cannot render: %v", err)
		}
		again, err := ParseKeySet(out)
		if err != nil {
			t.Fatalf("Document output %s does not parse: %v", out, err)
		}
		a, b := ks.IDs(), again.IDs()
		slices.Sort(a)
		slices.Sort(b)
		if !slices.Equal(a, b) {
			t.Fatalf("round trip changed the kids: %q → %q", a, b)
		}
		for _, id := range a {
			k1, _ := ks.Lookup(id)
			k2, _ := again.Lookup(id)
			if k1.Alg != k2.Alg || !publicEqual(k1.Key, k2.Key) {
				t.Fatalf("round trip changed key %q", id)
			}
		}
	})
}

func publicEqual(a, b crypto.PublicKey) bool {
	type eq interface{ Equal(x crypto.PublicKey) bool }
	ea, ok := a.(eq)
	return ok && ea.Equal(b)
}

// TestBundleFuzzSeeds checks that the committed seeds still hold what their
// names say, for the targets above.
func TestBundleFuzzSeeds(t *testing.T) {
	trusted, _ := bundleFuzzKeys()
	for _, target := range []string{"FuzzVerifyBundle", "FuzzCacheLoadDisk", "FuzzParseKeySet", "FuzzVerifyDistributedBatch"} {
		files, err := filepath.Glob(filepath.Join("testdata", "fuzz", target, "*"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) < 5 {
			t.Fatalf("%s: only %d seed files", target, len(files))
		}
		valid := 0
		for _, file := range files {
			s, err := verifyReadCorpusFile(file)
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			var ok bool
			if target == "FuzzVerifyDistributedBatch" {
				valid++ // mixed batches: the target itself checks them
				continue
			}
			if target == "FuzzParseKeySet" {
				_, err = ParseKeySet([]byte(s))
			} else {
				var b *Bundle
				if b, err = VerifyBundle([]byte(s), []ed25519.PublicKey{pubOf(trusted)}); err == nil {
					var ks *KeySet
					if ks, err = b.KeySet(); err == nil && ks.Len() == 0 {
						err = fmt.Errorf("empty key set")
					}
				}
			}
			ok = err == nil
			name := filepath.Base(file)
			if strings.HasPrefix(name, "valid-") {
				valid++
				if !ok {
					t.Errorf("%s/%s: %v", target, name, err)
				}
			} else if ok {
				t.Errorf("%s/%s accepted", target, name)
			}
		}
		if valid == 0 {
			t.Errorf("%s: no valid seeds", target)
		}
	}
}

// TestWriteBundleFuzzSeeds writes the seed corpora of the targets above.
// It runs only with TOKENWARDEN_WRITE_FUZZ_SEEDS=1; the signatures are
// deterministic (Ed25519, fixed keys), so it rewrites the same files.
func TestWriteBundleFuzzSeeds(t *testing.T) {
	if os.Getenv("TOKENWARDEN_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set TOKENWARDEN_WRITE_FUZZ_SEEDS=1 to rewrite the seed corpora")
	}
	trusted, other := bundleFuzzKeys()
	k := verifyFuzzKeys(t)
	doc, err := Document(k.ks)
	if err != nil {
		t.Fatal(err)
	}
	edOnly, _ := NewKeySet(PublicKey{ID: verifyFuzzEdKid, Alg: EdDSA, Key: pubOf(k.ed)})
	edDoc, _ := Document(edOnly)
	sign := func(v any, typ string, key ed25519.PrivateKey) []byte {
		b, err := SignDistributed(v, typ, key)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// raw makes a JWS from a literal header and payload, signed by key.
	raw := func(hdr, payload string, key ed25519.PrivateKey) []byte {
		in := base64.RawURLEncoding.EncodeToString([]byte(hdr)) + "." + base64.RawURLEncoding.EncodeToString([]byte(payload))
		return []byte(in + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(key, []byte(in))))
	}
	kid := DistributionKeyID(pubOf(trusted))
	hdr := `{"alg":"EdDSA","kid":"` + kid + `","typ":"` + BundleType + `"}`
	good := sign(&Bundle{Sequence: 7, IssuedAt: 1_700_000_000, JWKS: doc}, BundleType, trusted)
	payload := func(seq uint64, jwksDoc []byte) string {
		return `{"seq":` + strconv.FormatUint(seq, 10) + `,"iat":1700000000,"jwks":` + string(jwksDoc) + `}`
	}
	tampered := bytes.Clone(good)
	tampered[bytes.IndexByte(tampered, '.')+5] ^= 1
	bundles := map[string][]byte{
		"valid-two-keys":        good,
		"valid-ed-only":         sign(&Bundle{Sequence: 1, IssuedAt: 1_700_000_000, JWKS: edDoc}, BundleType, trusted),
		"valid-no-kid":          raw(`{"alg":"EdDSA","typ":"`+BundleType+`"}`, payload(3, doc), trusted),
		"valid-unknown-field":   raw(hdr, `{"seq":4,"iat":1,"jwks":`+string(doc)+`,"future":true}`, trusted),
		"other-key":             sign(&Bundle{Sequence: 9, IssuedAt: 1_700_000_000, JWKS: doc}, BundleType, other),
		"other-key-trusted-kid": raw(hdr, payload(9, doc), other),
		"other-key-no-kid":      raw(`{"alg":"EdDSA","typ":"`+BundleType+`"}`, payload(9, doc), other),
		"tampered-payload":      tampered,
		"event-typ":             sign(&Bundle{Sequence: 7, IssuedAt: 1, JWKS: doc}, "tokenwarden-revocation+jws", trusted),
		"token-typ":             raw(`{"alg":"EdDSA","kid":"`+kid+`","typ":"at+jwt"}`, payload(7, doc), trusted),
		"alg-none":              []byte(base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"`+BundleType+`"}`)) + "." + base64.RawURLEncoding.EncodeToString([]byte(payload(7, doc))) + "."),
		"header-jwk":            raw(`{"alg":"EdDSA","typ":"`+BundleType+`","jwk":{"kty":"OKP","crv":"Ed25519","x":"`+base64.RawURLEncoding.EncodeToString(pubOf(other))+`"}}`, payload(7, doc), other),
		"header-crit":           raw(`{"alg":"EdDSA","typ":"`+BundleType+`","crit":["x"],"x":1}`, payload(7, doc), trusted),
		"dup-header-alg":        raw(`{"alg":"EdDSA","alg":"none","typ":"`+BundleType+`"}`, payload(7, doc), trusted),
		"sequence-zero":         raw(hdr, payload(0, doc), trusted),
		"jwks-missing":          raw(hdr, `{"seq":5,"iat":1}`, trusted),
		"jwks-empty-keys":       raw(hdr, payload(5, []byte(`{"keys":[]}`)), trusted),
		"jwks-hmac-key":         raw(hdr, payload(5, []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h","alg":"HS256"}]}`)), trusted),
		"trailing-payload":      raw(hdr, payload(5, doc)+`{}`, trusted),
		"seq-negative":          raw(hdr, `{"seq":-1,"iat":1,"jwks":`+string(doc)+`}`, trusted),
		"seq-float":             raw(hdr, `{"seq":1.5,"iat":1,"jwks":`+string(doc)+`}`, trusted),
		"padded-signature":      append(bytes.Clone(good), "=="...),
		"std-alphabet":          bytes.ReplaceAll(bytes.ReplaceAll(bytes.Clone(good), []byte("-"), []byte("+")), []byte("_"), []byte("/")),
		"four-parts":            append(bytes.Clone(good), ".e30"...),
		"short-signature":       good[:len(good)-4],
		"not-a-jws":             []byte(`{"keys":[]}`),
		"empty":                 nil,
	}
	write(t, "FuzzVerifyBundle", bundles)
	write(t, "FuzzCacheLoadDisk", map[string][]byte{
		"valid-two-keys":    good,
		"valid-ed-only":     bundles["valid-ed-only"],
		"other-key":         bundles["other-key"],
		"tampered-payload":  tampered,
		"jwks-empty-keys":   bundles["jwks-empty-keys"],
		"trailing-newline":  append(bytes.Clone(good), '\n'),
		"plain-jwks":        doc,
		"empty":             nil,
		"binary":            {0, 1, 2, 0xff, '.', 0, '.'},
		"jwks-hmac-key":     bundles["jwks-hmac-key"],
		"seq-negative":      bundles["seq-negative"],
		"trailing-payload":  bundles["trailing-payload"],
		"other-trusted-kid": bundles["other-key-trusted-kid"],
	})
	yB64 := base64.RawURLEncoding.EncodeToString(k.ec.Y.FillBytes(make([]byte, 32)))
	join := func(names ...string) []byte {
		var items [][]byte
		for _, n := range names {
			items = append(items, bundles[n])
		}
		return bytes.Join(items, []byte("\n"))
	}
	write(t, "FuzzVerifyDistributedBatch", map[string][]byte{
		"all-valid":              join("valid-two-keys", "valid-ed-only", "valid-no-kid", "valid-unknown-field"),
		"one-forged-among-valid": join("valid-two-keys", "other-key-trusted-kid", "valid-ed-only", "valid-no-kid"),
		"one-tampered":           join("valid-two-keys", "tampered-payload", "valid-ed-only"),
		"kidless-other-key":      join("valid-no-kid", "other-key-no-kid"),
		"same-item-twice":        join("valid-two-keys", "valid-two-keys"),
		"wrong-typ-and-alg":      join("event-typ", "alg-none", "valid-two-keys"),
		"non-json-payload":       join("trailing-payload", "valid-two-keys", "seq-float"),
		"malformed":              join("padded-signature", "std-alphabet", "four-parts", "short-signature", "not-a-jws", "empty"),
	})
	ec := `{"kty":"EC","crv":"P-256","kid":"e","alg":"ES256","use":"sig","x":"` + base64.RawURLEncoding.EncodeToString(k.ec.X.FillBytes(make([]byte, 32))) + `","y":"` + yB64 + `"}`
	ed := `{"kty":"OKP","crv":"Ed25519","kid":"d","alg":"EdDSA","x":"` + base64.RawURLEncoding.EncodeToString(pubOf(k.ed)) + `"}`
	write(t, "FuzzParseKeySet", map[string][]byte{
		"valid-document":     doc,
		"valid-ec":           []byte(`{"keys":[` + ec + `]}`),
		"valid-ed-no-use":    []byte(`{"keys":[` + ed + `]}`),
		"valid-empty":        []byte(`{"keys":[]}`),
		"dup-kid":            []byte(`{"keys":[` + ec + `,` + strings.Replace(ed, `"kid":"d"`, `"kid":"e"`, 1) + `]}`),
		"no-kid":             []byte(`{"keys":[` + strings.Replace(ed, `"kid":"d",`, ``, 1) + `]}`),
		"no-alg":             []byte(`{"keys":[` + strings.Replace(ed, `"alg":"EdDSA",`, ``, 1) + `]}`),
		"use-enc":            []byte(`{"keys":[` + strings.Replace(ec, `"use":"sig"`, `"use":"enc"`, 1) + `]}`),
		"alg-mismatch":       []byte(`{"keys":[` + strings.Replace(ec, `"alg":"ES256"`, `"alg":"EdDSA"`, 1) + `]}`),
		"ec-off-curve":       []byte(`{"keys":[` + strings.Replace(ec, yB64, base64.RawURLEncoding.EncodeToString(new(big.Int).Add(k.ec.Y, big.NewInt(1)).FillBytes(make([]byte, 32))), 1) + `]}`),
		"ec-p384":            []byte(`{"keys":[` + strings.Replace(ec, `"P-256"`, `"P-384"`, 1) + `]}`),
		"hmac":               []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h","alg":"HS256"}]}`),
		"rsa-small":          []byte(`{"keys":[{"kty":"RSA","kid":"r","alg":"RS256","n":"AQAB","e":"AQAB"}]}`),
		"ed-short":           []byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"d","alg":"EdDSA","x":"AAAA"}]}`),
		"private-key-fields": []byte(`{"keys":[` + strings.Replace(ed, `}`, `,"d":"`+base64.RawURLEncoding.EncodeToString(k.ed.Seed())+`"}`, 1) + `]}`),
		"keys-not-array":     []byte(`{"keys":{}}`),
		"not-json":           []byte(`keys`),
	})
}

// write stores seeds as one-value "go test fuzz v1" []byte files.
func write(t *testing.T, target string, seeds map[string][]byte) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", target)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	for name, b := range seeds {
		content := "go test fuzz v1\n[]byte(" + strconv.Quote(string(b)) + ")\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
