package revocation

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/jwks"
)

const waitLong = 30 * time.Second

// publishN publishes n jti events and returns them.
func publishN(t testing.TB, p *Publisher, n int, tag string) []*Event {
	t.Helper()
	var out []*Event
	for i := range n {
		e := event(t, KindJTI, fmt.Sprintf("%s-%d", tag, i))
		if _, err := p.Publish(context.Background(), e); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

func ids(es []*Event) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.ID
	}
	return out
}

func TestConsumerReplayThenLive(t *testing.T) {
	n := newNATS(t)
	_, js := n.connect()
	ensureStream(t, js)
	pub, priv := newKey(t)
	p := NewPublisher(js, testPrefix, priv)

	// Before the consumer starts: one event of every kind.
	var published []*Event
	for _, k := range Kinds {
		v := "v-" + string(k)
		if k == KindAll {
			v = ""
		}
		e, err := NewEvent(k, v, time.Now().Add(-time.Minute), time.Now().Add(time.Hour), "", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Publish(context.Background(), e); err != nil {
			t.Fatal(err)
		}
		published = append(published, e)
	}
	published = append(published, publishN(t, p, 15, "old")...)

	set := NewSet()
	rec := newRecorder()
	_, cjs := n.connect()
	// Reading the stream alone, so that the order checked is its own.
	c := NewConsumer(cjs, testPrefix, []ed25519.PublicKey{pub}, set, WithObserver(rec), WithLogger(testLogger()), WithLiveSubscription(false))
	if c.CaughtUp() {
		t.Fatal("caught up before running")
	}
	runConsumer(t, c)
	eventually(t, waitLong, "caught up", c.CaughtUp)
	if set.Len() != len(published) {
		t.Fatalf("after replay the set holds %d events, want %d", set.Len(), len(published))
	}
	if c.LastSeq() != uint64(len(published)) {
		t.Errorf("LastSeq = %d, want %d", c.LastSeq(), len(published))
	}
	for _, e := range published {
		if e.Kind == KindJTI {
			if r, _ := set.Check(&jwks.Claims{ID: e.Value, IssuedAt: time.Now().Unix()}); !r {
				t.Errorf("jti %s not revoked", e.Value)
			}
		}
	}

	live := publishN(t, p, 10, "live")
	published = append(published, live...)
	eventually(t, waitLong, "live events applied", func() bool { return set.Len() == len(published) })
	if r, _ := set.Check(&jwks.Claims{ID: "live-9"}); !r {
		t.Error("live event not in the set")
	}
	got := rec.appliedIDs()
	if !slices.Equal(got, ids(published)) {
		t.Errorf("applied %d events in order %v\nwant %v", len(got), got, ids(published))
	}
	for _, d := range rec.delays {
		if d < 0 {
			t.Errorf("negative delay %s", d)
		}
	}
	if c.LastSeq() != uint64(len(published)) {
		t.Errorf("LastSeq = %d, want %d", c.LastSeq(), len(published))
	}
	if rec.lag != 0 {
		t.Errorf("lag %d after catching up", rec.lag)
	}
}

func TestConsumerDropsForged(t *testing.T) {
	n := newNATS(t)
	_, js := n.connect()
	ensureStream(t, js)
	pub, priv := newKey(t)
	_, otherPriv := newKey(t)

	set := NewSet()
	rec := newRecorder()
	c := NewConsumer(js, testPrefix, []ed25519.PublicKey{pub}, set, WithObserver(rec), WithLogger(testLogger()))
	runConsumer(t, c)
	eventually(t, waitLong, "caught up on the empty stream", c.CaughtUp)

	raw := func(subject string, data []byte) {
		t.Helper()
		if _, err := js.Publish(context.Background(), subject, data); err != nil {
			t.Fatal(err)
		}
	}
	victim := event(t, KindSub, "alice")
	byOther, err := Sign(victim, otherPriv)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := jwks.SignBundle(&jwks.Bundle{Sequence: 1, IssuedAt: time.Now().Unix(), JWKS: json.RawMessage(`{"keys":[]}`)}, priv)
	if err != nil {
		t.Fatal(err)
	}
	invalid := *event(t, KindAll, "")
	invalid.IssuedBefore = 0 // an "all" event without a bound would revoke everything, for ever
	signedInvalid, err := jwks.SignDistributed(&invalid, EventType, priv)
	if err != nil {
		t.Fatal(err)
	}
	raw(Subject(testPrefix, KindSub), byOther)                     // another key
	raw(Subject(testPrefix, KindAll), []byte("garbage"))           // not a JWS
	raw(Subject(testPrefix, KindAll), bundle)                      // right key, wrong typ
	raw(Subject(testPrefix, KindAll), signedInvalid)               // right key, invalid event
	raw(Subject(testPrefix, KindSub), []byte(string(byOther)+"x")) // tampered

	good := event(t, KindJTI, "good")
	if _, err := NewPublisher(js, testPrefix, priv).Publish(context.Background(), good); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitLong, "the good event after the forged ones", func() bool { return c.LastSeq() == 6 })
	if set.Len() != 1 {
		t.Errorf("set holds %d events, want only the good one", set.Len())
	}
	if r, _ := set.Check(&jwks.Claims{Subject: "alice", IssuedAt: time.Now().Unix() - 10}); r {
		t.Error("forged subject revocation applied")
	}
	if r, _ := set.Check(&jwks.Claims{Subject: "bob", IssuedAt: 1}); r {
		t.Error("invalid all event applied")
	}
	if got := rec.drops(DropForged); got != 4 {
		t.Errorf("forged drops = %d, want 4", got)
	}
	if got := rec.drops(DropInvalid); got != 1 {
		t.Errorf("invalid drops = %d, want 1", got)
	}
	if got := rec.appliedIDs(); !slices.Equal(got, []string{good.ID}) {
		t.Errorf("applied %v, want only %s", got, good.ID)
	}
}

