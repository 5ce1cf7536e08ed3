package jwks

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/natsconn"
)

// This file is the consumer side of the key ring: what a sidecar holds.
//
// Where keys come from, in order of trust:
//
//   - "nats": the signed bundle in KV key "current" of the bundle bucket,
//     watched (initial value, then every update) and re-read on demand by
//     RefreshUnknownKID;
//   - "disk": the last good signed bundle, kept in CacheDir and re-verified
//     at start, so a restarted pod serves at once even with NATS down;
//   - "http": the issuer's plain JWKS, fetched only when no signed bundle is
//     held after a grace period. It is trusted only because of TLS, gets
//     sequence 0 so that any signed bundle replaces it, is never written to
//     disk, and never replaces a signed bundle.
//
// Every signed bundle is verified against the configured distribution keys;
// a bad one is dropped and counted (Rejected). A verified bundle replaces
// the held one only with a strictly higher sequence (CheckNewer); anything
// else is dropped and counted (Stale) — except a byte-identical copy of the
// held bundle (a watch re-created after a reconnect, an on-demand Get that
// found nothing new), which is a redelivery, not news, and is not counted.
// Delete and purge markers on the key are ignored: keys are never dropped
// because the entry went away.
//
// The held state is an immutable snapshot behind one atomic pointer, so
// KeySet is a single atomic load. Writers (watch, refresh, fallback) are
// serialised by a mutex that also orders the disk writes.

// Sources reported in CacheStatus.Source.
const (
	CacheSourceNATS = "nats"
	CacheSourceDisk = "disk"
	CacheSourceHTTP = "http"
)

// CacheFileName is the name of the disk copy of the last good signed bundle
// inside CacheConfig.CacheDir.
const CacheFileName = "jwks-bundle.jws"

// cacheBundleKey is the KV key holding the signed bundle in the bundle
// bucket (see the issuer's publisher).
const cacheBundleKey = "current"

const (
	cacheDefaultRefresh       = 30 * time.Second
	cacheDefaultGrace         = 5 * time.Second
	cacheDefaultHTTPTimeout   = 5 * time.Second
	cacheOpTimeout            = 5 * time.Second // one NATS request (bind, Get), or a watch creation
	cacheMaxDocument          = 1 << 20         // signed bundle (disk) or HTTP JWKS body
	cacheBackoffMin           = 250 * time.Millisecond
	cacheBackoffMax           = 15 * time.Second
	cacheReconnectCheckPeriod = 250 * time.Millisecond
	// cacheCatchUpDelay bounds the random wait before the bundle is read
	// again after a reconnection: every client of a restarted NATS server
	// reconnects at the same moment, and their reads are spread over it.
	// A bundle published meanwhile still arrives at once on the
	// subscription, which nats.go restores on the new connection.
	cacheCatchUpDelay = 2 * time.Second
)

var cacheBucketRe = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

// CacheConfig configures a Cache.
type CacheConfig struct {
	// Trusted are the distribution public keys bundles must be signed
	// with. Required, non-empty.
	Trusted []ed25519.PublicKey
	// Bucket is the KV bucket holding the bundle, e.g. "tokenwarden_jwks".
	// Required.
	Bucket string
	// CacheDir, when set, keeps the last good signed bundle in
	// CacheDir/jwks-bundle.jws (written atomically, mode 0600; the
	// directory is created 0700 if missing). NewCache loads and re-verifies
	// it; a bad file is logged, counted as Rejected and ignored.
	CacheDir string
	// FallbackURL, when set, is the issuer's JWKS endpoint
	// (https://…/.well-known/jwks.json). It is fetched only while no
	// signed bundle is held, starting FallbackGrace after Run starts, and
	// then every RefreshInterval until a signed bundle arrives. It must be
	// https; plain http is accepted only for a loopback host. Empty: off,
	// only signed bundles are trusted.
	FallbackURL string
	// FallbackGrace is how long Run waits for a signed bundle before using
	// FallbackURL. Default 5s.
	FallbackGrace time.Duration
	// HTTPClient is used for FallbackURL. Default: a client with a 5s
	// timeout that follows redirects only to https (or loopback) URLs.
	HTTPClient *http.Client
	// RefreshInterval is the minimum time between on-demand refreshes
	// (RefreshUnknownKID) and the re-fetch period of the HTTP fallback.
	// Default 30s.
	RefreshInterval time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now defaults to time.Now.
	Now func() time.Time
}

