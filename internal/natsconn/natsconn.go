// Package natsconn holds the NATS connection behaviour the issuer and the
// sidecar share: connect without failing when the server is down, reconnect
// forever with capped, jittered backoff, and report the state.
package natsconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Options configure Connect.
type Options struct {
	URL       string
	Name      string // client name shown by the server
	CredsFile string
	Logger    *slog.Logger
	// OnState is told true on every (re)connect and false on every
	// disconnect; callers feed readiness and metrics from it.
	OnState func(connected bool)
	// ReconnectMin and ReconnectMax bound the jittered backoff between
	// attempts (defaults 100ms and 5s); tests shorten them.
	ReconnectMin, ReconnectMax time.Duration
	// ReconnectSpread, when positive, makes the first attempt at each
	// server after a disconnection wait a random time up to it, and
	// picks the server at random among those tried least. nats.go
	// otherwise tries the servers it knows at once, one after the other:
	// when a NATS server restarts, every client it had reconnects in the
	// same instant. Further attempts follow the backoff. Sidecars, by the
	// thousand, set it; an issuer need not.
	ReconnectSpread time.Duration

	// jitter draws a wait in [0, d] (tests replace it).
	jitter func(d time.Duration) time.Duration
}

// Reconnect backoff defaults.
const (
	defaultReconnectMin = 100 * time.Millisecond
	defaultReconnectMax = 5 * time.Second
	// warnEvery is how often a streak of failed connection attempts is
	// logged at Warn after its first: a long outage stays visible without a
	// line per attempt.
	warnEvery = time.Minute
)

// Connect returns a connection that retries in the background while the
// server is unreachable: it never fails because NATS is down, only for a
// malformed URL or credentials file.
func Connect(o Options) (*nats.Conn, error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	state := func(up bool) {
		if o.OnState != nil {
			o.OnState(up)
		}
	}
	minD, maxD := o.ReconnectMin, o.ReconnectMax
	if minD <= 0 {
		minD = defaultReconnectMin
	}
	if maxD <= 0 {
		maxD = defaultReconnectMax
	}
	fails := &failureLog{log: log, now: time.Now}
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		// By default nats.go closes the connection for good when the
		// server refuses the credentials twice in a row. Credentials are
		// fixed for the life of the process but the server's can change
		// and change back (a NATS reinstalled with new passwords, then
		// its secret restored): retry like any other outage.
		nats.IgnoreAuthErrorAbort(),
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.CustomReconnectDelay(Backoff(minD, maxD)),
		nats.ConnectHandler(func(nc *nats.Conn) {
			fails.reset()
			log.Info("NATS connected", "url", nc.ConnectedUrlRedacted())
			state(true)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			fails.reset()
			log.Info("NATS reconnected", "url", nc.ConnectedUrlRedacted())
			state(true)
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("NATS disconnected; reconnecting", "err", err)
			}
			state(false)
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			fails.failed("NATS connection attempt failed; retrying", err)
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			switch {
			case sub == nil && isAuthError(err):
				// Reported on every attempt while the server refuses us.
				fails.failed("NATS refused the credentials; retrying", err)
			case sub != nil:
				log.Warn("NATS subscription error", "subject", sub.Subject, "err", err)
			default:
				log.Warn("NATS error", "err", err)
			}
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			if err := nc.LastError(); err != nil {
				log.Warn("NATS connection closed", "err", err)
			}
			state(false)
		}),
	}
	if o.ReconnectSpread > 0 {
		jitter := o.jitter
		if jitter == nil {
			jitter = func(d time.Duration) time.Duration { return rand.N(d + 1) } // #nosec G404 -- jitter, not a secret
		}
		opts = append(opts, nats.ReconnectToServer(reconnectPlan(o.ReconnectSpread, Backoff(minD, maxD), jitter)))
	}
	if o.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	}
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("nats %s: %w", Redact(o.URL), err)
	}
	if nc.IsConnected() {
		state(true)
	} else {
		log.Warn("NATS not reachable yet; retrying in the background", "url", Redact(o.URL))
		state(false)
	}
	return nc, nil
}

// reconnectPlan chooses the server and the wait of each reconnection
// attempt (nats.ReconnectToServer): a server among those of the pool tried
// least since each last connected, at random (the survivors of a lost
// server share its clients); a wait of up to spread, drawn by jitter,
// before the first attempt at a server, and the backoff of the number of
// attempts after that.
func reconnectPlan(spread time.Duration, backoff func(attempt int) time.Duration, jitter func(time.Duration) time.Duration) nats.ReconnectToServerHandler {
	return func(pool []nats.Server, _ nats.ServerInfo) (*nats.Server, time.Duration) {
		if len(pool) == 0 {
			return nil, 0 // nats.go then closes the connection: nothing to try
		}
		least := pool[0].Reconnects
		for _, s := range pool[1:] {
			least = min(least, s.Reconnects)
		}
		var candidates []int
		for i, s := range pool {
			if s.Reconnects == least {
				candidates = append(candidates, i)
			}
		}
		pick := pool[candidates[rand.N(len(candidates))]] // #nosec G404 -- load spreading, not a secret
		if least == 0 {
			return &pick, jitter(spread)
		}
		return &pick, backoff(least)
	}
}

