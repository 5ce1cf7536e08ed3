package chaos

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenwarden/tokenwarden/issuer"
	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// This file is the leaked-key scenario (issue 12): an attacker who holds
// the issuer's NATS credential and the key-encryption key unseals the key
// ring and forges tokens with its keys against every sidecar, under the
// load; security revokes the keys through the admin API. The ledger counts
// forged tokens accepted after a sidecar applied the revocation of their
// key, which must be 0.

// keyRecoveryWindow is how long after the 201 of a revocation of the
// active key a valid token of the key activated in its place may be
// refused as "unknown key id" by a sidecar its bundle has not reached yet.
// `go run ./test/propagation` measures the window ("recovery window"):
// with the activated key published long before, or made milliseconds
// before (cut short), no sidecar refused one of its tokens, and the last
// of 1000 in-process sidecars on two cores accepted one 0.15 s after the
// 201 (seconds only with that machine's CPU queued with other work). A
// sidecar meeting the key before its bundle waits up to 0.5 s for it
// (sidecar.unknownKIDWait) before refusing. The processes here run with
// -race on a shared two-core machine: a second holds that. A refusal after
// it is a violation.
const keyRecoveryWindow = time.Second

// attempt is one forged token presented to one sidecar.
type attempt struct {
	sidecar  int
	kid      string
	sent     time.Time // before the request went out
	answered time.Time // after the answer came
	code     int       // 0: no answer
	desc     string
}

// refusedForKey: the sidecar refused the token because its signing key
// is revoked, which it says only once it has applied the kid event.
func (a attempt) refusedForKey() bool {
	return a.code == http.StatusUnauthorized && a.desc == revocation.ReasonKey
}

// attacker is the party that stole the key ring. It holds what
// issuer.ReadKeyRing gave it (the private half of every key in the ring),
// what any client knows (the issuer's name and an audience, both in any
// token) and the sidecars' addresses; nothing of the driver's. It forges
// tokens with whatever claims it likes and presents them over HTTP, like
// anyone.
type attacker struct {
	keys     []*jwks.Key
	issuer   string
	audience string
	targets  []string
	hc       *http.Client

	mu       sync.Mutex
	attempts []attempt
	recent   []forged // strings presented before, for cache hits

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type forged struct {
	kid, raw string
}

// leakKeyRing is the leak: it unseals the ring stored in NATS with the
// KEK, as issuer.ReadKeyRing does for anyone holding both.
func leakKeyRing(ctx context.Context, d *deployment) (*jwks.Ring, error) {
	nc, js, err := jsConnect(d.nats.urls())
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return issuer.ReadKeyRing(ctx, js, "tokenwarden", d.kek)
}

func newAttacker(keys []*jwks.Key, targets []string) *attacker {
	return &attacker{keys: keys, issuer: issuerID, audience: audience, targets: targets,
		hc: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}}
}

func randString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// forge signs a token with k whose claims the attacker chose: any iat
// (long past, now, or a second ahead, within the sidecars' leeway), a
// long expiry, and random jti, sid and sub, so no revocation of a jti,
// session, subject, client or of everything issued before a time names
// it. Only the kid does.
func (a *attacker) forge(k *jwks.Key, now time.Time) (string, error) {
	c := &jwks.Claims{Issuer: a.issuer, Audience: jwks.Audience{a.audience}, ID: "forged-" + randString(12),
		ClientID: "web", Scope: "read write", Expiry: now.Add(time.Duration(1+mrand.N(24*30)) * time.Hour).Unix()}
	switch mrand.N(3) {
	case 0:
		c.IssuedAt = now.Add(-time.Duration(1+mrand.N(24*3600)) * time.Second).Unix()
	case 1:
		c.IssuedAt = now.Unix()
	default:
		c.IssuedAt = now.Unix() + 1 // ahead of the clock, within the leeway
	}
	switch mrand.N(3) {
	case 0:
		c.Subject = "mallory-" + randString(4)
	case 1:
		c.Subject = cleanUser(mrand.N(cleanUsers)) // someone real
	default:
		c.Subject = "admin"
	}
	if mrand.N(2) == 0 {
		c.SessionID = "sid-" + randString(9)
	}
	return k.Sign(c)
}

