package chaos

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// env is what a scenario works with.
type env struct {
	t   *testing.T
	ctx context.Context
	d   *deployment
	drv *driver
	s   settings
	pr  *progress
}

// progress prints a line per phase of the suite to stderr as it happens,
// with the time since the suite began, so that a run past its budget (12
// minutes for make chaos) shows where the time went. Stderr, unlike
// t.Logf, shows without -test.v when the test binary runs on its own or
// go test runs in the package's directory; go test ./test/chaos/ without
// -v holds all of a package's output until it ends (make chaos has -v).
type progress struct {
	began time.Time
	w     io.Writer
}

func (p *progress) printf(format string, args ...any) {
	_, _ = fmt.Fprintf(p.w, "chaos %7s  %s\n", time.Since(p.began).Round(time.Second), fmt.Sprintf(format, args...))
}

// soak lets the load run for d.
func (e *env) soak(d time.Duration) {
	select {
	case <-e.ctx.Done():
	case <-time.After(d):
	}
}

// must fails the scenario on err.
func (e *env) must(err error, what string) {
	e.t.Helper()
	if err != nil {
		e.t.Fatalf("%s: %v", what, err)
	}
}

type scenario struct {
	name string
	run  func(e *env)
}

var scenarios = []scenario{
	{"kill-stream-leader", scenarioStreamLeader},
	{"kill-issuer-mid-rotation", scenarioIssuerMidRotation},
	{"bundle-writes-refused-across-rotations", scenarioBundleWritesRefused},
	{"restart-partitioned-sidecar", scenarioPartitionedRestart},
	{"pause-sidecar-past-event-expiry", scenarioPauseSidecar},
	{"leaked-key", scenarioLeakedKey},
	{"fill-revocation-set", scenarioFill},
}

// TestChaos deploys the system once, starts the load, runs every fault
// scenario in turn under it, and checks the ledger at the end.
func TestChaos(t *testing.T) {
	s, err := suiteSettings()
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	pr := &progress{began: began, w: os.Stderr}
	pr.printf("deploying 3 NATS nodes, %d issuers, %d sidecars (full=%v, load around each fault %s, fill %d)",
		issuerCount, sidecarCount, s.full, s.duration, s.fill)
	d := deploy(t)
	pr.printf("deployed in %s", time.Since(began).Round(time.Millisecond))
	t.Logf("deployed 3 NATS nodes, %d issuers, %d sidecars in %s (full=%v, load around each fault %s, fill %d)",
		len(d.issuers), len(d.sidecars), time.Since(began).Round(time.Millisecond), s.full, s.duration, s.fill)
	drv := newDriver(t, d, s)
	drv.start()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			drv.stop()
		}
	}
	t.Cleanup(stop)
	drv.l.setScenario("baseline")
	base := &env{t: t, ctx: t.Context(), d: d, drv: drv, s: s, pr: pr}
	pr.printf("baseline: load for %s", s.duration)
	base.soak(s.duration)

	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			drv.l.setScenario(sc.name)
			e := &env{t: t, ctx: t.Context(), d: d, drv: drv, s: s, pr: pr}
			start := time.Now()
			pr.printf("%s: start", sc.name)
			// Printed however the scenario ends (t.Fatalf included).
			defer func() { pr.printf("%s: done in %s", sc.name, time.Since(start).Round(time.Millisecond)) }()
			sc.run(e)
			if err := d.crashes(); err != nil {
				drv.l.violate(t, vCrash, "%v", err)
			}
			t.Logf("%s: done in %s", sc.name, time.Since(start).Round(time.Millisecond))
		})
	}

	drv.l.setScenario("final")
	pr.printf("final: waiting for every process to be ready, then the final sweep")
	// Everything back up and ready before the books are closed.
	for _, is := range d.issuers {
		if err := waitReady(t.Context(), is.proc, is.url, readyzTimeout); err != nil {
			t.Errorf("issuer-%d at the end: %v", is.i, err)
		}
	}
	for _, sc := range d.sidecars {
		if err := waitReady(t.Context(), sc.proc, sc.url, readyzTimeout); err != nil {
			t.Errorf("sidecar-%d at the end: %v", sc.i, err)
		}
	}
	stop()
	drv.finalSweep(t.Context())
	if err := d.crashes(); err != nil {
		drv.l.violate(t, vCrash, "%v", err)
	}
	counts := drv.report(t, time.Since(began))
	pr.printf("ledger closed after %s", time.Since(began).Round(time.Second))
	for _, k := range violationKinds {
		if counts[k] != 0 {
			t.Errorf("%s: %d, want 0", k, counts[k])
		}
	}
	if drv.l.accepted.Load() == 0 || drv.l.rotations.Load() == 0 || len(drv.l.revs) == 0 {
		t.Errorf("the load did not run: %d accepted verifications, %d rotations, %d revocations",
			drv.l.accepted.Load(), drv.l.rotations.Load(), len(drv.l.revs))
	}
}

