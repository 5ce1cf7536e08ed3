package issuer

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/issuer/directory"
)

// TestLoginTimingUnknownVsKnownUser: a wrong password for a user that
// exists and any password for a name that does not take the same time
// through the real token endpoint, so response times do not tell which
// usernames exist. Unknown names are checked against a dummy argon2id hash
// with the default parameters, so the users here are hashed with the
// defaults too (docs/security.md: "as long as your hashes use the default
// parameters").
//
// The samples are interleaved in random order, so drift of a shared,
// noisy machine hits both alike. The test fails only on a clear and
// consistent difference: medians more than 2x apart *and* a Mann-Whitney U
// test at p < 0.001. Skipping the hash for unknown names makes them about
// a hundred times faster and fails it at once.
func TestLoginTimingUnknownVsKnownUser(t *testing.T) {
	if testing.Short() {
		t.Skip("argon2id with production parameters; skipped in -short")
	}
	const pairs = 40
	e := newEnv(t)
	e.cfg.RateLimit = RateLimitConfig{FailuresPerUser: 1 << 20, FailuresPerIP: 1 << 20}
	var users string
	for _, u := range []string{"alice", "bob"} {
		h, err := directory.HashPassword([]byte(u+"-pw"), directory.DefaultParams())
		if err != nil {
			t.Fatal(err)
		}
		users += fmt.Sprintf("  - username: %s\n    password_hash: %q\n", u, h)
	}
	e.cfg.UsersFile = filepath.Join(e.dir, "users-default-params.yaml")
	if err := os.WriteFile(e.cfg.UsersFile, []byte("users:\n"+users), 0o600); err != nil {
		t.Fatal(err)
	}
	in := e.start()
	in.waitReady(t)

	attempt := func(user string) time.Duration {
		form := url.Values{"grant_type": {"password"}, "username": {user}, "password": {"wrong-password"}}
		start := time.Now()
		r := in.post(t, "app", "app-secret", form)
		d := time.Since(start)
		if r.Status != 400 || r.str("error") != "invalid_grant" || r.str("error_description") != "invalid username or password" {
			t.Fatalf("%s: %d %v", user, r.Status, r.Body)
		}
		return d
	}
	unknown := func(i int) string { return fmt.Sprintf("nobody-%d-%d", i, rand.Int64()) }
	// Warm up: the dummy hash, connections, the client-secret cache.
	for i := range 3 {
		attempt("alice")
		attempt(unknown(i))
	}
	var known, unknownT []time.Duration
	for i := range pairs {
		user := []string{"alice", "bob"}[i%2]
		if rand.IntN(2) == 0 {
			known = append(known, attempt(user))
			unknownT = append(unknownT, attempt(unknown(i)))
		} else {
			unknownT = append(unknownT, attempt(unknown(i)))
			known = append(known, attempt(user))
		}
	}
	mk, mu := median(known), median(unknownT)
	ratio := float64(mu) / float64(mk)
	z, auc := mannWhitney(unknownT, known)
	t.Logf("%d known-user samples: median %v (p10 %v, p90 %v); %d unknown-user samples: median %v (p10 %v, p90 %v)",
		len(known), mk, quantile(known, 0.1), quantile(known, 0.9), len(unknownT), mu, quantile(unknownT, 0.1), quantile(unknownT, 0.9))
	t.Logf("median ratio unknown/known %.3f; Mann-Whitney z %.2f, P(unknown slower than known) %.2f", ratio, z, auc)
	if (ratio < 0.5 || ratio > 2) && math.Abs(z) > 3.29 {
		t.Fatalf("unknown and known users are told apart by timing: medians %v vs %v (ratio %.3f), z %.2f", mu, mk, ratio, z)
	}
}

func median(d []time.Duration) time.Duration { return quantile(d, 0.5) }

func quantile(d []time.Duration, q float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1)+0.5)]
}

// mannWhitney returns the normal approximation z of the Mann-Whitney U
// statistic of a against b (positive: a tends to be larger) and the
// probability that a random element of a exceeds one of b (ties count
// half).
func mannWhitney(a, b []time.Duration) (z, auc float64) {
	var u float64
	for _, x := range a {
		for _, y := range b {
			switch {
			case x > y:
				u++
			case x == y:
				u += 0.5
			}
		}
	}
	n1, n2 := float64(len(a)), float64(len(b))
	mean := n1 * n2 / 2
	sd := math.Sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
	return (u - mean) / sd, u / (n1 * n2)
}
