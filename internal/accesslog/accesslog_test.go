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
