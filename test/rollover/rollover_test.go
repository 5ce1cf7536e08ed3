package rollover

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// procedure extracts the sh blocks between the rollover markers of
// docs/operations.md.
func procedure(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	start, end := strings.Index(doc, "<!-- rollover:start -->"), strings.Index(doc, "<!-- rollover:end -->")
	if start < 0 || end < start {
		t.Fatal("docs/operations.md has no rollover markers")
	}
	var blocks []string
	var block []string
	in := false
	sc := bufio.NewScanner(strings.NewReader(doc[start:end]))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case !in && line == "```sh":
			in, block = true, nil
		case in && line == "```":
			blocks, in = append(blocks, strings.Join(block, "\n")), false
		case in:
			block = append(block, line)
		}
	}
	if len(blocks) < 4 {
		t.Fatalf("the rollover procedure has %d sh blocks, want 4", len(blocks))
	}
	return strings.Join(blocks, "\n")
}

func hold() time.Duration {
	if v := os.Getenv("ROLLOVER_HOLD"); v != "" {
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			return d
		}
	}
	return time.Second
}

// TestDistributionKeyRollover runs the procedure of docs/operations.md
// verbatim under load and fails unless its ledger shows no valid token
// refused, no revocation lost and no forged bundle or event accepted.
func TestDistributionKeyRollover(t *testing.T) {
	began := time.Now()
	script := procedure(t)
	d := deploy(t)
	ctx := t.Context()
	r := &run{t0: time.Now(), d: d, l: newLedger(), p: &pool{}}
	var err error
	admin, _, err := r.mint(ctx, d.issuers[0], "admin")
	if err != nil {
		t.Fatal(err)
	}
	r.admin = admin.access
	if r.canary, _, err = r.mint(ctx, d.issuers[1], "service"); err != nil {
		t.Fatal(err)
	}
	if r.canaryAdmin, _, err = r.mint(ctx, d.issuers[1], "admin"); err != nil {
		t.Fatal(err)
	}
	r.canary.canary, r.canaryAdmin.canary = true, true
	r.p.addValid(r.canary)
	r.p.addValid(r.canaryAdmin)

	// The control endpoint behind the procedure's restart_sidecars and
	// restart_issuers.
	ctl := &control{r: r, hold: hold()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: ctl, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { r.minter(loadCtx) })
	wg.Go(func() { r.verifier(loadCtx) })
	wg.Go(func() { r.verifier(loadCtx) })
	wg.Go(func() { r.revoker(loadCtx) })
	defer func() { stopLoad(); wg.Wait() }()
	time.Sleep(ctl.hold)

	// Forgeries before anything changes, then at the start of every
	// restart round.
	if err := ctl.forge(ctx); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "bash", "-c", `set -euo pipefail
restart_sidecars() { curl -fsS -X POST "$CONTROL/restart/sidecars"; }
restart_issuers() { curl -fsS -X POST "$CONTROL/restart/issuers"; }
`+script)
	cmd.Dir = d.dir
	cmd.Env = append(os.Environ(), "KEYS="+d.keys, "OLD="+oldName, "ISSUER_ENV="+d.issuerEnv, "SIDECAR_ENV="+d.sidecarEnv,
		"CONTROL=http://"+ln.Addr().String())
	out, err := testenv.CombinedOutput(cmd)
	t.Logf("procedure output:\n%s", out)
	if err != nil {
		r.report(t, ctl.hold, began)
		t.Fatalf("the procedure failed: %v", err)
	}
	time.Sleep(ctl.hold)
	stopLoad()
	wg.Wait()

	newPub := checkKeys(t, d)
	r.finalSweep(ctx)
	r.checkStream(ctx, newPub)
	r.report(t, ctl.hold, began)

	l := r.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.validRefused+l.revocationsLost+l.forgedBundlesAccepted+l.forgedEventsAccepted+l.errors != 0 {
		t.Fatal("the ledger is not clean")
	}
	revs := 0
	for _, n := range l.revocations {
		revs += n
	}
	if revs < 8 || len(l.revocations) != 4 || l.mixedRotations == 0 || l.restarts != 12 {
		t.Fatalf("the run proved too little: revocations %v, %d rotations while the issuers signed with two keys, %d restarts", l.revocations, l.mixedRotations, l.restarts)
	}
}

