package directory

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fixture parses a directory with enabled and disabled users and clients.
func fixture(t testing.TB) *Directory {
	t.Helper()
	users := fmt.Sprintf(`users:
  - username: demo
    password_hash: %q
  - username: gone
    password_hash: %q
    disabled: true
`, mustHash(t, "demo-password"), mustHash(t, "gone-password"))
	clients := fmt.Sprintf(`clients:
  - id: demo-app
    secret_hash: %q
    grants: [client_credentials]
  - id: old-app
    secret_hash: %q
    grants: [client_credentials]
    disabled: true
`, mustHash(t, "demo-secret"), mustHash(t, "old-secret"))
	d, err := Parse([]byte(users), []byte(clients))
	if err != nil {
		t.Fatal(err)
	}
	// Keep the dummy cheap too; the default-cost dummy is covered by
	// TestAuthenticateUnknownUsesDefaultParams.
	d.shared.dummyParams = testParams
	return d
}

func TestAuthenticateUser(t *testing.T) {
	d := fixture(t)
	tests := []struct {
		name, user, password string
		ok                   bool
	}{
		{"correct", "demo", "demo-password", true},
		{"wrong password", "demo", "demo-passwore", false},
		{"empty password", "demo", "", false},
		{"unknown user", "nobody", "demo-password", false},
		{"empty username", "", "", false},
		{"disabled with correct password", "gone", "gone-password", false},
		{"disabled with wrong password", "gone", "x", false},
		{"case matters", "Demo", "demo-password", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := d.shared.argonCalls.Load()
			u, err := d.AuthenticateUser(tt.user, tt.password)
			if calls := d.shared.argonCalls.Load() - before; calls != 1 {
				t.Errorf("%d argon2id verifications; want exactly 1 whatever the outcome", calls)
			}
			if tt.ok {
				if err != nil || u == nil || u.Username != tt.user {
					t.Fatalf("AuthenticateUser = %+v, %v; want the user", u, err)
				}
				return
			}
			if u != nil || err != ErrInvalidCredentials { //nolint:errorlint // exactly the sentinel, nothing more revealing
				t.Fatalf("AuthenticateUser = %+v, %v; want nil, ErrInvalidCredentials", u, err)
			}
		})
	}
}

func TestAuthenticateUserNotCached(t *testing.T) {
	d := fixture(t)
	for range 3 {
		if _, err := d.AuthenticateUser("demo", "demo-password"); err != nil {
			t.Fatal(err)
		}
	}
	if n := d.shared.argonCalls.Load(); n != 3 {
		t.Fatalf("%d verifications for 3 logins; user passwords must not be cached", n)
	}
}

func TestAuthenticateUnknownUsesDefaultParams(t *testing.T) {
	d, err := Parse(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.AuthenticateUser("nobody", "pw"); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatalf("AuthenticateUser = %v", err)
	}
	if p := d.shared.dummyHash().params; p != DefaultParams() {
		t.Fatalf("dummy hash params %+v, want DefaultParams", p)
	}
	if d.shared.argonCalls.Load() != 1 {
		t.Fatal("unknown user did not cost an argon2id verification")
	}
}

func TestAuthenticateClient(t *testing.T) {
	tests := []struct {
		name, id, secret string
		ok               bool
	}{
		{"correct", "demo-app", "demo-secret", true},
		{"wrong secret", "demo-app", "demo-secre", false},
		{"secret with NUL", "demo-app", "demo-secret\x00", false},
		{"unknown client", "nobody", "demo-secret", false},
		{"empty id", "", "", false},
		{"disabled with correct secret", "old-app", "old-secret", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := fixture(t) // fresh cache for each case
			c, err := d.AuthenticateClient(tt.id, tt.secret)
			if calls := d.shared.argonCalls.Load(); calls != 1 {
				t.Errorf("%d argon2id verifications; want exactly 1 on a cold cache", calls)
			}
			if tt.ok {
				if err != nil || c == nil || c.ID != tt.id {
					t.Fatalf("AuthenticateClient = %+v, %v; want the client", c, err)
				}
				return
			}
			if c != nil || err != ErrInvalidCredentials { //nolint:errorlint // exactly the sentinel
				t.Fatalf("AuthenticateClient = %+v, %v; want nil, ErrInvalidCredentials", c, err)
			}
		})
	}
}

