package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/loadtest"
)

// How long a revoked token stays in the mix of tokens sent, and how long
// its revocation may take to reach the sidecar.
const (
	revokedKeep     = 10 * time.Second
	applyDeadline   = 10 * time.Second
	revokedShare    = 0.1             // of the requests, when revoked tokens are held
	expiryMargin    = 5 * time.Second // a valid token is not sent this close to its exp
	bytesPerRecord  = 2 << 10         // RSS allowed per added live event or cache entry
	argon2Allowance = 2 * 19 << 20    // issuer RSS allowed for argon2id buffers (see report)
)

// tok is one access token and what the driver knows of it.
type tok struct {
	raw           string
	jti, sid, sub string
	iat, exp      int64        // unix seconds, from the token's claims
	revokeStarted atomic.Int64 // unix ns when a revocation covering it was sent; 0: valid
	applied       atomic.Int64 // unix ns of the first "revoked" answer received for it
	sendUntil     time.Time    // for a revoked token: stop sending it then
}

// slot is one logged-in user: at most one live access token at a time.
type slot struct {
	user      string
	mu        sync.Mutex // held across a grant or the start of a revocation
	refresh   string     // "": a new login is needed
	notBefore time.Time  // earliest next login (after a sub revocation)
	cur       atomic.Pointer[tok]
}

type driver struct {
	o     options
	c     *cluster
	slots []*slot
	start time.Time // of the load
	end   time.Time // start + duration: the end sample; later requests are not counted

	revokedMu sync.Mutex
	revoked   atomic.Pointer[[]*tok]

	adminMu  sync.Mutex
	adminTok string
	adminExp time.Time

	latMu sync.Mutex
	lat   [][]time.Duration // per minute of intended send time
	stall []time.Duration   // per minute: the longest oversleep of a 10ms timer in this process

	probeMu sync.Mutex
	probes  []time.Duration // revocation sent → first "revoked" answer

	samplesMu sync.Mutex
	samples   []sample
	first     *sample // at the end of the warm-up
	last      *sample // at the end of the load

	requests, noToken                                      atomic.Int64
	transportErrors, badStatus                             atomic.Int64
	validAccepted, validRejected                           atomic.Int64
	revokedEarlyAccepted, revokedRejected, revokedAccepted atomic.Int64
	revocations                                            [3]atomic.Int64 // jti, sid, sub
	revocationErrors, notApplied                           atomic.Int64
	rotations, rotationErrors                              atomic.Int64
	logins, refreshes, grantErrors                         atomic.Int64
	sampleErrors                                           atomic.Int64

	problemsMu sync.Mutex
	problems   []string
	nProblems  int
}

var kinds = [3]string{"jti", "sid", "sub"}

func newDriver(o options, c *cluster) *driver {
	d := &driver{o: o, c: c}
	for i := range o.users {
		d.slots = append(d.slots, &slot{user: userName(i)})
	}
	d.revoked.Store(&[]*tok{})
	return d
}

// problem records something that fails the run; the first few are printed.
func (d *driver) problem(format string, args ...any) {
	d.problemsMu.Lock()
	defer d.problemsMu.Unlock()
	d.nProblems++
	if len(d.problems) < 20 {
		at := time.Since(d.start).Round(time.Millisecond)
		d.problems = append(d.problems, fmt.Sprintf("t=%s %s", at, fmt.Sprintf(format, args...)))
	}
}

