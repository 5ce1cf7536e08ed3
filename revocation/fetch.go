package revocation

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenwarden/tokenwarden/internal/natsconn"
)

// stored is one message read from the stream.
type stored struct {
	seq     uint64
	pending uint64    // messages the stream held after it when it was read
	stamp   time.Time // when the stream stored it (Nats-Time-Stamp)
	data    []byte
}

// read is what one fetch returns.
type read struct {
	msgs []stored
	// more: the stream may hold messages after them; read again.
	more bool
	// interrupted: something that does not answer the request reached its
	// inbox, and the read stopped there (see fetch).
	interrupted bool
}

// fetch reads up to batch messages of stream from sequence from on, in
// stream order, with one batched direct get (nats-server 2.11 or later),
// and reports whether the stream may hold more after them. It asks for no
// JetStream consumer: whoever may read the stream this way needs no right
// to create, change or fetch from one.
//
// The answer is the stored messages in order, each naming the sequence of
// the one before it in the answer (0 for the first), then an end-of-batch
// saying how many are left; or "404" alone when nothing is stored from
// from on. Every sidecar holds the same NATS credential, and a JetStream
// request may name any reply subject, so anyone holding it can have
// JetStream send answers of its own requests onto another client's inbox
// once they have seen it; taking one could skip events (an answer that
// starts further on, or holds only some subjects). So the reply subject is
// one nobody can guess, for this request alone (see inboxes): an outsider
// learns it from
// the answer's first message at the earliest, and whatever they have
// JetStream send there after that begins with a message that does not fit
// (every batched answer starts with a message naming 0 as its
// predecessor; a single message or a 404 names none). fetch stops at the
// first message that does not fit and keeps what came before it, all of
// which answered the request; the next read goes on from there.
func fetch(ctx context.Context, in *inboxes, stream string, from uint64, batch, maxBytes int) (read, error) {
	req, err := json.Marshal(struct {
		Seq      uint64 `json:"seq"`
		Batch    int    `json:"batch"`
		MaxBytes int    `json:"max_bytes"`
	}{from, batch, maxBytes})
	if err != nil {
		return read{}, fmt.Errorf("direct get: %w", err)
	}
	replies, done, err := in.request("$JS.API.DIRECT.GET."+stream, req, batch+2)
	if err != nil {
		return read{}, fmt.Errorf("direct get: %w", err)
	}
	defer done()
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	a := answer{stream: stream, from: from, batch: batch}
	for {
		m, err := replies.next(rctx)
		if err != nil {
			return read{}, fmt.Errorf("direct get: %w", err)
		}
		if done, err := a.add(m); err != nil || done {
			return a.read, err
		}
	}
}

// inboxes gives each request a reply subject nobody can guess (see fetch)
// under one subscription of the connection: a wildcard on a private inbox
// prefix, and 128 random bits more for each request. A subscription of
// its own per request would cost the servers a subscription and its
// removal per read, told to every other server of the cluster, from every
// sidecar every few seconds. Whoever has seen one reply subject knows the
// prefix but not the next request's bits: what they send anywhere under
// it reaches no request but the one whose answer they saw, exactly as
// with an inbox of its own; anything else is dropped.
type inboxes struct {
	nc     *nats.Conn
	prefix string
	sub    *nats.Subscription

	mu   sync.Mutex
	open map[string]*replies
}

// replies queues the messages that reach one request's reply subject, up
// to a bound (a flood on it ends that read, as with a subscription's
// pending limit).
type replies struct {
	mu    sync.Mutex
	msgs  []*nats.Msg
	got   int // messages arrived, taken or not
	limit int
	ready chan struct{}
}

func newInboxes(nc *nats.Conn) (*inboxes, error) {
	in := &inboxes{nc: nc, prefix: natsconn.PrivateInbox(nc) + ".", open: map[string]*replies{}}
	sub, err := nc.Subscribe(in.prefix+"*", in.deliver)
	if err != nil {
		return nil, fmt.Errorf("reply subscription: %w", err)
	}
	in.sub = sub
	return in, nil
}

