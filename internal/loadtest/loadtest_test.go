package loadtest

import (
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
`))
	}))
	defer srv.Close()
	m, err := Metrics(srv.Client(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if m["go_goroutines"] != 42 || m["tokenwarden_verifications_total"] != 15 || m["process_resident_memory_bytes"] != 12345000 {
		t.Fatalf("%v", m)
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
