package issuer

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/natsconn"
	"github.com/tokenwarden/tokenwarden/jwks"
)

// The key ring lives in one KV entry. Every replica watches it; a change is
// made by compare-and-set on the entry's revision, so of two replicas that
// rotate at once exactly one succeeds and the other re-reads the winner's
// ring. That CAS is the rotation lock: there is no lease to expire.
const ringKey = "ring"

// bundleKey is the KV key sidecars watch in the <prefix>_jwks bucket.
const bundleKey = "current"

type storedRing struct {
	Sequence uint64      `json:"sequence"`
	Keys     []storedKey `json:"keys"`
	// Rewrapped records the last re-sealing under a new key-encryption
	// key, for audit. A rewrap changes nothing else, so the ring's
	// sequence and keys do not show it.
	Rewrapped *rewrapRecord `json:"rewrapped,omitempty"`
}

type rewrapRecord struct {
	At  time.Time `json:"at"`
	By  string    `json:"by"`
	KEK string    `json:"kek_id"`
}

type storedKey struct {
	ID          string    `json:"kid"`
	Alg         string    `json:"alg"`
	State       string    `json:"state"`
	CreatedAt   time.Time `json:"created_at"`
	ActivatedAt time.Time `json:"activated_at,omitzero"`
	RetiredAt   time.Time `json:"retired_at,omitzero"`
	RemoveAt    time.Time `json:"remove_at,omitzero"`
	ActivatedBy string    `json:"activated_by,omitempty"`
	// A revoked key keeps only its record: its private half is destroyed.
	RevokedAt    time.Time `json:"revoked_at,omitzero"`
	RevokedBy    string    `json:"revoked_by,omitempty"`
	RevokeReason string    `json:"revoke_reason,omitempty"`
	Sealed       []byte    `json:"sealed_private_key,omitempty"`
	// KEK is the id of the key-encryption key that sealed the private key
	// (KEKID); empty in rings written before ids were recorded.
	KEK string `json:"kek_id,omitempty"`
}

// ringState is an immutable snapshot the hot path reads with one atomic load.
type ringState struct {
	ring   *jwks.Ring
	keys   *jwks.KeySet
	doc    []byte // the JWKS document
	rev    uint64 // KV revision the ring was read at
	loaded time.Time
}

// keyManager keeps this replica's view of the ring current, advances it on
// schedule and publishes the signed bundle after every change.
type keyManager struct {
	kv      jetstream.KeyValue // <prefix>_keys
	bundles jetstream.KeyValue // <prefix>_jwks
	keks    *keyEncryptionKeys
	dist    ed25519.PrivateKey
	// trusted are the distribution public keys whose bundles count: dist's
	// own first, then those of a distribution-key rollover. Nil: dist's.
	trusted []ed25519.PublicKey
	policy  func() jwks.Policy
	now     func() time.Time
	log     *slog.Logger
	metrics *metrics

	state     atomic.Pointer[ringState]
	publishMu sync.Mutex
	published uint64 // highest bundle sequence known to be in KV

	// unreadable is the newest ring seen in KV that this replica could not
	// open for want of its key-encryption key (rewrap.go); nil when none.
	unreadable atomic.Pointer[unreadableRing]

	refreshMu   sync.Mutex
	lastRefresh time.Time
	refreshing  chan struct{} // closed when the running refresh ends; nil when none runs
}

// refreshEvery bounds how often refresh reads the ring from KV, and
// refreshTimeout how long one read may take.
const (
	refreshEvery   = time.Second
	refreshTimeout = 2 * time.Second
)

// KeySet implements jwks.KeySource for the issuer's own verifier.
func (m *keyManager) KeySet() *jwks.KeySet {
	if st := m.state.Load(); st != nil {
		return st.keys
	}
	return nil
}

func (m *keyManager) current() *ringState { return m.state.Load() }

