// Package issuer is the token service: it authenticates users and clients,
// signs RFC 9068 access tokens with a rotating key ring, keeps refresh-token
// families, and publishes the signed JWKS bundle over NATS. Its state lives
// in NATS JetStream, so replicas are interchangeable.
package issuer

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tokenwarden/tokenwarden/internal/accesslog"
	"github.com/tokenwarden/tokenwarden/internal/natsconn"
	"github.com/tokenwarden/tokenwarden/issuer/directory"
	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// Server is one issuer replica.
type Server struct {
	cfg Config
	// reconcileMu serializes reconcileKeys.
	reconcileMu sync.Mutex
	log         *slog.Logger
	now         func() time.Time
	metrics     *metrics
	dir         *directory.Watcher
	dist        ed25519.PrivateKey
	// trusted: the distribution public keys whose bundles and events this
	// replica accepts, its own first (more during a rollover).
	trusted []ed25519.PublicKey
	// resign copies other keys' events under ours; nil unless other keys
	// are trusted.
	resign *resigner

	keys     *keyManager
	families familyStore
	verifier *jwks.Verifier
	// anyAudience verifies this issuer's own tokens whatever their audience,
	// for RFC 7009 revocation.
	anyAudience *jwks.Verifier

	publisher   *revocation.Publisher
	revocations *revocation.Set
	denied      *denyList
	consumer    atomic.Pointer[revocation.Consumer]
	// nc is the NATS connection of Run, for /healthz: nats.go reconnects
	// for ever, but a connection it still closes for good would leave this
	// process unready for ever, so it reports itself unhealthy and the
	// kubelet restarts it.
	nc atomic.Pointer[nats.Conn]

	userLimiter *failureLimiter
	ipLimiter   *failureLimiter

	mu       sync.Mutex
	status   map[string]string // readiness checks that are failing, by name
	tickTime time.Duration
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithClock replaces time.Now, for tests that drive key rotation.
func WithClock(now func() time.Time) Option { return func(s *Server) { s.now = now } }

// WithTickInterval sets how often the key ring is checked for due
// transitions (default 10s).
func WithTickInterval(d time.Duration) Option { return func(s *Server) { s.tickTime = d } }

// New validates cfg and loads everything that lives on disk: the users and
// clients files, the distribution key and the key-encryption key. It does
// not touch the network; Run does.
func New(cfg Config, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("issuer config: %w", err)
	}
	s := &Server{cfg: cfg, log: slog.Default(), now: time.Now, metrics: newMetrics(), tickTime: 10 * time.Second,
		status: map[string]string{"nats": "not connected yet", "keys": "key ring not loaded yet"}}
	for _, o := range opts {
		o(s)
	}
	dist, err := LoadDistributionKey(cfg.DistributionKeyFile)
	if err != nil {
		return nil, err
	}
	s.dist = dist
	if s.trusted, err = cfg.trustedDistributionKeys(s.DistributionPublicKey()); err != nil {
		return nil, err
	}
	kek, previousKEKs, err := cfg.keyEncryptionKeys()
	if err != nil {
		return nil, err
	}
	keks, err := newKeyEncryptionKeys(kek, previousKEKs...)
	if err != nil {
		return nil, err
	}
	s.log.Info("key-encryption keys loaded", "kek_id", keks.currentID(), "previous_kek_ids", keks.previousIDs())
	s.dir, err = directory.NewWatcher(cfg.UsersFile, cfg.ClientsFile, s.log, directory.WithOnReload(func(d *directory.Directory) {
		s.metrics.directoryReload.WithLabelValues("ok").Inc()
		s.log.Info("reloaded users and clients", "users", d.Users(), "clients", d.Clients())
	}))
	if err != nil {
		return nil, err
	}
	s.userLimiter = newFailureLimiter(cfg.RateLimit.FailuresPerUser)
	s.ipLimiter = newFailureLimiter(cfg.RateLimit.FailuresPerIP)
	s.keys = &keyManager{keks: keks, dist: dist, trusted: s.trusted, policy: s.policy, now: s.now, log: s.log, metrics: s.metrics}
	s.metrics.registry.MustRegister(s.keys.unreadableMetric())
	s.verifier, err = jwks.NewVerifier(jwks.VerifierConfig{
		Issuer: cfg.Issuer, Audience: []string{cfg.Issuer}, Leeway: cfg.Leeway, Now: s.now,
	}, s.keys)
	if err != nil {
		return nil, err
	}
	s.anyAudience, err = jwks.NewVerifier(jwks.VerifierConfig{Issuer: cfg.Issuer, AnyAudience: true, Leeway: cfg.Leeway, Now: s.now}, s.keys)
	if err != nil {
		return nil, err
	}
	s.revocations = revocation.NewSet(revocation.WithSetClock(s.now))
	if len(s.trusted) > 1 {
		s.resign = newResigner(s.DistributionPublicKey(), func() bool {
			c := s.consumer.Load()
			return c != nil && c.CaughtUp()
		}, s.now, s.log, func(ctx context.Context, e *revocation.Event) error {
			_, err := s.publisher.PublishCopy(ctx, e) // run starts after setupBuckets set the publisher
			return err
		})
	}
	s.denied = newDenyList(s.log)
	s.metrics.setSize(s.revocations.Len)
	return s, nil
}