// TestConsumerCaughtUp publishes 1000 events first: every one of them is
// applied while CaughtUp is false, and CaughtUp turns true only after the
// last of them.
func TestConsumerCaughtUp(t *testing.T) {
	n := newNATS(t)
	_, js := n.connect()
	ensureStream(t, js)
	pub, priv := newKey(t)
	p := NewPublisher(js, testPrefix, priv)
	const count = 1000
	ctx := context.Background()
	var futures []jetstream.PubAckFuture
	for i := range count {
		e := event(t, KindJTI, fmt.Sprintf("t-%d", i))
		data, err := Sign(e, priv)
		if err != nil {
			t.Fatal(err)
		}
		f, err := js.PublishAsync(Subject(testPrefix, KindJTI), data, jetstream.WithMsgID(e.ID))
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, f)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(waitLong):
		t.Fatal("async publish did not complete")
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatal(err)
		}
	}

	set := NewSet()
	obs := &caughtUpObserver{}
	c := NewConsumer(js, testPrefix, []ed25519.PublicKey{pub}, set, WithObserver(obs), WithLogger(testLogger()))
	obs.c = c
	runConsumer(t, c)
	// Whenever CaughtUp is seen true, the whole replay is in the set
	// (CaughtUp is read first; the set only grows).
	deadline := time.Now().Add(waitLong)
	for !c.CaughtUp() {
		if time.Now().After(deadline) {
			t.Fatalf("not caught up after %s; set holds %d", waitLong, set.Len())
		}
		time.Sleep(time.Millisecond)
	}
	if set.Len() != count {
		t.Fatalf("caught up with %d events in the set, want %d", set.Len(), count)
	}
	if got := obs.before.Load(); got != count {
		t.Errorf("%d events applied before CaughtUp, want %d", got, count)
	}
	if _, err := p.Publish(ctx, event(t, KindJTI, "live")); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitLong, "live event", func() bool { return obs.after.Load() == 1 })
	if obs.before.Load() != count {
		t.Errorf("live event counted as replay")
	}
}

