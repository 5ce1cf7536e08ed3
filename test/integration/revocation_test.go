package integration

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenwarden/tokenwarden/internal/embeddednats"
	"github.com/tokenwarden/tokenwarden/issuer"
	"github.com/tokenwarden/tokenwarden/revocation"
)

func (s *system) admin(t testing.TB) string {
	t.Helper()
	return s.token(t, "admin", "admin-secret", url.Values{"grant_type": {"client_credentials"}, "scope": {issuer.AdminScope}})["access_token"].(string)
}

// revoke calls POST /admin/v1/revocations and returns the status and body.
func (s *system) revoke(t testing.TB, admin string, body map[string]any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", s.issuerURL+"/admin/v1/revocations", bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

// waitRejected polls a sidecar until it rejects tok (the revocation has
// arrived), failing after a bound.
func waitRejected(t testing.TB, sc, tok string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for verify(t, sc, tok).StatusCode == 200 {
		if time.Now().After(deadline) {
			t.Fatal("revoked token still accepted after 10s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func claimsOf(t testing.TB, sc, tok string) map[string]any {
	t.Helper()
	resp, err := http.PostForm(sc+"/introspect", url.Values{"token": {tok}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return m
}

// nextSecond waits until the wall clock enters a new second: sub, client
// and all revocations cover tokens with iat <= issued_before, in whole
// seconds, so a login in the same second as the revocation is covered too.
func nextSecond() {
	now := time.Now()
	time.Sleep(now.Truncate(time.Second).Add(time.Second).Sub(now) + 10*time.Millisecond)
}

func TestEveryKindOfRevocation(t *testing.T) {
	s := newSystem(t, nil)
	scs := []string{s.sidecar(nil), s.sidecar(nil)}
	admin := s.admin(t)
	svc := func() string {
		return s.token(t, "service", "service-secret", url.Values{"grant_type": {"client_credentials"}})["access_token"].(string)
	}

	t.Run("jti", func(t *testing.T) {
		a, b := s.login(t), s.login(t)
		code, ev := s.revoke(t, admin, map[string]any{"kind": "jti", "value": claimsOf(t, scs[0], a)["jti"], "reason": "test"})
		if code != 201 || ev["id"] == "" || ev["sequence"] == nil {
			t.Fatalf("%d %v", code, ev)
		}
		for _, sc := range scs {
			waitRejected(t, sc, a)
			if verify(t, sc, b).StatusCode != 200 {
				t.Fatal("another token of the same user rejected")
			}
		}
	})
	t.Run("sid", func(t *testing.T) {
		a := s.login(t)
		code, _ := s.revoke(t, admin, map[string]any{"kind": "sid", "value": claimsOf(t, scs[0], a)["sid"]})
		if code != 201 {
			t.Fatal(code)
		}
		for _, sc := range scs {
			waitRejected(t, sc, a)
		}
	})
	t.Run("sub, then log in again", func(t *testing.T) {
		a := s.token(t, "app", "app-secret", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}})
		bob := s.token(t, "app", "app-secret", url.Values{"grant_type": {"password"}, "username": {"bob"}, "password": {"bob-pw"}})["access_token"].(string)
		code, _ := s.revoke(t, admin, map[string]any{"kind": "sub", "value": "alice"})
		if code != 201 {
			t.Fatal(code)
		}
		for _, sc := range scs {
			waitRejected(t, sc, a["access_token"].(string))
			if verify(t, sc, bob).StatusCode != 200 {
				t.Fatal("bob rejected by alice's revocation")
			}
		}
		// Her refresh token, from before the revocation, is dead too.
		r := postForm(t, s.issuerURL+"/oauth2/token", "app", "app-secret", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {a["refresh_token"].(string)}})
		if r.StatusCode != 400 {
			t.Fatalf("refresh after sub revocation: %d", r.StatusCode)
		}
		nextSecond()
		fresh := s.login(t)
		for _, sc := range scs {
			if resp := verify(t, sc, fresh); resp.StatusCode != 200 {
				t.Fatalf("new login after revocation rejected: %d", resp.StatusCode)
			}
		}
	})
	t.Run("client", func(t *testing.T) {
		a, user := svc(), s.login(t)
		code, _ := s.revoke(t, admin, map[string]any{"kind": "client", "value": "service"})
		if code != 201 {
			t.Fatal(code)
		}
		for _, sc := range scs {
			waitRejected(t, sc, a)
			if verify(t, sc, user).StatusCode != 200 {
				t.Fatal("other client's token rejected")
			}
		}
		nextSecond()
		if verify(t, scs[0], svc()).StatusCode != 200 {
			t.Fatal("new client token after revocation rejected")
		}
	})
	t.Run("all", func(t *testing.T) {
		a, b := s.login(t), svc()
		code, _ := s.revoke(t, admin, map[string]any{"kind": "all", "issued_before": time.Now().UTC().Format(time.RFC3339)})
		if code != 201 {
			t.Fatal(code)
		}
		for _, sc := range scs {
			waitRejected(t, sc, a)
			waitRejected(t, sc, b)
		}
		// Revoking "all" revoked the admin token too.
		if code, _ := s.revoke(t, admin, map[string]any{"kind": "jti", "value": "x"}); code != 401 {
			t.Fatalf("revoked admin token still accepted: %d", code)
		}
		nextSecond()
		admin = s.admin(t)
		if verify(t, scs[1], s.login(t)).StatusCode != 200 {
			t.Fatal("login after revoke-all rejected")
		}
	})
	t.Run("bad requests", func(t *testing.T) {
		for _, body := range []map[string]any{
			{"kind": "everything", "value": "x"},
			{"kind": "sub"},
			{"kind": "all", "value": "x"},
			{"kind": "sub", "value": "alice", "issued_before": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)},
			{"kind": "sub", "value": "alice", "issued_before": "yesterday"},
			{"kind": "sub", "value": "alice", "unknown": 1},
			{"kind": "sub", "value": "alice", "issued_before": time.Now().Add(-48 * time.Hour).UTC().Format(time.RFC3339)},
		} {
			if code, m := s.revoke(t, admin, body); code != 400 || m["error"] != "invalid_request" {
				t.Errorf("%v: %d %v", body, code, m)
			}
		}
	})
	t.Run("list", func(t *testing.T) {
		req, _ := http.NewRequest("GET", s.issuerURL+"/admin/v1/revocations", nil)
		req.Header.Set("Authorization", "Bearer "+admin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		var m struct {
			Revocations []revocation.Event `json:"revocations"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&m)
		kinds := map[revocation.Kind]bool{}
		for _, e := range m.Revocations {
			kinds[e.Kind] = true
		}
		if len(kinds) != 5 {
			t.Fatalf("listed kinds %v", kinds)
		}
	})
}

func postForm(t testing.TB, u, client, secret string, form url.Values) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(client, secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp
}

// TestLogoutAndTokenRevocation: RFC 7009 at /oauth2/revoke.
func TestLogoutAndTokenRevocation(t *testing.T) {
	s := newSystem(t, nil)
	sc := s.sidecar(nil)
	login := s.token(t, "app", "app-secret", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}})
	access, refresh := login["access_token"].(string), login["refresh_token"].(string)
	other := s.login(t) // another session of the same user

	// Another client cannot log alice out.
	if r := postForm(t, s.issuerURL+"/oauth2/revoke", "other", "other-secret", url.Values{"token": {refresh}}); r.StatusCode != 200 {
		t.Fatalf("foreign revoke: %d", r.StatusCode)
	}
	time.Sleep(50 * time.Millisecond)
	if verify(t, sc, access).StatusCode != 200 {
		t.Fatal("another client's revoke request logged alice out")
	}
	// Logout: the refresh token with its own client.
	if r := postForm(t, s.issuerURL+"/oauth2/revoke", "app", "app-secret", url.Values{"token": {refresh}, "token_type_hint": {"refresh_token"}}); r.StatusCode != 200 {
		t.Fatalf("logout: %d", r.StatusCode)
	}
	waitRejected(t, sc, access)
	if verify(t, sc, other).StatusCode != 200 {
		t.Fatal("logout of one session ended another")
	}
	if r := postForm(t, s.issuerURL+"/oauth2/token", "app", "app-secret", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}}); r.StatusCode != 400 {
		t.Fatalf("refresh after logout: %d", r.StatusCode)
	}
	// An access token, by jti.
	if r := postForm(t, s.issuerURL+"/oauth2/revoke", "app", "app-secret", url.Values{"token": {other}}); r.StatusCode != 200 {
		t.Fatalf("access token revoke: %d", r.StatusCode)
	}
	waitRejected(t, sc, other)
	// Garbage and unknown tokens: 200, nothing happens.
	for _, tok := range []string{"garbage", "AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"} {
		if r := postForm(t, s.issuerURL+"/oauth2/revoke", "app", "app-secret", url.Values{"token": {tok}}); r.StatusCode != 200 {
			t.Fatalf("revoke %q: %d", tok, r.StatusCode)
		}
	}
	if r := postForm(t, s.issuerURL+"/oauth2/revoke", "app", "wrong", url.Values{"token": {"x"}}); r.StatusCode != 401 {
		t.Fatalf("bad client: %d", r.StatusCode)
	}
	if r := postForm(t, s.issuerURL+"/oauth2/revoke", "app", "app-secret", url.Values{}); r.StatusCode != 400 {
		t.Fatalf("no token: %d", r.StatusCode)
	}
}

// TestRefreshReuseRevokesSession: reuse detection ends the session's access
// tokens at the sidecars too.
func TestRefreshReuseRevokesSession(t *testing.T) {
	s := newSystem(t, nil)
	sc := s.sidecar(nil)
	login := s.token(t, "app", "app-secret", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}})
	first := login["refresh_token"].(string)
	next := s.token(t, "app", "app-secret", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {first}})
	if r := postForm(t, s.issuerURL+"/oauth2/token", "app", "app-secret", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {first}}); r.StatusCode != 400 {
		t.Fatalf("reuse: %d", r.StatusCode)
	}
	waitRejected(t, sc, login["access_token"].(string))
	waitRejected(t, sc, next["access_token"].(string))
}

// TestForgedEventIgnored publishes an event signed by another key straight
// onto the stream: it changes nothing and is counted.
func TestForgedEventIgnored(t *testing.T) {
	s := newSystem(t, nil)
	sc := s.sidecar(nil)
	tok := s.login(t)
	_, evil, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Now()
	e, err := revocation.NewEvent(revocation.KindSub, "alice", now, now.Add(time.Hour), "forged", now)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := revocation.Sign(e, evil)
	nc, err := nats.Connect(s.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, msg := range [][]byte{data, []byte("not even a JWS")} {
		if err := nc.Publish(revocation.Subject("tokenwarden", revocation.KindSub), msg); err != nil {
			t.Fatal(err)
		}
	}
	_ = nc.Flush()
	// Counted when the sidecar's next probe reads them from the stream
	// (every quarter of revocation_max_staleness, jittered: up to about
	// 19 s by default); the live subscription drops them unread.
	deadline := time.Now().Add(45 * time.Second)
	for !strings.Contains(scrapeMetrics(t, sc), `tokenwarden_revocation_events_dropped_total{reason="forged"} 2`) {
		if time.Now().After(deadline) {
			t.Fatalf("forged events not counted:\n%s", scrapeMetrics(t, sc))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if verify(t, sc, tok).StatusCode != 200 {
		t.Fatal("forged event revoked a token")
	}
}

func scrapeMetrics(t testing.TB, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestNATSStopLosesNothing: NATS stops mid-test. Sidecars keep verifying
// and keep their events; the admin API answers 503; after NATS returns,
// new revocations reach every sidecar, and a sidecar that was down through
// it all catches up on everything before it reports ready.
func TestNATSStopLosesNothing(t *testing.T) {
	s := newSystem(t, nil)
	sc1 := s.sidecar(nil)
	admin := s.admin(t)
	before := s.login(t)
	if code, _ := s.revoke(t, admin, map[string]any{"kind": "jti", "value": claimsOf(t, sc1, before)["jti"]}); code != 201 {
		t.Fatal(code)
	}
	waitRejected(t, sc1, before)
	valid := s.login(t)

	addr, store := s.nats.Addr().String(), s.nats.JetStreamConfig().StoreDir
	s.nats.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, m := s.revoke(t, admin, map[string]any{"kind": "sub", "value": "bob"})
		if code == 503 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("admin API with NATS down: %d %v", code, m)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if verify(t, sc1, valid).StatusCode != 200 {
		t.Fatal("valid token rejected during the outage")
	}
	if verify(t, sc1, before).StatusCode != 401 {
		t.Fatal("revoked token accepted during the outage: the event was lost")
	}

	ns, err := embeddednats.Start(embeddednats.Config{Addr: addr, StoreDir: store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Stop)
	waitOK(t, s.issuerURL+"/readyz")
	after := s.login(t)
	var code int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if code, _ = s.revoke(t, admin, map[string]any{"kind": "jti", "value": claimsOf(t, sc1, after)["jti"]}); code == 201 {
			break
		}
	}
	if code != 201 {
		t.Fatalf("revoke after NATS returned: %d", code)
	}
	waitRejected(t, sc1, after)
	// A sidecar started now replays both events before it is ready.
	sc2 := s.sidecar(nil)
	for _, tok := range []string{before, after} {
		if verify(t, sc2, tok).StatusCode != 401 {
			t.Fatal("late sidecar missed an event")
		}
	}
	if verify(t, sc2, valid).StatusCode != 200 {
		t.Fatal("late sidecar rejects a valid token")
	}
}
