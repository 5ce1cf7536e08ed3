package chaos

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// This file is the load driver and its ledger. The driver logs users in,
// refreshes, verifies through every sidecar, rotates keys and revokes,
// while the scenarios inject faults. The ledger records every answer that
// matters and decides, at the end, whether anything was let in, lost or
// wrongly refused.

// ---- tokens and sessions ----

type claims struct {
	JTI      string `json:"jti"`
	SID      string `json:"sid"`
	Sub      string `json:"sub"`
	ClientID string `json:"client_id"`
	IAT      int64  `json:"iat"`
	Exp      int64  `json:"exp"`
}

// token is an access token the driver holds.
type token struct {
	raw string
	claims
	kid string
}

func parseToken(raw string) (*token, error) {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return nil, errors.New("not a compact JWS")
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	pb, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	var h struct {
		Kid string `json:"kid"`
	}
	t := &token{raw: raw}
	if err := json.Unmarshal(hb, &h); err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	if err := json.Unmarshal(pb, &t.claims); err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	t.kid = h.Kid
	return t, nil
}

// expiresSoon: the token may be refused as expired by the time an answer
// comes (exp is whole seconds; a margin covers the request itself).
func (t *token) expiresSoon(at time.Time) bool {
	return !at.Add(500 * time.Millisecond).Before(time.Unix(t.Exp, 0))
}

// session is one login with a refresh-token family. Only the goroutine
// holding busy may use its refresh token.
type session struct {
	client  string
	user    string
	sid     string
	busy    sync.Mutex
	refresh string // guarded by busy
	dead    atomic.Bool
	last    atomic.Pointer[token]
}

// ---- the ledger ----

type violation struct {
	kind     string
	scenario string
	at       time.Time
	detail   string
}

// Violation kinds: each must be 0 at the end.
const (
	vValidRejected   = "valid tokens rejected"
	vRevokedAccepted = "revoked tokens accepted after applied"
	vNeverApplied    = "acknowledged revocations never applied"
	vTwoSuccessors   = "refresh families with two live successors"
	vReadyzLied      = "untruthful /readyz"
	vCrash           = "crashed processes"
	vForgedAccepted  = "forged tokens accepted after applied"
)

var violationKinds = []string{vValidRejected, vRevokedAccepted, vForgedAccepted, vNeverApplied, vTwoSuccessors, vReadyzLied, vCrash}

// revocationRec is one revocation the driver made and saw acknowledged.
type revocationRec struct {
	n       int
	kind    string // admin-jti, admin-sid, admin-sub, admin-client, logout, rfc7009, reuse
	eventID string // for admin revocations
	probe   *token // a token it revokes
	ackedAt time.Time

	mu      sync.Mutex
	applied map[int]refusal // sidecar -> its first refusal of the probe as revoked
}

// refusal is when a sidecar was first seen refusing a probe as revoked:
// in which incarnation, and when that answer had come back. The sidecar
// had applied the revocation by then (its set only grows), so a request
// sent later must be refused; one sent earlier may have been verified
// before the event arrived, even if its answer comes back after.
type refusal struct {
	inc      int
	answered time.Time
}

func (r *revocationRec) appliedAt(sc, inc int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applied[sc].inc == inc
}

// markApplied records a refusal answered at answered; it reports whether
// it is the first in incarnation inc. Concurrent probes may record out of
// order: the earliest answer is kept.
func (r *revocationRec) markApplied(sc, inc int, answered time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if old := r.applied[sc]; old.inc == inc {
		if answered.Before(old.answered) {
			r.applied[sc] = refusal{inc: inc, answered: answered}
		}
		return false
	}
	r.applied[sc] = refusal{inc: inc, answered: answered}
	return true
}

// refusedBefore reports whether sidecar sc, in incarnation inc, had
// answered a probe of r with a refusal as revoked before sent, and when.
func (r *revocationRec) refusedBefore(sc, inc int, sent time.Time) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, ok := r.applied[sc]
	return old.answered, ok && old.inc == inc && old.answered.Before(sent)
}

// latencies keeps durations for percentiles.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *latencies) summary() string {
	l.mu.Lock()
	d := slices.Clone(l.d)
	l.mu.Unlock()
	if len(d) == 0 {
		return "n=0"
	}
	slices.Sort(d)
	pct := func(p float64) time.Duration { return d[min(len(d)-1, int(p*float64(len(d))))] }
	r := func(x time.Duration) string { return x.Round(10 * time.Microsecond).String() }
	return fmt.Sprintf("n=%d p50=%s p99=%s max=%s", len(d), r(pct(0.5)), r(pct(0.99)), r(d[len(d)-1]))
}

type ledger struct {
	mu         sync.Mutex
	scenario   string
	violations []violation

	// taints: what a revocation was attempted for, set before the request
	// goes out, so that a rejection it causes is never taken for a wrong
	// one.
	taintJTI    map[string]bool
	taintSID    map[string]bool
	taintSub    map[string]bool
	taintClient map[string]int64 // client -> issued_before (unix s)
	taintKID    map[string]bool  // signing keys revoked (the leaked-key scenario)
	// recovering: a key activated by the revocation of the active key may
	// be refused as unknown until this time (see keyRecoveryWindow).
	recovering map[string]time.Time

	revs []*revocationRec

	verified, accepted, rejectedRevoked, rejectedExpired, rejectedExcused, noAnswer atomic.Int64
	rejectedPartitioned, rejectedRecovering                                         atomic.Int64
	revokedChecks, revokedBeforeApplied, revokedOverlapping                         atomic.Int64
	logins, refreshes, tokenUnavailable, tokenErrors                                atomic.Int64
	rotations, rotationConflicts, rotationErrors                                    atomic.Int64
	revokeUnacked                                                                   atomic.Int64
	reusePairs, reuseDetected                                                       atomic.Int64
	byCode                                                                          sync.Map // "endpoint status" -> *atomic.Int64

	verifyLat, tokenLat, revokeLat, propagation latencies
}

func newLedger() *ledger {
	return &ledger{taintJTI: map[string]bool{}, taintSID: map[string]bool{}, taintSub: map[string]bool{}, taintClient: map[string]int64{},
		taintKID: map[string]bool{}, recovering: map[string]time.Time{}}
}

