package rollover

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
	"testing"
	"time"
)

// ledger counts what the run did and what went wrong. The four failure
// counts must end at 0.
type ledger struct {
	mu                    sync.Mutex
	validRefused          int // a valid token refused by a sidecar or issuer that was up
	revocationsLost       int // a revoked token accepted after it had been refused, or after the revocation reached every process
	forgedBundlesAccepted int
	forgedEventsAccepted  int
	errors                int // requests that failed (5xx, transport) on a process that stayed up
	details               []string

	verifications   atomic.Int64
	issued          atomic.Int64
	revocations     map[string]int
	pendingAccepts  atomic.Int64 // revoked tokens accepted before their revocation reached that process (allowed)
	forgedEvents    int
	forgedBundles   int
	rotations       int
	mixedRotations  int // rotations while the issuers signed with two keys
	restarts        int
	restartChecks   int // revoked tokens checked at a process right after it restarted
	eventsDropped   int // forged events the sidecars counted as dropped, summed
	bundlesRejected int // forged bundles the sidecars counted as rejected, summed
}

func newLedger() *ledger { return &ledger{revocations: map[string]int{}} }

// fail counts one failure of the kind count points at, with what happened.
func (l *ledger) fail(count *int, format string, a ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	*count++
	if len(l.details) < 30 {
		l.details = append(l.details, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, a...))
	}
}

func (l *ledger) add(count *int, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	*count += n
}

// token states.
const (
	valid int32 = iota
	revoking
	revoked
	uncertain // the revocation request failed: excluded from the ledger
)

// token is an access token the load holds. User and service tokens are
// checked at the sidecars, admin tokens at the issuers' admin API.
type token struct {
	access  string
	refresh string
	jti     string
	admin   bool
	canary  bool // never revoked: the forged events name it
	state   atomic.Int32
	ackAt   atomic.Int64 // unix nanos when its revocation was acknowledged
	method  string
	// refusedAt[i]: when (r.clock) a refusal by process i (a sidecar, or
	// an issuer for admin tokens) after the revocation's acknowledgement
	// was received; 0 while there is none.
	refusedAt [3]atomic.Int64
}

func jtiOf(access string) string {
	parts := strings.Split(access, ".")
	if len(parts) != 3 {
		return ""
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var c struct {
		ID string `json:"jti"`
	}
	_ = json.Unmarshal(b, &c)
	return c.ID
}

// pool is every token the load holds.
type pool struct {
	mu           sync.Mutex
	valid        []*token // sidecar tokens, valid (the newest 256 are verified)
	validAdmin   []*token
	revoked      []*token
	revokedAdmin []*token
}

func (p *pool) addValid(t *token) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t.admin {
		p.validAdmin = append(p.validAdmin, t)
		if len(p.validAdmin) > 64 {
			p.validAdmin = p.validAdmin[1:]
		}
		return
	}
	p.valid = append(p.valid, t)
	if len(p.valid) > 256 {
		p.valid = p.valid[1:]
	}
}

// take removes and returns a random valid token that may be revoked, or nil.
func (p *pool) take(admin, needRefresh bool) *token {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := &p.valid
	if admin {
		list = &p.validAdmin
	}
	for range 8 {
		if len(*list) == 0 {
			return nil
		}
		i := rand.N(len(*list)) // #nosec G404 -- load, not a secret
		t := (*list)[i]
		if t.canary || needRefresh && t.refresh == "" {
			continue
		}
		*list = append((*list)[:i], (*list)[i+1:]...)
		return t
	}
	return nil
}

func (p *pool) addRevoked(t *token) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t.admin {
		p.revokedAdmin = append(p.revokedAdmin, t)
	} else {
		p.revoked = append(p.revoked, t)
	}
}

// pick returns a random token of the four lists: valid or revoked, sidecar
// or admin.
func (p *pool) pick(admin, revokedOnes bool) *token {
	p.mu.Lock()
	defer p.mu.Unlock()
	var list []*token
	switch {
	case admin && revokedOnes:
		list = p.revokedAdmin
	case admin:
		list = p.validAdmin
	case revokedOnes:
		list = p.revoked
	default:
		list = p.valid
	}
	if len(list) == 0 {
		return nil
	}
	return list[rand.N(len(list))] // #nosec G404 -- load, not a secret
}

// snapshot copies the lists.
func (p *pool) snapshot() (validTokens, validAdmin, revokedTokens, revokedAdmin []*token) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*token(nil), p.valid...), append([]*token(nil), p.validAdmin...),
		append([]*token(nil), p.revoked...), append([]*token(nil), p.revokedAdmin...)
}

// run is the load and the ledger of one test.
type run struct {
	t0     time.Time // r.clock counts from here (monotonic)
	d      *deployment
	l      *ledger
	p      *pool
	admin  string // the driver's own admin token, never revoked
	canary *token
	// canaryAdmin is an admin token that the forged events name.
	canaryAdmin *token
}

