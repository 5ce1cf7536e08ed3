package revocation

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/jwks"
)

// at is the fixed clock of the set tests.
var at = time.Unix(1_700_000_000, 0)

func fixedSet() *Set { return NewSet(WithSetClock(func() time.Time { return at })) }

// ev makes an event for the set tests: iat = at, expires in an hour;
// before is issued_before (sub, client, all) as seconds relative to at.
func ev(t testing.TB, kind Kind, value string, before int64) *Event {
	t.Helper()
	e, err := NewEvent(kind, value, at.Add(time.Duration(before)*time.Second), at.Add(time.Hour), "secret admin note", at)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestSetCheck(t *testing.T) {
	iat := at.Unix()
	claims := func(edit func(c *jwks.Claims)) *jwks.Claims {
		c := &jwks.Claims{ID: "tok-1", SessionID: "sess-1", Subject: "alice", ClientID: "app", IssuedAt: iat, KeyID: "key-1"}
		if edit != nil {
			edit(c)
		}
		return c
	}
	tests := []struct {
		name   string
		events []*Event
		claims *jwks.Claims
		reason string // "" = not revoked
	}{
		{"empty set", nil, claims(nil), ""},
		{"jti", []*Event{ev(t, KindJTI, "tok-1", 0)}, claims(nil), ReasonToken},
		{"other jti", []*Event{ev(t, KindJTI, "tok-2", 0)}, claims(nil), ""},
		{"jti ignores iat", []*Event{ev(t, KindJTI, "tok-1", 0)}, claims(func(c *jwks.Claims) { c.IssuedAt = iat + 3600 }), ReasonToken},
		{"sid", []*Event{ev(t, KindSID, "sess-1", 0)}, claims(nil), ReasonSession},
		{"sid ignores iat", []*Event{ev(t, KindSID, "sess-1", 0)}, claims(func(c *jwks.Claims) { c.IssuedAt = iat + 3600 }), ReasonSession},
		{"other sid", []*Event{ev(t, KindSID, "sess-2", 0)}, claims(nil), ""},
		{"token without sid", []*Event{ev(t, KindSID, "sess-1", 0)}, claims(func(c *jwks.Claims) { c.SessionID = "" }), ""},
		{"a jti event does not match the same sid value", []*Event{ev(t, KindJTI, "sess-1", 0)}, claims(nil), ""},
		{"a sub event does not match a client of that name", []*Event{ev(t, KindSub, "app", 0)}, claims(nil), ""},

		{"sub iat == issued_before", []*Event{ev(t, KindSub, "alice", 0)}, claims(nil), ReasonSubject},
		{"sub iat < issued_before", []*Event{ev(t, KindSub, "alice", 0)}, claims(func(c *jwks.Claims) { c.IssuedAt = iat - 600 }), ReasonSubject},
		{"sub iat == issued_before+1", []*Event{ev(t, KindSub, "alice", 0)}, claims(func(c *jwks.Claims) { c.IssuedAt = iat + 1 }), ""},
		{"other sub", []*Event{ev(t, KindSub, "bob", 0)}, claims(nil), ""},

		{"client iat == issued_before", []*Event{ev(t, KindClient, "app", 0)}, claims(nil), ReasonClient},
		{"client iat == issued_before+1", []*Event{ev(t, KindClient, "app", 0)}, claims(func(c *jwks.Claims) { c.IssuedAt = iat + 1 }), ""},
		{"other client", []*Event{ev(t, KindClient, "other", 0)}, claims(nil), ""},

		{"all iat == issued_before", []*Event{ev(t, KindAll, "", 0)}, claims(nil), ReasonAll},
		{"all iat == issued_before+1", []*Event{ev(t, KindAll, "", 0)}, claims(func(c *jwks.Claims) { c.IssuedAt = iat + 1 }), ""},
		{"all matches a token with nothing else", []*Event{ev(t, KindAll, "", 0)}, &jwks.Claims{IssuedAt: iat - 1}, ReasonAll},

		{"several events for a subject: max wins (newest last)", []*Event{
			ev(t, KindSub, "alice", -600), ev(t, KindSub, "alice", -300), ev(t, KindSub, "alice", 30),
		}, claims(func(c *jwks.Claims) { c.IssuedAt = iat + 30 }), ReasonSubject},
		{"several events for a subject: max wins (newest first)", []*Event{
			ev(t, KindSub, "alice", 30), ev(t, KindSub, "alice", -600),
		}, claims(func(c *jwks.Claims) { c.IssuedAt = iat + 30 }), ReasonSubject},
		{"several events for a subject: past the max", []*Event{
			ev(t, KindSub, "alice", -600), ev(t, KindSub, "alice", 30), ev(t, KindSub, "alice", -300),
		}, claims(func(c *jwks.Claims) { c.IssuedAt = iat + 31 }), ""},
		{"several events for a client: max wins", []*Event{
			ev(t, KindClient, "app", 10), ev(t, KindClient, "app", -10),
		}, claims(func(c *jwks.Claims) { c.IssuedAt = iat + 10 }), ReasonClient},
		{"several all events: max wins", []*Event{
			ev(t, KindAll, "", -100), ev(t, KindAll, "", 20), ev(t, KindAll, "", 0),
		}, claims(func(c *jwks.Claims) { c.IssuedAt = iat + 20 }), ReasonAll},
		{"kid", []*Event{ev(t, KindKID, "key-1", 0)}, claims(nil), ReasonKey},
		{"kid ignores iat (a forger chooses it)", []*Event{ev(t, KindKID, "key-1", 0)}, claims(func(c *jwks.Claims) { c.IssuedAt = iat + 3600 }), ReasonKey},
		{"kid ignores jti and sid", []*Event{ev(t, KindKID, "key-1", 0)}, claims(func(c *jwks.Claims) { c.ID, c.SessionID = "forged", "" }), ReasonKey},
		{"other kid", []*Event{ev(t, KindKID, "key-2", 0)}, claims(nil), ""},
		{"claims without a kid", []*Event{ev(t, KindKID, "key-1", 0)}, claims(func(c *jwks.Claims) { c.KeyID = "" }), ""},
		{"a kid event does not match a jti of that value", []*Event{ev(t, KindKID, "tok-1", 0)}, claims(nil), ""},
		{"kid reason comes first", []*Event{
			ev(t, KindJTI, "tok-1", 0), ev(t, KindKID, "key-1", 0),
		}, claims(nil), ReasonKey},
		{"jti reason comes first", []*Event{
			ev(t, KindAll, "", 0), ev(t, KindSub, "alice", 0), ev(t, KindJTI, "tok-1", 0),
		}, claims(nil), ReasonToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := fixedSet()
			for _, e := range tt.events {
				if !s.Apply(e) {
					t.Fatalf("Apply(%+v) = false", e)
				}
			}
			revoked, reason := s.Check(tt.claims)
			if revoked != (tt.reason != "") || reason != tt.reason {
				t.Fatalf("Check = %v %q, want %q", revoked, reason, tt.reason)
			}
		})
	}
}