func (d *driver) run(ctx context.Context) error {
	issuer := oneConn()
	defer issuer.CloseIdleConnections()
	for _, s := range d.slots {
		if err := d.grant(issuer, s); err != nil {
			return fmt.Errorf("first login of %s: %w", s.user, err)
		}
	}
	o := d.o
	printf(o.out, "soak: %s at %d verifications/s over %d connections (warm-up %s); %d users, access tokens live %s; %.3g revocations/s (jti, sid, sub); key rotation every %s\n",
		o.duration, o.rate, o.conns, o.warmup, o.users, o.tokenTTL, o.revokeRate, o.rotateEvery)
	printf(o.out, "processes: nats-server pid %d, issuer pid %d (%s), sidecar pid %d (%s)\n",
		d.c.nats.Pid(), d.c.issuer.Pid(), d.c.issuerURL, d.c.sidecar.Pid(), d.c.sidecarURL)
	printf(o.out, "%8s  %-33s  %-22s  %7s  %9s  %6s\n", "", "sidecar", "issuer", "nats", "", "")
	printf(o.out, "%8s  %7s %5s %7s %6s %5s  %7s %5s %7s  %7s  %9s  %6s\n",
		"t", "RSS MB", "gor", "heap MB", "events", "cache", "RSS MB", "gor", "heap MB", "RSS MB", "requests", "errors")

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.start = time.Now()
	d.end = d.start.Add(o.duration)
	end := d.end
	var bg sync.WaitGroup
	jobs := make(chan time.Time, o.rate*2)
	var workers sync.WaitGroup
	for range o.conns {
		workers.Go(func() { d.worker(jobs) })
	}
	bg.Go(func() { d.dispatch(ctx, jobs) })
	bg.Go(func() { d.refresher(ctx, issuer) })
	if o.revokeRate > 0 {
		bg.Go(func() { d.revoker(ctx, &bg) })
	}
	bg.Go(func() { d.rotator(ctx) })
	bg.Go(func() { d.stallWatch(ctx) })
	bg.Go(func() { d.sampler(ctx, d.start.Add(o.warmup), end) })

	wait := func(until time.Time) error {
		select {
		case <-time.After(time.Until(until)):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	err := wait(d.start.Add(o.warmup))
	if err == nil {
		d.first = d.sample("warm-up end")
		err = wait(end)
	}
	if err == nil {
		d.last = d.sample("end")
	}
	cancel()
	bg.Wait()
	workers.Wait()
	if err != nil {
		return fmt.Errorf("interrupted: %w", err)
	}
	return nil
}

// dispatch hands out intended send times at the fixed rate, whether or
// not the answers keep up (open loop), until the run ends: after the end
// sample, so that it sees the load's connections.
func (d *driver) dispatch(ctx context.Context, jobs chan<- time.Time) {
	defer close(jobs)
	for i := int64(0); ; i++ {
		at := d.start.Add(time.Duration(i * int64(time.Second) / int64(d.o.rate)))
		if wait := time.Until(at); wait > 100*time.Microsecond {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return
			}
		}
		select {
		case jobs <- at:
		case <-ctx.Done():
			return
		}
	}
}

// oneConn returns a client with a single keep-alive connection. Every
// goroutine of the driver has its own, so the processes hold a fixed number
// of connections (and of goroutines serving them), whatever the load's
// momentary concurrency.
func oneConn() *http.Client {
	return &http.Client{Timeout: 15 * time.Second,
		Transport: &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, DisableCompression: true}}
}

// worker sends the load on its own connection.
func (d *driver) worker(jobs <-chan time.Time) {
	client := oneConn()
	defer client.CloseIdleConnections()
	for at := range jobs {
		t := d.pick()
		if t == nil {
			d.noToken.Add(1)
			continue
		}
		d.verify(client, t, at, true)
	}
}

