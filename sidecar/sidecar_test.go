package sidecar

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/embeddednats"
	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

func TestVerifyEndpoint(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	sc := w.start(w.config())
	sc.waitReady(t)
	tok := w.token()

	t.Run("valid, any method and path", func(t *testing.T) {
		for _, m := range []string{"GET", "POST", "DELETE", "PATCH"} {
			for _, p := range []string{"/verify", "/verify/", "/verify/api/orders/42", "/verify/api//orders", "/verify/a/../b"} {
				a := sc.verify(t, m, p, tok)
				if a.status != 200 {
					t.Fatalf("%s %s: %d %v", m, p, a.status, a.header)
				}
				if a.header.Get("X-Auth-Subject") != "alice" || a.header.Get("X-Auth-Client-Id") != "demo-app" ||
					a.header.Get("X-Auth-Scope") != "read write" || !strings.HasPrefix(a.header.Get("X-Auth-Token-Id"), "jti-") ||
					a.header.Get("X-Auth-Expires-At") == "" {
					t.Fatalf("headers %v", a.header)
				}
			}
		}
	})
	t.Run("no token", func(t *testing.T) {
		a := sc.verify(t, "GET", "/verify", "")
		if a.status != 401 || a.header.Get("WWW-Authenticate") != `Bearer realm="tokenwarden"` {
			t.Fatalf("%d %q", a.status, a.header.Get("WWW-Authenticate"))
		}
		a = sc.verify(t, "GET", "/verify", "", "Authorization", "Basic YTpi")
		if a.status != 401 || a.header.Get("WWW-Authenticate") != `Bearer realm="tokenwarden"` {
			t.Fatalf("basic: %d %q", a.status, a.header.Get("WWW-Authenticate"))
		}
	})
	t.Run("invalid tokens", func(t *testing.T) {
		expired := w.token(func(c *jwks.Claims) { c.Expiry = time.Now().Add(-time.Hour).Unix(); c.IssuedAt = c.Expiry - 600 })
		otherAud := w.token(func(c *jwks.Claims) { c.Audience = jwks.Audience{"other-api"} })
		for name, bad := range map[string]string{"garbage": "abc", "expired": expired, "other audience": otherAud, "tampered": tok[:len(tok)-4] + "AAAA"} {
			a := sc.verify(t, "GET", "/verify", bad)
			www := a.header.Get("WWW-Authenticate")
			if a.status != 401 || !strings.HasPrefix(www, `Bearer realm="tokenwarden", error="invalid_token", error_description="`) {
				t.Fatalf("%s: %d %q", name, a.status, www)
			}
		}
	})
	t.Run("two Authorization headers", func(t *testing.T) {
		a := sc.verify(t, "GET", "/verify", tok, "Authorization", "Bearer "+tok)
		if a.status != 401 || !strings.Contains(a.header.Get("WWW-Authenticate"), `error="invalid_request"`) {
			t.Fatalf("%d %v", a.status, a.header)
		}
	})
	t.Run("required scopes", func(t *testing.T) {
		if a := sc.verify(t, "GET", "/verify?scope=read", tok); a.status != 200 {
			t.Fatalf("read: %d", a.status)
		}
		if a := sc.verify(t, "GET", "/verify?scope=read+write", tok); a.status != 200 {
			t.Fatalf("read write: %d", a.status)
		}
		a := sc.verify(t, "GET", "/verify?scope=read+admin", tok)
		if a.status != 403 || a.header.Get("WWW-Authenticate") != `Bearer realm="tokenwarden", error="insufficient_scope", error_description="the token lacks a required scope", scope="admin"` {
			t.Fatalf("admin: %d %q", a.status, a.header.Get("WWW-Authenticate"))
		}
		if a := sc.verify(t, "GET", "/verify", tok, "X-Required-Scope", "delete"); a.status != 403 {
			t.Fatalf("header scope: %d", a.status)
		}
	})
}

