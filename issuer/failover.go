package issuer

import (
	"bytes"
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/natsconn"
)

// failoverBudget bounds how long a token request waits out a NATS failover
// before it answers 503. A NATS server restarting (a rolling update, a node
// drain) moves the issuer's connection to another server, and nats.go fails
// the requests in flight with nats.ErrDisconnected; a stream whose leader
// was on that server has none for a moment. Both pass within a second or
// two, and a token request must not fail for them (the Kubernetes end-to-end
// test counts failed logins across a NATS rollout).
const failoverBudget = 5 * time.Second

// transient reports whether err is one of those passing failover errors.
func transient(err error) bool {
	return errors.Is(err, nats.ErrDisconnected) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionReconnecting)
}

// retryFailover runs op again while it fails with a transient error, for up
// to failoverBudget (and while ctx lasts), and returns op's last error.
func retryFailover(ctx context.Context, op func() error) error {
	deadline := time.Now().Add(failoverBudget)
	delay := 50 * time.Millisecond
	for {
		err := op()
		if err == nil || !transient(err) || time.Now().Add(delay).After(deadline) {
			return err
		}
		if !natsconn.Sleep(ctx, delay) {
			return err
		}
		delay = min(2*delay, 500*time.Millisecond)
	}
}

// landed reports whether key holds exactly value: after a write whose reply
// was lost to a failover, the retry finds the key taken (create) or its
// revision moved (update), and only the stored bytes tell whether that was
// this write or another one.
func landed(ctx context.Context, kv jetstream.KeyValue, key string, value []byte) bool {
	var e jetstream.KeyValueEntry
	err := retryFailover(ctx, func() (err error) {
		e, err = kv.Get(ctx, key)
		return err
	})
	return err == nil && bytes.Equal(e.Value(), value)
}

// readyWithin is ready, waiting out a NATS failover: while the connection
// moves to another server the issuer reports NATS disconnected for a moment,
// and a request that needs NATS waits for it (up to failoverBudget) instead
// of failing at once.
func (s *Server) readyWithin(ctx context.Context) error {
	deadline := time.Now().Add(failoverBudget)
	for {
		err := s.ready()
		if err == nil || !time.Now().Before(deadline) {
			return err
		}
		if !natsconn.Sleep(ctx, 50*time.Millisecond) {
			return err
		}
	}
}
