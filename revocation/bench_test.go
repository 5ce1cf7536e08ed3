package revocation

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/jwks"
)

// mixedEvents makes n events of every kind, in the proportions a busy
// deployment might hold: mostly single tokens and sessions (logouts),
// some subjects (several events for some of them), a few clients and
// one "all".
func mixedEvents(n int, now time.Time) []*Event {
	out := make([]*Event, 0, n)
	exp := now.Add(time.Hour)
	before := now.Add(-time.Minute)
	for i := range n {
		var e *Event
		var err error
		switch {
		case i == 0:
			e, err = NewEvent(KindAll, "", now.Add(-24*time.Hour), exp, "", now)
		case i%10 < 6:
			e, err = NewEvent(KindJTI, newID(), time.Time{}, exp, "", now)
		case i%10 < 8:
			e, err = NewEvent(KindSID, newID(), time.Time{}, exp, "logout", now)
		case i%10 < 9:
			e, err = NewEvent(KindSub, fmt.Sprintf("user-%d", i/20), before, exp, "", now)
		default:
			e, err = NewEvent(KindClient, fmt.Sprintf("client-%d", i/100), before, exp, "", now)
		}
		if err != nil {
			panic(err)
		}
		out = append(out, e)
	}
	return out
}

func heapAlloc() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

const benchEvents = 100_000

// BenchmarkCheck checks tokens against a set of 100,000 live events. The
// token is not revoked but its subject, client and the "all" value each
// have events, so Check does every lookup it can (the worst case). It also
// reports the heap each live event costs.
func BenchmarkCheck(b *testing.B) {
	now := time.Now()
	before := heapAlloc()
	s := NewSet()
	for _, e := range mixedEvents(benchEvents, now) {
		s.Apply(e)
	}
	after := heapAlloc()
	if s.Len() != benchEvents {
		b.Fatalf("set holds %d events, want %d", s.Len(), benchEvents)
	}
	c := &jwks.Claims{
		ID: newID(), SessionID: newID(), Subject: "user-7", ClientID: "client-3",
		IssuedAt: now.Unix(),
	}
	if revoked, reason := s.Check(c); revoked {
		b.Fatalf("revoked: %s", reason)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if revoked, _ := s.Check(c); revoked {
			b.Fatal("revoked")
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(after-before)/benchEvents, "B/event")
	runtime.KeepAlive(s)
}

// BenchmarkCheckParallel is BenchmarkCheck from every P at once: Check
// takes no lock, so it should scale with cores.
func BenchmarkCheckParallel(b *testing.B) {
	now := time.Now()
	s := NewSet()
	for _, e := range mixedEvents(benchEvents, now) {
		s.Apply(e)
	}
	c := &jwks.Claims{
		ID: newID(), SessionID: newID(), Subject: "user-7", ClientID: "client-3",
		IssuedAt: now.Unix(),
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if revoked, _ := s.Check(c); revoked {
				b.Error("revoked")
				return
			}
		}
	})
}

// BenchmarkApply is the live path: one event, one write transaction, into
// a set of 100,000.
func BenchmarkApply(b *testing.B) {
	now := time.Now()
	s := NewSet()
	for _, e := range mixedEvents(benchEvents, now) {
		s.Apply(e)
	}
	events := mixedEvents(b.N+1, now)[1:]
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		s.Apply(events[i])
	}
}

// BenchmarkVerify is the consumer's per-event cost: one Ed25519
// verification plus JOSE parsing and validation.
func BenchmarkVerify(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	e, err := NewEvent(KindJTI, newID(), time.Time{}, time.Now().Add(time.Hour), "", time.Now())
	if err != nil {
		b.Fatal(err)
	}
	data, err := Sign(e, priv)
	if err != nil {
		b.Fatal(err)
	}
	trusted := []ed25519.PublicKey{pub}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Verify(data, trusted); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEd25519Verify is the floor under BenchmarkVerify.
func BenchmarkEd25519Verify(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	msg := make([]byte, 300)
	sig := ed25519.Sign(priv, msg)
	for b.Loop() {
		if !ed25519.Verify(pub, msg, sig) {
			b.Fatal("bad signature")
		}
	}
}

// BenchmarkReplay100k measures a sidecar start: 100,000 signed events are
// in the stream (a real embedded server); the time is from Run to
// CaughtUp, with a fresh set each time. nats-only is the floor: reading
// the same messages and doing nothing with them.
func BenchmarkReplay100k(b *testing.B) {
	n := newNATS(b)
	_, js := n.connect()
	ensureStream(b, js)
	pub, priv := newKey(b)
	publishSigned(b, js, priv, mixedEvents(benchEvents, time.Now()))
	// The floor, in the same run: the same stream read as the consumer
	// reads it, by a reader that does nothing with the messages.
	b.Run("nats-only", func(b *testing.B) {
		in := testInboxes(b, js.Conn())
		for b.Loop() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			start := time.Now()
			n, next := 0, uint64(1)
			for more := true; more; {
				r, err := fetch(ctx, in, StreamName(testPrefix), next, fetchBatch, fetchMaxBytes)
				if err != nil {
					b.Fatal(err)
				}
				n += len(r.msgs)
				if len(r.msgs) > 0 {
					next = r.msgs[len(r.msgs)-1].seq + 1
				}
				more = r.more
			}
			took := time.Since(start)
			cancel()
			if n != benchEvents {
				b.Fatalf("read %d events, want %d", n, benchEvents)
			}
			b.ReportMetric(took.Seconds(), "s/replay")
		}
	})
	for _, workers := range []int{1, runtime.GOMAXPROCS(0)} {
		b.Run(fmt.Sprintf("verify-workers=%d", workers), func(b *testing.B) {
			for b.Loop() {
				set := NewSet()
				c := NewConsumer(js, testPrefix, []ed25519.PublicKey{pub}, set,
					WithLogger(testLogger()), WithVerifyWorkers(workers))
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				start := time.Now()
				go func() { defer close(done); _ = c.Run(ctx) }()
				for !c.CaughtUp() {
					time.Sleep(time.Millisecond)
				}
				took := time.Since(start)
				b.StopTimer()
				cancel()
				<-done
				if set.Len() != benchEvents {
					b.Fatalf("caught up with %d events, want %d", set.Len(), benchEvents)
				}
				b.ReportMetric(took.Seconds(), "s/replay")
				b.ReportMetric(benchEvents/took.Seconds(), "events/s")
				b.StartTimer()
			}
		})
	}
}

// publishSigned signs events on every core and publishes them
// asynchronously, as fast as JetStream takes them.
func publishSigned(b *testing.B, js jetstream.JetStream, priv ed25519.PrivateKey, events []*Event) {
	b.Helper()
	signed := make([][]byte, len(events))
	var wg sync.WaitGroup
	procs := runtime.GOMAXPROCS(0)
	for w := range procs {
		wg.Go(func() {
			for i := w; i < len(events); i += procs {
				data, err := Sign(events[i], priv)
				if err != nil {
					panic(err)
				}
				signed[i] = data
			}
		})
	}
	wg.Wait()
	for i, e := range events {
		if _, err := js.PublishAsync(Subject(testPrefix, e.Kind), signed[i],
			jetstream.WithMsgID(e.ID), jetstream.WithMsgTTL(time.Hour)); err != nil {
			b.Fatal(err)
		}
		if i%2000 == 1999 {
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(time.Minute):
				b.Fatal("async publish stalled")
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("async publish stalled")
	}
}
