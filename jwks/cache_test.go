package jwks

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/embeddednats"
	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

const cacheTestBucket = "tokenwarden_jwks"

// cacheSigner makes signed bundles the way the issuer does.
type cacheSigner struct {
	t    testing.TB
	priv ed25519.PrivateKey
}

func newCacheSigner(t testing.TB) *cacheSigner {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &cacheSigner{t: t, priv: priv}
}

func (s *cacheSigner) trusted() []ed25519.PublicKey {
	return []ed25519.PublicKey{s.priv.Public().(ed25519.PublicKey)}
}

// cacheTestJWKS builds the JWKS of a fresh ring: its document and key set.
func cacheTestJWKS(t testing.TB) ([]byte, *KeySet) {
	t.Helper()
	r, err := NewRing(time.Now(), DefaultPolicy())
	if err != nil {
		t.Fatal(err)
	}
	ks, err := r.KeySet()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := Document(ks)
	if err != nil {
		t.Fatal(err)
	}
	return doc, ks
}

// bundle signs a bundle of a fresh ring with sequence seq.
func (s *cacheSigner) bundle(seq uint64) ([]byte, *KeySet) {
	s.t.Helper()
	doc, ks := cacheTestJWKS(s.t)
	return s.sign(seq, time.Now().Unix(), doc), ks
}

func (s *cacheSigner) sign(seq uint64, iat int64, doc []byte) []byte {
	s.t.Helper()
	raw, err := SignBundle(&Bundle{Sequence: seq, IssuedAt: iat, JWKS: doc}, s.priv)
	if err != nil {
		s.t.Fatal(err)
	}
	return raw
}

func cacheSameKeys(a, b *KeySet) bool {
	x, y := a.IDs(), b.IDs()
	slices.Sort(x)
	slices.Sort(y)
	return a != nil && b != nil && slices.Equal(x, y)
}