type caughtUpObserver struct {
	nopObserver
	c             *Consumer
	before, after atomic.Int64
}

func (o *caughtUpObserver) Applied(*Event, time.Duration) {
	if o.c.CaughtUp() {
		o.after.Add(1)
	} else {
		o.before.Add(1)
	}
}

func TestConsumerWaitsForStream(t *testing.T) {
	n := newNATS(t)
	_, js := n.connect()
	pub, priv := newKey(t)
	set := NewSet()
	c := NewConsumer(js, testPrefix, []ed25519.PublicKey{pub}, set, WithLogger(testLogger()))
	runConsumer(t, c)
	time.Sleep(300 * time.Millisecond) // a few bind attempts
	if c.CaughtUp() {
		t.Fatal("caught up without a stream")
	}
	ensureStream(t, js)
	eventually(t, waitLong, "caught up once the stream exists", c.CaughtUp)
	publishN(t, NewPublisher(js, testPrefix, priv), 3, "x")
	eventually(t, waitLong, "events", func() bool { return set.Len() == 3 })
}

func TestConsumerExpiredTail(t *testing.T) {
	// The stream's last messages expire before the consumer gets to them:
	// it must still see that it has caught up.
	n := newNATS(t)
	_, js := n.connect()
	s := ensureStream(t, js)
	pub, priv := newKey(t)
	p := NewPublisher(js, testPrefix, priv)
	publishN(t, p, 2, "kept")
	now := time.Now()
	for i := range 2 {
		e, err := NewEvent(KindJTI, fmt.Sprintf("brief-%d", i), time.Time{}, now.Add(time.Second), "", now)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Publish(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, waitLong, "the brief events expire from the stream", func() bool {
		info, err := s.Info(context.Background())
		return err == nil && info.State.Msgs == 2 && info.State.LastSeq == 4
	})
	set := NewSet()
	c := NewConsumer(js, testPrefix, []ed25519.PublicKey{pub}, set, WithLogger(testLogger()))
	runConsumer(t, c)
	eventually(t, waitLong, "caught up", c.CaughtUp)
	if set.Len() != 2 {
		t.Errorf("set holds %d, want 2", set.Len())
	}
}

// TestConsumerSurvivesRestart stops the NATS server in the middle of a
// stream of publications and starts it again on the same port and store:
// every event acknowledged by JetStream reaches the set, once. With the
// live subscription off, reading the stream alone must lose nothing and
// keep publication order; with it on, nothing may be applied twice.
func TestConsumerSurvivesRestart(t *testing.T) {
	for _, live := range []bool{false, true} {
		t.Run(fmt.Sprintf("live=%v", live), func(t *testing.T) { testSurvivesRestart(t, live) })
	}
}

func testSurvivesRestart(t *testing.T, live bool) {
	n := newNATS(t)
	_, pjs := n.connect()
	ensureStream(t, pjs)
	pub, priv := newKey(t)
	p := NewPublisher(pjs, testPrefix, priv)

	set := NewSet()
	rec := newRecorder()
	_, cjs := n.connect()
	c := NewConsumer(cjs, testPrefix, []ed25519.PublicKey{pub}, set, WithObserver(rec), WithLogger(testLogger()), WithLiveSubscription(live))
	runConsumer(t, c)
	eventually(t, waitLong, "caught up", c.CaughtUp)

	// A publisher that keeps going, retrying each event until JetStream
	// acknowledges it (the same event id, so a retry is stored once).
	var mu sync.Mutex
	var acked []*Event
	stop := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for i := 0; ; i++ {
			now := time.Now()
			e, _ := NewEvent(KindJTI, fmt.Sprintf("r-%d", i), time.Time{}, now.Add(time.Hour), "", now)
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, err := p.Publish(ctx, e)
				cancel()
				if err == nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			mu.Lock()
			acked = append(acked, e)
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	ackedCount := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }

	eventually(t, waitLong, "some events before the restart", func() bool { return ackedCount() >= 50 })
	n.stop()
	beforeRestart := ackedCount()
	time.Sleep(500 * time.Millisecond)
	n.start()
	eventually(t, waitLong, "more events after the restart", func() bool { return ackedCount() >= beforeRestart+50 })
	close(stop)
	<-pubDone

	mu.Lock()
	want := ids(acked)
	mu.Unlock()
	eventually(t, waitLong, fmt.Sprintf("all %d acknowledged events in the set", len(want)), func() bool {
		return set.Len() >= len(want)
	})
	if set.Len() != len(want) {
		t.Errorf("set holds %d events, want %d", set.Len(), len(want))
	}
	got := rec.appliedIDs()
	seen := map[string]int{}
	for _, id := range got {
		seen[id]++
	}
	for id, k := range seen {
		if k > 1 {
			t.Errorf("event %s applied %d times", id, k)
		}
	}
	for _, id := range want {
		if seen[id] == 0 {
			t.Errorf("event %s lost", id)
		}
	}
	if !live && !slices.Equal(got, want) {
		t.Errorf("applied out of publication order")
	}
}

func TestConsumerNoTrustedKey(t *testing.T) {
	n := newNATS(t)
	_, js := n.connect()
	c := NewConsumer(js, testPrefix, nil, NewSet(), WithLogger(testLogger()))
	if err := c.Run(context.Background()); err == nil {
		t.Fatal("Run without a trusted key succeeded")
	}
}

func TestConsumerConnectionClosed(t *testing.T) {
	n := newNATS(t)
	nc, js := n.connect()
	pub, _ := newKey(t)
	c := NewConsumer(js, testPrefix, []ed25519.PublicKey{pub}, NewSet(), WithLogger(testLogger()))
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	time.Sleep(100 * time.Millisecond)
	nc.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Run returned nil after the connection closed")
		}
	case <-time.After(waitLong):
		t.Fatal("Run did not return after the connection closed")
	}
}