// TestAttackCorpus sends every seed of the verifier's fuzz corpus through
// /verify and /introspect: none may be accepted, and none may cause
// anything but a 401 (or inactive).
func TestAttackCorpus(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	sc := w.start(w.config())
	sc.waitReady(t)
	corpus := attackCorpus(t, w)
	for name, tok := range corpus.seeds {
		a := sc.verify(t, "GET", "/verify", tok)
		if a.status != 401 || !strings.Contains(a.header.Get("WWW-Authenticate"), "invalid_token") {
			t.Errorf("%s: %d %q", name, a.status, a.header.Get("WWW-Authenticate"))
		}
		if got := introspect(t, sc, tok); got["active"] != false {
			t.Errorf("%s: introspection %v", name, got)
		}
	}
	// And attacks built against this sidecar's own keys and configuration.
	for name, tok := range corpus.crafted {
		if a := sc.verify(t, "GET", "/verify", tok); a.status != 401 {
			t.Errorf("%s: %d", name, a.status)
		}
	}
}

// attacks is the sidecar's attack corpus: every seed of the verifier's
// fuzz corpus that fits in an Authorization header (by file name), and
// attacks built against w's keys and configuration (by name).
type attacks struct{ seeds, crafted map[string]string }

func attackCorpus(t *testing.T, w *world) attacks {
	t.Helper()
	seeds, err := filepath.Glob("../jwks/testdata/fuzz/FuzzVerify/*")
	if err != nil || len(seeds) < 20 {
		t.Fatalf("seed corpus: %v (%d files)", err, len(seeds))
	}
	out := attacks{seeds: map[string]string{}}
	for _, f := range seeds {
		tok := readSeed(t, f)
		if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
			continue // not expressible in an Authorization header
		}
		out.seeds[filepath.Base(f)] = tok
	}
	good := w.token()
	for !strings.ContainsAny(good, "-_") { // so the alphabet swap below changes it
		good = w.token()
	}
	parts := strings.Split(good, ".")
	out.crafted = map[string]string{
		"alg none":      b64json(`{"alg":"none","typ":"at+jwt","kid":"`+w.ring.Active().ID+`"}`) + "." + parts[1] + ".",
		"padded":        parts[0] + "=." + parts[1] + "." + parts[2],
		"std alphabet":  strings.ReplaceAll(strings.ReplaceAll(good, "-", "+"), "_", "/"),
		"four parts":    good + ".x",
		"huge":          strings.Repeat("a", 20000),
		"foreign kid":   b64json(`{"alg":"ES256","typ":"at+jwt","kid":"nope"}`) + "." + parts[1] + "." + parts[2],
		"wrong typ":     b64json(`{"alg":"ES256","typ":"JWT","kid":"`+w.ring.Active().ID+`"}`) + "." + parts[1] + "." + parts[2],
		"no signature":  parts[0] + "." + parts[1] + ".",
		"empty payload": parts[0] + ".." + parts[2],
	}
	return out
}

func b64json(s string) string { return strings.TrimRight(base64URL([]byte(s)), "=") }

func readSeed(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(string(b), "\n", 3)
	if len(lines) < 2 || !strings.HasPrefix(lines[1], "[]byte(") && !strings.HasPrefix(lines[1], "string(") {
		t.Fatalf("%s: unexpected corpus format", path)
	}
	v := lines[1][strings.IndexByte(lines[1], '(')+1 : len(lines[1])-1]
	var s string
	if err := json.Unmarshal([]byte(goQuoteToJSON(v)), &s); err != nil {
		return "" // an escape JSON cannot express; skip
	}
	return s
}

// goQuoteToJSON turns a Go double-quoted literal into JSON where they agree.
func goQuoteToJSON(q string) string {
	return strings.ReplaceAll(q, `\x`, `\u00`)
}

