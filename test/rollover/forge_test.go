package rollover

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

const prefix = "tokenwarden"

// forgeJWS signs v as a distribution-key JWS of typ with key, naming kid
// in the header (the key's own id when kid is ""): a forger may claim to
// be a trusted key.
func forgeJWS(typ, kid string, v any, key ed25519.PrivateKey) ([]byte, error) {
	if kid == "" {
		kid = jwks.DistributionKeyID(key.Public().(ed25519.PublicKey))
	}
	hdr, err := json.Marshal(map[string]string{"alg": "EdDSA", "typ": typ, "kid": kid})
	if err != nil {
		return nil, err
	}
	payload, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	input := base64.RawURLEncoding.EncodeToString(hdr) + "." + base64.RawURLEncoding.EncodeToString(payload)
	return []byte(input + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(key, []byte(input)))), nil
}

// trustedKids are the ids of the distribution public keys in KEYS now.
func (d *deployment) trustedKids() []string {
	var kids []string
	files, _ := filepath.Glob(filepath.Join(d.keys, "*.pub"))
	for _, f := range files {
		b, err := os.ReadFile(f) // #nosec G304 -- the test's own file
		if err != nil {
			continue
		}
		if pub, err := jwks.ParseDistributionPublicKey(string(b)); err == nil {
			kids = append(kids, jwks.DistributionKeyID(pub))
		}
	}
	return kids
}

