package revocation

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/natsconn"
)

// Observer receives what a Consumer does, for metrics. Its methods are
// called one at a time (from the goroutine that applies the stream or from
// the live subscription's) and must not block.
type Observer interface {
	// Applied: e was verified and added to the set. delay is the time
	// from the event's iat (millisecond precision) to now. Events replayed
	// while the consumer catches up are reported too, while CaughtUp() is
	// still false: an observer measuring propagation delay should skip
	// those, whose delay is their age.
	Applied(e *Event, delay time.Duration)
	// Dropped: a message was not applied because it is "forged" (not
	// signed by a trusted distribution key, not a JWS) or "invalid"
	// (signed, but not a valid event).
	Dropped(reason string)
	// Lag is the number of messages in the stream not yet delivered to the
	// consumer, as last reported by JetStream.
	Lag(n uint64)
}

// Reasons given to Observer.Dropped.
const (
	DropForged  = "forged"
	DropInvalid = "invalid"
)

type nopObserver struct{}

func (nopObserver) Applied(*Event, time.Duration) {}
func (nopObserver) Dropped(string)                {}
func (nopObserver) Lag(uint64)                    {}

// ConsumerOption configures a Consumer.
type ConsumerOption func(*Consumer)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) ConsumerOption { return func(c *Consumer) { c.log = l } }

// WithClock sets the clock for propagation delays (default time.Now).
func WithClock(now func() time.Time) ConsumerOption { return func(c *Consumer) { c.now = now } }

// WithObserver sets the observer (default none).
func WithObserver(o Observer) ConsumerOption { return func(c *Consumer) { c.obs = o } }

// WithVerifyWorkers sets how many goroutines verify signatures (default
// GOMAXPROCS). Events are still applied in stream order.
func WithVerifyWorkers(n int) ConsumerOption { return func(c *Consumer) { c.workers = n } }

// WithLiveSubscription turns the live subscription on or off (default on):
// see Run.
func WithLiveSubscription(on bool) ConsumerOption { return func(c *Consumer) { c.live = on } }

// WithVerified sets a function called with every message of the stream
// that verified and the signed bytes it came in: applied, or not applied
// because the set already holds its id or it has expired. It is called in
// stream order, from the goroutine that applies the stream, after the
// message's batch reached the set and before CaughtUp can turn true for
// it; only for the ordered consumer, not the live subscription (whose
// events the ordered consumer delivers again). It must not block. The
// issuer uses it to learn which distribution key signed each event during
// a distribution-key rollover.
func WithVerified(f func(e *Event, data []byte)) ConsumerOption {
	return func(c *Consumer) { c.onVerified = f }
}

// WithProbeInterval sets how often a running consumer asks JetStream for
// the stream's state to confirm its set is current (default 5s, jittered
// by a quarter either way): see Staleness. Tests shorten it.
func WithProbeInterval(d time.Duration) ConsumerOption {
	return func(c *Consumer) {
		if d > 0 {
			c.probeEvery = d
		}
	}
}

// Tuning of the consumer.
const (
	// pullBatch is how many messages JetStream may have in flight to the
	// consumer: large enough that a replay is not paced by round trips.
	pullBatch = 2048
	// applyBatch bounds how many verified events one write transaction
	// applies, and how many messages wait between reading, verifying and
	// applying. A replay applies in transactions this large: a bucket of the
	// set is copied once per transaction that changes it, so fewer, larger
	// transactions copy less (100,000 events apply in half the time with
	// 8192 as with 1024).
	applyBatch = 8192
	// maxVerifyBatch bounds how many signatures a verify worker checks as
	// one batch: past 64 a batch is no cheaper per signature
	// (internal/edbatch's benchmark), and smaller batches keep every worker
	// busy during a replay.
	maxVerifyBatch = 64
	// idleCheck is how long the consumer waits for a message before it
	// asks JetStream whether anything is left to replay (the events at the
	// end of the stream may have expired since it looked).
	idleCheck = time.Second
	// Backoff between attempts to bind the stream.
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
	// requestTimeout bounds each JetStream API call of the consumer.
	requestTimeout = 10 * time.Second
	// probeInterval is how often a running consumer reads the stream's
	// state: to confirm its set is current (Staleness), and to make sure
	// the stream is still the one it bound (a stream deleted and created
	// again starts its sequences over, and a consumer resuming at its old
	// sequence would skip the new stream's first events). One small
	// JetStream API request per consumer per probe.
	probeInterval = 5 * time.Second
	// maxProbes bounds the probes waiting for the consumer to reach the
	// stream's last sequence they saw.
	maxProbes = 8
	// resetAttempts is how often the ordered consumer tries to recreate
	// itself (backing off 1s, 2s, 4s, 8s) before it gives up; Run then
	// logs the failure and starts over from the last sequence processed.
	resetAttempts = 5
)

