package issuer

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// adminDo sends an admin API request with token tok (none when empty).
func (in *instance) adminDo(t testing.TB, tok, method, path string, body any) tokenResult {
	t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, ok := body.(string)
		if !ok {
			j, err := json.Marshal(body)
			if err != nil {
				t.Fatal(err)
			}
			b = string(j)
		}
		rd = bytes.NewReader([]byte(b))
	} else {
		rd = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, in.url+path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	return do(t, req)
}

func (in *instance) revokeKey(t testing.TB, tok, kid string, body any) tokenResult {
	t.Helper()
	return in.adminDo(t, tok, "POST", "/admin/v1/keys/"+url.PathEscape(kid)+"/revoke", body)
}

func keyOf(t testing.TB, body map[string]any, kid string) map[string]any {
	t.Helper()
	keys, _ := body["keys"].([]any)
	for _, k := range keys {
		m := k.(map[string]any)
		if m["kid"] == kid {
			return m
		}
	}
	return nil
}

// TestRevokeActiveKey is the leaked-key incident on one issuer: the key is
// unpublished at once, its tokens (the admin's own included) are refused
// as "signing key revoked", the next key signs at once (and the answer
// says its propagation delay was cut short), a client recovers by
// refreshing, and keys list and the revocation list name the actor.
func TestRevokeActiveKey(t *testing.T) {
	e := newEnv(t)
	clock := newFakeClock()
	in := e.start(WithClock(clock.Now))
	in.waitReady(t)
	r0 := in.keys.current().ring
	k1, k2 := r0.Active().ID, r0.Next().ID
	clock.Advance(time.Minute) // 4 of the next key's 5 minutes of propagation are left
	login := in.login(t, "")
	old := login.str("access_token")
	admin := in.adminToken(t)

	r := in.revokeKey(t, admin, k1, map[string]any{"reason": "INC-1: key in a log"})
	if r.Status != http.StatusCreated {
		t.Fatalf("revoke: %d %v", r.Status, r.Body)
	}
	if r.Body["activated_kid"] != k2 || r.Body["propagation_delay_cut_short"] != "4m0s" || !strings.Contains(r.str("warning"), "fetches the bundle") {
		t.Errorf("answer does not say the delay was cut short: %v", r.Body)
	}
	key, _ := r.Body["key"].(map[string]any)
	ev, _ := r.Body["revocation"].(map[string]any)
	if key["state"] != "revoked" || key["revoked_by"] != "admin" || key["revoke_reason"] != "INC-1: key in a log" {
		t.Errorf("key record %v", key)
	}
	if ev["kind"] != "kid" || ev["value"] != k1 || ev["actor"] != "admin" || ev["id"] != keyEventID(k1) {
		t.Errorf("event %v", ev)
	}
	// Kept a day: far past any token of the key, and time for every
	// replica to finish a revocation whose ring update failed.
	if got, want := int64(ev["expires_at"].(float64)), clock.Now().Add(keyEventRetention).Unix(); got != want {
		t.Errorf("event expires at %d, want %d", got, want)
	}

	// Gone from the JWKS at once; the ring has a fresh next key.
	ks := in.publishedKeys(t)
	if _, ok := ks.Lookup(k1); ok {
		t.Fatal("revoked key still in the JWKS")
	}
	if _, ok := ks.Lookup(k2); !ok || ks.Len() != 2 {
		t.Fatalf("JWKS %v", ks.IDs())
	}
	ring := in.keys.current().ring
	if ring.Active().ID != k2 || ring.Active().ActivatedBy != "admin" || ring.Next() == nil || ring.Next().ID == k1 {
		t.Fatalf("ring after revoking the active key: %+v", states(ring))
	}

	// The admin's token was signed by the dead key too.
	if r := in.adminDo(t, admin, "GET", "/admin/v1/keys", nil); r.Status != 401 || r.str("error_description") != "signing key revoked" {
		t.Errorf("old admin token: %d %v", r.Status, r.Body)
	}
	// New tokens are signed by k2; a client recovers by refreshing.
	v := verifierFor(t, e.issuer, in.publishedKeys(t), clock.Now)
	if _, err := v.Verify(old); err == nil {
		t.Fatal("token of the revoked key verifies against the published keys")
	}
	ref := in.refresh(t, login.str("refresh_token"), "")
	if ref.Status != 200 {
		t.Fatalf("refresh after the key revocation: %d %v", ref.Status, ref.Body)
	}
	if kid := headerKID(t, ref.str("access_token")); kid != k2 {
		t.Errorf("refreshed token signed by %s, want %s", kid, k2)
	}
	if _, err := v.Verify(ref.str("access_token")); err != nil {
		t.Fatalf("refreshed token: %v", err)
	}

	admin = in.adminToken(t)
	list := in.adminDo(t, admin, "GET", "/admin/v1/keys", nil)
	if k := keyOf(t, list.Body, k1); k == nil || k["state"] != "revoked" || k["revoked_by"] != "admin" || k["revoke_reason"] != "INC-1: key in a log" || k["revoked_at"] == nil {
		t.Errorf("keys list: %v", list.Body)
	}
	revs := in.adminDo(t, admin, "GET", "/admin/v1/revocations", nil)
	if !strings.Contains(mustJSON(t, revs.Body), `"actor":"admin"`) {
		t.Errorf("revocations list without the actor: %v", revs.Body)
	}

	// Again: 200, nothing new published.
	again := in.revokeKey(t, admin, k1, map[string]any{"reason": "again"})
	if again.Status != http.StatusOK || again.Body["already_revoked"] != true {
		t.Errorf("second revocation: %d %v", again.Status, again.Body)
	}
	if got := testutilCounter(t, in.metrics.revocationsPublished.WithLabelValues("kid")); got != 1 {
		t.Errorf("%v kid events published, want 1", got)
	}

	// The record leaves the ring with its event.
	clock.Advance(keyEventRetention - time.Minute)
	if err := in.keys.tick(t.Context()); err != nil {
		t.Fatal(err)
	}
	if k := keyOf(t, in.adminDo(t, in.adminToken(t), "GET", "/admin/v1/keys", nil).Body, k1); k == nil {
		t.Fatal("revoked key record gone before its event")
	}
	clock.Advance(time.Minute + time.Second)
	if err := in.keys.tick(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, k := range in.keys.current().ring.Keys {
		if k.ID == k1 {
			t.Fatalf("revoked key still in the ring after its retention: %+v", k)
		}
	}
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestRevokeNextAndRetiredKeys: any published key can be revoked; the
// ring keeps one active and one next key.
func TestRevokeNextAndRetiredKeys(t *testing.T) {
	e := newEnv(t)
	clock := newFakeClock()
	in := e.start(WithClock(clock.Now))
	in.waitReady(t)
	r0 := in.keys.current().ring
	k1, k2 := r0.Active().ID, r0.Next().ID
	admin := in.adminToken(t)

	if r := in.revokeKey(t, admin, k2, map[string]any{"reason": "next key leaked"}); r.Status != 201 || r.Body["activated_kid"] != nil {
		t.Fatalf("revoke next: %d %v", r.Status, r.Body)
	}
	r1 := in.keys.current().ring
	if r1.Active().ID != k1 || r1.Next().ID == k2 {
		t.Fatalf("after revoking next: %v", states(r1))
	}
	k3 := r1.Next().ID
	if ks := in.publishedKeys(t); ks.Len() != 2 || !hasKey(ks, k1) || !hasKey(ks, k3) {
		t.Fatalf("JWKS %v", ks.IDs())
	}

	clock.Advance(6 * time.Minute)
	if _, err := in.keys.Rotate(t.Context(), "admin"); err != nil {
		t.Fatal(err)
	}
	admin = in.adminToken(t) // signed by k3 now
	if r := in.revokeKey(t, admin, k1, map[string]any{"reason": "retired key leaked"}); r.Status != 201 {
		t.Fatalf("revoke retired: %d %v", r.Status, r.Body)
	}
	if ks := in.publishedKeys(t); hasKey(ks, k1) || !hasKey(ks, k3) {
		t.Fatalf("JWKS after revoking the retired key: %v", ks.IDs())
	}
	if in.keys.current().ring.Active().ID != k3 {
		t.Fatal("revoking a retired key changed the active key")
	}
}

// TestRevokeKeyBundleNotPublished: when the ring changes but the bundle
// cannot be written (its bucket is gone here), the revocation stands and
// the answer says so with a warning. It used to answer 503 "key ring not
// updated, retry", which was false.
func TestRevokeKeyBundleNotPublished(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	kid := in.keys.current().ring.Next().ID
	admin := in.adminToken(t)
	if err := jetStream(t, e.nats.URL()).DeleteKeyValue(t.Context(), BundleBucket(e.cfg.NATS.Prefix)); err != nil {
		t.Fatal(err)
	}
	r := in.revokeKey(t, admin, kid, map[string]any{"reason": "leak"})
	key, _ := r.Body["key"].(map[string]any)
	if r.Status != http.StatusCreated || key["state"] != "revoked" || !strings.Contains(r.str("warning"), "not published yet") {
		t.Fatalf("revoke with the bundle unwritable: %d %v", r.Status, r.Body)
	}
	if hasKey(in.keys.KeySet(), kid) {
		t.Fatal("the revoked key is still in the replica's key set")
	}
}

func hasKey(ks *jwks.KeySet, kid string) bool { _, ok := ks.Lookup(kid); return ok }

// TestRevokeKeyBadInput: every refusal is a JSON error with the right
// status, and nothing is published.
func TestRevokeKeyBadInput(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	admin := in.adminToken(t)
	plain := in.post(t, "service", "service-secret", url.Values{"grant_type": {"client_credentials"}}).str("access_token")
	active := in.keys.current().ring.Active().ID
	good := map[string]any{"reason": "test"}
	for _, tt := range []struct {
		name, tok, kid string
		body           any
		status         int
		code           string
	}{
		{"unknown kid", admin, "AAAAAAAAAAAAAAAAAAAAAA", good, 404, "not_found"},
		{"malformed kid", admin, "not a kid!", good, 400, "invalid_request"},
		{"kid too long", admin, strings.Repeat("A", 65), good, 400, "invalid_request"},
		{"no reason", admin, active, map[string]any{}, 400, "invalid_request"},
		{"reason with a control character", admin, active, map[string]any{"reason": "a\x1bb"}, 400, "invalid_request"},
		{"unknown field", admin, active, map[string]any{"reason": "x", "kid": "y"}, 400, "invalid_request"},
		{"not JSON", admin, active, "reason=x", 400, "invalid_request"},
		{"no token", "", active, good, 401, "invalid_token"},
		{"token of a non-admin client", plain, active, good, 401, "invalid_token"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := in.revokeKey(t, tt.tok, tt.kid, tt.body)
			if r.Status != tt.status || r.str("error") != tt.code || r.str("error_description") == "" {
				t.Fatalf("%d %v, want %d %s", r.Status, r.Body, tt.status, tt.code)
			}
		})
	}
	if got := testutilCounter(t, in.metrics.revocationsPublished.WithLabelValues("kid")); got != 0 {
		t.Fatalf("%v kid events published by refused requests", got)
	}
	// Without the admin scope: 403 (TestNoScopeAdminForbidden signs one).
	st := in.keys.current()
	now := time.Now()
	tok, err := st.ring.Active().Sign(&jwks.Claims{Issuer: e.issuer, Subject: "x", Audience: jwks.Audience{e.issuer},
		Expiry: now.Add(time.Minute).Unix(), IssuedAt: now.Unix(), ID: "j", ClientID: "x", Scope: "read"})
	if err != nil {
		t.Fatal(err)
	}
	if r := in.revokeKey(t, tok, active, good); r.Status != 403 {
		t.Fatalf("no admin scope: %d %v", r.Status, r.Body)
	}
	// kind "kid" through the generic endpoint is the same revocation.
	r := in.adminDo(t, admin, "POST", "/admin/v1/revocations", map[string]any{"kind": "kid", "value": "AAAAAAAAAAAAAAAAAAAAAA", "reason": "x"})
	if r.Status != 404 || r.str("error") != "not_found" {
		t.Fatalf("kind kid of an unknown key: %d %v", r.Status, r.Body)
	}
}

// TestRevokeOnlySigningKey: revoking the active key while its successor
// is not in the published bundle needs force.
func TestRevokeOnlySigningKey(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	admin := in.adminToken(t)
	active := in.keys.current().ring.Active().ID
	// A bundle that never reached KV (a failed publish) is the case.
	if err := in.keys.bundles.Purge(t.Context(), bundleKey); err != nil {
		t.Fatal(err)
	}
	r := in.revokeKey(t, admin, active, map[string]any{"reason": "leak"})
	if r.Status != http.StatusConflict || r.str("error") != "only_signing_key" || !strings.Contains(r.str("error_description"), "force") {
		t.Fatalf("without force: %d %v", r.Status, r.Body)
	}
	if hasKey(in.keys.KeySet(), active) == false {
		t.Fatal("refused revocation changed the ring")
	}
	r = in.revokeKey(t, admin, active, map[string]any{"reason": "leak", "force": true})
	if r.Status != http.StatusCreated {
		t.Fatalf("with force: %d %v", r.Status, r.Body)
	}
	if hasKey(in.publishedKeys(t), active) {
		t.Fatal("revoked key still published")
	}
}

// TestRevokeKeyTwoReplicasAtOnce: the same key revoked on two replicas at
// the same moment is one event, and both answer success: 201 for the one
// that stored the event and the one that changed the ring, 200 for one
// that did neither. (The next key:
// the admin tokens are signed by the active one, which a revocation that
// lands first would make the other request's token fail with 401.)
func TestRevokeKeyTwoReplicasAtOnce(t *testing.T) {
	e, _, a, b := twoReplicas(t)
	kid := a.keys.current().ring.Next().ID
	ta, tb := a.adminToken(t), b.adminToken(t)
	var wg sync.WaitGroup
	status := make([]int, 2)
	for i, in := range []*instance{a, b} {
		tok := []string{ta, tb}[i]
		wg.Go(func() { status[i] = in.revokeKey(t, tok, kid, map[string]any{"reason": "leak"}).Status })
	}
	wg.Wait()
	slices.Sort(status)
	if !slices.Equal(status, []int{200, 201}) && !slices.Equal(status, []int{201, 201}) {
		t.Fatalf("statuses %v, want a 201 and a 200", status)
	}
	// One event in the stream.
	js := jetStream(t, e.nats.URL())
	stream, err := js.Stream(t.Context(), revocation.StreamName(e.cfg.NATS.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	subj := revocation.Subject(e.cfg.NATS.Prefix, revocation.KindKID)
	si, err := stream.Info(t.Context(), jetstream.WithSubjectFilter(subj))
	if err != nil {
		t.Fatal(err)
	}
	if n := si.State.Subjects[subj]; n != 1 {
		t.Fatalf("%d kid events stored, want 1", n)
	}
	for _, in := range []*instance{a, b} {
		deadline := time.Now().Add(5 * time.Second)
		for hasKey(in.keys.KeySet(), kid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if hasKey(in.keys.KeySet(), kid) {
			t.Fatal("a replica still holds the revoked key")
		}
	}
}

// TestRevokeKeyRingAheadOfTheSet: a replica whose ring already shows the
// key revoked while its own revocation set holds no event for it (another
// replica revoked it a moment ago) answers with a stored event: the other
// replica's (200) or, as here where only the ring changed, its own (201).
// It used to dereference the missing event and drop the connection: under
// load, one of two concurrent revocations failed that way.
func TestRevokeKeyRingAheadOfTheSet(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	kid := in.keys.current().ring.Next().ID
	// The other replica's step 2, without its event reaching this one.
	if _, err := in.keys.update(t.Context(), func(cur *jwks.Ring) (*jwks.Ring, error) {
		next, _, err := cur.Revoke(kid, time.Now(), in.keyRevocationPolicy(), "leak", "other-replica")
		return next, err
	}); err != nil {
		t.Fatal(err)
	}
	if in.revocations.Has(revocation.KindKID, kid) {
		t.Fatal("the set holds the event already: the case is not set up")
	}
	r := in.revokeKey(t, in.adminToken(t), kid, map[string]any{"reason": "leak"})
	rev, _ := r.Body["revocation"].(map[string]any)
	// This request stored the event (no other replica did here): 201.
	if r.Status != http.StatusCreated || r.Body["already_revoked"] != false || rev["id"] != keyEventID(kid) || rev["sequence"] == float64(0) {
		t.Fatalf("revoking a key the ring holds revoked: %d %v", r.Status, r.Body)
	}
	waitFor(t, "the set holds the kid event", func() bool { return in.revocations.Has(revocation.KindKID, kid) })
}

// TestKeyRevocationFinishedFromItsEvent: a revocation whose event was
// stored but whose ring update never happened (the replica died between
// the two) is finished by the maintenance tick of any replica, and a
// replica asked for a token meanwhile never signs with the dead key.
func TestKeyRevocationFinishedFromItsEvent(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	active := in.keys.current().ring.Active().ID
	now := time.Now()
	ev, err := revocation.NewEvent(revocation.KindKID, active, time.Time{}, now.Add(keyEventRetention), "crashed half way", now)
	if err != nil {
		t.Fatal(err)
	}
	ev.ID, ev.Actor = keyEventID(active), "admin"
	if _, _, err := in.publisher.PublishOnce(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the event applied", func() bool { return in.revocations.Has(revocation.KindKID, active) })
	// A token now: signed by the successor, never by the revoked key.
	r := in.login(t, "")
	if kid := headerKID(t, r.str("access_token")); kid == active {
		t.Fatal("signed with the revoked key")
	}
	if hasKey(in.publishedKeys(t), active) {
		t.Fatal("revoked key still published after a token request finished the revocation")
	}
	rec := keyOf(t, in.adminDo(t, in.adminToken(t), "GET", "/admin/v1/keys", nil).Body, active)
	if rec == nil || rec["state"] != "revoked" || rec["revoked_by"] != "admin" || rec["revoke_reason"] != "crashed half way" {
		t.Fatalf("ring record %v", rec)
	}

	// The same on a replica that signs nothing: its tick finishes it.
	e2 := newEnv(t)
	quiet := e2.start(WithTickInterval(20 * time.Millisecond))
	quiet.waitReady(t)
	kid := quiet.keys.current().ring.Next().ID
	ev2, err := revocation.NewEvent(revocation.KindKID, kid, time.Time{}, now.Add(keyEventRetention), "next key leaked", now)
	if err != nil {
		t.Fatal(err)
	}
	ev2.ID = keyEventID(kid)
	if _, _, err := quiet.publisher.PublishOnce(t.Context(), ev2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the tick to finish the revocation", func() bool { return !hasKey(quiet.keys.KeySet(), kid) })
	if hasKey(quiet.publishedKeys(t), kid) {
		t.Fatal("revoked next key still in the JWKS")
	}
}

// TestClientRevokeDespiteAllEvent is a regression test: a live "all"
// event made the issuer think every jti was revoked already (it asked
// Check with a zero iat), so /oauth2/revoke of a newer token published
// nothing and the token stayed valid.
func TestClientRevokeDespiteAllEvent(t *testing.T) {
	e := newEnv(t)
	clock := newFakeClock()
	in := e.start(WithClock(clock.Now))
	in.waitReady(t)
	admin := in.adminToken(t)
	if r := in.adminDo(t, admin, "POST", "/admin/v1/revocations", map[string]any{"kind": "all", "reason": "reset"}); r.Status != 201 {
		t.Fatalf("revoke all: %d %v", r.Status, r.Body)
	}
	clock.Advance(2 * time.Second)
	login := in.login(t, "")
	req, _ := http.NewRequest("POST", in.url+"/oauth2/revoke", strings.NewReader(url.Values{"token": {login.str("access_token")}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("app", "app-secret")
	if r := do(t, req); r.Status != 200 {
		t.Fatalf("revoke: %d %v", r.Status, r.Body)
	}
	c, err := verifierFor(t, e.issuer, in.publishedKeys(t), clock.Now).Verify(login.str("access_token"))
	if err != nil {
		t.Fatal(err)
	}
	if revoked, reason := in.revocations.Check(c); !revoked || reason != revocation.ReasonToken {
		t.Fatalf("token revoked by its client: Check = %v %q", revoked, reason)
	}
}

func TestLeewayZeroRefused(t *testing.T) {
	cfg := newEnv(t).cfg
	cfg.Leeway = 0
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "leeway must be positive") {
		t.Fatalf("Validate with leeway 0: %v", err)
	}
}