// present sends raw to sidecar i and records the answer.
func (a *attacker) present(ctx context.Context, i int, kid, raw string) attempt {
	at := attempt{sidecar: i, kid: kid, sent: time.Now()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.targets[i]+"/verify/orders", nil)
	if err == nil {
		req.Header.Set("Authorization", "Bearer "+raw)
		if resp, err := a.hc.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			at.code = resp.StatusCode
			if _, d, ok := strings.Cut(resp.Header.Get("WWW-Authenticate"), `error_description="`); ok {
				at.desc, _, _ = strings.Cut(d, `"`)
			}
		}
	}
	at.answered = time.Now()
	a.mu.Lock()
	a.attempts = append(a.attempts, at)
	a.mu.Unlock()
	return at
}

// start keeps forging against every sidecar in turn until stop: mostly
// new tokens, now and then one presented before (a cache hit where it
// was accepted).
func (a *attacker) start() {
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	var next atomic.Int64
	for range 2 {
		a.wg.Go(func() {
			every(ctx, 5*time.Millisecond, func() {
				i := int(next.Add(1)) % len(a.targets)
				a.mu.Lock()
				var f forged
				if n := len(a.recent); n > 0 && mrand.N(4) == 0 {
					f = a.recent[mrand.N(n)]
				}
				a.mu.Unlock()
				if f.raw == "" {
					k := a.keys[mrand.N(len(a.keys))]
					raw, err := a.forge(k, time.Now())
					if err != nil {
						return
					}
					f = forged{kid: k.ID, raw: raw}
					a.mu.Lock()
					a.recent = append(a.recent, f)
					if len(a.recent) > 64 {
						a.recent = a.recent[len(a.recent)-32:]
					}
					a.mu.Unlock()
				}
				a.present(ctx, i, f.kid, f.raw)
			})
		})
	}
}

func (a *attacker) stop() {
	if a.cancel != nil {
		a.cancel()
		a.wg.Wait()
	}
}

// verdicts is what the attempts show, per sidecar and kid.
type verdicts struct {
	acceptedBefore int // forged tokens accepted before the sidecar applied their key's revocation
	refused        int // refused as "signing key revoked"
	otherwise      int // refused for another reason, or no answer
	violations     []attempt
	applied        map[scKey]time.Time
}

// scKey names one key at one sidecar.
type scKey struct {
	sidecar int
	kid     string
}

// judge decides, for each sidecar and key, when the sidecar had applied
// the key's revocation: no later than the first answer refusing a token
// of the key as "signing key revoked" (the event set only grows). A
// forged token accepted in answer to a request sent after that answer
// came is a violation; one accepted in answer to a request sent earlier
// may have been verified before the event arrived, and is not.
func (a *attacker) judge() verdicts {
	a.mu.Lock()
	all := append([]attempt(nil), a.attempts...)
	a.mu.Unlock()
	v := verdicts{applied: map[scKey]time.Time{}}
	for _, at := range all {
		if !at.refusedForKey() {
			continue
		}
		k := scKey{at.sidecar, at.kid}
		if t, ok := v.applied[k]; !ok || at.answered.Before(t) {
			v.applied[k] = at.answered
		}
	}
	for _, at := range all {
		switch {
		case at.refusedForKey():
			v.refused++
		case at.code == http.StatusOK:
			t, ok := v.applied[scKey{at.sidecar, at.kid}]
			if ok && at.sent.After(t) {
				v.violations = append(v.violations, at)
			} else {
				v.acceptedBefore++
			}
		default:
			v.otherwise++
		}
	}
	return v
}

// keyRevocationAnswer is the part of issuer.KeyRevocationResult read here.
type keyRevocationAnswer struct {
	Revocation struct {
		ID string `json:"id"`
	} `json:"revocation"`
	ActivatedKID             string `json:"activated_kid"`
	PropagationDelayCutShort string `json:"propagation_delay_cut_short"`
}