var errStreamRecreated = errors.New("revocation stream was deleted or recreated")

// Consumer replays the revocation stream into a Set and then follows it.
type Consumer struct {
	js      jetstream.JetStream
	prefix  string
	trusted []ed25519.PublicKey
	set     *Set
	log     *slog.Logger
	now     func() time.Time
	obs     Observer
	obsMu   sync.Mutex // one Observer call at a time
	workers int
	live    bool
	// onVerified: see WithVerified; nil when unset.
	onVerified func(e *Event, data []byte)
	// seen holds events the live subscription verified, by digest of the
	// signed bytes, so the ordered consumer need not check them again.
	seen seenCache

	running  atomic.Bool
	caughtUp atomic.Bool
	lastSeq  atomic.Uint64
	// verifiedSeq is the stream sequence of the last event that verified:
	// freshness is confirmed against it, not lastSeq, so a sidecar that
	// drops every new event (a distribution key it does not trust signs
	// them) does not count as current.
	verifiedSeq atomic.Uint64
	fresh       freshness

	// Owned by the goroutine of Run (which applies events too).
	target     uint64    // stream's last sequence when the replay began
	created    time.Time // creation time of the stream last bound
	bound      time.Time // when the current session asked for the stream (real time)
	started    time.Time
	lastDrop   time.Time
	suppressed int

	// Tests shorten these.
	probeEvery    time.Duration
	resetAttempts int
}

// NewConsumer returns a consumer of prefix's revocation stream that
// applies to set every event signed by one of trusted. Nothing happens
// until Run.
func NewConsumer(js jetstream.JetStream, prefix string, trusted []ed25519.PublicKey, set *Set, opts ...ConsumerOption) *Consumer {
	c := &Consumer{
		js:      js,
		prefix:  prefix,
		trusted: trusted,
		set:     set,
		log:     slog.Default(),
		now:     time.Now,
		obs:     nopObserver{},
		workers: runtime.GOMAXPROCS(0),
		live:    true,

		probeEvery:    probeInterval,
		resetAttempts: resetAttempts,
	}
	for _, o := range opts {
		o(c)
	}
	if c.obs == nil {
		c.obs = nopObserver{}
	}
	c.workers = max(c.workers, 1)
	return c
}

// CaughtUp reports whether the consumer has applied everything the stream
// held when it first subscribed (it stays true afterwards, also while NATS
// is unreachable: the set is then as fresh as it can be).
func (c *Consumer) CaughtUp() bool { return c.caughtUp.Load() }

// LastSeq is the stream sequence of the last message processed (applied
// or dropped).
func (c *Consumer) LastSeq() uint64 { return c.lastSeq.Load() }

// Staleness is how long ago the consumer last confirmed, against
// JetStream, that its set held every event the stream held at that moment;
// ok is false until the first replay is done (there is nothing to be
// stale yet: CaughtUp is false). A running consumer confirms it on every
// probe of the stream (see WithProbeInterval) once it has processed up to
// the last sequence the probe saw, so the staleness stays within about a
// probe interval while NATS is reachable, also under a steady flood of
// events, and grows while NATS, the stream or the consumer is not. It is
// measured in real time, whatever WithClock says.
func (c *Consumer) Staleness() (d time.Duration, ok bool) {
	if !c.caughtUp.Load() {
		return 0, false
	}
	return c.fresh.since(), true
}