func TestClientCacheHitSkipsArgon2(t *testing.T) {
	d := fixture(t)
	for i := range 5 {
		if _, err := d.AuthenticateClient("demo-app", "demo-secret"); err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	if n := d.shared.argonCalls.Load(); n != 1 {
		t.Fatalf("%d argon2id verifications for 5 authentications; want 1 (then cache hits)", n)
	}
	// A wrong secret is not helped by the cached right one, and failures
	// are never cached: each costs argon2id.
	for range 3 {
		if _, err := d.AuthenticateClient("demo-app", "guess"); !errors.Is(err, ErrInvalidCredentials) {
			t.Fatalf("wrong secret: %v", err)
		}
	}
	if n := d.shared.argonCalls.Load(); n != 4 {
		t.Fatalf("%d verifications after 3 failures; want 4", n)
	}
	if n := d.shared.cache.len(); n != 1 {
		t.Fatalf("cache holds %d entries; want 1 (failures are not cached)", n)
	}
}

func TestClientCacheChangedSecretHash(t *testing.T) {
	d1 := fixture(t)
	if _, err := d1.AuthenticateClient("demo-app", "demo-secret"); err != nil {
		t.Fatal(err)
	}
	reparse := func(secret string) *Directory {
		t.Helper()
		clients := fmt.Sprintf("clients:\n  - id: demo-app\n    secret_hash: %q\n    grants: [client_credentials]\n", mustHash(t, secret))
		d, err := parse(nil, []byte(clients), "users.yaml", "clients.yaml", d1.shared) // as a Watcher reload does
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	calls := func() uint64 { return d1.shared.argonCalls.Load() }

	// Rotated secret: the old one must stop working at once.
	d2 := reparse("new-secret")
	if _, err := d2.AuthenticateClient("demo-app", "demo-secret"); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatalf("old secret after rotation: %v; want ErrInvalidCredentials", err)
	}
	if calls() != 2 {
		t.Fatalf("old secret after rotation was answered from the cache (%d calls)", calls())
	}
	if _, err := d2.AuthenticateClient("demo-app", "new-secret"); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.AuthenticateClient("demo-app", "new-secret"); err != nil {
		t.Fatal(err)
	}
	if calls() != 3 {
		t.Fatalf("%d calls; want the new secret verified once, then cached", calls())
	}

	// Same secret, re-hashed (new salt): a different key, so verified again.
	d3 := reparse("new-secret")
	if _, err := d3.AuthenticateClient("demo-app", "new-secret"); err != nil {
		t.Fatal(err)
	}
	if calls() != 4 {
		t.Fatalf("%d calls; a re-hashed secret must miss the cache", calls())
	}
}

func TestClientCacheDisabledByReload(t *testing.T) {
	d1 := fixture(t)
	c, _ := d1.Client("demo-app")
	if _, err := d1.AuthenticateClient("demo-app", "demo-secret"); err != nil {
		t.Fatal(err)
	}
	clients := fmt.Sprintf("clients:\n  - id: demo-app\n    secret_hash: %q\n    grants: [client_credentials]\n    disabled: true\n", c.SecretHash)
	d2, err := parse(nil, []byte(clients), "users.yaml", "clients.yaml", d1.shared)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d2.AuthenticateClient("demo-app", "demo-secret"); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatalf("disabled client with a cached secret: %v; want ErrInvalidCredentials", err)
	}
}

