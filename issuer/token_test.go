package issuer

import (
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

func TestGrants(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	v := verifierFor(t, e.issuer, in.publishedKeys(t), time.Now)

	t.Run("password", func(t *testing.T) {
		r := in.login(t, "")
		if r.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("Cache-Control = %q", r.Header.Get("Cache-Control"))
		}
		if r.str("token_type") != "Bearer" || r.str("refresh_token") == "" || r.Body["expires_in"].(float64) != 600 {
			t.Errorf("response %v", r.Body)
		}
		c, err := v.Verify(r.str("access_token"))
		if err != nil {
			t.Fatal(err)
		}
		if c.Subject != "alice" || c.ClientID != "app" || c.Scope != "read write" || c.SessionID == "" || c.ID == "" || c.Expiry-c.IssuedAt != 600 {
			t.Errorf("claims %+v", c)
		}
	})
	t.Run("password scope intersected with client and user", func(t *testing.T) {
		r := in.post(t, "app", "app-secret", url.Values{"grant_type": {"password"}, "username": {"bob"}, "password": {"bob-pw"}, "scope": {"read write admin"}})
		if r.Status != 200 || r.str("scope") != "read" {
			t.Fatalf("%d %v", r.Status, r.Body)
		}
	})
	t.Run("client_credentials", func(t *testing.T) {
		r := in.post(t, "service", "service-secret", url.Values{"grant_type": {"client_credentials"}})
		if r.Status != 200 || r.str("refresh_token") != "" || r.str("scope") != "read" {
			t.Fatalf("%d %v", r.Status, r.Body)
		}
		c, err := v.Verify(r.str("access_token"))
		if err != nil {
			t.Fatal(err)
		}
		if c.Subject != "service" || c.SessionID != "" || len(c.Audience) != 2 {
			t.Errorf("claims %+v", c)
		}
	})
	t.Run("client authentication in the body", func(t *testing.T) {
		r := in.post(t, "", "", url.Values{"grant_type": {"client_credentials"}, "client_id": {"service"}, "client_secret": {"service-secret"}})
		if r.Status != 200 {
			t.Fatalf("%d %v", r.Status, r.Body)
		}
	})
	t.Run("refresh_token narrows, never widens", func(t *testing.T) {
		login := in.login(t, "read write")
		r := in.refresh(t, login.str("refresh_token"), "read")
		if r.Status != 200 || r.str("scope") != "read" || r.str("refresh_token") == login.str("refresh_token") {
			t.Fatalf("%d %v", r.Status, r.Body)
		}
		c, err := v.Verify(r.str("access_token"))
		if err != nil {
			t.Fatal(err)
		}
		first, _ := v.Verify(login.str("access_token"))
		if c.SessionID != first.SessionID || c.Scope != "read" {
			t.Errorf("refreshed claims %+v, first %+v", c, first)
		}
		// Back to the original scope is allowed (RFC 6749 §6): it was granted.
		r = in.refresh(t, r.str("refresh_token"), "read write")
		if r.Status != 200 || r.str("scope") != "read write" {
			t.Fatalf("%d %v", r.Status, r.Body)
		}
		narrow := in.login(t, "read")
		r = in.refresh(t, narrow.str("refresh_token"), "read write")
		if r.Status != 400 || r.str("error") != "invalid_scope" {
			t.Fatalf("widening: %d %v", r.Status, r.Body)
		}
	})
}

