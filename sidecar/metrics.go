package sidecar

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tokenwarden/tokenwarden/revocation"
)

type metrics struct {
	registry      *prometheus.Registry
	verifications *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	// counted and latencyOf are the series of each transport, resolved
	// once: a label lookup per verification would cost more than a cache
	// hit does.
	counted       [numTransports]map[string]prometheus.Counter
	latencyOf     [numTransports]prometheus.Observer
	natsConnected prometheus.Gauge

	eventsApplied    prometheus.Counter
	eventsDropped    *prometheus.CounterVec
	propagationDelay prometheus.Histogram
	consumerLag      prometheus.Gauge
	replayed         func() bool
	onApplied        func(*revocation.Event)
}

// Results of tokenwarden_verifications_total.
const (
	resultValid             = "valid"
	resultNoToken           = "no_token"
	resultInvalid           = "invalid"
	resultExpired           = "expired"
	resultRevoked           = "revoked"
	resultInsufficientScope = "insufficient_scope"
	resultUnknownKey        = "unknown_key"
)

// count adds one verification of t with result.
func (m *metrics) count(t transport, result string) {
	if c, ok := m.counted[t][result]; ok {
		c.Inc()
		return
	}
	m.verifications.WithLabelValues(result, t.String()).Inc()
}

// Applied implements revocation.Observer. Events replayed at start-up are
// counted but not timed: their "delay" is only their age.
func (m *metrics) Applied(e *revocation.Event, delay time.Duration) {
	m.eventsApplied.Inc()
	if m.replayed() {
		m.propagationDelay.Observe(max(delay, 0).Seconds())
	}
	if m.onApplied != nil {
		m.onApplied(e)
	}
}

// Dropped implements revocation.Observer.
func (m *metrics) Dropped(reason string) { m.eventsDropped.WithLabelValues(reason).Inc() }

// Lag implements revocation.Observer.
func (m *metrics) Lag(n uint64) { m.consumerLag.Set(float64(n)) }

// newMetrics registers the sidecar's metrics on a registry of its own;
// status is read at scrape time for the key-cache figures, so the hot path
// never updates them.
func newMetrics(s *Sidecar) *metrics {
	r := prometheus.NewRegistry()
	m := &metrics{
		registry: r,
		verifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_verifications_total",
			Help: "Token verifications by result (valid, no_token, invalid, expired, revoked, insufficient_scope, unknown_key) and transport " +
				"(http: /verify and /introspect; grpc: Envoy ext_authz Check).",
		}, []string{"result", "transport"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenwarden_verification_duration_seconds",
			Help:    "Time to verify one token (cache hit or miss), excluding HTTP and gRPC, by transport (http: /verify; grpc: Check).",
			Buckets: []float64{1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3},
		}, []string{"transport"}),
		natsConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwarden_nats_connected", Help: "1 while the NATS connection is up, else 0.",
		}),
		eventsApplied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenwarden_revocation_events_applied_total", Help: "Verified revocation events added to the set.",
		}),
		eventsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_revocation_events_dropped_total", Help: "Revocation messages dropped: forged (bad signature) or invalid.",
		}, []string{"reason"}),
		propagationDelay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tokenwarden_revocation_propagation_delay_seconds",
			Help:    "From a revocation event's iat at the issuer to its application here (live events only).",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 5},
		}),
		consumerLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwarden_revocation_consumer_lag", Help: "Revocation messages in the stream not yet delivered to this sidecar.",
		}),
		replayed: func() bool {
			c := s.consumer.Load()
			return c != nil && c.CaughtUp()
		},
	}
	for t := range numTransports {
		m.counted[t] = map[string]prometheus.Counter{}
		for _, res := range []string{resultValid, resultNoToken, resultInvalid, resultExpired, resultRevoked, resultInsufficientScope, resultUnknownKey} {
			m.counted[t][res] = m.verifications.WithLabelValues(res, t.String())
		}
		m.latencyOf[t] = m.latency.WithLabelValues(t.String())
	}
	r.MustRegister(m.verifications, m.latency, m.natsConnected, m.eventsApplied, m.eventsDropped, m.propagationDelay, m.consumerLag,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tokenwarden_revocation_set_size", Help: "Live revocation events held.",
		}, func() float64 {
			if s.revocations == nil {
				return 0
			}
			return float64(s.revocations.Len())
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tokenwarden_revocation_staleness_seconds",
			Help: "Time since the revocation set was last confirmed to hold every event of the stream (-1: not replayed yet, or an external checker).",
		}, func() float64 {
			c := s.consumer.Load()
			if c == nil {
				return -1
			}
			d, ok := c.Staleness()
			if !ok {
				return -1
			}
			return d.Seconds()
		}),
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
