package issuer

import (
	"math"
	"sync"
	"time"
)

// failureLimiter limits failed attempts per key (a username or an IP). Each
// key has a token bucket of burst tokens refilled at burst per minute; a
// failure takes a token, and while the bucket is empty further attempts are
// refused before any password hashing happens. Successes cost nothing.
//
// State is per replica: with N issuer replicas behind a load balancer an
// attacker gets at most N times the budget, which still caps an online
// guessing attack at a few hundred attempts per hour per account.
type failureLimiter struct {
	mu       sync.Mutex
	interval time.Duration // one attempt comes back every interval
	span     time.Duration // a full bucket's worth of intervals
	buckets  map[string]*bucket
	max      int // entries before full buckets are swept
}

// bucket is one key's token bucket, kept as the time it will be full
// again (GCRA): at now it holds (span - (full-now)) / interval attempts.
// Whole nanoseconds, so the figures are exact (the 12th second gives the
// next attempt, not the 12th plus float noise).
//
// It is not golang.org/x/time/rate's Limiter because an attempt must be
// given back exactly once the password proved right, and cancelling a
// rate.Reservation gives back nothing once another attempt started
// 60/N seconds or more after it (3 s per IP by default): a login whose
// argon2id check waited that long on a loaded issuer while another login
// came from the same IP was counted as a failure.
type bucket struct{ full time.Time }

func newFailureLimiter(perMinute int) *failureLimiter {
	interval := time.Minute / time.Duration(perMinute)
	return &failureLimiter{
		interval: interval,
		span:     interval * time.Duration(perMinute),
		buckets:  make(map[string]*bucket),
		max:      100_000,
	}
}

// attempt takes one attempt for key before the expensive check, so that
// concurrent requests cannot all slip past an almost empty bucket; release
// gives it back once the check has succeeded (successes cost nothing). With
// no attempt left it returns ok=false and the whole seconds until there is
// one (at least 1).
func (l *failureLimiter) attempt(key string, now time.Time) (release func(), ok bool, wait int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(key, now)
	if b.full.Before(now) {
		b.full = now
	}
	if d := b.full.Sub(now) - (l.span - l.interval); d > 0 {
		return nil, false, max(int(math.Ceil(d.Seconds())), 1)
	}
	b.full = b.full.Add(l.interval)
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		b.full = b.full.Add(-l.interval)
	}, true, 0
}

// bucket returns key's bucket, making a full one if there is none. l.mu
// must be held.
func (l *failureLimiter) bucket(key string, now time.Time) *bucket {
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= l.max {
			l.sweep(now)
		}
		b = &bucket{full: now}
		l.buckets[key] = b
	}
	return b
}

// sweep forgets keys whose bucket has refilled: they hold no information.
// If every bucket is still draining (a distributed attack), the oldest
// state is dropped wholesale rather than growing without bound.
func (l *failureLimiter) sweep(now time.Time) {
	for k, b := range l.buckets {
		if !b.full.After(now) {
			delete(l.buckets, k)
		}
	}
	if len(l.buckets) >= l.max {
		clear(l.buckets)
	}
}
