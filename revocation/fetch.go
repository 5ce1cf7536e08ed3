package revocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"

	"github.com/tokenwarden/tokenwarden/internal/natsconn"
)

// stored is one message read from the stream.
type stored struct {
	seq     uint64
	pending uint64 // messages the stream held after it when it was read
	data    []byte
}

// errForeignAnswer: something that is not the answer to the request
// reached its inbox. Every sidecar holds the same NATS credential, and a
// JetStream request may name any reply subject, so anyone holding it can
// have JetStream send messages onto another client's inbox once they have
// seen it. Taking such a message could skip events; the read is dropped
// and made again instead.
var errForeignAnswer = errors.New("a message that does not answer the request reached its inbox")

// fetch reads up to batch messages of stream from sequence from on, in
// stream order, with one batched direct get (nats-server 2.11 or later),
// and reports whether the stream held more after them. It asks for no
// JetStream consumer: whoever may read the stream this way needs no right
// to create, change or fetch from one.
//
// The answer is the stored messages in order, each naming the sequence of
// the one before it in the answer (0 for the first), then an end-of-batch
// saying how many are left; or "404" alone when nothing is stored from
// from on. fetch takes it only if it is exactly that, on an inbox nobody
// can guess and that lives for this one request: an outsider learns the
// inbox from the first message at the earliest, and anything they have
// sent to it after that does not fit the chain (another chain starts at
// 0, a single message or a 404 names no predecessor), so the whole read
// fails with errForeignAnswer rather than skip an event.
func fetch(ctx context.Context, nc *nats.Conn, stream string, from uint64, batch, maxBytes int) (msgs []stored, more bool, err error) {
	inbox := natsconn.PrivateInbox(nc)
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, false, fmt.Errorf("direct get: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	req, err := json.Marshal(struct {
		Seq      uint64 `json:"seq"`
		Batch    int    `json:"batch"`
		MaxBytes int    `json:"max_bytes"`
	}{from, batch, maxBytes})
	if err != nil {
		return nil, false, fmt.Errorf("direct get: %w", err)
	}
	if err := nc.PublishRequest("$JS.API.DIRECT.GET."+stream, inbox, req); err != nil {
		return nil, false, fmt.Errorf("direct get: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	a := answer{stream: stream, from: from, batch: batch}
	for {
		m, err := sub.NextMsgWithContext(rctx)
		if err != nil {
			return nil, false, fmt.Errorf("direct get: %w", err)
		}
		done, more, err := a.add(m)
		switch {
		case err != nil:
			return nil, false, err
		case done:
			return a.msgs, more, nil
		}
	}
}

// answer collects the answer to one batched direct get of stream from
// sequence from on, for up to batch messages.
type answer struct {
	stream string
	from   uint64
	batch  int
	msgs   []stored
	prev   uint64 // sequence of the last message taken
}

// add takes the next message of the answer. done reports that the answer
// is complete (msgs then holds it), more that the stream held more
// messages after it; an error means the answer cannot be taken.
func (a *answer) add(m *nats.Msg) (done, more bool, err error) {
	switch status := m.Header.Get("Status"); status {
	case "":
	case "404":
		if len(a.msgs) > 0 {
			return false, false, fmt.Errorf("%w: not found after %d messages", errForeignAnswer, len(a.msgs))
		}
		return true, false, nil
	case "204": // end of batch
		last, ok := headerUint(m, "Nats-Last-Sequence")
		left, ok2 := headerUint(m, "Nats-Num-Pending")
		if !ok || !ok2 || len(a.msgs) == 0 || last != a.prev {
			return false, false, fmt.Errorf("%w: end of batch after sequence %d, had %d", errForeignAnswer, last, a.prev)
		}
		return true, left > 0, nil
	case "503":
		return false, false, fmt.Errorf("direct get: %w", nats.ErrNoResponders)
	default:
		return false, false, fmt.Errorf("direct get: status %s %s", status, m.Header.Get("Description"))
	}
	seq, ok := headerUint(m, "Nats-Sequence")
	last, ok2 := headerUint(m, "Nats-Last-Sequence")
	pending, ok3 := headerUint(m, "Nats-Num-Pending")
	if !ok || !ok2 || !ok3 || m.Header.Get("Nats-Stream") != a.stream || len(a.msgs) >= a.batch ||
		last != a.prev || seq <= a.prev || seq < a.from {
		return false, false, fmt.Errorf("%w: message %d after %d (names %d as its predecessor)", errForeignAnswer, seq, a.prev, last)
	}
	a.msgs = append(a.msgs, stored{seq: seq, pending: pending, data: m.Data})
	a.prev = seq
	return false, false, nil
}

func headerUint(m *nats.Msg, key string) (uint64, bool) {
	n, err := strconv.ParseUint(m.Header.Get(key), 10, 64)
	return n, err == nil
}
