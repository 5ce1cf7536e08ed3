// Package loadtest holds what the load tools under test/ (sidecarload,
// soak) share for running tokenwarden as separate processes on 127.0.0.1
// and measuring them: free ports, readiness polling, resident memory from
// /proc, Prometheus scrapes and latency percentiles. Only those tools and
// their tests import it.
package loadtest

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// FreeAddr returns a 127.0.0.1 address with a port that was free a moment ago.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().String(), nil
}

// WaitReady polls u until it answers 200, for at most within.
func WaitReady(u string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(u); err == nil { // #nosec G107 -- loopback URL built by the caller
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within %s", u, within)
}

// RSSKiB reads a process's resident set size (VmRSS) from /proc.
func RSSKiB(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}

// Metrics scrapes a Prometheus text endpoint. It returns each metric name
// with the sum of its samples over all label sets (histogram and summary
// series keep their _bucket, _sum and _count names), and each labelled
// series under its name and labels as written, e.g. `x_bucket{le="0.1"}`.
func Metrics(client *http.Client, u string) (map[string]float64, error) {
	resp, err := client.Get(u)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("%s: %s", u, resp.Status)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, ok := strings.Cut(line, " ")
		series := ""
		if i := strings.IndexByte(line, '{'); i >= 0 {
			j := strings.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			name, series, rest, ok = line[:i], line[:j+1], strings.TrimSpace(line[j+1:]), true
		}
		if !ok {
			continue
		}
		value, _, _ := strings.Cut(strings.TrimSpace(rest), " ") // an optional timestamp follows
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		m[name] += v
		if series != "" {
			m[series] += v
		}
	}
	return m, sc.Err()
}

// Stats are latency percentiles of a set of samples.
type Stats struct {
	N             int
	P50, P99, Max time.Duration
}

// Summarize sorts d in place and returns its percentiles (zero for no samples).
func Summarize(d []time.Duration) Stats {
	if len(d) == 0 {
		return Stats{}
	}
	slices.Sort(d)
	at := func(p float64) time.Duration { return d[min(len(d)-1, int(float64(len(d))*p))] }
	return Stats{N: len(d), P50: at(0.50), P99: at(0.99), Max: d[len(d)-1]}
}

// Bucket is one cumulative bucket of a Prometheus histogram.
type Bucket struct{ LE, Count float64 }

// Histogram returns the cumulative buckets of histogram name from a
// Metrics scrape, by increasing upper bound (the last one +Inf), summed over
// any other labels.
func Histogram(m map[string]float64, name string) []Bucket {
	byLE := map[float64]float64{}
	prefix := name + "_bucket{"
	for k, v := range m {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		i := strings.Index(k, `le="`)
		if i < 0 {
			continue
		}
		le, _, _ := strings.Cut(k[i+len(`le="`):], `"`)
		f, err := strconv.ParseFloat(le, 64) // accepts "+Inf"
		if err != nil {
			continue
		}
		byLE[f] += v
	}
	b := make([]Bucket, 0, len(byLE))
	for le, n := range byLE {
		b = append(b, Bucket{LE: le, Count: n})
	}
	slices.SortFunc(b, func(x, y Bucket) int { return cmpFloat(x.LE, y.LE) })
	return b
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Quantile estimates the q-quantile of what a histogram observed between
// two scrapes: the upper bound of the bucket that holds it (+Inf beyond
// the last finite bound). It returns NaN without observations, or if the
// scrapes do not have the same buckets.
func Quantile(q float64, from, to []Bucket) float64 {
	if len(to) == 0 || (len(from) != 0 && len(from) != len(to)) {
		return math.NaN()
	}
	at := func(i int) float64 {
		if len(from) == 0 {
			return to[i].Count
		}
		return to[i].Count - from[i].Count
	}
	total := at(len(to) - 1)
	if total <= 0 {
		return math.NaN()
	}
	for i := range to {
		if at(i) >= q*total {
			return to[i].LE
		}
	}
	return math.Inf(1)
}
