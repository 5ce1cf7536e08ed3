package issuer

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
	"github.com/tokenwarden/tokenwarden/jwks"
)

// TestRingNewer: a higher sequence always replaces the ring held and a
// lower one never does; for the same sequence (a rewrap) the higher KV
// revision wins.
func TestRingNewer(t *testing.T) {
	held := &ringState{ring: &jwks.Ring{Sequence: 10}, rev: 50}
	for name, tc := range map[string]struct {
		seq, rev uint64
		want     bool
	}{
		"higher sequence, higher revision": {11, 51, true},
		"higher sequence, lower revision":  {11, 3, true},
		"same sequence, higher revision":   {10, 51, true},
		"same sequence, same revision":     {10, 50, false},
		"same sequence, lower revision":    {10, 49, false},
		"lower sequence, higher revision":  {9, 99, false},
	} {
		t.Run(name, func(t *testing.T) {
			if got := ringNewer(held, &jwks.Ring{Sequence: tc.seq}, tc.rev); got != tc.want {
				t.Fatalf("ringNewer = %v, want %v", got, tc.want)
			}
		})
	}
}

// conflictKV is a real bucket that runs before() ahead of its first
// Update, so a concurrent change can be placed exactly between a rewrap's
// read and its compare-and-set.
type conflictKV struct {
	jetstream.KeyValue
	before  func()
	updates atomic.Int32
}

func (k *conflictKV) Update(ctx context.Context, key string, value []byte, last uint64) (uint64, error) {
	if k.updates.Add(1) == 1 && k.before != nil {
		k.before()
	}
	return k.KeyValue.Update(ctx, key, value, last)
}

// storedKEKs reads the ring entry and returns its revision, its sequence and
// the KEK id of each key.
func storedKEKs(t *testing.T, kv jetstream.KeyValue) (rev, seq uint64, ids []string) {
	t.Helper()
	e, err := kv.Get(t.Context(), ringKey)
	if err != nil {
		t.Fatal(err)
	}
	var sr storedRing
	if err := json.Unmarshal(e.Value(), &sr); err != nil {
		t.Fatal(err)
	}
	for _, k := range sr.Keys {
		ids = append(ids, k.KEK)
	}
	return e.Revision(), sr.Sequence, ids
}

func allEqual(ids []string, want string) bool {
	for _, id := range ids {
		if id != want {
			return false
		}
	}
	return len(ids) > 0
}

