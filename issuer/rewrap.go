package issuer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/jwks"
)

// Re-sealing the key ring under the current key-encryption key, and how a
// replica lives with a ring sealed under a KEK it does not hold.
//
// A rewrap changes only how the private keys are sealed at rest: the keys,
// their states and the ring's sequence stay, so the bundle sidecars see
// does not change (re-sealing is not a rotation). Replicas still follow the
// re-sealed ring: for the same sequence, the higher KV revision wins.

// RewrapResult is the body of POST /admin/v1/keys/rewrap.
type RewrapResult struct {
	// KEKID is the id of the key-encryption key every key is sealed under
	// now (see KEKID).
	KEKID string `json:"kek_id"`
	// Resealed is how many keys this call re-sealed; 0 when all already
	// were under KEKID.
	Resealed int `json:"resealed"`
	// Keys is how many keys the ring holds.
	Keys int `json:"keys"`
	// Sequence is the ring's sequence, unchanged by a rewrap.
	Sequence uint64 `json:"sequence"`
}

// ringNewer reports whether r, read at KV revision rev, should replace the
// ring old holds. A higher sequence always wins and a lower one never does,
// whatever its revision. The same sequence at a higher revision is the same
// ring re-sealed by a rewrap (or an equal ring rewritten): installing it
// keeps this replica's recorded revision in step with KV.
func ringNewer(old *ringState, r *jwks.Ring, rev uint64) bool {
	if r.Sequence != old.ring.Sequence {
		return r.Sequence > old.ring.Sequence
	}
	return rev > old.rev
}

// rewrap re-seals every key of the ring in KV that is not sealed under the
// current KEK, with compare-and-set on the ring entry (retrying when
// another replica changed the ring meanwhile). Keys already under the
// current KEK are left as they are, so a second call writes nothing.
func (m *keyManager) rewrap(ctx context.Context, actor string) (RewrapResult, error) {
	res := RewrapResult{KEKID: m.keks.currentID()}
	for attempt := 0; attempt < 5; attempt++ {
		e, err := m.kv.Get(ctx, ringKey)
		if err != nil {
			return res, fmt.Errorf("read key ring: %w", err)
		}
		var sr storedRing
		if err := json.Unmarshal(e.Value(), &sr); err != nil {
			return res, fmt.Errorf("decode key ring: %w", err)
		}
		res.Keys, res.Sequence, res.Resealed = len(sr.Keys), sr.Sequence, 0
		for i := range sr.Keys {
			k := &sr.Keys[i]
			if k.KEK == res.KEKID || len(k.Sealed) == 0 {
				continue // sealed under the current KEK already, or revoked (nothing sealed)
			}
			der, err := m.keks.unseal(k.ID, k.KEK, k.Sealed)
			if err != nil {
				return res, err
			}
			if k.Sealed, k.KEK, err = m.keks.seal(k.ID, der); err != nil {
				return res, err
			}
			res.Resealed++
		}
		if res.Resealed > 0 {
			sr.Rewrapped = &rewrapRecord{At: m.now().UTC(), By: actor, KEK: res.KEKID}
		}
		b, err := json.Marshal(sr)
		if err != nil {
			return res, fmt.Errorf("encode key ring: %w", err)
		}
		// Read back what would be stored (every key opened under the
		// current KEK, the ring valid) before storing it: a rewrap must
		// never store a ring the current key-encryption key cannot load.
		r, err := m.decode(b)
		if err != nil {
			return res, fmt.Errorf("re-sealed key ring does not load: %w", err)
		}
		if res.Resealed == 0 {
			return res, m.install(r, e.Revision())
		}
		rev, err := m.kv.Update(ctx, ringKey, b, e.Revision())
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue // another replica changed the ring first: re-seal its ring
		}
		if err != nil {
			return res, fmt.Errorf("store re-sealed key ring: %w", err)
		}
		m.log.Info("key ring re-sealed", "kek_id", res.KEKID, "resealed", res.Resealed, "keys", res.Keys, "sequence", res.Sequence)
		return res, m.install(r, rev)
	}
	return res, errors.New("key ring: too many concurrent changes, try again")
}

// unreadableRing is a ring seen in KV that this replica cannot open: it is
// sealed under a key-encryption key the replica was not started with.
type unreadableRing struct {
	rev      uint64 // its KV revision
	sequence uint64 // its sequence (stored in the clear)
	err      string
}

