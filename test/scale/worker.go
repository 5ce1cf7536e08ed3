package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenwarden/tokenwarden/revocation"
	"github.com/tokenwarden/tokenwarden/sidecar"
)

// A worker is this same binary started with workerEnv set: it hosts a
// share of the N sidecars, each the real sidecar.Sidecar (sidecar.New and
// Run: its own NATS connection, as the chart's sidecar user; direct gets
// of the bundle and of the revocation stream, and subscriptions to both),
// and answers the
// coordinator's requests, one JSON line each way, on stdin and stdout. It
// exits when stdin closes: the coordinator is gone.
const workerEnv = "TOKENWARDEN_SCALE_WORKER"

// workerConfig is what a worker is started with (JSON in workerEnv).
type workerConfig struct {
	Sidecars int    `json:"sidecars"`
	NATS     string `json:"nats"`
	Issuer   string `json:"issuer"`
	DistPub  string `json:"dist_pub"` // base64 of the raw key
}

// request is one command of the coordinator.
type request struct {
	Op      string   `json:"op"`
	IDs     []string `json:"ids,omitempty"`     // await_events
	JTIs    []string `json:"jtis,omitempty"`    // check
	Seq     uint64   `json:"seq,omitempty"`     // await_bundle
	Since   int64    `json:"since,omitempty"`   // conns: unix ns
	Timeout int64    `json:"timeout,omitempty"` // ms
	// start: sidecars started per second (0: all at once).
	Rate float64 `json:"rate,omitempty"`
}

// response answers a request; times are unix nanoseconds (0: never).
type response struct {
	Err string `json:"err,omitempty"`
	// await_ready: per sidecar, when it first held a bundle from NATS and
	// had replayed the revocation stream; NotReady: Ready() false now.
	ReadyAt  []int64 `json:"ready_at,omitempty"`
	NotReady int     `json:"not_ready"`
	// await_events: per event id, the application times (one per sidecar
	// that applied it).
	Events map[string][]int64 `json:"events,omitempty"`
	// await_bundle: per sidecar, when it first held the sequence.
	BundleAt []int64 `json:"bundle_at,omitempty"`
	// conns: per sidecar disconnected since, its first reconnect after.
	Disconnected int     `json:"disconnected"`
	Reconnects   []int64 `json:"reconnects,omitempty"`
	// check: (sidecar, jti) pairs missing from the revocation sets.
	Missed int `json:"missed"`
	// watch_stop: the most sidecars seen not ready at once, and how many
	// were not ready at some reading.
	MaxNotReady  int `json:"max_not_ready"`
	EverNotReady int `json:"ever_not_ready"`
	// warnings: log lines at Warn or above, by message, over all sidecars.
	Warnings map[string]int `json:"warnings,omitempty"`
}

// record is what one sidecar's log and callbacks told: the worker
// learns of bundles, replays and reconnections from the sidecar's own
// log lines, because the sidecar has no callback for them (see the
// report: a WithOnBundle/WithOnNATSState option would be sturdier).
type record struct {
	mu          sync.Mutex
	replayedAt  int64
	bundles     []bundleSeen
	disconnects []int64
	reconnects  []int64
	warnings    map[string]int
}

type bundleSeen struct {
	seq uint64
	at  int64
}

// Messages of the sidecar's log the worker follows.
const (
	msgBundle       = "JWKS bundle applied"
	msgReplayed     = "revocation stream replayed"
	msgDisconnected = "NATS disconnected; reconnecting"
	msgReconnected  = "NATS reconnected"
)

// recordHandler is a slog.Handler that feeds a record; it keeps no line.
type recordHandler struct{ r *record }

