// Command scale measures what N sidecars cost NATS and how fast keys and
// revocations still reach them (issue 14). For each N it deploys, from
// scratch, what the Helm chart deploys: a 3-node NATS JetStream cluster
// (nats-server processes; the revocation stream and every KV bucket R3)
// with the chart's NATS accounts (auth.conf rendered from -chart: the
// issuer in TOKENWARDEN, the sidecars in SIDECARS), and an issuer process;
// then it attaches N real sidecars (sidecar.New and Run, each with its own
// NATS connection, reading the bundle and the revocation stream by direct
// get and following both by plain subscriptions, as the sidecar does),
// hosted -per-worker at a time in worker processes of this same binary,
// and measures:
//
//   - cold start: the time until every sidecar holds the bundle and has
//     replayed the revocation stream (what /readyz waits for);
//   - NATS: resident memory, CPU while idle, consumers per stream, CPU per
//     revocation event, JetStream API requests;
//   - revocation propagation from the admin API's 201 to each sidecar;
//   - key rotation: from the rotate call's 200 until each sidecar holds
//     the new bundle;
//   - the thundering herd: kill -9 of the node leading the revocation
//     stream, a revocation and a rotation while it is down, its restart:
//     reconnect times, time until every sidecar has both, readiness;
//   - missed events: every sidecar must hold every revocation (0);
//
// for comparison, on fresh clusters, the rates of what sidecars ask that
// the cluster sustains (-capacity: STREAM.INFO, idle probe reads) and N
// plain connections with one subscription each (-floor); and, on a fresh deployment, the resident memory of -rss-sample
// real `tokenwarden sidecar` processes, idle and under /verify load. An N
// that fails (a cold start that does not converge, a herd that does not
// catch up, a missed event) is reported in the table, the next N is still
// measured, and the run exits non-zero.
//
// Every child process runs in its own process group with Pdeathsig
// SIGKILL: a killed tool leaves nothing behind. The run is bounded by
// -timeout and prints a Markdown table.
//
//	go build -o bin/scale ./test/scale && bin/scale -bin bin/tokenwarden -n 1000,2500,5000
package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/loadtest"
	"github.com/tokenwarden/tokenwarden/internal/natsconn"
)

type options struct {
	bin, natsBin  string
	chartDir      string
	counts        []int
	perWorker     int
	events        int
	rotations     int
	idle          time.Duration
	ramp          float64
	herd          bool
	floor         bool
	capacity      bool
	rssSample     int
	rssIdle       time.Duration
	rssLoad       time.Duration
	rssRate       int
	timeout       time.Duration
	out, progress io.Writer
}

func defaults() options {
	return options{
		bin: "bin/tokenwarden", chartDir: "charts/tokenwarden", counts: []int{1000, 2500, 5000}, perWorker: 1250, events: 20, rotations: 3,
		idle: 15 * time.Second, ramp: 500, herd: true, floor: true, capacity: true,
		rssSample: 20, rssIdle: 10 * time.Second, rssLoad: 15 * time.Second, rssRate: 100,
		timeout: 60 * time.Minute, out: os.Stdout, progress: os.Stderr,
	}
}

func main() {
	if os.Getenv(workerEnv) != "" {
		os.Exit(workerMain())
	}
	os.Exit(coordinatorMain(os.Args[1:]))
}

