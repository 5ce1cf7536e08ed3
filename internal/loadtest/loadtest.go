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

// Metrics scrapes a Prometheus text endpoint and returns each metric name
// with the sum of its samples over all label sets (histogram and summary
// series keep their _bucket, _sum and _count names).
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
		if i := strings.IndexByte(line, '{'); i >= 0 {
			j := strings.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			name, rest, ok = line[:i], strings.TrimSpace(line[j+1:]), true
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