// DistributionPublicKey is the key sidecars must trust.
func (s *Server) DistributionPublicKey() ed25519.PublicKey {
	return s.dist.Public().(ed25519.PublicKey)
}

func (s *Server) directory() *directory.Directory { return s.dir.Current() }

// ReloadDirectory re-reads the users and clients files (on SIGHUP). A bad
// file is logged and the old directory kept.
func (s *Server) ReloadDirectory() error {
	err := s.dir.Reload()
	if err != nil {
		s.metrics.directoryReload.WithLabelValues("error").Inc()
	}
	return err
}

// policy is the rotation policy; retired keys stay published for the
// longest access-token lifetime any client has now, plus leeway.
func (s *Server) policy() jwks.Policy {
	longest := s.cfg.AccessTokenTTL
	if s.dir != nil {
		longest = max(longest, s.dir.Current().MaxAccessTokenTTL())
	}
	return s.cfg.policy(longest)
}

func (s *Server) setStatus(check, problem string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if problem == "" {
		delete(s.status, check)
	} else {
		s.status[check] = problem
	}
}

// Ready returns nil once this replica can serve every request: NATS
// reachable, key ring loaded, revocation stream replayed and deny records
// read; else what is missing. It is what /readyz reports: that also fails
// while this replica's key ring is behind a ring it cannot open (rewrap.go),
// which token requests, signing with what the replica holds, do not wait for.
func (s *Server) Ready() error {
	if err := s.ready(); err != nil {
		return err
	}
	return s.keys.ringBehind()
}

// ready returns nil when this replica can serve requests that need state.
func (s *Server) ready() error {
	checks := s.statusSnapshot()
	for _, check := range []string{"nats", "keys", "revocations"} {
		if p := checks[check]; p != "ok" {
			return fmt.Errorf("%s: %s", check, p)
		}
	}
	return nil
}

// statusSnapshot is every readiness check with "ok" or what is missing.
func (s *Server) statusSnapshot() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]string{"nats": "ok", "keys": "ok", "revocations": "ok"}
	for k, v := range s.status {
		out[k] = v
	}
	if c := s.consumer.Load(); c == nil || !c.CaughtUp() {
		out["revocations"] = "replaying the revocation stream"
	} else if !s.denied.synced.Load() {
		out["revocations"] = "reading the deny records"
	} else if p := s.resignStatus(); p != "" {
		out["revocations"] = p
	}
	s.keys.reportUnreadable(out)
	return out
}