// verify asks the sidecar about t and checks the answer. at is the
// intended send time of a load request (zero for a probe).
func (d *driver) verify(client *http.Client, t *tok, at time.Time, load bool) (revoked bool) {
	req, _ := http.NewRequest("GET", d.c.sidecarURL+"/verify/soak", nil)
	req.Header.Set("Authorization", "Bearer "+t.raw)
	sent := time.Now()
	resp, err := client.Do(req)
	recv := time.Now()
	if load && at.Before(d.end) {
		d.requests.Add(1)
		d.record(at, recv.Sub(at))
	}
	if err != nil {
		d.transportErrors.Add(1)
		d.problem("verify: %v", err)
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		switch a := t.applied.Load(); {
		case a != 0 && sent.UnixNano() > a:
			d.revokedAccepted.Add(1)
			d.problem("WRONG: revoked token (%s) accepted %s after the sidecar first rejected it", t.describe(), time.Duration(sent.UnixNano()-a))
		case t.revokeStarted.Load() != 0:
			d.revokedEarlyAccepted.Add(1)
		default:
			d.validAccepted.Add(1)
		}
	case http.StatusUnauthorized:
		www := resp.Header.Get("WWW-Authenticate")
		if t.revokeStarted.Load() == 0 {
			d.validRejected.Add(1)
			d.problem("WRONG: valid token (%s) rejected: %s", t.describe(), www)
			return false
		}
		d.revokedRejected.Add(1)
		if strings.Contains(www, "revoked") {
			for {
				a := t.applied.Load()
				if (a != 0 && a <= recv.UnixNano()) || t.applied.CompareAndSwap(a, recv.UnixNano()) {
					break
				}
			}
			return true
		}
	default:
		d.badStatus.Add(1)
		d.problem("verify: unexpected status %d", resp.StatusCode)
	}
	return false
}

func (t *tok) describe() string {
	return fmt.Sprintf("sub %s sid %s jti %s, exp in %s", t.sub, t.sid, t.jti, time.Until(time.Unix(t.exp, 0)).Round(time.Second))
}

func (d *driver) record(at time.Time, lat time.Duration) {
	m := d.minute(at)
	d.latMu.Lock()
	d.lat[m] = append(d.lat[m], lat)
	d.latMu.Unlock()
}

// minute returns the index of at's minute, growing the per-minute slices.
func (d *driver) minute(at time.Time) int {
	m := max(0, int(at.Sub(d.start)/time.Minute))
	d.latMu.Lock()
	for len(d.lat) <= m {
		d.lat = append(d.lat, make([]time.Duration, 0, d.o.rate*60))
		d.stall = append(d.stall, 0)
	}
	d.latMu.Unlock()
	return m
}

// stallWatch measures how late this process's own timers fire. On a
// shared machine a stall of the whole machine shows here as well as in the
// latency, so a latency peak with a stall of the same size is the
// machine's, not the sidecar's.
func (d *driver) stallWatch(ctx context.Context) {
	const period = 10 * time.Millisecond
	for ctx.Err() == nil {
		t0 := time.Now()
		time.Sleep(period)
		if !t0.Before(d.end) {
			continue
		}
		over := time.Since(t0) - period
		m := d.minute(t0)
		d.latMu.Lock()
		d.stall[m] = max(d.stall[m], over)
		d.latMu.Unlock()
	}
}

// randN picks which token to send or revoke; nothing secret.
func randN(n int) int { return rand.IntN(n) } // #nosec G404 -- not a secret

// pick returns a token to send: a recently revoked one for revokedShare of
// the requests while there are any, else a valid one.
func (d *driver) pick() *tok {
	now := time.Now()
	if r := *d.revoked.Load(); len(r) > 0 && randN(1000) < int(revokedShare*1000) {
		if t := r[randN(len(r))]; now.Before(t.sendUntil) {
			return t
		}
	}
	for range 2 * len(d.slots) {
		s := d.slots[randN(len(d.slots))]
		if t := s.cur.Load(); t != nil && now.Before(time.Unix(t.exp, 0).Add(-expiryMargin)) {
			return t
		}
	}
	return nil
}

