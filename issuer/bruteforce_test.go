package issuer

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// Online guessing against a real issuer over real HTTP, with the default
// limits and the injectable clock. The figures asserted here are the ones
// docs/security.md (Brute force) states: per username 5 failed logins,
// then one more every 12 s; per client IP 20 failures (logins and client
// authentications), then one more every 3 s; 429 slow_down with
// Retry-After when a bucket is empty, before any password hashing.

// fromIP is an HTTP client whose connections come from ip (any 127/8
// address works on loopback), so one test can be several clients.
func fromIP(t *testing.T, ip string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	tr := &http.Transport{DialContext: d.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

type bruteForce struct {
	in    *instance
	clock *fakeClock
}

func newBruteForce(t *testing.T) *bruteForce {
	t.Helper()
	e := newEnv(t)
	def := DefaultConfig().RateLimit
	if def.FailuresPerUser != 5 || def.FailuresPerIP != 20 {
		t.Fatalf("default limits %+v: update this test and docs/security.md together", def)
	}
	clock := newFakeClock()
	in := e.start(WithClock(clock.Now))
	in.waitReady(t)
	return &bruteForce{in: in, clock: clock}
}

// send posts form to path as client app (or with the given client
// credentials) from the client c.
func (b *bruteForce) send(t *testing.T, c *http.Client, path, clientID, secret string, form url.Values) tokenResult {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, b.in.url+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(clientID, secret)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, _ := io.ReadAll(resp.Body)
	body := map[string]any{}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &body); err != nil {
			t.Fatalf("decode %q: %v", raw, err)
		}
	}
	return tokenResult{Status: resp.StatusCode, Header: resp.Header, Body: body}
}

func (b *bruteForce) login(t *testing.T, c *http.Client, user, password string) tokenResult {
	t.Helper()
	return b.send(t, c, "/oauth2/token", "app", "app-secret", url.Values{"grant_type": {"password"}, "username": {user}, "password": {password}})
}

// expectLimited asserts a 429 slow_down with the given Retry-After.
func expectLimited(t *testing.T, r tokenResult, retryAfter int, what string) {
	t.Helper()
	if r.Status != http.StatusTooManyRequests || r.str("error") != "slow_down" || r.Header.Get("Retry-After") != fmt.Sprint(retryAfter) ||
		r.Header.Get("Cache-Control") != "no-store" || r.str("error_description") == "" {
		t.Fatalf("%s: %d %v Retry-After %q, want 429 slow_down Retry-After %d", what, r.Status, r.Body, r.Header.Get("Retry-After"), retryAfter)
	}
}

// guessUntilLimited sends wrong passwords for user until one is refused
// with 429 and returns how many were evaluated (answered invalid_grant).
func (b *bruteForce) guessUntilLimited(t *testing.T, c *http.Client, user func(i int) string) (int, tokenResult) {
	t.Helper()
	for i := 0; i < 1000; i++ {
		r := b.login(t, c, user(i), fmt.Sprintf("guess-%d", i))
		switch r.Status {
		case http.StatusTooManyRequests:
			return i, r
		case http.StatusBadRequest:
			if r.str("error") != "invalid_grant" {
				t.Fatalf("guess %d: %v", i, r.Body)
			}
		default:
			t.Fatalf("guess %d: %d %v", i, r.Status, r.Body)
		}
	}
	t.Fatal("never limited")
	return 0, tokenResult{}
}