// ---- helpers on NATS state ----

func jsConnect(urls string) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(urls, nats.Timeout(2*time.Second))
	if err != nil {
		return nil, nil, fmt.Errorf("connect: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// streamCurrent checks that the stream has a leader on another node than
// not, and that every replica is online and current.
func streamCurrent(ctx context.Context, urls string) error {
	nc, js, err := jsConnect(urls)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, revStream)
	if err != nil {
		return err
	}
	ci := s.CachedInfo().Cluster
	if ci == nil || ci.Leader == "" {
		return errors.New("no stream leader")
	}
	for _, r := range ci.Replicas {
		if r.Offline || !r.Current {
			return fmt.Errorf("replica %s offline=%v current=%v", r.Name, r.Offline, r.Current)
		}
	}
	return nil
}

// sequences reads the key ring's and the published bundle's sequence
// numbers from KV.
func sequences(ctx context.Context, urls string) (ring, bundle uint64, err error) {
	nc, js, err := jsConnect(urls)
	if err != nil {
		return 0, 0, err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	keys, err := js.KeyValue(ctx, "tokenwarden_keys")
	if err != nil {
		return 0, 0, err
	}
	e, err := keys.Get(ctx, "ring")
	if err != nil {
		return 0, 0, err
	}
	var r struct {
		Sequence uint64 `json:"sequence"`
	}
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return 0, 0, fmt.Errorf("ring: %w", err)
	}
	jw, err := js.KeyValue(ctx, "tokenwarden_jwks")
	if err != nil {
		return 0, 0, err
	}
	e, err = jw.Get(ctx, "current")
	if err != nil {
		return 0, 0, err
	}
	parts := strings.Split(string(e.Value()), ".")
	if len(parts) != 3 {
		return 0, 0, errors.New("bundle is not a compact JWS")
	}
	pb, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return 0, 0, err
	}
	var b struct {
		Seq uint64 `json:"seq"`
	}
	if err := json.Unmarshal(pb, &b); err != nil {
		return 0, 0, fmt.Errorf("bundle: %w", err)
	}
	return r.Sequence, b.Seq, nil
}

