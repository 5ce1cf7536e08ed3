package directory

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

var phcRE = regexp.MustCompile(`^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$([A-Za-z0-9+/]{22})\$([A-Za-z0-9+/]{43})$`)

func TestHashPasswordRoundTrip(t *testing.T) {
	for _, pw := range []string{"", "demo-password", "päss wörd\x00with nul", strings.Repeat("x", 4096)} {
		h, err := HashPassword([]byte(pw), testParams)
		if err != nil {
			t.Fatalf("HashPassword: %v", err)
		}
		if !phcRE.MatchString(h) {
			t.Fatalf("hash %q is not a PHC argon2id string with a 16-byte salt and 32-byte key", h)
		}
		if ok, err := VerifyPassword(h, []byte(pw)); err != nil || !ok {
			t.Errorf("VerifyPassword(correct) = %v, %v; want true, nil", ok, err)
		}
		if ok, err := VerifyPassword(h, []byte(pw+"x")); err != nil || ok {
			t.Errorf("VerifyPassword(wrong) = %v, %v; want false, nil", ok, err)
		}
	}
}

func TestHashPasswordSaltsDiffer(t *testing.T) {
	a, b := mustHash(t, "same"), mustHash(t, "same")
	if a == b {
		t.Fatal("two hashes of the same password are equal; salt is not random")
	}
}

func TestDefaultParams(t *testing.T) {
	p := DefaultParams()
	if p != (Params{Memory: 19456, Time: 2, Threads: 1}) {
		t.Fatalf("DefaultParams() = %+v", p)
	}
	h, err := HashPassword([]byte("demo-password"), p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("hash %q does not carry the default parameters", h)
	}
	if ok, err := VerifyPassword(h, []byte("demo-password")); err != nil || !ok {
		t.Fatalf("VerifyPassword = %v, %v", ok, err)
	}
}

func TestHashPasswordRejectsBadParams(t *testing.T) {
	for _, p := range []Params{
		{Memory: 64, Time: 0, Threads: 1},
		{Memory: 64, Time: 1, Threads: 0},
		{Memory: 7, Time: 1, Threads: 1},
		{Memory: 64, Time: 1, Threads: 9}, // < 8 KiB per thread
		{Memory: 1<<20 + 1, Time: 1, Threads: 1},
		{Memory: 64, Time: 11, Threads: 1},
		{Memory: 1024, Time: 1, Threads: 65},
	} {
		if _, err := HashPassword([]byte("x"), p); err == nil {
			t.Errorf("HashPassword(%+v) succeeded; want an error", p)
		}
	}
}

func TestVerifyPasswordMalformed(t *testing.T) {
	good := mustHash(t, "pw")
	m := phcRE.FindStringSubmatch(good)
	salt, key := m[4], m[5]
	build := func(head string) string { return head + "$" + salt + "$" + key }
	cases := map[string]string{
		"empty":              "",
		"plaintext":          "hunter2",
		"argon2i":            strings.Replace(good, "argon2id", "argon2i", 1),
		"bcrypt":             "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy",
		"no version":         "$argon2id$m=64,t=1,p=1$" + salt + "$" + key,
		"version 16":         build("$argon2id$v=16$m=64,t=1,p=1"),
		"param order":        build("$argon2id$v=19$t=1,m=64,p=1"),
		"missing param":      build("$argon2id$v=19$m=64,t=1"),
		"extra param":        build("$argon2id$v=19$m=64,t=1,p=1,k=2"),
		"leading zero":       build("$argon2id$v=19$m=064,t=1,p=1"),
		"sign":               build("$argon2id$v=19$m=+64,t=1,p=1"),
		"non-digit":          build("$argon2id$v=19$m=6x,t=1,p=1"),
		"huge number":        build("$argon2id$v=19$m=99999999999,t=1,p=1"),
		"memory over 1 GiB":  build("$argon2id$v=19$m=1048577,t=1,p=1"),
		"time over 10":       build("$argon2id$v=19$m=64,t=11,p=1"),
		"time zero":          build("$argon2id$v=19$m=64,t=0,p=1"),
		"threads zero":       build("$argon2id$v=19$m=64,t=1,p=0"),
		"threads over limit": build("$argon2id$v=19$m=65536,t=1,p=255"),
		"memory per thread":  build("$argon2id$v=19$m=8,t=1,p=2"),
		"padded salt":        "$argon2id$v=19$m=64,t=1,p=1$" + salt + "==$" + key,
		"urlsafe alphabet":   "$argon2id$v=19$m=64,t=1,p=1$" + strings.Repeat("_", 22) + "$" + key,
		"short salt":         "$argon2id$v=19$m=64,t=1,p=1$AAAA$" + key,
		"short key":          "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$AAAA",
		"missing key":        "$argon2id$v=19$m=64,t=1,p=1$" + salt,
		"trailing field":     good + "$x",
		"too long":           good + strings.Repeat("A", 300),
		// 22 base64 characters carry 132 bits for a 16-byte salt; the last
		// character's low 4 bits must be zero, and "B" sets one.
		"non-canonical bits": "$argon2id$v=19$m=64,t=1,p=1$" + salt[:21] + "B$" + key,
	}
	for name, h := range cases {
		t.Run(name, func(t *testing.T) {
			ok, err := VerifyPassword(h, []byte("pw"))
			if err == nil || ok {
				t.Fatalf("VerifyPassword = %v, %v; want false and an error", ok, err)
			}
			if !errors.Is(err, errMalformedHash) {
				t.Errorf("error %v does not wrap errMalformedHash", err)
			}
			if strings.Contains(err.Error(), "hunter2") || (len(h) > 20 && strings.Contains(err.Error(), h)) {
				t.Errorf("error %q quotes the hash", err)
			}
		})
	}
}

func TestParsePHCCanonical(t *testing.T) {
	h := mustHash(t, "pw")
	p, err := parsePHC(h)
	if err != nil {
		t.Fatal(err)
	}
	if p.String() != h {
		t.Fatalf("re-encoded %q, want %q", p.String(), h)
	}
}

func BenchmarkHashPassword(b *testing.B) {
	pw := []byte("correct horse battery staple")
	for b.Loop() {
		if _, err := HashPassword(pw, DefaultParams()); err != nil {
			b.Fatal(err)
		}
	}
}