func TestTokenErrors(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	login := in.login(t, "")
	rt := login.str("refresh_token")

	raw := func(method, ctype, body string, basic ...string) tokenResult {
		req, _ := http.NewRequest(method, in.url+"/oauth2/token", strings.NewReader(body))
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		if len(basic) == 2 {
			req.SetBasicAuth(basic[0], basic[1])
		}
		return do(t, req)
	}
	form := "application/x-www-form-urlencoded"
	cases := []struct {
		name   string
		res    func() tokenResult
		status int
		code   string
	}{
		{"GET", func() tokenResult { return raw("GET", "", "") }, 405, "invalid_request"},
		{"JSON body", func() tokenResult {
			return raw("POST", "application/json", `{"grant_type":"client_credentials"}`, "app", "app-secret")
		}, 400, "invalid_request"},
		{"no content type", func() tokenResult { return raw("POST", "", "grant_type=client_credentials", "app", "app-secret") }, 400, "invalid_request"},
		{"malformed form", func() tokenResult { return raw("POST", form, "grant_type=%zz", "app", "app-secret") }, 400, "invalid_request"},
		{"oversized body", func() tokenResult {
			return raw("POST", form, "grant_type=client_credentials&x="+strings.Repeat("a", 70<<10), "app", "app-secret")
		}, 413, "invalid_request"},
		{"repeated parameter", func() tokenResult {
			return raw("POST", form, "grant_type=client_credentials&grant_type=password", "app", "app-secret")
		}, 400, "invalid_request"},
		{"no grant_type", func() tokenResult { return in.post(t, "app", "app-secret", url.Values{}) }, 400, "invalid_request"},
		{"unknown grant", func() tokenResult {
			return in.post(t, "app", "app-secret", url.Values{"grant_type": {"authorization_code"}})
		}, 400, "unsupported_grant_type"},
		{"no client authentication", func() tokenResult {
			return in.post(t, "", "", url.Values{"grant_type": {"client_credentials"}})
		}, 401, "invalid_client"},
		{"unknown client", func() tokenResult {
			return in.post(t, "nobody", "x", url.Values{"grant_type": {"client_credentials"}})
		}, 401, "invalid_client"},
		{"wrong client secret", func() tokenResult {
			return in.post(t, "app", "wrong", url.Values{"grant_type": {"client_credentials"}})
		}, 401, "invalid_client"},
		{"two client authentication methods", func() tokenResult {
			return in.post(t, "app", "app-secret", url.Values{"grant_type": {"client_credentials"}, "client_secret": {"app-secret"}})
		}, 400, "invalid_request"},
		{"grant not allowed for client", func() tokenResult {
			return in.post(t, "service", "service-secret", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}})
		}, 400, "unauthorized_client"},
		{"wrong password", func() tokenResult {
			return in.post(t, "other", "other-secret", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"nope"}})
		}, 400, "invalid_grant"},
		{"unknown user", func() tokenResult {
			return in.post(t, "other", "other-secret", url.Values{"grant_type": {"password"}, "username": {"mallory"}, "password": {"nope"}})
		}, 400, "invalid_grant"},
		{"missing password", func() tokenResult {
			return in.post(t, "app", "app-secret", url.Values{"grant_type": {"password"}, "username": {"alice"}})
		}, 400, "invalid_request"},
		{"scope not allowed", func() tokenResult {
			return in.post(t, "app", "app-secret", url.Values{"grant_type": {"client_credentials"}, "scope": {"tokenwarden:admin"}})
		}, 400, "invalid_scope"},
		{"missing refresh_token", func() tokenResult {
			return in.post(t, "app", "app-secret", url.Values{"grant_type": {"refresh_token"}})
		}, 400, "invalid_request"},
		{"malformed refresh_token", func() tokenResult { return in.refresh(t, "garbage", "") }, 400, "invalid_grant"},
		{"unknown refresh_token family", func() tokenResult {
			return in.refresh(t, "AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "")
		}, 400, "invalid_grant"},
		{"refresh_token of another client", func() tokenResult {
			return in.post(t, "other", "other-secret", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}})
		}, 400, "invalid_grant"},
		{"refresh widening scope", func() tokenResult { return in.refresh(t, rt, "read write delete") }, 400, "invalid_scope"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := c.res()
			if r.Status != c.status || r.str("error") != c.code {
				t.Fatalf("got %d %v, want %d %s", r.Status, r.Body, c.status, c.code)
			}
			if r.Header.Get("Cache-Control") != "no-store" {
				t.Errorf("Cache-Control %q", r.Header.Get("Cache-Control"))
			}
			if c.status == 401 && !strings.HasPrefix(r.Header.Get("WWW-Authenticate"), "Basic") {
				t.Errorf("401 without WWW-Authenticate: %v", r.Header)
			}
		})
	}
	// None of the refused requests may have consumed the refresh token.
	if r := in.refresh(t, rt, ""); r.Status != 200 {
		t.Fatalf("refresh token unusable after refused requests: %d %v", r.Status, r.Body)
	}
}

