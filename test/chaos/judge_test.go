package chaos

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

// TestCheckRevokedOverlappingProbes runs checkRevoked against a sidecar
// stand-in (a real HTTP server; only its answers are scripted) through the
// race that once counted as a revoked token accepted after applied: the
// revocation's follower asks, the sidecar verifies before the event
// arrives, and its 200 comes back only after another probe, asked after
// the event arrived, has come back refused as revoked. That 200 is not a
// violation; a 200 to a probe asked after the refusal came back is.
func TestCheckRevokedOverlappingProbes(t *testing.T) {
	tests := []struct {
		name string
		// overlap: the accepted probe is asked before the refusal and
		// answered after it; otherwise it is asked after the refusal came
		// back (a sidecar that forgot the revocation).
		overlap        bool
		wantViolations int
		wantOverlap    int64
	}{
		{name: "accepted probe in flight across the refusal", overlap: true, wantViolations: 0, wantOverlap: 1},
		{name: "accepted probe asked after the refusal came back", overlap: false, wantViolations: 1, wantOverlap: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var (
				mu      sync.Mutex
				revoked bool // what the stand-in's set holds
				arrived = make(chan struct{}, 1)
				release = make(chan struct{})
				hold    = tt.overlap // hold the first accepted answer
			)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				// The verdict is taken on arrival, as the sidecar's is.
				mu.Lock()
				refuse, wait := revoked, hold && !revoked
				hold = hold && revoked
				mu.Unlock()
				if refuse {
					w.Header().Set("WWW-Authenticate", `Bearer realm="tokenwarden", error="invalid_token", error_description="session revoked"`)
					w.WriteHeader(http.StatusUnauthorized)
					return
				}
				if wait {
					arrived <- struct{}{}
					<-release
				}
				w.WriteHeader(http.StatusOK)
			}))
			t.Cleanup(srv.Close)

			// The stand-in's process: a real one (true), started before
			// the revocation was acknowledged, in its first incarnation.
			sc0 := &proc{Proc: testenv.NewProc(t, "sidecar-0", 0, testenv.Command("true", nil))}
			if err := sc0.start(); err != nil {
				t.Fatal(err)
			}
			d := &deployment{t: t, sidecars: []*sidecarProc{{i: 0, url: srv.URL, proc: sc0}}}
			drv := newDriver(t, d, settings{})
			r := &revocationRec{kind: "admin-sid", probe: &token{raw: "probe"}, ackedAt: time.Now()}
			drv.l.addRevocation(r)

			var wg sync.WaitGroup
			if tt.overlap {
				wg.Go(func() {
					if drv.checkRevoked(t.Context(), 0, r, "follow") {
						t.Error("the held probe was refused; want it accepted")
					}
				})
				<-arrived // verified before the event arrived
			}
			mu.Lock()
			revoked = true // the event arrives
			mu.Unlock()
			if !drv.checkRevoked(t.Context(), 0, r, "revoked loop") {
				t.Fatal("the probe asked after the event arrived was not refused as revoked")
			}
			if tt.overlap {
				close(release)
				wg.Wait()
			} else {
				mu.Lock()
				revoked = false // the sidecar forgets the revocation
				mu.Unlock()
				if drv.checkRevoked(t.Context(), 0, r, "follow") {
					t.Fatal("the stand-in refused a probe it was told to accept")
				}
			}

			if got := drv.l.counts()[vRevokedAccepted]; got != tt.wantViolations {
				t.Errorf("%q: %d, want %d", vRevokedAccepted, got, tt.wantViolations)
			}
			if got := drv.l.revokedOverlapping.Load(); got != tt.wantOverlap {
				t.Errorf("accepted probes asked before another's refusal came back: %d, want %d", got, tt.wantOverlap)
			}
		})
	}
}