// Run connects to NATS (waiting with backoff while it is down), loads or
// creates the key ring, then keeps the ring current and the users and
// clients files fresh until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	nc, err := natsconn.Connect(natsconn.Options{URL: s.cfg.NATS.URL, Name: "tokenwarden-issuer", CredsFile: s.cfg.NATS.CredsFile,
		Logger: s.log, OnState: s.natsState})
	if err != nil {
		return err
	}
	defer nc.Close()
	s.nc.Store(nc)

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.dir.Run(ctx) })

	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	if natsconn.Retry(ctx, s.log, "set up NATS buckets", func() error { return s.setupBuckets(ctx, js) }) != nil {
		return nil // ctx done
	}
	if natsconn.Retry(ctx, s.log, "load key ring", func() error { return s.keys.load(ctx) }) != nil {
		return nil
	}
	// Ready only once this replica's bundle is in KV (or a newer one): the
	// replica that switches last in a distribution-key rollover must have
	// re-signed the bundle with the new key before the old key may go. A
	// failed publish is retried by every tick.
	if err := s.keys.publish(ctx); err != nil {
		s.log.Warn("publish JWKS bundle", "err", err)
		s.setStatus("keys", "JWKS bundle not published yet")
	} else {
		s.setStatus("keys", "")
	}
	wg.Go(func() { s.denied.watch(ctx) })
	// No live subscription: the issuer's set must hold only events the
	// stream stored. Its revoke and logout paths skip publishing what the
	// set already holds, so an event seen live whose publish failed (a 503)
	// would never be published on the client's retry.
	opts := []revocation.ConsumerOption{revocation.WithLogger(s.log), revocation.WithClock(s.now), revocation.WithLiveSubscription(false)}
	if s.resign != nil {
		opts = append(opts, revocation.WithVerified(s.resign.observe))
	}
	consumer := revocation.NewConsumer(js, s.cfg.NATS.Prefix, s.trusted, s.revocations, opts...)
	s.consumer.Store(consumer)
	wg.Go(func() {
		if err := consumer.Run(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("revocation consumer stopped", "err", err)
		}
	})
	if s.resign != nil {
		wg.Go(func() { s.resign.run(ctx) })
	}
	wg.Go(func() { s.revocations.RunGC(ctx, 30*time.Second, s.now) })
	wg.Go(func() { s.keys.watch(ctx) })
	t := time.NewTicker(s.tickTime)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := s.reconcileKeys(ctx); err != nil && ctx.Err() == nil {
				s.log.Error("key revocation not finished yet, retrying at the next tick", "err", err)
			}
			if err := s.keys.tick(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("key ring maintenance", "err", err)
			} else if err == nil {
				s.setStatus("keys", "") // the bundle is published (tick ends with publish)
			}
		}
	}
}

func (s *Server) natsState(up bool) {
	if up {
		s.metrics.natsConnected.Set(1)
		s.setStatus("nats", "")
		return
	}
	s.metrics.natsConnected.Set(0)
	s.setStatus("nats", "disconnected")
}

