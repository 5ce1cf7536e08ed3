package issuer

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// resigner keeps every live revocation event signed by this issuer's
// distribution key too, while the issuer trusts other distribution keys
// (a distribution-key rollover).
//
// Why: at the end of a rollover sidecars stop trusting the old key. The
// events the old key signed are still in the stream until they expire (10m30s
// by default; a token's remaining lifetime for an RFC 7009 revocation), and
// a sidecar that replays the stream after that (a new pod, a restart) would
// drop them as forged: revocations lost. So an issuer on the new key
// publishes a copy of each such event signed by its own key (same event, same
// id: every set applies it once), and reports ready only once it has copied
// every event the stream held when it started. The last replica switched to
// the new key therefore leaves every live event signed by it; from then on
// only the new key signs. The copy is symmetric (a replica still on the old
// key copies the new key's events too): harmless, and it needs no notion of
// which key is the newer.
//
// Cost: one message per live event and rollover step, only while other keys
// are trusted. A copy is made only of what a trusted key signed, so nothing
// an outsider publishes is ever re-signed. But whoever holds the old private
// key may publish events the issuer copies under the new key: do not use the
// gradual rollover to get rid of a leaked key (docs/security.md).
type resigner struct {
	ownKid   string
	caughtUp func() bool
	now      func() time.Time
	log      *slog.Logger
	// publish stores a copy of e signed by this issuer's key.
	publish func(ctx context.Context, e *revocation.Event) error

	mu sync.Mutex
	// copied: ids of events the stream holds signed by our key, with their
	// expires_at (for GC).
	copied map[string]int64
	// pending: events only another key signed, as far as the stream has
	// been read.
	pending map[string]*revocation.Event
	// ready: every event the replay found has a copy signed by our key.
	ready bool
	wake  chan struct{}
}

func newResigner(own ed25519.PublicKey, caughtUp func() bool, now func() time.Time, log *slog.Logger,
	publish func(context.Context, *revocation.Event) error) *resigner {
	return &resigner{ownKid: jwks.DistributionKeyID(own), caughtUp: caughtUp, now: now, log: log, publish: publish,
		copied: map[string]int64{}, pending: map[string]*revocation.Event{}, wake: make(chan struct{}, 1)}
}

// observe is the consumer's WithVerified hook: data verified against a
// trusted key, so its kid names the key that signed it (a kid-less event
// counts as another key's, which costs at most a needless copy).
func (r *resigner) observe(e *revocation.Event, data []byte) {
	own := signerKid(data) == r.ownKid
	r.mu.Lock()
	defer r.mu.Unlock()
	if own {
		r.copied[e.ID] = e.ExpiresAt
		delete(r.pending, e.ID)
		return
	}
	if _, ok := r.copied[e.ID]; ok {
		return
	}
	r.pending[e.ID] = e
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// signerKid is the kid of a compact JWS header, or "".
func signerKid(data []byte) string {
	h, _, ok := bytes.Cut(data, []byte("."))
	if !ok {
		return ""
	}
	b, err := base64.RawURLEncoding.DecodeString(string(h))
	if err != nil {
		return ""
	}
	var hdr struct {
		Kid string `json:"kid"`
	}
	if json.Unmarshal(b, &hdr) != nil {
		return ""
	}
	return hdr.Kid
}

// status is "" once ready, else what readiness waits for.
func (r *resigner) status() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ready {
		return ""
	}
	return fmt.Sprintf("re-signing %d revocation events signed by another distribution key", len(r.pending))
}

// run copies pending events once the consumer has replayed the stream, then
// as they arrive, retrying failures every second, until ctx is done.
func (r *resigner) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for !r.caughtUp() {
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	warned := time.Time{}
	for {
		n, err := r.flush(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			// One Warn a minute while publishing fails: NATS is down, and
			// readiness already says what is missing.
			if time.Since(warned) >= time.Minute {
				warned = time.Now()
				r.log.Warn("re-signing revocation events of another distribution key", "left", n, "err", err)
			}
		case err == nil:
			// The first flush took every event the replay found; events
			// that arrive later are copied as they come, without making
			// the replica unready.
			r.mu.Lock()
			if !r.ready {
				r.ready = true
				r.log.Info("every live revocation event of another distribution key has a copy signed by this issuer's key")
			}
			r.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-t.C:
			r.gc()
		}
	}
}

// flush publishes a copy of every pending event. It stops at the first
// failure (NATS is down, or the stream refuses writes: the next copy would
// fail too) and returns how many are left and the error.
func (r *resigner) flush(ctx context.Context) (int, error) {
	r.mu.Lock()
	batch := make([]*revocation.Event, 0, len(r.pending))
	for _, e := range r.pending {
		batch = append(batch, e)
	}
	r.mu.Unlock()
	now := r.now().Unix()
	for i, e := range batch {
		if e.ExpiresAt > now { // an expired event is nothing a verifier still needs
			pctx, cancel := context.WithTimeout(ctx, publishTimeout)
			err := r.publish(pctx, e)
			cancel()
			if err != nil && !errors.Is(err, revocation.ErrExpired) {
				return len(batch) - i, fmt.Errorf("copy of revocation event %s: %w", e.ID, err)
			}
		}
		r.mu.Lock()
		if cur, ok := r.pending[e.ID]; ok && cur == e {
			delete(r.pending, e.ID)
		}
		r.copied[e.ID] = e.ExpiresAt
		r.mu.Unlock()
	}
	return 0, nil
}

// gc forgets copied ids whose events have expired.
func (r *resigner) gc() {
	now := r.now().Unix()
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, exp := range r.copied {
		if exp < now {
			delete(r.copied, id)
		}
	}
}