func (l *ledger) setScenario(s string) {
	l.mu.Lock()
	l.scenario = s
	l.mu.Unlock()
}

func (l *ledger) violate(t *testing.T, kind, format string, a ...any) {
	l.mu.Lock()
	v := violation{kind: kind, scenario: l.scenario, at: time.Now(), detail: fmt.Sprintf(format, a...)}
	l.violations = append(l.violations, v)
	n := 0
	for _, o := range l.violations {
		if o.kind == kind {
			n++
		}
	}
	l.mu.Unlock()
	// The first few of each kind tell the story; a flood would bury it.
	if n <= 10 {
		t.Logf("VIOLATION [%s] %s: %s", v.scenario, kind, v.detail)
	} else if n == 11 {
		t.Logf("VIOLATION [%s] %s: more, not logged", v.scenario, kind)
	}
}

func (l *ledger) count(what string) {
	c, _ := l.byCode.LoadOrStore(what, new(atomic.Int64))
	c.(*atomic.Int64).Add(1)
}

func (l *ledger) taint(kind, value string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch kind {
	case "jti":
		l.taintJTI[value] = true
	case "sid":
		l.taintSID[value] = true
	case "sub":
		l.taintSub[value] = true
	case "kid":
		l.taintKID[value] = true
	}
}

// recover excuses "unknown key" refusals of tokens of kid until until.
func (l *ledger) recover(kid string, until time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recovering[kid] = until
}

// inRecovery reports whether a refusal of a token of kid, asked at at,
// falls in the recovery window of its activation.
func (l *ledger) inRecovery(kid string, at time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	until, ok := l.recovering[kid]
	return ok && at.Before(until)
}

func (l *ledger) taintClientBefore(client string, before int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.taintClient[client] = max(l.taintClient[client], before)
}

func (l *ledger) tainted(t *token) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.taintJTI[t.JTI] || (t.SID != "" && l.taintSID[t.SID]) || l.taintSub[t.Sub] || l.taintKID[t.kid] {
		return true
	}
	b, ok := l.taintClient[t.ClientID]
	return ok && t.IAT <= b
}

func (l *ledger) addRevocation(r *revocationRec) {
	l.mu.Lock()
	r.n = len(l.revs) + 1
	r.applied = map[int]refusal{}
	l.revs = append(l.revs, r)
	l.mu.Unlock()
}

// liveRevocations are the acknowledged revocations whose probe token has
// not expired: a sidecar can show whether it applied them.
func (l *ledger) liveRevocations(at time.Time) []*revocationRec {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*revocationRec
	for _, r := range l.revs {
		if !r.probe.expiresSoon(at.Add(time.Second)) {
			out = append(out, r)
		}
	}
	return out
}

func (l *ledger) counts() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := map[string]int{}
	for _, k := range violationKinds {
		m[k] = 0
	}
	for _, v := range l.violations {
		m[v.kind]++
	}
	return m
}

// ---- readiness tracking ----

// readiness is what the poller last saw of one process's /readyz.
type readiness struct {
	mu           sync.Mutex
	ready        bool
	incarnation  int
	lastNotReady time.Time
	seen         time.Time
}

func (r *readiness) set(ready bool, inc int, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if inc != r.incarnation {
		r.incarnation, r.ready = inc, false
	}
	r.ready, r.seen = ready, at
	if !ready {
		r.lastNotReady = at
	}
}

// readyThrough reports whether the process was seen ready (in incarnation
// inc) before from and has not been seen unready since.
func (r *readiness) readyThrough(inc int, from time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.incarnation == inc && r.ready && r.lastNotReady.Before(from.Add(-150*time.Millisecond))
}

// ---- the driver ----

type driver struct {
	t   *testing.T
	d   *deployment
	set settings
	l   *ledger

	hc *http.Client

	mu       sync.Mutex
	pool     []*token // valid (untainted when added) tokens for the verify loop
	sessions []*session
	batch    []*token // client_credentials tokens of client batch
	victims  atomic.Int64

	scReady []*readiness
	isReady []*readiness

	// rotatorPaused stops background rotations while a scenario times its
	// own.
	rotatorPaused atomic.Bool
	revokerPaused atomic.Bool
	// rotationHold (unix ns): no rotation before it. See watchRecovery.
	rotationHold atomic.Int64

	adminMu  sync.Mutex
	adminTok string
	adminExp time.Time

	// partitions: windows in which a sidecar could not reach any NATS
	// node (its only node was down), plus a grace after.
	partMu     sync.Mutex
	partitions map[int][][2]time.Time

	ctx    context.Context // the load's; followers of revocations live in it
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

const partitionGrace = 2 * time.Second

func (drv *driver) partitionStart(i int) {
	drv.partMu.Lock()
	defer drv.partMu.Unlock()
	drv.partitions[i] = append(drv.partitions[i], [2]time.Time{time.Now()})
}

func (drv *driver) partitionEnd(i int) {
	drv.partMu.Lock()
	defer drv.partMu.Unlock()
	if w := drv.partitions[i]; len(w) > 0 && w[len(w)-1][1].IsZero() {
		w[len(w)-1][1] = time.Now()
	}
}

// partitioned reports whether sidecar i was cut off from NATS at (or just
// before) at.
func (drv *driver) partitioned(i int, at time.Time) bool {
	drv.partMu.Lock()
	defer drv.partMu.Unlock()
	for _, w := range drv.partitions[i] {
		if !at.Before(w[0]) && (w[1].IsZero() || at.Before(w[1].Add(partitionGrace))) {
			return true
		}
	}
	return false
}

func newDriver(t *testing.T, d *deployment, s settings) *driver {
	drv := &driver{t: t, d: d, set: s, l: newLedger(), partitions: map[int][][2]time.Time{},
		hc: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32, IdleConnTimeout: 30 * time.Second}}}
	for range d.sidecars {
		drv.scReady = append(drv.scReady, &readiness{})
	}
	for range d.issuers {
		drv.isReady = append(drv.isReady, &readiness{})
	}
	return drv
}