// kidDiagnosis says where a kid a sidecar did not know stands: in the
// key ring, in the bundle in KV, and in the sidecar.
func kidDiagnosis(ctx context.Context, d *deployment, sc int, kid string) string {
	nc, js, err := jsConnect(d.nats.urls())
	if err != nil {
		return err.Error()
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var out []string
	if kv, err := js.KeyValue(ctx, "tokenwarden_keys"); err == nil {
		if e, err := kv.Get(ctx, "ring"); err == nil {
			var r struct {
				Sequence uint64 `json:"sequence"`
				Keys     []struct {
					ID          string    `json:"kid"`
					State       string    `json:"state"`
					CreatedAt   time.Time `json:"created_at"`
					ActivatedAt time.Time `json:"activated_at"`
				} `json:"keys"`
			}
			if json.Unmarshal(e.Value(), &r) == nil {
				for _, k := range r.Keys {
					if k.ID == kid {
						out = append(out, fmt.Sprintf("ring %d: %s, created %s, activated %s", r.Sequence, k.State,
							k.CreatedAt.Format("15:04:05.000"), k.ActivatedAt.Format("15:04:05.000")))
					}
				}
			}
		}
	}
	if kv, err := js.KeyValue(ctx, "tokenwarden_jwks"); err == nil {
		if e, err := kv.Get(ctx, "current"); err == nil {
			parts := strings.Split(string(e.Value()), ".")
			if len(parts) == 3 {
				pb, _ := base64.RawURLEncoding.DecodeString(parts[1])
				var b struct {
					Seq uint64 `json:"seq"`
					IAT int64  `json:"iat"`
				}
				_ = json.Unmarshal(pb, &b)
				out = append(out, fmt.Sprintf("bundle in KV %d (made %s, KV revision %d at %s) holds it: %v", b.Seq,
					time.Unix(b.IAT, 0).UTC().Format("15:04:05"), e.Revision(), e.Created().UTC().Format("15:04:05.000"), strings.Contains(string(pb), kid)))
			}
		}
	}
	if v, err := metric(ctx, d.sidecars[sc].url, "tokenwarden_jwks_bundle_sequence"); err == nil {
		out = append(out, fmt.Sprintf("sidecar bundle %.0f", v))
	}
	return strings.Join(out, "; ")
}

// readyDiagnosis says what a sidecar reported at /readyz against the
// stream leader's view: its last sequence, each replica's lag, and the
// revocation consumers placed on each server with what they delivered.
func readyDiagnosis(ctx context.Context, d *deployment, sc int) string {
	var out []string
	if req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.sidecars[sc].url+"/readyz", nil); err == nil {
		if resp, err := probeClient.Do(req); err == nil {
			b := make([]byte, 512)
			n, _ := resp.Body.Read(b)
			_ = resp.Body.Close()
			out = append(out, fmt.Sprintf("sidecar-%d /readyz %d %s", sc, resp.StatusCode, strings.TrimSpace(string(b[:n]))))
		}
	}
	if req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.sidecars[sc].url+"/metrics", nil); err == nil {
		if resp, err := probeClient.Do(req); err == nil {
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			var ms []string
			for line := range strings.SplitSeq(string(b), "\n") {
				if strings.HasPrefix(line, "tokenwarden_revocation_events_") || strings.HasPrefix(line, "tokenwarden_revocation_set_size") ||
					strings.HasPrefix(line, "tokenwarden_jwks_bundle_sequence") || strings.HasPrefix(line, "tokenwarden_revocation_consumer_lag") {
					ms = append(ms, line)
				}
			}
			out = append(out, "metrics: "+strings.Join(ms, ", "))
		}
	}
	nc, js, err := jsConnect(d.nats.urls())
	if err != nil {
		return strings.Join(append(out, err.Error()), "; ")
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, revStream)
	if err != nil {
		return strings.Join(append(out, err.Error()), "; ")
	}
	info := st.CachedInfo()
	line := fmt.Sprintf("stream last seq %d, leader %s", info.State.LastSeq, info.Cluster.Leader)
	for _, r := range info.Cluster.Replicas {
		line += fmt.Sprintf(", replica %s current=%v lag=%d", r.Name, r.Current, r.Lag)
	}
	out = append(out, line)
	byServer := map[string][]string{}
	for ci := range st.ListConsumers(ctx).Info() {
		if ci.Cluster == nil {
			continue
		}
		byServer[ci.Cluster.Leader] = append(byServer[ci.Cluster.Leader], fmt.Sprintf("%d/%d", ci.Delivered.Stream, ci.NumPending))
	}
	for srv, cs := range byServer {
		out = append(out, fmt.Sprintf("consumers on %s (delivered/pending) %s", srv, strings.Join(cs, " ")))
	}
	return strings.Join(out, "; ")
}

// keyRing is GET /admin/v1/keys.
type keyRing struct {
	Sequence uint64 `json:"sequence"`
	Keys     []struct {
		ID        string     `json:"kid"`
		State     string     `json:"state"`
		SignsFrom *time.Time `json:"signs_from"`
	} `json:"keys"`
}

func (e *env) keyRing(is *issuerProc) (*keyRing, error) {
	code, b := e.drv.admin(e.ctx, is, http.MethodGet, "/admin/v1/keys", nil)
	if code != 200 {
		return nil, fmt.Errorf("issuer-%d GET /admin/v1/keys: %d", is.i, code)
	}
	var kr keyRing
	if err := json.Unmarshal(b, &kr); err != nil {
		return nil, err
	}
	return &kr, nil
}

// waitRotatable waits until the next key may sign (a rotation would
// succeed).
func (e *env) waitRotatable(is *issuerProc) error {
	return poll(e.ctx, propagation+20*time.Second, 100*time.Millisecond, func() error {
		kr, err := e.keyRing(is)
		if err != nil {
			return err
		}
		for _, k := range kr.Keys {
			if k.State == "next" && k.SignsFrom != nil && !time.Now().Before(*k.SignsFrom) {
				return nil
			}
		}
		return errors.New("next key not ready to sign")
	})
}

// waitHold waits out a hold on rotations (see watchRecovery).
func (e *env) waitHold() {
	if d := e.drv.rotationsHeld(); d > 0 {
		e.soak(d)
	}
}

// rotateNow waits until a rotation is allowed and makes one.
func (e *env) rotateNow() error {
	e.waitHold()
	for attempt := 0; attempt < 5; attempt++ {
		is := e.drv.issuer()
		if err := e.waitRotatable(is); err != nil {
			return err
		}
		if e.drv.rotate(e.ctx, is) == 200 {
			return nil
		}
	}
	return errors.New("no rotation succeeded")
}

func (e *env) waitIssuersReady() {
	e.t.Helper()
	for _, is := range e.d.issuers {
		e.must(waitReady(e.ctx, is.proc, is.url, readyzTimeout), fmt.Sprintf("issuer-%d ready", is.i))
	}
}