// CacheStatus is a snapshot of what a Cache holds, for metrics and
// readiness.
type CacheStatus struct {
	Source     string    // "", "nats", "disk", "http"
	Sequence   uint64    // bundle sequence (0 for http or nothing held)
	BundleTime time.Time // Bundle.IssuedAt (zero for http)
	Keys       int       // keys in the held set
	Rejected   uint64    // bundles dropped: bad signature / undecodable
	Stale      uint64    // verified bundles dropped for an older-or-equal sequence
	Updates    uint64    // bundles (or changed HTTP key sets) accepted
	Watching   bool      // the KV watch is established and the connection is up
}

// cacheState is one immutable snapshot of what the cache holds.
type cacheState struct {
	keys   *KeySet
	seq    uint64
	issued time.Time
	source string
	raw    []byte // the signed bundle, or the HTTP JWKS document
	jwks   []byte // the signed bundle's JWKS; nil for HTTP
}

// cacheKV is the bucket bound by Run, with its connection, and Run's
// context so that on-demand refreshes end when Run does.
type cacheKV struct {
	kv  jetstream.KeyValue
	nc  *nats.Conn
	ctx context.Context
}

// Cache holds the verification keys of a sidecar and keeps them current
// from NATS. It implements KeySource. Create it with NewCache, start Run in
// a goroutine, and read KeySet from any number of goroutines.
type Cache struct {
	trusted     []ed25519.PublicKey
	bucket      string
	dir         string
	fallbackURL string
	grace       time.Duration
	client      *http.Client
	interval    time.Duration
	log         *slog.Logger
	now         func() time.Time

	state atomic.Pointer[cacheState]
	// changed is closed, and replaced, whenever state changes: AwaitKID
	// waits on it.
	changed atomic.Pointer[chan struct{}]

	applyMu sync.Mutex // serialises accepting a key set and writing the disk copy

	rejected atomic.Uint64
	stale    atomic.Uint64
	updates  atomic.Uint64

	running  atomic.Bool
	watching atomic.Bool
	conn     atomic.Pointer[nats.Conn]
	kv       atomic.Pointer[cacheKV]

	// Anyone who may have NATS send messages onto the bundle key's subject
	// (with the sidecars' credential, as answers to requests) could
	// otherwise flood the log.
	rejectLog logLimit

	refreshMu   sync.Mutex
	lastRefresh time.Time
	refreshing  chan struct{} // closed when the refresh in flight ends

	// Test hooks and knobs.
	backoffMin, backoffMax time.Duration
	hookGet                func()          // before every on-demand KV Get
	hookBind               func(error)     // after every attempt to bind the bucket
	hookFetch              func(err error) // after every HTTP fallback fetch
	catchUpDelay           time.Duration
	jitter                 func(max time.Duration) time.Duration // a random wait in [0, max]
}

// NewCache validates cfg and loads the disk copy of the last good bundle,
// if there is one. The returned Cache serves that bundle at once; call Run
// to follow NATS.
func NewCache(cfg CacheConfig) (*Cache, error) {
	if len(cfg.Trusted) == 0 {
		return nil, errors.New("jwks cache: no trusted distribution key configured")
	}
	trusted := make([]ed25519.PublicKey, 0, len(cfg.Trusted))
	for i, k := range cfg.Trusted {
		if len(k) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("jwks cache: trusted key %d is not an Ed25519 public key", i)
		}
		trusted = append(trusted, bytes.Clone(k))
	}
	if !cacheBucketRe.MatchString(cfg.Bucket) {
		return nil, fmt.Errorf("jwks cache: invalid KV bucket name %q", cfg.Bucket)
	}
	if cfg.RefreshInterval < 0 || cfg.FallbackGrace < 0 {
		return nil, errors.New("jwks cache: negative refresh interval or fallback grace")
	}
	if cfg.FallbackURL != "" {
		if err := cacheCheckURL(cfg.FallbackURL); err != nil {
			return nil, fmt.Errorf("jwks cache: fallback URL: %w", err)
		}
	}
	c := &Cache{
		trusted:     trusted,
		bucket:      cfg.Bucket,
		dir:         cfg.CacheDir,
		fallbackURL: cfg.FallbackURL,
		grace:       cfg.FallbackGrace,
		client:      cfg.HTTPClient,
		interval:    cfg.RefreshInterval,
		log:         cfg.Logger,
		now:         cfg.Now,
		backoffMin:  cacheBackoffMin,
		backoffMax:  cacheBackoffMax,

		catchUpDelay: cacheCatchUpDelay,
		jitter:       func(d time.Duration) time.Duration { return rand.N(d + 1) }, //nolint:gosec // jitter, not a secret
	}
	if c.grace == 0 {
		c.grace = cacheDefaultGrace
	}
	if c.interval == 0 {
		c.interval = cacheDefaultRefresh
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.log = c.log.With("component", "jwks-cache", "bucket", c.bucket)
	if c.now == nil {
		c.now = time.Now
	}
	if c.client == nil {
		c.client = &http.Client{
			Timeout: cacheDefaultHTTPTimeout,
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if len(via) >= 5 {
					return errors.New("too many redirects")
				}
				return cacheCheckURL(req.URL.String())
			},
		}
	}
	ch := make(chan struct{})
	c.changed.Store(&ch)
	if c.dir != "" {
		c.loadDisk()
	}
	return c, nil
}

