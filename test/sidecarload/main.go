// Command sidecarload measures the sidecar as a separate process, the way
// it runs in a pod: requests/s and latency of /verify (cache hits) against
// /healthz of the same server, over loopback keep-alive connections, and
// its resident memory idle and under that load; then gRPC Check (Envoy
// ext_authz) against /verify, and the sidecar's CPU per verification for
// cache hits and misses over both. The sidecar runs with the default
// settings (no TOKENWARDEN_* variable reaches it), so its log is the
// default access log, whose bytes per 1,000 requests are printed too.
//
// It starts `tokenwarden dev` (NATS + issuer) and one `tokenwarden sidecar`
// process from the binary given by -bin, so build first (make build). All
// traffic stays on 127.0.0.1; every phase is bounded in time.
//
//	go run ./test/sidecarload -bin bin/tokenwarden -c 32 -d 10s
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/loadtest"
	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

func main() {
	bin := flag.String("bin", "bin/tokenwarden", "tokenwarden binary")
	conns := flag.Int("c", 32, "concurrent keep-alive connections")
	dur := flag.Duration("d", 10*time.Second, "duration of each load phase")
	rounds := flag.Int("rounds", 10, "turns each HTTP phase is split into, the phases alternating (see interleave)")
	sidecarArgs := flag.String("sidecar-args", "", "more flags for the sidecar, space-separated (e.g. --access-log-success-sample=1)")
	flag.Parse()
	// The programs it starts die with it (testenv.Start); it dies with the
	// go command that ran it.
	if err := testenv.DieWithParent(); err != nil {
		fmt.Fprintln(os.Stderr, "sidecarload:", err)
	}
	if err := run(*bin, *conns, *dur, *rounds, strings.Fields(*sidecarArgs)); err != nil {
		fmt.Fprintln(os.Stderr, "sidecarload:", err)
		os.Exit(1)
	}
}

func run(bin string, conns int, dur time.Duration, rounds int, sidecarArgs []string) error {
	dir, err := os.MkdirTemp("", "sidecarload")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// The rest of the system: NATS and an issuer (dev also runs a sidecar,
	// which is not measured).
	// #nosec G204 -- the operator names the binary to measure
	dev := exec.CommandContext(ctx, bin, "dev", "--data", filepath.Join(dir, "dev"), "--issuer-addr", "127.0.0.1:0",
		"--sidecar-addr", "127.0.0.1:0", "--sidecar-grpc-addr", "127.0.0.1:0", "--nats-addr", "127.0.0.1:0", "--log-level", "warn")
	out, err := dev.StdoutPipe()
	if err != nil {
		return err
	}
	dev.Stderr = os.Stderr
	devProc, err := testenv.Start(dev)
	if err != nil {
		return fmt.Errorf("start dev: %w", err)
	}
	defer func() { _ = devProc.Stop(10 * time.Second) }()
	issuerURL, natsURL, err := readBanner(out)
	if err != nil {
		return err
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()

	addr, err := loadtest.FreeAddr()
	if err != nil {
		return err
	}
	grpcAddr, err := loadtest.FreeAddr()
	if err != nil {
		return err
	}
	// #nosec G204 -- as above
	sc := exec.CommandContext(ctx, bin, append([]string{"sidecar", "--listen", addr, "--grpc-addr", grpcAddr, "--issuer", issuerURL, "--audience", "demo-api",
		"--nats-url", natsURL, "--distribution-public-key-file", filepath.Join(dir, "dev", "distribution.pub")}, sidecarArgs...)...)
	logs := &logCounter{}
	sc.Stdout, sc.Stderr, sc.Env = logs, logs, defaultEnv()
	scProc, err := testenv.Start(sc)
	if err != nil {
		return fmt.Errorf("start sidecar: %w", err)
	}
	defer func() { _ = scProc.Stop(10 * time.Second) }()
	base := "http://" + addr
	if err := loadtest.WaitReady(base+"/readyz", 30*time.Second); err != nil {
		return fmt.Errorf("%w; the sidecar logged:\n%s", err, logs.last())
	}
	time.Sleep(2 * time.Second) // let start-up garbage be collected
	idle, err := loadtest.RSSKiB(scProc.Pid())
	if err != nil {
		return err
	}
	tok, err := token(issuerURL)
	if err != nil {
		return err
	}

	var peak atomic.Int64
	hp, vp := &phase{url: base + "/healthz"}, &phase{url: base + "/verify", tok: tok, sample: func() {
		if kib, err := loadtest.RSSKiB(scProc.Pid()); err == nil && int64(kib) > peak.Load() {
			peak.Store(int64(kib))
		}
	}}
	startLog := logs.n.Load()
	interleave([]*phase{hp, vp}, conns, dur, rounds, logs)
	health, verify := hp.result(), vp.result()
	fmt.Printf("sidecar load: %d connections, %s per phase in %d alternating turns, loopback, keep-alive\n", conns, dur, rounds)
	fmt.Printf("  /healthz  %8.0f req/s  p50 %-9s p99 %-9s errors %d\n", health.rps, health.p50, health.p99, health.errors)
	fmt.Printf("  /verify   %8.0f req/s  p50 %-9s p99 %-9s errors %d  (cache hits)\n", verify.rps, verify.p50, verify.p99, verify.errors)
	fmt.Printf("  /verify ÷ /healthz = %.2f\n", verify.rps/health.rps)
	if r := turnRatios(vp, hp); len(r) > 1 {
		fmt.Printf("    turn by turn: median %.2f, from %.2f to %.2f\n", r[len(r)/2], r[0], r[len(r)-1])
	}
	fmt.Printf("  sidecar RSS: idle %.1f MB, peak under /verify load %.1f MB\n", float64(idle)/1024, float64(peak.Load())/1024)
	settings := "default settings"
	if len(sidecarArgs) > 0 {
		settings = "defaults but " + strings.Join(sidecarArgs, " ")
	}
	fmt.Printf("  sidecar log bytes per 1,000 requests (%s): /verify %.0f, /healthz %.0f; %d at start-up\n",
		settings, vp.logPer1000(), hp.logPer1000(), startLog)
	if verify.errors > 0 || health.errors > 0 {
		return fmt.Errorf("requests failed during the load; the sidecar's last lines:\n%s", logs.last())
	}
	return grpcReport(ctx, grpcSetup{base: base, grpcAddr: grpcAddr, tok: tok, conns: conns, dur: dur,
		startMissSidecar: func(ctx context.Context) (string, string, func(), error) {
			addr, err := loadtest.FreeAddr()
			if err != nil {
				return "", "", nil, err
			}
			grpcAddr, err := loadtest.FreeAddr()
			if err != nil {
				return "", "", nil, err
			}
			// #nosec G204 -- as above
			sc := exec.CommandContext(ctx, bin, "sidecar", "--listen", addr, "--grpc-addr", grpcAddr, "--token-cache-size", "0",
				"--issuer", issuerURL, "--audience", "demo-api", "--nats-url", natsURL,
				"--distribution-public-key-file", filepath.Join(dir, "dev", "distribution.pub"), "--log-level", "warn")
			sc.Stderr = os.Stderr
			p, err := testenv.Start(sc)
			if err != nil {
				return "", "", nil, fmt.Errorf("start the sidecar without a token cache: %w", err)
			}
			stop := func() { _ = p.Stop(10 * time.Second) }
			if err := loadtest.WaitReady("http://"+addr+"/readyz", 30*time.Second); err != nil {
				stop()
				return "", "", nil, err
			}
			return "http://" + addr, grpcAddr, stop, nil
		}})
}

var (
	issuerRE = regexp.MustCompile(`issuer\s+(http://\S+)`)
	natsRE   = regexp.MustCompile(`NATS\s+(nats://\S+)`)
)

func readBanner(r io.Reader) (issuerURL, natsURL string, err error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if m := issuerRE.FindStringSubmatch(sc.Text()); m != nil && issuerURL == "" {
			issuerURL = m[1]
		}
		if m := natsRE.FindStringSubmatch(sc.Text()); m != nil {
			natsURL = m[1]
		}
		if issuerURL != "" && natsURL != "" {
			return issuerURL, natsURL, nil
		}
	}
	return "", "", errors.New("tokenwarden dev exited before printing its banner")
}

