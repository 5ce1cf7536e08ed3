// Package accesslog logs every HTTP request of the issuer and the sidecar:
// method, route, status, latency and peer, never the query, headers or
// body, where tokens and secrets travel.
package accesslog

import (
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// Observer receives each request's route, status and latency (for metrics).
type Observer func(route string, code int, d time.Duration)

// recorder captures the status code, and whether the handler called the
// answer a denial (MarkDenied).
type recorder struct {
	http.ResponseWriter
	code   int
	denied bool
}

func (r *recorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

// MarkDenied tells the access log that the request w answers was refused
// although its status is 2xx (an introspection answering active:false),
// so the policy logs it as a denial. It does nothing when w is not the
// access log's writer.
func MarkDenied(w http.ResponseWriter) {
	if r, ok := w.(*recorder); ok {
		r.denied = true
	}
}

// probes are the routes the kubelet and Prometheus poll every few seconds
// (about 18 lines a minute per pod at Info): they are logged at Debug so
// the requests that matter stay readable.
var probes = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}

// Level is the level a request of route is logged at, given the level of
// the others: Debug for probes. route may carry a method ("GET /readyz").
func Level(route string, level slog.Level) slog.Level {
	if i := strings.LastIndexByte(route, ' '); i >= 0 {
		route = route[i+1:]
	}
	if probes[route] {
		return min(level, slog.LevelDebug)
	}
	return level
}

// Policy decides the level of each request's line, so that a busy server
// can keep at Info the requests someone has to look at (denials, errors,
// slow ones) without a line per successful request.
type Policy struct {
	// Level is the level of denials (status 4xx, or MarkDenied), errors
	// (5xx), slow requests and the sampled successes.
	Level slog.Level
	// SuccessSample logs 1 in SuccessSample successful requests of a
	// route at Level (the first, the N+1th, …) and the others at Debug: 1
	// logs every success at Level, 0 none.
	SuccessSample int
	// Slow is the handler time from which a request is logged at Level
	// whatever its status, with slow=true; 0: none is.
	Slow time.Duration

	now func() time.Time // time.Now; tests replace it
}

// Wrap logs each request h serves at level (nil log: no log line; probes at
// Debug, see Level) and reports it to observe (nil: none). route names the
// handler, not the request path: a forwarded path may carry data of the
// user's.
func Wrap(log *slog.Logger, level slog.Level, route string, h http.Handler, observe Observer) http.Handler {
	return WrapPolicy(log, Policy{Level: level, SuccessSample: 1}, route, h, observe)
}

// WrapPolicy is Wrap with the level of each line chosen by p. Probes stay
// at Debug whatever their outcome.
func WrapPolicy(log *slog.Logger, p Policy, route string, h http.Handler, observe Observer) http.Handler {
	now := p.now
	if now == nil {
		now = time.Now
	}
	probe := Level(route, slog.LevelInfo) < slog.LevelInfo
	// One count per wrapped route, shared by its concurrent requests: 1 in
	// N exactly, whatever the number of cores.
	var successes atomic.Uint64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := now()
		rec := &recorder{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		d := now().Sub(start)
		if observe != nil {
			observe(route, rec.code, d)
		}
		if log == nil {
			return
		}
		var level slog.Level
		slow := p.Slow > 0 && d >= p.Slow
		sampled := 0
		switch {
		case probe:
			level = min(p.Level, slog.LevelDebug)
		case rec.code >= 400 || rec.denied || slow:
			level = p.Level
		case p.SuccessSample == 1:
			level = p.Level
		case p.SuccessSample > 1 && (successes.Add(1)-1)%uint64(p.SuccessSample) == 0:
			level, sampled = p.Level, p.SuccessSample
		default:
			level = min(p.Level, slog.LevelDebug)
		}
		// Checked before any attribute is built: at the defaults most
		// successful requests stop here, at no cost but this test.
		if !log.Enabled(r.Context(), level) {
			return
		}
		attrs := make([]slog.Attr, 0, 8)
		attrs = append(attrs, slog.String("method", r.Method), slog.String("route", route),
			slog.Int("status", rec.code), slog.Duration("duration", d), slog.String("peer", r.RemoteAddr))
		if rec.denied {
			attrs = append(attrs, slog.Bool("denied", true))
		}
		if slow {
			attrs = append(attrs, slog.Bool("slow", true))
		}
		if sampled > 0 {
			// This line stands for sampled successes: say how many.
			attrs = append(attrs, slog.Int("sample", sampled))
		}
		log.LogAttrs(r.Context(), level, "request", attrs...)
	})
}