// clock is the time since the run started, monotonic, never 0.
func (r *run) clock() int64 { return int64(time.Since(r.t0)) + 1 }

// post sends a form (or JSON when body is not url.Values) and returns the
// status and body.
func (r *run) post(ctx context.Context, u string, body any, basicUser, basicPass, bearer string) (int, []byte, error) {
	var rd io.Reader
	ctype := "application/x-www-form-urlencoded"
	switch b := body.(type) {
	case url.Values:
		rd = strings.NewReader(b.Encode())
	case nil:
	default:
		j, _ := json.Marshal(b)
		rd, ctype = bytes.NewReader(j), "application/json"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", ctype)
	if basicUser != "" {
		req.SetBasicAuth(basicUser, basicPass)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := r.d.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, b, nil
}

// mint gets a token of kind "user" (password grant, with a refresh token),
// "service" (client_credentials) or "admin" from issuer p.
func (r *run) mint(ctx context.Context, p *proc, kind string) (*token, int, error) {
	form := url.Values{"grant_type": {"client_credentials"}}
	user, pass := "web", "web-secret"
	switch kind {
	case "user":
		n := rand.N(users) // #nosec G404 -- load, not a secret
		form = url.Values{"grant_type": {"password"}, "username": {fmt.Sprintf("u%d", n)}, "password": {fmt.Sprintf("pw-%d", n)}, "scope": {"read"}}
	case "admin":
		form.Set("scope", "tokenwarden:admin")
		user, pass = "admin", "admin-secret"
	}
	code, body, err := r.post(ctx, p.url+"/oauth2/token", form, user, pass, "")
	if err != nil {
		return nil, 0, fmt.Errorf("token from %s: %w", p.name, err)
	}
	if code != http.StatusOK {
		return nil, code, fmt.Errorf("token from %s: %d %s", p.name, code, body)
	}
	var tr struct {
		Access  string `json:"access_token"`
		Refresh string `json:"refresh_token"`
	}
	if err := json.Unmarshal(body, &tr); err != nil {
		return nil, code, err
	}
	return &token{access: tr.Access, refresh: tr.Refresh, jti: jtiOf(tr.Access), admin: kind == "admin"}, code, nil
}

// targets is where a token is checked: sidecars, or issuers for admin
// tokens.
func (r *run) targets(t *token) []*proc {
	if t.admin {
		return r.d.issuers
	}
	return r.d.sidecars
}

// check asks target (index idx of its group) about t and books the answer.
// strict: the process restarted after t's revocation was acknowledged, so
// it must refuse t at once.
func (r *run) check(ctx context.Context, t *token, target *proc, idx int, strict bool) {
	up, inc := target.state()
	if !up && !strict {
		return
	}
	st := t.state.Load()
	path := "/verify"
	if t.admin {
		path = "/admin/v1/keys"
	}
	sent := r.clock()
	code, body, err := r.d.get(ctx, target.url+path, t.access)
	r.l.verifications.Add(1)
	up2, inc2 := target.state()
	stayed := strict || up2 && inc2 == inc
	if err != nil {
		if stayed && ctx.Err() == nil {
			r.l.fail(&r.l.errors, "%s (incarnation %d) failed a request: %v", target.name, inc, err)
		}
		return
	}
	switch st {
	case valid:
		if t.state.Load() != valid || !stayed {
			return // a revocation started meanwhile, or the process went away
		}
		if code != http.StatusOK {
			r.l.fail(&r.l.validRefused, "%s (incarnation %d) refused a valid %s token %s: %d %s", target.name, inc, kindOf(t), t.jti, code, body)
		}
	case revoked:
		switch {
		case code == http.StatusUnauthorized:
			t.refusedAt[idx].CompareAndSwap(0, r.clock())
		case code == http.StatusOK && (strict || flipped(t.refusedAt[idx].Load(), sent)):
			r.l.fail(&r.l.revocationsLost, "%s (incarnation %d) accepted %s token %s revoked by %s at %s (strict %v)",
				target.name, inc, kindOf(t), t.jti, t.method, time.Unix(0, t.ackAt.Load()).Format("15:04:05.000"), strict)
		case code == http.StatusOK:
			r.l.pendingAccepts.Add(1)
		default:
			if stayed {
				r.l.fail(&r.l.errors, "%s answered %d for a revoked token: %s", target.name, code, body)
			}
		}
	}
}

// flipped reports whether a request sent at sent was accepted by a
// process that had refused the token before: only if the refusal was
// received before the request was sent. Concurrent checks are answered in
// any order; one sent earlier may come back accepted after another came
// back refused, because the process applied the revocation between the
// two, which is no loss.
func flipped(refusedAt, sent int64) bool { return refusedAt != 0 && sent > refusedAt }

func kindOf(t *token) string {
	switch {
	case t.admin:
		return "admin"
	case t.refresh != "":
		return "user"
	default:
		return "service"
	}
}

// randomUp is a random process of ps that takes load, or nil.
func randomUp(ps []*proc) (*proc, int) {
	up := upProcs(ps)
	if len(up) == 0 {
		return nil, -1
	}
	p := up[rand.N(len(up))] // #nosec G404 -- load, not a secret
	for i, q := range ps {
		if q == p {
			return p, i
		}
	}
	return nil, -1
}

// minter keeps issuing tokens at the issuers and checks each new one at
// every process that takes load.
func (r *run) minter(ctx context.Context) {
	kinds := []string{"user", "service", "user", "admin"}
	for i := 0; ctx.Err() == nil; i++ {
		iss, _ := randomUp(r.d.issuers)
		if iss == nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		_, inc := iss.state()
		t, code, err := r.mint(ctx, iss, kinds[i%len(kinds)])
		if err != nil {
			if up, inc2 := iss.state(); up && inc2 == inc && ctx.Err() == nil {
				if code == http.StatusUnauthorized || code == http.StatusForbidden || code == http.StatusBadRequest {
					r.l.fail(&r.l.validRefused, "%s refused a token request: %v", iss.name, err)
				} else {
					r.l.fail(&r.l.errors, "%v", err)
				}
			}
			continue
		}
		r.l.issued.Add(1)
		r.p.addValid(t)
		for idx, target := range r.targets(t) {
			r.check(ctx, t, target, idx, false)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// verifier checks random tokens, valid and revoked, at random processes.
func (r *run) verifier(ctx context.Context) {
	for i := 0; ctx.Err() == nil; i++ {
		admin, revokedOnes := i%4 == 3, i%2 == 1
		t := r.p.pick(admin, revokedOnes)
		if t == nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		targets := r.targets(t)
		if target, idx := randomUp(targets); target != nil {
			r.check(ctx, t, target, idx, false)
		}
	}
}

// revoker revokes a token every tick, by each method in turn, at a random
// issuer: an admin jti revocation, a logout (RFC 7009 with a refresh
// token: the session), an RFC 7009 access-token revocation, and the
// revocation of an admin token (which the other issuer must then refuse).
func (r *run) revoker(ctx context.Context) {
	methods := []string{"admin-jti", "logout", "rfc7009", "admin-token"}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		m := methods[i%len(methods)]
		t := r.p.take(m == "admin-token", m == "logout")
		if t == nil {
			continue
		}
		iss, _ := randomUp(r.d.issuers)
		if iss == nil {
			r.p.addValid(t)
			continue
		}
		t.method = m + "@" + iss.name
		t.state.Store(revoking)
		_, inc := iss.state()
		var code, want int
		var body []byte
		var err error
		switch m {
		case "admin-jti", "admin-token":
			want = http.StatusCreated
			code, body, err = r.post(ctx, iss.url+"/admin/v1/revocations",
				map[string]string{"kind": "jti", "value": t.jti, "reason": "rollover load"}, "", "", r.admin)
		case "logout":
			want = http.StatusOK
			code, body, err = r.post(ctx, iss.url+"/oauth2/revoke", url.Values{"token": {t.refresh}, "token_type_hint": {"refresh_token"}}, "web", "web-secret", "")
		case "rfc7009":
			want = http.StatusOK
			code, body, err = r.post(ctx, iss.url+"/oauth2/revoke", url.Values{"token": {t.access}, "token_type_hint": {"access_token"}}, "web", "web-secret", "")
		}
		if err != nil || code != want {
			t.state.Store(uncertain)
			if up, inc2 := iss.state(); up && inc2 == inc && ctx.Err() == nil {
				r.l.fail(&r.l.errors, "revocation %s at %s: %d %s %v", m, iss.name, code, body, err)
			}
			continue
		}
		t.ackAt.Store(time.Now().UnixNano())
		t.state.Store(revoked)
		r.p.addRevoked(t)
		r.l.mu.Lock()
		r.l.revocations[m]++
		r.l.mu.Unlock()
	}
}

// TestFlipped: the ledger counts a lost revocation only for a request sent
// after a refusal had come back, not for a concurrent one answered first
// and received later (a flake under load, before).
func TestFlipped(t *testing.T) {
	for _, tt := range []struct {
		refusedAt, sent int64
		want            bool
	}{
		{0, 5, false}, // never refused
		{3, 5, true},  // refused, then asked again and accepted
		{7, 5, false}, // sent before the refusal came back
		{5, 5, false}, // same instant: not after
	} {
		if got := flipped(tt.refusedAt, tt.sent); got != tt.want {
			t.Errorf("flipped(%d, %d) = %v, want %v", tt.refusedAt, tt.sent, got, tt.want)
		}
	}
}
