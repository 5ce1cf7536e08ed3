package main

import (
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/loadtest"
)

// logCounter is the sidecar's stdout and stderr: it counts the bytes the
// process logs and keeps the last few KiB, to show when something fails.
type logCounter struct {
	n    atomic.Int64
	mu   sync.Mutex
	tail []byte
}

const logTail = 8 << 10

func (c *logCounter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tail = append(c.tail, p...)
	if len(c.tail) > logTail {
		c.tail = append(c.tail[:0], c.tail[len(c.tail)-logTail:]...)
	}
	return len(p), nil
}

// last returns the last lines logged.
func (c *logCounter) last() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.tail)
}

// defaultEnv is this process's environment without TOKENWARDEN_*
// variables, so the sidecar measured runs with the defaults whatever the
// shell exports.
func defaultEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TOKENWARDEN_") {
			env = append(env, kv)
		}
	}
	return env
}

// phase is one kind of request, measured over several rounds.
type phase struct {
	url, tok string
	sample   func() // see load; nil: none
	// What the rounds add up to.
	n, errors int64
	elapsed   time.Duration
	lat       []time.Duration
	logBytes  int64     // written by the sidecar while this phase ran
	turns     []float64 // requests/s of each turn
}

// interleave runs each phase for dur in all, in rounds turns of dur/rounds
// taken one phase after the other. On a shared machine the load of other
// processes drifts over seconds: back-to-back phases of dur each would
// charge that drift to whichever phase ran at the time, while turns share
// it out, so the ratio of two phases measures the sidecar, not the
// neighbours.
func interleave(phases []*phase, conns int, dur time.Duration, rounds int, logs *logCounter) {
	slice := dur / time.Duration(max(rounds, 1))
	for range max(rounds, 1) {
		for _, p := range phases {
			before := logs.n.Load()
			r := load(p.url, p.tok, conns, slice, p.sample)
			// Every response has arrived, so every line of this turn was
			// written (the sidecar logs before it answers); let the pipe
			// drain.
			time.Sleep(20 * time.Millisecond)
			p.logBytes += logs.n.Load() - before
			p.n += r.n
			p.errors += r.errors
			p.elapsed += r.elapsed
			p.lat = append(p.lat, r.lat...)
			p.turns = append(p.turns, r.rps)
		}
	}
}

// result sums the rounds of p up as load does for one.
func (p *phase) result() result {
	st := loadtest.Summarize(p.lat)
	return result{rps: float64(p.n) / p.elapsed.Seconds(), p50: st.P50.Round(time.Microsecond), p99: st.P99.Round(time.Microsecond),
		errors: p.errors, n: p.n, elapsed: p.elapsed}
}

// turnRatios are a's requests/s over b's, turn by turn, sorted: their
// spread shows how much the neighbours' load moved the figure.
func turnRatios(a, b *phase) []float64 {
	var out []float64
	for i := range min(len(a.turns), len(b.turns)) {
		if b.turns[i] > 0 {
			out = append(out, a.turns[i]/b.turns[i])
		}
	}
	slices.Sort(out)
	return out
}

// logPer1000 is the bytes logged per 1,000 requests of p.
func (p *phase) logPer1000() float64 {
	if p.n == 0 {
		return 0
	}
	return float64(p.logBytes) * 1000 / float64(p.n)
}