func TestSetApply(t *testing.T) {
	s := fixedSet()
	e := ev(t, KindJTI, "tok-1", 0)
	if !s.Apply(e) {
		t.Fatal("first Apply = false")
	}
	if s.Apply(e) {
		t.Error("Apply of the same event again = true")
	}
	dup := *e // same id, as a replayed message decodes
	if s.Apply(&dup) {
		t.Error("Apply of a copy with the same id = true")
	}
	if s.Len() != 1 {
		t.Errorf("Len = %d, want 1", s.Len())
	}
	// A second event for the same jti that lasts no longer adds nothing:
	// the token is revoked once (see TestRepeatedSessionRevocationsKeepOneEvent).
	if s.Apply(ev(t, KindJTI, "tok-1", 0)) {
		t.Error("second, no longer-lived event for the same jti = true")
	}
	first, second := ev(t, KindSub, "alice", 0), ev(t, KindSub, "alice", 0)
	if !s.Apply(first) || !s.Apply(second) {
		t.Error("two events for the same sub are two events")
	}
	if s.Len() != 3 {
		t.Errorf("Len = %d, want 3", s.Len())
	}

	expired := ev(t, KindJTI, "tok-old", 0)
	expired.ExpiresAt = at.Unix()
	if s.Apply(expired) {
		t.Error("Apply of an event expiring now = true")
	}
	invalid := ev(t, KindJTI, "tok-x", 0)
	invalid.Value = ""
	if s.Apply(invalid) {
		t.Error("Apply of an invalid event = true")
	}
	if s.Len() != 3 {
		t.Errorf("Len = %d, want 3", s.Len())
	}

	// The set keeps its own copy.
	mine := ev(t, KindSID, "sess-9", 0)
	s.Apply(mine)
	mine.Value = "changed"
	if revoked, _ := s.Check(&jwks.Claims{SessionID: "sess-9"}); !revoked {
		t.Error("changing the caller's event changed the set")
	}
}