// report logs the ledger.
func (r *run) report(t *testing.T, hold time.Duration, began time.Time) {
	t.Helper()
	l := r.l
	l.mu.Lock()
	defer l.mu.Unlock()
	t.Logf("rollover ledger: valid tokens refused %d, revocations lost %d, forged bundles accepted %d, forged events accepted %d, errors %d",
		l.validRefused, l.revocationsLost, l.forgedBundlesAccepted, l.forgedEventsAccepted, l.errors)
	t.Logf("load: %d tokens issued, %d verifications, revocations %v, %d revoked tokens accepted before their revocation arrived (allowed), "+
		"%d revoked tokens checked right after a restart; %d restarts, %d rotations (%d while the issuers signed with two keys); "+
		"forged: %d events (%d drops counted by sidecars), %d bundles (%d rejections counted); hold %s; took %s",
		l.issued.Load(), l.verifications.Load(), l.revocations, l.pendingAccepts.Load(), l.restartChecks, l.restarts, l.rotations,
		l.mixedRotations, l.forgedEvents, l.eventsDropped, l.forgedBundles, l.bundlesRejected, hold, time.Since(began).Round(time.Millisecond))
	for _, s := range l.details {
		t.Log(s)
	}
}

// control restarts the programs for the procedure, the way a service
// manager and a load balancer would: a process leaves the load before its
// SIGTERM and takes it again once /readyz is 200.
type control struct {
	r    *run
	hold time.Duration
	mu   sync.Mutex // one round at a time
}

func (c *control) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var group []*proc
	switch req.URL.Path {
	case "/restart/sidecars":
		group = c.r.d.sidecars
	case "/restart/issuers":
		group = c.r.d.issuers
	default:
		http.NotFound(w, req)
		return
	}
	if err := c.round(req.Context(), group, group[0].name[:len("issuer")] == "issuer"); err != nil {
		c.r.l.fail(&c.r.l.errors, "%s: %v", req.URL.Path, err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	_, _ = fmt.Fprintf(w, "%s done\n", req.URL.Path)
}

func (c *control) forge(ctx context.Context) error {
	if err := c.r.forgeEvents(ctx); err != nil {
		return fmt.Errorf("forged events: %w", err)
	}
	if err := c.r.forgeBundles(ctx); err != nil {
		return fmt.Errorf("forged bundles: %w", err)
	}
	return nil
}

// round injects forgeries, then restarts every process of group one at a
// time. After each issuer restart every issuer rotates once: rotations must
// go on while the issuers sign with two keys.
func (c *control) round(ctx context.Context, group []*proc, issuers bool) error {
	if err := c.forge(ctx); err != nil {
		return err
	}
	for idx, p := range group {
		began := time.Now()
		p.setUp(false)
		if err := p.stop(); err != nil {
			return err
		}
		if err := p.start(); err != nil {
			return err
		}
		if err := c.r.d.waitReady(ctx, p); err != nil {
			return err
		}
		c.r.l.add(&c.r.l.restarts, 1)
		// Ready means every revocation stored before the restart is held.
		_, _, revokedTokens, revokedAdmin := c.r.p.snapshot()
		if issuers {
			revokedTokens = revokedAdmin
		}
		for _, t := range revokedTokens {
			if t.ackAt.Load() < began.UnixNano() {
				c.r.check(ctx, t, p, idx, true)
				c.r.l.add(&c.r.l.restartChecks, 1)
			}
		}
		p.setUp(true)
		if issuers {
			if err := c.rotateAll(ctx); err != nil {
				return err
			}
		}
		time.Sleep(c.hold)
	}
	return nil
}

// rotateAll rotates the keys on demand at every issuer in turn, waiting out
// next_key_not_ready (the propagation delay is 1s): a rotation held for
// good across distribution keys fails the run.
func (c *control) rotateAll(ctx context.Context) error {
	d := c.r.d
	keys := map[string]bool{}
	for _, p := range d.issuers {
		keys[p.envValue("TOKENWARDEN_DISTRIBUTION_KEY_FILE")] = true
	}
	for _, p := range d.issuers {
		deadline := time.Now().Add(20 * time.Second)
		for {
			code, body, err := c.r.post(ctx, p.url+"/admin/v1/keys/rotate", nil, "", "", c.r.admin)
			if err == nil && code == http.StatusOK {
				break
			}
			if err != nil {
				return fmt.Errorf("rotate at %s: %w", p.name, err)
			}
			if code != http.StatusConflict || time.Now().After(deadline) {
				return fmt.Errorf("rotate at %s: %d %s", p.name, code, body)
			}
			// Waiting for the next key's age is normal. Its absence from
			// the bundle is not: every rotation publishes the bundle with
			// the new next key before it answers. An issuer that does not
			// count a bundle the other distribution key signed would say
			// so until its next tick.
			if strings.Contains(string(body), "not in the published bundle") {
				return fmt.Errorf("rotation held at %s (%s): %s", p.name, p.envValue("TOKENWARDEN_DISTRIBUTION_KEY_FILE"), body)
			}
			time.Sleep(100 * time.Millisecond)
		}
		c.r.l.add(&c.r.l.rotations, 1)
		if len(keys) > 1 {
			c.r.l.add(&c.r.l.mixedRotations, 1)
		}
	}
	return nil
}

// checkKeys: the procedure left one key pair, not the old one, and every
// program runs with it alone. It returns the new public key.
func checkKeys(t *testing.T, d *deployment) ed25519.PublicKey {
	t.Helper()
	pubs, _ := filepath.Glob(filepath.Join(d.keys, "*.pub"))
	privs, _ := filepath.Glob(filepath.Join(d.keys, "*.key"))
	if len(pubs) != 1 || len(privs) != 1 || strings.TrimSuffix(pubs[0], ".pub") != strings.TrimSuffix(privs[0], ".key") ||
		filepath.Base(pubs[0]) == oldName+".pub" {
		t.Fatalf("key files after the procedure: %v %v", pubs, privs)
	}
	b, err := os.ReadFile(pubs[0])
	if err != nil {
		t.Fatal(err)
	}
	pub, err := jwks.ParseDistributionPublicKey(string(b))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(privs[0]); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("new private key: %v, mode %v", err, fi.Mode().Perm())
	}
	for _, p := range d.issuers {
		if got := p.envValue("TOKENWARDEN_DISTRIBUTION_KEY_FILE"); got != privs[0] || p.envValue("TOKENWARDEN_TRUSTED_DISTRIBUTION_PUBLIC_KEY_FILE") != "" {
			t.Errorf("%s runs with %q", p.name, p.fileEnv)
		}
	}
	for _, p := range d.sidecars {
		if got := p.envValue("TOKENWARDEN_DISTRIBUTION_PUBLIC_KEY_FILE"); got != pubs[0] {
			t.Errorf("%s trusts %q", p.name, got)
		}
	}
	return pub
}

