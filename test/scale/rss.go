package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/natsconn"
)

// rssResult is the memory of real sidecar processes, one per pod as in
// Kubernetes, not estimated from the in-process run.
type rssResult struct {
	procs      int
	idle, load []int64 // per process: idle reading, peak under load
	// What the idle RSS is made of, per process (see memParts).
	parts          []memParts
	idleFor        time.Duration
	requests, bad  int64
	revocations    int
	loadFor        time.Duration
	tokens         int
	rate           int
	revocationRate int
}

// Under load, each process gets rssRate /verify requests a second, cycling
// through rssTokens distinct valid tokens (so its token cache holds them
// all), while the issuer revokes rssRevocationRate jtis a second (each
// applied by every process).
const (
	rssTokens         = 100
	rssRevocationRate = 10
)

// measureRSS deploys NATS and an issuer afresh, starts -rss-sample
// `tokenwarden sidecar` processes and reads their VmRSS idle and under
// load.
func (r *runner) measureRSS(ctx context.Context) (*rssResult, error) {
	dir := filepath.Join(r.dir, "rss")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	r.logf("sidecar processes: starting 3 NATS nodes and the issuer")
	d, err := deploy(ctx, r.kids, dir, r.o.natsBin, r.o.bin, r.o.chartDir)
	defer d.stop()
	if err != nil {
		return nil, err
	}
	res := &rssResult{procs: r.o.rssSample, idleFor: r.o.rssIdle, loadFor: r.o.rssLoad, tokens: rssTokens, rate: r.o.rssRate, revocationRate: rssRevocationRate}
	r.logf("sidecar processes: starting %d", r.o.rssSample)
	type proc struct {
		c   *child
		url string
	}
	procs := make([]proc, 0, r.o.rssSample)
	defer func() {
		for _, p := range procs {
			p.c.stop(10 * time.Second)
		}
	}()
	for i := range r.o.rssSample {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		grpcPort, err := freePort()
		if err != nil {
			return nil, err
		}
		// The defaults of a sidecar the chart injects, less the access log
		// (at Info, which --log-level warn drops anyway). A sidecar that
		// serves gRPC too (the default where it does) gets a port of its
		// own through the variable, which a sidecar without gRPC ignores.
		c, err := r.kids.start(startSpec{name: "sidecar-" + strconv.Itoa(i), bin: r.o.bin, dir: dir,
			env: []string{"TOKENWARDEN_GRPC_ADDR=127.0.0.1:" + strconv.Itoa(grpcPort)}, args: []string{"sidecar",
				"--listen", addr, "--issuer", d.issuerURL, "--audience", audience, "--nats-url", d.natsURLs(userSidecar),
				"--distribution-public-key-file", d.distFile, "--log-level", "warn"}})
		if err != nil {
			return nil, err
		}
		procs = append(procs, proc{c: c, url: "http://" + addr})
	}
	for _, p := range procs {
		if err := waitReady(ctx, d, p.c, p.url+"/readyz", 2*time.Minute); err != nil {
			return nil, err
		}
	}
	r.logf("sidecar processes: idle for %s", r.o.rssIdle)
	if !natsconn.Sleep(ctx, r.o.rssIdle) {
		return nil, ctx.Err()
	}
	for _, p := range procs {
		b, err := rssBytes(p.c.pid())
		if err != nil {
			return nil, err
		}
		res.idle = append(res.idle, b)
		res.parts = append(res.parts, readMemParts(ctx, d, p.c.pid(), p.url))
	}

	tokens := make([]string, 0, rssTokens)
	for range rssTokens {
		t, err := d.token(ctx, appClient, appSecret, "read")
		if err != nil {
			return nil, err
		}
		tokens = append(tokens, t)
	}
	r.logf("sidecar processes: %d /verify a second each and %d revocations a second for %s", r.o.rssRate, rssRevocationRate, r.o.rssLoad)
	lctx, cancel := context.WithTimeout(ctx, r.o.rssLoad)
	defer cancel()
	peaks := make([]atomic.Int64, len(procs))
	var wg sync.WaitGroup
	var requests, bad atomic.Int64
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	for i, p := range procs {
		wg.Go(func() {
			// Open loop at the rate; a slow answer does not slow the sender.
			tick := time.NewTicker(time.Second / time.Duration(r.o.rssRate))
			defer tick.Stop()
			sem := make(chan struct{}, 4)
			var inflight sync.WaitGroup
			defer inflight.Wait()
			for k := 0; ; k++ {
				select {
				case <-lctx.Done():
					return
				case <-tick.C:
				}
				select {
				case sem <- struct{}{}:
				default:
					continue // four in flight: the process is saturated, skip a beat
				}
				inflight.Go(func() {
					defer func() { <-sem }()
					req, err := http.NewRequestWithContext(lctx, http.MethodGet, p.url+"/verify", nil)
					if err != nil {
						return
					}
					req.Header.Set("Authorization", "Bearer "+tokens[(k+i)%len(tokens)])
					resp, err := client.Do(req)
					if err != nil {
						if lctx.Err() == nil {
							bad.Add(1)
						}
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					requests.Add(1)
					if resp.StatusCode != http.StatusOK {
						bad.Add(1)
					}
				})
			}
		})
	}
	var revoked atomic.Int64
	wg.Go(func() {
		tick := time.NewTicker(time.Second / rssRevocationRate)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-lctx.Done():
				return
			case <-tick.C:
			}
			if _, err := d.revoke(lctx, "rss-"+strconv.Itoa(i)+"-"+strconv.FormatInt(time.Now().UnixNano(), 36), 5*time.Second); err == nil {
				revoked.Add(1)
			}
		}
	})
	wg.Go(func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			for i, p := range procs {
				if b, err := rssBytes(p.c.pid()); err == nil && b > peaks[i].Load() {
					peaks[i].Store(b)
				}
			}
			select {
			case <-lctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	wg.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	for i := range peaks {
		res.load = append(res.load, peaks[i].Load())
	}
	res.requests, res.bad, res.revocations = requests.Load(), bad.Load(), int(revoked.Load())
	r.logf("sidecar processes: %d requests (%d not 200), %d revocations", res.requests, res.bad, res.revocations)
	if res.bad > 0 {
		return res, fmt.Errorf("%d /verify requests failed or were refused under load", res.bad)
	}
	return res, nil
}

func waitReady(ctx context.Context, d *deployment, c *child, u string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		if c.exited() {
			return fmt.Errorf("%s exited: %w\n%s", c.name, c.err, c.tail(20))
		}
		if code, _ := d.get(ctx, u); code == http.StatusOK {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready within %s\n%s", c.name, within, c.tail(20))
		}
		if !natsconn.Sleep(ctx, 50*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// percentile of byte counts (sorted copy).
func pctBytes(v []int64, p float64) int64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// memParts is what a process's resident memory is made of: anonymous
// memory (the Go heap, stacks and the runtime's own) and file-backed pages
// (the executable's code and data as far as they were touched), from
// /proc/PID/smaps_rollup; and the Go runtime's view from the sidecar's
// /metrics. A figure not read is 0.
type memParts struct {
	anon, file                int64 // resident anonymous and file-backed bytes
	pss                       int64 // proportional set size: pages shared with other processes (the executable's) divided among them
	heapInuse, stack, runtime int64 // Go heap in use, goroutine stacks, all the runtime holds (go_memstats_sys_bytes)
	heapReleased              int64 // heap returned to the OS, counted in runtime
	goroutines                int64
}

func readMemParts(ctx context.Context, d *deployment, pid int, url string) memParts {
	var m memParts
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				continue
			}
			switch f[0] {
			case "Anonymous:":
				m.anon = kb << 10
			case "Pss:":
				m.pss = kb << 10
			case "Rss:":
				m.file = kb << 10 // less anonymous, below
			}
		}
		m.file = max(m.file-m.anon, 0)
	}
	if code, body := d.get(ctx, url+"/metrics"); code == http.StatusOK {
		for _, line := range strings.Split(string(body), "\n") {
			name, val, ok := strings.Cut(line, " ")
			if !ok {
				continue
			}
			v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
			if err != nil {
				continue
			}
			switch name {
			case "go_memstats_heap_inuse_bytes":
				m.heapInuse = int64(v)
			case "go_memstats_stack_inuse_bytes":
				m.stack = int64(v)
			case "go_memstats_sys_bytes":
				m.runtime = int64(v)
			case "go_memstats_heap_released_bytes":
				m.heapReleased = int64(v)
			case "go_goroutines":
				m.goroutines = int64(v)
			}
		}
	}
	return m
}

// medianParts is the median of each figure over the processes.
func medianParts(ps []memParts) memParts {
	med := func(f func(memParts) int64) int64 {
		v := make([]int64, 0, len(ps))
		for _, p := range ps {
			v = append(v, f(p))
		}
		return pctBytes(v, 0.5)
	}
	return memParts{
		anon: med(func(p memParts) int64 { return p.anon }), file: med(func(p memParts) int64 { return p.file }),
		pss:       med(func(p memParts) int64 { return p.pss }),
		heapInuse: med(func(p memParts) int64 { return p.heapInuse }), stack: med(func(p memParts) int64 { return p.stack }),
		runtime: med(func(p memParts) int64 { return p.runtime }), heapReleased: med(func(p memParts) int64 { return p.heapReleased }),
		goroutines: med(func(p memParts) int64 { return p.goroutines }),
	}
}