// freshToken logs a clean user in: a token of the active key.
func (e *env) freshToken() (*token, error) {
	var tok *token
	err := poll(e.ctx, 30*time.Second, 100*time.Millisecond, func() error {
		code, _, t := e.drv.grant(e.ctx, e.drv.issuer(), "web", url.Values{"grant_type": {"password"}, "username": {cleanUser(1)}, "password": {password}})
		if code != 200 {
			return fmt.Errorf("login: %d", code)
		}
		tok = t
		return nil
	})
	if tok != nil {
		e.drv.addToken(tok)
	}
	return tok, err
}

// ---- scenario 1 ----

// scenarioStreamLeader: kill -9 the node leading the revocation stream;
// a new leader is elected, revocations keep being acknowledged and
// applied, and the node comes back and catches up.
func scenarioStreamLeader(e *env) {
	for r := range e.s.repeats {
		leader, err := streamLeader(e.ctx, e.d.nats.urls(), revStream)
		e.must(err, "stream leader")
		node := e.d.nats.node(leader)
		if node == nil {
			e.t.Fatalf("leader %q is not one of ours", leader)
		}
		// Sidecar 0 knows only n1: killing n1 cuts it off as well.
		cut := node == e.d.nats.nodes[0]
		e.t.Logf("round %d: kill -9 stream leader %s (sidecar-0 cut off: %v)", r+1, leader, cut)
		e.pr.printf("kill-stream-leader: round %d of %d", r+1, e.s.repeats)
		killed := time.Now()
		if cut {
			e.drv.partitionStart(0)
		}
		e.drv.holdRotations(watchRecovery)
		e.must(node.proc.kill9(), "kill leader")
		var others []string
		for _, n := range e.d.nats.nodes {
			if n != node {
				others = append(others, n.url())
			}
		}
		var newLeader string
		e.must(poll(e.ctx, 60*time.Second, 200*time.Millisecond, func() error {
			l, err := streamLeader(e.ctx, strings.Join(others, ","), revStream)
			if err != nil {
				return err
			}
			if l == leader {
				return fmt.Errorf("leader still %s", l)
			}
			newLeader = l
			return nil
		}), "new stream leader")
		e.t.Logf("new stream leader %s after %s", newLeader, time.Since(killed).Round(time.Millisecond))
		// Revocations are acknowledged again through the new leader.
		e.must(poll(e.ctx, 60*time.Second, 200*time.Millisecond, func() error {
			if e.drv.revokeAdminSID(e.ctx) == nil {
				return errors.New("revocation not acknowledged")
			}
			return nil
		}), "revocation after failover")
		e.t.Logf("revocations acknowledged again %s after the kill", time.Since(killed).Round(time.Millisecond))
		// The node stays down a while, under load: not longer than the
		// propagation delay, so sidecar 0 (which knows only this node when
		// it is n1) does not miss a key that signs meanwhile.
		e.soak(min(e.s.duration, 3*time.Second))
		e.must(node.proc.start(), "restart node")
		e.must(waitNATS(e.ctx, node, 60*time.Second), "node back")
		e.must(poll(e.ctx, 90*time.Second, 250*time.Millisecond, func() error { return streamCurrent(e.ctx, e.d.nats.urls()) }), "stream replicas current")
		e.t.Logf("node %s back and the stream current %s after the kill", leader, time.Since(killed).Round(time.Millisecond))
		if cut {
			e.must(waitReady(e.ctx, e.d.sidecars[0].proc, e.d.sidecars[0].url, readyzTimeout), "sidecar-0 ready")
			// The sidecar reconnects with its backoff; it is cut off until then.
			e.must(poll(e.ctx, 60*time.Second, 100*time.Millisecond, func() error {
				v, err := metric(e.ctx, e.d.sidecars[0].url, "tokenwarden_nats_connected")
				if err != nil {
					return fmt.Errorf("sidecar-0 not reconnected: %w", err)
				}
				if v != 1 {
					return errors.New("sidecar-0 not reconnected")
				}
				return nil
			}), "sidecar-0 reconnected")
			e.drv.partitionEnd(0)
		}
		e.waitIssuersReady()
		e.soak(e.s.duration / time.Duration(e.s.repeats))
	}
}

// ---- scenario 2 ----