func (h recordHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (h recordHandler) WithAttrs([]slog.Attr) slog.Handler           { return h }
func (h recordHandler) WithGroup(string) slog.Handler                { return h }

func (h recordHandler) Handle(_ context.Context, rec slog.Record) error {
	now := time.Now().UnixNano()
	r := h.r
	switch rec.Message {
	case msgBundle:
		var seq uint64
		source := ""
		rec.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "sequence":
				seq = attrUint(a.Value)
			case "source":
				source = a.Value.String()
			}
			return true
		})
		if source != "nats" {
			return nil
		}
		r.mu.Lock()
		r.bundles = append(r.bundles, bundleSeen{seq: seq, at: now})
		r.mu.Unlock()
		return nil
	case msgReplayed:
		r.mu.Lock()
		if r.replayedAt == 0 {
			r.replayedAt = now
		}
		r.mu.Unlock()
		return nil
	case msgDisconnected:
		r.mu.Lock()
		r.disconnects = append(r.disconnects, now)
		r.mu.Unlock()
	case msgReconnected:
		r.mu.Lock()
		r.reconnects = append(r.reconnects, now)
		r.mu.Unlock()
		return nil
	}
	if rec.Level >= slog.LevelWarn {
		r.mu.Lock()
		if r.warnings == nil {
			r.warnings = map[string]int{}
		}
		r.warnings[rec.Message]++
		r.mu.Unlock()
	}
	return nil
}

func attrUint(v slog.Value) uint64 {
	switch v.Kind() {
	case slog.KindUint64:
		return v.Uint64()
	case slog.KindInt64:
		return uint64(max(v.Int64(), 0))
	default:
		n, _ := strconv.ParseUint(v.String(), 10, 64)
		return n
	}
}

// readyAt is when the sidecar first held a bundle from NATS and had
// replayed the revocation stream (0: not yet).
func (r *record) readyAt() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.replayedAt == 0 || len(r.bundles) == 0 {
		return 0
	}
	return max(r.replayedAt, r.bundles[0].at)
}

func (r *record) bundleAt(seq uint64) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.bundles {
		if b.seq >= seq {
			return b.at
		}
	}
	return 0
}

// reconnectAfter reports whether the sidecar lost its connection after
// since, and when it was next connected again (0: not yet).
func (r *record) reconnectAfter(since int64) (lost bool, at int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range r.disconnects {
		if d >= since {
			lost = true
			break
		}
	}
	if !lost {
		return false, 0
	}
	for _, c := range r.reconnects {
		if c >= since {
			return true, c
		}
	}
	return true, 0
}

type worker struct {
	cfg  workerConfig
	scs  []*sidecar.Sidecar
	recs []*record

	evMu   sync.Mutex
	events map[string][]int64

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	watchStop chan struct{}
	watchDone chan response
}

// workerMain runs a worker; its exit code.
func workerMain() int {
	var cfg workerConfig
	if err := json.Unmarshal([]byte(os.Getenv(workerEnv)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "scale worker: bad configuration:", err)
		return 2
	}
	w := &worker{cfg: cfg, events: map[string][]int64{}}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	defer w.cancel()
	if err := w.build(); err != nil {
		fmt.Fprintln(os.Stderr, "scale worker:", err)
		return 1
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	out := json.NewEncoder(os.Stdout)
	// Tell the coordinator the sidecars are built and waiting for start.
	if err := out.Encode(response{}); err != nil {
		return 1
	}
	for in.Scan() {
		var req request
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			_ = out.Encode(response{Err: "bad request: " + err.Error()})
			continue
		}
		resp := w.handle(req)
		if err := out.Encode(resp); err != nil {
			return 1
		}
		if req.Op == "stop" {
			return 0
		}
	}
	// stdin closed: the coordinator is gone.
	w.stop()
	return 0
}

func (w *worker) build() error {
	for range w.cfg.Sidecars {
		rec := &record{}
		cfg := sidecar.DefaultConfig()
		cfg.Listen = "127.0.0.1:0" // never served: the worker calls no listener
		cfg.Issuer = w.cfg.Issuer
		cfg.Audience = []string{audience}
		cfg.NATS.URL = w.cfg.NATS
		cfg.DistributionPublicKeys = []string{w.cfg.DistPub}
		sc, err := sidecar.New(cfg, sidecar.WithLogger(slog.New(recordHandler{r: rec})),
			sidecar.WithOnRevocation(w.applied))
		if err != nil {
			return fmt.Errorf("sidecar: %w", err)
		}
		w.scs = append(w.scs, sc)
		w.recs = append(w.recs, rec)
	}
	return nil
}