// cannotRead reports a ring read from KV that did not decode. A ring sealed
// under a KEK this replica does not hold (another replica ran a rewrap, or
// rotated after a restart with a new KEK) is recorded for /readyz and the
// tokenwarden_key_ring_unreadable metric, and logged once per revision;
// the replica keeps signing with the ring it holds.
func (m *keyManager) cannotRead(e jetstream.KeyValueEntry, err error) {
	if !errors.Is(err, errUnknownKEK) {
		m.log.Error("key ring in NATS cannot be read", "err", err)
		return
	}
	// decode got past the JSON to the sealed keys, so this parses.
	var head struct {
		Sequence uint64 `json:"sequence"`
	}
	_ = json.Unmarshal(e.Value(), &head)
	u := &unreadableRing{rev: e.Revision(), sequence: head.Sequence, err: err.Error()}
	for {
		old := m.unreadable.Load()
		if old != nil && old.rev >= u.rev {
			return // reported already
		}
		if st := m.state.Load(); st != nil && st.rev >= u.rev {
			return // this replica holds a newer ring already
		}
		if m.unreadable.CompareAndSwap(old, u) {
			break
		}
	}
	var held uint64
	if st := m.state.Load(); st != nil {
		held = st.ring.Sequence
	}
	m.log.Error("key ring in NATS is sealed under a key-encryption key this replica does not hold; "+
		"it keeps signing with the ring it holds until restarted with the current key-encryption key",
		"sequence", u.sequence, "held_sequence", held, "revision", u.rev, "kek_id", m.keks.currentID(), "err", err)
}

// readable clears the report of an unreadable ring once a ring at least as
// new (revision rev) is installed.
func (m *keyManager) readable(rev uint64) {
	for {
		u := m.unreadable.Load()
		if u == nil || u.rev > rev {
			return
		}
		if m.unreadable.CompareAndSwap(u, nil) {
			m.log.Info("key ring in NATS readable again", "revision", rev)
			return
		}
	}
}

// unreadableProblem says what a ring this replica cannot open means for
// it. When the ring has the sequence this replica holds, it holds the same
// keys (a rewrap changes only their sealing) and signs exactly as the
// others do. When the ring is newer, this replica's ring is behind for good:
// it cannot follow rotations, and the key it signs with is retired and will
// leave the bundle. It keeps signing all the same (a token request never
// waits for readiness on this), but /readyz fails so that traffic moves to
// the replicas that can read the ring.
func (m *keyManager) unreadableProblem() (problem string, behind bool) {
	u := m.unreadable.Load()
	if u == nil {
		return "", false
	}
	if st := m.state.Load(); st != nil && u.sequence <= st.ring.Sequence {
		return fmt.Sprintf("the key ring in NATS (same sequence %d) is re-sealed under a key-encryption key this replica does not hold: "+
			"it signs with the same keys, but restart it with the current key-encryption key", u.sequence), false
	}
	return fmt.Sprintf("the key ring in NATS (sequence %d) is sealed under a key-encryption key this replica does not hold, and this replica's ring is behind: "+
		"restart it with the current key-encryption key", u.sequence), true
}

// reportUnreadable adds the check key_encryption to the readiness checks
// while this replica sees a ring it cannot open.
func (m *keyManager) reportUnreadable(checks map[string]string) {
	if p, _ := m.unreadableProblem(); p != "" {
		checks["key_encryption"] = p
	}
}

// ringBehind fails /readyz while this replica's ring is behind a ring it
// cannot open.
func (m *keyManager) ringBehind() error {
	if p, behind := m.unreadableProblem(); behind {
		return errors.New("key_encryption: " + p)
	}
	return nil
}

// unreadableMetric exports whether this replica sees a ring it cannot open.
func (m *keyManager) unreadableMetric() prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tokenwarden_key_ring_unreadable",
		Help: "1 while the newest key ring seen in NATS is sealed under a key-encryption key this replica does not hold, else 0.",
	}, func() float64 {
		if m.unreadable.Load() != nil {
			return 1
		}
		return 0
	})
}

// handleRewrap is POST /admin/v1/keys/rewrap: re-seal every signing key
// under the current key-encryption key. Idempotent.
func (s *Server) handleRewrap(w http.ResponseWriter, r *http.Request) {
	kekID := s.keys.keks.currentID()
	if err := s.ready(); err != nil {
		s.audit(r, "keys.rewrap", kekID, "", "failed: "+err.Error())
		writeOAuthError(w, errUnavailable(err.Error()))
		return
	}
	res, err := s.keys.rewrap(r.Context(), actor(r))
	switch {
	case errors.Is(err, errUnknownKEK):
		s.audit(r, "keys.rewrap", kekID, "", "refused: "+err.Error())
		writeJSON(w, http.StatusConflict, map[string]string{"error": "key_encryption_key_missing", "error_description": err.Error() +
			": restart this replica with the previous key-encryption key as well"})
	case err != nil:
		s.log.Error("rewrap keys", "err", err)
		s.audit(r, "keys.rewrap", kekID, "", "failed: "+err.Error())
		writeOAuthError(w, errUnavailable("rewrap failed: "+err.Error()))
	default:
		s.audit(r, "keys.rewrap", kekID, "", fmt.Sprintf("ok: re-sealed %d of %d keys", res.Resealed, res.Keys))
		writeJSON(w, http.StatusOK, res)
	}
}