func (m *keyManager) encode(r *jwks.Ring) ([]byte, error) {
	sr := storedRing{Sequence: r.Sequence}
	for _, k := range r.Keys {
		sk := storedKey{ID: k.ID, Alg: string(k.Alg), State: string(k.State), CreatedAt: k.CreatedAt,
			ActivatedAt: k.ActivatedAt, RetiredAt: k.RetiredAt, RemoveAt: k.RemoveAt, ActivatedBy: k.ActivatedBy,
			RevokedAt: k.RevokedAt, RevokedBy: k.RevokedBy, RevokeReason: k.RevokeReason}
		if k.State != jwks.StateRevoked {
			der, err := k.MarshalPrivate()
			if err != nil {
				return nil, err
			}
			if sk.Sealed, sk.KEK, err = m.keks.seal(k.ID, der); err != nil {
				return nil, err
			}
		}
		sr.Keys = append(sr.Keys, sk)
	}
	return json.Marshal(sr)
}

func (m *keyManager) decode(b []byte) (*jwks.Ring, error) {
	var sr storedRing
	if err := json.Unmarshal(b, &sr); err != nil {
		return nil, fmt.Errorf("decode key ring: %w", err)
	}
	r := &jwks.Ring{Sequence: sr.Sequence}
	for _, s := range sr.Keys {
		alg, err := jwks.ParseAlgorithm(s.Alg)
		if err != nil {
			return nil, fmt.Errorf("key %s: %w", s.ID, err)
		}
		k := &jwks.Key{ID: s.ID, Alg: alg, State: jwks.State(s.State), CreatedAt: s.CreatedAt,
			ActivatedAt: s.ActivatedAt, RetiredAt: s.RetiredAt, RemoveAt: s.RemoveAt, ActivatedBy: s.ActivatedBy,
			RevokedAt: s.RevokedAt, RevokedBy: s.RevokedBy, RevokeReason: s.RevokeReason}
		if k.State != jwks.StateRevoked {
			der, err := m.keks.unseal(s.ID, s.KEK, s.Sealed)
			if err != nil {
				return nil, err
			}
			if k, err = k.WithPrivate(der); err != nil {
				return nil, err
			}
		}
		r.Keys = append(r.Keys, k)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// install makes r the ring this replica signs with, unless it already holds
// a newer one (watch updates and CAS results can arrive in either order).
// Newer is ringNewer's rule: a re-sealed ring keeps its sequence.
func (m *keyManager) install(r *jwks.Ring, rev uint64) error {
	for {
		old := m.state.Load()
		if old != nil && !ringNewer(old, r, rev) {
			return nil
		}
		ks, err := r.KeySet()
		if err != nil {
			return err
		}
		doc, err := jwks.Document(ks)
		if err != nil {
			return err
		}
		st := &ringState{ring: r, keys: ks, doc: doc, rev: rev, loaded: m.now()}
		if m.state.CompareAndSwap(old, st) {
			m.metrics.ringSequence.Set(float64(r.Sequence))
			m.readable(rev)
			if old != nil && old.ring.Sequence != r.Sequence {
				m.log.Info("key ring updated", "sequence", r.Sequence, "active_kid", r.Active().ID, "next_kid", r.Next().ID)
			}
			return nil
		}
	}
}

// load reads the ring from KV, creating the first ring if there is none.
func (m *keyManager) load(ctx context.Context) error {
	for {
		e, err := m.kv.Get(ctx, ringKey)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			r, err := jwks.NewRing(m.now(), m.policy())
			if err != nil {
				return err
			}
			// Sidecars accept only a higher sequence than the one they hold
			// (on disk, too). A ring made after the bucket was lost must
			// still outrank every bundle published before, so its sequence
			// starts at the clock (milliseconds), not at 1.
			r.Sequence = max(r.Sequence, uint64(m.now().UnixMilli())) // #nosec G115 -- after 1970
			b, err := m.encode(r)
			if err != nil {
				return err
			}
			rev, err := m.kv.Create(ctx, ringKey, b)
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // another replica made the first ring; read theirs
			}
			if err != nil {
				return fmt.Errorf("store first key ring: %w", err)
			}
			m.log.Info("created key ring", "active_kid", r.Active().ID, "alg", r.Active().Alg)
			return m.install(r, rev)
		}
		if err != nil {
			return fmt.Errorf("read key ring: %w", err)
		}
		r, err := m.decode(e.Value())
		if err != nil {
			return err
		}
		return m.install(r, e.Revision())
	}
}

