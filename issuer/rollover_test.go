package issuer

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// These tests run the issuer side of a distribution-key rollover
// (docs/operations.md, "Rolling over the distribution key"): replicas on
// the old and the new key side by side, each trusting the other's key.

// distKeys is one distribution key pair on disk.
type distKeys struct {
	keyFile, pubFile string
	pub              ed25519.PublicKey
}

func writeDistKeys(t *testing.T, dir, name string) distKeys {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pemKey, err := EncodeDistributionKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	pemPub, err := EncodeDistributionPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	d := distKeys{keyFile: filepath.Join(dir, name+".key"), pubFile: filepath.Join(dir, name+".pub"), pub: pub}
	if err := os.WriteFile(d.keyFile, pemKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.pubFile, pemPub, 0o600); err != nil {
		t.Fatal(err)
	}
	return d
}

// rolloverEnv is an env whose replicas start with a distribution key of
// choice and the other key trusted (or not).
type rolloverEnv struct {
	*env
	old, new distKeys
}

func newRolloverEnv(t *testing.T) *rolloverEnv {
	e := newEnv(t)
	// Rotations may happen at once: a test rotates on purpose.
	e.cfg.Keys.PropagationDelay = 0
	return &rolloverEnv{env: e, old: writeDistKeys(t, e.dir, "old"), new: writeDistKeys(t, e.dir, "new")}
}

// start runs a replica signing with sign and trusting the keys in trust
// besides its own.
func (r *rolloverEnv) start(sign distKeys, trust ...distKeys) *instance {
	saved := r.cfg
	defer func() { r.cfg = saved }()
	r.cfg.DistributionKeyFile = sign.keyFile
	r.cfg.TrustedDistributionPublicKeyFiles = nil
	for _, k := range trust {
		r.cfg.TrustedDistributionPublicKeyFiles = append(r.cfg.TrustedDistributionPublicKeyFiles, k.pubFile)
	}
	in := r.env.start()
	in.waitReady(r.t)
	return in
}

func (r *rolloverEnv) js() jetstream.JetStream {
	js := jetStream(r.t, r.nats.URL())
	return js
}

// adminRevoke stores a revocation through in's admin API.
func adminRevoke(t *testing.T, in *instance, kind revocation.Kind, value string) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"kind": string(kind), "value": value, "reason": "rollover test"})
	req, _ := http.NewRequest(http.MethodPost, in.url+"/admin/v1/revocations", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+in.adminToken(t))
	req.Header.Set("Content-Type", "application/json")
	if r := do(t, req); r.Status != http.StatusCreated {
		t.Fatalf("revoke %s %s at %s: %d %v", kind, value, in.url, r.Status, r.Body)
	}
}

// adminStatus is the status of an admin API call with token at in.
func adminStatus(t *testing.T, in *instance, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, in.url+"/admin/v1/keys", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	return do(t, req).Status
}

// TestRolloverReplicasApplyEachOthersEvents: mid-rollover, a replica on
// the new key and one still on the old key each apply the other's events:
// an admin token revoked at one is refused by the other. (With only its
// own key trusted, a replica drops the other's events as forged.)
func TestRolloverReplicasApplyEachOthersEvents(t *testing.T) {
	r := newRolloverEnv(t)
	oldSide := r.start(r.old, r.new)
	newSide := r.start(r.new, r.old)
	for _, c := range []struct {
		name      string
		revokes   *instance
		mustApply *instance
	}{
		{"old key's event at the new-key replica", oldSide, newSide},
		{"new key's event at the old-key replica", newSide, oldSide},
	} {
		t.Run(c.name, func(t *testing.T) {
			victim := c.mustApply.adminToken(t)
			if got := adminStatus(t, c.mustApply, victim); got != http.StatusOK {
				t.Fatalf("admin token before its revocation: %d", got)
			}
			claims, err := c.mustApply.verifier.Verify(victim)
			if err != nil {
				t.Fatal(err)
			}
			adminRevoke(t, c.revokes, revocation.KindJTI, claims.ID)
			waitFor(t, "the other replica refuses the revoked admin token", func() bool {
				return adminStatus(t, c.mustApply, victim) == http.StatusUnauthorized
			})
		})
	}
}