// start runs the load until stop.
func (drv *driver) start() {
	ctx, cancel := context.WithCancel(context.Background())
	drv.ctx, drv.cancel = ctx, cancel
	loops := []func(context.Context){drv.pollReadiness, drv.loginLoop, drv.refreshLoop,
		drv.verifyLoop, drv.verifyLoop, drv.verifyLoop, drv.revokedLoop, drv.revokeLoop, drv.rotateLoop}
	for _, f := range loops {
		drv.wg.Go(func() { f(ctx) })
	}
}

func (drv *driver) stop() {
	drv.cancel()
	drv.wg.Wait()
}

func every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

func (drv *driver) pollReadiness(ctx context.Context) {
	every(ctx, 100*time.Millisecond, func() {
		var wg sync.WaitGroup
		for i, sc := range drv.d.sidecars {
			wg.Go(func() {
				inc := sc.proc.Incarnation()
				if !sc.proc.running() {
					drv.scReady[i].set(false, inc, time.Now())
					return
				}
				drv.scReady[i].set(status(ctx, sc.url+"/readyz") == 200, inc, time.Now())
			})
		}
		for i, is := range drv.d.issuers {
			wg.Go(func() {
				inc := is.proc.Incarnation()
				drv.isReady[i].set(is.proc.running() && status(ctx, is.url+"/readyz") == 200, inc, time.Now())
			})
		}
		wg.Wait()
	})
}

// issuer picks a running issuer (any, if none runs).
func (drv *driver) issuer() *issuerProc {
	var up []*issuerProc
	for _, is := range drv.d.issuers {
		if is.proc.running() {
			up = append(up, is)
		}
	}
	if len(up) == 0 {
		return drv.d.issuers[rand.N(len(drv.d.issuers))]
	}
	return up[rand.N(len(up))]
}

// tokenResponse is the issuer's answer to /oauth2/token.
type tokenResponse struct {
	AccessToken      string `json:"access_token"`
	RefreshToken     string `json:"refresh_token"`
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
}

// postForm sends a token-endpoint style request; code 0 means no answer.
func (drv *driver) postForm(ctx context.Context, base, path, client string, form url.Values, lat *latencies) (int, *tokenResponse) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, strings.NewReader(form.Encode()))
	if err != nil {
		return 0, nil
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(client, "secret")
	start := time.Now()
	resp, err := drv.hc.Do(req)
	if err != nil {
		return 0, nil
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil
	}
	if lat != nil {
		lat.add(time.Since(start))
	}
	drv.l.count(fmt.Sprintf("%s %d", path, resp.StatusCode))
	var tr tokenResponse
	_ = json.Unmarshal(body, &tr)
	return resp.StatusCode, &tr
}

func (drv *driver) grant(ctx context.Context, is *issuerProc, client string, form url.Values) (int, *tokenResponse, *token) {
	code, tr := drv.postForm(ctx, is.url, "/oauth2/token", client, form, &drv.l.tokenLat)
	switch code {
	case 200:
		tok, err := parseToken(tr.AccessToken)
		if err != nil {
			drv.t.Errorf("issuer %d gave an unparseable token: %v", is.i, err)
			return 0, tr, nil
		}
		return code, tr, tok
	case 0, 503:
		drv.l.tokenUnavailable.Add(1)
	default:
		if tr == nil || tr.Error != "invalid_grant" {
			drv.l.tokenErrors.Add(1)
		}
	}
	return code, tr, nil
}

// login is a password grant; it returns the session and its token.
func (drv *driver) login(ctx context.Context, client, user string) (*session, *token) {
	code, tr, tok := drv.grant(ctx, drv.issuer(), client, url.Values{"grant_type": {"password"}, "username": {user}, "password": {password}})
	if code != 200 || tok == nil {
		return nil, nil
	}
	drv.l.logins.Add(1)
	s := &session{client: client, user: user, sid: tok.SID, refresh: tr.RefreshToken}
	s.last.Store(tok)
	return s, tok
}

func (drv *driver) addToken(tok *token) {
	drv.mu.Lock()
	defer drv.mu.Unlock()
	drv.pool = append(drv.pool, tok)
	// Keep the pool fresh and small: drop expired tokens.
	if len(drv.pool) > 400 {
		now := time.Now()
		drv.pool = slices.DeleteFunc(drv.pool, func(t *token) bool { return t.expiresSoon(now) || drv.l.tainted(t) })
		if len(drv.pool) > 400 {
			drv.pool = drv.pool[len(drv.pool)-300:]
		}
	}
}

func (drv *driver) loginLoop(ctx context.Context) {
	// A password login costs argon2id (tens of ms of CPU): a few a second.
	every(ctx, 150*time.Millisecond, func() {
		client := "web"
		if rand.N(4) == 0 {
			client = "short"
		}
		if rand.N(6) == 0 {
			code, _, tok := drv.grant(ctx, drv.issuer(), "batch", url.Values{"grant_type": {"client_credentials"}})
			if code == 200 {
				drv.mu.Lock()
				drv.batch = append(drv.batch, tok)
				if len(drv.batch) > 50 {
					drv.batch = drv.batch[len(drv.batch)-50:]
				}
				drv.mu.Unlock()
				drv.addToken(tok)
			}
			return
		}
		s, tok := drv.login(ctx, client, cleanUser(rand.N(cleanUsers)))
		if s == nil {
			return
		}
		drv.mu.Lock()
		drv.sessions = append(drv.sessions, s)
		if len(drv.sessions) > 300 {
			drv.sessions = drv.sessions[len(drv.sessions)-200:]
		}
		drv.mu.Unlock()
		drv.addToken(tok)
	})
}

// takeSession returns a live session whose refresh token nobody else uses
// (busy held), or nil.
func (drv *driver) takeSession(client string) *session {
	drv.mu.Lock()
	defer drv.mu.Unlock()
	for range 10 {
		if len(drv.sessions) == 0 {
			return nil
		}
		s := drv.sessions[rand.N(len(drv.sessions))]
		if (client != "" && s.client != client) || s.dead.Load() {
			continue
		}
		if s.busy.TryLock() {
			if s.dead.Load() {
				s.busy.Unlock()
				continue
			}
			return s
		}
	}
	return nil
}

