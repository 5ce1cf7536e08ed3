package revocation

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestFetch reads a real stream in small batches: every message in
// order, each batch saying whether more follow, and nothing (no error)
// from past the end.
func TestFetch(t *testing.T) {
	n := newNATS(t)
	nc, js := n.connect()
	ensureStream(t, js)
	pub, priv := newKey(t)
	want := ids(publishN(t, NewPublisher(js, testPrefix, priv), 7, "f"))
	var got []string
	next, batches := uint64(1), 0
	for more := true; more; batches++ {
		r, err := fetch(context.Background(), testInboxes(t, nc), StreamName(testPrefix), next, 3, fetchMaxBytes)
		if err != nil || r.interrupted {
			t.Fatal(err, r.interrupted)
		}
		for _, s := range r.msgs {
			if s.seq != next {
				t.Fatalf("sequence %d, want %d", s.seq, next)
			}
			if left := uint64(len(want)) - s.seq; s.pending != left {
				t.Errorf("message %d: %d pending, want %d", s.seq, s.pending, left)
			}
			e, err := Verify(s.data, []ed25519.PublicKey{pub})
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, e.ID)
			next = s.seq + 1
		}
		more = r.more
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || batches != 3 {
		t.Errorf("read %v in %d batches, want %v in 3", got, batches, want)
	}
	r, err := fetch(context.Background(), testInboxes(t, nc), StreamName(testPrefix), next, 3, fetchMaxBytes)
	if err != nil || r.more || len(r.msgs) != 0 {
		t.Errorf("past the end: %d messages, more %v, err %v", len(r.msgs), r.more, err)
	}
}

// TestFetchTakesOnlyItsAnswer feeds answers, as nats-server writes them,
// to a read of sequence 5 on for up to 3 messages. The answer to the
// request is taken. Anything else that could reach its inbox (the answer
// to a request of someone else's, sent there once its first message gave
// the inbox away) ends the read at that message: what came before is
// kept, and the read says to read on from there; nothing after it is
// taken, so no event is skipped.
func TestFetchTakesOnlyItsAnswer(t *testing.T) {
	const stream = "TW_REVOCATIONS"
	msg := func(seq, last, pending uint64) *nats.Msg {
		return &nats.Msg{Data: []byte("event"), Header: nats.Header{
			"Nats-Stream": {stream}, "Nats-Sequence": {strconv.FormatUint(seq, 10)},
			"Nats-Last-Sequence": {strconv.FormatUint(last, 10)}, "Nats-Num-Pending": {strconv.FormatUint(pending, 10)},
			"Nats-Time-Stamp": {"2026-12-06T19:00:00.123456789Z"},
		}}
	}
	eob := func(last, pending uint64) *nats.Msg {
		return &nats.Msg{Header: nats.Header{"Status": {"204"}, "Description": {"EOB"},
			"Nats-Last-Sequence": {strconv.FormatUint(last, 10)}, "Nats-Num-Pending": {strconv.FormatUint(pending, 10)}}}
	}
	notFound := &nats.Msg{Header: nats.Header{"Status": {"404"}, "Description": {"Message Not Found"}}}
	single := &nats.Msg{Data: []byte("event"), Header: nats.Header{"Nats-Stream": {stream}, "Nats-Sequence": {"9"}}}
	other := msg(6, 5, 0)
	other.Header.Set("Nats-Stream", "KV_tw_jwks")
	info := &nats.Msg{Data: []byte(`{"type":"io.nats.jetstream.api.v1.stream_info_response"}`)}

	for _, tc := range []struct {
		name        string
		answer      []*nats.Msg
		seqs        []uint64 // taken when the read ends
		more        bool
		interrupted bool
		err         bool
	}{
		{name: "a batch with more after it", answer: []*nats.Msg{msg(5, 0, 4), msg(7, 5, 3), msg(8, 7, 2), eob(8, 2)}, seqs: []uint64{5, 7, 8}, more: true},
		{name: "the end of the stream", answer: []*nats.Msg{msg(6, 0, 1), msg(9, 6, 0), eob(9, 0)}, seqs: []uint64{6, 9}},
		{name: "nothing stored from 5 on", answer: []*nats.Msg{notFound}},
		{name: "another answer starting", answer: []*nats.Msg{msg(5, 0, 4), msg(9, 0, 0)}, seqs: []uint64{5}, more: true, interrupted: true},
		{name: "a message skipping its predecessor", answer: []*nats.Msg{msg(5, 0, 4), msg(6, 5, 3), msg(9, 7, 0)}, seqs: []uint64{5, 6}, more: true, interrupted: true},
		{name: "a message going back", answer: []*nats.Msg{msg(5, 0, 4), msg(5, 5, 0)}, seqs: []uint64{5}, more: true, interrupted: true},
		{name: "a message of another stream", answer: []*nats.Msg{msg(5, 0, 4), other}, seqs: []uint64{5}, more: true, interrupted: true},
		{name: "a single get's answer", answer: []*nats.Msg{msg(5, 0, 4), single}, seqs: []uint64{5}, more: true, interrupted: true},
		{name: "another API's answer", answer: []*nats.Msg{msg(5, 0, 4), info}, seqs: []uint64{5}, more: true, interrupted: true},
		{name: "not found after messages", answer: []*nats.Msg{msg(5, 0, 4), notFound}, seqs: []uint64{5}, more: true, interrupted: true},
		{name: "an end of batch of another answer", answer: []*nats.Msg{msg(5, 0, 4), eob(9, 0)}, seqs: []uint64{5}, more: true, interrupted: true},
		{name: "more messages than asked for", answer: []*nats.Msg{msg(5, 0, 9), msg(6, 5, 8), msg(7, 6, 7), msg(8, 7, 6)}, seqs: []uint64{5, 6, 7}, more: true, interrupted: true},
		// The first message answers the request; one that is not the
		// start of a batched answer means the request went wrong.
		{name: "a first message before the first asked for", answer: []*nats.Msg{msg(3, 0, 4)}, err: true},
		{name: "a first message naming a predecessor", answer: []*nats.Msg{msg(6, 5, 4)}, err: true},
		{name: "an end of batch first", answer: []*nats.Msg{eob(0, 0)}, err: true},
		{name: "no responders", answer: []*nats.Msg{{Header: nats.Header{"Status": {"503"}}}}, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := answer{stream: stream, from: 5, batch: 3}
			for i, m := range tc.answer {
				done, err := a.add(m)
				if err != nil {
					if !tc.err || i != len(tc.answer)-1 {
						t.Fatalf("message %d: %v", i, err)
					}
					return
				}
				if !done {
					continue
				}
				if tc.err || i != len(tc.answer)-1 {
					t.Fatalf("ended at message %d", i)
				}
				var seqs []uint64
				for _, s := range a.msgs {
					seqs = append(seqs, s.seq)
				}
				if fmt.Sprint(seqs) != fmt.Sprint(tc.seqs) || a.more != tc.more || a.interrupted != tc.interrupted {
					t.Errorf("took %v, more %v, interrupted %v; want %v, %v, %v", seqs, a.more, a.interrupted, tc.seqs, tc.more, tc.interrupted)
				}
				return
			}
			t.Fatal("the answer was neither ended nor refused")
		})
	}
}