// cacheWaitFor polls cond every 10ms and fails the test after 10s.
func cacheWaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func cacheQuietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func cacheStartNATS(t testing.TB, addr, storeDir string) *embeddednats.Server {
	t.Helper()
	ns, err := embeddednats.Start(embeddednats.Config{Addr: addr, StoreDir: storeDir, ServerName: "jwks-cache-test"})
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// cacheConnect connects the way a sidecar does: reconnect forever, also
// when the server is not up yet.
// cacheNATS starts a NATS server of its own for one test and connects to
// it.
func cacheNATS(t testing.TB) jetstream.JetStream {
	t.Helper()
	ns := cacheStartNATS(t, "127.0.0.1:0", t.TempDir())
	t.Cleanup(ns.Stop)
	return cacheConnect(t, ns.URL())
}

func cacheConnect(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond), nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func cacheCreateBucket(t testing.TB, js jetstream.JetStream) jetstream.KeyValue {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: cacheTestBucket, History: 1, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

func cachePut(t testing.TB, kv jetstream.KeyValue, v []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := kv.Put(ctx, cacheBundleKey, v); err != nil {
		t.Fatal(err)
	}
}

func newTestCache(t testing.TB, cfg CacheConfig) *Cache {
	t.Helper()
	if cfg.Bucket == "" {
		cfg.Bucket = cacheTestBucket
	}
	if cfg.Logger == nil {
		cfg.Logger = cacheQuietLogger()
	}
	c, err := NewCache(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.backoffMin, c.backoffMax = 10*time.Millisecond, 200*time.Millisecond
	return c
}

// cacheRun runs c until the returned stop is called (or the test ends) and
// checks that Run returns nil.
func cacheRun(t testing.TB, c *Cache, js jetstream.JetStream) (stop func()) {
	t.Helper()
	return testenv.Run(t, 10*time.Second, func(ctx context.Context) error { return c.Run(ctx, js) })
}

func cacheFreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestCacheConfigValidation(t *testing.T) {
	s := newCacheSigner(t)
	good := CacheConfig{Trusted: s.trusted(), Bucket: cacheTestBucket, Logger: cacheQuietLogger()}
	if _, err := NewCache(good); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mutate := range map[string]func(*CacheConfig){
		"no trusted key":    func(c *CacheConfig) { c.Trusted = nil },
		"short trusted key": func(c *CacheConfig) { c.Trusted = []ed25519.PublicKey{make([]byte, 5)} },
		"no bucket":         func(c *CacheConfig) { c.Bucket = "" },
		"bad bucket":        func(c *CacheConfig) { c.Bucket = "a.b" },
		"negative interval": func(c *CacheConfig) { c.RefreshInterval = -time.Second },
		"http fallback":     func(c *CacheConfig) { c.FallbackURL = "http://issuer.example/.well-known/jwks.json" },
		"ftp fallback":      func(c *CacheConfig) { c.FallbackURL = "ftp://issuer.example/jwks.json" },
		"hostless fallback": func(c *CacheConfig) { c.FallbackURL = "https:///jwks.json" },
	} {
		cfg := good
		mutate(&cfg)
		if _, err := NewCache(cfg); err == nil {
			t.Errorf("%s: NewCache accepted it", name)
		}
	}
	for _, u := range []string{"https://issuer.example/.well-known/jwks.json", "http://127.0.0.1:8080/.well-known/jwks.json", "http://localhost/jwks", "http://[::1]:80/jwks"} {
		cfg := good
		cfg.FallbackURL = u
		if _, err := NewCache(cfg); err != nil {
			t.Errorf("fallback %s: %v", u, err)
		}
	}
	c, _ := NewCache(good)
	if c.KeySet() != nil || c.Ready() || c.Status() != (CacheStatus{}) {
		t.Errorf("a new cache without disk copy holds something: %+v", c.Status())
	}
	if err := c.Run(context.Background(), nil); err == nil {
		t.Error("Run accepted a nil JetStream")
	}
}

func TestCacheFollowsBundle(t *testing.T) {
	js := cacheNATS(t)
	kv := cacheCreateBucket(t, js)
	s := newCacheSigner(t)

	raw1, ks1 := s.bundle(1)
	cachePut(t, kv, raw1)
	c := newTestCache(t, CacheConfig{Trusted: s.trusted()})
	cacheRun(t, c, js)

	// The initial value.
	cacheWaitFor(t, "the initial bundle", func() bool { return c.Status().Sequence == 1 })
	st := c.Status()
	if st.Source != CacheSourceNATS || st.Keys != ks1.Len() || !c.Ready() || st.Updates != 1 || st.BundleTime.IsZero() {
		t.Fatalf("after the initial bundle: %+v", st)
	}
	if !cacheSameKeys(c.KeySet(), ks1) {
		t.Fatal("held keys are not the bundle's")
	}
	cacheWaitFor(t, "the watch", func() bool { return c.Status().Watching })

	// A higher sequence swaps.
	raw3, ks3 := s.bundle(3)
	cachePut(t, kv, raw3)
	cacheWaitFor(t, "bundle 3", func() bool { return c.Status().Sequence == 3 })
	if !cacheSameKeys(c.KeySet(), ks3) {
		t.Fatal("held keys are not bundle 3's")
	}

	// An older and an equal sequence are dropped and counted.
	raw2, _ := s.bundle(2)
	cachePut(t, kv, raw2)
	cacheWaitFor(t, "an older bundle counted as stale", func() bool { return c.Status().Stale == 1 })
	doc, _ := cacheTestJWKS(t)
	cachePut(t, kv, s.sign(3, time.Now().Unix()+1, doc))
	cacheWaitFor(t, "an equal-sequence bundle counted as stale", func() bool { return c.Status().Stale == 2 })
	// A byte-identical copy of the held bundle is a redelivery, not news
	// (checked below: Stale stays 2).
	cachePut(t, kv, raw3)

	// A forged bundle (another distribution key, higher sequence) and
	// garbage are dropped and counted, and never replace the held set.
	// (One at a time: the bucket keeps one revision, so values put faster
	// than the watch delivers them may be superseded before delivery.)
	forger := newCacheSigner(t)
	forged, _ := forger.bundle(100)
	for i, bad := range [][]byte{forged, []byte("not a JWS at all"), []byte(strings.Replace(string(raw3), ".", ".x", 1))} {
		cachePut(t, kv, bad)
		cacheWaitFor(t, fmt.Sprintf("bad bundle %d counted as rejected", i), func() bool { return c.Status().Rejected == uint64(i+1) })
	}
	st = c.Status()
	if st.Sequence != 3 || st.Stale != 2 || st.Updates != 2 || !cacheSameKeys(c.KeySet(), ks3) {
		t.Fatalf("after stale, forged and garbage bundles: %+v", st)
	}

	// Deleting or purging the entry never drops keys, and the watch goes on.
	ctx := context.Background()
	if err := kv.Delete(ctx, cacheBundleKey); err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, cacheBundleKey); err != nil {
		t.Fatal(err)
	}
	raw4, ks4 := s.bundle(4)
	cachePut(t, kv, raw4)
	cacheWaitFor(t, "bundle 4 after a delete and a purge", func() bool { return c.Status().Sequence == 4 })
	if !cacheSameKeys(c.KeySet(), ks4) {
		t.Fatal("held keys are not bundle 4's")
	}
	if st := c.Status(); st.Rejected != 3 || st.Stale != 2 || st.Updates != 3 {
		t.Fatalf("final status: %+v", st)
	}
}

func TestCacheDisk(t *testing.T) {
	js := cacheNATS(t)
	kv := cacheCreateBucket(t, js)
	s := newCacheSigner(t)
	dir := filepath.Join(t.TempDir(), "cache") // created by the cache
	path := filepath.Join(dir, CacheFileName)

	raw1, _ := s.bundle(1)
	cachePut(t, kv, raw1)
	c := newTestCache(t, CacheConfig{Trusted: s.trusted(), CacheDir: dir})
	stop := cacheRun(t, c, js)
	cacheWaitFor(t, "bundle 1", func() bool { return c.Status().Sequence == 1 })
	raw2, ks2 := s.bundle(2)
	cachePut(t, kv, raw2)
	cacheWaitFor(t, "bundle 2", func() bool { return c.Status().Sequence == 2 })
	stop()

	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(raw2) {
		t.Fatal("the disk copy is not the last good bundle")
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("disk copy mode %v, want 0600", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("cache dir holds %d entries, want only the bundle (no temp files left)", len(entries))
	}

	// A restarted pod serves the disk copy at once, before Run (NATS may
	// well be down).
	c2 := newTestCache(t, CacheConfig{Trusted: s.trusted(), CacheDir: dir})
	if st := c2.Status(); st.Source != CacheSourceDisk || st.Sequence != 2 || !c2.Ready() || !cacheSameKeys(c2.KeySet(), ks2) {
		t.Fatalf("restarted cache: %+v", st)
	}
	// NATS then confirms the same bundle: the source becomes nats, and a
	// redelivery is not stale.
	cacheRun(t, c2, js)
	cacheWaitFor(t, "NATS confirming the disk copy", func() bool { return c2.Status().Source == CacheSourceNATS })
	if st := c2.Status(); st.Sequence != 2 || st.Stale != 0 || st.Rejected != 0 {
		t.Fatalf("after confirmation: %+v", st)
	}

	// A tampered or forged disk copy is never trusted.
	forger := newCacheSigner(t)
	forged, _ := forger.bundle(50)
	tampered := []byte(strings.Replace(string(raw2), ".e", ".f", 1))
	if string(tampered) == string(raw2) {
		t.Fatal("test bug: tampering changed nothing")
	}
	for name, content := range map[string][]byte{
		"tampered": tampered,
		"forged":   forged,
		"garbage":  []byte("garbage"),
		"empty":    nil,
		"huge":     make([]byte, cacheMaxDocument+1),
	} {
		d := t.TempDir()
		if err := os.WriteFile(filepath.Join(d, CacheFileName), content, 0o600); err != nil {
			t.Fatal(err)
		}
		c3 := newTestCache(t, CacheConfig{Trusted: s.trusted(), CacheDir: d})
		if c3.KeySet() != nil || c3.Ready() || c3.Status().Rejected != 1 {
			t.Errorf("%s disk copy: %+v", name, c3.Status())
		}
	}
}

func TestCacheBucketCreatedLater(t *testing.T) {
	js := cacheNATS(t)
	s := newCacheSigner(t)
	c := newTestCache(t, CacheConfig{Trusted: s.trusted()})
	var notFound atomic.Int32
	c.hookBind = func(err error) {
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			notFound.Add(1)
		}
	}
	cacheRun(t, c, js)
	cacheWaitFor(t, "retries while the bucket is missing", func() bool { return notFound.Load() >= 2 })
	if c.Ready() {
		t.Fatal("ready without a bundle")
	}
	kv := cacheCreateBucket(t, js)
	raw, ks := s.bundle(1)
	cachePut(t, kv, raw)
	cacheWaitFor(t, "the bundle once the bucket exists", func() bool { return c.Status().Sequence == 1 })
	if !cacheSameKeys(c.KeySet(), ks) {
		t.Fatal("held keys are not the bundle's")
	}
}

func TestCacheNATSRestart(t *testing.T) {
	store := t.TempDir()
	ns := cacheStartNATS(t, "127.0.0.1:0", store)
	addr := ns.Addr().String()
	var stopOnce sync.Once
	t.Cleanup(func() { stopOnce.Do(ns.Stop) })
	js := cacheConnect(t, ns.URL())
	kv := cacheCreateBucket(t, js)
	s := newCacheSigner(t)
	raw1, _ := s.bundle(1)
	cachePut(t, kv, raw1)

	c := newTestCache(t, CacheConfig{Trusted: s.trusted()})
	cacheRun(t, c, js)
	cacheWaitFor(t, "bundle 1", func() bool { st := c.Status(); return st.Sequence == 1 && st.Watching })

	stopOnce.Do(ns.Stop)
	cacheWaitFor(t, "the watch to report the outage", func() bool { return !c.Status().Watching })
	if c.Status().Sequence != 1 || c.KeySet() == nil {
		t.Fatal("keys lost while NATS is down")
	}

	ns2 := cacheStartNATS(t, addr, store)
	t.Cleanup(ns2.Stop)
	pub := cacheConnect(t, ns2.URL())
	kv2, err := pub.KeyValue(context.Background(), cacheTestBucket)
	if err != nil {
		t.Fatal(err)
	}
	raw2, ks2 := s.bundle(2)
	cachePut(t, kv2, raw2)
	cacheWaitFor(t, "bundle 2 after the restart", func() bool { return c.Status().Sequence == 2 })
	if !cacheSameKeys(c.KeySet(), ks2) {
		t.Fatal("held keys are not bundle 2's")
	}
	cacheWaitFor(t, "the watch after the restart", func() bool { return c.Status().Watching })
	if st := c.Status(); st.Stale != 0 || st.Rejected != 0 {
		t.Fatalf("re-created watch counted redeliveries: %+v", st)
	}
}

func TestCacheHTTPFallback(t *testing.T) {
	doc, ks := cacheTestJWKS(t)
	var hits atomic.Int32
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/jwks.json" {
			http.NotFound(w, r)
			return
		}
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(doc)
	}))
	t.Cleanup(ts.Close)

	// NATS is unreachable: nothing listens at addr yet.
	addr := cacheFreeAddr(t)
	js := cacheConnect(t, "nats://"+addr)
	s := newCacheSigner(t)
	c := newTestCache(t, CacheConfig{
		Trusted:       s.trusted(),
		FallbackURL:   ts.URL + "/.well-known/jwks.json",
		HTTPClient:    ts.Client(),
		FallbackGrace: 20 * time.Millisecond,
	})
	cacheRun(t, c, js)
	cacheWaitFor(t, "the HTTP fallback", func() bool { return c.Status().Source == CacheSourceHTTP })
	st := c.Status()
	if st.Sequence != 0 || !st.BundleTime.IsZero() || st.Keys != ks.Len() || !c.Ready() || !cacheSameKeys(c.KeySet(), ks) {
		t.Fatalf("from HTTP: %+v", st)
	}

	// NATS comes up with a bundle: the first signed bundle replaces the
	// HTTP key set, and the fallback stops.
	ns := cacheStartNATS(t, addr, t.TempDir())
	t.Cleanup(ns.Stop)
	kv := cacheCreateBucket(t, cacheConnect(t, ns.URL()))
	// Published once the cache watches: a write still in the server's
	// queue for the stream while the watch starts can miss both the
	// subscription and the first read, and wait for the periodic one.
	cacheWaitFor(t, "the watch", func() bool { return c.Status().Watching })
	raw, ks1 := s.bundle(1)
	cachePut(t, kv, raw)
	cacheWaitFor(t, "the signed bundle", func() bool { return c.Status().Source == CacheSourceNATS })
	if st := c.Status(); st.Sequence != 1 || !cacheSameKeys(c.KeySet(), ks1) {
		t.Fatalf("after the signed bundle: %+v", st)
	}
	if hits.Load() == 0 {
		t.Fatal("the fallback was never fetched")
	}
	// An HTTP key set never replaces a signed bundle.
	c.applyHTTP(ks, doc)
	if st := c.Status(); st.Source != CacheSourceNATS || st.Sequence != 1 {
		t.Fatalf("HTTP replaced a signed bundle: %+v", st)
	}
}