// refresh rotates s's refresh token once. An answer that does not say
// what happened (no answer, 5xx) leaves the family in an unknown state:
// the session is given up (and tainted, since presenting the old token
// again would be reuse).
func (drv *driver) refresh(ctx context.Context, s *session) {
	code, tr, tok := drv.grant(ctx, drv.issuer(), s.client, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {s.refresh}})
	switch {
	case code == 200:
		drv.l.refreshes.Add(1)
		s.refresh = tr.RefreshToken
		s.last.Store(tok)
		drv.addToken(tok)
	case code == 400 && tr != nil && tr.Error == "invalid_grant":
		// A session revoked by a scenario, or expired: not reusable.
		s.dead.Store(true)
	default:
		drv.l.taint("sid", s.sid)
		s.dead.Store(true)
	}
}

func (drv *driver) refreshLoop(ctx context.Context) {
	every(ctx, 100*time.Millisecond, func() {
		s := drv.takeSession("")
		if s == nil {
			return
		}
		defer s.busy.Unlock()
		drv.refresh(ctx, s)
	})
}

// verify calls /verify at sidecar i; it returns the status (0: no
// answer) and the error description.
func (drv *driver) verify(ctx context.Context, i int, raw string) (int, string) {
	sc := drv.d.sidecars[i]
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, sc.url+"/verify/orders", nil)
	if err != nil {
		return 0, ""
	}
	req.Header.Set("Authorization", "Bearer "+raw)
	start := time.Now()
	resp, err := drv.hc.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	drv.l.verifyLat.add(time.Since(start))
	desc := resp.Header.Get("WWW-Authenticate")
	if _, d, ok := strings.Cut(desc, `error_description="`); ok {
		desc, _, _ = strings.Cut(d, `"`)
	}
	return resp.StatusCode, desc
}

func (drv *driver) pickToken() *token {
	drv.mu.Lock()
	defer drv.mu.Unlock()
	now := time.Now()
	for range 8 {
		if len(drv.pool) == 0 {
			return nil
		}
		t := drv.pool[rand.N(len(drv.pool))]
		if !t.expiresSoon(now.Add(time.Second)) && !drv.l.tainted(t) {
			return t
		}
	}
	return nil
}

func (drv *driver) runningSidecar() int {
	for range 20 {
		i := rand.N(len(drv.d.sidecars))
		if drv.d.sidecars[i].proc.running() {
			return i
		}
	}
	return -1
}

// checkValid verifies a token the driver believes valid at sidecar i and
// judges the answer.
func (drv *driver) checkValid(ctx context.Context, i int, tok *token) {
	sc := drv.d.sidecars[i]
	inc := sc.proc.Incarnation()
	start := time.Now()
	code, desc := drv.verify(ctx, i, tok.raw)
	drv.l.verified.Add(1)
	switch {
	case code == 200:
		drv.l.accepted.Add(1)
	case code == 0:
		drv.l.noAnswer.Add(1)
	case drv.l.tainted(tok):
		drv.l.rejectedRevoked.Add(1)
	case time.Now().Unix() >= tok.Exp:
		drv.l.rejectedExpired.Add(1)
	case strings.Contains(desc, "unknown key") && drv.partitioned(i, start):
		// Documented: a sidecar cut off from NATS misses keys published
		// meanwhile, and refuses tokens they sign once they sign.
		drv.l.rejectedPartitioned.Add(1)
	case strings.Contains(desc, "unknown key") && drv.l.inRecovery(tok.kid, start):
		// A key made to sign at once by the revocation of the active
		// key, before its bundle reached this sidecar.
		drv.l.rejectedRecovering.Add(1)
	case !drv.scReady[i].readyThrough(inc, start) || sc.proc.Incarnation() != inc || status(ctx, sc.url+"/readyz") != 200:
		// The documented window: a sidecar that is not ready may refuse.
		drv.l.rejectedExcused.Add(1)
	default:
		diag := ""
		if strings.Contains(desc, "unknown key") {
			diag = "; " + kidDiagnosis(ctx, drv.d, i, tok.kid)
		}
		drv.l.violate(drv.t, vValidRejected, "sidecar-%d (incarnation %d) answered %d %q at %s for a valid token (client %s, sub %s, iat %s, kid %s)%s",
			i, inc, code, desc, time.Now().UTC().Format("15:04:05.000"), tok.ClientID, tok.Sub, time.Unix(tok.IAT, 0).UTC().Format("15:04:05"), tok.kid, diag)
	}
}

func (drv *driver) verifyLoop(ctx context.Context) {
	every(ctx, 10*time.Millisecond, func() {
		tok := drv.pickToken()
		if tok == nil {
			return
		}
		if rand.N(25) == 0 {
			// Now and then through every sidecar at once.
			var wg sync.WaitGroup
			for i, sc := range drv.d.sidecars {
				if sc.proc.running() {
					wg.Go(func() { drv.checkValid(ctx, i, tok) })
				}
			}
			wg.Wait()
			return
		}
		if i := drv.runningSidecar(); i >= 0 {
			drv.checkValid(ctx, i, tok)
		}
	})
}

// checkRevoked verifies the probe of r at sidecar i and judges the answer:
// a rejection as revoked marks r applied there; acceptance of a request
// sent after such a rejection had come back, or by a ready sidecar started
// after the acknowledgement, is a violation. Probes of one revocation at
// one sidecar overlap (its follower, the revoked loop, the sweeps): an
// acceptance that comes back after another probe's rejection, but was
// asked for before that rejection came back, may have been verified
// before the event arrived, and is not one.
// It reports whether the sidecar rejected the token as revoked.
func (drv *driver) checkRevoked(ctx context.Context, i int, r *revocationRec, why string) bool {
	sc := drv.d.sidecars[i]
	inc := sc.proc.Incarnation()
	started := sc.proc.Started()
	start := time.Now()
	code, desc := drv.verify(ctx, i, r.probe.raw)
	answered := time.Now()
	drv.l.revokedChecks.Add(1)
	if code == 401 && strings.Contains(desc, "revoked") {
		if r.markApplied(i, inc, answered) {
			drv.l.propagation.add(answered.Sub(r.ackedAt))
		}
		return true
	}
	if code != 200 {
		return false
	}
	if refused, ok := r.refusedBefore(i, inc, start); ok {
		drv.l.violate(drv.t, vRevokedAccepted, "sidecar-%d (incarnation %d) accepted the probe of revocation #%d (%s) asked %s after an answer rejecting it as revoked had come back (%s)",
			i, inc, r.n, r.kind, start.Sub(refused).Round(time.Microsecond), why)
		return false
	}
	switch {
	case started.After(r.ackedAt) && drv.scReady[i].readyThrough(inc, start) && sc.proc.Incarnation() == inc &&
		status(ctx, sc.url+"/readyz") == 200:
		drv.l.violate(drv.t, vReadyzLied, "sidecar-%d (incarnation %d, started after revocation #%d %s was acknowledged) is ready but accepted its probe (%s)",
			i, inc, r.n, r.kind, why)
	case r.appliedAt(i, inc):
		// Asked before another probe's rejection came back: the two
		// were in flight together.
		drv.l.revokedOverlapping.Add(1)
		drv.l.revokedBeforeApplied.Add(1)
	default:
		drv.l.revokedBeforeApplied.Add(1)
	}
	return false
}

