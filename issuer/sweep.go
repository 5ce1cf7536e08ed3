package issuer

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/revocation"
)

// A revocation event lives only until the last access token it can match
// has expired; a refresh token lives far longer. So when a sid, sub,
// client or all event arrives, the issuer also revokes, in NATS, every
// refresh-token family it covers: the session stays ended after the event
// is gone. Every replica sweeps every live event (the work is idempotent),
// so one replica dying mid-sweep loses nothing; until the sweep is done the
// event itself refuses those refreshes (familyRevoked).

// sweeper implements revocation.Observer for the issuer's consumer.
type sweeper struct {
	s     *Server
	queue chan *revocation.Event
}

func newSweeper(s *Server) *sweeper { return &sweeper{s: s, queue: make(chan *revocation.Event, 4096)} }

// Applied queues live events that can cover refresh-token families. Events
// replayed at start-up were swept when they were live.
func (w *sweeper) Applied(e *revocation.Event, _ time.Duration) {
	if e.Kind == revocation.KindJTI {
		return
	}
	if c := w.s.consumer.Load(); c == nil || !c.CaughtUp() {
		return
	}
	w.enqueue(e)
}

// enqueue queues e for a sweep. The replica that published e applied it to
// its set directly (so its consumer skips it as a duplicate) and enqueues
// it here itself.
func (w *sweeper) enqueue(e *revocation.Event) {
	if e.Kind == revocation.KindJTI {
		return
	}
	select {
	case w.queue <- e:
	default:
		w.s.log.Error("refresh-token sweep queue full; the event still refuses refreshes while it lives", "event", e.ID, "kind", e.Kind)
	}
}

func (w *sweeper) Dropped(reason string) {
	w.s.log.Warn("dropped a revocation message that does not verify", "reason", reason)
}

func (w *sweeper) Lag(uint64) {}

func (w *sweeper) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-w.queue:
			n, err := w.s.sweepFamilies(ctx, e)
			if err != nil && ctx.Err() == nil {
				w.s.log.Error("refresh-token sweep failed", "event", e.ID, "kind", e.Kind, "revoked", n, "err", err)
				continue
			}
			if n > 0 {
				w.s.log.Info("refresh-token families revoked", "event", e.ID, "kind", e.Kind, "families", n)
			}
		}
	}
}

// covers reports whether event e ends family f.
func covers(e *revocation.Event, f *family) bool {
	created := f.CreatedAt.Unix()
	switch e.Kind {
	case revocation.KindSID:
		return f.SessionID == e.Value
	case revocation.KindSub:
		return f.Subject == e.Value && created <= e.IssuedBefore
	case revocation.KindClient:
		return f.ClientID == e.Value && created <= e.IssuedBefore
	case revocation.KindAll:
		return created <= e.IssuedBefore
	}
	return false
}

// sweepFamilies revokes every live family e covers and returns how many.
func (s *Server) sweepFamilies(ctx context.Context, e *revocation.Event) (int, error) {
	lister, err := s.families.kv.ListKeys(ctx)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return 0, nil
		}
		return 0, err
	}
	defer func() { _ = lister.Stop() }()
	n := 0
	for id := range lister.Keys() {
		f, _, err := s.families.get(ctx, id)
		if errors.Is(err, errFamilyNotFound) {
			continue
		}
		if err != nil {
			return n, err
		}
		if f.Revoked || !covers(e, f) {
			continue
		}
		if _, err := s.families.revoke(ctx, f.ID, "revoked: "+string(e.Kind)); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}