func TestCacheHTTPFallbackBadResponses(t *testing.T) {
	var mode atomic.Int32
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		switch mode.Load() {
		case 0:
			http.Error(w, "nope", http.StatusInternalServerError)
		case 1:
			_, _ = w.Write([]byte(`{"keys":[]}`))
		case 2:
			_, _ = w.Write(make([]byte, cacheMaxDocument+10))
		default:
			_, _ = w.Write([]byte(`{"keys":`))
		}
	}))
	t.Cleanup(ts.Close)
	s := newCacheSigner(t)
	c := newTestCache(t, CacheConfig{Trusted: s.trusted(), FallbackURL: ts.URL, HTTPClient: ts.Client()})
	for m := int32(0); m < 4; m++ {
		mode.Store(m)
		if err := c.fetchHTTP(context.Background()); err == nil {
			t.Errorf("mode %d: fetch succeeded", m)
		}
	}
	if c.Ready() {
		t.Fatal("a bad HTTP response produced a key set")
	}
}

func TestCacheRefreshUnknownKID(t *testing.T) {
	js := cacheNATS(t)
	kv := cacheCreateBucket(t, js)
	s := newCacheSigner(t)
	raw1, ks1 := s.bundle(1)
	cachePut(t, kv, raw1)

	clock := struct {
		sync.Mutex
		t time.Time
	}{t: time.Now()}
	now := func() time.Time { clock.Lock(); defer clock.Unlock(); return clock.t }
	c := newTestCache(t, CacheConfig{Trusted: s.trusted(), RefreshInterval: time.Minute, Now: now})

	// Not bound yet (Run has not started): nothing happens, nothing blocks.
	c.RefreshUnknownKID(context.Background(), "kid")
	var gets atomic.Int32
	release := make(chan struct{})
	c.hookGet = func() {
		gets.Add(1)
		<-release
	}
	// Bind the bucket as Run would, without a watch, so that only the
	// on-demand Get can bring keys in.
	runCtx, cancelRun := context.WithCancel(context.Background())
	t.Cleanup(cancelRun)
	c.kv.Store(&cacheKV{kv: kv, nc: js.Conn(), ctx: runCtx})

	var started, done sync.WaitGroup
	for range 50 {
		started.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			started.Done()
			c.RefreshUnknownKID(context.Background(), "unknown")
		}()
	}
	started.Wait()
	cacheWaitFor(t, "the refresh in flight", func() bool { return gets.Load() == 1 })
	close(release)
	done.Wait()
	if n := gets.Load(); n != 1 {
		t.Fatalf("50 concurrent calls made %d KV Gets, want 1", n)
	}
	if st := c.Status(); st.Sequence != 1 || st.Source != CacheSourceNATS || !cacheSameKeys(c.KeySet(), ks1) {
		t.Fatalf("after the refresh: %+v", st)
	}

	// Within RefreshInterval nothing more happens, even with news in NATS.
	raw2, ks2 := s.bundle(2)
	cachePut(t, kv, raw2)
	c.RefreshUnknownKID(context.Background(), "unknown")
	if n := gets.Load(); n != 1 || c.Status().Sequence != 1 {
		t.Fatalf("a call within the interval made %d Gets in all, sequence %d", n, c.Status().Sequence)
	}

	// After it, one more refresh picks the news up.
	clock.Lock()
	clock.t = clock.t.Add(time.Minute)
	clock.Unlock()
	c.RefreshUnknownKID(context.Background(), "unknown")
	if n := gets.Load(); n != 2 || c.Status().Sequence != 2 || !cacheSameKeys(c.KeySet(), ks2) {
		t.Fatalf("after the interval: %d Gets, %+v", n, c.Status())
	}

	// A caller whose context ends stops waiting; the shared refresh goes on.
	clock.Lock()
	clock.t = clock.t.Add(time.Minute)
	clock.Unlock()
	block := make(chan struct{})
	c.hookGet = func() { gets.Add(1); <-block }
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c.RefreshUnknownKID(ctx, "unknown") // returns although the Get is blocked
	close(block)
	cacheWaitFor(t, "the refresh to finish", func() bool {
		c.refreshMu.Lock()
		defer c.refreshMu.Unlock()
		return c.refreshing == nil
	})
	if n := gets.Load(); n != 3 {
		t.Fatalf("%d Gets, want 3", n)
	}
}