// finalSweep: every process, now on the new key alone, refuses every
// revoked token (waiting out the propagation of the last revocations) and
// accepts every valid one.
func (r *run) finalSweep(ctx context.Context) {
	validTokens, validAdmin, revokedTokens, revokedAdmin := r.p.snapshot()
	// One deadline for all: a run that lost revocations fails in 15s, not
	// 15s for each.
	deadline := time.Now().Add(15 * time.Second)
	for _, t := range append(revokedTokens, revokedAdmin...) {
		for _, p := range r.targets(t) {
			for {
				code, _, err := r.d.get(ctx, p.url+map[bool]string{false: "/verify", true: "/admin/v1/keys"}[t.admin], t.access)
				if err == nil && code == http.StatusUnauthorized {
					break
				}
				if time.Now().After(deadline) {
					r.l.fail(&r.l.revocationsLost, "final sweep: %s still accepts %s token %s revoked by %s (%d %v)", p.name, kindOf(t), t.jti, t.method, code, err)
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	for _, t := range append(validTokens, validAdmin...) {
		for idx, p := range r.targets(t) {
			r.check(ctx, t, p, idx, false)
		}
	}
}

// checkStream reads the stream as a verifier that trusts only the old key
// and as one that trusts only the new key: every event the old key signed
// must be there signed by the new key too, or a sidecar started after the
// rollover would lose it.
func (r *run) checkStream(ctx context.Context, newPub ed25519.PublicKey) {
	read := func(pub ed25519.PublicKey) map[string]bool {
		set := revocation.NewSet()
		c := revocation.NewConsumer(r.d.js, prefix, []ed25519.PublicKey{pub}, set, revocation.WithLiveSubscription(false),
			revocation.WithLogger(slog.New(slog.DiscardHandler))) // it drops the other key's events, by design
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = c.Run(cctx) }()
		defer func() { cancel(); <-done }()
		deadline := time.Now().Add(30 * time.Second)
		for !c.CaughtUp() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		ids := map[string]bool{}
		for _, e := range set.Events() {
			ids[e.ID] = true
		}
		return ids
	}
	oldIDs, newIDs := read(r.d.oldPub), read(newPub)
	if len(oldIDs) == 0 {
		r.l.fail(&r.l.errors, "the stream holds no event of the old key: the run proved nothing")
	}
	for id := range oldIDs {
		if !newIDs[id] {
			r.l.fail(&r.l.revocationsLost, "event %s is in the stream signed by the old key only", id)
		}
	}
	if err := r.bundleVerifies(ctx, newPub); err != nil {
		r.l.fail(&r.l.revocationsLost, "the bundle does not verify with the new key alone: %v", err)
	}
}

func (r *run) bundleVerifies(ctx context.Context, pub ed25519.PublicKey) error {
	kv, err := r.d.js.KeyValue(ctx, prefix+"_jwks")
	if err != nil {
		return err
	}
	e, err := kv.Get(ctx, "current")
	if err != nil {
		return err
	}
	_, err = jwks.VerifyBundle(e.Value(), []ed25519.PublicKey{pub})
	return err
}