func introspect(t *testing.T, sc *running, tok string) map[string]any {
	t.Helper()
	resp, err := http.PostForm(sc.url+"/introspect", url.Values{"token": {tok}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestIntrospection(t *testing.T) {
	w := newWorld(t, jwks.EdDSA)
	sc := w.start(w.config())
	sc.waitReady(t)
	tok := w.token()
	m := introspect(t, sc, tok)
	if m["active"] != true || m["sub"] != "alice" || m["client_id"] != "demo-app" || m["scope"] != "read write" || m["iss"] != testIssuer ||
		m["aud"] != testAudience || m["token_type"] != "Bearer" || m["exp"] == nil || m["iat"] == nil || m["jti"] == nil {
		t.Fatalf("%v", m)
	}
	if m := introspect(t, sc, "garbage"); len(m) != 1 || m["active"] != false {
		t.Fatalf("inactive must be exactly {active:false}: %v", m)
	}
	resp, _ := http.Get(sc.url + "/introspect")
	_ = resp.Body.Close()
	if resp.StatusCode != 405 {
		t.Fatalf("GET introspect: %d", resp.StatusCode)
	}
	resp, _ = http.Post(sc.url+"/introspect", "application/x-www-form-urlencoded", strings.NewReader(""))
	_ = resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("no token: %d", resp.StatusCode)
	}
	for _, c := range []struct {
		addr string
		ok   bool
	}{{"127.0.0.1:5", true}, {"[::1]:5", true}, {"@", true}, {"10.0.0.3:5", false}, {"127.0.0.6:5", false}, {"[2001:db8::1]:5", false}, {"junk", false}} {
		if got := fromLoopback(&http.Request{RemoteAddr: c.addr}); got != c.ok {
			t.Errorf("fromLoopback(%q) = %v", c.addr, got)
		}
	}
}

func TestReadiness(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	if err := w.kv.Delete(t.Context(), "current"); err != nil {
		t.Fatal(err)
	}
	sc := w.start(w.config())
	resp, err := http.Get(sc.url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Fatalf("ready without a bundle: %d", resp.StatusCode)
	}
	w.publish(w.ring)
	sc.waitReady(t)
	if a := sc.verify(t, "GET", "/verify", w.token()); a.status != 200 {
		t.Fatalf("%d", a.status)
	}
}

// TestRotationReachesSidecar publishes a new bundle (as the issuer does on
// rotation) and checks tokens of the new key verify, and tokens of the old
// one keep verifying while it is published.
func TestRotationReachesSidecar(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	sc := w.start(w.config())
	sc.waitReady(t)
	old := w.token()
	r2, err := w.ring.Rotate(time.Now().Add(time.Hour), jwks.DefaultPolicy())
	if err != nil {
		t.Fatal(err)
	}
	w.ring = r2
	seq := w.publish(r2)
	waitFor(t, "new bundle", func() bool { return sc.keys.Status().Sequence == seq })
	if a := sc.verify(t, "GET", "/verify", w.token()); a.status != 200 {
		t.Fatalf("new key: %d", a.status)
	}
	if a := sc.verify(t, "GET", "/verify", old); a.status != 200 {
		t.Fatalf("retired key: %d", a.status)
	}
}

// TestCacheHitRespectsExpiryAndKeys: a cached token stops verifying at exp
// (plus leeway), and as soon as its key leaves the published set.
func TestCacheHitRespectsExpiryAndKeys(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	sc := w.start(w.config())
	sc.waitReady(t)
	v := sc.Verifier()
	tok := w.token()
	if _, hit, err := v.Verify(tok); err != nil || hit {
		t.Fatalf("first: hit=%v %v", hit, err)
	}
	if _, hit, err := v.Verify(tok); err != nil || !hit {
		t.Fatalf("second: hit=%v %v", hit, err)
	}
	w.clock.Advance(10*time.Minute + 29*time.Second)
	if _, hit, err := v.Verify(tok); err != nil || !hit {
		t.Fatalf("within leeway: hit=%v %v", hit, err)
	}
	w.clock.Advance(time.Second)
	if _, _, err := v.Verify(tok); err == nil {
		t.Fatal("cached token outlived exp + leeway")
	}

	tok2 := w.token()
	if _, _, err := v.Verify(tok2); err != nil {
		t.Fatal(err)
	}
	// Publish a set without the key that signed tok2 (an emergency removal).
	fresh, err := jwks.NewRing(time.Now(), jwks.DefaultPolicy())
	if err != nil {
		t.Fatal(err)
	}
	seq := w.publish(fresh)
	waitFor(t, "bundle without the key", func() bool { return sc.keys.Status().Sequence == seq })
	if _, _, err := v.Verify(tok2); err == nil {
		t.Fatal("cached token accepted after its key was removed")
	}
}

type revokeAll struct{ subject string }

func (r revokeAll) Check(c *jwks.Claims) (bool, string) {
	return c.Subject == r.subject, "subject revoked"
}

// TestCacheHitChecksRevocation: the revocation hook runs on hits too.
func TestCacheHitChecksRevocation(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	var checker switchable
	sc := w.start(w.config(), WithRevocations(&checker))
	sc.waitReady(t)
	tok := w.token()
	if a := sc.verify(t, "GET", "/verify", tok); a.status != 200 {
		t.Fatal(a.status)
	}
	checker.set(revokeAll{subject: "alice"})
	a := sc.verify(t, "GET", "/verify", tok)
	if a.status != 401 || !strings.Contains(a.header.Get("WWW-Authenticate"), `error_description="subject revoked"`) {
		t.Fatalf("revoked cached token: %d %q", a.status, a.header.Get("WWW-Authenticate"))
	}
}

// TestForgedBundlesIgnored: a bundle signed by another key, garbage, and an
// older sequence never replace the held keys, and are counted.
func TestForgedBundlesIgnored(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	sc := w.start(w.config())
	sc.waitReady(t)
	tok := w.token()
	held := sc.keys.Status().Sequence

	_, evil, _ := ed25519.GenerateKey(rand.Reader)
	attacker, _ := jwks.NewRing(time.Now(), jwks.DefaultPolicy())
	ks, _ := attacker.KeySet()
	doc, _ := jwks.Document(ks)
	forged, _ := jwks.SignBundle(&jwks.Bundle{Sequence: held + 100, IssuedAt: time.Now().Unix(), JWKS: doc}, evil)
	for _, v := range [][]byte{forged, []byte("garbage")} {
		if _, err := w.kv.Put(t.Context(), "current", v); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "rejections counted", func() bool { return sc.keys.Status().Rejected >= 2 })
	// A genuine bundle that is not newer (a replay, or a late publisher):
	// same sequence, different content.
	replay, _ := jwks.SignBundle(&jwks.Bundle{Sequence: held, IssuedAt: time.Now().Unix() - 60, JWKS: doc}, w.dist)
	if _, err := w.kv.Put(t.Context(), "current", replay); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "stale counted", func() bool { return sc.keys.Status().Stale >= 1 })
	if got := sc.keys.Status().Sequence; got != held {
		t.Fatalf("held sequence changed to %d", got)
	}
	if a := sc.verify(t, "GET", "/verify", tok); a.status != 200 {
		t.Fatalf("genuine token after forgeries: %d", a.status)
	}
	evilTok, _ := attacker.Active().Sign(&jwks.Claims{Issuer: testIssuer, Subject: "mallory", Audience: jwks.Audience{testAudience},
		Expiry: time.Now().Add(time.Minute).Unix(), IssuedAt: time.Now().Unix(), ID: "x", ClientID: "x"})
	if a := sc.verify(t, "GET", "/verify", evilTok); a.status != 401 {
		t.Fatalf("token of the forged bundle's key accepted: %d", a.status)
	}
	// The unknown kid of evilTok made the sidecar re-read the bundle, which
	// counts the replay again: at least once is what matters.
	metrics := scrape(t, sc.url)
	if !strings.Contains(metrics, "tokenwarden_jwks_bundles_rejected_total 2") || strings.Contains(metrics, "tokenwarden_jwks_bundles_stale_total 0") {
		t.Errorf("metrics do not count the dropped bundles:\n%s", grepLines(metrics, "tokenwarden_jwks"))
	}
}

// TestRestartWithNATSDownServesFromDisk: the disk cache lets a restarted
// sidecar verify at once.
func TestRestartWithNATSDownServesFromDisk(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	cfg := w.config()
	cfg.CacheDir = t.TempDir()
	first := w.start(cfg)
	first.waitReady(t)
	tok := w.token()
	waitFor(t, "disk cache written", func() bool {
		_, err := os.Stat(filepath.Join(cfg.CacheDir, "jwks-bundle.jws"))
		return err == nil
	})
	first.stop()
	w.nats.Stop()

	second := w.start(cfg)
	if a := second.verify(t, "GET", "/verify", tok); a.status != 200 {
		t.Fatalf("after restart with NATS down: %d", a.status)
	}
	// It verifies, but does not claim readiness: it cannot know what was
	// revoked while it was down until it replays the stream.
	a := second.verify(t, "GET", "/readyz", "")
	if a.status != 503 || !strings.Contains(a.body, "disconnected") || !strings.Contains(a.body, "disk") || !strings.Contains(a.body, "replaying") {
		t.Errorf("readyz should be 503, say NATS is down, keys come from disk, revocations not replayed: %d %s", a.status, a.body)
	}
}

// TestNATSOutageKeepsVerifying: NATS goes away and comes back; the sidecar
// keeps verifying throughout and picks up a rotation published after.
func TestNATSOutageKeepsVerifying(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	sc := w.start(w.config())
	sc.waitReady(t)
	tok := w.token()
	addr, store := w.nats.Addr().String(), w.nats.JetStreamConfig().StoreDir
	w.nats.Stop()
	waitFor(t, "disconnect noticed", func() bool { return strings.Contains(scrape(t, sc.url), "tokenwarden_nats_connected 0") })
	if a := sc.verify(t, "GET", "/verify", tok); a.status != 200 {
		t.Fatalf("during outage: %d", a.status)
	}
	ns, err := embeddednats.Start(embeddednats.Config{Addr: addr, StoreDir: store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Stop)
	w.nats = ns
	w.kv = w.bucket()
	r2, _ := w.ring.Rotate(time.Now().Add(time.Hour), jwks.DefaultPolicy())
	w.ring = r2
	seq := w.publish(r2)
	waitFor(t, "bundle after reconnect", func() bool { return sc.keys.Status().Sequence == seq })
	if a := sc.verify(t, "GET", "/verify", w.token()); a.status != 200 {
		t.Fatalf("new key after reconnect: %d", a.status)
	}
}

func scrape(t testing.TB, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return b.String()
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestConfigValidation(t *testing.T) {
	base := func() Config {
		c := DefaultConfig()
		c.Issuer, c.Audience, c.DistributionPublicKeys = testIssuer, []string{testAudience}, []string{base64URL(make([]byte, 32))}
		return c
	}
	if c := base(); c.Validate() != nil {
		t.Fatal(c.Validate())
	}
	for name, mod := range map[string]func(*Config){
		"no issuer":              func(c *Config) { c.Issuer = "" },
		"no audience":            func(c *Config) { c.Audience = nil },
		"no distribution key":    func(c *Config) { c.DistributionPublicKeys = nil },
		"HS256 allowed":          func(c *Config) { c.Algorithms = []string{"HS256"} },
		"none allowed":           func(c *Config) { c.Algorithms = []string{"none"} },
		"negative leeway":        func(c *Config) { c.Leeway = -time.Second },
		"tiny token cap":         func(c *Config) { c.MaxTokenSize = 10 },
		"plain http fallback":    func(c *Config) { c.JWKSFallbackURL = "http://issuer.internal/.well-known/jwks.json" },
		"no listener":            func(c *Config) { c.Listen, c.Socket = "", "" },
		"bad listen":             func(c *Config) { c.Listen = "8181" },
		"refresh interval below": func(c *Config) { c.KeyRefreshInterval = time.Millisecond },
		"bad grpc addr":          func(c *Config) { c.GRPCAddr = "9191" },
		"grpc addr is listen":    func(c *Config) { c.GRPCAddr = c.Listen },
		"grpc socket is socket":  func(c *Config) { c.Socket, c.GRPCSocket = "/run/tw.sock", "/run/tw.sock" },
	} {
		c := base()
		mod(&c)
		if c.Validate() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	c := base()
	c.GRPCAddr = ""
	if err := c.Validate(); err != nil {
		t.Errorf("gRPC off refused: %v", err)
	}
	c.Listen, c.GRPCAddr = "127.0.0.1:0", "127.0.0.1:0"
	if err := c.Validate(); err != nil {
		t.Errorf("two ephemeral ports refused: %v", err)
	}
	c = base()
	c.JWKSFallbackURL = "http://127.0.0.1:8080/.well-known/jwks.json"
	if err := c.Validate(); err != nil {
		t.Errorf("loopback http fallback refused: %v", err)
	}
	if _, err := ParseDistributionPublicKey("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----"); err == nil {
		t.Error("truncated PEM accepted")
	}
	// A key listed twice (standard and URL base64 of the same bytes, as a
	// rollover's extra keys may repeat one) is trusted once.
	c = base()
	c.DistributionPublicKeys = append(c.DistributionPublicKeys, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
	if keys, err := c.trustedKeys(); err != nil || len(keys) != 1 {
		t.Errorf("the same key twice: %d keys, %v", len(keys), err)
	}
}

// TestLeewayOutlivesEventExpiry: an event expires with the last token it
// matches, by the issuer's leeway; a sidecar with a larger leeway accepts
// tokens for longer, so it must keep the event for longer too.
func TestLeewayOutlivesEventExpiry(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	cfg := w.config()
	cfg.Leeway = 2 * time.Minute
	sc := w.start(cfg)
	sc.waitReady(t)
	tok := w.token()
	jti := introspect(t, sc, tok)["jti"].(string)
	exp := w.clock.Now().Add(10 * time.Minute)
	now := w.clock.Now()
	e, err := revocation.NewEvent(revocation.KindJTI, jti, time.Time{}, exp.Add(30*time.Second), "test", now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := revocation.NewPublisher(w.js, "tokenwarden", w.dist).Publish(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "event applied", func() bool { return sc.verify(t, "GET", "/verify", tok).status == 401 })
	// Past the event's expiry, within this sidecar's leeway: still revoked,
	// also after a GC.
	w.clock.Advance(10*time.Minute + 90*time.Second)
	sc.Revocations().GC(sc.setClock()) // what the sidecar's GC loop does
	if a := sc.verify(t, "GET", "/verify", tok); a.status != 401 {
		t.Fatalf("revoked token accepted once the event expired by the issuer's clock: %d", a.status)
	}
}

func (revokeAll) Has(revocation.Kind, string) bool { return false }

// TestSigningKeyRevoked: a kid event refuses every token of the key, a
// verdict cached before it included, and forged tokens with any iat and
// jti; once the bundle without the key arrives, the key's tokens are still
// named "signing key revoked", and the new active key's tokens pass.
func TestSigningKeyRevoked(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	sc := w.start(w.config())
	sc.waitReady(t)
	tok := w.token()
	if a := sc.verify(t, "GET", "/verify", tok); a.status != 200 {
		t.Fatalf("before: %d", a.status)
	}
	leaked := w.ring.Active().ID
	now := w.clock.Now()
	e, err := revocation.NewEvent(revocation.KindKID, leaked, time.Time{}, now.Add(11*time.Minute), "leak", now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := revocation.NewPublisher(w.js, "tokenwarden", w.dist).Publish(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	const want = `error_description="signing key revoked"`
	waitFor(t, "kid event applied", func() bool { return sc.verify(t, "GET", "/verify", tok).status == 401 })
	forged := w.token(func(c *jwks.Claims) { c.ID, c.IssuedAt, c.SessionID = "forged", now.Add(-time.Hour).Unix(), "" })
	for name, tk := range map[string]string{"cached": tok, "forged": forged} {
		if a := sc.verify(t, "GET", "/verify", tk); a.status != 401 || !strings.Contains(a.header.Get("WWW-Authenticate"), want) {
			t.Errorf("%s token of the revoked key: %d %q", name, a.status, a.header.Get("WWW-Authenticate"))
		}
	}
	// The issuer's next step: a bundle without the key.
	next, _, err := w.ring.Revoke(leaked, time.Now(), jwks.DefaultPolicy(), "leak", "admin")
	if err != nil {
		t.Fatal(err)
	}
	w.ring = next
	seq := w.publish(next)
	waitFor(t, "bundle without the key", func() bool { return sc.keys.Status().Sequence == seq })
	for name, tk := range map[string]string{"cached": tok, "forged": forged, "new forged": w2token(t, w, leaked)} {
		if a := sc.verify(t, "GET", "/verify", tk); a.status != 401 || !strings.Contains(a.header.Get("WWW-Authenticate"), want) {
			t.Errorf("%s token after the bundle dropped the key: %d %q", name, a.status, a.header.Get("WWW-Authenticate"))
		}
	}
	if a := sc.verify(t, "GET", "/verify", w.token()); a.status != 200 {
		t.Fatalf("token of the new active key: %d %q", a.status, a.header.Get("WWW-Authenticate"))
	}
}

// w2token signs a token with the kid of a key the ring no longer holds,
// as a forger holding that key would: the header names the kid, whatever
// the signature.
func w2token(t *testing.T, _ *world, kid string) string {
	t.Helper()
	hdr := base64URL([]byte(`{"alg":"ES256","typ":"at+jwt","kid":"` + kid + `"}`))
	return hdr + ".eyJzdWIiOiJ4In0." + base64URL(randBytes(64))
}
