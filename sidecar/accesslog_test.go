package sidecar

import (
	"bytes"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/jwks"
)

// logBuffer is a log destination the sidecar's HTTP goroutines and the
// test share.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// requests returns the access-log lines (msg=request) written so far and
// forgets them.
func (b *logBuffer) requests() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for line := range strings.Lines(b.buf.String()) {
		if strings.Contains(line, `"msg":"request"`) {
			out = append(out, line)
		}
	}
	b.buf.Reset()
	return out
}

// TestAccessLog runs a real sidecar whose log is at Info (the default
// level) and checks which requests its access log keeps there: at the
// default settings every denial and no success; with a sample, 1 in N
// successes; slow requests whatever their outcome; nothing when off.
func TestAccessLog(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	tok := w.token()
	readOnly := w.token(func(c *jwks.Claims) { c.Scope = "read" })
	start := func(t *testing.T, mod func(*Config)) (*running, *logBuffer) {
		cfg := w.config()
		if mod != nil {
			mod(&cfg)
		}
		logs := &logBuffer{}
		sc := w.start(cfg, WithLogger(slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))))
		sc.waitReady(t)
		logs.requests() // the readiness polls
		return sc, logs
	}

	t.Run("defaults: denials at Info, successes not", func(t *testing.T) {
		sc, logs := start(t, nil)
		for range 5 {
			if a := sc.verify(t, "GET", "/verify", tok); a.status != 200 {
				t.Fatalf("valid token: %d", a.status)
			}
		}
		if m := introspect(t, sc, tok); m["active"] != true {
			t.Fatalf("introspection: %v", m)
		}
		for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
			sc.verify(t, "GET", p, "")
		}
		if got := logs.requests(); len(got) != 0 {
			t.Fatalf("successes and probes logged at Info:\n%s", strings.Join(got, ""))
		}
		denials := []struct {
			status int
			do     func() int
		}{
			{401, func() int { return sc.verify(t, "GET", "/verify", "").status }},
			{401, func() int { return sc.verify(t, "GET", "/verify/orders?x=1", tamperSig(tok)).status }},
			{403, func() int { return sc.verify(t, "GET", "/verify?scope=write", readOnly).status }},
			{200, func() int { introspect(t, sc, "garbage"); return 200 }}, // active:false
		}
		for _, d := range denials {
			if got := d.do(); got != d.status {
				t.Fatalf("status %d, want %d", got, d.status)
			}
		}
		got := logs.requests()
		if len(got) != len(denials) {
			t.Fatalf("%d lines at Info for %d denials:\n%s", len(got), len(denials), strings.Join(got, ""))
		}
		for i, line := range got {
			want := []string{`"level":"INFO"`, `"status":` + strconv.Itoa(denials[i].status)}
			if denials[i].status == 200 {
				want = append(want, `"route":"/introspect"`, `"denied":true`)
			}
			for _, s := range want {
				if !strings.Contains(line, s) {
					t.Errorf("line %d lacks %s: %s", i, s, line)
				}
			}
			// Never the token, the forwarded path or the query.
			for _, leak := range []string{tok[:20], "orders", "scope=write", "garbage"} {
				if strings.Contains(line, leak) {
					t.Errorf("line %d leaks %q: %s", i, leak, line)
				}
			}
		}
	})

	t.Run("1 in N successes", func(t *testing.T) {
		sc, logs := start(t, func(c *Config) { c.AccessLogSuccessSample = 3 })
		for range 7 {
			sc.verify(t, "GET", "/verify", tok)
		}
		got := logs.requests()
		if len(got) != 3 { // the 1st, 4th and 7th
			t.Fatalf("%d lines for 7 successes sampled 1 in 3:\n%s", len(got), strings.Join(got, ""))
		}
		for _, line := range got {
			if !strings.Contains(line, `"status":200`) || !strings.Contains(line, `"sample":3`) {
				t.Errorf("sampled line: %s", line)
			}
		}
	})

	t.Run("every success", func(t *testing.T) {
		sc, logs := start(t, func(c *Config) { c.AccessLogSuccessSample = 1 })
		for range 4 {
			sc.verify(t, "GET", "/verify", tok)
		}
		if got := logs.requests(); len(got) != 4 {
			t.Fatalf("%d lines for 4 successes:\n%s", len(got), strings.Join(got, ""))
		}
	})

	t.Run("slow requests", func(t *testing.T) {
		// A threshold of 1ns makes every request slow: what is checked is
		// what a slow request logs, not how long one takes.
		sc, logs := start(t, func(c *Config) { c.AccessLogSlow = time.Nanosecond })
		sc.verify(t, "GET", "/verify", tok)
		got := logs.requests()
		if len(got) != 1 || !strings.Contains(got[0], `"slow":true`) || !strings.Contains(got[0], `"status":200`) ||
			!strings.Contains(got[0], `"level":"INFO"`) {
			t.Fatalf("a slow success: %q", got)
		}
	})

	t.Run("off", func(t *testing.T) {
		sc, logs := start(t, func(c *Config) { c.AccessLog, c.AccessLogSuccessSample = false, 1 })
		sc.verify(t, "GET", "/verify", tok)
		sc.verify(t, "GET", "/verify", "")
		if got := logs.requests(); len(got) != 0 {
			t.Fatalf("access log off, yet:\n%s", strings.Join(got, ""))
		}
	})
}

// tamperSig flips a character of the token's signature.
func tamperSig(tok string) string {
	b := []byte(tok)
	i := len(b) - 5
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

func TestAccessLogConfigValidation(t *testing.T) {
	for name, mod := range map[string]func(*Config){
		"negative success sample": func(c *Config) { c.AccessLogSuccessSample = -1 },
		"negative slow threshold": func(c *Config) { c.AccessLogSlow = -time.Second },
	} {
		c := DefaultConfig()
		c.Issuer, c.Audience, c.DistributionPublicKeys = testIssuer, []string{testAudience}, []string{base64URL(make([]byte, 32))}
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		mod(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "access_log_") {
			t.Errorf("%s: %v", name, err)
		}
	}
}
