package sidecar

import (
	"crypto/sha256"
	"sync"

	"github.com/tokenwarden/tokenwarden/jwks"
)

// tokenCache remembers verified tokens so a repeat costs one SHA-256 and a
// map lookup instead of a signature verification. It is keyed by the
// token's SHA-256, so it never holds a token, and bounded in entries.
//
// An entry is only a shortcut past the signature and claim parsing: the
// caller still checks expiry and revocation on every hit, and an entry is
// valid only for the key set it was verified against, so a key that leaves
// the JWKS takes its tokens' entries with it.
type tokenCache struct {
	shards [cacheShards]cacheShard
	max    int // per shard
}

const cacheShards = 16

type cacheShard struct {
	mu sync.RWMutex
	m  map[[sha256.Size]byte]cacheEntry
}

type cacheEntry struct {
	claims *jwks.Claims
	keys   *jwks.KeySet
}

func newTokenCache(size int) *tokenCache {
	per := max(size/cacheShards, 1)
	c := &tokenCache{max: per}
	for i := range c.shards {
		// No size hint: a sidecar that sees few distinct tokens should not
		// hold a full cache's worth of empty buckets.
		c.shards[i].m = make(map[[sha256.Size]byte]cacheEntry)
	}
	return c
}

func (c *tokenCache) shard(k *[sha256.Size]byte) *cacheShard { return &c.shards[k[0]%cacheShards] }

func (c *tokenCache) get(k *[sha256.Size]byte) (cacheEntry, bool) {
	s := c.shard(k)
	s.mu.RLock()
	e, ok := s.m[*k]
	s.mu.RUnlock()
	return e, ok
}

// put stores an entry; a full shard first drops entries that have expired
// by expBefore, then, if still full, an arbitrary one (map iteration order
// is random, which makes this random eviction).
func (c *tokenCache) put(k *[sha256.Size]byte, e cacheEntry, expBefore int64) {
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= c.max {
		for key, old := range s.m {
			if old.claims.Expiry <= expBefore {
				delete(s.m, key)
			}
		}
		for key := range s.m {
			if len(s.m) < c.max {
				break
			}
			delete(s.m, key)
		}
	}
	s.m[*k] = e
}

func (c *tokenCache) remove(k *[sha256.Size]byte) {
	s := c.shard(k)
	s.mu.Lock()
	delete(s.m, *k)
	s.mu.Unlock()
}

func (c *tokenCache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}