// Run consumes until ctx is done, then returns nil.
//
// Events reach the set two ways. A plain NATS subscription on the stream's
// subjects (the live subscription) applies each event as it is published:
// that is NATS's cheapest fan-out, several times faster than JetStream
// delivering a stored message to each of a thousand consumers. It may miss
// events (disconnects, a slow consumer) and may see an event the stream
// did not store (the issuer then answered 503, and a revocation the issuer
// signed is applied all the same), so it is only a shortcut: the ordered
// consumer below is what guarantees that every stored event is applied and
// what CaughtUp reports on. An event the live subscription verified is not
// verified again when the ordered consumer delivers the same bytes.
//
// The ordered consumer: Run binds the stream,
// retrying with backoff while the stream does not exist or NATS is
// unreachable, replays it from the start with an ordered consumer and
// follows it. Every message is verified (on several goroutines) before it
// reaches the set, in stream order; anything else is dropped and
// reported. After a disconnect the ordered consumer resumes after the last
// message it delivered; if it gives up, Run recreates it from the sequence
// after the last one processed; if the stream was deleted and created
// again, Run replays the new one from its start. No event is skipped, and
// Set.Apply's idempotence means none is applied twice. Run returns an
// error only if it cannot work at all: no trusted key, or the NATS
// connection closed for good (the caller then connects again and calls
// RunOn; internal/natsconn.Run does both). GC of the set is the caller's
// (Set.RunGC).
func (c *Consumer) Run(ctx context.Context) error { return c.RunOn(ctx, c.js) }

