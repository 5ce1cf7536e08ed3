package issuer

import (
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLimiterSuccessesCostNothing: an attempt given back after a right
// password restores exactly one token, however many other attempts were
// made while it was checked. With golang.org/x/time/rate's reservation
// cancelling, a success overlapped by another attempt that started 60/N s
// or more later (a slow argon2id check on a loaded issuer) restored
// nothing: successful logins behind one proxy IP could drain its bucket.
func TestLimiterSuccessesCostNothing(t *testing.T) {
	l := newFailureLimiter(20) // one token every 3 s
	t0 := time.Unix(1_700_000_000, 0)
	for range 10 {
		l.attempt("ip", t0) // failures: never given back
	}
	// A's check takes 3 s (one refill interval); B starts as it ends.
	relA, okA, _ := l.attempt("ip", t0)
	relB, okB, _ := l.attempt("ip", t0.Add(3*time.Second))
	if !okA || !okB {
		t.Fatal("attempts refused")
	}
	relA()
	relB()
	if got := available(l, "ip", t0.Add(3*time.Second)); got != 11 {
		t.Fatalf("%v tokens after two overlapping successes, want 11 (10 left + 1 refilled)", got)
	}

	// A minute of 20 logins a second, each taking 200 ms (4 in flight at
	// any time), all successful, after 12 failures: the bucket never runs
	// out and fills up again.
	l = newFailureLimiter(20)
	for range 12 {
		l.attempt("ip", t0)
	}
	type inflight struct {
		release func()
		done    time.Time
	}
	var pending []inflight
	for ms := 0; ms < 60_000; ms += 50 {
		now := t0.Add(time.Duration(ms) * time.Millisecond)
		for len(pending) > 0 && !pending[0].done.After(now) {
			pending[0].release()
			pending = pending[1:]
		}
		rel, ok, _ := l.attempt("ip", now)
		if !ok {
			t.Fatalf("a login refused at +%dms with no failure since the start", ms)
		}
		pending = append(pending, inflight{rel, now.Add(200 * time.Millisecond)})
	}
	for _, p := range pending {
		p.release()
	}
	if got := available(l, "ip", t0.Add(time.Minute)); got != 20 {
		t.Fatalf("%v tokens a minute after the last failure, want 20", got)
	}
}

// TestLimiterRefill: the figures docs/security.md states, at the limiter:
// N at once, then one every 60/N s, Retry-After counting down.
func TestLimiterRefill(t *testing.T) {
	l := newFailureLimiter(5)
	t0 := time.Unix(1_700_000_000, 0)
	for i := range 5 {
		if _, ok, _ := l.attempt("alice", t0); !ok {
			t.Fatalf("attempt %d refused", i)
		}
	}
	if _, ok, wait := l.attempt("alice", t0); ok || wait != 12 {
		t.Fatalf("6th attempt: ok %v wait %d, want refused for 12 s", ok, wait)
	}
	if _, ok, wait := l.attempt("alice", t0.Add(5*time.Second)); ok || wait != 7 {
		t.Fatalf("at +5s: ok %v wait %d, want refused for 7 s", ok, wait)
	}
	if _, ok, _ := l.attempt("alice", t0.Add(12*time.Second)); !ok {
		t.Fatal("refused at +12s")
	}
	if _, ok, _ := l.attempt("bob", t0); !ok {
		t.Fatal("an unseen key is refused")
	}
	l.attempt("alice", t0.Add(time.Hour))
	if got := available(l, "alice", t0.Add(time.Hour)); got != 4 {
		t.Fatalf("%v tokens after an hour and a failure, want 4", got)
	}
}

// TestClientAuthFloodIsBounded: wrong client credentials sent at once from
// one IP get at most failures_per_ip argon2id checks, like password
// guesses; the rest are refused with 429 before any hashing. (Client
// authentication used to check the IP's bucket first and count the failure
// only after hashing, so every request of a concurrent flood was hashed.)
func TestClientAuthFloodIsBounded(t *testing.T) {
	e := newEnv(t)
	e.cfg.RateLimit.FailuresPerIP = 5
	in := e.start()
	in.waitReady(t)
	var evaluated, limited atomic.Int32
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			// Known and unknown clients alike.
			id := []string{"app", fmt.Sprintf("nobody-%d", i)}[i%2]
			r := in.post(t, id, "wrong-secret", url.Values{"grant_type": {"client_credentials"}})
			switch r.Status {
			case 401:
				evaluated.Add(1)
			case 429:
				limited.Add(1)
			default:
				t.Errorf("status %d %v", r.Status, r.Body)
			}
		})
	}
	wg.Wait()
	if evaluated.Load() > 5 || evaluated.Load()+limited.Load() != 40 {
		t.Fatalf("%d wrong client credentials evaluated, %d limited; want at most 5 evaluated", evaluated.Load(), limited.Load())
	}
}

// available is how many attempts key has at now.
func available(l *failureLimiter, key string, now time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok || !b.full.After(now) {
		return int(l.span / l.interval)
	}
	return int((l.span - b.full.Sub(now)) / l.interval)
}
