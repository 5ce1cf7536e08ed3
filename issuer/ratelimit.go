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
	mu      sync.Mutex
	rate    float64 // attempts refilled per second
	burst   float64
	buckets map[string]*bucket
	max     int // entries before full buckets are swept
}

// bucket is one key's token bucket: tokens at last, refilled at rate up
// to burst. It is not golang.org/x/time/rate's Limiter because an attempt
// must be given back exactly once the password proved right, and
// cancelling a rate.Reservation gives back nothing once another attempt
// started 60/N seconds or more after it (3 s per IP by default): a login
// whose argon2id check waited that long on a loaded issuer while another
// login came from the same IP was counted as a failure.
type bucket struct {
	tokens float64
	last   time.Time
}

func newFailureLimiter(perMinute int) *failureLimiter {
	return &failureLimiter{
		rate:    float64(perMinute) / 60,
		burst:   float64(perMinute),
		buckets: make(map[string]*bucket),
		max:     100_000,
	}
}

// tokensAt is b's tokens at now (never before its last change).
func (l *failureLimiter) tokensAt(b *bucket, now time.Time) float64 {
	if !now.After(b.last) {
		return b.tokens
	}
	return min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
}

// advance brings b to now.
func (l *failureLimiter) advance(b *bucket, now time.Time) {
	if now.After(b.last) {
		b.tokens, b.last = l.tokensAt(b, now), now
	}
}

// wait is how many whole seconds until a bucket holding tokens has one,
// at least 1. The time is taken in whole nanoseconds first, so that float
// noise (7.000000000000001 s) does not round up to a second more.
func (l *failureLimiter) wait(tokens float64) int {
	d := time.Duration(float64(time.Second) * (1 - tokens) / l.rate)
	return max(int(math.Ceil(d.Seconds())), 1)
}

// blocked reports whether key has no attempts left at now, and if so in how
// many whole seconds it will have one.
func (l *failureLimiter) blocked(key string, now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		return false, 0
	}
	if tokens := l.tokensAt(b, now); tokens < 1 {
		return true, l.wait(tokens)
	}
	return false, 0
}

// attempt takes one attempt for key before the expensive check, so that
// concurrent requests cannot all slip past an almost empty bucket; release
// gives it back once the check has succeeded (successes cost nothing). With
// no attempt left it returns ok=false and the seconds until there is one.
func (l *failureLimiter) attempt(key string, now time.Time) (release func(), ok bool, wait int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(key, now)
	l.advance(b, now)
	if b.tokens < 1 {
		return nil, false, l.wait(b.tokens)
	}
	b.tokens--
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		b.tokens = min(l.burst, b.tokens+1)
	}, true, 0
}

// fail records a failed attempt for key.
func (l *failureLimiter) fail(key string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(key, now)
	l.advance(b, now)
	if b.tokens >= 1 {
		b.tokens--
	}
}

// bucket returns key's bucket, making a full one if there is none. l.mu
// must be held.
func (l *failureLimiter) bucket(key string, now time.Time) *bucket {
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= l.max {
			l.sweep(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	return b
}

// sweep forgets keys whose bucket has refilled: they hold no information.
// If every bucket is still draining (a distributed attack), the oldest
// state is dropped wholesale rather than growing without bound.
func (l *failureLimiter) sweep(now time.Time) {
	for k, b := range l.buckets {
		if l.tokensAt(b, now) >= l.burst {
			delete(l.buckets, k)
		}
	}
	if len(l.buckets) >= l.max {
		clear(l.buckets)
	}
}