// RunOn is Run on js rather than the JetStream context given to
// NewConsumer: a caller that replaces a NATS connection closed for good
// runs the consumer again on the new one, and it resumes where it stopped
// (the set, the last sequence and CaughtUp carry over). Calls must not
// overlap.
func (c *Consumer) RunOn(ctx context.Context, js jetstream.JetStream) error {
	if len(c.trusted) == 0 {
		return errors.New("revocation consumer: no trusted distribution key")
	}
	if js == nil {
		return errors.New("revocation consumer: no JetStream context")
	}
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("revocation consumer: already running")
	}
	defer c.running.Store(false)
	if c.started.IsZero() {
		c.started = c.now()
	}
	if c.live {
		sub, err := js.Conn().Subscribe(subjects(c.prefix), c.onLive)
		if err != nil {
			c.log.Warn("revocation live subscription failed; events arrive through JetStream only", "err", err)
		} else {
			defer func() { _ = sub.Unsubscribe() }()
		}
	}
	backoff := minBackoff
	failures := 0
	var warned time.Time
	for {
		progress, err := c.session(ctx, js)
		if ctx.Err() != nil {
			return nil
		}
		if conn := js.Conn(); conn != nil && conn.IsClosed() {
			return fmt.Errorf("revocation consumer: %w", nats.ErrConnectionClosed)
		}
		if progress {
			backoff, failures = minBackoff, 0
		}
		failures++
		// A Warn for the first failure and one a minute while they last:
		// an outage stays visible without a line per attempt.
		lvl := slog.LevelDebug
		if failures == 1 || time.Since(warned) >= time.Minute {
			lvl, warned = slog.LevelWarn, time.Now()
		}
		c.log.Log(ctx, lvl, "revocation stream unavailable, retrying",
			"stream", StreamName(c.prefix), "err", err, "attempt", failures, "retry_in", backoff)
		// Jitter spreads the sidecars of a cluster that lost NATS together.
		wait := backoff/2 + rand.N(backoff/2+1) // #nosec G404 -- jitter, not a secret
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// job is one message on its way through verification to the set.
type job struct {
	seq     uint64
	pending uint64
	data    []byte
	ev      *Event
	err     error
	done    chan struct{}
}

// session binds the stream, creates an ordered consumer from where the
// last session stopped and processes messages until something fails. It
// reports whether it processed any message.
func (c *Consumer) session(ctx context.Context, js jetstream.JetStream) (progress bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	// Probes of an earlier session may name sequences of a stream since
	// recreated.
	c.fresh.clear()
	c.bound = time.Now()
	rctx, rcancel := context.WithTimeout(ctx, requestTimeout)
	stream, err := js.Stream(rctx, StreamName(c.prefix))
	rcancel()
	if err != nil {
		return false, fmt.Errorf("bind stream: %w", err)
	}
	info := stream.CachedInfo()
	state := info.State
	last := c.lastSeq.Load()
	if last > 0 && (state.LastSeq < last || !c.created.IsZero() && !info.Created.Equal(c.created)) {
		// The stream was deleted and made again: its sequences start over.
		// Replay it whole; Apply ignores the events the set already holds.
		c.log.Warn("revocation stream was recreated, replaying it", "stream", StreamName(c.prefix),
			"last_seq", state.LastSeq, "had", last)
		last = 0
		c.lastSeq.Store(0)
		c.verifiedSeq.Store(0)
	}
	c.created = info.Created
	if !c.caughtUp.Load() {
		c.target = state.LastSeq
	}

	// The ordered consumer replays from the start (or resumes after the
	// last message processed) and, after a disconnect or a missed
	// heartbeat, recreates itself from the message after the last one it
	// delivered.
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy, MaxResetAttempts: c.resetAttempts}
	if last > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, last+1
	}
	rctx, rcancel = context.WithTimeout(ctx, requestTimeout)
	cons, err := stream.OrderedConsumer(rctx, cfg)
	rcancel()
	if err != nil {
		return false, fmt.Errorf("create consumer: %w", err)
	}
	// Caught up only once a consumer exists: an empty stream is replayed,
	// but a sidecar that cannot follow it (a consumer limit, permissions)
	// must not report ready.
	if !c.caughtUp.Load() && (state.Msgs == 0 || state.LastSeq <= last) {
		c.markCaughtUp(0)
	}
	if c.caughtUp.Load() && state.LastSeq <= c.verifiedSeq.Load() {
		// Nothing was published while this consumer was away.
		c.fresh.confirm(c.bound)
	}
	if info := cons.CachedInfo(); info != nil && info.NumPending == 0 && !c.caughtUp.Load() {
		c.markCaughtUp(0)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(pullBatch))
	if err != nil {
		return false, fmt.Errorf("consume: %w", err)
	}
	// Stop unblocks the reader's Next, also while the ordered consumer is
	// recreating itself after a disconnect.
	go func() { <-ctx.Done(); it.Stop() }()

	work := make(chan *job, applyBatch)
	order := make(chan *job, applyBatch)
	readErr := make(chan error, 1)
	go c.read(ctx, it, work, order, readErr)
	for range c.workers {
		go c.verify(ctx, work)
	}
	watched := make(chan struct{})
	go func() { defer close(watched); c.watchStream(ctx, cancel, js.Conn(), stream, cons, info.Created) }()
	// A probe of this session must not land after the next one began.
	defer func() { cancel(nil); <-watched }()
	progress, err = c.apply(ctx, cons, order, readErr)
	if cause := context.Cause(ctx); ctx.Err() != nil && cause != nil {
		err = cause
	}
	return progress, err
}