// store makes st the held state and wakes AwaitKID. Called with applyMu
// held, so the old channel is closed once.
func (c *Cache) store(st *cacheState) {
	c.state.Store(st)
	ch := make(chan struct{})
	close(*c.changed.Swap(&ch))
}

// AwaitKID waits until the held key set has kid, and reports whether it
// has it: at once when it does; false at once while the cache does not
// follow NATS (no watch, or the connection is down: nothing could bring
// the key); otherwise when the key arrives, or false when ctx ends. It is
// for a token of a key that has just begun to sign, before its bundle
// reached this cache: the bundle is on its way by the watch, or already
// in NATS for the refresh RefreshUnknownKID makes (which the caller
// starts). The caller bounds the wait with ctx.
func (c *Cache) AwaitKID(ctx context.Context, kid string) bool {
	for {
		ch := *c.changed.Load() // before the check: a change after it wakes us
		if ks := c.KeySet(); ks != nil {
			if _, ok := ks.Lookup(kid); ok {
				return true
			}
		}
		if !c.Status().Watching {
			return false
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// cacheCheckURL accepts https URLs, and http ones only for loopback hosts:
// an unsigned JWKS is only as trustworthy as the channel it came over.
func cacheCheckURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if u.Host == "" {
		return fmt.Errorf("%q has no host", raw)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if host == "localhost" {
			return nil
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			return nil
		}
		return fmt.Errorf("%q: plain http is allowed only for loopback hosts, use https", raw)
	}
	return fmt.Errorf("%q: scheme must be https", raw)
}

// KeySet returns the held key set, or nil while none is held. It is one
// atomic load: no lock, never blocks.
func (c *Cache) KeySet() *KeySet {
	if st := c.state.Load(); st != nil {
		return st.keys
	}
	return nil
}

// Ready reports whether a key set is held (from any source).
func (c *Cache) Ready() bool { return c.state.Load() != nil }

// Status returns a snapshot of the cache.
func (c *Cache) Status() CacheStatus {
	s := CacheStatus{
		Rejected: c.rejected.Load(),
		Stale:    c.stale.Load(),
		Updates:  c.updates.Load(),
	}
	if st := c.state.Load(); st != nil {
		s.Source, s.Sequence, s.BundleTime, s.Keys = st.source, st.seq, st.issued, st.keys.Len()
	}
	if c.watching.Load() {
		nc := c.conn.Load()
		s.Watching = nc == nil || nc.IsConnected()
	}
	return s
}

// Run follows the bundle in NATS until ctx ends, then returns nil. It binds
// the bucket (retrying with capped exponential backoff and jitter while the
// bucket does not exist or NATS is unreachable), watches the bundle key,
// and re-creates the watch whenever it stops (a reconnection keeps it, and
// reads the bundle again after a random wait).
// With a FallbackURL it also runs the HTTP fallback. Run may be called
// again after it returned, but not concurrently.
func (c *Cache) Run(ctx context.Context, js jetstream.JetStream) error {
	if js == nil {
		return errors.New("jwks cache: no JetStream context")
	}
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("jwks cache: already running")
	}
	defer c.running.Store(false)
	c.conn.Store(js.Conn())
	var wg sync.WaitGroup
	if c.fallbackURL != "" {
		wg.Go(func() { c.runFallback(ctx) })
	}
	c.runNATS(ctx, js)
	wg.Wait()
	return nil
}

func (c *Cache) runNATS(ctx context.Context, js jetstream.JetStream) {
	defer c.kv.Store(nil)
	bo := cacheBackoff{min: c.backoffMin, max: c.backoffMax}
	failures := 0
	for ctx.Err() == nil {
		bctx, cancel := context.WithTimeout(ctx, cacheOpTimeout)
		kv, err := js.KeyValue(bctx, c.bucket)
		cancel()
		if c.hookBind != nil {
			c.hookBind(err)
		}
		if err == nil {
			c.kv.Store(&cacheKV{kv: kv, nc: js.Conn(), ctx: ctx})
			var established bool
			established, err = c.watch(ctx, js, kv)
			if established {
				bo.reset()
				failures = 0
			}
		}
		if ctx.Err() != nil {
			return
		}
		failures++
		wait := bo.next()
		// The first failure of a streak is worth a warning; the rest only
		// while debugging, so a long outage does not flood the log.
		level := slog.LevelDebug
		if failures == 1 {
			level = slog.LevelWarn
		}
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			c.log.Log(ctx, level, "JWKS bucket does not exist yet; retrying", "retry_in", wait)
		} else {
			c.log.Log(ctx, level, "JWKS watch unavailable; retrying", "err", err, "retry_in", wait)
		}
		if !natsconn.Sleep(ctx, wait) {
			return
		}
	}
}