// coordinatorMain parses flags, runs the tool and returns the exit code.
func coordinatorMain(args []string) int {
	o := defaults()
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	counts := fs.String("n", "1000,2500,5000", "sidecar counts, comma-separated")
	fs.StringVar(&o.bin, "bin", o.bin, "tokenwarden binary (make build): the issuer and the -rss-sample sidecars")
	fs.StringVar(&o.chartDir, "chart", o.chartDir, "the Helm chart whose NATS accounts and permissions (auth.conf) the NATS servers get")
	fs.StringVar(&o.natsBin, "nats-bin", "", "nats-server binary (default: go build github.com/nats-io/nats-server/v2)")
	fs.IntVar(&o.perWorker, "per-worker", o.perWorker, "sidecars per worker process")
	fs.IntVar(&o.events, "events", o.events, "revocations timed one at a time, per N (their CPU too)")
	fs.IntVar(&o.rotations, "rotations", o.rotations, "key rotations timed, per N")
	fs.DurationVar(&o.idle, "idle", o.idle, "window over which idle CPU is measured")
	fs.Float64Var(&o.ramp, "ramp", o.ramp, "cold start: sidecars started per second, over all workers (0: all at once)")
	fs.BoolVar(&o.herd, "herd", o.herd, "kill -9 and restart the stream leader's node")
	fs.BoolVar(&o.capacity, "capacity", o.capacity, "measure the fresh cluster's capacity for what sidecars ask (STREAM.INFO, idle probe reads) before attaching sidecars")
	fs.BoolVar(&o.floor, "floor", o.floor, "also measure N plain NATS connections on a fresh cluster, for comparison")
	fs.IntVar(&o.rssSample, "rss-sample", o.rssSample, "real sidecar processes whose memory is measured (0: skip)")
	fs.DurationVar(&o.rssIdle, "rss-idle", o.rssIdle, "idle time of the sidecar processes before their memory is read")
	fs.DurationVar(&o.rssLoad, "rss-load", o.rssLoad, "load phase of the sidecar processes")
	fs.IntVar(&o.rssRate, "rss-rate", o.rssRate, "/verify requests per second to each sidecar process under load")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "the whole run stops after this")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	o.counts = nil
	for _, f := range strings.Split(*counts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "scale: -n: bad count %q\n", f)
			return 2
		}
		o.counts = append(o.counts, n)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		return 1
	}
	return 0
}

func (o *options) check() error {
	switch {
	case len(o.counts) == 0:
		return errors.New("-n: no sidecar count")
	case o.perWorker < 1:
		return errors.New("-per-worker: want at least 1")
	case o.events < 1:
		return errors.New("-events: want at least 1")
	case o.rotations < 0 || o.rssSample < 0:
		return errors.New("-rotations and -rss-sample: must not be negative")
	case o.ramp < 0:
		return errors.New("-ramp: must not be negative")
	case o.idle < time.Second:
		return errors.New("-idle: want at least 1s")
	case o.rssSample > 0 && (o.rssIdle < time.Second || o.rssLoad < time.Second || o.rssRate < 1):
		return errors.New("-rss-idle and -rss-load: want at least 1s, -rss-rate at least 1")
	case o.timeout <= 0:
		return errors.New("-timeout: must be positive")
	}
	return nil
}

// report is everything a run measured.
type report struct {
	results []*result
	rss     *rssResult
}