func (drv *driver) revokedLoop(ctx context.Context) {
	every(ctx, 20*time.Millisecond, func() {
		live := drv.l.liveRevocations(time.Now())
		if len(live) == 0 {
			return
		}
		if i := drv.runningSidecar(); i >= 0 {
			drv.checkRevoked(ctx, i, live[rand.N(len(live))], "revoked loop")
		}
	})
}

// follow probes r at every running sidecar until each has applied it (or
// its probe expires), measuring propagation.
func (drv *driver) follow(r *revocationRec) {
	ctx := drv.ctx
	drv.wg.Go(func() {
		wait := 20 * time.Millisecond
		for {
			if r.probe.expiresSoon(time.Now()) {
				return
			}
			all := true
			for i, sc := range drv.d.sidecars {
				if !sc.proc.running() {
					all = false
					continue
				}
				if !r.appliedAt(i, sc.proc.Incarnation()) && !drv.checkRevoked(ctx, i, r, "follow") {
					all = false
				}
			}
			if all {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			// A sidecar that is down or cut off is asked less often.
			wait = min(wait*3/2, 500*time.Millisecond)
		}
	})
}

// ---- admin API ----

func (drv *driver) adminToken(ctx context.Context) (string, error) {
	drv.adminMu.Lock()
	defer drv.adminMu.Unlock()
	if drv.adminTok != "" && time.Until(drv.adminExp) > time.Minute {
		return drv.adminTok, nil
	}
	var err error
	for _, is := range drv.d.issuers {
		code, tr := drv.postForm(ctx, is.url, "/oauth2/token", "admin", url.Values{"grant_type": {"client_credentials"}, "scope": {"tokenwarden:admin"}}, nil)
		if code == 200 {
			tok, perr := parseToken(tr.AccessToken)
			if perr != nil {
				return "", perr
			}
			drv.adminTok, drv.adminExp = tr.AccessToken, time.Unix(tok.Exp, 0)
			return drv.adminTok, nil
		}
		err = fmt.Errorf("admin token from issuer-%d: %d", is.i, code)
	}
	return "", err
}

// admin calls the admin API at is; code 0 means no answer. A 401 drops
// the cached admin token and tries once more: the key that signed it may
// have been revoked (the leaked-key scenario).
func (drv *driver) admin(ctx context.Context, is *issuerProc, method, path string, body any) (int, []byte) {
	code, b := drv.adminOnce(ctx, is, method, path, body)
	if code == http.StatusUnauthorized {
		drv.adminMu.Lock()
		drv.adminTok = ""
		drv.adminMu.Unlock()
		code, b = drv.adminOnce(ctx, is, method, path, body)
	}
	return code, b
}

func (drv *driver) adminOnce(ctx context.Context, is *issuerProc, method, path string, body any) (int, []byte) {
	tok, err := drv.adminToken(ctx)
	if err != nil {
		return 0, nil
	}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, is.url+path, rd)
	if err != nil {
		return 0, nil
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := drv.hc.Do(req)
	if err != nil {
		return 0, nil
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	label := path
	if strings.HasPrefix(path, "/admin/v1/keys/") && strings.HasSuffix(path, "/revoke") {
		label = "/admin/v1/keys/{kid}/revoke" // one line for every key revoked
	}
	drv.l.count(fmt.Sprintf("%s %s %d", method, label, resp.StatusCode))
	return resp.StatusCode, b
}

// adminRevoke posts a revocation; it returns the event id once stored
// (201), else "".
func (drv *driver) adminRevoke(ctx context.Context, is *issuerProc, kind, value string, issuedBefore *time.Time) string {
	body := map[string]any{"kind": kind, "value": value, "reason": "chaos"}
	if issuedBefore != nil {
		body["issued_before"] = issuedBefore.UTC().Format(time.RFC3339)
	}
	start := time.Now()
	code, b := drv.admin(ctx, is, http.MethodPost, "/admin/v1/revocations", body)
	if code != 201 {
		drv.l.revokeUnacked.Add(1)
		return ""
	}
	drv.l.revokeLat.add(time.Since(start))
	var ev struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(b, &ev); err != nil || ev.ID == "" {
		drv.t.Errorf("201 without an event id: %s", b)
		return ""
	}
	return ev.ID
}

// ---- revocations ----

// acked records an acknowledged revocation and starts following it.
func (drv *driver) acked(_ context.Context, kind, id string, probe *token) *revocationRec {
	r := &revocationRec{kind: kind, eventID: id, probe: probe, ackedAt: time.Now()}
	drv.l.addRevocation(r)
	drv.follow(r)
	return r
}

// revokeOnce makes one revocation of a random kind.
func (drv *driver) revokeOnce(ctx context.Context) {
	switch n := rand.N(20); {
	case n < 4:
		drv.revokeAdminJTI(ctx)
	case n < 7:
		drv.revokeAdminSID(ctx)
	case n < 10:
		drv.revokeSub(ctx)
	case n < 11:
		drv.revokeClient(ctx)
	case n < 14:
		drv.logout(ctx)
	case n < 17:
		drv.revokeAccess(ctx, "")
	default:
		drv.reusePair(ctx)
	}
}

func (drv *driver) revokeLoop(ctx context.Context) {
	every(ctx, 250*time.Millisecond, func() {
		if !drv.revokerPaused.Load() {
			drv.revokeOnce(ctx)
		}
	})
}

func (drv *driver) revokeAdminJTI(ctx context.Context) {
	tok := drv.pickToken()
	if tok == nil || tok.ClientID == "batch" {
		return
	}
	drv.l.taint("jti", tok.JTI)
	if id := drv.adminRevoke(ctx, drv.issuer(), "jti", tok.JTI, nil); id != "" {
		drv.acked(ctx, "admin-jti", id, tok)
	}
}

func (drv *driver) revokeAdminSID(ctx context.Context) *revocationRec {
	s := drv.takeSession("web")
	if s == nil {
		return nil
	}
	defer s.busy.Unlock()
	s.dead.Store(true)
	drv.l.taint("sid", s.sid)
	if id := drv.adminRevoke(ctx, drv.issuer(), "sid", s.sid, nil); id != "" {
		return drv.acked(ctx, "admin-sid", id, s.last.Load())
	}
	return nil
}

func (drv *driver) revokeSub(ctx context.Context) {
	n := int(drv.victims.Add(1))
	if n >= victimUsers {
		return
	}
	user := victimUser(n)
	s, tok := drv.login(ctx, "web", user)
	if s == nil {
		return
	}
	drv.addToken(tok)
	s.dead.Store(true)
	drv.l.taint("sub", user)
	if id := drv.adminRevoke(ctx, drv.issuer(), "sub", user, nil); id != "" {
		drv.acked(ctx, "admin-sub", id, tok)
	}
}

func (drv *driver) revokeClient(ctx context.Context) {
	drv.mu.Lock()
	var probe *token
	for _, t := range slices.Backward(drv.batch) {
		if !t.expiresSoon(time.Now().Add(time.Minute)) && !drv.l.tainted(t) {
			probe = t
			break
		}
	}
	drv.mu.Unlock()
	if probe == nil {
		return
	}
	before := time.Now().Truncate(time.Second)
	drv.l.taintClientBefore("batch", before.Unix())
	if id := drv.adminRevoke(ctx, drv.issuer(), "client", "batch", &before); id != "" {
		drv.acked(ctx, "admin-client", id, probe)
	}
}

// logout is RFC 7009 with the refresh token: the session ends.
func (drv *driver) logout(ctx context.Context) {
	s := drv.takeSession("")
	if s == nil {
		return
	}
	defer s.busy.Unlock()
	s.dead.Store(true)
	drv.l.taint("sid", s.sid)
	start := time.Now()
	code, _ := drv.postForm(ctx, drv.issuer().url, "/oauth2/revoke", s.client, url.Values{"token": {s.refresh}}, nil)
	if code != 200 {
		drv.l.revokeUnacked.Add(1)
		return
	}
	drv.l.revokeLat.add(time.Since(start))
	drv.acked(ctx, "logout", "", s.last.Load())
}

// revokeAccess is RFC 7009 with an access token of client (any if ""):
// a jti event kept until the token's exp + leeway.
func (drv *driver) revokeAccess(ctx context.Context, client string) *revocationRec {
	var tok *token
	for range 10 {
		if t := drv.pickToken(); t != nil && t.ClientID != "batch" && (client == "" || t.ClientID == client) {
			tok = t
			break
		}
	}
	if tok == nil {
		return nil
	}
	return drv.revokeAccessToken(ctx, tok)
}

func (drv *driver) revokeAccessToken(ctx context.Context, tok *token) *revocationRec {
	drv.l.taint("jti", tok.JTI)
	start := time.Now()
	code, _ := drv.postForm(ctx, drv.issuer().url, "/oauth2/revoke", tok.ClientID, url.Values{"token": {tok.raw}}, nil)
	if code != 200 {
		drv.l.revokeUnacked.Add(1)
		return nil
	}
	drv.l.revokeLat.add(time.Since(start))
	return drv.acked(ctx, "rfc7009", "", tok)
}

// reusePair presents one refresh token twice at once (to both issuers):
// at most one may succeed, and once reuse was detected the family is dead.
func (drv *driver) reusePair(ctx context.Context) {
	s := drv.takeSession("web")
	if s == nil {
		return
	}
	defer s.busy.Unlock()
	s.dead.Store(true)
	drv.l.taint("sid", s.sid)
	drv.l.reusePairs.Add(1)
	type answer struct {
		code int
		tr   *tokenResponse
		tok  *token
	}
	var answers [2]answer
	var wg sync.WaitGroup
	for k := range 2 {
		is := drv.d.issuers[k%len(drv.d.issuers)]
		wg.Go(func() {
			code, tr, tok := drv.grant(ctx, is, s.client, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {s.refresh}})
			answers[k] = answer{code, tr, tok}
		})
	}
	wg.Wait()
	ok, reuse := 0, false
	var winner *answer
	for k := range answers {
		a := &answers[k]
		if a.code == 200 {
			ok++
			winner = a
		}
		if a.code == 400 && a.tr != nil && strings.Contains(a.tr.ErrorDescription, "already used") {
			reuse = true
		}
	}
	if ok == 2 {
		drv.l.violate(drv.t, vTwoSuccessors, "both presentations of one refresh token succeeded (session %s)", s.sid)
		return
	}
	if !reuse {
		return // an issuer was unavailable: nothing was decided
	}
	drv.l.reuseDetected.Add(1)
	probe := s.last.Load()
	if winner != nil {
		probe = winner.tok
		// The successor of a reused token must be dead too.
		code, tr, _ := drv.grant(ctx, drv.issuer(), s.client, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {winner.tr.RefreshToken}})
		if code == 200 {
			drv.l.violate(drv.t, vTwoSuccessors, "the successor of a reused refresh token still works (session %s)", s.sid)
		} else if code != 400 || tr == nil || tr.Error != "invalid_grant" {
			drv.l.count("reuse successor undecided")
		}
	}
	// "already used; the session has been revoked" comes after the sid
	// event was acknowledged.
	drv.acked(ctx, "reuse", "", probe)
}