// watch follows the bundle key until a read fails or ctx ends.
// established reports whether the watch was set up (and so whether the
// retry backoff may start over).
//
// It is not kv.Watch, which is a JetStream consumer: to create one a
// sidecar would need rights with which anyone holding the sidecars' NATS
// credential could also change or delete other clients' consumers. The
// watch reads the key (a direct get, no consumer) when it starts and every
// RefreshInterval, and takes the bundles the issuer writes to the key as
// they are published (a plain subscription to the key's subject). Those
// are verified and must be newer like any other: a bundle whose write the
// stream refused (another issuer replica wrote first) is still one the
// issuer signed, and what else arrives on the subject (answers JetStream
// sends there for whoever names it as a reply subject) is the stored
// bundle or something that does not verify, counted as rejected and
// logged at most once a second. They are applied here, on Run's
// goroutine, as everything read from NATS is: when Run returns, nothing of
// it is still being applied. A reconnection keeps the watch (nats.go
// restores the subscription) and reads the key again after a random wait
// (see cacheCatchUpDelay): no bucket bind, which is a STREAM.INFO to the
// bucket's stream leader, from every client of a restarted server at once.
// The periodic read is jittered too.
func (c *Cache) watch(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue) (established bool, err error) {
	nc := js.Conn()
	var reconnects uint64
	// Bundles published, and a read to make when more came than were
	// taken (a flood on the subject must not hold back the real one).
	published := make(chan []byte, 16)
	readSoon := make(chan struct{}, 1)
	if nc != nil {
		reconnects = nc.Stats().Reconnects
		sub, err := nc.Subscribe("$KV."+kv.Bucket()+"."+cacheBundleKey, func(m *nats.Msg) {
			if len(m.Data) == 0 || m.Header.Get("KV-Operation") != "" {
				return // a delete or purge marker: keys are never dropped for it
			}
			select {
			case published <- m.Data:
			default:
				select {
				case readSoon <- struct{}{}:
				default:
				}
			}
		})
		if err != nil {
			return false, fmt.Errorf("watch %s: %w", cacheBundleKey, err)
		}
		defer func() { _ = sub.Unsubscribe() }()
	}
	if err := c.readCurrent(ctx, nc, kv.Bucket()); err != nil {
		return false, fmt.Errorf("watch %s: %w", cacheBundleKey, err)
	}
	c.watching.Store(true)
	defer c.watching.Store(false)
	c.log.Debug("watching JWKS bundle")

	// Every interval, give or take a quarter.
	pollWait := func() time.Duration { return c.interval*3/4 + c.jitter(c.interval/2) }
	poll := time.NewTimer(pollWait())
	defer poll.Stop()
	tick := time.NewTicker(cacheReconnectCheckPeriod)
	defer tick.Stop()
	var catchUp <-chan time.Time // the read after a reconnection, when one is due
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case raw := <-published:
			c.applySigned(raw, CacheSourceNATS)
		case <-readSoon:
			if err := c.readCurrent(ctx, nc, kv.Bucket()); err != nil {
				return true, fmt.Errorf("watch %s: %w", cacheBundleKey, err)
			}
		case <-catchUp:
			catchUp = nil
			c.log.Debug("NATS reconnected; reading the JWKS bundle again")
			if err := c.readCurrent(ctx, nc, kv.Bucket()); err != nil {
				return true, fmt.Errorf("watch %s: %w", cacheBundleKey, err)
			}
		case <-poll.C:
			poll.Reset(pollWait())
			if err := c.readCurrent(ctx, nc, kv.Bucket()); err != nil {
				return true, fmt.Errorf("watch %s: %w", cacheBundleKey, err)
			}
		case <-tick.C:
			if nc != nil && nc.Stats().Reconnects != reconnects {
				reconnects = nc.Stats().Reconnects
				if catchUp == nil {
					catchUp = time.After(c.jitter(c.catchUpDelay))
				}
			}
		}
	}
}