// applied is every sidecar's WithOnRevocation callback: the moment from
// which its verifier rejects what the event matches.
func (w *worker) applied(e *revocation.Event) {
	now := time.Now().UnixNano()
	w.evMu.Lock()
	w.events[e.ID] = append(w.events[e.ID], now)
	w.evMu.Unlock()
}

func (w *worker) handle(req request) response {
	timeout := time.Duration(req.Timeout) * time.Millisecond
	switch req.Op {
	case "start":
		// Paced in its own goroutine: the answer comes at once, and the
		// coordinator times readiness from its request.
		w.wg.Go(func() {
			var every time.Duration
			if req.Rate > 0 {
				every = time.Duration(float64(time.Second) / req.Rate)
			}
			next := time.Now()
			for _, sc := range w.scs {
				if every > 0 {
					time.Sleep(time.Until(next))
					next = next.Add(every)
				}
				if w.ctx.Err() != nil {
					return
				}
				w.wg.Go(func() {
					if err := sc.Run(w.ctx); err != nil {
						fmt.Fprintln(os.Stderr, "scale worker: sidecar stopped:", err)
					}
				})
			}
		})
		return response{}
	case "await_ready":
		w.waitFor(timeout, func() bool {
			for _, r := range w.recs {
				if r.readyAt() == 0 {
					return false
				}
			}
			return true
		})
		resp := response{ReadyAt: make([]int64, len(w.recs))}
		for i, r := range w.recs {
			resp.ReadyAt[i] = r.readyAt()
		}
		resp.NotReady = w.notReady()
		return resp
	case "await_events":
		w.waitFor(timeout, func() bool {
			w.evMu.Lock()
			defer w.evMu.Unlock()
			for _, id := range req.IDs {
				if len(w.events[id]) < len(w.scs) {
					return false
				}
			}
			return true
		})
		resp := response{Events: map[string][]int64{}}
		w.evMu.Lock()
		for _, id := range req.IDs {
			resp.Events[id] = append([]int64(nil), w.events[id]...)
		}
		w.evMu.Unlock()
		return resp
	case "await_bundle":
		w.waitFor(timeout, func() bool {
			for _, r := range w.recs {
				if r.bundleAt(req.Seq) == 0 {
					return false
				}
			}
			return true
		})
		resp := response{BundleAt: make([]int64, len(w.recs))}
		for i, r := range w.recs {
			resp.BundleAt[i] = r.bundleAt(req.Seq)
		}
		return resp
	case "conns":
		// Waits (up to the timeout) until every sidecar that lost its
		// connection since has it back.
		w.waitFor(timeout, func() bool {
			for _, r := range w.recs {
				if lost, at := r.reconnectAfter(req.Since); lost && at == 0 {
					return false
				}
			}
			return true
		})
		var resp response
		for _, r := range w.recs {
			lost, at := r.reconnectAfter(req.Since)
			if lost {
				resp.Disconnected++
				resp.Reconnects = append(resp.Reconnects, at)
			}
		}
		return resp
	case "check":
		var resp response
		for _, sc := range w.scs {
			for _, jti := range req.JTIs {
				if !sc.Revocations().Has(revocation.KindJTI, jti) {
					resp.Missed++
				}
			}
		}
		resp.NotReady = w.notReady()
		return resp
	case "watch_start":
		w.watchStop, w.watchDone = make(chan struct{}), make(chan response, 1)
		go w.watchReady(w.watchStop, w.watchDone)
		return response{}
	case "watch_stop":
		if w.watchStop == nil {
			return response{Err: "watch_stop without watch_start"}
		}
		close(w.watchStop)
		resp := <-w.watchDone
		w.watchStop = nil
		return resp
	case "warnings":
		resp := response{Warnings: map[string]int{}}
		for _, r := range w.recs {
			r.mu.Lock()
			for m, n := range r.warnings {
				resp.Warnings[m] += n
			}
			r.mu.Unlock()
		}
		return resp
	case "stop":
		w.stop()
		return response{}
	}
	return response{Err: "unknown op " + strconv.Quote(req.Op)}
}