func TestRefreshRotationAndReuse(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	login := in.login(t, "")
	first := login.str("refresh_token")
	second := in.refresh(t, first, "")
	if second.Status != 200 {
		t.Fatalf("%d %v", second.Status, second.Body)
	}
	third := in.refresh(t, second.str("refresh_token"), "")
	if third.Status != 200 {
		t.Fatalf("%d %v", third.Status, third.Body)
	}
	// The first token again: reuse. The family dies, so the newest token
	// (possibly the attacker's copy) is dead too.
	if r := in.refresh(t, first, ""); r.Status != 400 || r.str("error") != "invalid_grant" {
		t.Fatalf("reuse: %d %v", r.Status, r.Body)
	}
	if r := in.refresh(t, third.str("refresh_token"), ""); r.Status != 400 || r.str("error") != "invalid_grant" {
		t.Fatalf("after reuse, newest token: %d %v", r.Status, r.Body)
	}
	if got := testutilCounter(t, in.metrics.refreshReuse); got != 1 {
		t.Errorf("reuse counter %v", got)
	}
	// Stored only as hashes: the bucket never holds the token itself.
	fid, _ := parseRefreshToken(first)
	entry, err := in.families.kv.Get(t.Context(), fid)
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{first, second.str("refresh_token"), third.str("refresh_token")} {
		secret := tok[strings.IndexByte(tok, '.')+1:]
		if strings.Contains(string(entry.Value()), secret) {
			t.Fatal("refresh token secret stored in KV")
		}
	}
}

func TestRefreshExpires(t *testing.T) {
	e := newEnv(t)
	clock := newFakeClock()
	in := e.start(WithClock(clock.Now))
	in.waitReady(t)
	login := in.login(t, "")
	clock.Advance(24*time.Hour + time.Second)
	if r := in.refresh(t, login.str("refresh_token"), ""); r.Status != 400 || r.str("error") != "invalid_grant" {
		t.Fatalf("expired refresh: %d %v", r.Status, r.Body)
	}
}

// TestConcurrentRefresh races two refreshes of one token through two
// replicas, 100 times: exactly one may win each time. The token was
// presented twice, so the family is revoked afterwards (reuse detection),
// and the winner's new refresh token is dead too.
func TestConcurrentRefresh(t *testing.T) {
	e := newEnv(t)
	a := e.start()
	b := e.start()
	a.waitReady(t)
	b.waitReady(t)
	for i := range 100 {
		rt := a.login(t, "").str("refresh_token")
		var wins atomic.Int32
		var winner atomic.Value
		var wg sync.WaitGroup
		for _, in := range []*instance{a, b} {
			wg.Go(func() {
				r := in.refresh(t, rt, "")
				switch {
				case r.Status == 200:
					wins.Add(1)
					winner.Store(r.str("refresh_token"))
				case r.str("error") != "invalid_grant":
					t.Errorf("round %d: loser got %d %v", i, r.Status, r.Body)
				}
			})
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("round %d: %d winners", i, wins.Load())
		}
		if r := a.refresh(t, winner.Load().(string), ""); r.Status != 400 {
			t.Fatalf("round %d: family survived a double presentation: %d", i, r.Status)
		}
	}
}

func TestLoginRateLimit(t *testing.T) {
	e := newEnv(t)
	e.cfg.RateLimit.FailuresPerUser = 3
	clock := newFakeClock()
	in := e.start(WithClock(clock.Now))
	in.waitReady(t)
	bad := url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"wrong"}}
	for i := range 3 {
		if r := in.post(t, "app", "app-secret", bad); r.Status != 400 {
			t.Fatalf("attempt %d: %d %v", i, r.Status, r.Body)
		}
	}
	r := in.post(t, "app", "app-secret", bad)
	if r.Status != 429 || r.Header.Get("Retry-After") == "" {
		t.Fatalf("4th failure: %d %v %v", r.Status, r.Body, r.Header)
	}
	// Even the right password is refused while the account is limited:
	// otherwise the limit would be an oracle.
	if r := in.post(t, "app", "app-secret", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}}); r.Status != 429 {
		t.Fatalf("right password while limited: %d", r.Status)
	}
	// Another user is unaffected.
	if r := in.post(t, "app", "app-secret", url.Values{"grant_type": {"password"}, "username": {"bob"}, "password": {"bob-pw"}}); r.Status != 200 {
		t.Fatalf("other user: %d %v", r.Status, r.Body)
	}
	clock.Advance(time.Minute)
	if r := in.post(t, "app", "app-secret", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}}); r.Status != 200 {
		t.Fatalf("after a minute: %d %v", r.Status, r.Body)
	}
}

