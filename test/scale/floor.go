package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenwarden/tokenwarden/internal/natsconn"
)

// floorResult is what N plain NATS connections cost the same cluster,
// each as a sidecar (its user, in its account) with one core subscription
// on the revocation subjects and the sidecar's ping interval, and no
// JetStream at all: the least any design
// with a connection per pod can cost, to weigh the sidecars' figures
// against.
type floorResult struct {
	n                 int
	natsBase, natsRSS int64
	natsIdle          float64
	idleMsgs          float64
	fanout            stats // one core message to every connection, from the publish
}

// floorMessages are published one at a time to time the core fan-out.
const floorMessages = 5

// measureFloor deploys a fresh NATS cluster (no issuer), connects n plain
// clients from this process and measures.
func (r *runner) measureFloor(ctx context.Context, n int) (*floorResult, error) {
	dir := filepath.Join(r.dir, "floor"+strconv.Itoa(n))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	r.logf("N=%d: floor: %d plain NATS connections on a fresh cluster", n, n)
	d := &deployment{dir: dir, kids: r.kids, natsBin: r.o.natsBin, chartDir: r.o.chartDir, http: newHTTPClient()}
	defer d.stop()
	if err := d.startNATS(ctx); err != nil {
		return nil, err
	}
	res := &floorResult{n: n, natsBase: sumRSS(d.natsPIDs())}
	subj := prefix + ".revocations.jti"
	var mu sync.Mutex
	got := map[string][]time.Time{}
	conns := make([]*nats.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		// The sidecar's keepalive (internal/natsconn): a ping every 5 s.
		c, err := nats.Connect(d.natsURLs(userSidecar), nats.PingInterval(5*time.Second), nats.MaxPingsOutstanding(2), nats.Timeout(10*time.Second))
		if err != nil {
			return nil, fmt.Errorf("floor: connect: %w", err)
		}
		conns = append(conns, c)
		if _, err := c.Subscribe(subj, func(m *nats.Msg) {
			now := time.Now()
			mu.Lock()
			got[string(m.Data)] = append(got[string(m.Data)], now)
			mu.Unlock()
		}); err != nil {
			return nil, fmt.Errorf("floor: subscribe: %w", err)
		}
	}
	for _, c := range conns {
		if err := c.Flush(); err != nil {
			return nil, fmt.Errorf("floor: flush: %w", err)
		}
	}
	if !natsconn.Sleep(ctx, min(5*time.Second, r.o.idle)) {
		return nil, ctx.Err()
	}
	m := startCPU(d.natsPIDs)
	tr0 := d.traffic(ctx)
	if !natsconn.Sleep(ctx, r.o.idle) {
		return nil, ctx.Err()
	}
	tr := d.traffic(ctx).since(tr0)
	cpu, wall := m.stop()
	res.natsIdle, res.idleMsgs = cpu.Seconds()/wall.Seconds(), float64(tr.msgs)/wall.Seconds()
	res.natsRSS = sumRSS(d.natsPIDs())

	// The issuer's user publishes; the connections, in the sidecars'
	// account, get the message through its stream import, as sidecars do.
	pub, err := nats.Connect(d.natsURLs(userIssuer))
	if err != nil {
		return nil, fmt.Errorf("floor: connect: %w", err)
	}
	defer pub.Close()
	var delays []time.Duration
	for i := range floorMessages {
		key := strconv.Itoa(i)
		t0 := time.Now()
		if err := pub.Publish(subj, []byte(key)); err != nil {
			return nil, fmt.Errorf("floor: publish: %w", err)
		}
		if err := pub.Flush(); err != nil {
			return nil, fmt.Errorf("floor: flush: %w", err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			mu.Lock()
			k := len(got[key])
			mu.Unlock()
			if k >= n {
				break
			}
			if time.Now().After(deadline) {
				return nil, errors.New("floor: a core message did not reach every connection within 30s")
			}
			if !natsconn.Sleep(ctx, time.Millisecond) {
				return nil, ctx.Err()
			}
		}
		mu.Lock()
		for _, at := range got[key] {
			delays = append(delays, at.Sub(t0))
		}
		mu.Unlock()
		if !natsconn.Sleep(ctx, 50*time.Millisecond) {
			return nil, ctx.Err()
		}
	}
	res.fanout = summarize(delays)
	return res, nil
}
