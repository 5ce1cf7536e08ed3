package revocation

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const testProbe = 100 * time.Millisecond

// TestConsumerStalenessUnderFlood publishes a steady flood of events (775
// a second, the rate of a mass logout) and samples the staleness all the
// while: a consumer that is keeping up is never behind the last sequence
// of the probe before last, so its staleness stays within a few probe
// intervals, however many events are in flight at each probe.
func TestConsumerStalenessUnderFlood(t *testing.T) {
	const (
		rate     = 775
		duration = 8 * time.Second
		workers  = 8
		bound    = 3 * time.Second // 30 probes
	)
	n := newNATS(t)
	_, js := n.connect()
	ensureStream(t, js)
	pub, priv := newKey(t)
	p := NewPublisher(js, testPrefix, priv)
	set := NewSet()
	c := NewConsumer(js, testPrefix, []ed25519.PublicKey{pub}, set, WithLogger(testLogger()), WithProbeInterval(testProbe))
	runConsumer(t, c)
	eventually(t, waitLong, "replayed", c.CaughtUp)

	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var published atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			tick := time.NewTicker(time.Second * workers / rate)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				e := event(t, KindJTI, fmt.Sprintf("flood-%d-%d", w, i))
				if _, err := p.Publish(ctx, e); err != nil {
					if ctx.Err() == nil {
						t.Error(err)
					}
					return
				}
				published.Add(1)
			}
		})
	}
	var worst time.Duration
	for ctx.Err() == nil {
		d, ok := c.Staleness()
		if !ok {
			t.Fatal("staleness not counted after the replay")
		}
		worst = max(worst, d)
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	t.Logf("%d events published in %s; worst staleness %s", published.Load(), duration, worst)
	if worst > bound {
		t.Errorf("staleness reached %s under a steady flood, want at most %s", worst, bound)
	}
	// A publish cut short by the deadline may still have been stored.
	eventually(t, waitLong, "every event applied", func() bool { return set.Len() >= int(published.Load()) })
}

// TestConsumerStalenessOutage: the staleness is not counted before the
// first replay, grows while NATS is down, and drops back by itself once
// NATS is back; events published meanwhile are applied.
func TestConsumerStalenessOutage(t *testing.T) {
	n := newNATS(t)
	_, js := n.connect()
	pub, priv := newKey(t)
	set := NewSet()
	c := NewConsumer(js, testPrefix, []ed25519.PublicKey{pub}, set, WithLogger(testLogger()), WithProbeInterval(testProbe))
	runConsumer(t, c)
	time.Sleep(3 * testProbe) // the stream does not exist: no replay yet
	if d, ok := c.Staleness(); ok {
		t.Fatalf("staleness %s counted before the first replay", d)
	}
	ensureStream(t, js)
	eventually(t, waitLong, "replayed", c.CaughtUp)
	eventually(t, waitLong, "fresh", func() bool { d, _ := c.Staleness(); return d < time.Second })

	n.stop()
	eventually(t, waitLong, "stale while NATS is down", func() bool { d, _ := c.Staleness(); return d > 2*time.Second })
	n.start()
	eventually(t, 10*time.Second, "fresh again after recovery", func() bool { d, _ := c.Staleness(); return d < time.Second })
	publishN(t, NewPublisher(js, testPrefix, priv), 3, "after")
	eventually(t, 10*time.Second, "events published after the recovery", func() bool { return set.Len() == 3 })
}

// TestConsumerStaleWhenEventsDoNotVerify: events the consumer drops (signed
// by a distribution key it does not trust, as after the keys Secret was
// replaced while it kept running) do not confirm it current. Before, it
// confirmed freshness up to the last sequence processed, dropped or not,
// and stayed ready while it applied nothing.
func TestConsumerStaleWhenEventsDoNotVerify(t *testing.T) {
	n := newNATS(t)
	_, js := n.connect()
	ensureStream(t, js)
	pub, priv := newKey(t)
	_, otherPriv := newKey(t)
	set := NewSet()
	c := NewConsumer(js, testPrefix, []ed25519.PublicKey{pub}, set, WithLogger(testLogger()), WithProbeInterval(testProbe))
	runConsumer(t, c)
	eventually(t, waitLong, "replayed", c.CaughtUp)
	publishN(t, NewPublisher(js, testPrefix, priv), 1, "trusted")
	eventually(t, waitLong, "trusted event applied", func() bool { return set.Len() == 1 })
	eventually(t, waitLong, "fresh", func() bool { d, _ := c.Staleness(); return d < time.Second })

	untrusted := NewPublisher(js, testPrefix, otherPriv)
	deadline := time.Now().Add(2 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		publishN(t, untrusted, 1, fmt.Sprintf("untrusted-%d", i))
		time.Sleep(testProbe)
	}
	if d, _ := c.Staleness(); d < time.Second {
		t.Fatalf("staleness %s while every new event is dropped, want it growing", d)
	}
	if set.Len() != 1 {
		t.Fatalf("set holds %d events, want only the trusted one", set.Len())
	}
	publishN(t, NewPublisher(js, testPrefix, priv), 1, "trusted-again")
	eventually(t, waitLong, "fresh once an event verifies again", func() bool { d, _ := c.Staleness(); return d < time.Second })
}

// TestConsumerStalenessExpiredTail: the events at the end of the stream
// expire before the consumer could be delivered them (it is away), so it
// never reaches the stream's last sequence; JetStream having nothing left
// to deliver is what confirms the set then.
func TestConsumerStalenessExpiredTail(t *testing.T) {
	n := newNATS(t)
	_, js := n.connect()
	ensureStream(t, js)
	pub, priv := newKey(t)
	p := NewPublisher(js, testPrefix, priv)
	set := NewSet()
	c := NewConsumer(js, testPrefix, []ed25519.PublicKey{pub}, set, WithLogger(testLogger()), WithProbeInterval(testProbe),
		WithLiveSubscription(false))
	publishN(t, p, 2, "kept")
	stop := runConsumer(t, c)
	eventually(t, waitLong, "replayed", func() bool { return c.CaughtUp() && set.Len() == 2 })
	stop()
	now := time.Now()
	short, err := NewEvent(KindJTI, "short-lived", time.Time{}, now.Add(time.Second), "", now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Publish(context.Background(), short); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitLong, "the tail expired", func() bool {
		s, err := js.Stream(context.Background(), StreamName(testPrefix))
		if err != nil {
			return false
		}
		info, err := s.Info(context.Background())
		return err == nil && info.State.Msgs == 2 && info.State.LastSeq == 3
	})
	time.Sleep(time.Second) // stale by now: nothing probed while stopped
	runConsumer(t, c)
	eventually(t, 10*time.Second, "fresh without the expired tail", func() bool { d, _ := c.Staleness(); return d < 500*time.Millisecond })
	if c.LastSeq() != 2 {
		t.Errorf("LastSeq %d, want 2 (the tail expired)", c.LastSeq())
	}
}

// TestFreshness: a confirmation never makes the confirmed time go back.
func TestFreshness(t *testing.T) {
	var f freshness
	t0 := time.Now().Add(-time.Minute)
	if f.since() != 0 {
		t.Fatal("fresh before any confirmation")
	}
	f.confirm(t0.Add(40 * time.Second))
	if d := f.since(); d < 20*time.Second || d > 21*time.Second {
		t.Fatalf("since %s, want about 20s", d)
	}
	f.confirm(t0) // older: ignored
	if d := f.since(); d < 20*time.Second || d > 21*time.Second {
		t.Fatalf("after an older confirmation: since %s, want about 20s", d)
	}
}