func TestBruteForcePerUser(t *testing.T) {
	b := newBruteForce(t)
	ip1, ip2 := fromIP(t, "127.0.0.1"), fromIP(t, "127.0.0.2")
	alice := func(int) string { return "alice" }

	// A burst of exactly 5 wrong passwords is evaluated, the 6th is 429
	// with the wait for the next attempt (60 s / 5 = 12 s).
	n, r := b.guessUntilLimited(t, ip1, alice)
	if n != 5 {
		t.Fatalf("%d guesses evaluated before the limit, want 5", n)
	}
	expectLimited(t, r, 12, "6th guess")
	// The right password is refused as well while the bucket is empty:
	// otherwise the limit would be an oracle that tells a right guess.
	expectLimited(t, b.login(t, ip1, "alice", "alice-pw"), 12, "right password while limited")
	// From another IP, too: the limit is the account's.
	expectLimited(t, b.login(t, ip2, "alice", "guess"), 12, "another IP")
	// Another user is not affected.
	if r := b.login(t, ip1, "bob", "bob-pw"); r.Status != 200 {
		t.Fatalf("bob: %d %v", r.Status, r.Body)
	}

	// Then one guess per 12 s: over the next ten minutes of guessing
	// every second, exactly 5 a minute are evaluated.
	perMinute := map[int]int{}
	for s := 1; s <= 600; s++ {
		b.clock.Advance(time.Second)
		r := b.login(t, ip1, "alice", "guess")
		switch r.Status {
		case http.StatusBadRequest:
			perMinute[(s-1)/60]++
		case http.StatusTooManyRequests:
			// Retry-After counts down to the next token.
			if want := 12 - s%12; r.Header.Get("Retry-After") != fmt.Sprint(want) {
				t.Fatalf("at +%ds: Retry-After %q, want %d", s, r.Header.Get("Retry-After"), want)
			}
		default:
			t.Fatalf("at +%ds: %d %v", s, r.Status, r.Body)
		}
	}
	for m := range 10 {
		if perMinute[m] != 5 {
			t.Fatalf("minute %d: %d guesses evaluated, want 5 (all: %v)", m, perMinute[m], perMinute)
		}
	}

	// Recovery: a minute without failures refills the bucket. The right
	// password works, and costs nothing: logins in a row all succeed and
	// leave all 5 failures available.
	b.clock.Advance(time.Minute)
	for i := range 10 {
		if r := b.login(t, ip1, "alice", "alice-pw"); r.Status != 200 {
			t.Fatalf("login %d after the window: %d %v", i, r.Status, r.Body)
		}
	}
	// A success does not wipe earlier failures (the real user logging in
	// must not hand an attacker a fresh budget): 4 failures, a success,
	// then only one more failure before 429.
	for i := range 4 {
		if r := b.login(t, ip1, "alice", "guess"); r.Status != 400 {
			t.Fatalf("failure %d: %d", i, r.Status)
		}
	}
	if r := b.login(t, ip1, "alice", "alice-pw"); r.Status != 200 {
		t.Fatalf("success between failures: %d %v", r.Status, r.Body)
	}
	if n, _ := b.guessUntilLimited(t, ip1, alice); n != 1 {
		t.Fatalf("%d failures evaluated after 4 failures and a success, want 1", n)
	}
}

func TestBruteForcePerIP(t *testing.T) {
	b := newBruteForce(t)
	ip1, ip2 := fromIP(t, "127.0.0.1"), fromIP(t, "127.0.0.2")
	// Spraying one guess over many usernames (known or not) from one IP:
	// exactly 20 are evaluated, then the IP is refused for 60 s / 20 = 3 s.
	users := func(i int) string {
		switch i {
		case 1, 3, 5:
			return "alice"
		case 7, 9, 11:
			return "bob"
		}
		return fmt.Sprintf("user-%d", i) // unknown names count the same
	}
	n, r := b.guessUntilLimited(t, ip1, users)
	if n != 20 {
		t.Fatalf("%d guesses from one IP before the limit, want 20", n)
	}
	expectLimited(t, r, 3, "21st guess from the IP")
	// Refused from this IP: right passwords and even client
	// authentication, which is checked against the IP's bucket first.
	expectLimited(t, b.login(t, ip1, "carol", "x"), 3, "new user from the limited IP")
	expectLimited(t, b.send(t, ip1, "/oauth2/token", "service", "service-secret", url.Values{"grant_type": {"client_credentials"}}), 3,
		"client_credentials from the limited IP")
	// Another IP is not affected (bob's own bucket still has attempts).
	if r := b.login(t, ip2, "bob", "bob-pw"); r.Status != 200 {
		t.Fatalf("bob from another IP: %d %v", r.Status, r.Body)
	}
	// After 3 s one attempt more, after a minute the full 20.
	b.clock.Advance(3 * time.Second)
	if r := b.login(t, ip1, "dave", "x"); r.Status != 400 {
		t.Fatalf("after 3s: %d %v", r.Status, r.Body)
	}
	expectLimited(t, b.login(t, ip1, "erin", "x"), 3, "second attempt after 3s")
	b.clock.Advance(time.Minute)
	// Failed client authentications (token and revocation endpoints)
	// count against the same 20.
	for i := range 5 {
		if r := b.send(t, ip1, "/oauth2/token", "app", "wrong", url.Values{"grant_type": {"client_credentials"}}); r.Status != 401 {
			t.Fatalf("bad client secret %d: %d %v", i, r.Status, r.Body)
		}
		if r := b.send(t, ip1, "/oauth2/revoke", "app", "wrong", url.Values{"token": {"x"}}); r.Status != 401 {
			t.Fatalf("bad client secret at revoke %d: %d %v", i, r.Status, r.Body)
		}
	}
	n, r = b.guessUntilLimited(t, ip1, func(i int) string { return fmt.Sprintf("spray-%d", i) })
	if n != 10 {
		t.Fatalf("%d guesses after 10 failed client authentications, want 10", n)
	}
	expectLimited(t, r, 3, "after mixed failures")
	expectLimited(t, b.send(t, ip1, "/oauth2/revoke", "app", "app-secret", url.Values{"token": {"x"}}), 3, "revoke from the limited IP")
}