func (in *inboxes) close() { _ = in.sub.Unsubscribe() }

// request publishes body to subject with a reply subject of its own and
// returns the queue of what arrives there; done forgets it.
func (in *inboxes) request(subject string, body []byte, limit int) (r *replies, done func(), err error) {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics rather than return an error)
	token := hex.EncodeToString(b[:])
	r = &replies{limit: limit, ready: make(chan struct{}, 1)}
	in.mu.Lock()
	in.open[token] = r
	in.mu.Unlock()
	done = func() {
		in.mu.Lock()
		delete(in.open, token)
		in.mu.Unlock()
	}
	if err := in.nc.PublishRequest(subject, in.prefix+token, body); err != nil {
		done()
		return nil, nil, err
	}
	return r, done, nil
}

// deliver is the subscription's handler.
func (in *inboxes) deliver(m *nats.Msg) {
	token, ok := strings.CutPrefix(m.Subject, in.prefix)
	if !ok {
		return
	}
	in.mu.Lock()
	r := in.open[token]
	in.mu.Unlock()
	if r == nil {
		return // no request of ours, or one that has ended
	}
	r.mu.Lock()
	if r.got < r.limit {
		r.got++
		r.msgs = append(r.msgs, m)
	}
	r.mu.Unlock()
	select {
	case r.ready <- struct{}{}:
	default:
	}
}

