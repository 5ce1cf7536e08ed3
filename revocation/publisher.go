package revocation

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/jwks"
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
	seq, _, err := p.publish(ctx, e, e.ID)
	return seq, err
}

// PublishOnce is Publish that also reports whether JetStream had already
// stored an event with e's ID within its duplicate window (then seq is
// the stored one's): two issuer replicas publishing the same
// deterministic ID at once store one event, and each learns which it was.
func (p *Publisher) PublishOnce(ctx context.Context, e *Event) (seq uint64, duplicate bool, err error) {
	return p.publish(ctx, e, e.ID)
}

// PublishCopy publishes e again, signed with this publisher's key, for
// verifiers that trust this key but not the one that signed e: during a
// distribution-key rollover the issuer gives each event of the old key a
// copy signed by the new one. The copy has a message id of its own, the
// event id and the key id, so the stream stores it beside the original
// (which has the event id) while a second copy by the same key within the
// duplicate window is stored once. Verifiers apply the event once: a set
// ignores an id it holds. An event that has already expired is ErrExpired.
func (p *Publisher) PublishCopy(ctx context.Context, e *Event) (uint64, error) {
	seq, _, err := p.publish(ctx, e, e.ID+"."+jwks.DistributionKeyID(p.key.Public().(ed25519.PublicKey)))
	return seq, err
}

func (p *Publisher) publish(ctx context.Context, e *Event, msgID string) (uint64, bool, error) {
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
		jetstream.WithMsgID(msgID),
		jetstream.WithExpectStream(p.stream),
		jetstream.WithMsgTTL(ttl))
	if err != nil {
		return 0, false, fmt.Errorf("publish revocation %s: %w", e.ID, err)
	}
	return ack.Sequence, ack.Duplicate, nil
}
