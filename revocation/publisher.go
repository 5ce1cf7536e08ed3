package revocation

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Publisher signs events and publishes them on the revocation stream.
type Publisher struct {
	js     jetstream.JetStream
	prefix string
	stream string
	key    ed25519.PrivateKey
	now    func() time.Time
}

// NewPublisher returns a publisher for the stream of prefix (see
// EnsureStream), signing with the distribution key.
func NewPublisher(js jetstream.JetStream, prefix string, key ed25519.PrivateKey) *Publisher {
	return &Publisher{js: js, prefix: prefix, stream: StreamName(prefix), key: key, now: time.Now}
}

// Publish signs e and publishes it, returning its stream sequence once
// JetStream has acknowledged it, that is once it is durably stored. The
// message id is e.ID, so publishing the same event again within the
// stream's duplicate window — a retry after a lost ack — stores it once
// and returns the original sequence. The message's TTL keeps it until
// e.ExpiresAt; an event that has already expired is ErrExpired.
func (p *Publisher) Publish(ctx context.Context, e *Event) (uint64, error) {
	seq, _, err := p.PublishOnce(ctx, e)
	return seq, err
}

// PublishOnce is Publish that also reports whether JetStream had already
// stored an event with e's ID within its duplicate window (then seq is
// the stored one's): two issuer replicas publishing the same
// deterministic ID at once store one event, and each learns which it was.
func (p *Publisher) PublishOnce(ctx context.Context, e *Event) (seq uint64, duplicate bool, err error) {
	if err := e.Validate(); err != nil {
		return 0, false, err
	}
	ttl := e.Expires().Sub(p.now())
	if ttl <= 0 {
		return 0, false, ErrExpired
	}
	// JetStream counts TTLs in whole seconds (at least one): round up, so
	// the event outlives its expires_at rather than the other way round.
	ttl = max(ttl.Truncate(time.Second)+time.Second, time.Second)
	data, err := Sign(e, p.key)
	if err != nil {
		return 0, false, err
	}
	ack, err := p.js.Publish(ctx, Subject(p.prefix, e.Kind), data,
		jetstream.WithMsgID(e.ID),
		jetstream.WithExpectStream(p.stream),
		jetstream.WithMsgTTL(ttl))
	if err != nil {
		return 0, false, fmt.Errorf("publish revocation %s: %w", e.ID, err)
	}
	return ack.Sequence, ack.Duplicate, nil
}