// read returns the newest ring in KV (and installs it), for decisions
// that must not rest on a watch that may lag.
func (m *keyManager) read(ctx context.Context) (*jwks.Ring, error) {
	e, err := m.kv.Get(ctx, ringKey)
	if err != nil {
		return nil, fmt.Errorf("read key ring: %w", err)
	}
	r, err := m.decode(e.Value())
	if err != nil {
		return nil, err
	}
	if err := m.install(r, e.Revision()); err != nil {
		return nil, err
	}
	return r, nil
}

// errBundleNotPublished is update's error when the ring changed but the
// bundle of the new ring could not be published: the change stands, and
// every maintenance tick publishes the bundle until it is out. A rotation
// waits for a published bundle that holds the next key (nextPublished);
// only a key revocation of the active key, forced or finished from its
// event, makes a key sign without one, and says so (cut short).
var errBundleNotPublished = errors.New("key ring changed, JWKS bundle not published yet (the next maintenance tick retries)")

// update applies change to the newest ring and stores the result with CAS,
// retrying on conflicts. change returns (nil, nil) when there is nothing to
// do. It returns the ring that is current afterwards, also with
// errBundleNotPublished.
func (m *keyManager) update(ctx context.Context, change func(*jwks.Ring) (*jwks.Ring, error)) (*jwks.Ring, error) {
	for attempt := 0; attempt < 5; attempt++ {
		e, err := m.kv.Get(ctx, ringKey)
		if err != nil {
			return nil, fmt.Errorf("read key ring: %w", err)
		}
		cur, err := m.decode(e.Value())
		if err != nil {
			return nil, err
		}
		if err := m.install(cur, e.Revision()); err != nil {
			return nil, err
		}
		next, err := change(cur)
		if err != nil {
			return nil, err
		}
		if next == nil {
			return cur, nil
		}
		b, err := m.encode(next)
		if err != nil {
			return nil, err
		}
		if b, err = keepRewrapRecord(e.Value(), b); err != nil {
			return nil, err
		}
		rev, err := m.kv.Update(ctx, ringKey, b, e.Revision())
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue // another replica changed the ring first
		}
		if err != nil {
			return nil, fmt.Errorf("store key ring: %w", err)
		}
		if err := m.install(next, rev); err != nil {
			return nil, err
		}
		if err := m.publish(ctx); err != nil {
			return next, fmt.Errorf("%w: %w", errBundleNotPublished, err)
		}
		return next, nil
	}
	return nil, errors.New("key ring: too many concurrent changes, try again")
}

// keepRewrapRecord carries the audit record of the last rewrap from the
// stored ring old into the encoded ring b, which encode cannot know of.
func keepRewrapRecord(old, b []byte) ([]byte, error) {
	var o struct {
		Rewrapped *rewrapRecord `json:"rewrapped"`
	}
	if err := json.Unmarshal(old, &o); err != nil || o.Rewrapped == nil {
		return b, nil //nolint:nilerr // no readable record to keep: the new ring goes without one
	}
	var sr storedRing
	if err := json.Unmarshal(b, &sr); err != nil {
		return nil, fmt.Errorf("decode key ring: %w", err)
	}
	sr.Rewrapped = o.Rewrapped
	return json.Marshal(sr)
}