// TestRolloverResignsOldKeyEvents: a replica started on the new key, while
// it trusts the old one, copies every live event of the old key under the
// new key before it is ready, so a verifier that trusts only the new key
// (a sidecar after the rollover) holds every revocation. A second start
// makes no second copy, and a replica that trusts only the new key reads
// them all from the copies.
func TestRolloverResignsOldKeyEvents(t *testing.T) {
	r := newRolloverEnv(t)
	before := r.start(r.old)
	values := []string{"jti-a", "jti-b", "jti-c"}
	for _, v := range values {
		adminRevoke(t, before, revocation.KindJTI, v)
	}
	before.stop()

	js := r.js()
	stream, err := js.Stream(t.Context(), revocation.StreamName(r.cfg.NATS.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	msgs := func() uint64 {
		info, err := stream.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs
	}
	// The three events of the old key only.
	if got := msgs(); got != uint64(len(values)) {
		t.Fatalf("stream holds %d messages before the switch, want %d", got, len(values))
	}

	// What a sidecar trusting only the new key holds from the stream.
	newOnly := func(t *testing.T) *revocation.Set {
		set := revocation.NewSet()
		c := revocation.NewConsumer(js, r.cfg.NATS.Prefix, []ed25519.PublicKey{r.new.pub}, set, revocation.WithLiveSubscription(false))
		testenv.Run(t, 5*time.Second, c.Run)
		waitFor(t, "the new-key consumer caught up", c.CaughtUp)
		return set
	}
	switched := r.start(r.new, r.old) // ready: the copies are stored
	set := newOnly(t)
	for _, v := range values {
		if revoked, _ := set.Check(&jwks.Claims{ID: v}); !revoked {
			t.Fatalf("revocation of %s lost for verifiers that trust only the new key", v)
		}
	}
	if got := msgs(); got != 2*uint64(len(values)) {
		t.Fatalf("stream holds %d messages after the switch, want %d (each event and its copy)", got, 2*len(values))
	}
	switched.stop()

	again := r.start(r.new, r.old)
	if got := msgs(); got != 2*uint64(len(values)) {
		t.Fatalf("a second start copied again: %d messages", got)
	}
	again.stop()

	after := r.start(r.new)
	for _, v := range values {
		if revoked, _ := after.revocations.Check(&jwks.Claims{ID: v}); !revoked {
			t.Fatalf("a replica that trusts only the new key lost the revocation of %s", v)
		}
	}
}

// TestRolloverBundle: replicas on the old and the new key neither fight
// over the bundle nor hold each other's rotations, and the replica that
// switched last leaves a bundle that the new key alone verifies.
func TestRolloverBundle(t *testing.T) {
	r := newRolloverEnv(t)
	oldSide := r.start(r.old, r.new)
	kv, err := r.js().KeyValue(t.Context(), BundleBucket(r.cfg.NATS.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	// read returns the bundle's KV revision, sequence and signer.
	read := func() (rev, seq uint64, signer string) {
		t.Helper()
		e, err := kv.Get(t.Context(), bundleKey)
		if err != nil {
			t.Fatal(err)
		}
		for name, k := range map[string]distKeys{"old": r.old, "new": r.new} {
			if b, err := jwks.VerifyBundle(e.Value(), []ed25519.PublicKey{k.pub}); err == nil {
				return e.Revision(), b.Sequence, name
			}
		}
		t.Fatal("bundle signed by neither key")
		return 0, 0, ""
	}
	_, seq0, signer := read()
	if signer != "old" {
		t.Fatalf("bundle signed by the %s key before the switch", signer)
	}

	newSide := r.start(r.new, r.old)
	rev1, seq1, signer := read()
	if seq1 != seq0 || signer != "new" {
		t.Fatalf("after the new-key replica started: sequence %d (was %d), signed by the %s key; want the same sequence signed by the new key", seq1, seq0, signer)
	}
	ctx := t.Context()
	settle := func() {
		t.Helper()
		for range 3 {
			for _, in := range []*instance{oldSide, newSide} {
				if err := in.keys.tick(ctx); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	settle()
	if rev, _, _ := read(); rev != rev1 {
		t.Fatalf("replicas on two keys rewrote the bundle: revision %d, then %d", rev1, rev)
	}

	for _, c := range []struct {
		name     string
		rotates  *instance
		other    *instance
		signedBy string // the bundle's signer once both have ticked
	}{
		// The old-key replica rotates over a bundle the new key signed; the
		// new-key replica then signs the new sequence once more, and that
		// is the last write.
		{"old-key replica rotates", oldSide, newSide, "new"},
		// The new-key replica rotates over the bundle the old key signed;
		// then the old-key replica signs the sequence once more.
		{"new-key replica rotates", newSide, oldSide, "old"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.rotates == newSide {
				// Make the bundle in KV the old key's: the old-key
				// replica rotates, and the new-key replica has not
				// published that sequence yet.
				if _, err := oldSide.keys.Rotate(ctx, "test"); err != nil {
					t.Fatal(err)
				}
				if _, _, s := read(); s != "old" {
					t.Fatalf("bundle after the old-key replica rotated signed by the %s key", s)
				}
			}
			ring, err := c.rotates.keys.Rotate(ctx, "test")
			if err != nil {
				t.Fatalf("rotation held across distribution keys: %v", err)
			}
			waitFor(t, "the other replica installs the rotated ring", func() bool {
				return c.other.keys.current().ring.Sequence == ring.Sequence
			})
			settle()
			rev, seq, signer := read()
			if seq != ring.Sequence || signer != c.signedBy {
				t.Fatalf("bundle sequence %d signed by the %s key, want %d signed by the %s key", seq, signer, ring.Sequence, c.signedBy)
			}
			settle()
			if again, _, _ := read(); again != rev {
				t.Fatalf("replicas on two keys rewrote the bundle: revision %d, then %d", rev, again)
			}
		})
	}

	// The old-key replica switches last: its start re-signs the bundle
	// that it signed itself before, under the same sequence.
	if _, err := oldSide.keys.Rotate(ctx, "test"); err != nil {
		t.Fatal(err)
	}
	_, seq, signer := read()
	if signer != "old" {
		t.Fatalf("bundle signed by the %s key after an old-key rotation", signer)
	}
	oldSide.stop()
	last := r.start(r.new, r.old)
	if _, got, signer := read(); got != seq || signer != "new" {
		t.Fatalf("after the last switch: sequence %d signed by the %s key, want %d signed by the new key", got, signer, seq)
	}
	// Trusting the new key alone, rotations go on.
	last.stop()
	newSide.stop()
	final := r.start(r.new)
	if _, err := final.keys.Rotate(ctx, "test"); err != nil {
		t.Fatalf("rotation after the rollover: %v", err)
	}
}

// TestTrustedDistributionKeysConfig: the trusted keys are checked before
// the issuer starts, each problem named, and the issuer's own key is
// always trusted, once.
func TestTrustedDistributionKeysConfig(t *testing.T) {
	r := newRolloverEnv(t)
	pemPub, err := os.ReadFile(r.new.pubFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		files   []string
		inline  []string
		want    int    // trusted keys, the own one included
		wantErr string // in the error of New
	}{
		{"none", nil, nil, 1, ""},
		{"file", []string{r.new.pubFile}, nil, 2, ""},
		{"inline PEM and base64 of the same key", nil, []string{string(pemPub), base64Std(r.new.pub)}, 2, ""},
		{"own key listed", []string{r.old.pubFile}, nil, 1, ""},
		{"missing file", []string{filepath.Join(r.dir, "missing.pub")}, nil, 0, "missing.pub"},
		{"private key file", []string{r.new.keyFile}, nil, 0, "new.key"},
		{"bad inline key", nil, []string{"not a key"}, 0, "trusted_distribution_public_keys #1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := r.cfg
			cfg.DistributionKeyFile = r.old.keyFile
			cfg.TrustedDistributionPublicKeyFiles, cfg.TrustedDistributionPublicKeys = c.files, c.inline
			s, err := New(cfg)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("New: %v, want an error naming %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(s.trusted) != c.want || !s.trusted[0].Equal(r.old.pub) {
				t.Fatalf("trusted %d keys (own first: %v), want %d", len(s.trusted), s.trusted[0].Equal(r.old.pub), c.want)
			}
		})
	}
}

func base64Std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
