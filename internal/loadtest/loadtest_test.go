package loadtest

import (
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	if s := Summarize(nil); s != (Stats{}) {
		t.Fatalf("no samples: %+v", s)
	}
	d := make([]time.Duration, 0, 1000)
	for i := 1000; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	s := Summarize(d)
	if s.N != 1000 || s.P50 != 501*time.Millisecond || s.P99 != 991*time.Millisecond || s.Max != time.Second {
		t.Fatalf("%+v", s)
	}
}

func TestMetrics(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`# HELP go_goroutines Number of goroutines.
# TYPE go_goroutines gauge
go_goroutines 42
tokenwarden_verifications_total{result="valid"} 10
tokenwarden_verifications_total{result="revoked",x="a b}"} 5
process_resident_memory_bytes 1.2345e+07 1700000000000
d_bucket{le="1e-06"} 10
d_bucket{le="1e-05"} 60
d_bucket{le="0.001"} 99
d_bucket{le="+Inf"} 100
`))
	}))
	defer srv.Close()
	m, err := Metrics(srv.Client(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if m["go_goroutines"] != 42 || m["tokenwarden_verifications_total"] != 15 || m["process_resident_memory_bytes"] != 12345000 ||
		m[`tokenwarden_verifications_total{result="valid"}`] != 10 {
		t.Fatalf("%v", m)
	}
	h := Histogram(m, "d")
	if len(h) != 4 || h[0] != (Bucket{1e-6, 10}) || !math.IsInf(h[3].LE, 1) || h[3].Count != 100 {
		t.Fatalf("histogram %v", h)
	}
	if q := Quantile(0.5, nil, h); q != 1e-5 {
		t.Errorf("p50 %g", q)
	}
	if q := Quantile(0.99, nil, h); q != 1e-3 {
		t.Errorf("p99 %g", q)
	}
	if q := Quantile(1, nil, h); !math.IsInf(q, 1) {
		t.Errorf("max %g", q)
	}
	later := []Bucket{{1e-6, 10}, {1e-5, 60}, {1e-3, 109}, {math.Inf(1), 110}}
	if q := Quantile(0.5, h, later); q != 1e-3 { // the 10 new observations are all ≤ 1ms
		t.Errorf("p50 between scrapes %g", q)
	}
	if q := Quantile(0.5, h, h); !math.IsNaN(q) {
		t.Errorf("no observations: %g", q)
	}
}

func TestRSSKiB(t *testing.T) {
	kib, err := RSSKiB(os.Getpid())
	if err != nil {
		t.Skip("no /proc:", err)
	}
	if kib <= 0 {
		t.Fatalf("RSS %d KiB", kib)
	}
}
