// Command propagation measures how fast a revocation reaches sidecars: from
// the moment the issuer's admin API returns 201 to the moment each of N
// sidecars (in-process, each on its own NATS connection, each with its own
// key cache and revocation consumer) has applied the event and rejects the
// token. In the same run it measures the floor: one plain NATS message
// fanned out to N plain connections; and, for comparison, one message
// stored in a stream and delivered to N ordered consumers (what the
// sidecars' guaranteed path costs). Everything runs on 127.0.0.1 and every
// phase is bounded in time.
//
//	go run ./test/propagation -n 1,100,1000 -events 20
package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/embeddednats"
	"github.com/tokenwarden/tokenwarden/issuer"
	"github.com/tokenwarden/tokenwarden/issuer/directory"
	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
	"github.com/tokenwarden/tokenwarden/sidecar"
)

func main() {
	ns := flag.String("n", "1,100,1000", "sidecar counts, comma-separated")
	events := flag.Int("events", 20, "revocations per sidecar count")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile here")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	if err := run(*ns, *events); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "propagation:", err)
		os.Exit(1)
	}
}

func run(counts string, events int) error {
	dir, err := os.MkdirTemp("", "propagation")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	srv, err := embeddednats.Start(embeddednats.Config{Addr: "127.0.0.1:0", StoreDir: filepath.Join(dir, "nats")})
	if err != nil {
		return err
	}
	defer srv.Stop()
	iss, err := startIssuer(dir, srv.URL())
	if err != nil {
		return err
	}
	defer iss.stop()

	verifyCost := ed25519Cost()
	fmt.Printf("revocation propagation, %d events per row: from the admin API's 201 (0: applied before the 201 arrived),\n", events)
	fmt.Printf("and from the moment the admin request was sent; floors timed from the publish: one core NATS message to\n")
	fmt.Printf("N connections, and one stored message to N JetStream ordered consumers. Each sidecar also checks the event's\n")
	fmt.Printf("Ed25519 signature: %s here, so N in-process sidecars add N×%s/%d cores of work.\n",
		verifyCost.Round(time.Microsecond), verifyCost.Round(time.Microsecond), runtime.GOMAXPROCS(0))
	fmt.Printf("%6s  %-26s  %-26s  %-26s  %-26s  %-10s  %-14s  %s\n", "N", "tokenwarden from 201", "tokenwarden from request",
		"core fan-out", "JetStream fan-out", "201 ÷ core", "request ÷ core", "missed")
	fmt.Printf("%6s  %-26s  %-26s  %-26s  %-26s  %-10s  %-14s\n", "", "p50 / p99 / max", "p50 / p99 / max", "p50 / p99 / max", "p50 / p99 / max", "(p99)", "(p99)")
	for _, f := range strings.Split(counts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("bad count %q", f)
		}
		tw, twReq, missed, err := measureSidecars(iss, srv.URL(), n, events)
		if err != nil {
			return err
		}
		bare, err := measureFanout(srv.URL(), n, events)
		if err != nil {
			return err
		}
		js, err := measureJSFanout(srv.URL(), n, events)
		if err != nil {
			return err
		}
		ratio := func(a, b time.Duration) float64 { return float64(a) / float64(max(b, time.Microsecond)) }
		fmt.Printf("%6d  %-26s  %-26s  %-26s  %-26s  %-10.2f  %-14.2f  %d\n", n, tw, twReq, bare, js,
			ratio(tw.p99, bare.p99), ratio(twReq.p99, bare.p99), missed)
		if missed > 0 {
			return fmt.Errorf("%d event deliveries missed at N=%d", missed, n)
		}
	}
	return nil
}

type stats struct{ p50, p99, max time.Duration }

// ed25519Cost measures one signature check of an event-sized message.
func ed25519Cost() time.Duration {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	msg := make([]byte, 400)
	sig := ed25519.Sign(priv, msg)
	const n = 2000
	t0 := time.Now()
	for range n {
		ed25519.Verify(pub, msg, sig)
	}
	return time.Since(t0) / n
}

func (s stats) String() string {
	r := func(d time.Duration) string { return d.Round(10 * time.Microsecond).String() }
	return r(s.p50) + " / " + r(s.p99) + " / " + r(s.max)
}

func summarize(d []time.Duration) stats {
	slices.Sort(d)
	if len(d) == 0 {
		return stats{}
	}
	at := func(p float64) time.Duration { return d[min(len(d)-1, int(float64(len(d))*p))] }
	return stats{p50: at(0.5), p99: at(0.99), max: d[len(d)-1]}
}