// rotate asks is to rotate now: 200 rotated, 409 next key not ready.
func (drv *driver) rotate(ctx context.Context, is *issuerProc) int {
	code, _ := drv.admin(ctx, is, http.MethodPost, "/admin/v1/keys/rotate", nil)
	switch code {
	case 200:
		drv.l.rotations.Add(1)
	case 409:
		drv.l.rotationConflicts.Add(1)
	default:
		drv.l.rotationErrors.Add(1)
	}
	return code
}

// watchRecovery is a margin for a sidecar to take a bundle written while a
// NATS node dies: a sidecar receives each write of the bundle as it is
// published and reads the bundle again when its connection comes back,
// but a write lost in the failover reaches it only with its next periodic
// read (key_refresh_interval, 30 s by default) or the refresh an unknown
// kid triggers, after one refusal. The product's default propagation
// delay (5 min) covers it; this suite's short one (8 s) does not, so after
// stopping a node the suite holds rotations for this long.
const watchRecovery = 25 * time.Second

// holdRotations delays every rotation until d from now.
func (drv *driver) holdRotations(d time.Duration) {
	until := time.Now().Add(d).UnixNano()
	for {
		cur := drv.rotationHold.Load()
		if cur >= until || drv.rotationHold.CompareAndSwap(cur, until) {
			return
		}
	}
}

