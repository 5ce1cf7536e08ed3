package accesslog

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestWrapLogsWithoutSecrets(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	var gotRoute string
	var gotCode int
	h := Wrap(log, slog.LevelInfo, "/verify", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
	}), func(route string, code int, _ time.Duration) { gotRoute, gotCode = route, code })
	req := httptest.NewRequest("GET", "/verify/orders/42?token=s3cret", nil)
	req.Header.Set("Authorization", "Bearer eyJ.s3cret.sig")
	h.ServeHTTP(httptest.NewRecorder(), req)
	line := buf.String()
	for _, want := range []string{`"route":"/verify"`, `"status":401`, `"method":"GET"`, `"duration"`} {
		if !strings.Contains(line, want) {
			t.Errorf("log line lacks %s: %s", want, line)
		}
	}
	if strings.Contains(line, "s3cret") || strings.Contains(line, "orders") {
		t.Errorf("log line leaks the request: %s", line)
	}
	if gotRoute != "/verify" || gotCode != 401 {
		t.Errorf("observer got %q %d", gotRoute, gotCode)
	}
	buf.Reset()
	Wrap(nil, slog.LevelInfo, "/healthz", http.NotFoundHandler(), nil).ServeHTTP(httptest.NewRecorder(), req)
	if buf.Len() != 0 {
		t.Error("logged with a nil logger")
	}
}

// TestProbesLogAtDebug: kubelet probes and scrapes are logged at Debug, so
// an Info log shows none of them; every other request (a denied
// verification included) stays at the level asked for.
func TestProbesLogAtDebug(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	deny := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusUnauthorized) })
	for _, route := range []string{"/healthz", "/readyz", "/metrics", "GET /healthz", "GET /readyz"} {
		Wrap(log, slog.LevelInfo, route, http.NotFoundHandler(), nil).ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/readyz", nil))
	}
	if buf.Len() != 0 {
		t.Errorf("probes logged at Info: %s", buf.String())
	}
	for _, route := range []string{"/verify", "/oauth2/token", "other"} {
		buf.Reset()
		Wrap(log, slog.LevelInfo, route, deny, nil).ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/x", nil))
		if !strings.Contains(buf.String(), `"level":"INFO"`) {
			t.Errorf("%s not logged at Info: %q", route, buf.String())
		}
	}
	buf.Reset()
	debug := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	Wrap(debug, slog.LevelInfo, "/readyz", http.NotFoundHandler(), nil).ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/readyz", nil))
	if !strings.Contains(buf.String(), `"level":"DEBUG"`) {
		t.Errorf("a probe is not logged at Debug: %q", buf.String())
	}
}

// TestPolicyLevels: under a Policy, denials, errors and slow requests are
// logged at the policy's level, successes at Debug unless sampled, and
// probes at Debug whatever happened.
func TestPolicyLevels(t *testing.T) {
	const info, debug = `"level":"INFO"`, `"level":"DEBUG"`
	deny := func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusUnauthorized) }
	fail := func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }
	ok := func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }
	inactive := func(w http.ResponseWriter, _ *http.Request) {
		MarkDenied(w)
		_, _ = w.Write([]byte(`{"active":false}`))
	}
	defaults := Policy{Level: slog.LevelInfo, Slow: 100 * time.Millisecond}
	for _, tc := range []struct {
		name    string
		policy  Policy
		route   string
		handler http.HandlerFunc
		took    time.Duration
		want    string   // level of the line; "" for none at Debug either
		attrs   []string // more the line must hold
	}{
		{"denial", defaults, "/verify", deny, time.Millisecond, info, []string{`"status":401`}},
		{"error", defaults, "/verify", fail, time.Millisecond, info, []string{`"status":503`}},
		{"success", defaults, "/verify", ok, time.Millisecond, debug, nil},
		{"slow success", defaults, "/verify", ok, 100 * time.Millisecond, info, []string{`"slow":true`, `"status":200`}},
		{"inactive introspection", defaults, "/introspect", inactive, time.Millisecond, info, []string{`"denied":true`, `"status":200`}},
		{"unknown route", defaults, "other", http.NotFound, time.Millisecond, info, []string{`"status":404`}},
		{"failing probe", defaults, "/readyz", fail, time.Millisecond, debug, nil},
		{"slow probe", defaults, "/healthz", ok, time.Second, debug, []string{`"slow":true`}},
		{"slow off", Policy{Level: slog.LevelInfo}, "/verify", ok, time.Hour, debug, nil},
		{"every success", Policy{Level: slog.LevelInfo, SuccessSample: 1}, "/verify", ok, time.Millisecond, info, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
			clock := time.Unix(1e9, 0)
			p := tc.policy
			p.now = func() time.Time { return clock }
			h := WrapPolicy(log, p, tc.route, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				clock = clock.Add(tc.took)
				tc.handler(w, r)
			}), nil)
			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/x", nil))
			line := buf.String()
			if strings.Count(line, "\n") != 1 || !strings.Contains(line, tc.want) {
				t.Fatalf("want one line at %s, got %q", tc.want, line)
			}
			for _, a := range tc.attrs {
				if !strings.Contains(line, a) {
					t.Errorf("line lacks %s: %s", a, line)
				}
			}
			if !strings.Contains(strings.Join(tc.attrs, ""), "slow") && strings.Contains(line, "slow") {
				t.Errorf("line says slow: %s", line)
			}
		})
	}
}

// TestPolicySampling: 1 in N successes is logged at Info (the first, then
// every Nth), saying it stands for N; the others at Debug; denials are
// never sampled away; every route counts its own.
func TestPolicySampling(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	p := Policy{Level: slog.LevelInfo, SuccessSample: 4}
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {})
	deny := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusForbidden) })
	verify, introspect := WrapPolicy(log, p, "/verify", ok, nil), WrapPolicy(log, p, "/introspect", ok, nil)
	denied := WrapPolicy(log, p, "/verify", deny, nil)
	req := httptest.NewRequest("GET", "/verify", nil)
	for range 10 {
		verify.ServeHTTP(httptest.NewRecorder(), req)
		denied.ServeHTTP(httptest.NewRecorder(), req)
	}
	introspect.ServeHTTP(httptest.NewRecorder(), req)
	var successes, denials, others int
	for line := range strings.Lines(buf.String()) {
		switch {
		case strings.Contains(line, `"status":200`) && strings.Contains(line, `"route":"/verify"`):
			successes++
			if !strings.Contains(line, `"sample":4`) {
				t.Errorf("a sampled line does not say it stands for 4: %s", line)
			}
		case strings.Contains(line, `"status":403`):
			denials++
		default:
			others++
		}
	}
	// Successes 1, 5 and 9 of 10; every denial; the first introspection.
	if successes != 3 || denials != 10 || others != 1 {
		t.Errorf("logged %d successes, %d denials, %d others; want 3, 10, 1:\n%s", successes, denials, others, buf.String())
	}
}
