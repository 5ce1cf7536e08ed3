package issuer

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are registered on a registry of the server's own, so two issuers
// in one process (as in tests) never collide.
type metrics struct {
	registry        *prometheus.Registry
	tokensIssued    *prometheus.CounterVec
	tokenErrors     *prometheus.CounterVec
	refreshReuse    prometheus.Counter
	rateLimited     *prometheus.CounterVec
	rotations       *prometheus.CounterVec
	ringSequence    prometheus.Gauge
	bundleSequence  prometheus.Gauge
	natsConnected   prometheus.Gauge
	requestDuration *prometheus.HistogramVec
	directoryReload *prometheus.CounterVec
	// revocationsPublished counts events stored on the stream, by kind.
	revocationsPublished *prometheus.CounterVec
}

// setSize exports the size of the issuer's revocation set, read at scrape
// time.
func (m *metrics) setSize(n func() int) {
	m.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tokenwarden_revocation_set_size", Help: "Live revocation events held.",
	}, func() float64 { return float64(n()) }))
}

func newMetrics() *metrics {
	r := prometheus.NewRegistry()
	f := func(c prometheus.Collector) { r.MustRegister(c) }
	m := &metrics{
		registry: r,
		tokensIssued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_tokens_issued_total", Help: "Access tokens issued, by grant type.",
		}, []string{"grant"}),
		tokenErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_token_errors_total", Help: "Token requests refused, by grant type and OAuth2 error code.",
		}, []string{"grant", "error"}),
		refreshReuse: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenwarden_refresh_token_reuse_detected_total", Help: "Already-used refresh tokens presented again; each destroyed its family.",
		}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_login_rate_limited_total", Help: "Login attempts refused with 429, by limit (user or ip).",
		}, []string{"limit"}),
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_key_rotations_total", Help: "Key rotations performed by this replica, by trigger.",
		}, []string{"trigger"}),
		ringSequence: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwarden_key_ring_sequence", Help: "Sequence number of the key ring this replica signs with.",
		}),
		bundleSequence: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwarden_jwks_bundle_published_sequence", Help: "Sequence of the last JWKS bundle this replica published.",
		}),
		natsConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwarden_nats_connected", Help: "1 while the NATS connection is up, else 0.",
		}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tokenwarden_http_request_duration_seconds", Help: "HTTP request latency by route and status code.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route", "code"}),
		directoryReload: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_directory_reloads_total", Help: "Reloads of the users and clients files, by result.",
		}, []string{"result"}),
		revocationsPublished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_revocations_published_total", Help: "Revocation events stored on the stream (acknowledged by JetStream), by kind.",
		}, []string{"kind"}),
	}
	for _, c := range []prometheus.Collector{m.tokensIssued, m.tokenErrors, m.refreshReuse, m.rateLimited, m.rotations,
		m.ringSequence, m.bundleSequence, m.natsConnected, m.requestDuration, m.directoryReload, m.revocationsPublished,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		f(c)
	}
	return m
}