func token(issuerURL string) (string, error) {
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {"read"}}
	req, _ := http.NewRequest("POST", issuerURL+"/oauth2/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("demo-app", "demo-secret")
	var resp *http.Response
	var err error
	for range 50 { // the issuer may still be loading its keys
		if resp, err = http.DefaultClient.Do(req); err == nil && resp.StatusCode == 200 {
			break
		}
		if resp != nil {
			_ = resp.Body.Close()
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return "", err
	}
	defer func() { _ = resp.Body.Close() }()
	var t struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&t); err != nil || t.AccessToken == "" {
		return "", fmt.Errorf("no access token from the issuer: %w", err)
	}
	return t.AccessToken, nil
}

type result struct {
	rps      float64
	p50, p99 time.Duration
	errors   int64
	// n is the number of answers; cpuPerReq the sidecar's CPU time per
	// answer, when measured (grpc.go); elapsed and lat for summing rounds
	// up (interleave).
	n         int64
	cpuPerReq time.Duration
	elapsed   time.Duration
	lat       []time.Duration
}

// load sends GETs to u on conns keep-alive connections for dur and reports
// throughput and latency percentiles. sample, if set, runs every 100ms.
func load(u, tok string, conns int, dur time.Duration, sample func()) result {
	tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableCompression: true}
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	defer tr.CloseIdleConnections()
	var (
		mu    sync.Mutex
		lat   []time.Duration
		count atomic.Int64
		errs  atomic.Int64
		wg    sync.WaitGroup
	)
	end := time.Now().Add(dur)
	stop := make(chan struct{})
	if sample != nil {
		go func() {
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					sample()
				}
			}
		}()
	}
	start := time.Now()
	for range conns {
		wg.Go(func() {
			local := make([]time.Duration, 0, 1<<16)
			req, _ := http.NewRequest("GET", u, nil)
			if tok != "" {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			for time.Now().Before(end) {
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					errs.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != 200 {
					errs.Add(1)
				}
				local = append(local, time.Since(t0))
				count.Add(1)
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		})
	}
	wg.Wait()
	close(stop)
	elapsed := time.Since(start)
	st := loadtest.Summarize(lat)
	return result{rps: float64(count.Load()) / elapsed.Seconds(), p50: st.P50.Round(time.Microsecond), p99: st.P99.Round(time.Microsecond), errors: errs.Load(),
		n: count.Load(), elapsed: elapsed, lat: lat}
}