// TestRewrapKeyManager drives rewrap on real KV buckets: a legacy ring gains
// KEK ids, a ring under the previous KEK moves to the current one, a KEK
// this issuer lacks is refused without a write, and a ring changed between
// the read and the write (a concurrent rotation) is re-read and re-sealed.
func TestRewrapKeyManager(t *testing.T) {
	ns := testenv.NATS(t, t.TempDir())
	js := jetStream(t, ns.URL())
	_, dist, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := randomKEK(t), randomKEK(t), randomKEK(t)
	n := 0
	// manager makes a key manager on fresh buckets (or the given ones).
	manager := func(kv, bundles jetstream.KeyValue, now func() time.Time, cur []byte, prev ...[]byte) *keyManager {
		t.Helper()
		keks, err := newKeyEncryptionKeys(cur, prev...)
		if err != nil {
			t.Fatal(err)
		}
		if kv == nil {
			n++
			if kv, err = js.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: fmt.Sprintf("keys%d", n)}); err != nil {
				t.Fatal(err)
			}
			if bundles, err = js.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: fmt.Sprintf("jwks%d", n)}); err != nil {
				t.Fatal(err)
			}
		}
		return &keyManager{kv: kv, bundles: bundles, keks: keks, dist: dist, policy: jwks.DefaultPolicy, now: now,
			log: slog.New(slog.DiscardHandler), metrics: newMetrics()}
	}
	ctx := t.Context()

	t.Run("legacy ring gains KEK ids", func(t *testing.T) {
		m := manager(nil, nil, time.Now, a)
		if err := m.load(ctx); err != nil {
			t.Fatal(err)
		}
		// Strip the ids, as a ring written before they were recorded.
		e, _ := m.kv.Get(ctx, ringKey)
		var sr storedRing
		_ = json.Unmarshal(e.Value(), &sr)
		for i := range sr.Keys {
			sr.Keys[i].KEK = ""
		}
		legacy, _ := json.Marshal(sr)
		if _, err := m.kv.Put(ctx, ringKey, legacy); err != nil {
			t.Fatal(err)
		}
		res, err := m.rewrap(ctx, "test")
		if err != nil || res.Resealed != 2 || res.Keys != 2 || res.KEKID != KEKID(a) || res.Sequence != sr.Sequence {
			t.Fatalf("rewrap = %+v, %v", res, err)
		}
		rev, _, ids := storedKEKs(t, m.kv)
		if !allEqual(ids, KEKID(a)) {
			t.Fatalf("KEK ids %v", ids)
		}
		if res, err := m.rewrap(ctx, "test"); err != nil || res.Resealed != 0 {
			t.Fatalf("second rewrap = %+v, %v", res, err)
		}
		if again, _, _ := storedKEKs(t, m.kv); again != rev {
			t.Fatal("a rewrap with nothing to do wrote the ring")
		}
	})

	t.Run("previous KEK to current", func(t *testing.T) {
		old := manager(nil, nil, time.Now, a)
		if err := old.load(ctx); err != nil {
			t.Fatal(err)
		}
		m := manager(old.kv, old.bundles, time.Now, b, a)
		res, err := m.rewrap(ctx, "test")
		if err != nil || res.Resealed != 2 || res.KEKID != KEKID(b) {
			t.Fatalf("rewrap = %+v, %v", res, err)
		}
		e, _ := m.kv.Get(ctx, ringKey)
		if _, err := old.decode(e.Value()); !errors.Is(err, errUnknownKEK) {
			t.Fatalf("the replica holding only the old KEK: %v", err)
		}
		if _, err := manager(old.kv, old.bundles, time.Now, b).decode(e.Value()); err != nil {
			t.Fatalf("the new KEK alone: %v", err)
		}
	})

	t.Run("missing KEK refused", func(t *testing.T) {
		old := manager(nil, nil, time.Now, a)
		if err := old.load(ctx); err != nil {
			t.Fatal(err)
		}
		rev, _, _ := storedKEKs(t, old.kv)
		m := manager(old.kv, old.bundles, time.Now, c, b)
		if _, err := m.rewrap(ctx, "test"); !errors.Is(err, errUnknownKEK) || !strings.Contains(err.Error(), KEKID(a)) {
			t.Fatalf("rewrap without the ring's KEK: %v", err)
		}
		if again, _, ids := storedKEKs(t, old.kv); again != rev || !allEqual(ids, KEKID(a)) {
			t.Fatal("a refused rewrap wrote the ring")
		}
	})

	t.Run("concurrent rotation", func(t *testing.T) {
		// A replica on the old KEK rotates between the rewrap's read and
		// its write; the rewrap re-reads and re-seals the rotated ring.
		clk := newFakeClock()
		old := manager(nil, nil, clk.Now, a)
		if err := old.load(ctx); err != nil {
			t.Fatal(err)
		}
		if err := old.publish(ctx); err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Hour) // the next key may sign
		_, seq, _ := storedKEKs(t, old.kv)
		ckv := &conflictKV{KeyValue: old.kv}
		var rotateErr error
		ckv.before = func() { _, rotateErr = old.Rotate(ctx, "test") }
		m := manager(ckv, old.bundles, clk.Now, b, a)
		res, err := m.rewrap(ctx, "test")
		if rotateErr != nil {
			t.Fatal(rotateErr)
		}
		if err != nil || res.Sequence != seq+1 || res.Resealed != 3 || res.Keys != 3 || ckv.updates.Load() != 2 {
			t.Fatalf("rewrap = %+v, %v after %d updates; want the rotated ring (sequence %d) re-sealed on the second", res, err, ckv.updates.Load(), seq+1)
		}
		if _, got, ids := storedKEKs(t, old.kv); got != seq+1 || !allEqual(ids, KEKID(b)) {
			t.Fatalf("stored ring: sequence %d, KEK ids %v", got, ids)
		}
	})
}

