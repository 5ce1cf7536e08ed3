package sidecar

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// TestUnknownKIDWaitsForItsKey: the active key is revoked and the next
// key, made just before (its propagation delay cut short), signs at once.
// A token of it that reaches a sidecar before its bundle waits for the
// bundle instead of being refused. A made-up kid is refused once the wait
// ends; a kid whose revocation the sidecar holds is refused without
// waiting, and so is any unknown kid while maxKIDWaiters already wait.
func TestUnknownKIDWaitsForItsKey(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	sc := w.start(w.config())
	sc.waitReady(t)
	var awaited atomic.Int32
	entered := make(chan struct{}, 1)
	orig := sc.verifier.awaitKID
	// Set before any request: the server's goroutines read it after.
	sc.verifier.awaitKID = func(ctx context.Context, kid string) bool {
		awaited.Add(1)
		select {
		case entered <- struct{}{}:
		default:
		}
		return orig(ctx, kid)
	}

	p := jwks.DefaultPolicy()
	now := time.Now()
	// Revoking the next key makes a fresh one; revoking the active key
	// then makes that one sign. Neither ring is published yet.
	r1, _, err := w.ring.Revoke(w.ring.Next().ID, now, p, "leak", "admin")
	if err != nil {
		t.Fatal(err)
	}
	r2, rev, err := r1.Revoke(r1.Active().ID, now, p, "leak", "admin")
	if err != nil {
		t.Fatal(err)
	}
	if rev.CutShort == 0 {
		t.Fatal("the activated key's propagation delay was not cut short")
	}
	revokedKID := w.ring.Active().ID
	e, err := revocation.NewEvent(revocation.KindKID, revokedKID, time.Time{}, now.Add(11*time.Minute), "leak", now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := revocation.NewPublisher(w.js, "tokenwarden", w.dist).Publish(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	revokedTok := w.token()
	waitFor(t, "kid event applied", func() bool { return sc.Revocations().Has(revocation.KindKID, revokedKID) })
	w.ring = r2
	newTok := w.token()
	madeUp := w2token(t, w, "made-up-kid")

	tests := []struct {
		name        string
		token       string
		fill        bool // maxKIDWaiters verifications wait already
		publish     bool // the bundle of the new key is published while the token waits
		wantStatus  int
		wantDesc    string
		wantAwaited bool
	}{
		{"kid of a revoked key: no wait", revokedTok, false, false, 401, revocation.ReasonKey, false},
		{"made-up kid, waiters full: no wait", madeUp, true, false, 401, "unknown key id", false},
		{"made-up kid: refused after the wait", madeUp, false, false, 401, "unknown key id", true},
		{"new key: waits for its bundle", newTok, false, true, 200, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			awaited.Store(0)
			// A wait of an earlier case must not pass for this one's: the
			// bundle would be published before this token waits.
			select {
			case <-entered:
			default:
			}
			if tt.fill {
				for range maxKIDWaiters {
					sc.verifier.waiters <- struct{}{}
				}
				defer func() {
					for range maxKIDWaiters {
						<-sc.verifier.waiters
					}
				}()
			}
			type result struct {
				status int
				desc   string
				err    error
			}
			done := make(chan result, 1)
			go func() {
				status, desc, err := verifyOnce(sc.url, tt.token)
				done <- result{status, desc, err}
			}()
			if tt.publish {
				select {
				case <-entered:
				case <-time.After(15 * time.Second):
					t.Fatal("the token of the new key did not wait for its key")
				}
				w.publish(r2)
			}
			r := <-done
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.status != tt.wantStatus || !strings.Contains(r.desc, tt.wantDesc) {
				t.Errorf("answer %d %q, want %d %q", r.status, r.desc, tt.wantStatus, tt.wantDesc)
			}
			if got := awaited.Load() > 0; got != tt.wantAwaited {
				t.Errorf("waited for the key: %v, want %v", got, tt.wantAwaited)
			}
		})
	}
}

// verifyOnce asks /verify with token, from any goroutine.
func verifyOnce(base, token string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, base+"/verify", nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate"), nil
}