// readCurrent reads the bundle key and applies what it holds.
func (c *Cache) readCurrent(ctx context.Context, nc *nats.Conn, bucket string) error {
	rctx, cancel := context.WithTimeout(ctx, cacheOpTimeout)
	defer cancel()
	raw, err := getBundle(rctx, nc, bucket)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil // no bundle yet: the issuer's first write will say so
	case errors.Is(err, jetstream.ErrKeyDeleted):
		c.log.Warn("JWKS bundle entry deleted or purged in NATS; keeping the held keys")
		return nil
	case err != nil:
		return err
	}
	c.applySigned(raw, CacheSourceNATS)
	return nil
}

// getBundle reads the bundle key of bucket with a direct get (the KV
// stream's last message on the key's subject). It asks with max_bytes set:
// nats-server reads its MaxPending option for a request without it,
// unlocked, which races with a configuration reload.
func getBundle(ctx context.Context, nc *nats.Conn, bucket string) ([]byte, error) {
	if nc == nil {
		return nil, errors.New("no NATS connection")
	}
	subject := "$JS.API.DIRECT.GET.KV_" + bucket + ".$KV." + bucket + "." + cacheBundleKey
	m, err := nc.RequestWithContext(ctx, subject, []byte(fmt.Sprintf(`{"max_bytes":%d}`, cacheMaxDocument+4096)))
	if err != nil {
		return nil, fmt.Errorf("direct get: %w", err)
	}
	switch status := m.Header.Get("Status"); {
	case status == "404":
		return nil, jetstream.ErrKeyNotFound
	case status != "":
		return nil, fmt.Errorf("direct get: status %s %s", status, m.Header.Get("Description"))
	case m.Header.Get("KV-Operation") != "":
		return nil, jetstream.ErrKeyDeleted
	}
	return m.Data, nil
}

// RefreshUnknownKID re-reads the bundle from NATS because a token named a
// kid the held set lacks. It is meant for the verifier's owner on
// ErrUnknownKey and is cheap to call per request: at most one refresh runs
// per RefreshInterval (others return at once), and concurrent callers share
// the one in flight. It waits for that shared refresh (one KV Get, bounded
// by a 5s timeout) or for ctx, whichever ends first; a caller that must not
// wait at all may fire it in a goroutine. The refresh itself is not tied to
// any caller's ctx, only to Run's: it does nothing unless Run has bound the
// bucket. The result is applied exactly like a watch update.
func (c *Cache) RefreshUnknownKID(ctx context.Context, kid string) {
	c.refreshMu.Lock()
	if ch := c.refreshing; ch != nil {
		c.refreshMu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		return
	}
	now := c.now()
	if !c.lastRefresh.IsZero() && now.Sub(c.lastRefresh) < c.interval {
		c.refreshMu.Unlock()
		return
	}
	bound := c.kv.Load()
	if bound == nil {
		c.refreshMu.Unlock()
		return
	}
	c.lastRefresh = now
	ch := make(chan struct{})
	c.refreshing = ch
	c.refreshMu.Unlock()

	go func() {
		defer func() {
			c.refreshMu.Lock()
			c.refreshing = nil
			c.refreshMu.Unlock()
			close(ch)
		}()
		c.refreshGet(bound, kid)
	}()
	select {
	case <-ch:
	case <-ctx.Done():
	}
}