func TestSetGC(t *testing.T) {
	s := fixedSet()
	mk := func(kind Kind, value string, before int64, expiresIn time.Duration) *Event {
		e := ev(t, kind, value, before)
		e.ExpiresAt = at.Add(expiresIn).Unix()
		if !s.Apply(e) {
			t.Fatalf("Apply %s %s", kind, value)
		}
		return e
	}
	mk(KindJTI, "short", 0, time.Minute)
	keepJTI := mk(KindJTI, "long", 0, time.Hour)
	mk(KindSID, "short", 0, 2*time.Minute)
	keepSID := mk(KindSID, "long", 0, time.Hour)
	// alice: the newest event (highest issued_before) expires first.
	mk(KindSub, "alice", 50, time.Minute)
	keepSub := mk(KindSub, "alice", -50, time.Hour)
	mk(KindAll, "", 0, time.Minute)
	if s.Len() != 7 {
		t.Fatalf("Len = %d, want 7", s.Len())
	}
	aliceAt := func(offset int64) bool {
		r, _ := s.Check(&jwks.Claims{Subject: "alice", IssuedAt: at.Unix() + offset})
		return r
	}
	if !aliceAt(50) {
		t.Fatal("alice at +50 not revoked before GC")
	}

	if n := s.GC(at); n != 0 {
		t.Errorf("GC(at) removed %d, want 0", n)
	}
	if n := s.GC(at.Add(time.Minute - time.Second)); n != 0 {
		t.Errorf("GC before the first expiry removed %d, want 0", n)
	}
	if n := s.GC(at.Add(time.Minute)); n != 3 {
		t.Errorf("GC at the first expiry removed %d, want 3 (expires_at <= now)", n)
	}
	if s.Len() != 4 {
		t.Errorf("Len = %d, want 4", s.Len())
	}
	if aliceAt(50) {
		t.Error("alice at +50 still revoked: the max was not recomputed")
	}
	if !aliceAt(-50) {
		t.Error("alice at -50 no longer revoked: GC removed a live event")
	}
	if r, _ := s.Check(&jwks.Claims{IssuedAt: at.Unix() - 100}); r {
		t.Error("expired all event still revokes")
	}
	if r, _ := s.Check(&jwks.Claims{ID: "short"}); r {
		t.Error("expired jti still revokes")
	}
	if n := s.GC(at.Add(2 * time.Minute)); n != 1 {
		t.Errorf("second GC removed %d, want 1", n)
	}
	got := s.Events()
	want := []*Event{keepJTI, keepSID, keepSub}
	if len(got) != len(want) {
		t.Fatalf("Events() = %d events, want %d", len(got), len(want))
	}
	ids := func(es []*Event) []string {
		var out []string
		for _, e := range es {
			out = append(out, e.ID)
		}
		slices.Sort(out)
		return out
	}
	if !slices.Equal(ids(got), ids(want)) {
		t.Errorf("Events() = %v, want %v", ids(got), ids(want))
	}
	if n := s.GC(at.Add(2 * time.Hour)); n != 3 {
		t.Errorf("final GC removed %d, want 3", n)
	}
	if s.Len() != 0 || len(s.Events()) != 0 {
		t.Errorf("Len = %d, Events = %d after everything expired", s.Len(), len(s.Events()))
	}
}