// scenarioIssuerMidRotation: kill -9 an issuer while it rotates the key
// ring. The other issuer keeps serving, the ring and the published bundle
// agree again within a maintenance tick, and the killed issuer comes back
// ready with every revocation and the current ring.
func scenarioIssuerMidRotation(e *env) {
	e.waitHold()
	e.drv.rotatorPaused.Store(true)
	defer e.drv.rotatorPaused.Store(false)
	rounds := 2 * e.s.repeats
	for r := range rounds {
		e.pr.printf("kill-issuer-mid-rotation: round %d of %d", r+1, rounds)
		victim, other := e.d.issuers[r%2], e.d.issuers[(r+1)%2]
		e.must(e.waitRotatable(other), "next key ready")
		ring0, bundle0, err := sequences(e.ctx, e.d.nats.urls())
		e.must(err, "sequences before")
		// The rotation request goes out, and the issuer dies a few
		// milliseconds into it: before, during or after its KV writes.
		var code atomic.Int64
		var wg sync.WaitGroup
		wg.Go(func() { code.Store(int64(e.drv.rotate(e.ctx, victim))) })
		// An on-demand rotation takes a few milliseconds (admin token
		// check, ring read, CAS write of the ring, bundle write); the kill
		// lands anywhere in the first 8 ms after the request went out.
		delay := time.Duration(rand.N(8000)) * time.Microsecond
		time.Sleep(delay)
		e.must(victim.proc.kill9(), "kill issuer")
		wg.Wait()
		ring1, bundle1, err := sequences(e.ctx, e.d.nats.urls())
		e.must(err, "sequences after")
		e.t.Logf("round %d: issuer-%d killed %s into a rotation (answer %d): ring %d→%d, bundle %d→%d",
			r+1, victim.i, delay, code.Load(), ring0, ring1, bundle0, bundle1)
		if ring1 > bundle1 {
			e.t.Logf("the kill landed between the ring write and the bundle publication")
		}
		// The survivor publishes the bundle of the newest ring.
		e.must(poll(e.ctx, 30*time.Second, 100*time.Millisecond, func() error {
			ring, bundle, err := sequences(e.ctx, e.d.nats.urls())
			if err != nil {
				return err
			}
			if bundle < ring {
				return fmt.Errorf("ring %d, bundle %d", ring, bundle)
			}
			return nil
		}), "bundle of the current ring published")
		e.must(waitReady(e.ctx, other.proc, other.url, 30*time.Second), "survivor ready")
		// Rotate through the survivor while the victim is down.
		e.must(e.rotateNow(), "rotation by the survivor")
		e.soak(min(e.s.duration, 3*time.Second))
		e.must(victim.proc.start(), "restart issuer")
		e.must(waitReady(e.ctx, victim.proc, victim.url, readyzTimeout), "restarted issuer ready")
		e.drv.checkIssuerAfterReady(e.ctx, victim)
		e.must(poll(e.ctx, 30*time.Second, 100*time.Millisecond, func() error {
			a, err := e.keyRing(victim)
			if err != nil {
				return err
			}
			b, err := e.keyRing(other)
			if err != nil {
				return err
			}
			if a.Sequence != b.Sequence {
				return fmt.Errorf("issuers disagree on the ring: %d and %d", a.Sequence, b.Sequence)
			}
			return nil
		}), "issuers agree on the ring")
		e.soak(e.s.duration / time.Duration(rounds))
	}
}

// ---- scenario 2b ----

