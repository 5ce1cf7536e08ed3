package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// capacityResult is what the fresh cluster can answer before any sidecar
// is attached: the requests a sidecar makes, from the sidecars' account,
// at the highest rate a closed loop of capacityCallers callers gets. A
// sidecar asks STREAM.INFO of the revocation stream when it binds it (at
// start, and after a read failed), which the stream's leader answers
// through its JetStream API queue; and reads the stream with a batched
// direct get every probe interval (5 s), which any replica answers outside
// that queue. They bound how many sidecars one cluster holds and how fast
// a herd of them can start.
type capacityResult struct {
	streamInfo float64 // STREAM.INFO of the revocation stream per second
	directGets float64 // idle probe reads (batched direct gets finding nothing new) per second
	// loadedInfo is streamInfo again with the N sidecars attached and
	// idle (0: not measured).
	loadedInfo float64
}

const (
	capacityCallers = 32
	capacityWindow  = 3 * time.Second
)

// capacityClients connects the callers, as sidecars; close them with the
// function returned.
func capacityClients(d *deployment) ([]*nats.Conn, func(), error) {
	conns := make([]*nats.Conn, 0, capacityCallers)
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
	}
	for range capacityCallers {
		c, err := nats.Connect(d.natsURLs(userSidecar), nats.Timeout(10*time.Second))
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("capacity: connect: %w", err)
		}
		conns = append(conns, c)
	}
	return conns, closeAll, nil
}

// natsRequest asks subject and fails on a status other than ok.
func natsRequest(ctx context.Context, nc *nats.Conn, subject string, body []byte, ok ...string) error {
	m, err := nc.RequestWithContext(ctx, subject, body)
	if err != nil {
		return err
	}
	st := m.Header.Get("Status")
	for _, o := range ok {
		if st == o {
			return nil
		}
	}
	return fmt.Errorf("%s: status %q %s", subject, st, m.Header.Get("Description"))
}

// streamInfoRate is the rate of STREAM.INFO of the revocation stream.
func streamInfoRate(ctx context.Context, d *deployment) (float64, error) {
	conns, closeAll, err := capacityClients(d)
	if err != nil {
		return 0, err
	}
	defer closeAll()
	rate, err := closedLoop(ctx, conns, func(ctx context.Context, nc *nats.Conn) error {
		return natsRequest(ctx, nc, "$JS.API.STREAM.INFO."+revStream, nil, "")
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
	conns, closeAll, err := capacityClients(d)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	// As a sidecar's idle probe: everything from past the end, which is
	// nothing (404).
	probe := []byte(`{"seq":` + strconv.Itoa(1<<40) + `,"batch":2048,"max_bytes":4194304}`)
	if res.directGets, err = closedLoop(ctx, conns, func(ctx context.Context, nc *nats.Conn) error {
		return natsRequest(ctx, nc, "$JS.API.DIRECT.GET."+revStream, probe, "404")
	}); err != nil {
		return nil, fmt.Errorf("capacity: direct get: %w", err)
	}
	return res, nil
}

// closedLoop runs op on every client, back to back, for capacityWindow
// and returns the successful operations per second. A failing op is not
// counted; if none succeeds, the last error is returned.
func closedLoop(ctx context.Context, conns []*nats.Conn, op func(context.Context, *nats.Conn) error) (float64, error) {
	// The window only stops new operations: one in flight completes, each
	// bounded by its own timeout.
	var stop atomic.Bool
	t := time.AfterFunc(capacityWindow, func() { stop.Store(true) })
	defer t.Stop()
	var ok atomic.Int64
	var lastErr atomic.Pointer[error]
	var wg sync.WaitGroup
	start := time.Now()
	for _, nc := range conns {
		wg.Go(func() {
			for !stop.Load() && ctx.Err() == nil {
				octx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := op(octx, nc)
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