// nextPublished reports whether the bundle in KV holds cur's next key.
// The propagation delay is counted from the key's creation, on the
// assumption that the bundle holding it went out then. When that publish
// failed (the bundle bucket without a stream leader, an issuer killed
// between its ring write and its bundle write, a cancelled request), a
// rotation would make a key sign that no sidecar holds, and every sidecar
// would refuse its tokens with "unknown key id". Such a key waits until a
// maintenance tick has published it.
func (m *keyManager) nextPublished(ctx context.Context, cur *jwks.Ring) (bool, error) {
	e, err := m.bundles.Get(ctx, bundleKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read JWKS bundle: %w", err)
	}
	// A bundle signed by any trusted key counts: mid-rollover, a replica
	// on the new key must not hold rotations over the bundle of one still
	// on the old key (sidecars trust both then).
	b, err := jwks.VerifyBundle(e.Value(), m.trustedKeys())
	if err != nil {
		return false, nil //nolint:nilerr // not a bundle of ours: the key is not published
	}
	ks, err := b.KeySet()
	if err != nil {
		return false, nil //nolint:nilerr // likewise
	}
	_, ok := ks.Lookup(cur.Next().ID)
	return ok, nil
}

// Rotate rotates the ring now, for actor (the admin client id).
func (m *keyManager) Rotate(ctx context.Context, actor string) (*jwks.Ring, error) {
	r, err := m.update(ctx, func(cur *jwks.Ring) (*jwks.Ring, error) {
		next, err := cur.Rotate(m.now(), m.policy())
		if err != nil {
			return nil, err
		}
		next.Active().ActivatedBy = actor
		if ok, err := m.nextPublished(ctx, cur); err != nil || !ok {
			if err == nil {
				err = fmt.Errorf("%w: key %s is not in the published bundle yet", jwks.ErrNextNotReady, cur.Next().ID)
			}
			return nil, err
		}
		return next, nil
	})
	if errors.Is(err, errBundleNotPublished) {
		m.log.Warn("key ring rotated, bundle not published", "err", err)
		err = nil
	}
	if err == nil {
		m.metrics.rotations.WithLabelValues("on_demand").Inc()
		m.log.Info("key ring rotated on demand", "active_kid", r.Active().ID, "actor", actor)
	}
	return r, err
}

// tick applies due transitions and makes sure the bundle in KV is current.
func (m *keyManager) tick(ctx context.Context) error {
	rotatedBy := uint64(0)
	_, err := m.update(ctx, func(cur *jwks.Ring) (*jwks.Ring, error) {
		next, changed, err := cur.Advance(m.now(), m.policy())
		if err != nil || !changed {
			return nil, err
		}
		if next.Active().ID != cur.Active().ID {
			if ok, err := m.nextPublished(ctx, cur); err != nil || !ok {
				// Hold the transition; the publish below puts the key out.
				m.log.Warn("rotation held: the next key is not in the published bundle yet", "next_kid", cur.Next().ID, "err", err)
				return nil, nil
			}
			rotatedBy = next.Sequence
		}
		return next, nil
	})
	// A change whose bundle was not published is still a change: count
	// it; the publish below tries again.
	if err != nil && !errors.Is(err, errBundleNotPublished) {
		return err
	}
	if rotatedBy != 0 {
		m.metrics.rotations.WithLabelValues("periodic").Inc()
		m.log.Info("key ring rotated on schedule", "sequence", rotatedBy)
	}
	return m.publish(ctx)
}

// publish writes the signed bundle of the current ring unless KV already
// holds one at least as new. CAS on the bundle entry keeps an older bundle
// from ever replacing a newer one, whatever order replicas publish in.
func (m *keyManager) publish(ctx context.Context) error {
	m.publishMu.Lock()
	defer m.publishMu.Unlock()
	st := m.state.Load()
	if st == nil || st.ring.Sequence <= m.published {
		return nil
	}
	b := &jwks.Bundle{Sequence: st.ring.Sequence, IssuedAt: m.now().Unix(), JWKS: st.doc}
	signed, err := jwks.SignBundle(b, m.dist)
	if err != nil {
		return err
	}
	for attempt := 0; attempt < 5; attempt++ {
		e, err := m.bundles.Get(ctx, bundleKey)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			_, err = m.bundles.Create(ctx, bundleKey, signed)
		case err != nil:
			return fmt.Errorf("read JWKS bundle: %w", err)
		default:
			if have, verr := jwks.VerifyBundle(e.Value(), m.trustedKeys()); verr == nil && m.keeps(e.Value(), have, b.Sequence) {
				m.published = have.Sequence
				return nil
			}
			_, err = m.bundles.Update(ctx, bundleKey, signed, e.Revision())
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return fmt.Errorf("publish JWKS bundle: %w", err)
		}
		m.published = b.Sequence
		m.metrics.bundleSequence.Set(float64(b.Sequence))
		m.log.Info("published JWKS bundle", "sequence", b.Sequence, "keys", st.keys.Len())
		return nil
	}
	return errors.New("publish JWKS bundle: too many concurrent writers")
}

