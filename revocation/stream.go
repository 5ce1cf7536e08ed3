package revocation

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream defaults.
const (
	// DefaultMaxAge bounds how long the stream keeps any event. Each event
	// carries its own TTL (until its expires_at), so MaxAge is only the
	// upper bound; it must be at least the longest access-token lifetime
	// plus leeway, or events would vanish while tokens they revoke are
	// still valid.
	DefaultMaxAge = 24 * time.Hour
	// DefaultDuplicateWindow is how long JetStream remembers message ids:
	// a publish retried within it is stored once.
	DefaultDuplicateWindow = 2 * time.Minute
	// maxStoredMsgSize bounds a message the stream accepts (a signed event
	// is under 2 KiB; MaxEventSize plus headroom for headers), so nobody
	// with publish rights can make every sidecar download junk.
	maxStoredMsgSize = 2 * MaxEventSize
)

// StreamName is the JetStream stream of revocation events for a subject
// prefix: "tokenwarden" gives "TOKENWARDEN_REVOCATIONS".
func StreamName(prefix string) string { return strings.ToUpper(prefix) + "_REVOCATIONS" }

// Subject is the subject events of kind k are published on:
// prefix.revocations.kind.
func Subject(prefix string, k Kind) string { return prefix + ".revocations." + string(k) }

// subjects is the stream's subject filter.
func subjects(prefix string) string { return prefix + ".revocations.>" }

// StreamConfig is what EnsureStream needs; zero values take the defaults.
type StreamConfig struct {
	// Prefix of subjects and stream name (default "tokenwarden").
	Prefix string
	// Replicas of the stream in a NATS cluster (default 1).
	Replicas int
	// MaxAge is the longest any event is kept; it must be at least the
	// longest expires_at horizon (longest access-token TTL plus leeway).
	// Per-message TTLs remove each event at its own expires_at before that.
	MaxAge time.Duration
	// DuplicateWindow (default 2m) is how long a retried publish of the
	// same event is recognised as a duplicate.
	DuplicateWindow time.Duration
	// MaxConsumers bounds the consumers of the stream: one per sidecar and
	// issuer replica (default DefaultMaxConsumers). It must be set: a
	// nats-server applies its own default of 1,000 per stream otherwise,
	// and the 1,001st sidecar could never follow revocations.
	MaxConsumers int
}

// DefaultMaxConsumers is the default of StreamConfig.MaxConsumers.
const DefaultMaxConsumers = 100_000

// EnsureStream creates the revocation stream, or updates it to cfg: file
// storage, the subjects prefix.revocations.>, discard old, MaxAge, the
// duplicate window, and per-message TTLs allowed (nats-server 2.11 or
// later), which the Publisher sets so each event is kept until its
// expires_at.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = "tokenwarden"
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	if cfg.DuplicateWindow == 0 {
		cfg.DuplicateWindow = DefaultDuplicateWindow
	}
	if cfg.MaxConsumers <= 0 {
		cfg.MaxConsumers = DefaultMaxConsumers
	}
	if cfg.MaxAge < 0 || cfg.DuplicateWindow < 0 {
		return nil, errors.New("revocation stream: negative max age or duplicate window")
	}
	if cfg.DuplicateWindow > cfg.MaxAge {
		return nil, fmt.Errorf("revocation stream: duplicate window %s longer than max age %s", cfg.DuplicateWindow, cfg.MaxAge)
	}
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:         StreamName(cfg.Prefix),
		Description:  "tokenwarden revocation events (signed JWS), each kept until it expires",
		Subjects:     []string{subjects(cfg.Prefix)},
		Retention:    jetstream.LimitsPolicy,
		Discard:      jetstream.DiscardOld,
		Storage:      jetstream.FileStorage,
		Replicas:     cfg.Replicas,
		MaxAge:       cfg.MaxAge,
		Duplicates:   cfg.DuplicateWindow,
		MaxMsgSize:   maxStoredMsgSize,
		AllowMsgTTL:  true,
		MaxConsumers: cfg.MaxConsumers,
		// Consumers read the stream with direct gets (see fetch), which
		// need no JetStream consumer.
		AllowDirect: true,
	})
	if err != nil {
		return nil, fmt.Errorf("revocation stream %s: %w", StreamName(cfg.Prefix), err)
	}
	return s, nil
}