func TestAdminAPIGuard(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	get := func(tok string) tokenResult {
		req, _ := http.NewRequest("GET", in.url+"/admin/v1/keys", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		return do(t, req)
	}
	if r := get(""); r.Status != 401 || r.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("no token: %d", r.Status)
	}
	if r := get("not.a.token"); r.Status != 401 {
		t.Errorf("garbage token: %d", r.Status)
	}
	// A token of this issuer without the admin scope, for the issuer's own
	// audience.
	self := in.post(t, "service", "service-secret", url.Values{"grant_type": {"client_credentials"}})
	if r := get(self.str("access_token")); r.Status != 401 {
		t.Errorf("token for another audience: %d %v", r.Status, r.Body)
	}
	r := get(in.adminToken(t))
	if r.Status != 200 {
		t.Fatalf("admin: %d %v", r.Status, r.Body)
	}
	keys := r.Body["keys"].([]any)
	if len(keys) != 2 {
		t.Errorf("keys %v", keys)
	}
}

func TestNoScopeAdminForbidden(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	// Sign a token for the issuer audience without the admin scope using the
	// ring itself: no client has such a grant in the test files.
	st := in.keys.current()
	now := time.Now()
	tok, err := st.ring.Active().Sign(&jwks.Claims{Issuer: e.issuer, Subject: "x", Audience: jwks.Audience{e.issuer},
		Expiry: now.Add(time.Minute).Unix(), IssuedAt: now.Unix(), ID: "j", ClientID: "x", Scope: "read"})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", in.url+"/admin/v1/keys/rotate", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	if r := do(t, req); r.Status != 403 || r.str("error") != "insufficient_scope" {
		t.Fatalf("%d %v", r.Status, r.Body)
	}
}

// TestRevocationEndsRefreshForGood: a sub revocation leaves a durable deny
// record, so the user's refresh tokens from before stay dead after the
// event has expired (events live only as long as access tokens), on every
// replica.
func TestRevocationEndsRefreshForGood(t *testing.T) {
	e := newEnv(t)
	clock := newFakeClock()
	in := e.start(WithClock(clock.Now))
	in.waitReady(t)
	login := in.login(t, "")
	bob := in.post(t, "app", "app-secret", url.Values{"grant_type": {"password"}, "username": {"bob"}, "password": {"bob-pw"}})
	if r := in.adminDo(t, in.adminToken(t), "POST", "/admin/v1/revocations", `{"kind":"sub","value":"alice"}`); r.Status != 201 {
		t.Fatalf("revoke: %d %v", r.Status, r.Body)
	}
	// A replica started later reads the deny record too.
	other := e.start(WithClock(clock.Now))
	other.waitReady(t)
	// An hour later the event is gone; the refresh token stays dead, bob's
	// lives on.
	clock.Advance(time.Hour)
	in.revocations.GC(clock.Now())
	if in.revocations.Len() != 0 {
		t.Fatalf("%d events left after GC", in.revocations.Len())
	}
	other.revocations.GC(clock.Now())
	if r := other.refresh(t, login.str("refresh_token"), ""); r.Status != 400 {
		t.Fatalf("refresh after the event expired: %d %v", r.Status, r.Body)
	}
	if r := in.refresh(t, bob.str("refresh_token"), ""); r.Status != 200 {
		t.Fatalf("bob's refresh: %d %v", r.Status, r.Body)
	}
}