// revokeKey is what security does: POST /admin/v1/keys/{kid}/revoke. The
// kid is tainted before the request goes out, so that the driver never
// takes a refusal of its tokens for a wrong one.
func (e *env) revokeKey(kid string) (*keyRevocationAnswer, time.Time, time.Time) {
	e.t.Helper()
	e.drv.l.taint("kid", kid)
	var res keyRevocationAnswer
	sent := time.Now()
	var acked time.Time
	e.must(poll(e.ctx, 60*time.Second, 200*time.Millisecond, func() error {
		code, b := e.drv.admin(e.ctx, e.drv.issuer(), http.MethodPost, "/admin/v1/keys/"+kid+"/revoke",
			map[string]any{"reason": "leaked (chaos drill)"})
		if code != http.StatusCreated && code != http.StatusOK {
			return fmt.Errorf("revoke key %s: %d %s", kid, code, b)
		}
		acked = time.Now()
		return json.Unmarshal(b, &res)
	}), "revoke key "+kid)
	return &res, sent, acked
}

// scenarioLeakedKey: the attacker reads the ring (every key in it: the
// active key, the next one, the retired ones still published) and forges
// tokens with them against every sidecar, which accept them. Security
// revokes each of those keys, the next one first, so that revoking the
// active key activates a key the attacker never held (made milliseconds
// before: its propagation delay is cut short). The attack goes on through
// the load. Then: every sidecar refuses a token of every leaked key as
// "signing key revoked", token strings it had accepted and cached before
// included, no forged token was accepted after a sidecar applied its
// key's revocation, and valid tokens of the new key pass (the driver's
// ledger, with keyRecoveryWindow).
func scenarioLeakedKey(e *env) {
	e.waitHold()
	e.drv.rotatorPaused.Store(true)
	defer e.drv.rotatorPaused.Store(false)
	ring, err := leakKeyRing(e.ctx, e.d)
	e.must(err, "read the key ring with the KEK")
	var leaked []*jwks.Key
	var active, next *jwks.Key
	var retired []*jwks.Key
	for _, k := range ring.Keys {
		switch k.State {
		case jwks.StateActive:
			active = k
		case jwks.StateNext:
			next = k
		case jwks.StateRetired:
			retired = append(retired, k)
		default:
			continue // revoked: no private half
		}
		leaked = append(leaked, k)
	}
	targets := make([]string, len(e.d.sidecars))
	incs := make([]int, len(e.d.sidecars))
	for i, sc := range e.d.sidecars {
		targets[i], incs[i] = sc.url, sc.proc.Incarnation()
	}
	atk := newAttacker(leaked, targets)
	defer atk.stop()
	e.t.Logf("leaked ring %d: active %s, next %s, %d retired", ring.Sequence, active.ID, next.ID, len(retired))

	// The leak is real: every sidecar accepts a token forged with each
	// leaked key, and caches that verdict.
	cached := map[string][]string{} // kid -> forged strings every sidecar accepted
	for _, k := range leaked {
		raw, err := atk.forge(k, time.Now())
		e.must(err, "forge")
		for i := range targets {
			e.must(poll(e.ctx, 10*time.Second, 50*time.Millisecond, func() error {
				if at := atk.present(e.ctx, i, k.ID, raw); at.code != http.StatusOK {
					return fmt.Errorf("sidecar-%d refuses a token forged with %s key %s before any revocation: %d %q", i, k.State, k.ID, at.code, at.desc)
				}
				return nil
			}), "forged token accepted before the revocation")
		}
		cached[k.ID] = append(cached[k.ID], raw)
	}
	atk.start()
	e.soak(min(e.s.duration, 2*time.Second))

	// Incident response: the next key first (revoking the active key
	// first would activate a key the attacker holds), then the active
	// one, then the retired ones.
	began := time.Now()
	res, _, _ := e.revokeKey(next.ID)
	e.t.Logf("revoked next key %s (event %s)", next.ID, res.Revocation.ID)
	res, sent, acked := e.revokeKey(active.ID)
	if res.ActivatedKID == "" {
		// A retry answered 200 (already revoked): ask which key signs.
		kr, err := e.keyRing(e.drv.issuer())
		e.must(err, "key ring")
		for _, k := range kr.Keys {
			if k.State == "active" {
				res.ActivatedKID = k.ID
			}
		}
	}
	for _, k := range leaked {
		if k.ID == res.ActivatedKID {
			e.t.Fatalf("revoking the active key activated %s, a key the attacker holds", k.ID)
		}
	}
	e.drv.l.recover(res.ActivatedKID, acked.Add(keyRecoveryWindow))
	e.t.Logf("revoked active key %s in %s: %s signs now (propagation delay cut short by %q)", active.ID,
		acked.Sub(sent).Round(time.Millisecond), res.ActivatedKID, res.PropagationDelayCutShort)
	for _, k := range retired {
		e.revokeKey(k.ID)
	}
	e.t.Logf("revoked %d leaked keys in %s", len(leaked), time.Since(began).Round(time.Millisecond))

	// Valid tokens of the new key pass everywhere (checkValid counts a
	// refusal after keyRecoveryWindow as a violation).
	var fresh *token
	e.must(poll(e.ctx, 10*time.Second, 100*time.Millisecond, func() error {
		tok, err := e.freshToken()
		if err != nil {
			return err
		}
		if tok.kid != res.ActivatedKID {
			// The other replica may not have applied the event yet.
			return fmt.Errorf("a login after the revocation got a token of %s, want the activated key %s", tok.kid, res.ActivatedKID)
		}
		fresh = tok
		return nil
	}), "a token of the activated key")
	for i, sc := range e.d.sidecars {
		if sc.proc.running() {
			e.drv.checkValid(e.ctx, i, fresh)
		}
	}
	e.soak(e.s.duration)

	// Every sidecar applied every key's revocation: a freshly forged
	// token of each is refused as "signing key revoked".
	for i := range targets {
		for _, k := range leaked {
			err := poll(e.ctx, 30*time.Second, 50*time.Millisecond, func() error {
				raw, err := atk.forge(k, time.Now())
				if err != nil {
					return err
				}
				if at := atk.present(e.ctx, i, k.ID, raw); !at.refusedForKey() {
					return fmt.Errorf("answered %d %q", at.code, at.desc)
				}
				return nil
			})
			if err != nil {
				e.drv.l.violate(e.t, vNeverApplied, "sidecar-%d never refused a token of revoked key %s as %q: %v", i, k.ID, revocation.ReasonKey, err)
			}
		}
	}
	// The strings each sidecar accepted and cached before are refused. An
	// acceptance is a violation the judge below counts (the sidecar had
	// refused a token of the key just before); any other answer than
	// "signing key revoked" breaks the contract.
	nCached := 0
	for kid, raws := range cached {
		for _, raw := range raws {
			for i := range targets {
				nCached++
				if at := atk.present(e.ctx, i, kid, raw); at.code == http.StatusOK {
					e.t.Logf("sidecar-%d accepted a forged token of revoked key %s that it had accepted and cached before the revocation", i, kid)
				} else if !at.refusedForKey() {
					e.t.Errorf("sidecar-%d answered %d %q to a forged token of revoked key %s it had accepted before the revocation, want 401 %q",
						i, at.code, at.desc, kid, revocation.ReasonKey)
				}
			}
		}
	}
	e.t.Logf("%d forged tokens (%d keys × %d sidecars) each sidecar had accepted and cached before the revocation, presented to it again after", nCached, len(leaked), len(targets))
	atk.stop()
	for i, sc := range e.d.sidecars {
		if sc.proc.Incarnation() != incs[i] {
			e.t.Fatalf("sidecar-%d restarted during the scenario: its verdicts cannot be judged", i)
		}
	}
	v := atk.judge()
	for _, at := range v.violations {
		e.drv.l.violate(e.t, vForgedAccepted, "sidecar-%d accepted a token forged with revoked key %s, asked %s after it had refused one as %q",
			at.sidecar, at.kid, at.sent.Sub(v.applied[scKey{at.sidecar, at.kid}]).Round(time.Microsecond), revocation.ReasonKey)
	}
	e.t.Logf("attack: %d forged tokens presented: %d accepted before their key's revocation was applied, %d refused as %q, %d otherwise; %d accepted after (violations)",
		len(atk.attempts), v.acceptedBefore, v.refused, revocation.ReasonKey, v.otherwise, len(v.violations))
	if v.acceptedBefore == 0 {
		e.t.Errorf("no forged token was ever accepted: the scenario shows nothing")
	}
}