type issuerProc struct {
	url    string
	dist   ed25519.PublicKey
	admin  string
	stop   func()
	server *issuer.Server
}

func startIssuer(dir, natsURL string) (*issuerProc, error) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(priv)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		_ = os.WriteFile(p, b, 0o600)
		return p
	}
	p := directory.Params{Memory: 64, Time: 1, Threads: 1}
	h, err := directory.HashPassword([]byte("admin-secret"), p)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	kek := make([]byte, 32)
	_, _ = rand.Read(kek)
	cfg := issuer.DefaultConfig()
	cfg.Issuer = "http://" + ln.Addr().String()
	cfg.NATS.URL = natsURL
	cfg.DistributionKeyFile = write("dist.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	cfg.KeyEncryptionKey = base64.StdEncoding.EncodeToString(kek)
	cfg.UsersFile = write("users.yaml", []byte("users: []\n"))
	cfg.ClientsFile = write("clients.yaml", []byte(fmt.Sprintf("clients:\n  - id: admin\n    secret_hash: %q\n    grants: [client_credentials]\n    scopes: [\"tokenwarden:admin\"]\n", h)))
	s, err := issuer.New(cfg, issuer.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		return nil, err
	}
	hs := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = hs.Serve(ln) }()
	go func() { defer close(done); _ = s.Run(ctx) }()
	ip := &issuerProc{url: cfg.Issuer, dist: pub, server: s, stop: func() { cancel(); <-done; _ = hs.Close() }}
	if err := waitOK(ip.url+"/readyz", 30*time.Second); err != nil {
		return nil, err
	}
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {issuer.AdminScope}}
	req, _ := http.NewRequest("POST", ip.url+"/oauth2/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("admin", "admin-secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || tok.AccessToken == "" {
		return nil, errors.New("no admin token")
	}
	ip.admin = tok.AccessToken
	return ip, nil
}

func waitOK(u string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(u); err == nil { // #nosec G107 -- loopback URL built here
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within %s", u, within)
}

// receipts records when each of n receivers got each message (by key),
// and waits for them.
type receipts struct {
	mu   sync.Mutex
	when map[string][]time.Time
}

func newReceipts() *receipts { return &receipts{when: map[string][]time.Time{}} }

func (r *receipts) record(key string, t time.Time) {
	r.mu.Lock()
	r.when[key] = append(r.when[key], t)
	r.mu.Unlock()
}

// await waits (up to 10 s) until n receipts of key are in and returns each
// one's delay after t0 (0 for one before t0).
func (r *receipts) await(key string, n int, t0 time.Time) []time.Duration {
	wait := time.Now().Add(10 * time.Second)
	for time.Now().Before(wait) {
		r.mu.Lock()
		k := len(r.when[key])
		r.mu.Unlock()
		if k >= n {
			break
		}
		time.Sleep(time.Millisecond)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]time.Duration, 0, len(r.when[key]))
	for _, at := range r.when[key] {
		out = append(out, max(at.Sub(t0), 0))
	}
	return out
}

