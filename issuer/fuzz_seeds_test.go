package issuer

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/jwks"
)

// fuzzTargets are the fuzz targets of this package, each with committed
// seeds in testdata/fuzz/<name>/.
var fuzzTargets = []string{"FuzzTokenEndpoint", "FuzzRevokeEndpoint", "FuzzAdminRevocation", "FuzzAdminAuth",
	"FuzzParseRefreshToken", "FuzzDecodeKeyRing", "FuzzUnseal"}

// TestIssuerFuzzSeeds checks that every target has a handful of seeds in
// the corpus format (the seeds themselves run as subtests of each target).
func TestIssuerFuzzSeeds(t *testing.T) {
	for _, name := range fuzzTargets {
		files, err := filepath.Glob(filepath.Join("testdata", "fuzz", name, "*"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) < 5 {
			t.Errorf("%s: only %d seed files", name, len(files))
		}
		for _, file := range files {
			b, err := os.ReadFile(file)
			if err != nil || !strings.HasPrefix(string(b), "go test fuzz v1\n") {
				t.Errorf("%s: not a go test fuzz v1 file (%v)", file, err)
			}
		}
	}
}

// seedValue renders one value in the "go test fuzz v1" format.
func seedValue(v any) string {
	switch v := v.(type) {
	case string:
		return "string(" + strconv.Quote(v) + ")"
	case []byte:
		return "[]byte(" + strconv.Quote(string(v)) + ")"
	case uint8:
		return fmt.Sprintf("uint8(%d)", v)
	case bool:
		return fmt.Sprintf("bool(%t)", v)
	}
	panic(fmt.Sprintf("seed value of type %T", v))
}

func writeSeeds(t *testing.T, target string, seeds map[string][]any) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", target)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	for name, vals := range seeds {
		var b strings.Builder
		b.WriteString("go test fuzz v1\n")
		for _, v := range vals {
			b.WriteString(seedValue(v) + "\n")
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func basic(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+secret))
}