// TestConsumerResumes stops Run and runs it again: it reads on right
// after the last message processed.
func TestConsumerResumes(t *testing.T) {
	n := newNATS(t)
	_, js := n.connect()
	s := ensureStream(t, js)
	pub, priv := newKey(t)
	p := NewPublisher(js, testPrefix, priv)
	set := NewSet()
	rec := newRecorder()
	// Reading the stream alone: the live subscription must not mask a
	// resume that skips an event.
	c := NewConsumer(js, testPrefix, []ed25519.PublicKey{pub}, set, WithObserver(rec), WithLogger(testLogger()), WithLiveSubscription(false))
	first := publishN(t, p, 10, "a")
	stop := runConsumer(t, c)
	eventually(t, waitLong, "first events", func() bool { return set.Len() == 10 })
	stop()
	second := publishN(t, p, 5, "b")
	runConsumer(t, c)
	eventually(t, waitLong, "events published while stopped", func() bool { return set.Len() == 15 })

	// It reads the stream without a JetStream consumer (see fetch).
	names := s.ConsumerNames(context.Background())
	for name := range names.Name() {
		t.Errorf("the stream has a consumer: %s", name)
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	if got, want := rec.appliedIDs(), append(ids(first), ids(second)...); !slices.Equal(got, want) {
		t.Errorf("applied %v, want %v", got, want)
	}
	if c.LastSeq() != 15 {
		t.Errorf("LastSeq = %d, want 15", c.LastSeq())
	}
}

// TestConsumerStreamRecreated deletes the stream under a running consumer
// and creates it again: the new stream's sequences start over, and the
// consumer must read them from the start rather than wait for its old
// sequence.
func TestConsumerStreamRecreated(t *testing.T) {
	n := newNATS(t)
	_, js := n.connect()
	ensureStream(t, js)
	pub, priv := newKey(t)
	p := NewPublisher(js, testPrefix, priv)
	set := NewSet()
	// Live subscription off: it would apply the new stream's events itself.
	c := NewConsumer(js, testPrefix, []ed25519.PublicKey{pub}, set, WithLogger(testLogger()), WithLiveSubscription(false))
	c.probeEvery = 50 * time.Millisecond
	publishN(t, p, 10, "old")
	runConsumer(t, c)
	eventually(t, waitLong, "old events", func() bool { return set.Len() == 10 })

	recreateStream(t, js)
	publishN(t, p, 3, "new")
	eventually(t, waitLong, "events of the new stream", func() bool { return set.Len() == 13 })
	for _, v := range []string{"new-0", "new-1", "new-2"} {
		if r, _ := set.Check(&jwks.Claims{ID: v}); !r {
			t.Errorf("%s not revoked", v)
		}
	}
	eventually(t, waitLong, "LastSeq follows the new stream", func() bool { return c.LastSeq() == 3 })
}

// TestConsumerLiveSubscription: events reach the set through the plain
// subscription too, each is applied and observed once although it arrives
// twice, a forged one is dropped and counted once, and a signed event that
// JetStream never stored (the stream is gone) is applied all the same.
func TestConsumerLiveSubscription(t *testing.T) {
	n := newNATS(t)
	nc, js := n.connect()
	ensureStream(t, js)
	pub, priv := newKey(t)
	_, otherPriv := newKey(t)
	p := NewPublisher(js, testPrefix, priv)
	set := NewSet()
	rec := newRecorder()
	_, cjs := n.connect()
	c := NewConsumer(cjs, testPrefix, []ed25519.PublicKey{pub}, set, WithObserver(rec), WithLogger(testLogger()))
	runConsumer(t, c)
	eventually(t, waitLong, "caught up", c.CaughtUp)

	published := publishN(t, p, 20, "e")
	forged, err := Sign(event(t, KindSub, "alice"), otherPriv)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(context.Background(), Subject(testPrefix, KindSub), forged); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitLong, "the reader past every message", func() bool { return c.LastSeq() == 21 })
	if set.Len() != 20 {
		t.Errorf("set holds %d events, want 20", set.Len())
	}
	got := rec.appliedIDs()
	slices.Sort(got)
	want := ids(published)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("observed %d applications, want each of the 20 events once", len(got))
	}
	if d := rec.drops(DropForged); d != 1 {
		t.Errorf("forged drops = %d, want 1", d)
	}

	// The stream is gone: only the live subscription can deliver.
	if err := js.DeleteStream(context.Background(), StreamName(testPrefix)); err != nil {
		t.Fatal(err)
	}
	e := event(t, KindJTI, "not-stored")
	data, err := Sign(e, priv)
	if err != nil {
		t.Fatal(err)
	}
	// As the issuer publishes it, with its id as Nats-Msg-Id.
	live := &nats.Msg{Subject: Subject(testPrefix, KindJTI), Data: data, Header: nats.Header{}}
	live.Header.Set(jetstream.MsgIDHeader, e.ID)
	if err := nc.PublishMsg(live); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitLong, "an event seen only live", func() bool {
		r, _ := set.Check(&jwks.Claims{ID: "not-stored"})
		return r
	})
}