// run measures every N, then the sidecar processes, prints the table and
// returns what it measured; an error if anything failed or any event was
// missed.
func run(ctx context.Context, o options) (*report, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(o.bin); err != nil {
		return nil, fmt.Errorf("-bin: %w (run make build)", err)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("own binary, for the workers: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	kids := newChildren()
	// However run ends (an error, the timeout, SIGINT or SIGTERM), no
	// child outlives it. On the timeout or a signal the children die at
	// once: that also unblocks every wait on a worker's answer.
	defer kids.killAll()
	go func() {
		<-ctx.Done()
		kids.killAll()
	}()
	dir, err := os.MkdirTemp("", "tokenwarden-scale")
	if err != nil {
		return nil, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	if o.natsBin == "" {
		o.natsBin = filepath.Join(dir, "nats-server")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", o.natsBin, "github.com/nats-io/nats-server/v2") // #nosec G204 -- fixed package, path in our directory
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build nats-server: %w\n%s", err, b)
		}
	}
	r := &runner{o: o, kids: kids, dir: dir, self: self, started: time.Now()}
	r.logf("machine: %d cores (GOMAXPROCS %d), %s; %s", runtime.NumCPU(), runtime.GOMAXPROCS(0), cpuModel(), memAvailable())
	rep := &report{}
	var runErr error
	// An N that fails is a finding: the next ones are still measured,
	// and the run fails at the end.
	for _, n := range o.counts {
		if ctx.Err() != nil {
			break
		}
		res, err := r.measure(ctx, n)
		if res != nil {
			rep.results = append(rep.results, res)
		}
		if err != nil {
			r.logf("N=%d failed: %v", n, err)
			runErr = errors.Join(runErr, fmt.Errorf("with %d sidecars: %w", n, err))
		}
	}
	// The sidecar processes do not depend on N: measured even when an N
	// failed (unless the run was cut short).
	if ctx.Err() == nil && o.rssSample > 0 {
		if rep.rss, err = r.measureRSS(ctx); err != nil {
			runErr = errors.Join(runErr, fmt.Errorf("sidecar processes: %w", err))
		}
	}
	printTable(o.out, rep.results, rep.rss, o)
	if runErr != nil {
		return rep, runErr
	}
	for _, res := range rep.results {
		if res.missed > 0 {
			return rep, fmt.Errorf("with %d sidecars: %d missed event deliveries", res.n, res.missed)
		}
	}
	return rep, nil
}

type runner struct {
	o       options
	kids    *children
	dir     string
	self    string
	started time.Time
	logMu   sync.Mutex
}

// logf writes a progress line, so that a long run shows where its time
// goes.
func (r *runner) logf(format string, args ...any) {
	r.logMu.Lock()
	defer r.logMu.Unlock()
	_, _ = fmt.Fprintf(r.o.progress, "scale %6.1fs  %s\n", time.Since(r.started).Seconds(), fmt.Sprintf(format, args...))
}

// since is how long after from each time (Unix nanoseconds) that field
// picks out of the workers' responses came, and how many were 0: never.
func since(resps []response, field func(response) []int64, from time.Time) (d []time.Duration, never int) {
	for _, rs := range resps {
		for _, at := range field(rs) {
			if at == 0 {
				never++
				continue
			}
			d = append(d, time.Unix(0, at).Sub(from))
		}
	}
	return d, never
}

// stats are percentiles of delays, printed as the table's cells.
type stats loadtest.Stats

// summarize sorts d in place and returns its percentiles.
func summarize(d []time.Duration) stats { return stats(loadtest.Summarize(d)) }

// result is what one N measured.
type result struct {
	n, workers int
	load       [2]float64 // the machine's 1-minute load average at start and end

	// The cold start.
	ready stats // from the start command to each sidecar ready
	// neverReady counts the sidecars not ready within readyWithin: the
	// cold start did not converge, and the N's other figures are those of
	// that moment.
	neverReady  int
	readyWithin time.Duration
	notReady    int    // sidecars whose Ready() was false after all were ready
	startAPI    uint64 // JetStream API requests during the cold start
	startErrs   uint64 // of which answered with an error

	// Idle.
	idleDone  bool  // the idle phase ran (otherwise its cells print "-")
	natsBase  int64 // NATS RSS (3 nodes) before any sidecar
	natsRSS   int64 // NATS RSS (3 nodes) with N idle sidecars
	natsMax   int64 // the largest node
	natsIdle  float64
	sideIdle  float64 // CPU of the workers while idle, cores
	idleMsgs  float64 // messages in + out of the 3 nodes per second
	idleAPI   float64 // JetStream API requests per second
	consRev   int
	consJWKS  int
	workerRSS int64 // sum over workers

	// Revocations and rotations.
	propDone  bool  // the propagation phase ran
	prop      stats // revocation from the 201
	propReq   stats // revocation from the request
	natsEvent time.Duration
	sideEvent time.Duration
	rotate    stats // bundle from the rotation's 200

	herd     *herdResult
	floor    *floorResult
	capacity *capacityResult

	missed     int
	deliveries int // (event, sidecar) pairs checked
	// What went wrong, by message: the sidecars' warnings, and the NATS
	// nodes' warnings and errors (addresses and numbers taken out).
	warnings     map[string]int
	natsWarnings map[string]int
}

type herdResult struct {
	victim        string
	victimClients int
	disconnected  int
	reconnect     stats // from the kill, for the disconnected ones
	unreconnected int
	revDown       stats // revocation made while the node was down, from the kill
	revDownAfter  stats // the same from its 201
	revDown201    time.Duration
	bundleDown    stats // rotation while the node was down, from the kill
	rotate200     time.Duration
	bundleMissing int           // sidecars without the new bundle 3 minutes after the kill
	caughtUp      time.Duration // every sidecar has both, from the kill
	nodeBack      time.Duration // restart to /healthz 200
	revUp         stats         // revocation after the restart, from its 201
	maxNotReady   int
	everNotReady  int
}

// measure deploys from scratch, attaches n sidecars and measures them.
func (r *runner) measure(ctx context.Context, n int) (_ *result, err error) {
	res := &result{n: n}
	if r.o.floor {
		f, err := r.measureFloor(ctx, n)
		if err != nil {
			return nil, err
		}
		res.floor = f
	}
	dir := filepath.Join(r.dir, "n"+strconv.Itoa(n))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	r.logf("N=%d: starting 3 NATS nodes and the issuer", n)
	d, err := deploy(ctx, r.kids, dir, r.o.natsBin, r.o.bin, r.o.chartDir)
	defer d.stop()
	if err != nil {
		return res, err
	}
	res.natsBase = sumRSS(d.natsPIDs())
	if r.o.capacity {
		r.logf("N=%d: JetStream API capacity of the fresh cluster", n)
		if res.capacity, err = r.measureCapacity(ctx, d); err != nil {
			return res, err
		}
	}

	k := (n + r.o.perWorker - 1) / r.o.perWorker
	res.workers = k
	r.logf("N=%d: building %d sidecars in %d worker processes", n, n, k)
	ws := make([]*workerProc, 0, k)
	defer func() {
		// The sidecars' warnings say what went wrong, also when a phase
		// failed.
		if resps, err := callAll(ws, request{Op: "warnings"}); err == nil {
			res.warnings = map[string]int{}
			for _, rs := range resps {
				for m, c := range rs.Warnings {
					res.warnings[m] += c
				}
			}
		}
		// All at once: a worker takes up to 30 s to stop its sidecars.
		var wg sync.WaitGroup
		for _, w := range ws {
			wg.Go(func() {
				_, _ = w.call(request{Op: "stop"})
				w.close()
				w.proc.stop(5 * time.Second)
			})
		}
		wg.Wait()
		res.natsWarnings = d.natsWarnings()
		res.load[1] = loadAverage()
	}()
	for i := range k {
		share := n / k
		if i < n%k {
			share++
		}
		w, err := startWorker(r.kids, dir, r.self, i, workerConfig{Sidecars: share, NATS: d.natsURLs(userSidecar), Issuer: d.issuerURL,
			DistPub: base64.StdEncoding.EncodeToString(d.distPub)})
		if err != nil {
			return res, err
		}
		ws = append(ws, w)
	}
	workerPIDs := func() []int {
		pids := make([]int, 0, len(ws))
		for _, w := range ws {
			pids = append(pids, w.proc.pid())
		}
		return pids
	}
	fail := func(err error) (*result, error) { return res, fmt.Errorf("%w\n%s", err, d.issuer.tail(10)) }

	// Cold start: every sidecar connects, binds the bucket and the
	// stream, reads both and replays; -ramp a second (a
	// rollout, a node pool scaling up), or all at once (-ramp 0: every
	// pod of the cluster waiting for a fresh NATS).
	r.logf("N=%d: cold start, %s", n, rampText(r.o.ramp))
	res.load[0] = loadAverage()
	tr0 := d.traffic(ctx)
	t0 := time.Now()
	if _, err := callAll(ws, request{Op: "start", Rate: r.o.ramp / float64(k)}); err != nil {
		return fail(err)
	}
	// Bounded, but with room for a cold start that grows faster than N.
	readyWithin := max(5*time.Minute, time.Duration(n)*60*time.Millisecond)
	resps, err := callAll(ws, request{Op: "await_ready", Timeout: ms(readyWithin)})
	if err != nil {
		return fail(err)
	}
	for _, rs := range resps {
		res.notReady += rs.NotReady
	}
	readyD, notYet := since(resps, func(rs response) []int64 { return rs.ReadyAt }, t0)
	res.ready = summarize(readyD)
	tr := d.traffic(ctx).since(tr0)
	res.startAPI, res.startErrs = tr.api, tr.apiErrors
	r.logf("N=%d: ready: all %s (p50 %s), %d never ready, %d not ready now", n, round(res.ready.Max), round(res.ready.P50), notYet, res.notReady)
	if notYet > 0 {
		// What the cluster looks like when it did not converge.
		res.neverReady, res.readyWithin = notYet, readyWithin
		res.natsRSS, res.natsMax = sumRSS(d.natsPIDs()), maxRSS(d.natsPIDs())
		res.workerRSS = sumRSS(workerPIDs())
		return fail(fmt.Errorf("%d sidecars not ready within %s", notYet, readyWithin))
	}

	// Idle: what N connected sidecars cost while nothing happens (pings,
	// the revocation readers' freshness probes, the bundle's periodic
	// read), once the start-up has settled.
	if !natsconn.Sleep(ctx, min(5*time.Second, r.o.idle)) {
		return res, ctx.Err()
	}
	if res.consRev, _, err = d.streamInfo(ctx, revStream); err != nil {
		return fail(err)
	}
	if res.consJWKS, _, err = d.streamInfo(ctx, jwksStream); err != nil {
		return fail(err)
	}
	r.logf("N=%d: idle for %s", n, r.o.idle)
	natsM, sideM := startCPU(d.natsPIDs), startCPU(workerPIDs)
	tr0 = d.traffic(ctx)
	if !natsconn.Sleep(ctx, r.o.idle) {
		return res, ctx.Err()
	}
	tr = d.traffic(ctx).since(tr0)
	natsCPU, wall := natsM.stop()
	res.idleMsgs, res.idleAPI = float64(tr.msgs)/wall.Seconds(), float64(tr.api)/wall.Seconds()
	res.idleDone = true
	sideCPU, _ := sideM.stop()
	res.natsIdle, res.sideIdle = natsCPU.Seconds()/wall.Seconds(), sideCPU.Seconds()/wall.Seconds()
	res.natsRSS, res.natsMax = sumRSS(d.natsPIDs()), maxRSS(d.natsPIDs())
	res.workerRSS = sumRSS(workerPIDs())
	if res.capacity != nil {
		// The same probe of the stream leader, now that N sidecars are
		// attached.
		if res.capacity.loadedInfo, err = streamInfoRate(ctx, d); err != nil {
			return fail(err)
		}
	}

	var jtis []string
	newJTI := func() string {
		j := "scale-" + strconv.Itoa(n) + "-" + strconv.Itoa(len(jtis)) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		jtis = append(jtis, j)
		return j
	}
	collect := func(ids []string, timeout time.Duration) (map[string][]int64, error) {
		resps, err := callAll(ws, request{Op: "await_events", IDs: ids, Timeout: ms(timeout)})
		if err != nil {
			return nil, err
		}
		all := map[string][]int64{}
		for _, rs := range resps {
			for id, ts := range rs.Events {
				all[id] = append(all[id], ts...)
			}
		}
		for _, id := range ids {
			res.deliveries += n
			res.missed += max(n-len(all[id]), 0)
		}
		return all, nil
	}

	// Revocation propagation, one event at a time; the CPU the events
	// cost is what the phase used beyond the idle rate.
	r.logf("N=%d: %d revocations, one at a time", n, r.o.events)
	natsM, sideM = startCPU(d.natsPIDs), startCPU(workerPIDs)
	var from201, fromReq []time.Duration
	for range r.o.events {
		rv, err := d.revoke(ctx, newJTI(), time.Minute)
		if err != nil {
			return fail(err)
		}
		got, err := collect([]string{rv.id}, 2*time.Minute)
		if err != nil {
			return fail(err)
		}
		for _, at := range got[rv.id] {
			t := time.Unix(0, at)
			from201 = append(from201, max(t.Sub(rv.got), 0)) // applied before the 201 arrived: 0
			fromReq = append(fromReq, t.Sub(rv.sent))
		}
		if !natsconn.Sleep(ctx, 50*time.Millisecond) {
			return res, ctx.Err()
		}
	}
	res.prop, res.propReq = summarize(from201), summarize(fromReq)
	natsCPU, wall = natsM.stop()
	sideCPU, _ = sideM.stop()
	perEvent := func(cpu time.Duration, idle float64) time.Duration {
		return max(cpu-time.Duration(idle*float64(wall)), 0) / time.Duration(r.o.events)
	}
	res.natsEvent, res.sideEvent = perEvent(natsCPU, res.natsIdle), perEvent(sideCPU, res.sideIdle)
	res.propDone = true

	// Key rotation: the bundle is one KV put, which every sidecar gets on
	// its subscription to the key.
	var rot []time.Duration
	lastRotation := time.Time{}
	for i := range r.o.rotations {
		r.logf("N=%d: key rotation %d of %d", n, i+1, r.o.rotations)
		rot0, err := d.rotate(ctx, 30*time.Second)
		if err != nil {
			return fail(err)
		}
		got, seq := rot0.got, rot0.seq
		lastRotation = got
		resps, err := callAll(ws, request{Op: "await_bundle", Seq: seq, Timeout: ms(time.Minute)})
		if err != nil {
			return fail(err)
		}
		for _, rs := range resps {
			for _, at := range rs.BundleAt {
				if at == 0 {
					return fail(fmt.Errorf("bundle %d not at every sidecar within a minute", seq))
				}
				rot = append(rot, max(time.Unix(0, at).Sub(got), 0))
			}
		}
	}
	res.rotate = summarize(rot)

	if r.o.herd {
		h, err := r.herd(ctx, d, ws, n, lastRotation, newJTI, collect)
		res.herd = h
		if err != nil {
			return fail(err)
		}
	}

	if res.herd != nil && res.herd.bundleMissing > 0 {
		defer func() {
			if err == nil {
				err = fmt.Errorf("herd: the bundle of the rotation made while the node was down was not at %d sidecars within 3 minutes", res.herd.bundleMissing)
			}
		}()
	}

	// Missed events: every sidecar must hold every revocation.
	resps, err = callAll(ws, request{Op: "check", JTIs: jtis})
	if err != nil {
		return fail(err)
	}
	for _, rs := range resps {
		res.missed += rs.Missed
	}
	r.logf("N=%d: done: %d missed of %d deliveries", n, res.missed, res.deliveries)
	return res, nil
}

// herd kills -9 the NATS node leading the revocation stream, revokes and
// rotates while it is down, and restarts it.
func (r *runner) herd(ctx context.Context, d *deployment, ws []*workerProc, n int, lastRotation time.Time,
	newJTI func() string, collect func([]string, time.Duration) (map[string][]int64, error)) (*herdResult, error) {
	h := &herdResult{}
	_, leader, err := d.streamInfo(ctx, revStream)
	if err != nil {
		return h, err
	}
	victim, err := d.node(leader)
	if err != nil {
		return h, err
	}
	h.victim = victim.name
	h.victimClients = d.clients(ctx, victim)
	// The rotation during the outage needs a next key old enough.
	if wait := time.Until(lastRotation.Add(propagationAt + 500*time.Millisecond)); wait > 0 && !natsconn.Sleep(ctx, wait) {
		return h, ctx.Err()
	}
	if _, err := callAll(ws, request{Op: "watch_start"}); err != nil {
		return h, err
	}
	r.logf("N=%d: herd: kill -9 of %s (stream leader, %d clients)", n, victim.name, h.victimClients)
	tKill := time.Now()
	victim.proc.kill()

	// A revocation and a rotation while the node is down: every sidecar
	// must get both, the ones it disconnected through their reconnect and
	// replay.
	var rv revocationSent
	var rotErr, revErr error
	var rot rotation
	var wg sync.WaitGroup
	wg.Go(func() { rv, revErr = d.revoke(ctx, newJTI(), time.Minute) })
	wg.Go(func() { rot, rotErr = d.rotate(ctx, time.Minute) })
	wg.Wait()
	if err := errors.Join(revErr, rotErr); err != nil {
		return h, err
	}
	h.revDown201, h.rotate200 = rv.got.Sub(tKill), rot.got.Sub(tKill)
	seq := rot.seq
	got, err := collect([]string{rv.id}, 3*time.Minute)
	if err != nil {
		return h, err
	}
	var down, after []time.Duration
	for _, at := range got[rv.id] {
		down = append(down, time.Unix(0, at).Sub(tKill))
		after = append(after, max(time.Unix(0, at).Sub(rv.got), 0))
	}
	h.revDown, h.revDownAfter = summarize(down), summarize(after)
	resps, err := callAll(ws, request{Op: "await_bundle", Seq: seq, Timeout: ms(3 * time.Minute)})
	if err != nil {
		return h, err
	}
	bd, missing := since(resps, func(rs response) []int64 { return rs.BundleAt }, tKill)
	h.bundleDown = summarize(bd)
	// Not caught up is a finding, not a reason to stop: the rest of the
	// herd (the reconnections, the restart) is still measured, and the
	// N fails at the end.
	h.bundleMissing = missing
	h.caughtUp = max(h.revDown.Max, h.bundleDown.Max)
	resps, err = callAll(ws, request{Op: "conns", Since: tKill.UnixNano(), Timeout: ms(time.Minute)})
	if err != nil {
		return h, err
	}
	for _, rs := range resps {
		h.disconnected += rs.Disconnected
	}
	var rc []time.Duration
	rc, h.unreconnected = since(resps, func(rs response) []int64 { return rs.Reconnects }, tKill)
	h.reconnect = summarize(rc)
	caught := fmt.Sprintf("every sidecar caught up %s after the kill", round(h.caughtUp))
	if h.bundleMissing > 0 {
		caught = fmt.Sprintf("%d sidecars still without the new bundle 3 minutes after the kill", h.bundleMissing)
	}
	r.logf("N=%d: herd: %d disconnected, reconnected within %s; %s", n, h.disconnected, round(h.reconnect.Max), caught)

	// The node comes back.
	tRestart := time.Now()
	if err := d.startNode(victim); err != nil {
		return h, err
	}
	if err := d.waitNode(ctx, victim, 2*time.Minute); err != nil {
		return h, err
	}
	h.nodeBack = time.Since(tRestart)
	rv, err = d.revoke(ctx, newJTI(), time.Minute)
	if err != nil {
		return h, err
	}
	got, err = collect([]string{rv.id}, time.Minute)
	if err != nil {
		return h, err
	}
	var up []time.Duration
	for _, at := range got[rv.id] {
		up = append(up, max(time.Unix(0, at).Sub(rv.got), 0))
	}
	h.revUp = summarize(up)
	// Two of the kubelet's readings after the restart, then the verdict.
	if !natsconn.Sleep(ctx, 2*time.Second) {
		return h, ctx.Err()
	}
	resps, err = callAll(ws, request{Op: "watch_stop"})
	if err != nil {
		return h, err
	}
	for _, rs := range resps {
		h.maxNotReady += rs.MaxNotReady
		h.everNotReady += rs.EverNotReady
	}
	r.logf("N=%d: herd: node back healthy %s after its restart; %d sidecars ever not ready", n, round(h.nodeBack), h.everNotReady)
	return h, nil
}

func ms(d time.Duration) int64 { return d.Milliseconds() }

func rampText(ramp float64) string {
	if ramp == 0 {
		return "all sidecars at once"
	}
	return fmt.Sprintf("%s sidecars started a second", thousands(int(ramp)))
}

func maxRSS(pids []int) int64 {
	var m int64
	for _, p := range pids {
		if b, err := rssBytes(p); err == nil {
			m = max(m, b)
		}
	}
	return m
}

func sumRSS(pids []int) int64 {
	var sum int64
	for _, p := range pids {
		if b, err := rssBytes(p); err == nil {
			sum += b
		}
	}
	return sum
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond)
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond)
	default:
		return d.Round(10 * time.Microsecond)
	}
}

// loadAverage is the machine's 1-minute load average (-1: unknown): on
// a shared machine, what else ran during a measurement.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func memAvailable() string {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "memory unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return fmt.Sprintf("%.1f GiB available", float64(kb)/(1<<20))
		}
	}
	return "memory unknown"
}