func TestSetEvents(t *testing.T) {
	now := at
	s := NewSet(WithSetClock(func() time.Time { return now }))
	var want []string
	for i := range 5 {
		iat := at.Add(time.Duration(4-i) * time.Second) // applied newest first
		e, err := NewEvent(KindJTI, fmt.Sprintf("t%d", i), time.Time{}, at.Add(time.Hour), fmt.Sprintf("reason %d", i), iat)
		if err != nil {
			t.Fatal(err)
		}
		s.Apply(e)
		want = append([]string{e.ID}, want...)
	}
	got := s.Events()
	var ids []string
	for _, e := range got {
		ids = append(ids, e.ID)
	}
	if !slices.Equal(ids, want) {
		t.Errorf("Events not ordered by iat: %v, want %v", ids, want)
	}
	if got[0].Reason != "reason 4" {
		t.Errorf("Events lost the reason: %q", got[0].Reason)
	}
	got[0].Value = "mutated"
	if s.Events()[0].Value == "mutated" {
		t.Error("Events returned the set's own events")
	}
	// Expired events are not live even before GC.
	now = at.Add(2 * time.Hour)
	if n := len(s.Events()); n != 0 {
		t.Errorf("Events after expiry = %d, want 0", n)
	}
}

func TestSetReasonNeverLeaksAdminText(t *testing.T) {
	s := fixedSet()
	for _, e := range []*Event{ev(t, KindJTI, "a", 0), ev(t, KindSID, "b", 0), ev(t, KindSub, "c", 0), ev(t, KindClient, "d", 0), ev(t, KindAll, "", 0)} {
		s.Apply(e)
	}
	for _, c := range []*jwks.Claims{{ID: "a"}, {SessionID: "b"}, {Subject: "c"}, {ClientID: "d"}, {}} {
		_, reason := s.Check(c)
		if reason == "" || reason == "secret admin note" {
			t.Errorf("Check(%+v) reason %q", c, reason)
		}
	}
}

// TestSetConcurrent runs Check, Apply and GC at once; with -race it
// checks that the hot path needs no lock.
func TestSetConcurrent(t *testing.T) {
	s := NewSet()
	now := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.RunGC(ctx, time.Millisecond, time.Now)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 300 {
				e, err := NewEvent(KindJTI, fmt.Sprintf("w%d-%d", w, i), time.Time{}, now.Add(time.Hour), "", now)
				if err != nil {
					t.Error(err)
					return
				}
				s.Apply(e)
				if r, _ := s.Check(&jwks.Claims{ID: e.Value}); !r {
					t.Errorf("%s not revoked right after Apply", e.Value)
					return
				}
			}
		})
	}
	wg.Wait()
	if s.Len() != 1200 {
		t.Errorf("Len = %d, want 1200", s.Len())
	}
}

func TestRunGC(t *testing.T) {
	s := NewSet()
	now := time.Now()
	e, err := NewEvent(KindJTI, "soon", time.Time{}, now.Add(time.Second), "", now)
	if err != nil {
		t.Fatal(err)
	}
	s.Apply(e)
	var mu sync.Mutex
	clock := now
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.RunGC(ctx, 5*time.Millisecond, func() time.Time { mu.Lock(); defer mu.Unlock(); return clock })
	}()
	mu.Lock()
	clock = now.Add(time.Hour)
	mu.Unlock()
	eventually(t, 10*time.Second, "RunGC removes the expired event", func() bool { return s.Len() == 0 })
	cancel()
	<-done
}