// watchStream probes the stream every probe interval (jittered, so the
// sidecars of a cluster do not ask together): it ends the session when
// the stream is gone or is no longer the one the session bound, and
// otherwise records what the probe proves about the set's freshness.
func (c *Consumer) watchStream(ctx context.Context, cancel context.CancelCauseFunc, nc *nats.Conn, stream jetstream.Stream, cons jetstream.Consumer, created time.Time) {
	// A probe outlived by the next proves little, and one sent while
	// disconnected would wait in nats.go's reconnect buffer.
	timeout := min(requestTimeout, max(c.probeEvery, time.Second))
	for {
		wait := c.probeEvery*3/4 + rand.N(c.probeEvery/2+1) // #nosec G404 -- jitter, not a secret
		if !natsconn.Sleep(ctx, wait) {
			return
		}
		if nc != nil && !nc.IsConnected() {
			continue
		}
		// Taken before the request: the state it returns holds at least
		// every event stored by then.
		t := time.Now()
		rctx, rcancel := context.WithTimeout(ctx, timeout)
		info, err := stream.Info(rctx)
		rcancel()
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			cancel(errStreamRecreated)
			return
		case err != nil:
			continue
		case !info.Created.Equal(created):
			cancel(errStreamRecreated)
			return
		}
		if c.fresh.await(t, info.State.LastSeq, &c.verifiedSeq, maxProbes) {
			continue
		}
		// Behind the stream's last sequence. That is usually events in
		// flight, which applyBatch confirms on arrival; but the events
		// at the end of the stream may have expired before they were
		// delivered, and then the last sequence is never reached: what
		// proves the set current then is that JetStream has nothing left
		// to deliver and everything it delivered was processed.
		t = time.Now()
		rctx, rcancel = context.WithTimeout(ctx, timeout)
		ci, err := cons.Info(rctx)
		rcancel()
		if err == nil && ci.NumPending == 0 && ci.Delivered.Stream <= c.verifiedSeq.Load() {
			c.fresh.confirm(t)
		}
	}
}

// read hands each message to the verifiers and, in stream order, to the
// applier.
func (c *Consumer) read(ctx context.Context, it jetstream.MessagesContext, work, order chan<- *job, readErr chan<- error) {
	var err error
	defer func() {
		readErr <- err // before the close, which is what the applier waits for
		close(work)
		close(order)
	}()
	for {
		var msg jetstream.Msg
		msg, err = it.Next()
		if err != nil {
			return
		}
		j := &job{data: msg.Data(), done: make(chan struct{})}
		if md, err := msg.Metadata(); err == nil {
			j.seq, j.pending = md.Sequence.Stream, md.NumPending
		} else {
			j.err = fmt.Errorf("%w: no JetStream metadata: %w", ErrInvalid, err)
		}
		select {
		case work <- j:
		case <-ctx.Done():
			err = ctx.Err()
			return
		}
		select {
		case order <- j:
		case <-ctx.Done():
			err = ctx.Err()
			return
		}
	}
}

// verify checks signatures, several in parallel: Ed25519 verification is
// the bulk of the cost of a replay. A worker takes whatever has queued up,
// up to maxVerifyBatch, and checks it as one batch; a live event, which
// arrives alone, is checked on its own at once.
func (c *Consumer) verify(ctx context.Context, work <-chan *job) {
	batch := make([]*job, 0, maxVerifyBatch)
	data := make([][]byte, 0, maxVerifyBatch)
	for {
		select {
		case j, ok := <-work:
			if !ok {
				return
			}
			batch = append(batch[:0], j)
		case <-ctx.Done():
			return
		}
	more:
		for len(batch) < maxVerifyBatch {
			select {
			case j, ok := <-work:
				if !ok {
					break more
				}
				batch = append(batch, j)
			default:
				break more
			}
		}
		c.verifyBatch(batch, data[:0])
	}
}

func (c *Consumer) verifyBatch(batch []*job, data [][]byte) {
	for _, j := range batch {
		if j.err != nil {
			continue
		}
		if ev := c.seen.take(j.data); ev != nil {
			j.ev = ev
			continue
		}
		data = append(data, j.data)
	}
	events, errs := VerifyBatch(data, c.trusted)
	k := 0
	for _, j := range batch {
		if j.err == nil && j.ev == nil {
			j.ev, j.err = events[k], errs[k]
			k++
		}
		if c.onVerified == nil {
			j.data = nil // the applier needs the bytes only for WithVerified
		}
		close(j.done)
	}
}

// onLive applies an event from the live subscription. A message that does
// not verify is ignored here: if the stream stored it, the ordered
// consumer drops and counts it.
func (c *Consumer) onLive(m *nats.Msg) {
	if len(m.Data) > MaxEventSize {
		return
	}
	ev, err := Verify(m.Data, c.trusted)
	if err != nil {
		return
	}
	c.seen.put(m.Data, ev)
	if c.set.Apply(ev) {
		c.obsMu.Lock()
		c.obs.Applied(ev, max(c.now().Sub(ev.Time()), 0))
		c.obsMu.Unlock()
	}
}