// isAuthError reports the errors nats.go gets when the server refuses the
// client's credentials.
func isAuthError(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired)
}

// failureLog logs a streak of failed connection attempts: the first at
// Warn, then one Warn every warnEvery saying how many failed meanwhile, the
// rest at Debug.
type failureLog struct {
	log *slog.Logger
	now func() time.Time

	mu       sync.Mutex
	streak   int
	lastWarn time.Time
}

func (f *failureLog) failed(msg string, err error) {
	f.mu.Lock()
	f.streak++
	n, now := f.streak, f.now()
	warn := n == 1 || now.Sub(f.lastWarn) >= warnEvery
	if warn {
		f.lastWarn = now
	}
	f.mu.Unlock()
	lvl := slog.LevelDebug
	if warn {
		lvl = slog.LevelWarn
	}
	f.log.Log(context.Background(), lvl, msg, "err", err, "failed_attempts", n)
}

func (f *failureLog) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.streak = 0
}

// Run keeps a NATS connection for as long as ctx lasts. It connects (see
// Connect) and runs f with the connection and a context that ends when
// ctx ends or the connection closes for good, which nats.go still does on
// some server errors. After such a close it connects again, with capped
// jittered backoff, and runs f again, for ever: nothing that depends on
// NATS may stop for good while the process runs. f must return once its
// context ends; the connection is closed after it returns.
//
// Run returns an error only if the first Connect fails (a malformed URL or
// credentials file), and nil once ctx ends.
func Run(ctx context.Context, o Options, f func(ctx context.Context, nc *nats.Conn)) error {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	delay := Backoff(time.Second, 30*time.Second)
	nc, err := Connect(o)
	if err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		if nc != nil && serve(ctx, log, nc, f) {
			// A connection that was up (and then closed for good) starts
			// the backoff over: about a second before the next one.
			attempt = 1
		}
		if !Sleep(ctx, delay(attempt)) { // false at once when ctx has ended
			return nil
		}
		nc = reconnect(o, log, attempt)
	}
}

// reconnect connects again with options that connected before, so
// whatever fails (a credentials file being rotated) may pass next time:
// it logs the failure and returns nil.
func reconnect(o Options, log *slog.Logger, attempt int) *nats.Conn {
	nc, err := Connect(o)
	if err != nil {
		log.Warn("NATS connection could not be rebuilt; retrying", "err", err, "attempt", attempt)
		return nil
	}
	return nc
}

// serve runs f on nc (see runConn) and reports whether nc closed for good
// while ctx lasts.
func serve(ctx context.Context, log *slog.Logger, nc *nats.Conn, f func(context.Context, *nats.Conn)) bool {
	closedForGood := runConn(ctx, nc, f)
	if closedForGood {
		log.Warn("NATS connection closed for good; building a new one", "err", nc.LastError())
	}
	return closedForGood
}

// runConn runs f until ctx ends or nc closes, then closes nc; it reports
// whether nc had closed by itself.
func runConn(ctx context.Context, nc *nats.Conn, f func(context.Context, *nats.Conn)) bool {
	defer nc.Close()
	closed := nc.StatusChanged(nats.CLOSED)
	defer nc.RemoveStatusListener(closed)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(cctx, nc)
	}()
	if nc.IsClosed() { // closed before the listener was registered
		cancel()
	}
	select {
	case <-done:
	case <-closed:
		cancel()
		<-done
	case <-cctx.Done():
		<-done
	}
	return nc.IsClosed() && ctx.Err() == nil
}

// Retry runs f until it succeeds or ctx ends, with capped exponential
// backoff and jitter; it returns ctx's error when ctx ends first.
func Retry(ctx context.Context, log *slog.Logger, what string, f func() error) error {
	delay := Backoff(200*time.Millisecond, 10*time.Second)
	for attempt := 1; ; attempt++ {
		err := f()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d := delay(attempt)
		log.Warn(what+" failed; retrying", "attempt", attempt, "in", d.Round(time.Millisecond), "err", err)
		if !Sleep(ctx, d) {
			return ctx.Err()
		}
	}
}

// Backoff returns full-jitter exponential delays between minD/2 and maxD.
func Backoff(minD, maxD time.Duration) func(attempt int) time.Duration {
	return func(attempt int) time.Duration {
		d := minD << min(max(attempt, 0), 20)
		if d <= 0 || d > maxD {
			d = maxD
		}
		return d/2 + rand.N(d/2+1) // #nosec G404 -- jitter, not a secret
	}
}

// Sleep waits d or until ctx ends; it reports whether the full time passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Redact hides the password (or token) of every URL in a comma-separated
// NATS server list, so it can be logged.
func Redact(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil {
			parts[i] = "<unparseable URL>"
			continue
		}
		if u.User != nil {
			if _, has := u.User.Password(); has {
				u.User = url.UserPassword(u.User.Username(), "xxxxx")
			} else {
				u.User = url.User("xxxxx") // a token in the user part
			}
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}