func (c *Cache) refreshGet(bound *cacheKV, kid string) {
	if c.hookGet != nil {
		c.hookGet()
	}
	ctx, cancel := context.WithTimeout(bound.ctx, cacheOpTimeout)
	defer cancel()
	raw, err := getBundle(ctx, bound.nc, bound.kv.Bucket())
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		c.log.Debug("refresh for unknown kid: no bundle in NATS", "kid", kid)
	case err != nil:
		c.log.Warn("refresh for unknown kid: reading the JWKS bundle failed", "kid", kid, "err", err)
	default:
		c.log.Debug("refresh for unknown kid", "kid", kid)
		c.applySigned(raw, CacheSourceNATS)
	}
}

// applySigned verifies a signed bundle and makes it the held one if it is
// newer. It reports whether the held state changed.
func (c *Cache) applySigned(raw []byte, source string) bool {
	b, err := VerifyBundle(raw, c.trusted)
	var ks *KeySet
	if err == nil {
		ks, err = b.KeySet()
	}
	if err == nil && ks.Len() == 0 {
		err = errors.New("bundle: empty key set")
	}
	if err != nil {
		c.rejected.Add(1)
		if n, ok := c.rejectLog.allow(c.now()); ok {
			c.log.Warn("dropped a JWKS bundle that does not verify", "source", source, "err", err, "suppressed", n)
		}
		return false
	}

	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	cur := c.state.Load()
	if cur != nil && cur.source != CacheSourceHTTP && bytes.Equal(cur.raw, raw) {
		// A redelivery of what is held. Coming from NATS it confirms a
		// disk copy: report the live source.
		if source == CacheSourceNATS && cur.source != CacheSourceNATS {
			next := *cur
			next.source = source
			c.store(&next)
			return true
		}
		return false
	}
	if source == CacheSourceNATS && cur != nil && cur.source != CacheSourceHTTP && b.Sequence == cur.seq && bytes.Equal(b.JWKS, cur.jwks) {
		// The held keys under the held sequence, signed again: an issuer
		// switched to another trusted distribution key re-signs the bundle
		// (a distribution-key rollover). Take the new signature but keep
		// the key set (nothing to invalidate): it confirms a disk copy like
		// a redelivery would, and the disk copy becomes one that the new
		// key alone verifies, for a restart after the old key is dropped.
		next := *cur
		next.raw, next.issued, next.source = raw, b.Time(), source
		c.store(&next)
		c.log.Info("JWKS bundle signed again, same keys", "sequence", b.Sequence)
		if c.dir != "" {
			if err := c.writeDisk(raw); err != nil {
				c.log.Warn("could not keep the JWKS bundle on disk", "err", err)
			}
		}
		return true
	}
	var have uint64
	if cur != nil {
		have = cur.seq // 0 for an HTTP key set: any signed bundle wins
	}
	if err := CheckNewer(b, have); err != nil {
		c.stale.Add(1)
		c.log.Info("ignored a JWKS bundle that is not newer than the held one", "source", source, "sequence", b.Sequence, "held", have)
		return false
	}
	c.store(&cacheState{keys: ks, seq: b.Sequence, issued: b.Time(), source: source, raw: raw, jwks: b.JWKS})
	c.updates.Add(1)
	c.log.Info("JWKS bundle applied", "source", source, "sequence", b.Sequence, "keys", ks.Len(), "issued_at", b.Time().UTC())
	if source == CacheSourceNATS && c.dir != "" {
		if err := c.writeDisk(raw); err != nil {
			c.log.Warn("could not keep the JWKS bundle on disk", "err", err)
		}
	}
	return true
}

// logLimit lets one log line through a second and counts the others.
type logLimit struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// allow reports whether a line may be logged at now, and how many were
// suppressed since the last one.
func (l *logLimit) allow(now time.Time) (suppressed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < time.Second && now.After(l.last) {
		l.suppressed++
		return 0, false
	}
	suppressed, l.last, l.suppressed = l.suppressed, now, 0
	return suppressed, true
}

