// Package accesslog logs every HTTP request of the issuer and the sidecar:
// method, route, status, latency and peer, never the query, headers or
// body, where tokens and secrets travel.
package accesslog

import (
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Observer receives each request's route, status and latency (for metrics).
type Observer func(route string, code int, d time.Duration)

// recorder captures the status code.
type recorder struct {
	http.ResponseWriter
	code int
}

func (r *recorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
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

// Wrap logs each request h serves at level (nil log: no log line; probes at
// Debug, see Level) and reports it to observe (nil: none). route names the
// handler, not the request path: a forwarded path may carry data of the
// user's.
func Wrap(log *slog.Logger, level slog.Level, route string, h http.Handler, observe Observer) http.Handler {
	level = Level(route, level)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		d := time.Since(start)
		if observe != nil {
			observe(route, rec.code, d)
		}
		if log != nil && log.Enabled(r.Context(), level) {
			log.LogAttrs(r.Context(), level, "request", slog.String("method", r.Method), slog.String("route", route),
				slog.Int("status", rec.code), slog.Duration("duration", d), slog.String("peer", r.RemoteAddr))
		}
	})
}