// scenarioBundleWritesRefused: the bundle bucket refuses writes (as it
// does while its stream has no leader after a node died, or when the
// issuer that wrote the ring is killed before it writes the bundle) for
// longer than the propagation delay, across two rotations. The key ring
// may change, but no key may sign before a bundle holding it has been
// published: no valid token may meet an unknown kid.
//
// This is the regression test of a bug the stream-leader scenario found:
// a rotation promoted a next key that had never been published, so every
// sidecar refused the tokens it signed ("unknown key id").
func scenarioBundleWritesRefused(e *env) {
	e.waitHold()
	e.drv.rotatorPaused.Store(true)
	defer e.drv.rotatorPaused.Store(false)
	nc, js, err := jsConnect(e.d.nats.urls())
	e.must(err, "connect")
	defer nc.Close()
	const bucketStream = "KV_tokenwarden_jwks"
	st, err := js.Stream(e.ctx, bucketStream)
	e.must(err, "bundle stream")
	cfg := st.CachedInfo().Config
	orig := cfg.MaxMsgSize
	is := e.d.issuers[0]
	e.must(e.waitRotatable(is), "next key ready")
	// A signed bundle is about 1 KiB: 64 bytes refuses every write.
	cfg.MaxMsgSize = 64
	_, err = js.UpdateStream(e.ctx, cfg)
	e.must(err, "refuse bundle writes")
	restored := false
	restore := func() {
		if restored {
			return
		}
		restored = true
		cfg.MaxMsgSize = orig
		_, err := js.UpdateStream(context.Background(), cfg)
		e.must(err, "accept bundle writes again")
	}
	defer restore()
	code1 := e.drv.rotate(e.ctx, is)
	ring, bundle, err := sequences(e.ctx, e.d.nats.urls())
	e.must(err, "sequences")
	e.t.Logf("rotation with bundle writes refused: %d; ring %d, bundle %d", code1, ring, bundle)
	// Wait out the new next key's propagation delay (counted from its
	// creation), then rotate again: that key has never been published.
	e.must(e.waitRotatable(is), "second next key old enough")
	code2 := e.drv.rotate(e.ctx, is)
	ring, bundle, err = sequences(e.ctx, e.d.nats.urls())
	e.must(err, "sequences")
	e.t.Logf("second rotation with bundle writes refused: %d; ring %d, bundle %d", code2, ring, bundle)
	// Tokens signed now must verify everywhere.
	for range 3 {
		tok, err := e.freshToken()
		e.must(err, "token")
		for i, sc := range e.d.sidecars {
			if sc.proc.running() {
				e.drv.checkValid(e.ctx, i, tok)
			}
		}
	}
	e.soak(min(e.s.duration, 2*time.Second))
	restore()
	// Once the bucket takes writes, the ring is published within a
	// maintenance tick and rotations work again.
	e.must(poll(e.ctx, 30*time.Second, 200*time.Millisecond, func() error {
		ring, bundle, err := sequences(e.ctx, e.d.nats.urls())
		if err != nil {
			return err
		}
		if bundle < ring {
			return fmt.Errorf("ring %d, bundle %d", ring, bundle)
		}
		return nil
	}), "bundle published again")
	e.must(e.rotateNow(), "rotation after the bucket recovered")
	e.soak(e.s.duration)
}

// ---- scenario 3 ----

// scenarioPartitionedRestart: stop the NATS node sidecar 0 is connected to
// (the only one it knows), restart the sidecar while it is cut off, rotate
// twice so that a key published during the partition signs, then bring
// the node back. The restarted sidecar must not report ready before it
// has replayed the stream, and when it does it must reject every
// acknowledged revocation and accept tokens of the current key.
func scenarioPartitionedRestart(e *env) {
	e.waitHold()
	e.drv.rotatorPaused.Store(true)
	defer e.drv.rotatorPaused.Store(false)
	node, sc := e.d.nats.nodes[0], e.d.sidecars[0]
	e.must(waitReady(e.ctx, sc.proc, sc.url, readyzTimeout), "sidecar-0 ready before")
	e.must(e.waitRotatable(e.d.issuers[1]), "next key ready")
	cut := time.Now()
	e.drv.partitionStart(0)
	e.drv.holdRotations(watchRecovery)
	e.must(node.proc.terminate(15*time.Second), "stop node n1")
	e.must(sc.proc.terminate(15*time.Second), "stop sidecar-0")
	e.must(sc.proc.start(), "restart sidecar-0")

	// While cut off it must never say ready (it cannot have replayed).
	var lied atomic.Int64
	watchCtx, stopWatch := context.WithCancel(e.ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		every(watchCtx, 50*time.Millisecond, func() {
			if status(watchCtx, sc.url+"/readyz") == 200 {
				lied.Add(1)
			}
		})
	})
	// It serves from its disk cache at once (healthz), not ready.
	e.must(poll(e.ctx, 30*time.Second, 25*time.Millisecond, func() error {
		if code := status(e.ctx, sc.url+"/healthz"); code != 200 {
			return fmt.Errorf("healthz %d", code)
		}
		return nil
	}), "restarted sidecar-0 serving")

	// Two rotations: the first (at once: it activates a key every sidecar
	// has held for the propagation delay) publishes a key sidecar 0 cannot
	// see, the second makes that key sign.
	if e.drv.rotate(e.ctx, e.d.issuers[1]) != 200 {
		e.t.Log("the first rotation during the partition was refused; rotating when allowed")
	}
	e.must(e.rotateNow(), "rotation during the partition")
	e.soak(e.s.duration)
	fresh, err := e.freshToken()
	e.must(err, "token of the current key")
	stopWatch()
	wg.Wait()
	if n := lied.Load(); n > 0 {
		e.drv.l.violate(e.t, vReadyzLied, "sidecar-0, restarted while cut off from NATS, answered /readyz 200 %d times", n)
	}
	e.t.Logf("partition lasted %s; current key %s", time.Since(cut).Round(time.Millisecond), fresh.kid)

	back := time.Now()
	e.must(node.proc.start(), "restart node n1")
	e.must(waitNATS(e.ctx, node, 60*time.Second), "n1 back")
	e.must(waitReady(e.ctx, sc.proc, sc.url, readyzTimeout), "sidecar-0 ready after the partition")
	e.t.Logf("sidecar-0 ready %s after n1 came back", time.Since(back).Round(time.Millisecond))
	diag := readyDiagnosis(e.ctx, e.d, 0)
	if !e.drv.checkSidecarAfterReady(e.ctx, 0, fresh, back) {
		e.t.Logf("at first ready: %s", diag)
		e.t.Logf("after the check: %s", readyDiagnosis(e.ctx, e.d, 0))
		for i := 1; i < 3; i++ {
			e.t.Logf("for comparison, sidecar-%d: %s", i, readyDiagnosis(e.ctx, e.d, i))
		}
	}
	e.drv.partitionEnd(0)
	e.must(poll(e.ctx, 90*time.Second, 250*time.Millisecond, func() error { return streamCurrent(e.ctx, e.d.nats.urls()) }), "stream replicas current")
	e.waitIssuersReady()
	e.soak(e.s.duration)
}