func TestClientCacheExpiry(t *testing.T) {
	d := fixture(t)
	var mu sync.Mutex
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	d.shared.cache.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(dt time.Duration) { mu.Lock(); now = now.Add(dt); mu.Unlock() }

	auth := func() {
		t.Helper()
		if _, err := d.AuthenticateClient("demo-app", "demo-secret"); err != nil {
			t.Fatal(err)
		}
	}
	auth()
	advance(defaultCacheTTL - time.Second)
	auth() // hit: does not extend the expiry
	if n := d.shared.argonCalls.Load(); n != 1 {
		t.Fatalf("%d calls before expiry; want 1", n)
	}
	advance(time.Second)
	auth()
	if n := d.shared.argonCalls.Load(); n != 2 {
		t.Fatalf("%d calls after expiry; want 2", n)
	}
}

func TestVerifyCacheBounded(t *testing.T) {
	c := newVerifyCache(2, time.Minute, time.Now)
	k := func(b byte) (k [32]byte) { k[0] = b; return k }
	c.add(k(1))
	c.add(k(2))
	c.hit(k(1)) // 1 is now the most recently used
	c.add(k(3)) // evicts 2
	if c.len() != 2 {
		t.Fatalf("len %d; want 2", c.len())
	}
	if !c.hit(k(1)) || c.hit(k(2)) || !c.hit(k(3)) {
		t.Fatal("want 1 and 3 kept, 2 evicted")
	}
	c.add(k(3)) // re-adding refreshes, does not duplicate
	if c.len() != 2 {
		t.Fatalf("len %d after re-adding; want 2", c.len())
	}
}

func TestCacheKeyUnambiguous(t *testing.T) {
	s := newShared()
	// Ids and PHC hashes never contain NUL (both validated at load), so
	// only the secret may; these would collide without the separators.
	if s.cacheKey("ab", "c", "$h") == s.cacheKey("a", "bc", "$h") ||
		s.cacheKey("a", "b$", "h") == s.cacheKey("a", "b", "$h") ||
		s.cacheKey("a", "b\x00", "$h") == s.cacheKey("a", "b", "$h") {
		t.Fatal("cache keys collide across field boundaries")
	}
	if s.cacheKey("app", "s", "h") == newShared().cacheKey("app", "s", "h") {
		t.Fatal("two directories share an HMAC key")
	}
}

func TestAuthenticateConcurrent(t *testing.T) {
	d := fixture(t)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			for range 20 {
				secret := "demo-secret"
				if i%4 == 0 {
					secret = "wrong"
				}
				_, err := d.AuthenticateClient("demo-app", secret)
				if (err == nil) == (i%4 == 0) {
					t.Errorf("goroutine %d: unexpected result %v", i, err)
				}
				if _, err := d.AuthenticateUser("demo", "demo-password"); err != nil {
					t.Errorf("user: %v", err)
				}
			}
		})
	}
	wg.Wait()
}

func BenchmarkAuthenticateClientCached(b *testing.B) {
	clients := fmt.Sprintf("clients:\n  - id: demo-app\n    secret_hash: %q\n    grants: [client_credentials]\n", mustHash(b, "demo-secret"))
	d, err := Parse(nil, []byte(clients))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := d.AuthenticateClient("demo-app", "demo-secret"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := d.AuthenticateClient("demo-app", "demo-secret"); err != nil {
				b.Fatal(err)
			}
		}
	})
	if n := d.shared.argonCalls.Load(); n != 1 {
		b.Fatalf("%d argon2id calls; the benchmark did not hit the cache", n)
	}
}

func TestClientIDMayNotBeAUsername(t *testing.T) {
	h, err := HashPassword([]byte("x"), Params{Memory: 64, Time: 1, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	users := []byte("users:\n  - username: svc\n    password_hash: \"" + h + "\"\n")
	clients := []byte("clients:\n  - id: svc\n    secret_hash: \"" + h + "\"\n    grants: [client_credentials]\n")
	if _, err := Parse(users, clients); err == nil || !strings.Contains(err.Error(), "also a username") {
		t.Fatalf("overlap accepted: %v", err)
	}
}
