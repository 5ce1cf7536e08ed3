// Command soak runs tokenwarden for a bounded time under a steady
// verification load, with revocations and key rotations in the background,
// and fails if it leaks or answers wrongly.
//
// It starts a nats-server with JetStream (built from the module's
// github.com/nats-io/nats-server/v2, or -nats-bin), one issuer and one
// sidecar from the binary given by -bin, each its own process on 127.0.0.1.
// Then, for -d:
//
//   - an open-loop sender asks the sidecar's /verify at a fixed -rate over
//     -c keep-alive connections, with the access tokens of -users logged-in
//     users (refreshed at half their lifetime), and with recently revoked
//     tokens; latency is measured from each request's intended send time,
//     so a stall counts for every request it delays (no coordinated
//     omission);
//   - -revoke-rate revocations a second through the admin API, by jti, sid
//     and sub in turn, each followed until the sidecar rejects the token;
//   - an on-demand key rotation every -rotate-every;
//   - every -sample, the resident memory (VmRSS) of each process and the
//     sidecar's and issuer's go_goroutines, heap, live revocation events
//     and token-cache entries from /metrics.
//
// Every answer is checked: a token not revoked must get 200; a revoked
// token must get 401 for any request sent after the sidecar first answered
// it "revoked". The run fails (exit 1) on a wrong answer, an unexpected
// error, a revocation not applied within 10 s, goroutines that grow by
// more than -goroutine-slack between the end of the -warmup and the end,
// or resident memory that grows by more than -rss-growth percent plus
// -rss-slack-mb (plus 2 KiB for each added live revocation event or
// token-cache entry, which are bounded by the access-token lifetime and the
// cache size, not leaks).
//
//	go run ./test/soak -bin bin/tokenwarden -d 5m -rate 1000
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

type options struct {
	bin, natsBin   string
	duration       time.Duration
	warmup         time.Duration // 0: chosen from duration
	rate           int
	conns          int
	users          int
	revokeRate     float64
	rotateEvery    time.Duration // 0: chosen from duration
	sampleEvery    time.Duration
	tokenTTL       time.Duration
	goroutineSlack int
	rssGrowthPct   float64
	rssSlackMB     float64
	out            io.Writer
}

func defaults() options {
	return options{
		bin: "bin/tokenwarden", duration: 5 * time.Minute, rate: 1000, conns: 32, users: 32, revokeRate: 2,
		sampleEvery: 5 * time.Second, tokenTTL: time.Minute, goroutineSlack: 5, rssGrowthPct: 25, rssSlackMB: 10, out: os.Stdout,
	}
}

func main() {
	o := defaults()
	flag.StringVar(&o.bin, "bin", o.bin, "tokenwarden binary (make build)")
	flag.StringVar(&o.natsBin, "nats-bin", "", "nats-server binary (default: go build github.com/nats-io/nats-server/v2)")
	flag.DurationVar(&o.duration, "d", o.duration, "duration of the load, warm-up included")
	flag.DurationVar(&o.warmup, "warmup", 0, "warm-up before the start figures (default d/5, at most 30s)")
	flag.IntVar(&o.rate, "rate", o.rate, "verifications per second sent to the sidecar (open loop)")
	flag.IntVar(&o.conns, "c", o.conns, "keep-alive connections to the sidecar")
	flag.IntVar(&o.users, "users", o.users, "users logged in, one live access token each")
	flag.Float64Var(&o.revokeRate, "revoke-rate", o.revokeRate, "revocations per second (jti, sid, sub in turn)")
	flag.DurationVar(&o.rotateEvery, "rotate-every", 0, "on-demand key rotation period (default d/10, within 5s..30s)")
	flag.DurationVar(&o.sampleEvery, "sample", o.sampleEvery, "memory and goroutine sampling period")
	flag.DurationVar(&o.tokenTTL, "token-ttl", o.tokenTTL, "access-token lifetime the issuer is given")
	flag.IntVar(&o.goroutineSlack, "goroutine-slack", o.goroutineSlack, "goroutines a process may gain between warm-up and end")
	flag.Float64Var(&o.rssGrowthPct, "rss-growth", o.rssGrowthPct, "resident memory growth allowed after warm-up, percent")
	flag.Float64Var(&o.rssSlackMB, "rss-slack-mb", o.rssSlackMB, "resident memory growth allowed after warm-up, MB, on top of -rss-growth")
	flag.Parse()
	// Killed with go run (a SIGKILL of go would orphan it); its processes
	// die with it (testenv.Start), and a SIGINT or SIGTERM stops them
	// through ctx, then the report is printed.
	if err := testenv.DieWithParent(); err != nil {
		printf(os.Stderr, "soak: %v\n", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		printf(os.Stderr, "soak: %v\n", err)
		os.Exit(1)
	}
}

// errFailed is returned when the run completed and its checks failed; the
// report says which.
var errFailed = errors.New("FAIL")

func (o *options) settle() error {
	if o.duration < 10*time.Second {
		return fmt.Errorf("-d %s: want at least 10s", o.duration)
	}
	if o.warmup == 0 {
		o.warmup = min(30*time.Second, o.duration/5)
	}
	if o.rotateEvery == 0 {
		o.rotateEvery = min(30*time.Second, max(5*time.Second, o.duration/10))
	}
	switch {
	case o.warmup >= o.duration:
		return fmt.Errorf("-warmup %s must be shorter than -d %s", o.warmup, o.duration)
	case o.rate < 1 || o.conns < 1 || o.users < 1:
		return errors.New("-rate, -c and -users must be positive")
	case o.revokeRate < 0 || o.revokeRate > 50:
		return errors.New("-revoke-rate: want 0 to 50")
	case o.rotateEvery < 3*time.Second:
		return errors.New("-rotate-every: want at least 3s (the issuer's propagation delay is 2s)")
	case o.tokenTTL < 30*time.Second:
		return errors.New("-token-ttl: want at least 30s (tokens are replaced at half their lifetime, revoked ones followed for 10s)")
	case o.sampleEvery < 100*time.Millisecond:
		return errors.New("-sample: want at least 100ms")
	}
	return nil
}

func run(ctx context.Context, o options) error {
	if err := o.settle(); err != nil {
		return err
	}
	if _, err := os.Stat(o.bin); err != nil {
		return fmt.Errorf("-bin: %w (run make build)", err)
	}
	dir, err := os.MkdirTemp("", "tokenwarden-soak")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	if o.natsBin == "" {
		if o.natsBin, err = buildNATS(ctx, dir); err != nil {
			return err
		}
	}
	c, err := startCluster(ctx, o, dir)
	if err != nil {
		if c != nil {
			_ = c.stop()
			printf(os.Stderr, "%s", c.logTails(20))
		}
		return err
	}
	o.out = &lockedWriter{w: o.out}
	d := newDriver(o, c)
	runErr := d.run(ctx)
	stopErr := c.stop()
	failed := d.report(stopErr)
	if failed || runErr != nil {
		printf(o.out, "%s", c.logTails(20))
	}
	switch {
	case runErr != nil:
		return runErr
	case failed:
		return errFailed
	}
	return nil
}

// printf writes a line of the report; a report that cannot be written
// has nowhere to say so.
func printf(w io.Writer, format string, args ...any) { _, _ = fmt.Fprintf(w, format, args...) }

// lockedWriter serialises the report's writers (the sampler and the run).
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