// TestSetGCAll: the bound of the "all" events follows GC like any other.
func TestSetGCAll(t *testing.T) {
	s := fixedSet()
	newest := ev(t, KindAll, "", 30)
	newest.ExpiresAt = at.Add(time.Minute).Unix()
	older := ev(t, KindAll, "", -30)
	for _, e := range []*Event{newest, older} {
		if !s.Apply(e) {
			t.Fatal("Apply")
		}
	}
	revokedAt := func(offset int64) bool {
		r, _ := s.Check(&jwks.Claims{IssuedAt: at.Unix() + offset})
		return r
	}
	if !revokedAt(30) || revokedAt(31) {
		t.Fatal("bound is not the newest issued_before")
	}
	if n := s.GC(at.Add(time.Minute)); n != 1 {
		t.Fatalf("GC removed %d, want 1", n)
	}
	if revokedAt(0) || !revokedAt(-30) {
		t.Error("after GC the bound is not the remaining event's")
	}
	if n := s.GC(at.Add(2 * time.Hour)); n != 1 {
		t.Fatalf("GC removed %d, want 1", n)
	}
	if revokedAt(-1000) {
		t.Error("no all event left, still revoked")
	}
}

// TestRepeatedSessionRevocationsKeepOneEvent: revoking the same session or
// token again keeps one event (the longest-lived), so repeats cost nothing.
func TestRepeatedSessionRevocationsKeepOneEvent(t *testing.T) {
	now := time.Now()
	s := NewSet(WithSetClock(func() time.Time { return now }))
	for i := range 1000 {
		e, err := NewEvent(KindSID, "s1", time.Time{}, now.Add(time.Hour+time.Duration(i)*time.Second), "logout", now)
		if err != nil {
			t.Fatal(err)
		}
		s.Apply(e)
	}
	if s.Len() != 1 || len(s.Events()) != 1 {
		t.Fatalf("len %d, events %d", s.Len(), len(s.Events()))
	}
	if got := s.Events()[0].ExpiresAt; got < now.Add(time.Hour+999*time.Second).Unix() {
		t.Fatalf("kept expiry %d", got)
	}
	shorter, _ := NewEvent(KindSID, "s1", time.Time{}, now.Add(time.Minute), "logout", now)
	if s.Apply(shorter) {
		t.Fatal("a shorter-lived repeat replaced a longer one")
	}
	if revoked, _ := s.Check(&jwks.Claims{SessionID: "s1"}); !revoked {
		t.Fatal("session not revoked")
	}
}

