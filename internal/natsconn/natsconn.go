// Package natsconn holds the NATS connection behaviour the issuer and the
// sidecar share: connect without failing when the server is down, reconnect
// forever with capped, jittered backoff, and report the state.
package natsconn

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
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
}

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
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.CustomReconnectDelay(Backoff(100*time.Millisecond, 5*time.Second)),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info("NATS connected", "url", nc.ConnectedUrlRedacted())
			state(true)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("NATS reconnected", "url", nc.ConnectedUrlRedacted())
			state(true)
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("NATS disconnected; reconnecting", "err", err)
			}
			state(false)
		}),
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