// TestAnchorsRead: a read from the last message read on confirms the
// stream when it starts with the same bytes at the same sequence, says
// the stream was made again when other bytes are there, and leaves it to
// recreated when that message is gone.
func TestAnchorsRead(t *testing.T) {
	a := anchorOf(stored{seq: 7, data: []byte("event 7")})
	for _, tc := range []struct {
		name             string
		msgs             []stored
		confirmed, again bool
	}{
		{"the anchor, then more", []stored{{seq: 7, data: []byte("event 7")}, {seq: 8, data: []byte("event 8")}}, true, false},
		{"the anchor alone", []stored{{seq: 7, data: []byte("event 7")}}, true, false},
		{"other bytes at its sequence", []stored{{seq: 7, data: []byte("another event")}}, false, true},
		{"the anchor gone", []stored{{seq: 9, data: []byte("event 9")}}, false, false},
		{"nothing", nil, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c, g := anchorsRead(tc.msgs, a); c != tc.confirmed || g != tc.again {
				t.Errorf("confirmed %v, again %v; want %v, %v", c, g, tc.confirmed, tc.again)
			}
		})
	}
}

// TestInboxes: each request gets a reply subject of its own under the
// connection's one subscription; what is sent under the prefix to any
// other subject, or to a request that has ended, reaches no request; and a
// flood on a request's subject is bounded.
func TestInboxes(t *testing.T) {
	n := newNATS(t)
	nc, _ := n.connect()
	other, _ := n.connect()
	in := testInboxes(t, nc)
	// A request someone hears but does not answer (with nobody there,
	// the server would answer "no responders").
	if _, err := other.SubscribeSync("nobody.answers"); err != nil {
		t.Fatal(err)
	}
	if err := other.Flush(); err != nil {
		t.Fatal(err)
	}
	r, done, err := in.request("nobody.answers", []byte("q"), 3)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	// Its subject, as an outsider who saw an answer would know it.
	var token string
	in.mu.Lock()
	for k := range in.open {
		token = k
	}
	in.mu.Unlock()
	send := func(subj, data string) {
		t.Helper()
		if err := other.Publish(subj, []byte(data)); err != nil {
			t.Fatal(err)
		}
		if err := other.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	send(in.prefix+"0123456789abcdef0123456789abcdef", "guessed")
	for i := range 5 {
		send(in.prefix+token, fmt.Sprint("answer ", i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []string
	for range 3 {
		m, err := r.next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(m.Data))
	}
	if fmt.Sprint(got) != "[answer 0 answer 1 answer 2]" {
		t.Errorf("took %q, want the first three answers only", got)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if m, err := r.next(short); err == nil {
		t.Errorf("a fourth message past the bound: %q", m.Data)
	}
	done()
	send(in.prefix+token, "late")
	in.mu.Lock()
	left := len(in.open)
	in.mu.Unlock()
	if left != 0 {
		t.Errorf("%d requests still open after done", left)
	}
}
