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
	// Lag is the number of messages in the stream not yet read by the
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
// it; only for events read from the stream, not the live subscription
// (whose events the next read of the stream brings again). It must not block. The
// issuer uses it to learn which distribution key signed each event during
// a distribution-key rollover.
func WithVerified(f func(e *Event, data []byte)) ConsumerOption {
	return func(c *Consumer) { c.onVerified = f }
}

// WithProbeInterval sets how often a running consumer reads the stream
// without being told to, to confirm its set is current (default 5s,
// jittered by a quarter either way): see Staleness. Tests shorten it.
func WithProbeInterval(d time.Duration) ConsumerOption {
	return func(c *Consumer) {
		if d > 0 {
			c.probeEvery = d
		}
	}
}

// WithCatchUpDelay bounds the random wait before the read a consumer makes
// when its connection comes back (default 2s; 0 reads at once). When a
// NATS server restarts, every client it had reconnects at the same moment:
// spread over this window, their catch-up reads do not arrive as one
// burst. The live subscription resumes at once, so only events published
// while the connection was down wait for it.
func WithCatchUpDelay(d time.Duration) ConsumerOption {
	return func(c *Consumer) {
		if d >= 0 {
			c.catchUpDelay = d
		}
	}
}

// Tuning of the consumer.
const (
	// fetchBatch is how many stored events one read asks for: large enough
	// that a replay is not paced by round trips. fetchMaxBytes bounds the
	// answer's size (events are at most 8 KiB, typically under 1 KiB).
	fetchBatch    = 2048
	fetchMaxBytes = 4 << 20
	// minFetchGap spaces the reads that published events trigger without
	// the live subscription: under a flood a read every minFetchGap takes
	// whatever has been stored meanwhile in one batch, rather than one
	// request per event per follower. With the live subscription on
	// (sidecars, by the thousand) events trigger no read (see onLive);
	// reads after a reconnection are spaced by liveFetchGap, or the probe
	// interval if shorter.
	minFetchGap  = 100 * time.Millisecond
	liveFetchGap = time.Second
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
	// Backoff between attempts to bind the stream.
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
	// requestTimeout bounds each JetStream API call of the consumer.
	requestTimeout = 10 * time.Second
	// probeInterval is how often a running consumer reads the stream
	// without being told to, to confirm its set is current (Staleness):
	// one direct get, which any replica of the stream answers (a 404 when
	// nothing is new), and no JetStream API request.
	probeInterval = 5 * time.Second
	// defaultCatchUpDelay: see WithCatchUpDelay.
	defaultCatchUpDelay = 2 * time.Second
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
	// signed bytes, so the reader need not check them again.
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

	// kick asks the reader to read the stream now: a live event arrived
	// or the connection came back.
	kick chan struct{}
	// Owned by the reader (one at a time): reads interrupted since the
	// last log line about them.
	interruptions    int
	lastInterruptLog time.Time

	// anchor is the last message the reader read, owned by it (sessions
	// run one after the other): see recreated.
	anchor anchor

	// Tests shorten these, or replace the random draw.
	probeEvery   time.Duration
	catchUpDelay time.Duration
	jitter       func(max time.Duration) time.Duration
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

		kick:         make(chan struct{}, 1),
		probeEvery:   probeInterval,
		catchUpDelay: defaultCatchUpDelay,
		jitter:       func(d time.Duration) time.Duration { return rand.N(d + 1) }, // #nosec G404 -- jitter, not a secret
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
// stale yet: CaughtUp is false). A running consumer confirms it each time
// it has read and processed everything the stream held, which it does at
// least every probe interval (see WithProbeInterval), so the staleness
// stays within about a probe interval while NATS is reachable, also under
// a steady flood of events, and grows while NATS, the stream or the
// consumer is not. It is measured in real time, whatever WithClock says.
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
// that is NATS's cheapest fan-out. It may miss events (disconnects, a slow
// consumer) and may see an event the stream did not store (the issuer then
// answered 503, and a revocation the issuer signed is applied all the
// same), so it is only a shortcut: reading the stream, below, is what
// guarantees that every stored event is applied and what CaughtUp reports
// on. An event the live subscription verified is not verified again when
// the same bytes are read from the stream. Without the live subscription
// (WithLiveSubscription(false)) the subscription only says when to read.
//
// Reading the stream: Run binds the stream, retrying with backoff while
// the stream does not exist or NATS is unreachable, and reads it from the
// start, then from the sequence after the last message processed every
// probe interval, when the connection comes back, and, without the live
// subscription, whenever an event is published (at most every 100ms; with
// it, the event is applied as it comes and the next probe makes sure none
// was missed). It reads stored messages by sequence with
// batched direct gets (nats-server 2.11 or later; see fetch): it holds no
// JetStream consumer, so a sidecar needs no right to create, change or
// fetch from one, and nobody can tamper with one of its. Every message is
// verified (on several goroutines) before it reaches the set, in stream
// order; anything else is dropped and reported. If the stream was deleted
// and created again, Run replays the new one from its start. No event is
// skipped, and Set.Apply's idempotence means none is applied twice. Run
// returns an error only if it cannot work at all: no trusted key, or the
// NATS connection closed for good (the caller then connects again and
// calls RunOn; internal/natsconn.Run does both). GC of the set is the
// caller's (Set.RunGC).
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
	handler := func(*nats.Msg) {
		c.read() // an event was published
	}
	if c.live {
		handler = c.onLive
	}
	if sub, err := js.Conn().Subscribe(subjects(c.prefix), handler); err != nil {
		c.log.Warn("revocation live subscription failed; events arrive through JetStream only, every probe interval", "err", err)
	} else {
		defer func() { _ = sub.Unsubscribe() }()
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

// job is one message on its way through verification to the set, or a
// marker: the stream held nothing after the messages before it when it
// was read at time at.
type job struct {
	seq     uint64
	pending uint64
	data    []byte
	ev      *Event
	err     error
	done    chan struct{}

	marker bool
	at     time.Time
}

// read asks the reader to read the stream now (coalesced: one pending
// request at most).
func (c *Consumer) read() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// session binds the stream and reads it from where the last session
// stopped until something fails. It reports whether it processed any
// message.
func (c *Consumer) session(ctx context.Context, js jetstream.JetStream) (progress bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	c.bound = time.Now()
	rctx, rcancel := context.WithTimeout(ctx, requestTimeout)
	stream, err := js.Stream(rctx, StreamName(c.prefix))
	rcancel()
	if err != nil {
		return false, fmt.Errorf("bind stream: %w", err)
	}
	info := stream.CachedInfo()
	if info.Config.Name != StreamName(c.prefix) {
		// An answer meant for another request (see fetch).
		return false, fmt.Errorf("bind stream: the answer names stream %q", info.Config.Name)
	}
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
		c.anchor = anchor{}
	}
	c.created = info.Created
	if !c.caughtUp.Load() {
		c.target = state.LastSeq
	}
	if c.caughtUp.Load() && state.LastSeq <= c.verifiedSeq.Load() {
		// Nothing was published while this session's reader was away.
		c.fresh.confirm(c.bound)
	}

	work := make(chan *job, applyBatch)
	order := make(chan *job, applyBatch)
	readErr := make(chan error, 1)
	in, err := newInboxes(js.Conn())
	if err != nil {
		return false, err
	}
	defer in.close()
	go c.reader(ctx, in, last+1, work, order, readErr)
	for range c.workers {
		go c.verify(ctx, work)
	}
	progress, err = c.apply(ctx, order, readErr)
	if cause := context.Cause(ctx); ctx.Err() != nil && cause != nil {
		err = cause
	}
	return progress, err
}

// reader reads the stream from sequence next on and hands each message to
// the verifiers and, in stream order, to the applier, followed by a marker
// each time it has read everything stored. Then it waits to be told to
// read again (see Run), or for the probe interval (jittered, so the
// sidecars of a cluster do not ask together). After a reconnection it
// waits a random time up to the catch-up delay first: the clients of a
// restarted NATS server all reconnect at once. Every read makes sure the
// stream is still the one it read, in the read itself when it can (see
// anchorsRead and recreated); all of that with direct gets, none with a
// JetStream API request.
func (c *Consumer) reader(ctx context.Context, in *inboxes, next uint64, work, order chan<- *job, readErr chan<- error) {
	var err error
	defer func() {
		readErr <- err // before the close, which is what the applier waits for
		close(work)
		close(order)
	}()
	send := func(j *job, ch chan<- *job) bool {
		select {
		case ch <- j:
			return true
		case <-ctx.Done():
			err = ctx.Err()
			return false
		}
	}
	reconnected := in.nc.StatusChanged(nats.CONNECTED)
	defer in.nc.RemoveStatusListener(reconnected)
	name := StreamName(c.prefix)
	gap := minFetchGap
	if c.live {
		gap = max(minFetchGap, min(liveFetchGap, c.probeEvery))
	}
	probe := time.Now()
	interrupted := false // the last read was
	for {
		// Everything stored from next on.
		started := time.Now()
		for {
			// Taken before the request: what it finds is at least every
			// event stored by then.
			t := time.Now()
			// Every read checks that the stream is still the one read
			// (a stream deleted and created again starts its sequences
			// over): a read that finds nothing new confirms the set as
			// current, and against a new stream shorter than next it
			// would find nothing forever. Best in the read itself, by
			// reading from the last message read on (see anchorsRead), at
			// the cost of one message; else, when that message is gone,
			// by a lookup by time (recreated). After an interrupted read
			// it reads from next: only an answer's first message is sure
			// to be genuine, and it must be a new one for every read to
			// make progress.
			from := next
			if c.anchor.seq > 0 && c.anchor.seq+1 == next && !interrupted {
				from = c.anchor.seq
			}
			var r read
			r, err = fetch(ctx, in, name, from, fetchBatch, fetchMaxBytes)
			if err != nil {
				err = fmt.Errorf("read from sequence %d: %w", from, err)
				return
			}
			if r.interrupted {
				c.interrupted(from, len(r.msgs))
			}
			confirmed := false
			if from != next {
				var again bool
				if confirmed, again = anchorsRead(r.msgs, c.anchor); again {
					err = errStreamRecreated
					return
				}
				if confirmed {
					r.msgs = r.msgs[1:]
				}
			}
			if c.anchor.seq > 0 && !confirmed {
				// Before the events are taken: after a recreation they
				// would carry the reader past the new stream's first ones.
				var again bool
				if again, err = recreated(ctx, in, name, c.anchor); err != nil {
					err = fmt.Errorf("check the stream: %w", err)
					return
				}
				if again {
					err = errStreamRecreated
					return
				}
				confirmed = true
			}
			interrupted = r.interrupted
			for _, m := range r.msgs {
				j := &job{seq: m.seq, pending: m.pending, data: m.data, done: make(chan struct{})}
				if !send(j, work) || !send(j, order) {
					return
				}
				next = m.seq + 1
			}
			if len(r.msgs) > 0 {
				c.anchor = anchorOf(r.msgs[len(r.msgs)-1])
			}
			if !r.more {
				done := make(chan struct{})
				close(done)
				if !send(&job{marker: true, at: t, seq: next - 1, done: done}, order) {
					return
				}
				break
			}
			// Whoever interrupts reads would otherwise have this one
			// ask again at once, every time.
			if r.interrupted && !natsconn.Sleep(ctx, minFetchGap) {
				err = ctx.Err()
				return
			}
		}
		// Wait to be told, or for the probe.
		wait := c.probeEvery*3/4 + c.jitter(c.probeEvery/2)
		timer := time.NewTimer(time.Until(probe.Add(wait)))
		select {
		case <-ctx.Done():
			timer.Stop()
			err = ctx.Err()
			return
		case <-c.kick:
		case <-reconnected:
			// Spread the catch-up of every client of a restarted server.
			if !natsconn.Sleep(ctx, c.jitter(c.catchUpDelay)) {
				timer.Stop()
				err = ctx.Err()
				return
			}
		case <-timer.C:
		}
		timer.Stop()
		if !natsconn.Sleep(ctx, time.Until(started.Add(gap))) {
			err = ctx.Err()
			return
		}
		if time.Since(probe) >= c.probeEvery {
			probe = time.Now()
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

// onLive applies an event from the live subscription. It does not have the
// reader read the stream: the event is applied, and a read now would only
// make sure none before it was missed, which the next probe does. With
// thousands of sidecars that read cost the stream's servers a direct get per
// sidecar per event, more than the event's own fan-out. An event missed
// live (a slow consumer; a disconnection has a read of its own) is applied
// by the next probe, within a probe interval and a quarter. A message that
// does not verify is ignored here: if the stream stored it, the reader
// drops and counts it.
func (c *Consumer) onLive(m *nats.Msg) {
	if !published(m) {
		return
	}
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

// published reports whether m reached the live subscription as a publish,
// not as an answer JetStream sent there. Anyone holding the sidecars'
// credential can name a revocation subject as the reply subject of a
// batched stream read: the server checks reply subjects against no
// permission, and one request then delivers every stored event to every
// sidecar (or a status, for a read past the end). Such answers carry
// Nats-Stream and Nats-Sequence, or a Status, or no header at all
// (no_hdr); the issuer's publishes carry a Nats-Msg-Id and none of those.
// Dropping them here spares a signature check each.
func published(m *nats.Msg) bool {
	h := m.Header
	return h.Get(jetstream.MsgIDHeader) != "" && h.Get(jetstream.StreamHeader) == "" &&
		h.Get(jetstream.SequenceHeader) == "" && h.Get("Status") == ""
}

// interrupted reports a read that something else sent its answers into
// (see fetch), logging at most one line a minute: anyone with the
// sidecars' credential can make it happen, to every read.
func (c *Consumer) interrupted(from uint64, kept int) {
	c.interruptions++
	if time.Since(c.lastInterruptLog) < time.Minute {
		return
	}
	c.log.Warn("a revocation stream read was interrupted by messages that do not answer it; reading on from where they began",
		"from_seq", from, "kept", kept, "reads_interrupted", c.interruptions)
	c.lastInterruptLog, c.interruptions = time.Now(), 0
}

// apply applies verified events in stream order, a batch at a time.
func (c *Consumer) apply(ctx context.Context, order <-chan *job, readErr <-chan error) (progress bool, err error) {
	batch := make([]*job, 0, applyBatch)
	events := make([]*Event, 0, applyBatch)
	applied := make([]bool, applyBatch)
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
		if c.applyBatch(batch, events[:0], applied) {
			progress = true
		}
		if closed {
			return progress, fmt.Errorf("messages: %w", <-readErr)
		}
	}
}

// applyBatch applies a batch of jobs and reports whether it held a
// message (rather than markers only).
func (c *Consumer) applyBatch(batch []*job, events []*Event, applied []bool) bool {
	for _, j := range batch {
		switch {
		case j.marker:
			events = append(events, nil)
		case j.err != nil:
			events = append(events, nil)
			c.dropped(j)
		default:
			events = append(events, j.ev)
		}
	}
	c.set.applyAll(events, applied[:len(events)])
	now := c.now()
	c.obsMu.Lock()
	for i, j := range batch {
		if applied[i] {
			c.obs.Applied(j.ev, max(now.Sub(j.ev.Time()), 0))
		} else if !j.marker && j.err == nil {
			c.log.Debug("revocation event not applied: duplicate, expired or applied live", "seq", j.seq, "id", j.ev.ID)
		}
	}
	c.obsMu.Unlock()
	if c.onVerified != nil {
		for _, j := range batch {
			if !j.marker && j.err == nil {
				c.onVerified(j.ev, j.data)
			}
			j.data = nil
		}
	}
	messages := false
	for _, j := range batch {
		if j.marker {
			c.reachedEnd(j)
			continue
		}
		messages = true
		c.lastSeq.Store(j.seq)
		if j.err == nil {
			c.verifiedSeq.Store(j.seq)
		}
		if !c.caughtUp.Load() && (j.seq >= c.target || j.pending == 0) {
			c.markCaughtUp(j.pending)
		}
	}
	if messages {
		last := batch[len(batch)-1]
		for i := len(batch) - 1; last.marker && i >= 0; i-- {
			last = batch[i]
		}
		c.obsMu.Lock()
		c.obs.Lag(last.pending)
		c.obsMu.Unlock()
	}
	return messages
}

// reachedEnd handles a marker: every message stored when the reader read
// at j.at has been processed. The set is current as of then unless the
// last of them did not verify (a sidecar that drops the new events does
// not count as current).
func (c *Consumer) reachedEnd(j *job) {
	if c.verifiedSeq.Load() >= c.lastSeq.Load() {
		c.fresh.confirm(j.at)
	}
	if !c.caughtUp.Load() {
		c.markCaughtUp(0)
		return
	}
	c.obsMu.Lock()
	c.obs.Lag(0)
	c.obsMu.Unlock()
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
// the stream held at that moment.
type freshness struct {
	mu sync.Mutex
	at time.Time // real time, with its monotonic reading
}

func (f *freshness) since() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.at.IsZero() {
		return 0
	}
	return max(time.Since(f.at), 0)
}

// confirm records that the set held every event stored at t; an earlier
// t than one already confirmed changes nothing.
func (f *freshness) confirm(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t.After(f.at) {
		f.at = t
	}
}

// seenCache remembers the events the live subscription verified, by the
// SHA-256 of their signed bytes, until the same bytes are read from the
// stream: identical bytes verify identically, so the reader takes the
// event instead of checking the signature a second time. It
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
