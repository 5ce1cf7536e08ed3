package issuer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/embeddednats"
	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

// lossyKV is a real bucket whose next few writes lose their reply the way a
// NATS failover loses it: the write lands, the caller gets
// nats.ErrDisconnected. (A real failover cannot be timed to hit one request.)
type lossyKV struct {
	jetstream.KeyValue
	lose atomic.Int32 // writes left that land but lose their reply
	fail atomic.Int32 // calls left that fail before reaching the server
	// failWith is what those calls fail with (nats.ErrNoResponders if
	// nil); a fault whose error is errHang waits for its context instead,
	// as a write to a stream with no leader waits for an answer that never
	// comes.
	failWith error
}

var errHang = errors.New("no answer")

func (k *lossyKV) fault(ctx context.Context) (lost bool, err error) {
	if k.fail.Add(-1) >= 0 {
		switch {
		case k.failWith == nil:
			return false, nats.ErrNoResponders
		case errors.Is(k.failWith, errHang):
			<-ctx.Done()
			return false, ctx.Err()
		default:
			return false, k.failWith
		}
	}
	return k.lose.Add(-1) >= 0, nil
}

func (k *lossyKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	lost, err := k.fault(ctx)
	if err != nil {
		return 0, err
	}
	rev, err := k.KeyValue.Create(ctx, key, value, opts...)
	if lost && err == nil {
		return 0, nats.ErrDisconnected
	}
	return rev, err
}

func (k *lossyKV) Update(ctx context.Context, key string, value []byte, last uint64) (uint64, error) {
	lost, err := k.fault(ctx)
	if err != nil {
		return 0, err
	}
	rev, err := k.KeyValue.Update(ctx, key, value, last)
	if lost && err == nil {
		return 0, nats.ErrDisconnected
	}
	return rev, err
}

func (k *lossyKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	if _, err := k.fault(ctx); err != nil {
		return nil, err
	}
	return k.KeyValue.Get(ctx, key)
}

// familiesBucket is a real bucket on a NATS server of the test's own.
func familiesBucket(t *testing.T) jetstream.KeyValue {
	t.Helper()
	ns := testenv.NATS(t, t.TempDir())
	js := jetStream(t, ns.URL())
	kv, err := js.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: "families"})
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// TestFamilyStoreRidesOutFailover: a refresh-token family write whose reply
// a NATS failover lost, or that found no responder for a moment, succeeds
// on retry instead of failing the token request; a real conflict is still a
// conflict. Before, the NATS rollout of test/k8s failed a login with 503
// "nats: server is disconnected".
func TestFamilyStoreRidesOutFailover(t *testing.T) {
	ctx := t.Context()
	real := familiesBucket(t)
	kv := &lossyKV{KeyValue: real}
	s := familyStore{kv: kv}

	f := &family{ID: "fam1", Current: "h1"}
	kv.fail.Store(2)
	kv.lose.Store(1)
	if err := s.create(ctx, f); err != nil {
		t.Fatalf("create through a failover: %v", err)
	}
	kv.fail.Store(1)
	got, rev, err := s.get(ctx, "fam1")
	if err != nil || got.Current != "h1" {
		t.Fatalf("get through a failover: %v %+v", err, got)
	}
	got.Current, got.Used = "h2", []string{"h1"}
	kv.lose.Store(1)
	if err := s.update(ctx, got, rev); err != nil {
		t.Fatalf("update whose reply was lost: %v", err)
	}
	// Another writer's change, then an update from the old revision: a conflict, lost reply or not.
	_, rev2, _ := s.get(ctx, "fam1")
	if _, err := real.Update(ctx, "fam1", []byte(`{"id":"fam1","current":"other"}`), rev2); err != nil {
		t.Fatal(err)
	}
	got.Current = "h3"
	kv.fail.Store(1)
	if err := s.update(ctx, got, rev2); !errors.Is(err, errFamilyConflict) {
		t.Fatalf("update from a stale revision: %v, want a conflict", err)
	}
	// A create of an existing family is refused even after a transient failure.
	kv.fail.Store(1)
	if err := s.create(ctx, &family{ID: "fam1", Current: "x"}); !errors.Is(err, jetstream.ErrKeyExists) {
		t.Fatalf("create over another family: %v, want key exists", err)
	}
	// A server that stays away: the request fails after the budget, not forever.
	if testing.Short() {
		return
	}
	kv.fail.Store(1 << 20)
	if err := s.create(ctx, &family{ID: "fam2"}); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("create with NATS gone: %v", err)
	}
}

