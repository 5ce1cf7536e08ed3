package main

// The gRPC side of the load: Envoy's ext_authz Check, sent as Envoy sends
// it (internal/extauthz, with the settings of examples/envoy/envoy-grpc.yaml),
// against the same sidecar process as /verify, and the sidecar's CPU per
// verification from its process_cpu_seconds_total.

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenwarden/tokenwarden/internal/extauthz"
	"github.com/tokenwarden/tokenwarden/internal/loadtest"
)

// callersPerConn is how many concurrent Checks share one HTTP/2
// connection: Envoy keeps one connection per worker thread, each with many
// streams.
const callersPerConn = 8

// checkRequest is the CheckRequest Envoy sends with the example's filter
// for a client's GET /api/orders carrying tok.
func checkRequest(tok string) *authv3.CheckRequest {
	f := extauthz.Filter{
		AllowedHeaders:    []extauthz.Pattern{{Exact: "authorization"}, {Exact: "x-required-scope"}, {Prefix: "x-auth-"}},
		ContextExtensions: map[string]string{"scope": "read"},
		RequestID:         "0b9c4a4e-7f3d-4b0e-9d55-6b0d8e0f1a2c",
	}
	return f.CheckRequest(extauthz.Request{Method: "GET", Path: "/api/orders?page=2", Host: "shop.example.com",
		Headers: [][2]string{{"authorization", "Bearer " + tok}, {"accept", "application/json"}, {"user-agent", "curl/8.5.0"}},
		Source:  netip.MustParseAddrPort("10.1.2.3:53122"), Destination: netip.MustParseAddrPort("10.1.2.9:8080"),
		StreamID: 1, Time: time.Now()})
}

// loadGRPC sends Check for tok from conns concurrent callers for dur, over
// conns/callersPerConn connections, and reports throughput and latency.
// Every answer must allow.
func loadGRPC(addr, tok string, conns int, dur time.Duration) (result, error) {
	var clients []authv3.AuthorizationClient
	for range max(conns/callersPerConn, 1) {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return result{}, fmt.Errorf("gRPC client for %s: %w", addr, err)
		}
		defer func() { _ = cc.Close() }()
		clients = append(clients, authv3.NewAuthorizationClient(cc))
	}
	req := checkRequest(tok)
	var (
		mu    sync.Mutex
		lat   []time.Duration
		count atomic.Int64
		errs  atomic.Int64
		wg    sync.WaitGroup
	)
	end := time.Now().Add(dur)
	start := time.Now()
	for i := range conns {
		client := clients[i%len(clients)]
		wg.Go(func() {
			local := make([]time.Duration, 0, 1<<16)
			for time.Now().Before(end) {
				t0 := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				resp, err := client.Check(ctx, req)
				cancel()
				if err != nil || resp.GetOkResponse() == nil {
					errs.Add(1)
					continue
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
	elapsed := time.Since(start)
	st := loadtest.Summarize(lat)
	return result{rps: float64(count.Load()) / elapsed.Seconds(), p50: st.P50.Round(time.Microsecond), p99: st.P99.Round(time.Microsecond),
		errors: errs.Load(), n: count.Load()}, nil
}

// cpuMeter reads a sidecar's CPU time (user and system) from its
// process_cpu_seconds_total.
type cpuMeter struct {
	client  *http.Client
	metrics string
}

func (m cpuMeter) seconds() (float64, error) {
	v, err := loadtest.Metrics(m.client, m.metrics)
	if err != nil {
		return 0, fmt.Errorf("sidecar CPU: %w", err)
	}
	s, ok := v["process_cpu_seconds_total"]
	if !ok {
		return 0, fmt.Errorf("sidecar CPU: %s has no process_cpu_seconds_total", m.metrics)
	}
	return s, nil
}

// measured runs phase and returns its result with the sidecar's CPU per
// request, in microseconds.
func (m cpuMeter) measured(phase func() (result, error)) (result, error) {
	before, err := m.seconds()
	if err != nil {
		return result{}, err
	}
	r, err := phase()
	if err != nil {
		return r, err
	}
	after, err := m.seconds()
	if err != nil {
		return r, err
	}
	if r.n > 0 {
		r.cpuPerReq = time.Duration((after - before) / float64(r.n) * float64(time.Second))
	}
	return r, nil
}

// grpcReport measures, in the same run as the /verify figures above it,
// gRPC Check against /verify on the same sidecar (adjacent phases, cache
// hits), then both on a second sidecar without a token cache (every
// verification a miss), with the sidecar's CPU per verification for each,
// and prints them.
func grpcReport(ctx context.Context, s grpcSetup) error {
	hits := cpuMeter{client: &http.Client{Timeout: 5 * time.Second}, metrics: s.base + "/metrics"}
	verify, err := hits.measured(func() (result, error) { return load(s.base+"/verify", s.tok, s.conns, s.dur, nil), nil })
	if err != nil {
		return err
	}
	check, err := hits.measured(func() (result, error) { return loadGRPC(s.grpcAddr, s.tok, s.conns, s.dur) })
	if err != nil {
		return err
	}
	missBase, missGRPC, stop, err := s.startMissSidecar(ctx)
	if err != nil {
		return err
	}
	defer stop()
	misses := cpuMeter{client: hits.client, metrics: missBase + "/metrics"}
	verifyMiss, err := misses.measured(func() (result, error) { return load(missBase+"/verify", s.tok, s.conns, s.dur/2, nil), nil })
	if err != nil {
		return err
	}
	checkMiss, err := misses.measured(func() (result, error) { return loadGRPC(missGRPC, s.tok, s.conns, s.dur/2) })
	if err != nil {
		return err
	}
	fmt.Printf("gRPC Check against /verify, same sidecar, adjacent phases, %d callers (gRPC: %d per HTTP/2 connection)\n", s.conns, callersPerConn)
	fmt.Printf("  /verify   %8.0f req/s  p50 %-9s p99 %-9s errors %d  (cache hits)\n", verify.rps, verify.p50, verify.p99, verify.errors)
	fmt.Printf("  Check     %8.0f req/s  p50 %-9s p99 %-9s errors %d  (cache hits)\n", check.rps, check.p50, check.p99, check.errors)
	fmt.Printf("  Check ÷ /verify = %.2f (target ≥ 0.90)\n", check.rps/verify.rps)
	fmt.Printf("  sidecar CPU per verification  %-9s %-9s\n", "/verify", "Check")
	fmt.Printf("    cache hit                   %-9s %-9s\n", verify.cpuPerReq.Round(100*time.Nanosecond), check.cpuPerReq.Round(100*time.Nanosecond))
	fmt.Printf("    cache miss (no token cache) %-9s %-9s  (%0.f and %0.f req/s)\n", verifyMiss.cpuPerReq.Round(100*time.Nanosecond),
		checkMiss.cpuPerReq.Round(100*time.Nanosecond), verifyMiss.rps, checkMiss.rps)
	if verify.errors+check.errors+verifyMiss.errors+checkMiss.errors > 0 {
		return fmt.Errorf("requests failed during the gRPC comparison")
	}
	return nil
}

// grpcSetup is what grpcReport needs of the run.
type grpcSetup struct {
	base, grpcAddr, tok string
	conns               int
	dur                 time.Duration
	// startMissSidecar starts a second sidecar with token_cache_size 0 and
	// returns its HTTP base URL, its gRPC address and how to stop it.
	startMissSidecar func(ctx context.Context) (base, grpcAddr string, stop func(), err error)
}