func (m *keyManager) trustedKeys() []ed25519.PublicKey {
	if len(m.trusted) == 0 {
		return []ed25519.PublicKey{m.dist.Public().(ed25519.PublicKey)}
	}
	return m.trusted
}

// keeps reports whether have, a bundle in KV that verified against a
// trusted key, may stay rather than be replaced by this replica's bundle
// of sequence seq: when it is newer, or as new and signed by this
// replica's own key. A bundle as new signed by another trusted key (the
// other side of a distribution-key rollover) is signed again with this
// replica's key under the same sequence: the replica that switches last
// leaves a bundle signed by the new key, which sidecars that trust only
// the new key need. That is at most one write per replica and sequence
// (publish runs once per sequence: see published), so two replicas on
// different keys never fight over the entry, and sidecars ignore the
// second write as not newer.
func (m *keyManager) keeps(signed []byte, have *jwks.Bundle, seq uint64) bool {
	if have.Sequence != seq {
		return have.Sequence > seq
	}
	if len(m.trustedKeys()) == 1 {
		return true
	}
	_, err := jwks.VerifyBundle(signed, []ed25519.PublicKey{m.dist.Public().(ed25519.PublicKey)})
	return err == nil
}

// refresh reads the ring from KV now, for a token that names a key this
// replica does not hold: another replica may have rotated while this one's
// watch was behind (a NATS node that dies can leave a watch deaf for
// seconds). One read at a time: callers that come while it runs wait for
// it, not for reads of their own; and at most one read per refreshEvery, so
// tokens with made-up key ids (anyone can send one) cannot become a stream
// of KV reads or a queue of requests behind a slow NATS.
func (m *keyManager) refresh(ctx context.Context) {
	if m.state.Load() == nil {
		// No ring yet: the bucket may not be open, and load reads the
		// ring first anyway. (The state is stored after kv is set, so a
		// state seen here also makes kv safe to read.)
		return
	}
	m.refreshMu.Lock()
	if ch := m.refreshing; ch != nil {
		m.refreshMu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		return
	}
	now := m.now()
	if now.Sub(m.lastRefresh) < refreshEvery && !now.Before(m.lastRefresh) {
		m.refreshMu.Unlock()
		return
	}
	m.lastRefresh = now
	done := make(chan struct{})
	m.refreshing = done
	m.refreshMu.Unlock()
	defer func() {
		m.refreshMu.Lock()
		m.refreshing = nil
		m.refreshMu.Unlock()
		close(done)
	}()

	rctx, cancel := context.WithTimeout(ctx, refreshTimeout)
	defer cancel()
	e, err := m.kv.Get(rctx, ringKey)
	if err != nil {
		m.log.Debug("read key ring for an unknown key id", "err", err)
		return
	}
	r, err := m.decode(e.Value())
	if err != nil {
		m.cannotRead(e, err)
		return
	}
	if err := m.install(r, e.Revision()); err != nil {
		m.log.Error("install key ring", "err", err)
	}
}

// watch follows ring changes made by other replicas.
func (m *keyManager) watch(ctx context.Context) {
	for ctx.Err() == nil {
		w, err := m.kv.Watch(ctx, ringKey)
		if err != nil {
			m.log.Warn("watch key ring", "err", err)
			natsconn.Sleep(ctx, time.Second)
			continue
		}
		for e := range w.Updates() {
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			r, err := m.decode(e.Value())
			if err != nil {
				m.cannotRead(e, err)
				continue
			}
			if err := m.install(r, e.Revision()); err != nil {
				m.log.Error("install key ring", "err", err)
			}
		}
		_ = w.Stop()
	}
}
