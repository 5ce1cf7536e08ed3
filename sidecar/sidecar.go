// Package sidecar is the per-pod verifier: it answers apps (and nginx,
// Envoy or Traefik in front of them) on localhost from keys and revocations
// distributed over NATS, with no call to the issuer per request.
package sidecar

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/natsconn"
	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// Sidecar is one running sidecar.
type Sidecar struct {
	cfg      Config
	log      *slog.Logger
	now      func() time.Time
	keys     *jwks.Cache
	verifier *Verifier
	metrics  *metrics
	trusted  []ed25519.PublicKey
	// revocations is the set the verifier consults; the consumer fills it
	// from the stream, and readiness waits for its replay.
	revocations *revocation.Set
	consumer    atomic.Pointer[revocation.Consumer]

	setClock func() time.Time // the revocation set's clock: now minus leeway
	tuning   tuning

	natsUp atomic.Bool
	// kick asks Run for an on-demand key refresh (a token named an unknown
	// kid); the cache rate-limits the refreshes themselves.
	kick chan struct{}
}

func (s *Sidecar) kickRefresh() {
	select {
	case s.kick <- struct{}{}:
	default: // one is already pending
	}
}

// Option configures a Sidecar.
type Option func(*options)

type options struct {
	log       *slog.Logger
	now       func() time.Time
	revoked   RevocationChecker
	onRevoked func(*revocation.Event)
	tuning    tuning
}