// waitFor polls cond every 5 ms until it holds or timeout passes.
func (w *worker) waitFor(timeout time.Duration, cond func() bool) {
	deadline := time.Now().Add(timeout)
	for !cond() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

func (w *worker) notReady() int {
	n := 0
	for _, sc := range w.scs {
		if !sc.Ready() {
			n++
		}
	}
	return n
}

// watchReady reads every sidecar's readiness once a second (what a
// kubelet's probe would see) until stop closes.
func (w *worker) watchReady(stop <-chan struct{}, done chan<- response) {
	ever := make([]bool, len(w.scs))
	var resp response
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		n := 0
		for i, sc := range w.scs {
			if !sc.Ready() {
				n++
				ever[i] = true
			}
		}
		resp.MaxNotReady = max(resp.MaxNotReady, n)
		select {
		case <-stop:
			for _, e := range ever {
				if e {
					resp.EverNotReady++
				}
			}
			done <- resp
			return
		case <-tick.C:
		}
	}
}

// stop ends every sidecar, waiting at most 30 s.
func (w *worker) stop() {
	w.cancel()
	done := make(chan struct{})
	go func() { w.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		fmt.Fprintln(os.Stderr, "scale worker: sidecars still running 30s after stop")
	}
}

// ---- the coordinator's side ----

// workerProc is a running worker, seen from the coordinator.
type workerProc struct {
	proc    *child
	n       int
	in      *os.File
	outFile *os.File
	out     *bufio.Scanner
	busy    atomic.Bool
}

func startWorker(kids *children, dir, bin string, i int, cfg workerConfig) (*workerProc, error) {
	env, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("worker pipe: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		_, _ = inR.Close(), inW.Close()
		return nil, fmt.Errorf("worker pipe: %w", err)
	}
	p, err := kids.start(startSpec{name: "worker-" + strconv.Itoa(i), bin: bin, dir: dir,
		env: []string{workerEnv + "=" + string(env)}, stdin: inR, stdout: outW})
	if err != nil {
		_, _ = inW.Close(), outR.Close()
		return nil, err
	}
	sc := bufio.NewScanner(outR)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	w := &workerProc{proc: p, n: cfg.Sidecars, in: inW, outFile: outR, out: sc}
	// The worker says it has built its sidecars.
	if _, err := w.read(); err != nil {
		return nil, fmt.Errorf("worker %d: %w\n%s", i, err, p.tail(20))
	}
	return w, nil
}

// close closes the coordinator's ends of the pipes.
func (w *workerProc) close() {
	_ = w.in.Close()
	_ = w.outFile.Close()
}

func (w *workerProc) read() (response, error) {
	if !w.out.Scan() {
		err := w.out.Err()
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return response{}, err
	}
	var resp response
	if err := json.Unmarshal(w.out.Bytes(), &resp); err != nil {
		return response{}, fmt.Errorf("bad response: %w", err)
	}
	if resp.Err != "" {
		return resp, errors.New(resp.Err)
	}
	return resp, nil
}

// call sends a request and waits for its answer.
func (w *workerProc) call(req request) (response, error) {
	if !w.busy.CompareAndSwap(false, true) {
		return response{}, errors.New("worker: concurrent calls")
	}
	defer w.busy.Store(false)
	b, err := json.Marshal(req)
	if err != nil {
		return response{}, err
	}
	if _, err := w.in.Write(append(b, '\n')); err != nil {
		return response{}, fmt.Errorf("worker %s: %w", w.proc.name, err)
	}
	resp, err := w.read()
	if err != nil {
		return resp, fmt.Errorf("worker %s %s: %w", w.proc.name, req.Op, err)
	}
	return resp, nil
}

// callAll sends req to every worker at once and returns the answers in
// order.
func callAll(ws []*workerProc, req request) ([]response, error) {
	out := make([]response, len(ws))
	errs := make([]error, len(ws))
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Go(func() { out[i], errs[i] = w.call(req) })
	}
	wg.Wait()
	return out, errors.Join(errs...)
}
