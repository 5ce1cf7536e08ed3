package sidecar

import (
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/tokenwarden/tokenwarden/internal/embeddednats"
	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// authNATS is an embedded server with JetStream that requires a user and
// password, whose passwords a test can change under running clients (a
// config reload, as after a reinstall that generated new secrets).
type authNATS struct {
	t    testing.TB
	srv  *server.Server
	port int
	dir  string
}

const (
	sidecarUser, sidecarPassword = "sidecar", "first-password"
	adminUser, adminPassword     = "admin", "admin-password"
)

func startAuthNATS(t testing.TB) *authNATS {
	t.Helper()
	// A fixed port: a reload must not change it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	a := &authNATS{t: t, port: port, dir: filepath.Join(t.TempDir(), "nats")}
	srv, err := server.NewServer(a.options(sidecarPassword))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	a.srv = srv
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	return a
}

func (a *authNATS) options(sidecarPw string) *server.Options {
	return &server.Options{
		ServerName: "tokenwarden-auth-test", Host: "127.0.0.1", Port: a.port,
		JetStream: true, StoreDir: a.dir, NoSigs: true, NoLog: true,
		Users: []*server.User{
			{Username: sidecarUser, Password: sidecarPw},
			{Username: adminUser, Password: adminPassword},
		},
	}
}

// setSidecarPassword reloads the server with another password for the
// sidecar's user: the server drops the sidecar's connection and refuses
// its old password from then on.
func (a *authNATS) setSidecarPassword(pw string) {
	a.t.Helper()
	if err := a.srv.ReloadOptions(a.options(pw)); err != nil {
		a.t.Fatal(err)
	}
}

func (a *authNATS) sidecarURL() string {
	return "nats://" + sidecarUser + ":" + sidecarPassword + "@127.0.0.1:" + strconv.Itoa(a.port)
}

// readyz returns /readyz's status code and its revocations check.
func (r *running) readyz(t testing.TB) (int, string) {
	t.Helper()
	resp, err := http.Get(r.url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var body struct {
		Checks map[string]string `json:"checks"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body.Checks["revocations"]
}

// metricValue is the value of an unlabelled metric in a scrape, or "".
func metricValue(scrape, name string) string {
	for _, l := range strings.Split(scrape, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			return v
		}
	}
	return ""
}

// shortTuning makes the staleness bound and the probes seconds and
// fractions of a second, not minutes.
var shortTuning = tuning{
	maxStaleness:   1500 * time.Millisecond,
	probeEvery:     100 * time.Millisecond,
	reconnectRange: [2]time.Duration{20 * time.Millisecond, 200 * time.Millisecond},
}

// TestSidecarSurvivesNATSPasswordChange is the regression for NATS
// reinstalled with new passwords: the server refuses the sidecar's
// credentials for longer than nats.go's abort threshold (the same auth
// error twice), which used to close the connection for good and stop the
// revocation consumer while /readyz stayed 200. The sidecar must go
// unready once its revocations are staler than the bound, keep verifying,
// reconnect by itself once the password is back, and apply a revocation
// published afterwards.
func TestSidecarSurvivesNATSPasswordChange(t *testing.T) {
	a := startAuthNATS(t)
	w := newWorldOn(t, jwks.ES256, &embeddednats.Server{Server: a.srv}, t.TempDir(), nats.UserInfo(adminUser, adminPassword))
	cfg := w.config()
	cfg.NATS.URL = a.sidecarURL()
	sc := w.start(cfg, withTuning(shortTuning))
	sc.waitReady(t)
	tok := w.token()

	a.setSidecarPassword("second-password")
	waitFor(t, "disconnect noticed", func() bool { return !sc.natsUp.Load() })
	// Many refused attempts (20ms to 200ms apart), far past the two that
	// closed the connection for good; long enough to pass the bound.
	var detail string
	waitFor(t, "unready past the staleness bound", func() bool {
		code, d := sc.readyz(t)
		detail = d
		return code == http.StatusServiceUnavailable
	})
	if !strings.HasPrefix(detail, "stale for ") || !strings.Contains(detail, "(bound 1.5s)") {
		t.Errorf("revocations check while stale: %q", detail)
	}
	if v, err := strconv.ParseFloat(metricValue(scrape(t, sc.url), "tokenwarden_revocation_staleness_seconds"), 64); err != nil || v < shortTuning.maxStaleness.Seconds() {
		t.Errorf("staleness gauge while stale: %v %v", v, err)
	}
	// Past the bound /verify still answers from what the sidecar holds.
	if got := sc.verify(t, "GET", "/verify", tok); got.status != http.StatusOK {
		t.Errorf("/verify while stale: %d, want 200", got.status)
	}
	time.Sleep(time.Second) // more refused attempts

	a.setSidecarPassword(sidecarPassword)
	waitFor(t, "ready again once the password is back", func() bool {
		code, _ := sc.readyz(t)
		return code == http.StatusOK && sc.natsUp.Load()
	})
	now := w.clock.Now()
	e, err := revocation.NewEvent(revocation.KindClient, "demo-app", now.Add(time.Second), now.Add(time.Hour), "test", now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := revocation.NewPublisher(w.js, "tokenwarden", w.dist).Publish(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for sc.verify(t, "GET", "/verify", tok).status != http.StatusUnauthorized {
		if time.Now().After(deadline) {
			t.Fatal("revocation published after the recovery not applied within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStalenessReadiness: the staleness does not count before the first
// replay (readiness waits for that anyway), stays within the bound while
// NATS is up, grows past it while NATS is down (unready, with the reason,
// while /verify keeps answering), and recovers by itself.
func TestStalenessReadiness(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	idle, err := New(w.config(), WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	idle.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if v := metricValue(rec.Body.String(), "tokenwarden_revocation_staleness_seconds"); v != "-1" {
		t.Errorf("staleness before the replay: %q, want -1", v)
	}
	if _, ok := idle.consumer.Load().Staleness(); ok {
		t.Error("staleness counted before the replay")
	}

	sc := w.start(w.config(), withTuning(shortTuning))
	sc.waitReady(t)
	tok := w.token()
	time.Sleep(3 * shortTuning.maxStaleness) // many probes, all confirming
	if code, d := sc.readyz(t); code != http.StatusOK || !strings.Contains(d, "confirmed current") {
		t.Fatalf("with NATS up: %d %q", code, d)
	}

	addr, store := w.nats.Addr().String(), w.nats.JetStreamConfig().StoreDir
	w.nats.Stop()
	waitFor(t, "unready while NATS is down", func() bool {
		code, d := sc.readyz(t)
		return code == http.StatusServiceUnavailable && strings.HasPrefix(d, "stale for ")
	})
	if a := sc.verify(t, "GET", "/verify", tok); a.status != http.StatusOK {
		t.Fatalf("/verify while stale: %d", a.status)
	}
	ns, err := embeddednats.Start(embeddednats.Config{Addr: addr, StoreDir: store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Stop)
	waitFor(t, "ready after NATS is back", func() bool {
		code, _ := sc.readyz(t)
		return code == http.StatusOK
	})
}

func TestStalenessConfig(t *testing.T) {
	cfg := DefaultConfig()
	if cfg.RevocationMaxStaleness != time.Minute {
		t.Errorf("default revocation_max_staleness %s, want 1m", cfg.RevocationMaxStaleness)
	}
	cfg.Issuer, cfg.Audience, cfg.DistributionPublicKeys = testIssuer, []string{testAudience}, []string{base64URL(make([]byte, 32))}
	cfg.RevocationMaxStaleness = time.Second
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "revocation_max_staleness") {
		t.Errorf("a 1s bound: %v", err)
	}
}

// TestProbeInterval: the revocation consumer confirms its set a quarter of
// the staleness bound apart, between 5s and 15s.
func TestProbeInterval(t *testing.T) {
	for _, tc := range []struct{ bound, want time.Duration }{
		{MinRevocationMaxStaleness, 5 * time.Second},
		{30 * time.Second, 7500 * time.Millisecond},
		{DefaultRevocationMaxStaleness, 15 * time.Second},
		{time.Hour, 15 * time.Second},
	} {
		if got := probeInterval(tc.bound); got != tc.want {
			t.Errorf("bound %s: probe every %s, want %s", tc.bound, got, tc.want)
		}
	}
}