// TestWriteIssuerFuzzSeeds writes the seed corpora of this package's fuzz
// targets. It runs only with TOKENWARDEN_WRITE_FUZZ_SEEDS=1. The key-ring
// and sealed-key seeds hold fresh random keys and nonces, so a rewrite
// changes those files.
func TestWriteIssuerFuzzSeeds(t *testing.T) {
	if os.Getenv("TOKENWARDEN_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set TOKENWARDEN_WRITE_FUZZ_SEEDS=1 to rewrite the seed corpora")
	}
	const form = "application/x-www-form-urlencoded"
	app := basic("app", "app-secret")
	pw := "grant_type=password&username=alice&password=alice-pw"
	writeSeeds(t, "FuzzTokenEndpoint", map[string][]any{
		"password-basic":            {"POST", form, app, []byte(pw + "&scope=read")},
		"password-body-auth":        {"POST", form, "", []byte(pw + "&client_id=app&client_secret=app-secret")},
		"password-charset":          {"POST", form + "; charset=UTF-8", app, []byte(pw)},
		"password-wrong":            {"POST", form, app, []byte("grant_type=password&username=alice&password=alice-pX")},
		"password-unknown-user":     {"POST", form, app, []byte("grant_type=password&username=mallory&password=alice-pw")},
		"password-empty-password":   {"POST", form, app, []byte("grant_type=password&username=alice&password=")},
		"password-service-client":   {"POST", form, basic("service", "service-secret"), []byte(pw)},
		"password-scope-admin":      {"POST", form, app, []byte(pw + "&scope=tokenwarden%3Aadmin")},
		"password-user-scope":       {"POST", form, app, []byte("grant_type=password&username=bob&password=bob-pw&scope=write")},
		"client-credentials":        {"POST", form, basic("service", "service-secret"), []byte("grant_type=client_credentials")},
		"client-credentials-admin":  {"POST", form, basic("admin", "admin-secret"), []byte("grant_type=client_credentials&scope=tokenwarden:admin")},
		"client-credentials-other":  {"POST", form, basic("other", "other-secret"), []byte("grant_type=client_credentials")},
		"basic-percent-encoded":     {"POST", form, basic("app", "app%2Dsecret"), []byte("grant_type=client_credentials")},
		"basic-bad-percent":         {"POST", form, basic("app", "app%zzsecret"), []byte("grant_type=client_credentials")},
		"basic-not-base64":          {"POST", form, "Basic !!!", []byte("grant_type=client_credentials")},
		"basic-no-colon":            {"POST", form, "Basic " + base64.StdEncoding.EncodeToString([]byte("app")), []byte("grant_type=client_credentials")},
		"basic-wrong-secret":        {"POST", form, basic("app", "app-secreT"), []byte("grant_type=client_credentials")},
		"basic-unknown-client":      {"POST", form, basic("nobody", "app-secret"), []byte("grant_type=client_credentials")},
		"two-auth-methods":          {"POST", form, app, []byte("grant_type=client_credentials&client_secret=app-secret")},
		"client-id-mismatch":        {"POST", form, app, []byte("grant_type=client_credentials&client_id=service")},
		"no-client-auth":            {"POST", form, "", []byte(pw)},
		"bearer-scheme":             {"POST", form, "Bearer abc", []byte("grant_type=client_credentials")},
		"refresh-live":              {"POST", form, app, []byte("grant_type=refresh_token&refresh_token=" + phRefresh)},
		"refresh-narrower":          {"POST", form, app, []byte("grant_type=refresh_token&scope=read&refresh_token=" + phRefresh)},
		"refresh-wider":             {"POST", form, app, []byte("grant_type=refresh_token&scope=read+write+admin&refresh_token=" + phRefresh)},
		"refresh-other-client":      {"POST", form, basic("other", "other-secret"), []byte("grant_type=refresh_token&refresh_token=" + phRefresh)},
		"refresh-access-token":      {"POST", form, app, []byte("grant_type=refresh_token&refresh_token=" + phAccess)},
		"refresh-shaped-unknown":    {"POST", form, app, []byte("grant_type=refresh_token&refresh_token=AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")},
		"refresh-garbage":           {"POST", form, app, []byte("grant_type=refresh_token&refresh_token=x.y")},
		"refresh-newline-in-id":     {"POST", form, app, []byte("grant_type=refresh_token&refresh_token=AAAAAAAAAAAAAAAAAAAA%0A%0A.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")},
		"refresh-missing":           {"POST", form, app, []byte("grant_type=refresh_token")},
		"grant-repeated":            {"POST", form, app, []byte("grant_type=client_credentials&grant_type=password")},
		"grant-missing":             {"POST", form, app, []byte("scope=read")},
		"grant-unsupported":         {"POST", form, app, []byte("grant_type=authorization_code&code=x")},
		"grant-case":                {"POST", form, app, []byte("grant_type=Client_Credentials")},
		"body-bad-escape":           {"POST", form, app, []byte("grant_type=%zz")},
		"body-semicolon":            {"POST", form, app, []byte("grant_type=client_credentials;scope=read")},
		"body-nul":                  {"POST", form, app, []byte("grant_type=password&username=alice%00&password=alice-pw")},
		"body-empty":                {"POST", form, app, []byte("")},
		"body-too-large":            {"POST", form, app, []byte("grant_type=client_credentials&scope=" + strings.Repeat("a", 64<<10))},
		"content-type-json":         {"POST", "application/json", app, []byte(`{"grant_type":"client_credentials"}`)},
		"content-type-missing":      {"POST", "", app, []byte("grant_type=client_credentials")},
		"content-type-malformed":    {"POST", "application/x-www-form-urlencoded;;=", app, []byte("grant_type=client_credentials")},
		"content-type-multipart":    {"POST", "multipart/form-data; boundary=x", app, []byte("--x\r\nContent-Disposition: form-data; name=\"grant_type\"\r\n\r\nclient_credentials\r\n--x--\r\n")},
		"method-get":                {"GET", form, app, []byte("grant_type=client_credentials")},
		"method-put":                {"PUT", form, app, []byte("grant_type=client_credentials")},
		"method-lowercase-post":     {"post", form, app, []byte("grant_type=client_credentials")},
		"username-long-unicode":     {"POST", form, app, []byte("grant_type=password&password=x&username=" + strings.Repeat("%C3%A9", 100))},
		"scope-duplicates-and-tabs": {"POST", form, app, []byte(pw + "&scope=read%09read+write")},
	})
	writeSeeds(t, "FuzzRevokeEndpoint", map[string][]any{
		"logout-refresh":        {"POST", form, app, []byte("token=" + phRefresh)},
		"logout-refresh-hint":   {"POST", form, app, []byte("token_type_hint=refresh_token&token=" + phRefresh)},
		"revoke-access":         {"POST", form, app, []byte("token=" + phAccess)},
		"revoke-access-body":    {"POST", form, "", []byte("client_id=app&client_secret=app-secret&token=" + phAccess)},
		"foreign-client-access": {"POST", form, basic("other", "other-secret"), []byte("token=" + phAccess)},
		"foreign-refresh":       {"POST", form, basic("other", "other-secret"), []byte("token=" + phRefresh)},
		"wrong-secret":          {"POST", form, basic("app", "nope"), []byte("token=" + phAccess)},
		"no-client-auth":        {"POST", form, "", []byte("token=" + phAccess)},
		"garbage-token":         {"POST", form, app, []byte("token=not-a-token")},
		"refresh-newline-in-id": {"POST", form, app, []byte("token=AAAAAAAAAAAAAAAAAAAA%0D%0A.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")},
		"shaped-refresh":        {"POST", form, app, []byte("token=AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")},
		"token-missing":         {"POST", form, app, []byte("token_type_hint=access_token")},
		"token-repeated":        {"POST", form, app, []byte("token=a&token=b")},
		"method-get":            {"GET", form, app, []byte("token=x")},
		"content-type-json":     {"POST", "application/json", app, []byte(`{"token":"x"}`)},
		"bad-escape":            {"POST", form, app, []byte("token=%zz")},
	})
	admin := func(body string) []any { return []any{"application/json", []byte(body)} }
	past := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	writeSeeds(t, "FuzzAdminRevocation", map[string][]any{
		"jti":                     admin(`{"kind":"jti","value":"some-jti","reason":"leaked"}`),
		"sid":                     admin(`{"kind":"sid","value":"session-1"}`),
		"sub":                     admin(`{"kind":"sub","value":"alice","reason":"offboarded"}`),
		"client-issued-before":    admin(`{"kind":"client","value":"app","issued_before":"` + past + `"}`),
		"all-issued-before":       admin(`{"kind":"all","issued_before":"` + past + `"}`),
		"sub-unicode":             admin(`{"kind":"sub","value":"j\u00f6rg"}`),
		"charset":                 {"application/json; charset=utf-8", []byte(`{"kind":"jti","value":"x"}`)},
		"value-missing":           admin(`{"kind":"sub"}`),
		"all-with-value":          admin(`{"kind":"all","value":"x"}`),
		"kind-unknown":            admin(`{"kind":"user","value":"alice"}`),
		"kind-uppercase":          admin(`{"kind":"JTI","value":"x"}`),
		"kind-number":             admin(`{"kind":1,"value":"x"}`),
		"unknown-field":           admin(`{"kind":"jti","value":"x","expires_at":4102444800}`),
		"duplicate-kind":          admin(`{"kind":"jti","value":"x","kind":"all"}`),
		"trailing-data":           admin(`{"kind":"jti","value":"x"}{"kind":"all"}`),
		"trailing-garbage":        admin(`{"kind":"jti","value":"x"} xyz`),
		"issued-before-future":    admin(`{"kind":"all","issued_before":"2999-01-01T00:00:00Z"}`),
		"issued-before-expired":   admin(`{"kind":"sub","value":"alice","issued_before":"2000-01-01T00:00:00Z"}`),
		"issued-before-zero":      admin(`{"kind":"sub","value":"alice","issued_before":"0001-01-01T00:00:00Z"}`),
		"issued-before-not-rfc":   admin(`{"kind":"sub","value":"alice","issued_before":"yesterday"}`),
		"issued-before-number":    admin(`{"kind":"sub","value":"alice","issued_before":1700000000}`),
		"issued-before-year-0":    admin(`{"kind":"sub","value":"alice","issued_before":"0000-01-01T00:00:00Z"}`),
		"issued-before-null":      admin(`{"kind":"jti","value":"x","issued_before":null}`),
		"value-too-long":          admin(`{"kind":"jti","value":"` + strings.Repeat("v", 300) + `"}`),
		"reason-too-long":         admin(`{"kind":"jti","value":"x","reason":"` + strings.Repeat("r", 600) + `"}`),
		"value-control-char":      admin(`{"kind":"jti","value":"a\nb"}`),
		"reason-invalid-utf8":     admin("{\"kind\":\"jti\",\"value\":\"x\",\"reason\":\"\xff\"}"),
		"body-too-large":          admin(`{"kind":"jti","value":"x","reason":"` + strings.Repeat(" ", 17<<10) + `"}`),
		"array":                   admin(`[{"kind":"jti","value":"x"}]`),
		"null":                    admin(`null`),
		"empty":                   admin(``),
		"truncated":               admin(`{"kind":"jti","val`),
		"content-type-form":       {"application/x-www-form-urlencoded", []byte("kind=jti&value=x")},
		"content-type-missing":    {"", []byte(`{"kind":"jti","value":"x"}`)},
		"content-type-json-patch": {"application/json-patch+json", []byte(`{"kind":"jti","value":"x"}`)},
	})
	writeSeeds(t, "FuzzAdminAuth", map[string][]any{
		"admin-list-keys":      {"GET", uint8(2), "Bearer " + phAdmin},
		"admin-rotate":         {"POST", uint8(3), "Bearer " + phAdmin},
		"admin-list-revoked":   {"GET", uint8(0), "bearer " + phAdmin},
		"admin-post-revoke":    {"POST", uint8(1), "BEARER " + phAdmin},
		"admin-head":           {"HEAD", uint8(0), "Bearer " + phAdmin},
		"admin-wrong-method":   {"DELETE", uint8(2), "Bearer " + phAdmin},
		"two-spaces":           {"GET", uint8(2), "Bearer  " + phAdmin},
		"trailing-space":       {"GET", uint8(2), "Bearer " + phAdmin + " "},
		"suffix":               {"GET", uint8(2), "Bearer " + phAdmin + "x"},
		"user-token":           {"GET", uint8(2), "Bearer " + phAccess},
		"refresh-token":        {"GET", uint8(2), "Bearer " + phRefresh},
		"no-authorization":     {"GET", uint8(2), ""},
		"basic":                {"GET", uint8(2), basic("admin", "admin-secret")},
		"garbage":              {"POST", uint8(3), "Bearer not.a.token"},
		"scheme-only":          {"GET", uint8(0), "Bearer"},
		"quote-in-token":       {"GET", uint8(0), `Bearer a"b.c"d.e`},
		"alg-none":             {"GET", uint8(2), "Bearer eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0.eyJzY29wZSI6InRva2Vud2FyZGVuOmFkbWluIn0."},
		"token-without-bearer": {"GET", uint8(2), phAdmin},
	})
	writeSeeds(t, "FuzzParseRefreshToken", map[string][]any{
		"valid":         {"AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
		"valid-mixed":   {"ab-_CD0123456789xyzABw.Zm9vYmFyLWJhel9xdXV4LTAxMjM0NTY3ODlhYmNkZWY"},
		"noncanonical":  {"AAAAAAAAAAAAAAAAAAAAAB.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB"},
		"std-alphabet":  {"AAAAAAAAAAAAAAAAAAAA+/.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
		"padded":        {"AAAAAAAAAAAAAAAAAAAAAA==.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},
		"two-dots":      {"AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAA"},
		"access-token":  {"eyJhbGciOiJFUzI1NiJ9.e30.sig"},
		"empty":         {""},
		"no-dot":        {strings.Repeat("A", 66)},
		"unicode-chars": {"AAAAAAAAAAAAAAAAAAAAé.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
		"newline-in-id": {"AAAAAAAAAAAAAAAAAAAA\n\n.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
	})

	m := fuzzKeyManager(t)
	now := time.Unix(1_700_000_000, 0).UTC()
	ring, err := jwks.NewRing(now, jwks.DefaultPolicy())
	if err != nil {
		t.Fatal(err)
	}
	sealedRing, err := m.encode(ring)
	if err != nil {
		t.Fatal(err)
	}
	var sr storedRing
	if err := json.Unmarshal(sealedRing, &sr); err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(*storedRing)) []byte {
		c := sr
		c.Keys = append([]storedKey(nil), sr.Keys...)
		f(&c)
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// plain is the ring with each sealed_private_key replaced by its
	// plaintext, for reseal mode.
	plain := func(f func(*storedRing)) []byte {
		return mutate(func(c *storedRing) {
			for i, k := range ring.Keys {
				der, err := k.MarshalPrivate()
				if err != nil {
					t.Fatal(err)
				}
				c.Keys[i].Sealed = der
			}
			f(c)
		})
	}
	same := func(*storedRing) {}
	// A ring sealed under the previous KEK, as before a rewrap.
	prev := &keyManager{keks: &keyEncryptionKeys{current: m.keks.previous[0]}}
	prevRing, err := prev.encode(ring)
	if err != nil {
		t.Fatal(err)
	}
	writeSeeds(t, "FuzzDecodeKeyRing", map[string][]any{
		"valid-sealed": {sealedRing, false},
		"valid-plain":  {plain(same), true},
		"legacy-no-kek-id": {mutate(func(c *storedRing) {
			for i := range c.Keys {
				c.Keys[i].KEK = ""
			}
		}), false},
		"sealed-previous-kek": {prevRing, false},
		"kek-id-unknown":      {mutate(func(c *storedRing) { c.Keys[0].KEK = "0123456789abcdef" }), false},
		"kek-id-malformed":    {mutate(func(c *storedRing) { c.Keys[1].KEK = "KEK\n" }), false},
		"kek-id-of-other-kek": {mutate(func(c *storedRing) { c.Keys[0].KEK = m.keks.previousIDs()[0] }), false},
		"kids-swapped":        {mutate(func(c *storedRing) { c.Keys[0].ID, c.Keys[1].ID = c.Keys[1].ID, c.Keys[0].ID }), false},
		"sealed-bit-flip": {mutate(func(c *storedRing) {
			s := append([]byte(nil), c.Keys[0].Sealed...)
			s[len(s)-1] ^= 1
			c.Keys[0].Sealed = s
		}), false},
		"two-active":         {plain(func(c *storedRing) { c.Keys[1].State = c.Keys[0].State }), true},
		"no-keys":            {mutate(func(c *storedRing) { c.Keys = nil }), false},
		"alg-hs256":          {plain(func(c *storedRing) { c.Keys[0].Alg = "HS256" }), true},
		"alg-mismatch":       {plain(func(c *storedRing) { c.Keys[0].Alg = "RS256" }), true},
		"state-unknown":      {plain(func(c *storedRing) { c.Keys[1].State = "compromised" }), true},
		"kid-not-thumbprint": {plain(func(c *storedRing) { c.Keys[0].ID = "chosen-kid" }), true},
		"der-garbage":        {plain(func(c *storedRing) { c.Keys[0].Sealed = []byte("not a key") }), true},
		"sequence-max":       {plain(func(c *storedRing) { c.Sequence = ^uint64(0) }), true},
		"not-json":           {[]byte("ring"), false},
		"sealed-not-base64":  {[]byte(`{"sequence":1,"keys":[{"kid":"a","alg":"ES256","state":"active","sealed_private_key":"!!"}]}`), false},
	})
	s1, id, _ := m.keks.seal("k1", []byte("fuzz-plain-1"))
	s2, _, _ := m.keks.seal("k2", []byte("fuzz-plain-2 a longer plaintext"))
	s3, prevID, _ := prev.keks.seal("k3", []byte("fuzz-plain-3 sealed under the previous KEK"))
	flipped := append([]byte(nil), s1...)
	flipped[len(flipped)/2] ^= 0x80
	writeSeeds(t, "FuzzUnseal", map[string][]any{
		"valid-k1":             {"k1", id, s1},
		"valid-k2":             {"k2", id, s2},
		"legacy-no-kek-id":     {"k1", "", s1},
		"previous-kek":         {"k3", prevID, s3},
		"previous-kek-legacy":  {"k3", "", s3},
		"kek-id-of-other-kek":  {"k1", prevID, s1},
		"kek-id-unknown":       {"k1", "0123456789abcdef", s1},
		"kek-id-malformed":     {"k1", "0123456789ABCDEF", s1},
		"kek-id-control-chars": {"k1", "\x1b[31mred\n", s1},
		"wrong-kid":            {"k2", id, s1},
		"bit-flip":             {"k1", id, flipped},
		"truncated":            {"k1", id, s1[:len(s1)-1]},
		"nonce-only":           {"k1", id, s1[:12]},
		"empty":                {"", "", []byte{}},
		"tag-only-size":        {"k1", id, make([]byte, 28)},
	})
}