// apply applies verified events in stream order, a batch at a time.
func (c *Consumer) apply(ctx context.Context, cons jetstream.Consumer, order <-chan *job, readErr <-chan error) (progress bool, err error) {
	batch := make([]*job, 0, applyBatch)
	events := make([]*Event, 0, applyBatch)
	applied := make([]bool, applyBatch)
	idle := time.NewTimer(idleCheck)
	defer idle.Stop()
	wait := func(j *job) bool {
		select {
		case <-j.done:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		select {
		case <-ctx.Done():
			return progress, ctx.Err()
		case <-idle.C:
			if !c.caughtUp.Load() {
				c.checkReplayed(ctx, cons)
			}
			idle.Reset(idleCheck)
			continue
		case j, ok := <-order:
			if !ok {
				return progress, fmt.Errorf("messages: %w", <-readErr)
			}
			if !wait(j) {
				return progress, ctx.Err()
			}
			batch = append(batch[:0], j)
		}
		// Take whatever else has arrived, up to a batch.
		closed := false
	more:
		for len(batch) < applyBatch {
			select {
			case j, ok := <-order:
				if !ok {
					closed = true
					break more
				}
				if !wait(j) {
					return progress, ctx.Err()
				}
				batch = append(batch, j)
			default:
				break more
			}
		}
		c.applyBatch(batch, events[:0], applied)
		progress = true
		if closed {
			return progress, fmt.Errorf("messages: %w", <-readErr)
		}
		idle.Reset(idleCheck)
	}
}

func (c *Consumer) applyBatch(batch []*job, events []*Event, applied []bool) {
	for _, j := range batch {
		if j.err != nil {
			events = append(events, nil)
			c.dropped(j)
			continue
		}
		events = append(events, j.ev)
	}
	c.set.applyAll(events, applied[:len(events)])
	now := c.now()
	lastJob := batch[len(batch)-1]
	c.obsMu.Lock()
	for i, j := range batch {
		if applied[i] {
			c.obs.Applied(j.ev, max(now.Sub(j.ev.Time()), 0))
		} else if j.err == nil {
			c.log.Debug("revocation event not applied: duplicate, expired or applied live", "seq", j.seq, "id", j.ev.ID)
		}
	}
	c.obs.Lag(lastJob.pending)
	c.obsMu.Unlock()
	if c.onVerified != nil {
		for _, j := range batch {
			if j.err == nil {
				c.onVerified(j.ev, j.data)
			}
			j.data = nil
		}
	}
	for i := len(batch) - 1; i >= 0; i-- {
		if batch[i].seq != 0 {
			c.lastSeq.Store(batch[i].seq)
			break
		}
	}
	for i := len(batch) - 1; i >= 0; i-- {
		if batch[i].seq != 0 && batch[i].err == nil {
			c.verifiedSeq.Store(batch[i].seq)
			break
		}
	}
	c.fresh.reached(c.verifiedSeq.Load())
	if !c.caughtUp.Load() && (c.lastSeq.Load() >= c.target || lastJob.pending == 0) {
		c.markCaughtUp(lastJob.pending)
	}
}

// dropped reports a message that failed verification, logging at most one
// line a second (anyone who may publish on the subjects could otherwise
// flood the logs).
func (c *Consumer) dropped(j *job) {
	reason := DropForged
	if errors.Is(j.err, ErrInvalid) {
		reason = DropInvalid
	}
	c.obsMu.Lock()
	c.obs.Dropped(reason)
	c.obsMu.Unlock()
	now := c.now()
	if now.Sub(c.lastDrop) < time.Second {
		c.suppressed++
		return
	}
	c.log.Warn("revocation message dropped", "reason", reason, "seq", j.seq, "err", j.err, "suppressed", c.suppressed)
	c.lastDrop, c.suppressed = now, 0
}

// checkReplayed asks JetStream whether the consumer has been delivered
// everything: the messages the replay was waiting for may have expired
// from the stream meanwhile.
func (c *Consumer) checkReplayed(ctx context.Context, cons jetstream.Consumer) {
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	info, err := cons.Info(rctx)
	if err != nil {
		return
	}
	if info.NumPending == 0 && info.Delivered.Stream <= c.lastSeq.Load() {
		c.markCaughtUp(0)
	}
}

func (c *Consumer) markCaughtUp(lag uint64) {
	// The replay has applied everything the stream held when this session
	// bound it, at the latest.
	c.fresh.confirm(c.bound)
	if c.caughtUp.CompareAndSwap(false, true) {
		c.obsMu.Lock()
		c.obs.Lag(lag)
		c.obsMu.Unlock()
		c.log.Info("revocation stream replayed", "stream", StreamName(c.prefix),
			"last_seq", c.lastSeq.Load(), "events", c.set.Len(), "took", c.now().Sub(c.started).Round(time.Millisecond))
	}
}

// freshness tracks when the set was last confirmed to hold every event
// the stream held at that moment, and the probes that will confirm it once
// the consumer reaches the stream's last sequence they saw.
type freshness struct {
	mu     sync.Mutex
	at     time.Time // real time, with its monotonic reading
	probes []probe
}

// probe: at time t the stream's last sequence was at most seq.
type probe struct {
	t   time.Time
	seq uint64
}

func (f *freshness) since() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.at.IsZero() {
		return 0
	}
	return max(time.Since(f.at), 0)
}