// tuning holds what tests shorten: minutes of real time otherwise.
type tuning struct {
	maxStaleness   time.Duration // overrides the config's bound, unvalidated
	probeEvery     time.Duration // revocation.WithProbeInterval
	reconnectRange [2]time.Duration
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithRevocations replaces the revocation check applied to every
// verification (default: the revocation set filled from NATS). Readiness
// then no longer waits for the stream's replay.
func WithRevocations(r RevocationChecker) Option { return func(o *options) { o.revoked = r } }

// WithOnRevocation calls f after each revocation event is applied, from the
// consumer's goroutine (f must not block): the moment from which the
// verifier rejects the tokens it matches. Benchmarks use it to measure
// propagation; an embedding app could use it to drop sessions of its own.
func WithOnRevocation(f func(*revocation.Event)) Option { return func(o *options) { o.onRevoked = f } }

// New validates cfg and prepares the sidecar; it serves from a disk-cached
// bundle at once if there is one. Run connects to NATS.
func New(cfg Config, opts ...Option) (*Sidecar, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sidecar config: %w", err)
	}
	o := options{log: slog.Default(), now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	trusted, err := cfg.trustedKeys()
	if err != nil {
		return nil, err
	}
	keys, err := jwks.NewCache(jwks.CacheConfig{
		Trusted: trusted, Bucket: cfg.NATS.Prefix + "_jwks", CacheDir: cfg.CacheDir, FallbackURL: cfg.JWKSFallbackURL,
		RefreshInterval: cfg.KeyRefreshInterval, Logger: o.log, Now: o.now,
	})
	if err != nil {
		return nil, err
	}
	algs := make([]jwks.Algorithm, 0, len(cfg.Algorithms))
	for _, a := range cfg.Algorithms {
		algs = append(algs, jwks.Algorithm(a))
	}
	v, err := jwks.NewVerifier(jwks.VerifierConfig{Issuer: cfg.Issuer, Audience: cfg.Audience, Algorithms: algs,
		Leeway: cfg.Leeway, MaxTokenSize: cfg.MaxTokenSize, Now: o.now}, keys)
	if err != nil {
		return nil, err
	}
	s := &Sidecar{cfg: cfg, log: o.log, now: o.now, keys: keys, kick: make(chan struct{}, 1), trusted: trusted, tuning: o.tuning}
	if s.tuning.maxStaleness > 0 {
		s.cfg.RevocationMaxStaleness = s.tuning.maxStaleness
	}
	if o.revoked == nil {
		// An event lives until the last token it matches has expired, by
		// the issuer's reckoning. This sidecar accepts tokens for its own
		// leeway past exp, so it keeps events that much longer: a larger
		// leeway here must not revive revoked tokens.
		s.setClock = func() time.Time { return o.now().Add(-v.Leeway()) }
		s.revocations = revocation.NewSet(revocation.WithSetClock(s.setClock))
		o.revoked = s.revocations
	}
	var cache *tokenCache
	if cfg.TokenCacheSize > 0 {
		cache = newTokenCache(cfg.TokenCacheSize)
	}
	s.verifier = &Verifier{v: v, keys: keys, cache: cache, revoked: o.revoked,
		leeway: int64(v.Leeway() / time.Second), now: o.now, unknownKID: s.kickRefresh,
		awaitKID: keys.AwaitKID, waiters: make(chan struct{}, maxKIDWaiters)}
	s.metrics = newMetrics(s)
	s.metrics.onApplied = o.onRevoked
	if s.revocations != nil {
		// One consumer for the life of the sidecar: it carries the set's
		// position in the stream across NATS connections.
		probe := o.tuning.probeEvery
		if probe == 0 {
			probe = probeInterval(s.cfg.RevocationMaxStaleness)
		}
		copts := []revocation.ConsumerOption{revocation.WithLogger(o.log), revocation.WithClock(o.now),
			revocation.WithObserver(s.metrics), revocation.WithProbeInterval(probe)}
		if o.tuning.reconnectRange[1] > 0 {
			copts = append(copts, revocation.WithCatchUpDelay(o.tuning.reconnectRange[1]))
		}
		s.consumer.Store(revocation.NewConsumer(nil, cfg.NATS.Prefix, trusted, s.revocations, copts...))
	}
	return s, nil
}

// Verifier is the verification pipeline, for in-process use.
func (s *Sidecar) Verifier() *Verifier { return s.verifier }

// Revocations is the revocation set the verifier consults (nil when
// WithRevocations replaced it).
func (s *Sidecar) Revocations() *revocation.Set { return s.revocations }

// Ready reports what /readyz reports: keys held and revocations replayed.
func (s *Sidecar) Ready() bool {
	_, ready := s.readiness()
	return ready
}

// Run connects to NATS and keeps the keys and revocations current until
// ctx ends. While NATS is unreachable the sidecar keeps verifying with
// what it holds and reconnects for ever, whatever the error (refused
// credentials included); if the connection still closes for good, Run
// builds a new one and resumes the key watch and the revocation consumer
// on it. It returns an error only for a malformed NATS URL or credentials
// file.
func (s *Sidecar) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.kick:
				s.keys.RefreshUnknownKID(ctx, "")
			}
		}
	})
	if s.revocations != nil {
		wg.Go(func() { s.revocations.RunGC(ctx, 10*time.Second, s.setClock) })
	}
	opts := natsconn.Options{URL: s.cfg.NATS.URL, Name: "tokenwarden-sidecar", CredsFile: s.cfg.NATS.CredsFile,
		Logger: s.log, OnState: s.natsState, ReconnectMin: s.tuning.reconnectRange[0], ReconnectMax: s.tuning.reconnectRange[1],
		ReconnectSpread: reconnectSpread}
	if s.tuning.reconnectRange[0] > 0 {
		opts.ReconnectSpread = s.tuning.reconnectRange[0]
	}
	err := natsconn.Run(ctx, opts, s.follow)
	if err != nil {
		return fmt.Errorf("sidecar: %w", err)
	}
	return nil
}

// probeInterval is how often the revocation consumer reads the stream
// unasked, to confirm its set is current: a quarter of the staleness
// bound, so that a bound is a few probes and one slow answer does not make
// the pod unready, between 5s (the least bound, 15s, gets about that) and
// 15s (the default bound, 1m). Each probe is a read of every sidecar; at
// the default bound a third as many as at 5s, which is most of what idle
// sidecars cost NATS.
func probeInterval(bound time.Duration) time.Duration {
	return min(max(bound/4, minProbeInterval), maxProbeInterval)
}

const (
	minProbeInterval = 5 * time.Second
	maxProbeInterval = 15 * time.Second
)