// ---- scenario 4 ----

// scenarioPauseSidecar: SIGSTOP a sidecar until some events published
// meanwhile have expired from the stream (RFC 7009 revocations of
// two-second tokens), then SIGCONT. It must catch up past the gap and
// apply every revocation made while it slept.
func scenarioPauseSidecar(e *env) {
	const i = 5
	sc := e.d.sidecars[i]
	nc, js, err := jsConnect(e.d.nats.urls())
	e.must(err, "connect")
	defer nc.Close()
	stream, err := js.Stream(e.ctx, revStream)
	e.must(err, "stream")
	lastSeq := func() uint64 {
		info, err := stream.Info(e.ctx)
		e.must(err, "stream info")
		return info.State.LastSeq
	}
	before := lastSeq()
	// Two-second tokens to revoke while it sleeps: their jti events are
	// kept only until exp + leeway.
	var shorts []*token
	for range 3 {
		if _, tok := e.drv.login(e.ctx, "short", cleanUser(rand.N(cleanUsers))); tok != nil {
			shorts = append(shorts, tok)
		}
	}
	e.must(sc.proc.signal(syscall.SIGSTOP), "SIGSTOP")
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			e.must(sc.proc.signal(syscall.SIGCONT), "SIGCONT")
		}
	}
	defer resume()
	paused := time.Now()
	e.t.Logf("sidecar-%d paused", i)
	var long []*revocationRec
	shortN := 0
	for _, tok := range shorts {
		if e.drv.revokeAccessToken(e.ctx, tok) != nil {
			shortN++
		}
	}
	for range 3 {
		if r := e.drv.revokeAdminSID(e.ctx); r != nil {
			long = append(long, r)
		}
	}
	after := lastSeq()
	if shortN == 0 || len(long) == 0 {
		e.t.Fatalf("no revocations while paused (%d short, %d long)", shortN, len(long))
	}
	// Wait until some of them are gone from the stream, but wake it
	// before the propagation delay: a sidecar asleep longer misses a key
	// published meanwhile, which would sign before it wakes.
	gone := 0
	err = poll(e.ctx, propagation-time.Since(paused)-time.Second, 100*time.Millisecond, func() error {
		gone = 0
		for seq := before + 1; seq <= after; seq++ {
			if _, err := stream.GetMsg(e.ctx, seq); errors.Is(err, jetstream.ErrMsgNotFound) {
				gone++
			}
		}
		if gone == 0 {
			return errors.New("no event expired yet")
		}
		return nil
	})
	resume()
	e.t.Logf("sidecar-%d resumed after %s; of stream sequences %d..%d, %d expired meanwhile (%d short-lived, %d long-lived revocations made while paused)",
		i, time.Since(paused).Round(time.Millisecond), before+1, after, gone, shortN, len(long))
	if err != nil {
		e.t.Errorf("no event expired while the sidecar was paused: %v", err)
	}
	woke := time.Now()
	for _, r := range long {
		e.must(poll(e.ctx, 30*time.Second, 20*time.Millisecond, func() error {
			if !e.drv.checkRevoked(e.ctx, i, r, "after SIGCONT") {
				return fmt.Errorf("revocation #%d not applied", r.n)
			}
			return nil
		}), "revocations made while paused applied")
	}
	e.t.Logf("sidecar-%d applied the %d revocations made while it was paused %s after SIGCONT", i, len(long), time.Since(woke).Round(time.Millisecond))
	e.must(poll(e.ctx, 30*time.Second, 100*time.Millisecond, func() error {
		v, err := metric(e.ctx, sc.url, "tokenwarden_revocation_consumer_lag")
		if err != nil {
			return fmt.Errorf("lag: %w", err)
		}
		if v != 0 {
			return fmt.Errorf("lag %v", v)
		}
		return nil
	}), "consumer lag back to 0")
	e.soak(e.s.duration)
}