func (drv *driver) rotationsHeld() time.Duration {
	return time.Until(time.Unix(0, drv.rotationHold.Load()))
}

func (drv *driver) rotateLoop(ctx context.Context) {
	every(ctx, 2*time.Second, func() {
		if !drv.rotatorPaused.Load() && drv.rotationsHeld() <= 0 {
			drv.rotate(ctx, drv.issuer())
		}
	})
}

// ---- readiness checks after a restart ----

// checkSidecarAfterReady is run the moment a restarted sidecar first
// reports ready: it must reject every acknowledged revocation still
// checkable, and accept a token signed with the current key (fresh).
// Only revocations acknowledged before cutoff count: the sidecar could not
// bind the stream before then (its start, or NATS coming back), and one
// acknowledged later may arrive a moment after it is ready.
// It reports whether the sidecar passed.
func (drv *driver) checkSidecarAfterReady(ctx context.Context, i int, fresh *token, cutoff time.Time) bool {
	ok := true
	live := ackedBefore(drv.l.liveRevocations(time.Now()), cutoff)
	var wg sync.WaitGroup
	var accepted, other atomic.Int64
	var reasons sync.Map
	sem := make(chan struct{}, 8)
	for _, r := range live {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if drv.checkRevoked(ctx, i, r, "first ready") {
				return
			}
			// Not refused as revoked: accepted (the event is missing), or
			// refused for another reason (an unknown key: the keys are
			// missing).
			switch code, desc := drv.verify(ctx, i, r.probe.raw); {
			case code == 200:
				accepted.Add(1)
			case code == 401 && strings.Contains(desc, "revoked"):
			default:
				other.Add(1)
				reasons.Store(fmt.Sprintf("%d %s", code, desc), true)
			}
		})
	}
	wg.Wait()
	if m := accepted.Load(); m > 0 {
		ok = false
		drv.l.violate(drv.t, vReadyzLied, "sidecar-%d reported ready but accepted the probes of %d of %d acknowledged revocations", i, m, len(live))
	}
	if m := other.Load(); m > 0 {
		ok = false
		var rs []string
		reasons.Range(func(k, _ any) bool { rs = append(rs, k.(string)); return true })
		drv.l.violate(drv.t, vReadyzLied, "sidecar-%d reported ready but refused the probes of %d of %d acknowledged revocations for another reason than revoked: %v", i, m, len(live), rs)
	}
	if fresh != nil && !fresh.expiresSoon(time.Now()) && !drv.l.tainted(fresh) {
		if code, desc := drv.verify(ctx, i, fresh.raw); code != 200 {
			ok = false
			drv.l.violate(drv.t, vReadyzLied, "sidecar-%d reported ready but refused a token of the current key %s: %d %q", i, fresh.kid, code, desc)
		}
	}
	return ok
}