// refresher keeps every slot's token fresh: a refresh grant at half its
// lifetime, a new login after a sid or sub revocation. Logins (argon2id)
// run one at a time.
func (d *driver) refresher(ctx context.Context, issuer *http.Client) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, s := range d.slots {
			if ctx.Err() != nil {
				return
			}
			s.mu.Lock()
			t := s.cur.Load()
			due := t == nil && time.Now().After(s.notBefore) ||
				t != nil && time.Since(time.Unix(t.iat, 0)) >= d.o.tokenTTL/2
			if due {
				if err := d.grant(issuer, s); err != nil {
					d.grantErrors.Add(1)
					d.problem("token for %s: %v", s.user, err)
				}
			}
			s.mu.Unlock()
		}
	}
}

// grant gets s a new access token: by its refresh token if it has one,
// else by logging in. The caller holds s.mu (or owns s).
func (d *driver) grant(issuer *http.Client, s *slot) error {
	form := url.Values{"scope": {"read"}}
	if s.refresh != "" {
		form.Set("grant_type", "refresh_token")
		form.Set("refresh_token", s.refresh)
	} else {
		form.Set("grant_type", "password")
		form.Set("username", s.user)
		form.Set("password", userPassword)
	}
	var body struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
	}
	if err := d.tokenRequest(issuer, form, appClient, appSecret, &body); err != nil {
		return fmt.Errorf("%s grant: %w", form.Get("grant_type"), err)
	}
	t, err := parseToken(body.AccessToken)
	if err != nil {
		return err
	}
	if s.refresh != "" {
		d.refreshes.Add(1)
	} else {
		d.logins.Add(1)
	}
	s.refresh = body.RefreshToken
	s.cur.Store(t)
	return nil
}