// TestSetModel applies random events (one at a time and in batches, as a
// replay does), with repeats and GC rounds, and after every step compares
// the set with a plain model and checks its indexes agree: go-memdb
// derives the index keys to remove from the object it holds, so a bucket
// changed in place without care leaves stale keys behind.
func TestSetModel(t *testing.T) {
	now := at
	s := NewSet(WithSetClock(func() time.Time { return now }))
	rnd := rand.New(rand.NewPCG(1, 2))
	live := map[string]*Event{} // id → event the model holds
	var pool []*Event           // events seen, for repeats
	mk := func() *Event {
		kind := Kinds[rnd.IntN(len(Kinds))]
		value := ""
		if kind != KindAll {
			value = fmt.Sprintf("v%d", rnd.IntN(40)) // few values: many events per entry and bucket
		}
		e, err := NewEvent(kind, value, now.Add(-time.Duration(rnd.IntN(100))*time.Second),
			now.Add(time.Duration(1+rnd.IntN(600))*time.Second), "", now)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	// modelApply mirrors Apply: kid, jti and sid keep the one event that lasts
	// longest; other kinds keep every event.
	modelApply := func(e *Event) bool {
		if _, ok := live[e.ID]; ok || e.ExpiresAt <= now.Unix() {
			return false
		}
		if e.Kind == KindJTI || e.Kind == KindSID || e.Kind == KindKID {
			for id, h := range live {
				if h.Kind == e.Kind && h.Value == e.Value {
					if h.ExpiresAt >= e.ExpiresAt {
						return false
					}
					delete(live, id)
				}
			}
		}
		live[e.ID] = e
		return true
	}
	check := func(step int) {
		t.Helper()
		if s.Len() != len(live) {
			t.Fatalf("step %d: Len = %d, model holds %d", step, s.Len(), len(live))
		}
		txn := s.db.Txn(false)
		byID, byExp := map[*bucket]bool{}, map[*bucket]bool{}
		var counted [numKinds]int64
		it, _ := txn.Get(table, indexID)
		for raw := it.Next(); raw != nil; raw = it.Next() {
			b := raw.(*bucket)
			byID[b] = true
			m := b.entries[0].minExpires
			for i, e := range b.entries {
				m = min(m, e.minExpires)
				if i > 0 && b.entries[i-1].value >= e.value {
					t.Fatalf("step %d: bucket %x not sorted", step, b.key)
				}
				counted[kindSlot(e.events[0].Kind)]++
			}
			if m != b.minExpires {
				t.Fatalf("step %d: bucket %x minExpires %d, entries say %d", step, b.key, b.minExpires, m)
			}
		}
		it, _ = txn.Get(table, indexExpires)
		for raw := it.Next(); raw != nil; raw = it.Next() {
			b := raw.(*bucket)
			if byExp[b] || !byID[b] {
				t.Fatalf("step %d: expires index holds bucket %x twice or a bucket that is gone", step, b.key)
			}
			byExp[b] = true
		}
		if len(byExp) != len(byID) {
			t.Fatalf("step %d: %d buckets by id, %d by expiry", step, len(byID), len(byExp))
		}
		for k := range counted {
			if counted[k] != s.entries[k].Load() {
				t.Fatalf("step %d: kind %d: %d entries, counter says %d", step, k, counted[k], s.entries[k].Load())
			}
		}
		for _, e := range live {
			c := &jwks.Claims{IssuedAt: e.IssuedBefore}
			switch e.Kind {
			case KindJTI:
				c.ID = e.Value
			case KindSID:
				c.SessionID = e.Value
			case KindSub:
				c.Subject = e.Value
			case KindClient:
				c.ClientID = e.Value
			case KindKID:
				c.KeyID = e.Value
			}
			if revoked, _ := s.Check(c); !revoked {
				t.Fatalf("step %d: live %s %q not revoked", step, e.Kind, e.Value)
			}
		}
	}
	for step := range 300 {
		switch r := rnd.IntN(10); {
		case r < 4:
			e := mk()
			if rnd.IntN(4) == 0 && len(pool) > 0 {
				e = pool[rnd.IntN(len(pool))]
			}
			pool = append(pool, e)
			if got, want := s.Apply(e), modelApply(e); got != want {
				t.Fatalf("step %d: Apply = %v, model says %v", step, got, want)
			}
		case r < 8:
			batch := make([]*Event, 1+rnd.IntN(30))
			want := make([]bool, len(batch))
			for i := range batch {
				batch[i] = mk()
				if rnd.IntN(4) == 0 && len(pool) > 0 {
					batch[i] = pool[rnd.IntN(len(pool))]
				}
				pool = append(pool, batch[i])
				want[i] = modelApply(batch[i])
			}
			got := make([]bool, len(batch))
			s.applyAll(batch, got)
			if !slices.Equal(got, want) {
				t.Fatalf("step %d: applyAll = %v, model says %v", step, got, want)
			}
		default:
			now = now.Add(time.Duration(rnd.IntN(120)) * time.Second)
			removed := 0
			for id, e := range live {
				if e.ExpiresAt <= now.Unix() {
					delete(live, id)
					removed++
				}
			}
			if n := s.GC(now); n != removed {
				t.Fatalf("step %d: GC removed %d, model %d", step, n, removed)
			}
		}
		check(step)
	}
}