// traffic issues tokens against every replica in a loop and verifies each
// the way a sidecar does (against the signed bundle in NATS) and with every
// replica's own verifier. A replica is replaced the way a rolling update
// does it: the new one is ready before the old one stops, and the swap
// waits for requests in flight.
type traffic struct {
	e       *env
	clock   *fakeClock
	bundles jetstream.KeyValue

	mu       sync.RWMutex // held for reading by each request, for writing by swap and pause
	replicas []*instance

	ok       atomic.Int64
	failMu   sync.Mutex
	failures []string
}

func (tr *traffic) run(ctx context.Context) {
	hc := &http.Client{Timeout: 10 * time.Second}
	for i := 0; ctx.Err() == nil; i++ {
		tr.mu.RLock()
		in := tr.replicas[i%len(tr.replicas)]
		err := tr.once(ctx, hc, in, tr.replicas)
		tr.mu.RUnlock()
		if err != nil && ctx.Err() == nil {
			tr.failMu.Lock()
			tr.failures = append(tr.failures, fmt.Sprintf("replica %d: %v", i%len(tr.replicas), err))
			tr.failMu.Unlock()
			continue
		}
		tr.ok.Add(1)
	}
}

func (tr *traffic) once(ctx context.Context, hc *http.Client, in *instance, all []*instance) error {
	form := url.Values{"grant_type": {"client_credentials"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, in.url+"/oauth2/token", strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("service", "service-secret")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("token request: %w", err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("token request: %d %s", resp.StatusCode, body)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &tok); err != nil {
		return fmt.Errorf("token response: %w", err)
	}
	e, err := tr.bundles.Get(ctx, bundleKey)
	if err != nil {
		return fmt.Errorf("read bundle: %w", err)
	}
	b, err := jwks.VerifyBundle(e.Value(), []ed25519.PublicKey{in.DistributionPublicKey()})
	if err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	ks, err := b.KeySet()
	if err != nil {
		return fmt.Errorf("bundle keys: %w", err)
	}
	v, err := jwks.NewVerifier(jwks.VerifierConfig{Issuer: tr.e.issuer, Audience: []string{"demo-api"}, Now: tr.clock.Now}, jwks.StaticKeys(ks))
	if err != nil {
		return err
	}
	if _, err := v.Verify(tok.AccessToken); err != nil {
		return fmt.Errorf("verify against the published bundle (sequence %d): %w", b.Sequence, err)
	}
	for i, other := range all {
		if _, err := other.verifyOwn(ctx, other.anyAudience, tok.AccessToken); err != nil {
			return fmt.Errorf("verify on replica %d: %w", i, err)
		}
	}
	return nil
}

// swap puts in at slot i once no request uses the old replica, and stops
// the old one.
func (tr *traffic) swap(i int, in *instance) {
	tr.mu.Lock()
	old := tr.replicas[i]
	tr.replicas[i] = in
	tr.mu.Unlock()
	old.stop()
}

// pause runs f while no request is in flight (a fake-clock jump between a
// token's issue and its check would expire it).
func (tr *traffic) pause(f func()) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	f()
}

// progress waits until n more rounds have passed, failing the test if any
// round failed.
func (tr *traffic) progress(t *testing.T, n int64) {
	t.Helper()
	want := tr.ok.Load() + n
	deadline := time.Now().Add(30 * time.Second)
	for tr.ok.Load() < want {
		tr.failMu.Lock()
		f := tr.failures
		tr.failMu.Unlock()
		if len(f) > 0 {
			t.Fatalf("token traffic failed: %v", f)
		}
		if time.Now().After(deadline) {
			t.Fatalf("token traffic stalled at %d rounds", tr.ok.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// adminCall sends an admin request with an admin token of in.
func adminCall(t *testing.T, in *instance, method, path string) tokenResult {
	t.Helper()
	req, _ := http.NewRequest(method, in.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+in.adminToken(t))
	return do(t, req)
}

// readyz returns the status and checks of in's /readyz.
func readyz(t *testing.T, in *instance) (int, map[string]string) {
	t.Helper()
	r := do(t, mustReq(t, http.MethodGet, in.url+"/readyz"))
	checks := map[string]string{}
	if m, ok := r.Body["checks"].(map[string]any); ok {
		for k, v := range m {
			checks[k], _ = v.(string)
		}
	}
	return r.Status, checks
}

// metricLine fetches /metrics of in and returns the line of the named
// unlabelled metric.
func metricLine(t *testing.T, in *instance, name string) string {
	t.Helper()
	resp, err := http.Get(in.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, name+" ") {
			return line
		}
	}
	t.Fatalf("no metric %s", name)
	return ""
}

// startKEK starts a replica with the given current and previous KEKs and
// waits until it is ready.
func (e *env) startKEK(t *testing.T, clock *fakeClock, cur []byte, prev [][]byte, opts ...Option) *instance {
	t.Helper()
	saved := e.cfg
	defer func() { e.cfg = saved }()
	e.cfg.KeyEncryptionKey = b64(cur)
	e.cfg.PreviousKeyEncryptionKeys = nil
	for _, p := range prev {
		e.cfg.PreviousKeyEncryptionKeys = append(e.cfg.PreviousKeyEncryptionKeys, b64(p))
	}
	in := e.start(append([]Option{WithClock(clock.Now)}, opts...)...)
	in.waitReady(t)
	return in
}

// TestKEKRotationInPlace is the operations guide's procedure with two
// replicas, under continuous token traffic to both that must never fail:
// both on KEK A; one restarted with B and previous A; rewrap (idempotent,
// bundle untouched); the replica still on A keeps signing and reports the
// ring it cannot open; it is restarted with B alone and loads the ring;
// then a rotation on each replica works.
func TestKEKRotationInPlace(t *testing.T) {
	e := newEnv(t)
	clock := newFakeClock()
	kekA, err := base64.StdEncoding.DecodeString(e.cfg.KeyEncryptionKey)
	if err != nil {
		t.Fatal(err)
	}
	kekB := randomKEK(t)
	idA, idB := KEKID(kekA), KEKID(kekB)
	r1 := e.startKEK(t, clock, kekA, nil)
	r2 := e.startKEK(t, clock, kekA, nil)

	js := jetStream(t, e.nats.URL())
	keysKV, err := js.KeyValue(t.Context(), "tokenwarden_keys")
	if err != nil {
		t.Fatal(err)
	}
	bundlesKV, err := js.KeyValue(t.Context(), BundleBucket("tokenwarden"))
	if err != nil {
		t.Fatal(err)
	}
	tr := &traffic{e: e, clock: clock, bundles: bundlesKV, replicas: []*instance{r1, r2}}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); tr.run(ctx) }()
	t.Cleanup(func() { stop(); <-done })
	tr.progress(t, 4)

	rev0, seq, ids := storedKEKs(t, keysKV)
	if !allEqual(ids, idA) {
		t.Fatalf("first ring's KEK ids %v, want %s", ids, idA)
	}
	bundle0, err := bundlesKV.Get(t.Context(), bundleKey)
	if err != nil {
		t.Fatal(err)
	}

	// 1. Replica 1 restarts with B, keeping A as the previous KEK. Loading
	// writes nothing: the ring is still sealed under A.
	logs := &testenv.Buffer{}
	r1 = e.startKEK(t, clock, kekB, [][]byte{kekA}, WithLogger(slog.New(slog.NewJSONHandler(logs, nil))))
	tr.swap(0, r1)
	tr.progress(t, 4)
	if rev, _, ids := storedKEKs(t, keysKV); rev != rev0 || !allEqual(ids, idA) {
		t.Fatalf("a restart with a new KEK rewrote the ring: revision %d → %d, ids %v", rev0, rev, ids)
	}

	// 2. Rewrap: every key re-sealed under B, same sequence, no new bundle.
	r := adminCall(t, r1, http.MethodPost, "/admin/v1/keys/rewrap")
	if r.Status != http.StatusOK || r.Body["kek_id"] != idB || r.Body["resealed"] != 2.0 || r.Body["keys"] != 2.0 || r.Body["sequence"] != float64(seq) {
		t.Fatalf("rewrap: %d %v", r.Status, r.Body)
	}
	rev1, seq1, ids := storedKEKs(t, keysKV)
	if rev1 <= rev0 || seq1 != seq || !allEqual(ids, idB) {
		t.Fatalf("after rewrap: revision %d (was %d), sequence %d (was %d), ids %v", rev1, rev0, seq1, seq, ids)
	}
	if b, err := bundlesKV.Get(t.Context(), bundleKey); err != nil || b.Revision() != bundle0.Revision() {
		t.Fatalf("a rewrap changed the bundle sidecars see: %v", err)
	}
	if st := r1.keys.current(); st.rev != rev1 || st.ring.Sequence != seq {
		t.Fatalf("replica 1 holds revision %d sequence %d, want the re-sealed ring %d", st.rev, st.ring.Sequence, rev1)
	}
	if !strings.Contains(logs.String(), `"msg":"audit","action":"keys.rewrap","actor":"admin","target":"`+idB+`","reason":"","result":"ok: re-sealed 2 of 2 keys"`) {
		t.Fatalf("no audit line for the rewrap in:\n%s", logs)
	}
	// Idempotent: nothing left to re-seal, nothing written.
	if r := adminCall(t, r1, http.MethodPost, "/admin/v1/keys/rewrap"); r.Status != http.StatusOK || r.Body["resealed"] != 0.0 || r.Body["kek_id"] != idB {
		t.Fatalf("second rewrap: %d %v", r.Status, r.Body)
	}
	if rev, _, _ := storedKEKs(t, keysKV); rev != rev1 {
		t.Fatal("the second rewrap wrote the ring")
	}

	// 3. Replica 2, still on A alone, cannot open the re-sealed ring. It
	// holds the same keys, so it keeps signing and stays ready, and says so.
	waitFor(t, "replica 2 to report the ring it cannot open", func() bool { return r2.keys.unreadable.Load() != nil })
	if code, checks := readyz(t, r2); code != http.StatusOK || !strings.Contains(checks["key_encryption"], "restart it with the current key-encryption key") {
		t.Fatalf("replica 2 /readyz: %d %v", code, checks)
	}
	if got := metricLine(t, r2, "tokenwarden_key_ring_unreadable"); got != "tokenwarden_key_ring_unreadable 1" {
		t.Fatalf("replica 2: %s", got)
	}
	if got := metricLine(t, r1, "tokenwarden_key_ring_unreadable"); got != "tokenwarden_key_ring_unreadable 0" {
		t.Fatalf("replica 1: %s", got)
	}
	// A rewrap there is refused: it cannot open what it would re-seal.
	if r := adminCall(t, r2, http.MethodPost, "/admin/v1/keys/rewrap"); r.Status != http.StatusConflict || r.Body["error"] != "key_encryption_key_missing" {
		t.Fatalf("rewrap on the replica without B: %d %v", r.Status, r.Body)
	}
	tr.progress(t, 4)

	// 4. Replica 2 restarts with B alone: A is gone from every replica.
	r2 = e.startKEK(t, clock, kekB, nil)
	tr.swap(1, r2)
	if st := r2.keys.current(); st.rev != rev1 {
		t.Fatalf("replica 2 loaded revision %d, want %d", st.rev, rev1)
	}
	if got := metricLine(t, r2, "tokenwarden_key_ring_unreadable"); got != "tokenwarden_key_ring_unreadable 0" {
		t.Fatalf("restarted replica 2: %s", got)
	}
	tr.progress(t, 4)

	// 5. A rotation on each replica works, and both sign with the new key.
	for i, in := range []*instance{r1, r2} {
		tr.pause(func() { clock.Advance(time.Hour) })
		r := adminCall(t, in, http.MethodPost, "/admin/v1/keys/rotate")
		if r.Status != http.StatusOK {
			t.Fatalf("rotation on replica %d: %d %v", i+1, r.Status, r.Body)
		}
		want := in.keys.current().ring
		waitFor(t, "both replicas to hold the rotated ring", func() bool {
			return r1.keys.current().ring.Sequence == want.Sequence && r2.keys.current().ring.Sequence == want.Sequence
		})
		for j, other := range []*instance{r1, r2} {
			if kid := headerKID(t, other.login(t, "").str("access_token")); kid != want.Active().ID {
				t.Fatalf("after rotation %d, replica %d signs with %s, want %s", i+1, j+1, kid, want.Active().ID)
			}
		}
		tr.progress(t, 4)
	}
	if _, got, ids := storedKEKs(t, keysKV); got != seq+2 || !allEqual(ids, idB) {
		t.Fatalf("ring after two rotations: sequence %d, ids %v", got, ids)
	}
	stop()
	<-done
	if len(tr.failures) > 0 || tr.ok.Load() < 24 {
		t.Fatalf("%d rounds ok, failures: %v", tr.ok.Load(), tr.failures)
	}
	t.Logf("%d token rounds (issue, verify against the bundle and on every replica), 0 failures", tr.ok.Load())
}

// TestReplicaWithoutNewKEKBehind: a replica on the old KEK alone meets a
// ring that moved on (a rotation by a replica on the new KEK). It keeps
// signing with what it holds, but its ring is behind for good, so it turns
// unready; restarted with the new KEK it loads the ring and is ready again.
func TestReplicaWithoutNewKEKBehind(t *testing.T) {
	e := newEnv(t)
	clock := newFakeClock()
	kekA, _ := base64.StdEncoding.DecodeString(e.cfg.KeyEncryptionKey)
	kekB := randomKEK(t)
	b := e.startKEK(t, clock, kekA, nil) // makes the ring, under A
	a := e.startKEK(t, clock, kekB, [][]byte{kekA})
	held := b.keys.current().ring

	clock.Advance(time.Hour)
	ring, err := a.keys.Rotate(t.Context(), "test")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "replica b to report the ring it cannot open", func() bool { return b.keys.unreadable.Load() != nil })
	code, checks := readyz(t, b)
	if code != http.StatusServiceUnavailable || checks["keys"] != "ok" ||
		!strings.Contains(checks["key_encryption"], fmt.Sprintf("(sequence %d) is sealed under a key-encryption key this replica does not hold, and this replica's ring is behind", ring.Sequence)) {
		t.Fatalf("replica b /readyz: %d %v", code, checks)
	}
	if got := metricLine(t, b, "tokenwarden_key_ring_unreadable"); got != "tokenwarden_key_ring_unreadable 1" {
		t.Fatal(got)
	}
	// Still signing (no wait for readiness), with the key it holds, which
	// the published bundle still has (now retired).
	tok := b.login(t, "").str("access_token")
	if kid := headerKID(t, tok); kid != held.Active().ID {
		t.Fatalf("replica b signs with %s, want %s", kid, held.Active().ID)
	}
	if _, err := verifierFor(t, e.issuer, a.publishedKeys(t), clock.Now).Verify(tok); err != nil {
		t.Fatal(err)
	}

	b2 := e.startKEK(t, clock, kekB, [][]byte{kekA})
	if got := b2.keys.current().ring.Sequence; got != ring.Sequence {
		t.Fatalf("restarted replica holds sequence %d, want %d", got, ring.Sequence)
	}
	if code, checks := readyz(t, b2); code != http.StatusOK || checks["keys"] != "ok" || checks["key_encryption"] != "" {
		t.Fatalf("restarted replica /readyz: %d %v", code, checks)
	}
}