func TestCacheConcurrentKeySet(t *testing.T) {
	s := newCacheSigner(t)
	docA, ksA := cacheTestJWKS(t)
	docB, ksB := cacheTestJWKS(t)
	const n = 200
	bundles := make([][]byte, n)
	for i := range bundles {
		doc := docA
		if i%2 == 1 {
			doc = docB
		}
		bundles[i] = s.sign(uint64(i+1), time.Now().Unix(), doc)
	}
	c := newTestCache(t, CacheConfig{Trusted: s.trusted()})
	kidA, kidB := ksA.IDs()[0], ksB.IDs()[0]

	stop := make(chan struct{})
	var readers sync.WaitGroup
	var bad atomic.Int32
	for range 8 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ks := c.KeySet()
				if ks == nil {
					continue
				}
				_, okA := ks.Lookup(kidA)
				_, okB := ks.Lookup(kidB)
				if okA == okB || ks.Len() != 2 {
					bad.Add(1)
				}
				_ = c.Status()
			}
		})
	}
	var writers sync.WaitGroup
	for w := range 2 { // two writers, as watch and refresh would be
		writers.Go(func() {
			for i := w; i < n; i += 2 {
				c.applySigned(bundles[i], CacheSourceNATS)
			}
		})
	}
	writers.Wait()
	close(stop)
	readers.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d reads saw an inconsistent key set", bad.Load())
	}
	st := c.Status()
	if st.Sequence != n || st.Updates+st.Stale != n || !cacheSameKeys(c.KeySet(), ksB) {
		t.Fatalf("after the swaps: %+v", st)
	}
}