// measureSidecars returns the delays from the admin API's 201 and, the
// stricter figure, from the moment the request was sent.
func measureSidecars(iss *issuerProc, natsURL string, n, events int) (from201, fromRequest stats, missed int, err error) {
	log := newReceipts()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("PROPAGATION_LOG") != "" {
		quiet = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	scs := make([]*sidecar.Sidecar, 0, n)
	for range n {
		cfg := sidecar.DefaultConfig()
		cfg.Listen = "127.0.0.1:0"
		cfg.Issuer = iss.url
		cfg.Audience = []string{iss.url}
		cfg.NATS.URL = natsURL
		cfg.DistributionPublicKeys = []string{base64.StdEncoding.EncodeToString(iss.dist)}
		sc, err := sidecar.New(cfg, sidecar.WithLogger(quiet), sidecar.WithOnRevocation(func(e *revocation.Event) { log.record(e.ID, time.Now()) }))
		if err != nil {
			return stats{}, stats{}, 0, err
		}
		scs = append(scs, sc)
		wg.Go(func() { _ = sc.Run(ctx) })
	}
	// Wait until every sidecar holds keys and has replayed the stream.
	deadline := time.Now().Add(2 * time.Minute)
	for _, sc := range scs {
		for !sc.Ready() {
			if time.Now().After(deadline) {
				return stats{}, stats{}, 0, fmt.Errorf("%d sidecars not ready within 2 minutes", n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	var delays, strict []time.Duration
	for range events {
		jti := "prop-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		body, _ := json.Marshal(map[string]string{"kind": "jti", "value": jti})
		req, _ := http.NewRequest("POST", iss.url+"/admin/v1/revocations", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+iss.admin)
		sent := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return stats{}, stats{}, 0, err
		}
		t0 := time.Now()
		var ev struct {
			ID string `json:"id"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&ev)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			return stats{}, stats{}, 0, fmt.Errorf("admin API: %d", resp.StatusCode)
		}
		got := log.await(ev.ID, n, sent)
		for _, d := range got {
			strict = append(strict, d)
			delays = append(delays, max(d-t0.Sub(sent), 0)) // applied before the 201 arrived: 0
		}
		missed += n - len(got)
		// Every sidecar now rejects a token with that jti.
		claims := &jwks.Claims{ID: jti, Subject: "x", ClientID: "x"}
		for i, sc := range scs {
			if revoked, _ := sc.Revocations().Check(claims); !revoked {
				missed++
				rec := httptest.NewRecorder()
				sc.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
				fmt.Fprintf(os.Stderr, "sidecar %d missed event %s: readyz %d %s", i, ev.ID, rec.Code, rec.Body.String())
			}
		}
		time.Sleep(20 * time.Millisecond) // let the fan-out settle between events
	}
	return summarize(delays), summarize(strict), missed, nil
}

// measureJSFanout is the JetStream part of the floor: one message stored
// in a stream and delivered to n ordered consumers (what a sidecar uses),
// each on its own connection, timed from the publish's ack to each receipt.
func measureJSFanout(natsURL string, n, events int) (stats, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	name := "FANOUT_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	subj := "bench.jsfanout." + name
	pubc, err := nats.Connect(natsURL)
	if err != nil {
		return stats{}, err
	}
	defer pubc.Close()
	pjs, err := jetstream.New(pubc)
	if err != nil {
		return stats{}, err
	}
	if _, err := pjs.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subj}, Storage: jetstream.FileStorage, MaxConsumers: -1}); err != nil {
		return stats{}, err
	}
	defer func() { _ = pjs.DeleteStream(context.Background(), name) }()
	got := newReceipts()
	conns := make([]*nats.Conn, 0, n)
	var iters []jetstream.MessagesContext
	defer func() {
		for _, it := range iters {
			it.Stop()
		}
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := nats.Connect(natsURL)
		if err != nil {
			return stats{}, err
		}
		conns = append(conns, c)
		js, err := jetstream.New(c)
		if err != nil {
			return stats{}, err
		}
		cons, err := js.OrderedConsumer(ctx, name, jetstream.OrderedConsumerConfig{})
		if err != nil {
			return stats{}, err
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(2048))
		if err != nil {
			return stats{}, err
		}
		iters = append(iters, it)
		go func() {
			for {
				m, err := it.Next()
				if err != nil {
					return
				}
				got.record(string(m.Data()), time.Now())
			}
		}()
	}
	time.Sleep(100 * time.Millisecond) // let the pull requests reach the server
	var delays []time.Duration
	for i := range events {
		t0 := time.Now()
		if _, err := pjs.Publish(ctx, subj, []byte(strconv.Itoa(i))); err != nil {
			return stats{}, err
		}
		delays = append(delays, got.await(strconv.Itoa(i), n, t0)...)
		time.Sleep(20 * time.Millisecond)
	}
	return summarize(delays), nil
}

// measureFanout is the floor: one core NATS message to n subscribers, each
// on its own connection, timed from publish to each receipt.
func measureFanout(natsURL string, n, events int) (stats, error) {
	subj := "bench.fanout." + strconv.FormatInt(time.Now().UnixNano(), 36)
	got := newReceipts()
	conns := make([]*nats.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := nats.Connect(natsURL)
		if err != nil {
			return stats{}, err
		}
		conns = append(conns, c)
		if _, err := c.Subscribe(subj, func(m *nats.Msg) { got.record(string(m.Data), time.Now()) }); err != nil {
			return stats{}, err
		}
		if err := c.Flush(); err != nil {
			return stats{}, err
		}
	}
	pub, err := nats.Connect(natsURL)
	if err != nil {
		return stats{}, err
	}
	defer pub.Close()
	var delays []time.Duration
	for i := range events {
		t0 := time.Now()
		if err := pub.Publish(subj, []byte(strconv.Itoa(i))); err != nil {
			return stats{}, err
		}
		_ = pub.Flush()
		delays = append(delays, got.await(strconv.Itoa(i), n, t0)...)
		time.Sleep(20 * time.Millisecond)
	}
	return summarize(delays), nil
}
