// Package accesslog logs every HTTP request of the issuer and the sidecar:
// method, route, status, latency and peer, never the query, headers or
// body, where tokens and secrets travel.
package accesslog

import (
	"log/slog"
	"net/http"
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

// Wrap logs each request h serves at level (nil log: no log line) and
// reports it to observe (nil: none). route names the handler, not the
// request path: a forwarded path may carry data of the user's.
func Wrap(log *slog.Logger, level slog.Level, route string, h http.Handler, observe Observer) http.Handler {
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