// ---- scenario 5 ----

// scenarioFill: fill the revocation set with s.fill live events through
// the admin API, check every sidecar holds them and still verifies and
// revokes, then restart a sidecar: it replays them all before it reports
// ready.
func scenarioFill(e *env) {
	n := e.s.fill
	start := time.Now()
	var next, stored, failed atomic.Int64
	var lat latencies
	var wg sync.WaitGroup
	workers := 12
	if e.s.full {
		workers = 32
	}
	for w := range workers {
		wg.Go(func() {
			for e.ctx.Err() == nil {
				k := next.Add(1)
				if k > int64(n) {
					return
				}
				is := e.d.issuers[w%len(e.d.issuers)]
				for attempt := 0; ; attempt++ {
					t0 := time.Now()
					code, _ := e.drv.admin(e.ctx, is, http.MethodPost, "/admin/v1/revocations",
						map[string]any{"kind": "jti", "value": fmt.Sprintf("fill-%d", k), "reason": "fill"})
					if code == 201 {
						lat.add(time.Since(t0))
						stored.Add(1)
						break
					}
					failed.Add(1)
					if attempt > 20 || e.ctx.Err() != nil {
						return
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}
	fillDone := make(chan struct{})
	var tick sync.WaitGroup
	tick.Go(func() {
		// A full fill takes minutes: say how far it is.
		every := time.NewTicker(30 * time.Second)
		defer every.Stop()
		for {
			select {
			case <-fillDone:
				return
			case <-every.C:
				e.pr.printf("fill-revocation-set: %d of %d events stored", stored.Load(), n)
			}
		}
	})
	wg.Wait()
	close(fillDone)
	tick.Wait()
	took := time.Since(start)
	e.pr.printf("fill-revocation-set: %d events stored in %s; waiting for every sidecar to hold them", stored.Load(), took.Round(time.Second))
	e.t.Logf("filled %d events in %s (%.0f/s; %d retried), admin API %s", stored.Load(), took.Round(time.Millisecond),
		float64(stored.Load())/took.Seconds(), failed.Load(), lat.summary())
	if stored.Load() != int64(n) {
		e.t.Fatalf("stored %d of %d events", stored.Load(), n)
	}
	// Every sidecar holds them.
	for _, sc := range e.d.sidecars {
		e.must(poll(e.ctx, 5*time.Minute, 250*time.Millisecond, func() error {
			v, err := metric(e.ctx, sc.url, "tokenwarden_revocation_set_size")
			if err != nil {
				return err
			}
			if v < float64(n) {
				return fmt.Errorf("sidecar-%d holds %v events", sc.i, v)
			}
			return nil
		}), "set filled")
	}
	e.t.Logf("every sidecar holds ≥ %d live events %s after the fill began", n, time.Since(start).Round(time.Millisecond))
	// Revocations still propagate, verifications still pass (the load).
	r := e.drv.revokeAdminSID(e.ctx)
	if r == nil {
		e.t.Fatal("revocation after the fill not acknowledged")
	}
	for i := range e.d.sidecars {
		e.must(poll(e.ctx, 30*time.Second, 20*time.Millisecond, func() error {
			if !e.drv.checkRevoked(e.ctx, i, r, "after fill") {
				return errors.New("not applied")
			}
			return nil
		}), fmt.Sprintf("sidecar-%d applies a revocation on top of the fill", i))
	}
	e.t.Logf("a revocation on top of the fill reached every sidecar %s after its acknowledgement", time.Since(r.ackedAt).Round(time.Millisecond))
	// A restarted sidecar replays the whole set before it is ready.
	const i = 7
	sc := e.d.sidecars[i]
	fresh, err := e.freshToken()
	e.must(err, "fresh token")
	e.must(sc.proc.terminate(15*time.Second), "stop sidecar")
	restarted := time.Now()
	e.must(sc.proc.start(), "restart sidecar")
	e.must(waitReady(e.ctx, sc.proc, sc.url, readyzTimeout), "restarted sidecar ready")
	e.t.Logf("sidecar-%d restarted and ready in %s", i, time.Since(restarted).Round(time.Millisecond))
	e.drv.checkSidecarAfterReady(e.ctx, i, fresh, restarted)
	v, err := metric(e.ctx, sc.url, "tokenwarden_revocation_set_size")
	e.must(err, "set size")
	if v < float64(n) {
		e.drv.l.violate(e.t, vReadyzLied, "sidecar-%d reported ready holding %v of ≥ %d live events", i, v, n)
	}
	e.soak(e.s.duration)
}