// TestFamilyStoreWaitsForTheNewLeader: what a JetStream cluster answers
// while a stream's leader moves is retried within the failover budget; a
// real refusal is not. Before, the NATS rollout of test/k8s failed a login
// with 503 "refresh token store unavailable": the new leader answered the
// family's create with 10163 (a 503), which was not taken as passing, and a
// write sent while there was no leader waited for nats.go's 5 s default
// and left no time to try again.
func TestFamilyStoreWaitsForTheNewLeader(t *testing.T) {
	real := familiesBucket(t)
	// As jetstream's publish returns a server's refusal.
	refused := func(code int, errCode jetstream.ErrorCode, desc string) error {
		return fmt.Errorf("nats: %w", &jetstream.APIError{Code: code, ErrorCode: errCode, Description: desc})
	}
	for i, tc := range []struct {
		name    string
		err     error
		retried bool
	}{
		{"new leader catching up (10163)", refused(503, 10163, "expected last sequence per subject temporarily unavailable"), true},
		{"no quorum yet (10008)", refused(503, 10008, "JetStream system temporarily unavailable"), true},
		{"JetStream starting on a restarted server", refused(503, 10039, "jetstream not enabled for account"), true},
		{"not the leader (10009)", refused(500, 10009, "JetStream cluster can not handle request"), true},
		{"stream offline (10118)", refused(500, 10118, "stream is offline"), true},
		{"no answer: no leader", errHang, true},
		{"message too large: a refusal", refused(400, 10054, "message size exceeds maximum allowed"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kv := &lossyKV{KeyValue: real, failWith: tc.err}
			kv.fail.Store(2)
			err := familyStore{kv: kv}.create(t.Context(), &family{ID: fmt.Sprintf("fam%d", i), Current: "h"})
			if tc.retried && err != nil {
				t.Fatalf("create through %s: %v", tc.name, err)
			}
			if !tc.retried && err == nil {
				t.Fatalf("create refused with %v succeeded: it was retried", tc.err)
			}
		})
	}
}

// TestLoginRidesOutNATSRestart: a login that arrives while the NATS server
// restarts (a rolling update of NATS) waits for it and succeeds instead of
// failing at once with 503, as two logins did in test/k8s's NATS rollout.
func TestLoginRidesOutNATSRestart(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	addr, storeDir := e.nats.Addr().String(), e.nats.JetStreamConfig().StoreDir
	e.nats.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for in.ready() == nil { // the issuer has seen the disconnect
		if time.Now().After(deadline) {
			t.Fatal("the issuer did not notice NATS going away")
		}
		time.Sleep(10 * time.Millisecond)
	}
	done := make(chan tokenResult, 1)
	go func() {
		done <- in.post(t, "app", "app-secret", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}})
	}()
	time.Sleep(300 * time.Millisecond)
	ns, err := embeddednats.Start(embeddednats.Config{Addr: addr, StoreDir: storeDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Stop)
	if r := <-done; r.Status != http.StatusOK {
		t.Fatalf("login across a NATS restart: %d %v", r.Status, r.Body)
	}
}

// TestHealthzFailsWhenNATSClosedForGood: nats.go reconnects for ever, but
// should it still close the connection for good, the issuer could never
// become ready again; /healthz then fails so that the kubelet restarts it
// (before, it stayed 200 and the replica stayed unready for ever).
func TestHealthzFailsWhenNATSClosedForGood(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	if r := do(t, mustReq(t, "GET", in.url+"/healthz")); r.Status != http.StatusOK {
		t.Fatalf("healthz with NATS up: %d %v", r.Status, r.Body)
	}
	in.nc.Load().Close() // what nats.go does on a few server errors
	if r := do(t, mustReq(t, "GET", in.url+"/healthz")); r.Status != http.StatusServiceUnavailable {
		t.Fatalf("healthz with the NATS connection closed for good: %d %v", r.Status, r.Body)
	}
}