func TestCacheBackoff(t *testing.T) {
	b := cacheBackoff{min: 100 * time.Millisecond, max: time.Second}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		w *= time.Millisecond
		if d := b.next(); d < w/2 || d > w {
			t.Errorf("wait %d: %v, want in [%v, %v]", i, d, w/2, w)
		}
	}
	b.reset()
	if d := b.next(); d > 100*time.Millisecond {
		t.Errorf("after reset: %v", d)
	}
}

func BenchmarkCacheKeySet(b *testing.B) {
	s := newCacheSigner(b)
	raw, _ := s.bundle(1)
	c := newTestCache(b, CacheConfig{Trusted: s.trusted()})
	if !c.applySigned(raw, CacheSourceNATS) {
		b.Fatal("bundle not applied")
	}
	b.ReportAllocs()
	var ks *KeySet
	for b.Loop() {
		ks = c.KeySet()
	}
	if ks == nil {
		b.Fatal("no key set")
	}
}

// TestCacheResignedBundle: during a distribution-key rollover an issuer on
// the new key signs the held bundle again under the same sequence. The
// sidecar takes the new signature without counting it stale or dropping
// its keys; a restarted sidecar whose disk copy carries the old signature
// is confirmed by it (else it would stay not ready until the ring next
// changed); and the disk copy becomes one the new key alone verifies.
func TestCacheResignedBundle(t *testing.T) {
	js := cacheNATS(t)
	kv := cacheCreateBucket(t, js)
	oldKey, newKey := newCacheSigner(t), newCacheSigner(t)
	both := append(oldKey.trusted(), newKey.trusted()...)
	doc, ks := cacheTestJWKS(t)
	oldRaw, newRaw := oldKey.sign(5, time.Now().Unix(), doc), newKey.sign(5, time.Now().Unix()+1, doc)
	dir := t.TempDir()
	path := filepath.Join(dir, CacheFileName)

	for _, c := range []struct {
		name string
		// disk is the disk copy before the cache starts (nil: none), kv
		// what NATS holds when it starts, then is what NATS gets next.
		disk, kv, then []byte
	}{
		{"running sidecar", nil, oldRaw, newRaw},
		{"restarted sidecar with the old signature on disk", oldRaw, newRaw, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := os.RemoveAll(path); err != nil {
				t.Fatal(err)
			}
			if c.disk != nil {
				if err := os.WriteFile(path, c.disk, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cachePut(t, kv, c.kv)
			cache := newTestCache(t, CacheConfig{Trusted: both, CacheDir: dir})
			stop := cacheRun(t, cache, js)
			cacheWaitFor(t, "bundle 5 from NATS", func() bool {
				st := cache.Status()
				return st.Sequence == 5 && st.Source == CacheSourceNATS
			})
			held := cache.KeySet()
			if c.then != nil {
				cacheWaitFor(t, "the watch", func() bool { return cache.Status().Watching })
				cachePut(t, kv, c.then)
				cacheWaitFor(t, "the new signature on disk", func() bool {
					got, _ := os.ReadFile(path)
					return string(got) == string(c.then)
				})
			}
			st := cache.Status()
			if st.Stale != 0 || st.Rejected != 0 || st.Sequence != 5 || !cache.Ready() || cache.KeySet() != held || !cacheSameKeys(held, ks) {
				t.Fatalf("after the re-signed bundle: %+v", st)
			}
			stop()
			got, err := os.ReadFile(path)
			if err != nil || string(got) != string(newRaw) {
				t.Fatalf("disk copy is not the bundle signed by the new key (%v)", err)
			}
			// After the rollover: a sidecar that trusts only the new key
			// serves the disk copy at once.
			after := newTestCache(t, CacheConfig{Trusted: newKey.trusted(), CacheDir: dir})
			if st := after.Status(); st.Source != CacheSourceDisk || st.Sequence != 5 {
				t.Fatalf("new-key-only sidecar on the disk copy: %+v", st)
			}
		})
	}
}

// TestCacheAwaitKID: a caller waiting for a kid the held set lacks is
// woken by the bundle that brings it; it gives up when its context ends,
// and does not wait at all while the cache follows no NATS.
func TestCacheAwaitKID(t *testing.T) {
	js := cacheNATS(t)
	kv := cacheCreateBucket(t, js)
	s := newCacheSigner(t)
	raw1, ks1 := s.bundle(1)
	cachePut(t, kv, raw1)
	c := newTestCache(t, CacheConfig{Trusted: s.trusted()})
	held := ks1.IDs()[0]

	// Before Run: nothing could bring a key.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if c.AwaitKID(ctx, "no-such-kid") {
		t.Fatal("an unknown kid reported held")
	}
	if ctx.Err() != nil {
		t.Fatal("waited although the cache follows no NATS")
	}

	stop := cacheRun(t, c, js)
	defer stop()
	cacheWaitFor(t, "the watch", func() bool { return c.Status().Watching && c.Status().Sequence == 1 })
	if !c.AwaitKID(context.Background(), held) {
		t.Fatal("a held kid reported missing")
	}

	tests := []struct {
		name    string
		publish bool // a bundle holding the kid arrives while the caller waits
		want    bool
	}{
		{"the bundle arrives", true, true},
		{"nothing arrives", false, false},
	}
	seq := uint64(1)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, ks := s.bundle(seq + 1)
			kid := ks.IDs()[0]
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			got := make(chan bool, 1)
			go func() { got <- c.AwaitKID(ctx, kid) }()
			if tt.publish {
				seq++
				cachePut(t, kv, raw)
			} else {
				// A bundle without the kid wakes the caller, which
				// goes on waiting until its context ends.
				seq++
				other, _ := s.bundle(seq)
				cachePut(t, kv, other)
				cacheWaitFor(t, "the other bundle", func() bool { return c.Status().Sequence == seq })
				cancel()
			}
			select {
			case ok := <-got:
				if ok != tt.want {
					t.Fatalf("AwaitKID = %v, want %v", ok, tt.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("AwaitKID did not return")
			}
		})
	}
}

