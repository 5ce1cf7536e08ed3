package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

// coordinatorEnv makes the test binary run the tool itself (its value is
// the flags), so a test can kill a real run from outside.
const coordinatorEnv = "TOKENWARDEN_SCALE_COORDINATOR"

func TestMain(m *testing.M) {
	// The tool starts its workers from its own binary: under go test that
	// is this test binary.
	if os.Getenv(workerEnv) != "" {
		os.Exit(workerMain())
	}
	if args := os.Getenv(coordinatorEnv); args != "" {
		os.Exit(coordinatorMain(strings.Fields(args)))
	}
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

var (
	buildOnce          sync.Once
	twBin, natsBin     string
	buildErr           error
	buildDir, buildOut string
)

// binaries builds tokenwarden and nats-server once for the package.
func binaries(t *testing.T) (tw, nats string) {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "tokenwarden-scale-test")
		if buildErr != nil {
			return
		}
		twBin, natsBin = filepath.Join(buildDir, "tokenwarden"), filepath.Join(buildDir, "nats-server")
		for _, b := range []struct{ out, pkg string }{
			{twBin, "github.com/tokenwarden/tokenwarden/cmd/tokenwarden"},
			{natsBin, "github.com/nats-io/nats-server/v2"},
		} {
			out, err := exec.Command("go", "build", "-o", b.out, b.pkg).CombinedOutput()
			if err != nil {
				buildErr, buildOut = fmt.Errorf("go build %s: %w", b.pkg, err), string(out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatalf("%v\n%s", buildErr, buildOut)
	}
	return twBin, natsBin
}

// chartDir is the chart, seen from this package's directory.
const chartDir = "../../charts/tokenwarden"

// TestScaleSmoke runs the tool end to end at a tiny N, to check that it
// works and prints its table, not to measure anything: 4 sidecars in two
// worker processes against the chart's NATS accounts, the cold start, the
// idle reading, 2 revocations, a rotation, and one real sidecar process.
// It checks what the tool found (every sidecar ready, every event and
// bundle at every sidecar, no JetStream consumer held by a sidecar), not
// how fast. Left out: the herd (a kill -9 of a NATS node and the wait for
// a new stream leader, 15 s and more on a loaded machine; make chaos kills
// nodes under load and checks the ledger), and the capacity and floor
// phases, which only measure rates on fresh clusters.
func TestScaleSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("deploys NATS and an issuer twice")
	}
	tw, nats := binaries(t)
	const n = 4
	o := defaults()
	o.bin, o.natsBin, o.chartDir = tw, nats, chartDir
	o.counts, o.perWorker, o.ramp = []int{n}, n/2, 0
	o.events, o.rotations, o.idle = 2, 1, time.Second
	o.floor, o.capacity, o.herd = false, false, false
	o.rssSample, o.rssIdle, o.rssLoad, o.rssRate = 1, time.Second, time.Second, 20
	o.timeout = 4 * time.Minute
	var out, progress bytes.Buffer
	o.out, o.progress = &out, &progress
	rep, err := run(t.Context(), o)
	t.Log("\n" + progress.String() + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.results) != 1 {
		t.Fatalf("%d results, want 1", len(rep.results))
	}
	r := rep.results[0]
	checks := []struct {
		what      string
		got, want int
	}{
		{"worker processes", r.workers, 2},
		{"sidecars ready", r.ready.N, n},
		{"sidecars not ready once all were", r.notReady, 0},
		{"revocation propagations timed", r.prop.N, n * o.events},
		{"bundle arrivals timed", r.rotate.N, n * o.rotations},
		{"missed events", r.missed, 0},
		{"sidecar processes measured idle", len(rep.rss.idle), 1},
		{"sidecar processes measured under load", len(rep.rss.load), 1},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.what, c.got, c.want)
		}
	}
	// Sidecars read by direct get: the consumers of the streams are the
	// issuer's, fewer than the sidecars.
	if r.consRev >= n || r.consJWKS >= n {
		t.Errorf("consumers: revocation stream %d, bundle bucket %d; sidecars must hold none", r.consRev, r.consJWKS)
	}
	if r.natsRSS <= 0 || r.workerRSS <= 0 || rep.rss.idle[0] <= 0 {
		t.Errorf("memory not measured: NATS %d, workers %d, sidecar process %d", r.natsRSS, r.workerRSS, rep.rss.idle[0])
	}
	for _, row := range []string{"| missed events (of deliveries) | 0 (of ", "| key rotation: new bundle from the 200", "`tokenwarden sidecar` processes"} {
		if !strings.Contains(out.String(), row) {
			t.Errorf("table lacks %q", row)
		}
	}
}