// reconnectSpread bounds the random wait before a sidecar's first
// reconnection attempt at a server (natsconn.Options.ReconnectSpread): the
// sidecars of a restarted NATS server, thousands of them, come back over a
// second rather than in one instant. Revocations published meanwhile are
// read when it is back, and readiness allows a minute.
const reconnectSpread = time.Second

// follow runs the key watch and the revocation consumer on one NATS
// connection until ctx ends (the sidecar stops, or the connection closed
// for good and natsconn.Run replaces it).
func (s *Sidecar) follow(ctx context.Context, nc *nats.Conn) {
	js, err := jetstream.New(nc)
	if err != nil {
		// Only for bad options, which jetstream.New is not given.
		s.log.Error("jetstream", "err", err)
		<-ctx.Done()
		return
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		if err := s.keys.Run(ctx, js); err != nil {
			s.log.Error("key cache stopped", "err", err)
		}
	})
	if c := s.consumer.Load(); c != nil {
		wg.Go(func() {
			// It returns early only when the connection closed for good,
			// which ends ctx too.
			if err := c.RunOn(ctx, js); err != nil && ctx.Err() == nil {
				s.log.Warn("revocation consumer stopped; resuming on a new NATS connection", "err", err)
			}
		})
	}
}

func (s *Sidecar) natsState(up bool) {
	s.natsUp.Store(up)
	if up {
		s.metrics.natsConnected.Set(1)
	} else {
		s.metrics.natsConnected.Set(0)
	}
}

// readiness returns the checks and whether the sidecar may take traffic:
// only once it holds a verified key set. NATS being down does not make it
// unready — it keeps verifying with what it holds — but is reported.
func (s *Sidecar) readiness() (map[string]string, bool) {
	st := s.keys.Status()
	checks := map[string]string{}
	// Keys from the HTTPS fallback verify tokens, but only a bundle signed
	// by the distribution key makes the sidecar ready. A bundle from disk
	// serves at once but may be older than the keys now signing (the pod
	// was down across a rotation): it counts once NATS has confirmed it
	// (the same bytes) or replaced it, as the revocations count once
	// replayed.
	ready := s.keys.Ready() && st.Source == jwks.CacheSourceNATS
	switch {
	case ready:
		checks["keys"] = fmt.Sprintf("ok: %d keys from %s, sequence %d", st.Keys, st.Source, st.Sequence)
	case st.Source == jwks.CacheSourceDisk:
		checks["keys"] = fmt.Sprintf("%d keys from disk, sequence %d; waiting for NATS to confirm or replace them", st.Keys, st.Sequence)
	case s.keys.Ready():
		checks["keys"] = fmt.Sprintf("%d unsigned keys from the HTTPS fallback; waiting for a signed bundle", st.Keys)
	default:
		checks["keys"] = "no verified JWKS bundle yet"
	}
	switch c := s.consumer.Load(); {
	case s.revocations == nil:
		checks["revocations"] = "external checker"
	case c != nil && c.CaughtUp():
		stale, _ := c.Staleness()
		bound := s.cfg.RevocationMaxStaleness
		if stale > bound {
			// Revocations issued since may not be applied here. /verify
			// keeps answering (the contract: keep verifying with what it
			// has); unready takes the pod out of Service endpoints and
			// tells the operator.
			checks["revocations"] = fmt.Sprintf("stale for %s (bound %s): not confirmed current against the stream; %d live events, stream sequence %d",
				stale.Round(time.Second), bound, s.revocations.Len(), c.LastSeq())
			ready = false
			break
		}
		checks["revocations"] = fmt.Sprintf("ok: %d live events, stream sequence %d, confirmed current %s ago",
			s.revocations.Len(), c.LastSeq(), stale.Round(time.Second))
	default:
		checks["revocations"] = "replaying the revocation stream"
		ready = false
	}
	if s.natsUp.Load() {
		checks["nats"] = "connected"
	} else {
		checks["nats"] = "disconnected: verifying with the keys held, reconnecting"
	}
	return checks, ready
}

// withTuning shortens the sidecar's real-time intervals, for tests.
func withTuning(t tuning) Option { return func(o *options) { o.tuning = t } }
