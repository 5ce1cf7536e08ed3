package directory

import (
	"container/list"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/argon2"
)

// Client-secret verification cache limits: big enough for every client of a
// realistic deployment, small enough (≈100 bytes an entry) to be harmless,
// and short-lived so a secret is re-verified with argon2id every few minutes.
const (
	defaultCacheSize = 10000
	defaultCacheTTL  = 5 * time.Minute
)

// shared is the state a Directory shares with the snapshots reloaded from it:
// process-random keys, the verification cache, the dummy hash and the limit
// on concurrent argon2id computations. It lives in a value made by
// Load/Parse rather than in package globals, so independent directories
// (and tests) never interfere.
type shared struct {
	// hmacKey keys the cache; it never leaves the process, so a cache key
	// (even in a heap dump) is no oracle for a secret.
	hmacKey [32]byte
	cache   *verifyCache

	// dummy is verified against for unknown and disabled names, so they cost
	// the same argon2id work as known ones. Made lazily (one argon2id run)
	// so that parsing stays cheap; Watcher.Run makes it up front.
	dummyOnce   sync.Once
	dummy       phcHash
	dummyParams Params

	// sem bounds concurrent argon2id computations to GOMAXPROCS: more would
	// not be faster (each is CPU-bound on one core at p=1) but would need
	// Params.Memory each, so a burst of logins could exhaust the pod's memory.
	sem chan struct{}

	// argonCalls counts argon2id verifications, so tests can see that a
	// cache hit skipped one.
	argonCalls atomic.Uint64
}

func newShared() *shared {
	s := &shared{
		cache:       newVerifyCache(defaultCacheSize, defaultCacheTTL, time.Now),
		dummyParams: DefaultParams(),
		sem:         make(chan struct{}, max(1, runtime.GOMAXPROCS(0))),
	}
	if _, err := rand.Read(s.hmacKey[:]); err != nil {
		// crypto/rand.Read does not fail on supported platforms (since Go
		// 1.24 it crashes the program instead); a zero key here would make
		// cache keys guessable, so refuse to continue.
		panic("directory: crypto/rand failed: " + err.Error())
	}
	return s
}

// dummyHash returns the per-process dummy hash, making it on first use: a
// hash of a random password that no input will match.
func (s *shared) dummyHash() phcHash {
	s.dummyOnce.Do(func() {
		salt := make([]byte, saltLen)
		pw := make([]byte, 32)
		_, _ = rand.Read(salt) // never fails; see newShared
		_, _ = rand.Read(pw)
		p := s.dummyParams
		s.dummy = phcHash{params: p, salt: salt, key: argon2.IDKey(pw, salt, p.Time, p.Memory, p.Threads, keyLen)}
	})
	return s.dummy
}

// verify runs one argon2id verification, waiting for a free slot first.
func (s *shared) verify(h phcHash, password string) bool {
	s.sem <- struct{}{}
	defer func() { <-s.sem }()
	s.argonCalls.Add(1)
	return h.verify([]byte(password))
}

// cacheKey is HMAC-SHA256(hmacKey, id || 0x00 || secret || 0x00 || secretHash).
// Including the stored hash means a client whose secret changed in a reloaded
// file misses the cache. The encoding is unambiguous: ids and PHC strings
// never contain NUL, so the first NUL ends the id and the last one starts the
// hash, whatever the secret contains.
func (s *shared) cacheKey(id, secret, secretHash string) [sha256.Size]byte {
	m := hmac.New(sha256.New, s.hmacKey[:])
	m.Write([]byte(id))
	m.Write([]byte{0})
	m.Write([]byte(secret))
	m.Write([]byte{0})
	m.Write([]byte(secretHash))
	var k [sha256.Size]byte
	m.Sum(k[:0])
	return k
}

// verifyCache is a bounded set of recently verified cache keys: an LRU list
// with a fixed expiry per entry. Hits do not extend the expiry, so every
// cached secret is re-verified with argon2id at least once per TTL.
type verifyCache struct {
	mu    sync.Mutex
	size  int
	ttl   time.Duration
	now   func() time.Time
	order *list.List // of *cacheEntry, most recently used first
	items map[[sha256.Size]byte]*list.Element
}

type cacheEntry struct {
	key     [sha256.Size]byte
	expires time.Time
}

func newVerifyCache(size int, ttl time.Duration, now func() time.Time) *verifyCache {
	return &verifyCache{size: size, ttl: ttl, now: now, order: list.New(), items: make(map[[sha256.Size]byte]*list.Element)}
}

// hit reports whether k was verified within the TTL, dropping it if expired.
func (c *verifyCache) hit(k [sha256.Size]byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[k]
	if !ok {
		return false
	}
	if !c.now().Before(el.Value.(*cacheEntry).expires) {
		c.order.Remove(el)
		delete(c.items, k)
		return false
	}
	c.order.MoveToFront(el)
	return true
}

// add records a successful verification of k, evicting the least recently
// used entry when full.
func (c *verifyCache) add(k [sha256.Size]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	exp := c.now().Add(c.ttl)
	if el, ok := c.items[k]; ok {
		el.Value.(*cacheEntry).expires = exp
		c.order.MoveToFront(el)
		return
	}
	c.items[k] = c.order.PushFront(&cacheEntry{key: k, expires: exp})
	for c.order.Len() > c.size {
		old := c.order.Back()
		c.order.Remove(old)
		delete(c.items, old.Value.(*cacheEntry).key)
	}
}

// len returns the number of entries, expired or not.
func (c *verifyCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