// checkIssuerAfterReady: a restarted issuer that reports ready holds every
// acknowledged admin revocation and signs tokens the sidecars accept.
func (drv *driver) checkIssuerAfterReady(ctx context.Context, is *issuerProc) {
	code, b := drv.admin(ctx, is, http.MethodGet, "/admin/v1/revocations", nil)
	if code != 200 {
		drv.l.violate(drv.t, vReadyzLied, "issuer-%d is ready but GET /admin/v1/revocations answered %d", is.i, code)
		return
	}
	var list struct {
		Revocations []struct {
			ID string `json:"id"`
		} `json:"revocations"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		drv.t.Errorf("revocation list: %v", err)
		return
	}
	have := map[string]bool{}
	for _, e := range list.Revocations {
		have[e.ID] = true
	}
	missing := 0
	// Those acknowledged before it started: it cannot have bound the
	// stream earlier.
	live := ackedBefore(drv.l.liveRevocations(time.Now()), is.proc.Started())
	for _, r := range live {
		if r.eventID != "" && !have[r.eventID] {
			missing++
		}
	}
	if missing > 0 {
		drv.l.violate(drv.t, vReadyzLied, "issuer-%d reported ready without %d acknowledged admin revocations", is.i, missing)
	}
	code, _, tok := drv.grant(ctx, is, "web", url.Values{"grant_type": {"password"}, "username": {cleanUser(0)}, "password": {password}})
	if code != 200 {
		drv.l.violate(drv.t, vReadyzLied, "issuer-%d reported ready but refused a login: %d", is.i, code)
		return
	}
	drv.addToken(tok)
	for i, sc := range drv.d.sidecars {
		if sc.proc.running() && drv.scReady[i].readyThrough(sc.proc.Incarnation(), time.Now()) {
			drv.checkValid(ctx, i, tok)
		}
	}
}

// issuerHolds says whether each issuer's revocation set (GET
// /admin/v1/revocations) holds an event naming r's probe.
func (drv *driver) issuerHolds(ctx context.Context, r *revocationRec) string {
	var out []string
	for _, is := range drv.d.issuers {
		code, b := drv.admin(ctx, is, http.MethodGet, "/admin/v1/revocations", nil)
		if code != 200 {
			out = append(out, fmt.Sprintf("issuer-%d: %d", is.i, code))
			continue
		}
		var list struct {
			Revocations []struct {
				ID    string `json:"id"`
				Kind  string `json:"kind"`
				Value string `json:"value"`
			} `json:"revocations"`
		}
		if err := json.Unmarshal(b, &list); err != nil {
			out = append(out, fmt.Sprintf("issuer-%d: %v", is.i, err))
			continue
		}
		var hits []string
		for _, e := range list.Revocations {
			if e.Value == r.probe.JTI || (r.probe.SID != "" && e.Value == r.probe.SID) || e.Value == r.probe.Sub {
				hits = append(hits, e.Kind+" "+e.ID)
			}
		}
		out = append(out, fmt.Sprintf("issuer-%d holds %d events naming it %v", is.i, len(hits), hits))
	}
	return strings.Join(out, "; ")
}

func ackedBefore(revs []*revocationRec, t time.Time) []*revocationRec {
	var out []*revocationRec
	for _, r := range revs {
		if r.ackedAt.Before(t) {
			out = append(out, r)
		}
	}
	return out
}

// ---- the end ----

// finalSweep: every acknowledged revocation still checkable must be
// applied by every ready sidecar.
func (drv *driver) finalSweep(ctx context.Context) {
	live := drv.l.liveRevocations(time.Now())
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, r := range live {
		for i, sc := range drv.d.sidecars {
			if !sc.proc.running() || status(ctx, sc.url+"/readyz") != 200 {
				continue
			}
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				err := poll(ctx, 20*time.Second, 50*time.Millisecond, func() error {
					if drv.checkRevoked(ctx, i, r, "final sweep") {
						return nil
					}
					return errors.New("not applied")
				})
				if err != nil {
					drv.l.violate(drv.t, vNeverApplied, "revocation #%d (%s, acknowledged %s ago, probe jti %s sid %s sub %s) never applied by ready sidecar-%d; %s",
						r.n, r.kind, time.Since(r.ackedAt).Round(time.Millisecond), r.probe.JTI, r.probe.SID, r.probe.Sub, i, drv.issuerHolds(ctx, r))
				}
			})
		}
	}
	wg.Wait()
}

// report logs the ledger and prints a one-line summary to stdout.
func (drv *driver) report(t *testing.T, took time.Duration) map[string]int {
	l := drv.l
	c := l.counts()
	byKind := map[string]int{}
	l.mu.Lock()
	for _, r := range l.revs {
		byKind[r.kind]++
	}
	nrevs := len(l.revs)
	l.mu.Unlock()
	t.Logf("ledger (%s):", took.Round(time.Second))
	for _, k := range violationKinds {
		if c[k] == 0 {
			t.Logf("  %-45s %d", k, c[k])
			continue
		}
		var first, last violation
		n := 0
		l.mu.Lock()
		for _, v := range l.violations {
			if v.kind == k {
				if n == 0 {
					first = v
				}
				last, n = v, n+1
			}
		}
		l.mu.Unlock()
		t.Logf("  %-45s %d (first %s in %s, last %s in %s)", k, c[k], first.at.UTC().Format("15:04:05.000"), first.scenario,
			last.at.UTC().Format("15:04:05.000"), last.scenario)
	}
	t.Logf("  verifications %d: accepted %d, rejected as revoked %d, as expired %d, by a not-ready sidecar %d, unknown key while cut off from NATS %d, unknown key within %s of its activation by a key revocation %d, no answer %d",
		l.verified.Load(), l.accepted.Load(), l.rejectedRevoked.Load(), l.rejectedExpired.Load(), l.rejectedExcused.Load(), l.rejectedPartitioned.Load(),
		keyRecoveryWindow, l.rejectedRecovering.Load(), l.noAnswer.Load())
	t.Logf("  revocations acknowledged %d %v, not acknowledged %d; probe checks %d (accepted before applied: %d, of which asked before another probe's rejection came back: %d)",
		nrevs, byKind, l.revokeUnacked.Load(), l.revokedChecks.Load(), l.revokedBeforeApplied.Load(), l.revokedOverlapping.Load())
	t.Logf("  logins %d, refreshes %d, token requests unavailable %d, other errors %d; reuse pairs %d (reuse detected %d)",
		l.logins.Load(), l.refreshes.Load(), l.tokenUnavailable.Load(), l.tokenErrors.Load(), l.reusePairs.Load(), l.reuseDetected.Load())
	t.Logf("  rotations %d (409 not ready %d, failed %d)", l.rotations.Load(), l.rotationConflicts.Load(), l.rotationErrors.Load())
	t.Logf("  latency verify   %s", l.verifyLat.summary())
	t.Logf("  latency token    %s", l.tokenLat.summary())
	t.Logf("  latency revoke   %s", l.revokeLat.summary())
	t.Logf("  propagation, acknowledgement to first refusal seen (sidecars cut off, paused or restarting included) %s", l.propagation.summary())
	var codes []string
	l.byCode.Range(func(k, v any) bool {
		codes = append(codes, fmt.Sprintf("%s=%d", k, v.(*atomic.Int64).Load()))
		return true
	})
	slices.Sort(codes)
	t.Logf("  answers: %s", strings.Join(codes, ", "))
	fmt.Printf("chaos ledger: valid_rejected=%d revoked_accepted_after_applied=%d forged_accepted_after_applied=%d acked_never_applied=%d two_live_successors=%d readyz_untruthful=%d crashes=%d | verifications=%d revocations=%d rotations=%d | verify %s | token %s | took %s\n",
		c[vValidRejected], c[vRevokedAccepted], c[vForgedAccepted], c[vNeverApplied], c[vTwoSuccessors], c[vReadyzLied], c[vCrash],
		l.verified.Load(), nrevs, l.rotations.Load(), l.verifyLat.summary(), l.tokenLat.summary(), took.Round(time.Second))
	return c
}

// metric reads one unlabelled gauge or counter from a /metrics page.
func metric(ctx context.Context, base, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("%s: no metric %s", base, name)
}