// TestCacheReconnectKeepsWatch: when the NATS server restarts, the cache
// keeps its watch (no new bind of the bucket, which is a STREAM.INFO to the
// bucket's stream leader) and reads the bundle again after a random wait
// up to its catch-up delay, drawn here by the test, so that every client
// of the restarted server does not read at the same moment.
func TestCacheReconnectKeepsWatch(t *testing.T) {
	store := t.TempDir()
	ns := cacheStartNATS(t, "127.0.0.1:0", store)
	addr := ns.Addr().String()
	var stopOnce sync.Once
	t.Cleanup(func() { stopOnce.Do(ns.Stop) })
	js := cacheConnect(t, ns.URL())
	kv := cacheCreateBucket(t, js)
	s := newCacheSigner(t)
	raw1, _ := s.bundle(1)
	cachePut(t, kv, raw1)

	// No periodic read during the test: only the reconnection reads.
	c := newTestCache(t, CacheConfig{Trusted: s.trusted(), RefreshInterval: time.Hour})
	var binds, catchUps atomic.Int32
	c.hookBind = func(error) { binds.Add(1) }
	c.jitter = func(d time.Duration) time.Duration {
		if d == cacheCatchUpDelay {
			catchUps.Add(1)
			return time.Millisecond
		}
		return d / 2
	}
	cacheRun(t, c, js)
	cacheWaitFor(t, "bundle 1", func() bool { st := c.Status(); return st.Sequence == 1 && st.Watching })

	stopOnce.Do(ns.Stop)
	cacheWaitFor(t, "the watch to report the outage", func() bool { return !c.Status().Watching })
	ns2 := cacheStartNATS(t, addr, store)
	t.Cleanup(ns2.Stop)
	// Written while the cache may not be back yet: the read after the
	// reconnection brings it if the subscription missed it.
	pub := cacheConnect(t, ns2.URL())
	kv2, err := pub.KeyValue(context.Background(), cacheTestBucket)
	if err != nil {
		t.Fatal(err)
	}
	raw2, _ := s.bundle(2)
	cachePut(t, kv2, raw2)
	cacheWaitFor(t, "bundle 2 after the restart", func() bool { return c.Status().Sequence == 2 })
	cacheWaitFor(t, "a catch-up wait drawn", func() bool { return catchUps.Load() >= 1 })
	if n := binds.Load(); n != 1 {
		t.Errorf("the bucket was bound %d times, want once: a reconnection must keep the watch", n)
	}
}