func (f *freshness) confirm(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.confirmLocked(t)
}

func (f *freshness) confirmLocked(t time.Time) {
	if t.After(f.at) {
		f.at = t
	}
}

func (f *freshness) clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.probes = f.probes[:0]
}

// await records a probe at t that saw last sequence seq, and reports
// whether the consumer had already processed it (the probe then confirmed
// the set at once). lastSeq is read under the lock, after the probe is
// recorded: applyBatch stores the sequence and then calls reached, so one
// of the two sees the other.
func (f *freshness) await(t time.Time, seq uint64, lastSeq *atomic.Uint64, limit int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if lastSeq.Load() >= seq {
		f.confirmLocked(t)
		return true
	}
	if len(f.probes) >= limit {
		// The newest probes prove the most once reached.
		f.probes = append(f.probes[:0], f.probes[1:]...)
	}
	f.probes = append(f.probes, probe{t: t, seq: seq})
	return false
}

// reached confirms every probe whose sequence the consumer has processed.
func (f *freshness) reached(lastSeq uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	kept := f.probes[:0]
	for _, p := range f.probes {
		if p.seq <= lastSeq {
			f.confirmLocked(p.t)
		} else {
			kept = append(kept, p)
		}
	}
	f.probes = kept
}

// seenCache remembers the events the live subscription verified, by the
// SHA-256 of their signed bytes, until the ordered consumer delivers the
// same bytes: identical bytes verify identically, so the ordered consumer
// takes the event instead of checking the signature a second time. It
// holds at most seenMax events, forgetting the oldest.
type seenCache struct {
	mu    sync.Mutex
	n     atomic.Int32 // len(m), read without the lock
	m     map[[sha256.Size]byte]*Event
	order [][sha256.Size]byte // insertion order, for eviction
}

const seenMax = 4096

func (s *seenCache) put(data []byte, e *Event) {
	d := sha256.Sum256(data)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[[sha256.Size]byte]*Event)
	}
	if _, ok := s.m[d]; ok {
		return
	}
	for len(s.order) >= seenMax {
		delete(s.m, s.order[0])
		s.order = s.order[1:]
	}
	s.m[d] = e
	s.order = append(s.order, d)
	s.n.Store(int32(len(s.m))) // #nosec G115 -- at most seenMax
}

// take returns and forgets the event verified with exactly these bytes,
// or nil. With nothing cached (a replay of old events) it costs no hash.
func (s *seenCache) take(data []byte) *Event {
	if s.n.Load() == 0 {
		return nil
	}
	d := sha256.Sum256(data)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[d]
	if !ok {
		return nil
	}
	delete(s.m, d)
	s.n.Store(int32(len(s.m))) // #nosec G115 -- at most seenMax
	return e
}