// loadDisk serves the disk copy of the last good bundle, if any.
func (c *Cache) loadDisk() {
	path := filepath.Join(c.dir, CacheFileName)
	raw, err := cacheReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		c.rejected.Add(1)
		c.log.Warn("ignoring the cached JWKS bundle", "path", path, "err", err)
		return
	}
	if c.applySigned(raw, CacheSourceDisk) {
		c.log.Info("serving the cached JWKS bundle until NATS confirms or replaces it", "path", path)
	} else {
		c.log.Warn("ignoring the cached JWKS bundle", "path", path)
	}
}

func cacheReadFile(path string) ([]byte, error) {
	f, err := os.Open(path) //nolint:gosec // the path is the operator's cache directory
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	raw, err := io.ReadAll(io.LimitReader(f, cacheMaxDocument+1))
	if err != nil {
		return nil, err
	}
	if len(raw) > cacheMaxDocument {
		return nil, fmt.Errorf("larger than %d bytes", cacheMaxDocument)
	}
	return raw, nil
}

// writeDisk replaces the disk copy atomically: a temporary file in the same
// directory, synced, then renamed over the old one. Called with applyMu
// held, so copies are written in sequence order.
func (c *Cache) writeDisk(raw []byte) error {
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(c.dir, "."+CacheFileName+".*.tmp")
	if err != nil {
		return err
	}
	name := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			_ = tmp.Close()
			_ = os.Remove(name)
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	if _, err := tmp.Write(raw); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(name, filepath.Join(c.dir, CacheFileName)); err != nil {
		return err
	}
	ok = true
	return nil
}

// runFallback fetches the issuer's plain JWKS while no signed bundle is
// held: first after the grace period, then every RefreshInterval (sooner,
// with backoff, after a failure), until a signed bundle arrives.
func (c *Cache) runFallback(ctx context.Context) {
	if !natsconn.Sleep(ctx, c.grace) {
		return
	}
	bo := cacheBackoff{min: c.backoffMin, max: c.interval}
	warned := false
	for {
		if st := c.state.Load(); st != nil && st.source != CacheSourceHTTP {
			return // a signed bundle is held; HTTP never replaces one
		}
		if !warned {
			c.log.Warn("no signed JWKS bundle after the grace period; using the HTTP fallback", "url", c.fallbackURL, "grace", c.grace)
			warned = true
		}
		wait := c.interval
		err := c.fetchHTTP(ctx)
		if c.hookFetch != nil {
			c.hookFetch(err)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			wait = bo.next()
			c.log.Warn("JWKS fallback fetch failed", "url", c.fallbackURL, "err", err, "retry_in", wait)
		} else {
			bo.reset()
		}
		if !natsconn.Sleep(ctx, wait) {
			return
		}
	}
}

func (c *Cache) fetchHTTP(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, cacheDefaultHTTPTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.fallbackURL, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, cacheMaxDocument))
		return fmt.Errorf("HTTP status %d", resp.StatusCode)
	}
	doc, err := io.ReadAll(io.LimitReader(resp.Body, cacheMaxDocument+1))
	if err != nil {
		return err
	}
	if len(doc) > cacheMaxDocument {
		return fmt.Errorf("JWKS larger than %d bytes", cacheMaxDocument)
	}
	ks, err := ParseKeySet(doc)
	if err != nil {
		return err
	}
	if ks.Len() == 0 {
		return errors.New("JWKS has no keys")
	}
	c.applyHTTP(ks, doc)
	return nil
}

// applyHTTP holds an HTTP key set unless a signed bundle is held.
func (c *Cache) applyHTTP(ks *KeySet, doc []byte) {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	cur := c.state.Load()
	if cur != nil && (cur.source != CacheSourceHTTP || bytes.Equal(cur.raw, doc)) {
		return
	}
	c.store(&cacheState{keys: ks, source: CacheSourceHTTP, raw: doc})
	c.updates.Add(1)
	c.log.Warn("serving the unsigned JWKS from the HTTP fallback until a signed bundle arrives", "url", c.fallbackURL, "keys", ks.Len())
}

// cacheBackoff is capped exponential backoff with full jitter in the upper
// half: each wait is in [d/2, d], d doubling from min up to max.
type cacheBackoff struct {
	min, max time.Duration
	cur      time.Duration
}

func (b *cacheBackoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(b.cur*2, b.max)
	}
	half := b.cur / 2
	if half <= 0 {
		return b.cur
	}
	return half + rand.N(half+1) //nolint:gosec // jitter, not a secret
}

func (b *cacheBackoff) reset() { b.cur = 0 }
