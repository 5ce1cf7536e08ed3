package issuer

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
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
	limit   rate.Limit
	burst   int
	buckets map[string]*rate.Limiter
	max     int // entries before full buckets are swept
}

func newFailureLimiter(perMinute int) *failureLimiter {
	return &failureLimiter{
		limit:   rate.Limit(float64(perMinute) / 60),
		burst:   perMinute,
		buckets: make(map[string]*rate.Limiter),
		max:     100_000,
	}
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
	tokens := b.TokensAt(now)
	if tokens >= 1 {
		return false, 0
	}
	wait := (1 - tokens) / float64(l.limit)
	return true, int(math.Ceil(wait))
}

// attempt takes one attempt for key before the expensive check, so that
// concurrent requests cannot all slip past an almost empty bucket; release
// gives it back once the check has succeeded (successes cost nothing). With
// no attempt left it returns ok=false and the seconds until there is one.
func (l *failureLimiter) attempt(key string, now time.Time) (release func(), ok bool, wait int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.bucket(key, now).ReserveN(now, 1)
	if d := r.DelayFrom(now); !r.OK() || d > 0 {
		r.CancelAt(now)
		return nil, false, max(int(math.Ceil(d.Seconds())), 1)
	}
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		r.CancelAt(now)
	}, true, 0
}

// fail records a failed attempt for key.
func (l *failureLimiter) fail(key string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bucket(key, now).AllowN(now, 1)
}

// bucket returns key's bucket, making a full one if there is none. l.mu
// must be held.
func (l *failureLimiter) bucket(key string, now time.Time) *rate.Limiter {
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= l.max {
			l.sweep(now)
		}
		b = rate.NewLimiter(l.limit, l.burst)
		l.buckets[key] = b
	}
	return b
}

// sweep forgets keys whose bucket has refilled: they hold no information.
// If every bucket is still draining (a distributed attack), the oldest
// state is dropped wholesale rather than growing without bound.
func (l *failureLimiter) sweep(now time.Time) {
	for k, b := range l.buckets {
		if b.TokensAt(now) >= float64(l.burst) {
			delete(l.buckets, k)
		}
	}
	if len(l.buckets) >= l.max {
		clear(l.buckets)
	}
}
