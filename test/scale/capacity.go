package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// capacityResult is what the fresh cluster can answer before any sidecar
// is attached: the JetStream API requests each sidecar makes, at the
// highest rate a closed loop of capacityCallers callers gets. With what
// a sidecar asks per second, they bound how many sidecars one cluster
// holds (the revocation consumer's freshness probe is a STREAM.INFO of
// the revocation stream every 5 s, answered by the stream's leader) and
// how fast a herd of them can start (two consumers each, created
// through the meta leader).
type capacityResult struct {
	streamInfo float64 // STREAM.INFO of the revocation stream per second
	consumers  float64 // ordered consumers created (and deleted) per second
	// loadedInfo is streamInfo again with the N sidecars attached and
	// idle (0: not measured).
	loadedInfo float64
}

const (
	capacityCallers = 32
	capacityWindow  = 3 * time.Second
)

// capacityClients connects the callers; close them with the function
// returned.
func capacityClients(d *deployment) ([]jetstream.JetStream, func(), error) {
	conns := make([]*nats.Conn, 0, capacityCallers)
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
	}
	jss := make([]jetstream.JetStream, 0, capacityCallers)
	for range capacityCallers {
		c, err := nats.Connect(d.natsURLs(), nats.Timeout(10*time.Second))
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("capacity: connect: %w", err)
		}
		conns = append(conns, c)
		js, err := jetstream.New(c)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("capacity: %w", err)
		}
		jss = append(jss, js)
	}
	return jss, closeAll, nil
}

// streamInfoRate is the rate of STREAM.INFO of the revocation stream.
func streamInfoRate(ctx context.Context, d *deployment) (float64, error) {
	jss, closeAll, err := capacityClients(d)
	if err != nil {
		return 0, err
	}
	defer closeAll()
	rate, err := closedLoop(ctx, jss, func(ctx context.Context, js jetstream.JetStream) error {
		_, err := js.Stream(ctx, revStream)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("capacity: stream info: %w", err)
	}
	return rate, nil
}

func (r *runner) measureCapacity(ctx context.Context, d *deployment) (*capacityResult, error) {
	res := &capacityResult{}
	var err error
	if res.streamInfo, err = streamInfoRate(ctx, d); err != nil {
		return nil, err
	}
	jss, closeAll, err := capacityClients(d)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	if res.consumers, err = closedLoop(ctx, jss, func(ctx context.Context, js jetstream.JetStream) error {
		s, err := js.Stream(ctx, revStream)
		if err != nil {
			return err
		}
		// As the sidecar's: an ordered consumer from the start of the
		// stream. Deleted at once, so none is left for the sidecars'
		// count.
		c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
		if err != nil {
			return err
		}
		info := c.CachedInfo()
		if info == nil {
			return errors.New("ordered consumer without info")
		}
		return s.DeleteConsumer(ctx, info.Name)
	}); err != nil {
		return nil, fmt.Errorf("capacity: consumer create: %w", err)
	}
	return res, nil
}

// closedLoop runs op on every client, back to back, for capacityWindow
// and returns the successful operations per second. A failing op is not
// counted; if none succeeds, the last error is returned.
func closedLoop(ctx context.Context, jss []jetstream.JetStream, op func(context.Context, jetstream.JetStream) error) (float64, error) {
	// The window only stops new operations: one in flight completes (a
	// consumer created is deleted), each bounded by its own timeout.
	var stop atomic.Bool
	t := time.AfterFunc(capacityWindow, func() { stop.Store(true) })
	defer t.Stop()
	var ok atomic.Int64
	var lastErr atomic.Pointer[error]
	var wg sync.WaitGroup
	start := time.Now()
	for _, js := range jss {
		wg.Go(func() {
			for !stop.Load() && ctx.Err() == nil {
				octx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := op(octx, js)
				cancel()
				if err != nil {
					lastErr.Store(&err)
					continue
				}
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	rate := float64(ok.Load()) / time.Since(start).Seconds()
	if ok.Load() == 0 {
		if e := lastErr.Load(); e != nil {
			return 0, *e
		}
		return 0, errors.New("no operation completed")
	}
	return rate, nil
}
