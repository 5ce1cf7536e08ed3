package issuer

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/embeddednats"
	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

func states(r *jwks.Ring) map[jwks.State][]string {
	m := map[jwks.State][]string{}
	for _, k := range r.Keys {
		m[k.State] = append(m[k.State], k.ID)
	}
	return m
}

// TestRotationLifecycle drives the ring through next → active → retired →
// removed with a fake clock, and checks that a token signed just before a
// rotation verifies against the published JWKS until it expires.
func TestRotationLifecycle(t *testing.T) {
	e := newEnv(t)
	clock := newFakeClock()
	in := e.start(WithClock(clock.Now))
	in.waitReady(t)
	ctx := t.Context()
	r0 := in.keys.current().ring
	k1, k2 := r0.Active().ID, r0.Next().ID

	// On-demand rotation refuses until the next key has propagated.
	if _, err := in.keys.Rotate(ctx, "test"); !errors.Is(err, jwks.ErrNextNotReady) {
		t.Fatalf("rotate before propagation: %v", err)
	}
	tok := in.login(t, "").str("access_token") // signed by k1, valid 10 min

	// Nothing is due before the rotation period.
	clock.Advance(23 * time.Hour)
	if err := in.keys.tick(ctx); err != nil {
		t.Fatal(err)
	}
	if got := in.keys.current().ring.Sequence; got != r0.Sequence {
		t.Fatalf("ring changed early: seq %d", got)
	}
	// Sign a token at the last moment before the rotation.
	clock.Advance(time.Hour - time.Minute)
	late := in.login(t, "").str("access_token")
	clock.Advance(time.Minute)
	if err := in.keys.tick(ctx); err != nil {
		t.Fatal(err)
	}
	r1 := in.keys.current().ring
	st := states(r1)
	if st[jwks.StateActive][0] != k2 || st[jwks.StateRetired][0] != k1 || len(st[jwks.StateNext]) != 1 {
		t.Fatalf("after periodic rotation: %v", st)
	}
	k3 := st[jwks.StateNext][0]
	// The token signed by k1 just before still verifies against what is
	// published now, until it expires.
	v := verifierFor(t, e.issuer, in.publishedKeys(t), clock.Now)
	if _, err := v.Verify(late); err != nil {
		t.Fatalf("token signed before rotation rejected: %v", err)
	}
	if _, err := v.Verify(tok); !errors.Is(err, jwks.ErrExpired) {
		t.Fatalf("old token: %v, want expired", err)
	}
	// New tokens are signed by k2.
	fresh := in.login(t, "").str("access_token")
	if c, err := v.Verify(fresh); err != nil || c == nil {
		t.Fatal(err)
	}
	if kid := headerKID(t, fresh); kid != k2 {
		t.Errorf("new token kid %s, want %s", kid, k2)
	}
	// The retired key stays until max TTL + leeway, then goes.
	clock.Advance(10*time.Minute + 29*time.Second)
	if err := in.keys.tick(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := in.publishedKeys(t).Lookup(k1); !ok {
		t.Fatal("retired key removed too early")
	}
	clock.Advance(time.Second)
	if err := in.keys.tick(ctx); err != nil {
		t.Fatal(err)
	}
	ks := in.publishedKeys(t)
	if _, ok := ks.Lookup(k1); ok {
		t.Fatal("retired key still published after max TTL + leeway")
	}
	if _, ok := ks.Lookup(k3); !ok || ks.Len() != 2 {
		t.Fatalf("published %v", ks.IDs())
	}
	// On-demand rotation now promotes k3, which has been published long
	// enough.
	ring, err := in.keys.Rotate(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	if ring.Active().ID != k3 {
		t.Fatalf("on-demand rotation activated %s, want %s", ring.Active().ID, k3)
	}
}

func headerKID(t *testing.T, tok string) string {
	t.Helper()
	hdr, _, _ := strings.Cut(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(hdr)
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		KID string `json:"kid"`
	}
	if err := json.Unmarshal(b, &h); err != nil || h.KID == "" {
		t.Fatalf("no kid in %s", b)
	}
	return h.KID
}

// TestBundlePublished checks the signed bundle in KV: it verifies with the
// distribution key, holds the ring's keys, follows every ring change, and
// is rejected when tampered with or signed by another key.
func TestBundlePublished(t *testing.T) {
	e := newEnv(t)
	clock := newFakeClock()
	in := e.start(WithClock(clock.Now))
	in.waitReady(t)
	nc, err := nats.Connect(e.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(t.Context(), "tokenwarden_jwks")
	if err != nil {
		t.Fatal(err)
	}
	trusted := []ed25519.PublicKey{in.DistributionPublicKey()}
	read := func() *jwks.Bundle {
		e, err := kv.Get(t.Context(), "current")
		if err != nil {
			t.Fatal(err)
		}
		b, err := jwks.VerifyBundle(e.Value(), trusted)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b1 := read()
	ring := in.keys.current().ring
	ks, err := b1.KeySet()
	if err != nil {
		t.Fatal(err)
	}
	if b1.Sequence != ring.Sequence || ks.Len() != 2 {
		t.Fatalf("bundle seq %d keys %d, ring seq %d", b1.Sequence, ks.Len(), ring.Sequence)
	}
	if _, ok := ks.Lookup(ring.Active().ID); !ok {
		t.Fatal("active key missing from bundle")
	}
	clock.Advance(time.Hour)
	if _, err := in.keys.Rotate(t.Context(), "test"); err != nil {
		t.Fatal(err)
	}
	b2 := read()
	if b2.Sequence <= b1.Sequence {
		t.Fatalf("sequence did not grow: %d then %d", b1.Sequence, b2.Sequence)
	}
	if err := jwks.CheckNewer(b1, b2.Sequence); !errors.Is(err, jwks.ErrStaleBundle) {
		t.Fatalf("older bundle accepted: %v", err)
	}
	// An issuer publishing late never overwrites a newer bundle in KV.
	in.keys.published = 0
	in.keys.state.Store(&ringState{ring: &jwks.Ring{Keys: ring.Keys, Sequence: b1.Sequence}, keys: ks, doc: b1.JWKS})
	if err := in.keys.publish(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := read(); got.Sequence != b2.Sequence {
		t.Fatalf("stale publish replaced bundle: seq %d", got.Sequence)
	}

	entry, _ := kv.Get(t.Context(), "current")
	raw := entry.Value()
	tampered := append([]byte(nil), raw...)
	tampered[len(tampered)/2] ^= 0x01
	if _, err := jwks.VerifyBundle(tampered, trusted); err == nil {
		t.Fatal("tampered bundle accepted")
	}
	other, _, _ := ed25519.GenerateKey(nil)
	if _, err := jwks.VerifyBundle(raw, []ed25519.PublicKey{other}); err == nil {
		t.Fatal("bundle accepted with the wrong distribution key")
	}
}

// TestRestartKeepsState restarts the issuer on the same NATS: same keys,
// and refresh tokens issued before still work.
func TestRestartKeepsState(t *testing.T) {
	e := newEnv(t)
	a := e.start()
	a.waitReady(t)
	kid := a.keys.current().ring.Active().ID
	login := a.login(t, "")
	a.stop()

	b := e.start()
	b.waitReady(t)
	if got := b.keys.current().ring.Active().ID; got != kid {
		t.Fatalf("active key after restart %s, want %s", got, kid)
	}
	r := b.refresh(t, login.str("refresh_token"), "")
	if r.Status != 200 {
		t.Fatalf("refresh after restart: %d %v", r.Status, r.Body)
	}
	if _, err := verifierFor(t, e.issuer, b.publishedKeys(t), time.Now).Verify(login.str("access_token")); err != nil {
		t.Fatalf("token from before restart: %v", err)
	}
}

// TestRestartNATS restarts the NATS server itself (same store): the ring
// and families survive on disk.
func TestKeysSurviveNATSRestart(t *testing.T) {
	e := newEnv(t)
	a := e.start()
	a.waitReady(t)
	kid := a.keys.current().ring.Active().ID
	a.stop()
	storeDir := e.nats.JetStreamConfig().StoreDir
	addr := e.nats.Addr().String()
	e.nats.Stop()
	ns, err := embeddednats.Start(embeddednats.Config{Addr: addr, StoreDir: storeDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Stop)
	b := e.start()
	b.waitReady(t)
	if got := b.keys.current().ring.Active().ID; got != kid {
		t.Fatalf("active key after NATS restart %s, want %s", got, kid)
	}
}

// twoReplicas starts two ready issuers on one deployment, with one fake
// clock.
func twoReplicas(t *testing.T) (*env, *fakeClock, *instance, *instance) {
	t.Helper()
	e := newEnv(t)
	clock := newFakeClock()
	a := e.start(WithClock(clock.Now))
	b := e.start(WithClock(clock.Now))
	a.waitReady(t)
	b.waitReady(t)
	return e, clock, a, b
}

// TestTwoReplicas: tokens of either verify against the other's JWKS, a
// rotation on one reaches the other, and concurrent rotations never both
// happen.
func TestTwoReplicas(t *testing.T) {
	e, clock, a, b := twoReplicas(t)
	if a.keys.current().ring.Active().ID != b.keys.current().ring.Active().ID {
		t.Fatal("replicas created two rings")
	}
	ta := a.login(t, "").str("access_token")
	tb := b.login(t, "").str("access_token")
	for _, pair := range []struct {
		tok string
		in  *instance
	}{{ta, b}, {tb, a}, {ta, a}, {tb, b}} {
		if _, err := verifierFor(t, e.issuer, pair.in.publishedKeys(t), clock.Now).Verify(pair.tok); err != nil {
			t.Fatal(err)
		}
	}

	clock.Advance(time.Hour)
	seq := a.keys.current().ring.Sequence
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, in := range []*instance{a, b} {
		wg.Go(func() { _, errs[i] = in.keys.Rotate(context.Background(), "test") })
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, jwks.ErrNextNotReady):
		default:
			t.Fatal(err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d concurrent rotations succeeded (errors %v)", ok, errs)
	}
	// The loser saw the winner's ring; both converge through the watch.
	deadline := time.Now().Add(5 * time.Second)
	for a.keys.current().ring.Sequence != b.keys.current().ring.Sequence && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	ra, rb := a.keys.current().ring, b.keys.current().ring
	if ra.Sequence != seq+1 || rb.Sequence != seq+1 || ra.Active().ID != rb.Active().ID {
		t.Fatalf("after rotation: a seq %d active %s, b seq %d active %s", ra.Sequence, ra.Active().ID, rb.Sequence, rb.Active().ID)
	}
	// Both periodic tickers firing at once rotate once.
	clock.Advance(25 * time.Hour)
	for _, in := range []*instance{a, b} {
		wg.Go(func() {
			if err := in.keys.tick(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := a.keys.current().ring.Sequence; got != seq+2 {
		t.Fatalf("two tickers: sequence %d, want %d", got, seq+2)
	}
}

// TestGoOIDCVerifies checks tokens with an independent implementation:
// go-oidc, configured by discovery.
func TestGoOIDCVerifies(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	ctx := t.Context()
	provider, err := oidc.NewProvider(ctx, e.issuer)
	if err != nil {
		t.Fatal(err)
	}
	v := provider.Verifier(&oidc.Config{ClientID: "demo-api"})
	tok := in.login(t, "").str("access_token")
	idt, err := v.Verify(ctx, tok)
	if err != nil {
		t.Fatalf("go-oidc rejected our token: %v", err)
	}
	if idt.Subject != "alice" || idt.Issuer != e.issuer {
		t.Errorf("go-oidc saw sub %q iss %q", idt.Subject, idt.Issuer)
	}
	for _, path := range []string{"/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"} {
		resp, err := http.Get(in.url + path)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", path, err, resp)
		}
		_ = resp.Body.Close()
	}
	// A token for another audience is refused by go-oidc as well.
	other := in.post(t, "other", "other-secret", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}})
	if _, err := v.Verify(ctx, other.str("access_token")); err == nil {
		t.Fatal("go-oidc accepted a token for other-api")
	}
}

// TestNATSDownAtStart: the issuer waits for NATS, says why in /readyz, and
// becomes ready once NATS is there.
func TestNATSDownAtStart(t *testing.T) {
	e := newEnv(t)
	addr := e.nats.Addr().String()
	storeDir := e.nats.JetStreamConfig().StoreDir
	e.nats.Stop()
	in := e.start()
	resp := do(t, mustReq(t, "GET", in.url+"/readyz"))
	if resp.Status != 503 {
		t.Fatalf("readyz with NATS down: %d %v", resp.Status, resp.Body)
	}
	checks, _ := resp.Body["checks"].(map[string]any)
	if checks["nats"] == "ok" {
		t.Fatalf("readyz says NATS ok: %v", resp.Body)
	}
	r := in.post(t, "app", "app-secret", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}})
	if r.Status != 503 || r.str("error") != "temporarily_unavailable" {
		t.Fatalf("login with NATS down: %d %v", r.Status, r.Body)
	}
	// A token naming a key the replica does not hold makes it read the
	// ring again; with no bucket opened yet there is nothing to read (it
	// used to call the missing bucket and drop the connection).
	hdr := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"ES256","typ":"at+jwt","kid":"no-such-key"}`))
	unknownKID := hdr + ".e30.c2ln"
	// POST first: the client would retry a GET whose connection dropped.
	for _, req := range []*http.Request{
		mustReq(t, "POST", in.url+"/admin/v1/revocations"),
		mustReq(t, "GET", in.url+"/admin/v1/keys"),
	} {
		req.Header.Set("Authorization", "Bearer "+unknownKID)
		if r := do(t, req); r.Status != http.StatusUnauthorized {
			t.Fatalf("%s %s with NATS down and an unknown kid: %d %v", req.Method, req.URL.Path, r.Status, r.Body)
		}
	}
	ns, err := embeddednats.Start(embeddednats.Config{Addr: addr, StoreDir: storeDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Stop)
	in.waitReady(t)
	in.login(t, "")
}

// TestNATSLostLater: once NATS goes away, requests that need state fail
// with 503 and readiness reflects it; nothing half-written stays behind.
func TestNATSLostLater(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	login := in.login(t, "")
	e.nats.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for do(t, mustReq(t, "GET", in.url+"/readyz")).Status != 503 {
		if time.Now().After(deadline) {
			t.Fatal("readyz still 200 with NATS gone")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r := in.refresh(t, login.str("refresh_token"), ""); r.Status != 503 || r.str("error") != "temporarily_unavailable" {
		t.Fatalf("refresh with NATS gone: %d %v", r.Status, r.Body)
	}
	// Stateless grants keep working: the signing keys are in memory.
	if r := in.post(t, "service", "service-secret", url.Values{"grant_type": {"client_credentials"}}); r.Status != 200 {
		t.Fatalf("client_credentials with NATS gone: %d %v", r.Status, r.Body)
	}
}

func mustReq(t *testing.T, method, u string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestConsumerLimits: the JWKS bucket and the revocation stream accept one
// consumer per sidecar beyond nats-server's default of 1,000 per stream.
func TestConsumerLimits(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	nc, err := nats.Connect(e.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	for _, name := range []string{"KV_tokenwarden_jwks", "TOKENWARDEN_REVOCATIONS"} {
		st, err := js.Stream(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.CachedInfo().Config.MaxConsumers; got != 100_000 {
			t.Errorf("%s: MaxConsumers %d", name, got)
		}
	}
}

// TestNewRingOutranksOldBundles: after the key bucket is lost, the new
// ring's bundles still have higher sequences than every bundle before, so
// sidecars holding an old one (on disk) accept them.
func TestNewRingOutranksOldBundles(t *testing.T) {
	e := newEnv(t)
	a := e.start()
	a.waitReady(t)
	before := a.keys.current().ring.Sequence
	a.stop()
	nc, err := nats.Connect(e.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if err := js.DeleteKeyValue(t.Context(), "tokenwarden_keys"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	b := e.start()
	b.waitReady(t)
	if after := b.keys.current().ring.Sequence; after <= before {
		t.Fatalf("new ring sequence %d does not outrank %d", after, before)
	}
}

// TestReplicaBehindReadsTheRing: a replica whose ring watch is behind (a
// NATS node failing can leave it deaf for seconds) gets a token signed by
// a key that another replica's rotation activated. Its /oauth2/revoke must
// still revoke that token, not answer 200 for "not a token of ours", and
// its admin API must take an admin token of the other replica. The lag is
// injected by putting back the ring b held before the rotations.
func TestReplicaBehindReadsTheRing(t *testing.T) {
	_, clock, a, b := twoReplicas(t)
	stale := b.keys.current()
	// Two rotations: the key then active was created by the first one, so
	// b's old ring has never seen it.
	for range 2 {
		clock.Advance(time.Hour)
		if _, err := a.keys.Rotate(context.Background(), "test"); err != nil {
			t.Fatal(err)
		}
	}
	want := a.keys.current().ring.Sequence
	deadline := time.Now().Add(5 * time.Second)
	for b.keys.current().ring.Sequence != want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	b.keys.state.Store(stale) // the watch is behind
	clock.Advance(2 * refreshEvery)

	access := a.login(t, "").str("access_token")
	kid, _ := tokenPart(t, access, 0)["kid"].(string)
	if _, ok := stale.keys.Lookup(kid); ok {
		t.Fatal("the stale ring knows the new key: the test proves nothing")
	}
	req, _ := http.NewRequest(http.MethodPost, b.url+"/oauth2/revoke", strings.NewReader(url.Values{"token": {access}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("app", "app-secret")
	if r := do(t, req); r.Status != http.StatusOK {
		t.Fatalf("revoke: %d %v", r.Status, r.Body)
	}
	jti, _ := tokenPart(t, access, 1)["jti"].(string)
	if revoked, _ := b.revocations.Check(&jwks.Claims{ID: jti}); !revoked {
		t.Fatal("the replica behind answered 200 but did not revoke the token")
	}

	b.keys.state.Store(stale)
	clock.Advance(2 * refreshEvery)
	req, _ = http.NewRequest(http.MethodGet, b.url+"/admin/v1/keys", nil)
	req.Header.Set("Authorization", "Bearer "+a.adminToken(t))
	if r := do(t, req); r.Status != http.StatusOK {
		t.Fatalf("admin API of the replica behind: %d %v", r.Status, r.Body)
	}
}

// tokenPart decodes part i (0: header, 1: claims) of a compact JWS.
func tokenPart(t *testing.T, tok string, i int) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(parts[i])
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestIssuerSetHoldsOnlyStoredEvents: a signed event that reaches the
// revocation subjects but is not stored (here the stream refuses it; in
// life, a publish that failed and got the client a 503) must not enter the
// issuer's set. The issuer skips publishing what its set holds, so such an
// event would never be published on the client's retry.
func TestIssuerSetHoldsOnlyStoredEvents(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	now := time.Now()
	ev, err := revocation.NewEvent(revocation.KindJTI, "not-stored", time.Time{}, now.Add(time.Hour), "", now)
	if err != nil {
		t.Fatal(err)
	}
	data, err := revocation.Sign(ev, in.keys.dist)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(e.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	msg := nats.NewMsg(revocation.Subject(in.cfg.NATS.Prefix, revocation.KindJTI))
	msg.Data = data
	msg.Header.Set("Nats-Expected-Stream", "NOT-THE-REVOCATION-STREAM") // the stream refuses to store it
	if err := nc.PublishMsg(msg); err != nil {
		t.Fatal(err)
	}
	// A plain subscriber sees it (so a live subscription would).
	sub, err := nc.SubscribeSync(revocation.Subject(in.cfg.NATS.Prefix, revocation.KindJTI))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.PublishMsg(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.NextMsg(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if revoked, _ := in.revocations.Check(&jwks.Claims{ID: "not-stored"}); revoked {
		t.Fatal("the issuer's set took an event the stream did not store")
	}
}