// next returns the next message that arrived, waiting for one until ctx
// ends.
func (r *replies) next(ctx context.Context) (*nats.Msg, error) {
	for {
		r.mu.Lock()
		if len(r.msgs) > 0 {
			m := r.msgs[0]
			r.msgs[0] = nil
			r.msgs = r.msgs[1:]
			r.mu.Unlock()
			return m, nil
		}
		r.mu.Unlock()
		select {
		case <-r.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// answer collects the answer to one batched direct get of stream from
// sequence from on, for up to batch messages.
type answer struct {
	stream string
	from   uint64
	batch  int
	read
	prev uint64 // sequence of the last message taken
}

// add takes the next message of the answer and reports whether the
// answer is complete (a.read then holds it). The first message always
// answers the request (nobody else knew the inbox before it came); after
// it, a message that does not fit ends the read (interrupted, more).
func (a *answer) add(m *nats.Msg) (done bool, err error) {
	first := a.prev == 0
	foreign := func() (bool, error) {
		if first {
			return false, fmt.Errorf("direct get: not an answer of a batched direct get: status %q, sequence %q",
				m.Header.Get("Status"), m.Header.Get("Nats-Sequence"))
		}
		a.more, a.interrupted = true, true
		return true, nil
	}
	switch status := m.Header.Get("Status"); status {
	case "":
	case "404":
		if !first {
			return foreign()
		}
		return true, nil // nothing stored from a.from on
	case "204": // end of batch
		last, ok := headerUint(m, "Nats-Last-Sequence")
		left, ok2 := headerUint(m, "Nats-Num-Pending")
		if !ok || !ok2 || first || last != a.prev {
			return foreign()
		}
		a.more = left > 0
		return true, nil
	case "503":
		if first {
			return false, fmt.Errorf("direct get: %w", nats.ErrNoResponders)
		}
		return foreign()
	default:
		if first {
			return false, fmt.Errorf("direct get: status %s %s", status, m.Header.Get("Description"))
		}
		return foreign()
	}
	seq, ok := headerUint(m, "Nats-Sequence")
	last, ok2 := headerUint(m, "Nats-Last-Sequence")
	pending, ok3 := headerUint(m, "Nats-Num-Pending")
	if !ok || !ok2 || !ok3 || m.Header.Get("Nats-Stream") != a.stream || len(a.msgs) >= a.batch ||
		last != a.prev || seq <= a.prev || seq < a.from {
		return foreign()
	}
	stamp, err := time.Parse(time.RFC3339Nano, m.Header.Get("Nats-Time-Stamp"))
	if err != nil {
		return foreign()
	}
	a.msgs = append(a.msgs, stored{seq: seq, pending: pending, stamp: stamp, data: m.Data})
	a.prev = seq
	return false, nil
}

func headerUint(m *nats.Msg, key string) (uint64, bool) {
	n, err := strconv.ParseUint(m.Header.Get(key), 10, 64)
	return n, err == nil
}

// anchor is the last message a consumer read from the stream: enough to
// tell later whether the stream it reads now is still the one it read
// that message from.
type anchor struct {
	seq    uint64
	stamp  time.Time
	digest [sha256.Size]byte
}

func anchorOf(m stored) anchor {
	return anchor{seq: m.seq, stamp: m.stamp, digest: sha256.Sum256(m.data)}
}

// recreated reports whether stream is no longer the one a was read from
// (it was deleted and created again, and its sequences started over), with
// one direct get: any replica answers it, and it does not go through the
// JetStream API queue that STREAM.INFO waits in. It asks for the first
// message stored at or after a's time. In the same stream that is a itself
// (same sequence, same bytes) or, a being gone (expired), a message with a
// later sequence; and 404 when nothing has been stored since. Every message
// of a stream created after a was read is stored after a's time: if the
// answer is a message at or below a's sequence other than a, the stream
// was made again (a later one means the new stream's messages up to a's
// sequence are gone, so reading on from there skips nothing). Clocks of
// two servers that led the stream in turn may disagree by a few
// milliseconds; a message written by a leader whose clock ran ahead can
// then look recreated, which costs a replay and loses nothing.
func recreated(ctx context.Context, in *inboxes, stream string, a anchor) (bool, error) {
	req, err := json.Marshal(struct {
		StartTime time.Time `json:"start_time"`
		MaxBytes  int       `json:"max_bytes"`
	}{a.stamp, fetchMaxBytes})
	if err != nil {
		return false, fmt.Errorf("direct get by time: %w", err)
	}
	// A reply subject of its own, for the reasons given at fetch: the
	// first message there answers this request.
	replies, done, err := in.request("$JS.API.DIRECT.GET."+stream, req, 1)
	if err != nil {
		return false, fmt.Errorf("direct get by time: %w", err)
	}
	defer done()
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	m, err := replies.next(rctx)
	if err != nil {
		return false, fmt.Errorf("direct get by time: %w", err)
	}
	switch status := m.Header.Get("Status"); status {
	case "":
	case "404":
		return false, nil // nothing stored since a: nothing to miss
	case "503":
		return false, fmt.Errorf("direct get by time: %w", nats.ErrNoResponders)
	default:
		return false, fmt.Errorf("direct get by time: status %s %s", status, m.Header.Get("Description"))
	}
	seq, ok := headerUint(m, "Nats-Sequence")
	if !ok || m.Header.Get("Nats-Stream") != stream {
		return false, errors.New("direct get by time: not an answer of a direct get")
	}
	switch {
	case seq > a.seq:
		return false, nil
	case seq == a.seq:
		return sha256.Sum256(m.Data) != a.digest, nil
	default:
		return true, nil
	}
}

// anchorsRead looks at the answer to a read from a's sequence on: whether
// it starts with a itself (same sequence, same bytes), which confirms the
// stream is the one a was read from at no cost but a's bytes, or with
// other bytes at a's sequence (the stream was made again). Neither when a
// is gone (expired): recreated must tell.
func anchorsRead(msgs []stored, a anchor) (confirmed, again bool) {
	if len(msgs) == 0 || msgs[0].seq != a.seq {
		return false, false
	}
	if d := sha256.Sum256(msgs[0].data); d != a.digest {
		return false, true
	}
	return true, false
}