// setupBuckets creates or updates the KV buckets this issuer uses.
func (s *Server) setupBuckets(ctx context.Context, js jetstream.JetStream) error {
	p, r := s.cfg.NATS.Prefix, s.cfg.NATS.Replicas
	mk := func(name, desc string, ttl time.Duration) (jetstream.KeyValue, error) {
		kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: name, Description: desc, History: 1, Storage: jetstream.FileStorage, Replicas: r, TTL: ttl,
		})
		if err != nil {
			return nil, fmt.Errorf("bucket %s: %w", name, err)
		}
		return kv, nil
	}
	ring, err := mk(p+"_keys", "tokenwarden signing key ring (private keys sealed)", 0)
	if err != nil {
		return err
	}
	bundles, err := mk(BundleBucket(p), "tokenwarden signed JWKS bundle for sidecars", 0)
	if err != nil {
		return err
	}
	// Every sidecar watches this bucket with a consumer of its own.
	if err := raiseConsumerLimit(ctx, js, "KV_"+BundleBucket(p), s.cfg.NATS.MaxConsumers); err != nil {
		return err
	}
	fams, err := mk(p+"_refresh", "tokenwarden refresh-token families (hashes only)", s.cfg.NATS.RefreshRetention)
	if err != nil {
		return err
	}
	// Events live until their expires_at (per-message TTL); MaxAge is only
	// the upper bound, generous against clients whose TTLs grow later.
	maxAge := max(24*time.Hour, 2*(s.maxTokenTTL()+s.cfg.Leeway))
	if _, err := revocation.EnsureStream(ctx, js, revocation.StreamConfig{Prefix: p, Replicas: r, MaxAge: maxAge, MaxConsumers: s.cfg.NATS.MaxConsumers}); err != nil {
		return fmt.Errorf("revocation stream: %w", err)
	}
	denied, err := mk(p+"_denied", "tokenwarden deny records: revoked sessions, users, clients (for refresh tokens)", s.cfg.NATS.RefreshRetention)
	if err != nil {
		return err
	}
	s.keys.kv, s.keys.bundles, s.families, s.denied.kv, s.denied.nc = ring, bundles, familyStore{kv: fams}, denied, js.Conn()
	s.publisher = revocation.NewPublisher(js, p, s.dist)
	return nil
}

// raiseConsumerLimit sets the consumer limit of a KV bucket's stream, which
// the KV API does not expose.
func raiseConsumerLimit(ctx context.Context, js jetstream.JetStream, stream string, n int) error {
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", stream, err)
	}
	cfg := st.CachedInfo().Config
	if cfg.MaxConsumers == n {
		return nil
	}
	cfg.MaxConsumers = n
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("stream %s: set consumer limit: %w", stream, err)
	}
	return nil
}

// BundleBucket is the KV bucket holding the signed JWKS bundle.
func BundleBucket(prefix string) string { return prefix + "_jwks" }

// Handler returns the issuer's HTTP API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, s.instrument(pattern, h)) }
	route("/oauth2/token", s.handleToken)
	route("GET /.well-known/jwks.json", s.handleJWKS)
	route("GET /.well-known/openid-configuration", s.handleDiscovery)
	route("GET /.well-known/oauth-authorization-server", s.handleDiscovery)
	route("/oauth2/revoke", s.handleRevoke)
	route("POST /admin/v1/revocations", s.admin(s.handleCreateRevocation))
	route("GET /admin/v1/revocations", s.admin(s.handleListRevocations))
	route("GET /admin/v1/keys", s.admin(s.handleListKeys))
	route("POST /admin/v1/keys/rotate", s.admin(s.handleRotate))
	route("POST /admin/v1/keys/{kid}/revoke", s.admin(s.handleRevokeKey))
	route("POST /admin/v1/keys/rewrap", s.admin(s.handleRewrap))
	route("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if nc := s.nc.Load(); nc != nil && nc.IsClosed() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "NATS connection closed for good: restart this process"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	route("GET /readyz", s.handleReadyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
	return mux
}

func (s *Server) handleReadyz(w http.ResponseWriter, _ *http.Request) {
	checks := s.statusSnapshot()
	if s.Ready() != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not ready", "checks": checks})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "checks": checks})
}

// instrument logs every request (see package accesslog) and records its
// latency.
func (s *Server) instrument(route string, h http.HandlerFunc) http.Handler {
	return accesslog.Wrap(s.log, slog.LevelInfo, route, h, func(route string, code int, d time.Duration) {
		s.metrics.requestDuration.WithLabelValues(route, strconv.Itoa(code)).Observe(d.Seconds())
	})
}

// resignStatus is what the re-signing of other distribution keys' events
// still needs before this replica is ready, or "".
func (s *Server) resignStatus() string {
	if s.resign == nil {
		return ""
	}
	return s.resign.status()
}