// TestRefreshOnALaggingReplica: a replica whose copy of the deny records
// has not yet seen another replica's sub revocation (its watch is behind:
// the record and the event are taken out of its memory here) refuses the
// refresh all the same, from the bucket. It used to mint one more access
// token, issued after the event's issued_before and so valid on every
// sidecar for its whole lifetime.
func TestRefreshOnALaggingReplica(t *testing.T) {
	_, _, a, b := twoReplicas(t)
	login := b.login(t, "")
	if r := a.adminDo(t, a.adminToken(t), "POST", "/admin/v1/revocations", `{"kind":"sub","value":"alice"}`); r.Status != 201 {
		t.Fatalf("revoke: %d %v", r.Status, r.Body)
	}
	key := denyKey(revocation.KindSub, "alice")
	waitFor(t, "b's watch has the deny record", func() bool {
		b.denied.mu.RLock()
		defer b.denied.mu.RUnlock()
		_, ok := b.denied.m[key]
		return ok
	})
	waitFor(t, "b's set has the event", func() bool { return b.revocations.Len() == 1 })
	// Now b lags: neither is in its memory.
	b.denied.mu.Lock()
	delete(b.denied.m, key)
	b.denied.mu.Unlock()
	b.revocations.GC(time.Now().Add(24 * time.Hour))
	if revoked, _ := b.familyRevoked(&family{Subject: "alice", CreatedAt: time.Now().Add(-time.Minute)}); revoked {
		t.Fatal("b still knows of the revocation: the case is not set up")
	}
	if r := b.refresh(t, login.str("refresh_token"), ""); r.Status != 400 || r.str("error") != "invalid_grant" {
		t.Fatalf("refresh on the lagging replica: %d %v", r.Status, r.Body)
	}
}

// TestLoginRateLimitConcurrent: guesses sent at once are counted as they
// start, so a burst cannot get more than the limit evaluated.
func TestLoginRateLimitConcurrent(t *testing.T) {
	e := newEnv(t)
	e.cfg.RateLimit.FailuresPerUser = 3
	clock := newFakeClock()
	in := e.start(WithClock(clock.Now))
	in.waitReady(t)
	var evaluated, limited atomic.Int32
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			r := in.post(t, "app", "app-secret", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"guess"}})
			switch r.Status {
			case 400:
				evaluated.Add(1)
			case 429:
				limited.Add(1)
			default:
				t.Errorf("status %d", r.Status)
			}
		})
	}
	wg.Wait()
	if evaluated.Load() > 3 || evaluated.Load()+limited.Load() != 50 {
		t.Fatalf("%d guesses evaluated, %d limited; want at most 3 evaluated", evaluated.Load(), limited.Load())
	}
}

// TestRepeatedRevokeIsIdempotent: revoking the same refresh or access token
// again publishes nothing more, so a client cannot flood the sidecars.
func TestRepeatedRevokeIsIdempotent(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	login := in.login(t, "")
	revoke := func(tok string) {
		t.Helper()
		req, _ := http.NewRequest("POST", in.url+"/oauth2/revoke", strings.NewReader(url.Values{"token": {tok}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("app", "app-secret")
		if r := do(t, req); r.Status != 200 {
			t.Fatalf("revoke: %d %v", r.Status, r.Body)
		}
	}
	access := in.login(t, "").str("access_token")
	for range 20 {
		revoke(login.str("refresh_token"))
		revoke(access)
	}
	for kind, want := range map[string]float64{"sid": 1, "jti": 1} {
		if got := testutilCounter(t, in.metrics.revocationsPublished.WithLabelValues(kind)); got != want {
			t.Errorf("%s events published: %v, want %v", kind, got, want)
		}
	}
}

// TestDenyRecordReadFromTheLeader: readLeader, the stream API read that a
// refresh makes instead of a direct get, tells a record from no record,
// and a deleted or purged key from a written one.
func TestDenyRecordReadFromTheLeader(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	kv := in.denied.kv
	ctx := t.Context()
	for _, step := range []struct {
		name   string
		change func() error
		want   string // "" for no value
	}{
		{"never written", func() error { return nil }, ""},
		{"written", func() error { _, err := kv.Put(ctx, "sub.YQ", []byte("42")); return err }, "42"},
		{"written again", func() error { _, err := kv.Put(ctx, "sub.YQ", []byte("43")); return err }, "43"},
		{"deleted", func() error { return kv.Delete(ctx, "sub.YQ") }, ""},
		{"written after the delete", func() error { _, err := kv.Put(ctx, "sub.YQ", []byte("44")); return err }, "44"},
		{"purged", func() error { return kv.Purge(ctx, "sub.YQ") }, ""},
	} {
		if err := step.change(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		v, ok, err := in.denied.readLeader(ctx, "sub.YQ")
		if err != nil || ok != (step.want != "") || string(v) != step.want {
			t.Errorf("%s: %q, %v, %v; want %q", step.name, v, ok, err, step.want)
		}
	}
}