// TestChartAuthConf: the servers get the chart's accounts, rendered from
// the chart itself, with the sidecars' user in SIDECARS.
func TestChartAuthConf(t *testing.T) {
	auth, err := chartAuthConf(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"TOKENWARDEN {", "SIDECARS {", "user: sidecar", "user: issuer",
		`"$JS.API.DIRECT.GET.TOKENWARDEN_REVOCATIONS"`, `{ stream: "tokenwarden.revocations.>", accounts: [SIDECARS] }`} {
		if !strings.Contains(auth, want) {
			t.Errorf("auth.conf lacks %q:\n%s", want, auth)
		}
	}
	if strings.Contains(auth, "{{") {
		t.Errorf("auth.conf holds template text:\n%s", auth)
	}
	if _, err := chartAuthConf(t.TempDir()); err == nil {
		t.Error("no chart: no error")
	}
}

// TestChildrenDieWithTool starts the tool as a process, waits until it
// has its NATS nodes, issuer and worker running, ends it, and checks that
// every one of its children is gone: at once for SIGTERM and SIGINT (the
// tool kills them), and for SIGKILL too (Pdeathsig: the kernel kills
// them).
func TestChildrenDieWithTool(t *testing.T) {
	if testing.Short() {
		t.Skip("deploys NATS and an issuer three times")
	}
	tw, nats := binaries(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			// A long idle phase keeps the tool busy while it is killed.
			args := fmt.Sprintf("-chart "+chartDir+" -bin %s -nats-bin %s -n 4 -per-worker 4 -idle 10m -floor=false -capacity=false -herd=false -rss-sample 0 -timeout 5m", tw, nats)
			cmd := exec.Command(self, "-test.run=^$")
			// The tool's directory goes with the test, also after a kill -9.
			cmd.Env = append(os.Environ(), coordinatorEnv+"="+args, "TMPDIR="+t.TempDir())
			var out testenv.Buffer // written by exec's copier, read on failure
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-done
			})
			// 3 NATS nodes, the issuer and a worker.
			var kids []procID
			deadline := time.Now().Add(2 * time.Minute)
			for len(kids) < 5 {
				if time.Now().After(deadline) {
					t.Fatalf("the tool has %d children after 2 minutes, want 5\n%s", len(kids), out.String())
				}
				select {
				case <-done:
					t.Fatalf("the tool exited early\n%s", out.String())
				case <-time.After(100 * time.Millisecond):
				}
				kids = childrenOf(cmd.Process.Pid)
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case <-done:
			case <-time.After(time.Minute):
				t.Fatalf("the tool still runs a minute after %s", sig)
			}
			deadline = time.Now().Add(30 * time.Second)
			for {
				var alive []procID
				for _, k := range kids {
					if k.alive() {
						alive = append(alive, k)
					}
				}
				if len(alive) == 0 {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d of the tool's %d children outlived its %s by 30s: %v", len(alive), len(kids), sig, alive)
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
}

// procID names a process across PID reuse: its PID and start time.
type procID struct {
	pid   int
	start string
}

func (p procID) alive() bool {
	s, _, ok := procStat(p.pid)
	return ok && s == p.start
}

// procStat returns a process's start time (field 22 of /proc/PID/stat)
// and parent PID; ok is false once it has gone (a zombie counts as gone).
func procStat(pid int) (start string, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 || f[0] == "Z" {
		return "", 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	return f[19], ppid, true
}

// childrenOf lists the live children of pid.
func childrenOf(pid int) []procID {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var kids []procID
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if start, ppid, ok := procStat(p); ok && ppid == pid {
			kids = append(kids, procID{pid: p, start: start})
		}
	}
	return kids
}