func TestSeenCache(t *testing.T) {
	var s seenCache
	e := &Event{ID: "a"}
	if s.take([]byte("x")) != nil {
		t.Fatal("empty cache returned an event")
	}
	s.put([]byte("x"), e)
	if s.take([]byte("y")) != nil {
		t.Fatal("other bytes returned the event")
	}
	if s.take([]byte("x")) != e {
		t.Fatal("event not returned for its bytes")
	}
	if s.take([]byte("x")) != nil {
		t.Fatal("event returned twice")
	}
	for i := range seenMax + 10 {
		s.put(fmt.Appendf(nil, "%d", i), e)
	}
	if s.take([]byte("0")) != nil {
		t.Error("oldest entry not evicted")
	}
	if s.take(fmt.Appendf(nil, "%d", seenMax+9)) != e {
		t.Error("newest entry missing")
	}
	if len(s.m) > seenMax {
		t.Errorf("cache holds %d, want at most %d", len(s.m), seenMax)
	}
}

// apiCounter counts the requests a subject pattern receives, seen by a
// plain subscription in the same account as the consumer: every client
// subscribed to a subject gets a copy, the server's JetStream included.
type apiCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func countRequests(t *testing.T, nc *nats.Conn, subjects ...string) *apiCounter {
	t.Helper()
	a := &apiCounter{n: map[string]int{}}
	for _, subj := range subjects {
		if _, err := nc.Subscribe(subj, func(*nats.Msg) {
			a.mu.Lock()
			a.n[subj]++
			a.mu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return a
}

func (a *apiCounter) get(subj string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n[subj]
}

// TestConsumerProbesWithoutStreamInfo: a running consumer confirms its set
// with reads by direct get, which any replica answers, and asks the
// JetStream API (STREAM.INFO, answered by the stream leader alone, queued
// with every other API request) only when it binds the stream, not at
// every probe: with thousands of sidecars that probe was the whole idle
// JetStream API load, and what overflowed the leader's queue first.
func TestConsumerProbesWithoutStreamInfo(t *testing.T) {
	n := newNATS(t)
	mon, js := n.connect()
	ensureStream(t, js)
	pub, priv := newKey(t)
	publishN(t, NewPublisher(js, testPrefix, priv), 3, "p")
	const (
		info   = "$JS.API.STREAM.INFO.>"
		direct = "$JS.API.DIRECT.GET.>"
	)
	reqs := countRequests(t, mon, info, direct)
	_, cjs := n.connect()
	c := NewConsumer(cjs, testPrefix, []ed25519.PublicKey{pub}, NewSet(), WithLogger(testLogger()))
	c.probeEvery = 20 * time.Millisecond
	runConsumer(t, c)
	eventually(t, waitLong, "caught up", c.CaughtUp)
	// Twenty probes: each a direct get.
	eventually(t, waitLong, "20 probe reads", func() bool { return reqs.get(direct) >= 20 })
	if got := reqs.get(info); got != 1 {
		t.Errorf("%d STREAM.INFO requests over %d reads, want 1 (the bind)", got, reqs.get(direct))
	}
	if s, ok := c.Staleness(); !ok || s > waitLong {
		t.Errorf("staleness %s (%v): the reads do not confirm the set", s, ok)
	}
}

// TestConsumerStreamRecreatedLarger: the stream is deleted and created
// again, and may hold more events than the old one when the consumer
// reads it. A read resuming at the old sequence finds events there, of the new
// stream: the consumer must notice that the stream changed before it
// takes them, and replay the new stream from its start, not skip its
// first events. Without the live subscription, which would apply them on
// its own; the consumer keeps running throughout (a consumer that binds
// the stream again compares its creation time).
func TestConsumerStreamRecreatedLarger(t *testing.T) {
	n := newNATS(t)
	_, js := n.connect()
	ensureStream(t, js)
	pub, priv := newKey(t)
	p := NewPublisher(js, testPrefix, priv)
	set := NewSet()
	c := NewConsumer(js, testPrefix, []ed25519.PublicKey{pub}, set, WithLogger(testLogger()), WithLiveSubscription(false))
	c.probeEvery = 50 * time.Millisecond
	publishN(t, p, 3, "old")
	runConsumer(t, c)
	eventually(t, waitLong, "old events", func() bool { return set.Len() == 3 })
	recreateStream(t, js)
	publishN(t, p, 10, "new")
	eventually(t, waitLong, "every event of the new stream", func() bool { return set.Len() == 13 })
	for i := range 10 {
		if r, _ := set.Check(&jwks.Claims{ID: fmt.Sprintf("new-%d", i)}); !r {
			t.Errorf("new-%d not revoked", i)
		}
	}
}

// TestConsumerCatchUpAfterReconnectIsJittered: when the connection comes
// back, the consumer's catch-up read waits a random time up to the
// catch-up delay (drawn here by the test), so that the clients of a
// restarted server do not all read at once; an event published while it
// was away arrives after that wait.
func TestConsumerCatchUpAfterReconnectIsJittered(t *testing.T) {
	n := newNATS(t)
	_, pjs := n.connect()
	ensureStream(t, pjs)
	pub, priv := newKey(t)
	p := NewPublisher(pjs, testPrefix, priv)
	set := NewSet()
	_, cjs := n.connect()
	const delay = 1234 * time.Millisecond
	c := NewConsumer(cjs, testPrefix, []ed25519.PublicKey{pub}, set, WithLogger(testLogger()), WithCatchUpDelay(delay))
	var mu sync.Mutex
	var drawn []time.Duration
	c.jitter = func(d time.Duration) time.Duration {
		mu.Lock()
		defer mu.Unlock()
		drawn = append(drawn, d)
		if d == delay {
			return 10 * time.Millisecond
		}
		return d / 2
	}
	catchUps := func() int {
		mu.Lock()
		defer mu.Unlock()
		k := 0
		for _, d := range drawn {
			if d == delay {
				k++
			}
		}
		return k
	}
	runConsumer(t, c)
	eventually(t, waitLong, "caught up", c.CaughtUp)
	if k := catchUps(); k != 0 {
		t.Fatalf("%d catch-up waits before any reconnection", k)
	}
	n.stop()
	n.start()
	eventually(t, waitLong, "a catch-up wait drawn after the reconnection", func() bool { return catchUps() >= 1 })
	// The consumer still follows the stream.
	publishN(t, p, 1, "after")
	eventually(t, waitLong, "the event after the reconnection", func() bool {
		r, _ := set.Check(&jwks.Claims{ID: "after-0"})
		return r
	})
}

// TestConsumerStreamRecreatedShorterUnseen: a stream deleted and created
// again, shorter than the reader's position, whose new events the
// subscription never saw (a slow consumer drops them; here they are stored
// on a subject it does not listen to), is found by the next probe. Before,
// only a once-a-minute recheck found it, and until then every probe found
// nothing past the old position and confirmed a set that missed the new
// stream's events (found by an independent review).
func TestConsumerStreamRecreatedShorterUnseen(t *testing.T) {
	n := newNATS(t)
	_, js := n.connect()
	ensureStream(t, js)
	pub, priv := newKey(t)
	p := NewPublisher(js, testPrefix, priv)
	set := NewSet()
	c := NewConsumer(js, testPrefix, []ed25519.PublicKey{pub}, set, WithLogger(testLogger()))
	c.probeEvery = 50 * time.Millisecond
	publishN(t, p, 10, "old")
	runConsumer(t, c)
	eventually(t, waitLong, "old events", func() bool { return set.Len() == 10 })
	s := recreateStream(t, js)
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cfg := info.Config
	cfg.Subjects = append(cfg.Subjects, "unseen.>")
	if _, err := js.UpdateStream(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		data, err := Sign(event(t, KindJTI, fmt.Sprintf("new-%d", i)), priv)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(context.Background(), "unseen.jti", data); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, waitLong, "the new stream's events", func() bool {
		for i := range 3 {
			if r, _ := set.Check(&jwks.Claims{ID: fmt.Sprintf("new-%d", i)}); !r {
				return false
			}
		}
		return true
	})
}