// waitMetric waits until sample at every process of ps is at least the
// value before plus n, and returns how much it grew in all.
func (d *deployment) waitMetric(ctx context.Context, ps []*proc, before map[*proc]float64, sample string, n float64) (int, error) {
	// A forged event stored in the stream is found by the sidecar's next
	// probe read (every quarter of revocation_max_staleness, jittered: up
	// to about 19 s by default); the live subscription drops it unread.
	deadline := time.Now().Add(45 * time.Second)
	grew := 0
	for _, p := range ps {
		for {
			v, err := d.metric(ctx, p, sample)
			if err == nil && v >= before[p]+n {
				grew += int(v - before[p])
				break
			}
			if time.Now().After(deadline) {
				if err != nil {
					return grew, fmt.Errorf("%s: read %s: %w", p.name, sample, err)
				}
				return grew, fmt.Errorf("%s: %s did not grow by %v within 45s", p.name, sample, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return grew, nil
}

func (d *deployment) metrics(ctx context.Context, ps []*proc, sample string) (map[*proc]float64, error) {
	out := map[*proc]float64{}
	for _, p := range ps {
		v, err := d.metric(ctx, p, sample)
		if err != nil {
			return nil, err
		}
		out[p] = v
	}
	return out, nil
}

// forgeEvents publishes, into the stream, revocations signed by a key
// nobody trusts: of the canary token, of the canary admin token (claiming a
// trusted key's id), and of every token (likewise). Each sidecar must count
// them dropped, and every process must still accept both canaries.
func (r *run) forgeEvents(ctx context.Context) error {
	_, forger, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	kids := r.d.trustedKids()
	now := time.Now()
	type forgery struct {
		kind         revocation.Kind
		value, kid   string
		issuedBefore time.Time
	}
	forgeries := []forgery{
		{revocation.KindJTI, r.canary.jti, "", time.Time{}},
		{revocation.KindJTI, r.canaryAdmin.jti, kids[0], time.Time{}},
		{revocation.KindAll, "", kids[len(kids)-1], now},
	}
	sidecars := upProcs(r.d.sidecars)
	before, err := r.d.metrics(ctx, sidecars, `tokenwarden_revocation_events_dropped_total{reason="forged"}`)
	if err != nil {
		return err
	}
	for _, f := range forgeries {
		e, err := revocation.NewEvent(f.kind, f.value, f.issuedBefore, now.Add(10*time.Minute), "forged", now)
		if err != nil {
			return err
		}
		data, err := forgeJWS(revocation.EventType, f.kid, e, forger)
		if err != nil {
			return err
		}
		if _, err := r.d.js.Publish(ctx, revocation.Subject(prefix, f.kind), data); err != nil {
			return fmt.Errorf("publish a forged event: %w", err)
		}
	}
	r.l.add(&r.l.forgedEvents, len(forgeries))
	grew, err := r.d.waitMetric(ctx, sidecars, before, `tokenwarden_revocation_events_dropped_total{reason="forged"}`, float64(len(forgeries)))
	r.l.add(&r.l.eventsDropped, grew)
	if err != nil {
		return err
	}
	for idx, p := range r.d.sidecars {
		if up, _ := p.state(); up {
			r.checkCanary(ctx, r.canary, p, idx)
		}
	}
	for idx, p := range r.d.issuers {
		if up, _ := p.state(); up {
			r.checkCanary(ctx, r.canaryAdmin, p, idx)
		}
	}
	return nil
}

// checkCanary books a refusal of a canary token as a forged event accepted.
func (r *run) checkCanary(ctx context.Context, t *token, p *proc, _ int) {
	path := "/verify"
	if t.admin {
		path = "/admin/v1/keys"
	}
	code, body, err := r.d.get(ctx, p.url+path, t.access)
	if err != nil {
		r.l.fail(&r.l.errors, "canary at %s: %v", p.name, err)
		return
	}
	if code != 200 {
		r.l.fail(&r.l.forgedEventsAccepted, "%s refused the canary %s token after forged events: %d %s", p.name, kindOf(t), code, body)
	}
}

// forgeBundles writes into the bundle bucket two bundles signed by a key
// nobody trusts, with a far higher sequence and a JWKS holding the forger's
// signing key: one under the forger's key id, one claiming a trusted key's
// id. Each sidecar must count them rejected and refuse a token the forger
// signs, and keep its sequence. Then the genuine bundle is put back (unless
// an issuer wrote a newer one meanwhile): a forged bundle left in the bucket
// would keep restarted sidecars unready until an issuer publishes again.
func (r *run) forgeBundles(ctx context.Context) error {
	kv, err := r.d.js.KeyValue(ctx, prefix+"_jwks")
	if err != nil {
		return err
	}
	entry, err := kv.Get(ctx, "current")
	if err != nil {
		return err
	}
	genuine, rev := entry.Value(), entry.Revision()
	var held struct {
		Seq uint64 `json:"seq"`
	}
	parts := strings.Split(string(genuine), ".")
	if len(parts) != 3 {
		return errors.New("the bundle in KV is not a compact JWS")
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err == nil {
		err = json.Unmarshal(b, &held)
	}
	if err != nil {
		return fmt.Errorf("the bundle in KV does not decode: %w", err)
	}

	_, forger, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	ring, err := jwks.NewRing(time.Now(), jwks.DefaultPolicy())
	if err != nil {
		return err
	}
	ks, err := ring.KeySet()
	if err != nil {
		return err
	}
	doc, err := jwks.Document(ks)
	if err != nil {
		return err
	}
	now := time.Now()
	forgedToken, err := ring.Active().Sign(&jwks.Claims{Issuer: issuerID, Subject: "mallory", Audience: jwks.Audience{audience},
		Expiry: now.Add(5 * time.Minute).Unix(), IssuedAt: now.Unix(), ID: "forged-token", ClientID: "web", Scope: "read"})
	if err != nil {
		return err
	}
	kids := r.d.trustedKids()
	sidecars := upProcs(r.d.sidecars)
	for i, kid := range []string{"", kids[len(kids)-1]} {
		seq := held.Seq + 1000 + uint64(i) // #nosec G115 -- small
		data, err := forgeJWS(jwks.BundleType, kid, &jwks.Bundle{Sequence: seq, IssuedAt: now.Unix(), JWKS: doc}, forger)
		if err != nil {
			return err
		}
		before, err := r.d.metrics(ctx, sidecars, "tokenwarden_jwks_bundles_rejected_total")
		if err != nil {
			return err
		}
		for attempt := 0; ; attempt++ {
			newRev, err := kv.Update(ctx, "current", data, rev)
			if err == nil {
				rev = newRev
				break
			}
			if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) || attempt == 5 {
				return fmt.Errorf("write a forged bundle: %w", err)
			}
			// An issuer published meanwhile: that is the genuine one now.
			if entry, err = kv.Get(ctx, "current"); err != nil {
				return err
			}
			genuine, rev = entry.Value(), entry.Revision()
		}
		r.l.add(&r.l.forgedBundles, 1)
		grew, err := r.d.waitMetric(ctx, sidecars, before, "tokenwarden_jwks_bundles_rejected_total", 1)
		r.l.add(&r.l.bundlesRejected, grew)
		if err != nil {
			return err
		}
		for _, p := range sidecars {
			code, body, err := r.d.get(ctx, p.url+"/verify", forgedToken)
			if err != nil {
				return err
			}
			held, err := r.d.metric(ctx, p, "tokenwarden_jwks_bundle_sequence")
			if err != nil {
				return err
			}
			if code != 401 || uint64(held) == seq {
				r.l.fail(&r.l.forgedBundlesAccepted, "%s after a forged bundle: a forger's token got %d %s, bundle sequence %v (forged %d)", p.name, code, body, held, seq)
			}
		}
	}
	if _, err := kv.Update(ctx, "current", genuine, rev); err != nil && !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return fmt.Errorf("put the genuine bundle back: %w", err)
	}
	return nil
}
