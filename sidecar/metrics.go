package sidecar

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

type metrics struct {
	registry      *prometheus.Registry
	verifications *prometheus.CounterVec
	latency       prometheus.Histogram
	natsConnected prometheus.Gauge
}

// newMetrics registers the sidecar's metrics on a registry of its own;
// status is read at scrape time for the key-cache figures, so the hot path
// never updates them.
func newMetrics(s *Sidecar) *metrics {
	r := prometheus.NewRegistry()
	m := &metrics{
		registry: r,
		verifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_verifications_total",
			Help: "Token verifications by result: valid, no_token, invalid, expired, revoked, insufficient_scope, unknown_key.",
		}, []string{"result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tokenwarden_verification_duration_seconds",
			Help:    "Time to verify one token (cache hit or miss), excluding HTTP.",
			Buckets: []float64{1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3},
		}),
		natsConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwarden_nats_connected", Help: "1 while the NATS connection is up, else 0.",
		}),
	}
	r.MustRegister(m.verifications, m.latency, m.natsConnected,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tokenwarden_jwks_bundle_sequence", Help: "Sequence number of the JWKS bundle held (0: none, or keys from the HTTPS fallback).",
		}, func() float64 { return float64(s.keys.Status().Sequence) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tokenwarden_jwks_bundle_age_seconds", Help: "Age of the JWKS bundle held, from the time the issuer made it (-1: none).",
		}, func() float64 {
			t := s.keys.Status().BundleTime
			if t.IsZero() {
				return -1
			}
			return time.Since(t).Seconds()
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tokenwarden_jwks_keys", Help: "Verification keys held.",
		}, func() float64 { return float64(s.keys.Status().Keys) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tokenwarden_jwks_bundles_rejected_total", Help: "Bundles dropped because their signature or content was bad (forged or damaged).",
		}, func() float64 { return float64(s.keys.Status().Rejected) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tokenwarden_jwks_bundles_stale_total", Help: "Verified bundles ignored because their sequence was not newer than the one held.",
		}, func() float64 { return float64(s.keys.Status().Stale) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tokenwarden_token_cache_entries", Help: "Entries in the verified-token cache.",
		}, func() float64 {
			if s.verifier.cache == nil {
				return 0
			}
			return float64(s.verifier.cache.len())
		}),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}