func (d *driver) tokenRequest(issuer *http.Client, form url.Values, id, secret string, into any) error {
	req, _ := http.NewRequest("POST", d.c.issuerURL+"/oauth2/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(id, secret)
	resp, err := issuer.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return json.Unmarshal(b, into)
}

// parseToken reads the claims of a token the issuer just gave us (no
// signature check: the sidecar is what is being tested).
func parseToken(raw string) (*tok, error) {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("access token with %d parts", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, fmt.Errorf("access token payload: %w", err)
	}
	var c struct {
		JTI string `json:"jti"`
		SID string `json:"sid"`
		Sub string `json:"sub"`
		IAT int64  `json:"iat"`
		Exp int64  `json:"exp"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("access token claims: %w", err)
	}
	if c.JTI == "" || c.SID == "" || c.Sub == "" || c.Exp <= c.IAT {
		return nil, fmt.Errorf("access token claims incomplete: %s", b)
	}
	return &tok{raw: raw, jti: c.JTI, sid: c.SID, sub: c.Sub, iat: c.IAT, exp: c.Exp}, nil
}

// admin returns a bearer token for the admin API, renewed at half its life.
func (d *driver) admin(issuer *http.Client) (string, error) {
	d.adminMu.Lock()
	defer d.adminMu.Unlock()
	if d.adminTok != "" && time.Now().Before(d.adminExp) {
		return d.adminTok, nil
	}
	var body struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {"tokenwarden:admin"}}
	if err := d.tokenRequest(issuer, form, adminClient, adminSecret, &body); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	d.adminTok, d.adminExp = body.AccessToken, time.Now().Add(time.Duration(body.ExpiresIn)*time.Second/2)
	return d.adminTok, nil
}

func (d *driver) adminPost(issuer *http.Client, path string, body any) (int, string, error) {
	at, err := d.admin(issuer)
	if err != nil {
		return 0, "", err
	}
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", d.c.issuerURL+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+at)
	req.Header.Set("Content-Type", "application/json")
	resp, err := issuer.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(bytes.TrimSpace(rb)), nil
}

// revoker revokes, at -revoke-rate, the live token of a random user: by
// jti, sid and sub in turn. The token then stays in the mix for
// revokedKeep, and a probe follows it until the sidecar rejects it.
func (d *driver) revoker(ctx context.Context, bg *sync.WaitGroup) {
	tick := time.NewTicker(time.Duration(float64(time.Second) / d.o.revokeRate))
	defer tick.Stop()
	issuer, probe := oneConn(), oneConn()
	defer issuer.CloseIdleConnections()
	defer probe.CloseIdleConnections()
	for n := 0; ; {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s, t := d.victim()
		if s == nil {
			continue
		}
		k := n % len(kinds)
		n++
		ev := map[string]string{"kind": kinds[k], "reason": "soak"}
		started := time.Now()
		switch kinds[k] {
		case "jti":
			ev["value"] = t.jti // the session goes on: the next refresh gets a new jti
		case "sid":
			ev["value"] = t.sid
			s.refresh = "" // the family is denied: log in again
		case "sub":
			// Tokens with iat ≤ issued_before (whole seconds) are revoked,
			// so the next login waits for the following second.
			before := started.Truncate(time.Second)
			ev["value"], ev["issued_before"] = t.sub, before.UTC().Format(time.RFC3339)
			s.refresh, s.notBefore = "", before.Add(time.Second+10*time.Millisecond)
		}
		t.revokeStarted.Store(started.UnixNano())
		t.sendUntil = started.Add(min(revokedKeep, time.Until(time.Unix(t.exp, 0).Add(-expiryMargin))))
		s.cur.Store(nil)
		d.addRevoked(t)
		s.mu.Unlock()

		code, body, err := d.adminPost(issuer, "/admin/v1/revocations", ev)
		if err != nil || code != http.StatusCreated {
			d.revocationErrors.Add(1)
			d.problem("revoke %s %s: %d %s %v", kinds[k], ev["value"], code, body, err)
			continue
		}
		d.revocations[k].Add(1)
		bg.Go(func() { d.follow(ctx, probe, t, started) })
	}
}

// victim picks a user with a live token and locks it.
func (d *driver) victim() (*slot, *tok) {
	for range 2 * len(d.slots) {
		s := d.slots[randN(len(d.slots))]
		if !s.mu.TryLock() {
			continue
		}
		if t := s.cur.Load(); t != nil && time.Until(time.Unix(t.exp, 0)) > revokedKeep+expiryMargin {
			return s, t
		}
		s.mu.Unlock()
	}
	return nil, nil
}

func (d *driver) addRevoked(t *tok) {
	d.revokedMu.Lock()
	defer d.revokedMu.Unlock()
	now := time.Now()
	old := *d.revoked.Load()
	r := make([]*tok, 0, len(old)+1)
	for _, o := range old {
		if now.Before(o.sendUntil) {
			r = append(r, o)
		}
	}
	r = append(r, t)
	d.revoked.Store(&r)
}

// follow probes a revoked token until the sidecar answers "revoked" (or the
// load did) and records the time from sending the revocation.
func (d *driver) follow(ctx context.Context, client *http.Client, t *tok, started time.Time) {
	deadline := started.Add(applyDeadline)
	for t.applied.Load() == 0 {
		if ctx.Err() != nil {
			return
		}
		if time.Now().After(deadline) {
			d.notApplied.Add(1)
			d.problem("revocation of %s not applied by the sidecar within %s", t.describe(), applyDeadline)
			return
		}
		if !d.verify(client, t, time.Time{}, false) {
			time.Sleep(2 * time.Millisecond)
		}
	}
	d.probeMu.Lock()
	d.probes = append(d.probes, time.Duration(t.applied.Load()-started.UnixNano()))
	d.probeMu.Unlock()
}

// rotator rotates the signing keys on demand every -rotate-every.
func (d *driver) rotator(ctx context.Context) {
	tick := time.NewTicker(d.o.rotateEvery)
	defer tick.Stop()
	issuer := oneConn()
	defer issuer.CloseIdleConnections()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		code, body, err := d.adminPost(issuer, "/admin/v1/keys/rotate", struct{}{})
		if err != nil || code != http.StatusOK {
			d.rotationErrors.Add(1)
			d.problem("rotate: %d %s %v", code, body, err)
			continue
		}
		d.rotations.Add(1)
	}
}

// sample is one reading of the processes.
type sample struct {
	at                                            time.Duration // since the load started
	label                                         string
	scRSS, scGor, scHeap, scEvents, scCache       float64 // KiB, count, bytes, count, count
	scBundleSeq, scKeys, scDropped, scRejectedBun float64
	isRSS, isGor, isHeap                          float64
	natsRSS                                       float64
	scVerify                                      []loadtest.Bucket // the sidecar's verification-time histogram
	requests, errors                              int64
}

func (d *driver) errorsSoFar() int64 {
	return d.transportErrors.Load() + d.badStatus.Load() + d.validRejected.Load() + d.revokedAccepted.Load() +
		d.revocationErrors.Load() + d.notApplied.Load() + d.rotationErrors.Load() + d.grantErrors.Load() + d.sampleErrors.Load()
}

func (d *driver) sampler(ctx context.Context, warm, end time.Time) {
	tick := time.NewTicker(d.o.sampleEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			near := func(t time.Time) bool { return time.Until(t).Abs() < d.o.sampleEvery/2 }
			if !near(warm) && time.Until(end) > d.o.sampleEvery/2 {
				d.sample("")
			}
		}
	}
}

var metricsClient = oneConn() // one connection to each process

func (d *driver) sample(label string) *sample {
	s := sample{at: time.Since(d.start), label: label}
	fail := func(what string, err error) {
		d.sampleErrors.Add(1)
		d.problem("sample %s: %v", what, err)
	}
	rss := func(p *proc) float64 {
		kib, err := loadtest.RSSKiB(p.Pid())
		if err != nil {
			fail(p.name+" RSS", fmt.Errorf("%w (process exited? %v)", err, p.Exited()))
		}
		return float64(kib)
	}
	s.scRSS, s.isRSS, s.natsRSS = rss(d.c.sidecar), rss(d.c.issuer), rss(d.c.nats)
	if m, err := loadtest.Metrics(metricsClient, d.c.sidecarURL+"/metrics"); err != nil {
		fail("sidecar metrics", err)
	} else {
		s.scGor, s.scHeap, s.scEvents, s.scCache = m["go_goroutines"], m["go_memstats_heap_inuse_bytes"], m["tokenwarden_revocation_set_size"], m["tokenwarden_token_cache_entries"]
		s.scBundleSeq, s.scKeys = m["tokenwarden_jwks_bundle_sequence"], m["tokenwarden_jwks_keys"]
		s.scDropped, s.scRejectedBun = m["tokenwarden_revocation_events_dropped_total"], m["tokenwarden_jwks_bundles_rejected_total"]
		s.scVerify = loadtest.Histogram(m, "tokenwarden_verification_duration_seconds")
	}
	if m, err := loadtest.Metrics(metricsClient, d.c.issuerURL+"/metrics"); err != nil {
		fail("issuer metrics", err)
	} else {
		s.isGor, s.isHeap = m["go_goroutines"], m["go_memstats_heap_inuse_bytes"]
	}
	s.requests, s.errors = d.requests.Load(), d.errorsSoFar()
	d.samplesMu.Lock()
	d.samples = append(d.samples, s)
	d.samplesMu.Unlock()
	mb := func(kib float64) float64 { return kib / 1024 }
	printf(d.o.out, "%8s  %7.1f %5.0f %7.1f %6.0f %5.0f  %7.1f %5.0f %7.1f  %7.1f  %9d  %6d  %s\n",
		s.at.Round(time.Second), mb(s.scRSS), s.scGor, s.scHeap/(1<<20), s.scEvents, s.scCache,
		mb(s.isRSS), s.isGor, s.isHeap/(1<<20), mb(s.natsRSS), s.requests, s.errors, label)
	return &s
}
