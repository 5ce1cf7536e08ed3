package issuer

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/natsconn"
)

// failoverBudget bounds how long a token request waits out a NATS failover
// before it answers 503. A NATS server restarting (a rolling update, a node
// drain) moves the issuer's connection to another server, and nats.go fails
// the requests in flight with nats.ErrDisconnected; a stream whose leader
// was on that server has none for a moment (a write then gets no answer),
// and its new leader refuses conditional writes until it has applied its
// log (10163, "expected last sequence per subject temporarily
// unavailable"). All of these pass within a few seconds, and a token
// request must not fail for them (the Kubernetes end-to-end test counts
// failed logins across a NATS rollout).
const failoverBudget = 8 * time.Second

// attemptTimeout bounds one attempt within the budget: a write sent while
// its stream has no leader is never answered, and waiting for nats.go's own
// 5 s default would leave no time to try the new leader.
const attemptTimeout = 2 * time.Second

// transient reports whether err is one of those passing failover errors.
// Every 503 JetStream answers means "not now" (no cluster quorum yet,
// JetStream still starting on a restarted server, a new leader catching
// up); an attempt that timed out may have met a stream with no leader.
func transient(err error) bool {
	if errors.Is(err, nats.ErrDisconnected) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var api *jetstream.APIError
	if !errors.As(err, &api) {
		return false
	}
	switch api.ErrorCode {
	case jsErrClusterNotLeader, jsErrStreamOffline:
		return true
	}
	return api.Code == http.StatusServiceUnavailable
}

// JetStream error codes (nats-server's errors.json) that nats.go does not
// name: the stream's leader moved, or the stream is not back yet.
const (
	jsErrClusterNotLeader jetstream.ErrorCode = 10009
	jsErrStreamOffline    jetstream.ErrorCode = 10118
)

// retryFailover runs op again while it fails with a transient error, for up
// to failoverBudget (and while ctx lasts), and returns op's last error. Each
// attempt gets a context of its own that ends after attemptTimeout.
func retryFailover(ctx context.Context, op func(ctx context.Context) error) error {
	deadline := time.Now().Add(failoverBudget)
	delay := 50 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, min(attemptTimeout, time.Until(deadline)))
		err := op(actx)
		cancel()
		if err == nil || !transient(err) || ctx.Err() != nil || time.Now().Add(delay).After(deadline) {
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
	err := retryFailover(ctx, func(ctx context.Context) (err error) {
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
