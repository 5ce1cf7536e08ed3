package revocation

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/jwks"
)

func validEvent() Event {
	return Event{
		ID:           "AAAAAAAAAAAAAAAAAAAAAA",
		Kind:         KindSub,
		Value:        "alice",
		IssuedBefore: 1_700_000_000,
		ExpiresAt:    1_700_000_700,
		IssuedAt:     1_700_000_000,
		IssuedAtMs:   1_700_000_000_123,
		Reason:       "left the company",
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		edit   func(e *Event)
		errSub string // "" = valid
	}{
		{"valid sub", func(*Event) {}, ""},
		{"valid jti without issued_before", func(e *Event) { e.Kind, e.IssuedBefore = KindJTI, 0 }, ""},
		{"jti ignores issued_before", func(e *Event) { e.Kind, e.IssuedBefore = KindJTI, e.IssuedAt+3600 }, ""},
		{"valid sid", func(e *Event) { e.Kind, e.IssuedBefore = KindSID, 0 }, ""},
		{"valid client", func(e *Event) { e.Kind = KindClient }, ""},
		{"valid all", func(e *Event) { e.Kind, e.Value = KindAll, "" }, ""},
		{"valid kid", func(e *Event) { e.Kind, e.Value, e.IssuedBefore = KindKID, "k1", 0 }, ""},
		{"kid without value", func(e *Event) { e.Kind, e.Value = KindKID, "" }, "value required"},
		{"with actor", func(e *Event) { e.Actor = "admin" }, ""},
		{"actor too long", func(e *Event) { e.Actor = strings.Repeat("a", MaxActorLen+1) }, "actor longer"},
		{"actor control char", func(e *Event) { e.Actor = "ad\x1bmin" }, "printable"},
		{"no iat_ms", func(e *Event) { e.IssuedAtMs = 0 }, ""},
		{"unicode value", func(e *Event) { e.Value = "zoë@example.com" }, ""},
		{"value at limit", func(e *Event) { e.Value = strings.Repeat("v", MaxValueLen) }, ""},
		{"reason at limit", func(e *Event) { e.Reason = strings.Repeat("r", MaxReasonLen) }, ""},
		{"issued_before at skew limit", func(e *Event) {
			e.IssuedBefore = e.IssuedAt + int64(MaxIssuedBeforeSkew/time.Second)
			e.ExpiresAt = e.IssuedBefore
		}, ""},
		{"expires_at == issued_before", func(e *Event) { e.ExpiresAt = e.IssuedBefore }, ""},

		{"id missing", func(e *Event) { e.ID = "" }, "id missing"},
		{"id too long", func(e *Event) { e.ID = strings.Repeat("A", MaxIDLen+1) }, "id longer"},
		{"id not base64url", func(e *Event) { e.ID = "AAAA+AAA" }, "base64url"},
		{"id with newline", func(e *Event) { e.ID = "AAAA\r\nX-Evil: 1" }, "base64url"},
		{"kind missing", func(e *Event) { e.Kind = "" }, "unknown kind"},
		{"kind unknown", func(e *Event) { e.Kind = "user" }, "unknown kind"},
		{"kind case", func(e *Event) { e.Kind = "SUB" }, "unknown kind"},
		{"value missing", func(e *Event) { e.Value = "" }, "value required"},
		{"value for all", func(e *Event) { e.Kind = KindAll }, "takes no value"},
		{"value too long", func(e *Event) { e.Value = strings.Repeat("v", MaxValueLen+1) }, "value longer"},
		{"value control char", func(e *Event) { e.Value = "al\nice" }, "printable"},
		{"value DEL", func(e *Event) { e.Value = "al\x7fice" }, "printable"},
		{"value C1 control", func(e *Event) { e.Value = "al\u0085ice" }, "printable"},
		{"value bad UTF-8", func(e *Event) { e.Value = "al\xffice" }, "printable"},
		{"reason too long", func(e *Event) { e.Reason = strings.Repeat("r", MaxReasonLen+1) }, "reason longer"},
		{"reason control char", func(e *Event) { e.Reason = "a\x1b[31mb" }, "printable"},
		{"iat missing", func(e *Event) { e.IssuedAt, e.IssuedAtMs = 0, 0 }, "iat missing"},
		{"iat negative", func(e *Event) { e.IssuedAt, e.IssuedAtMs = -5, 0 }, "iat missing"},
		{"iat_ms disagrees", func(e *Event) { e.IssuedAtMs = (e.IssuedAt + 1) * 1000 }, "iat_ms"},
		{"iat_ms negative", func(e *Event) { e.IssuedAtMs = -1 }, "iat_ms"},
		{"expires_at missing", func(e *Event) { e.ExpiresAt = 0 }, "expires_at missing"},
		{"expires_at negative", func(e *Event) { e.ExpiresAt = -1 }, "expires_at missing"},
		{"issued_before negative", func(e *Event) { e.Kind, e.IssuedBefore = KindJTI, -1 }, "negative"},
		{"sub without issued_before", func(e *Event) { e.IssuedBefore = 0 }, "issued_before required"},
		{"client without issued_before", func(e *Event) { e.Kind, e.IssuedBefore = KindClient, 0 }, "issued_before required"},
		{"all without issued_before", func(e *Event) { e.Kind, e.Value, e.IssuedBefore = KindAll, "", 0 }, "issued_before required"},
		{"issued_before beyond skew", func(e *Event) {
			e.IssuedBefore = e.IssuedAt + int64(MaxIssuedBeforeSkew/time.Second) + 1
			e.ExpiresAt = e.IssuedBefore + 600
		}, "after iat"},
		{"expires_at before issued_before", func(e *Event) { e.ExpiresAt = e.IssuedBefore - 1 }, "expires_at before"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := validEvent()
			tt.edit(&e)
			err := e.Validate()
			if tt.errSub == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want error containing %q, got nil", tt.errSub)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.errSub) {
				t.Errorf("error %q does not contain %q", err, tt.errSub)
			}
		})
	}
}

func TestNewEvent(t *testing.T) {
	now := time.Unix(1_700_000_000, 250_000_000)
	exp := now.Add(10 * time.Minute)

	e, err := NewEvent(KindSub, "alice", time.Time{}, exp, "why", now)
	if err != nil {
		t.Fatal(err)
	}
	if e.IssuedBefore != now.Unix() {
		t.Errorf("zero issued_before for sub: got %d, want now %d", e.IssuedBefore, now.Unix())
	}
	if e.IssuedAt != now.Unix() || e.IssuedAtMs != now.UnixMilli() {
		t.Errorf("iat %d / %d, want %d / %d", e.IssuedAt, e.IssuedAtMs, now.Unix(), now.UnixMilli())
	}
	if e.ExpiresAt != exp.Unix()+1 {
		t.Errorf("expires_at %d, want %d (rounded up)", e.ExpiresAt, exp.Unix()+1)
	}
	if raw, err := base64.RawURLEncoding.DecodeString(e.ID); err != nil || len(raw) != 16 {
		t.Errorf("id %q is not 128 bits of base64url", e.ID)
	}
	if !e.Time().Equal(now.Truncate(time.Millisecond)) {
		t.Errorf("Time() %v, want %v", e.Time(), now)
	}

	before := now.Add(-time.Hour)
	e2, err := NewEvent(KindClient, "app", before, exp, "", now)
	if err != nil {
		t.Fatal(err)
	}
	if e2.IssuedBefore != before.Unix() {
		t.Errorf("issued_before %d, want %d", e2.IssuedBefore, before.Unix())
	}
	if e2.ID == e.ID {
		t.Error("two events share an id")
	}

	j, err := NewEvent(KindJTI, "tok", before, exp, "", now)
	if err != nil {
		t.Fatal(err)
	}
	if j.IssuedBefore != 0 {
		t.Errorf("jti keeps issued_before %d, want it dropped", j.IssuedBefore)
	}

	if _, err := NewEvent(KindJTI, "tok", time.Time{}, now, "", now); !errors.Is(err, ErrExpired) {
		t.Errorf("expired event: got %v, want ErrExpired", err)
	}
	if _, err := NewEvent(KindJTI, "tok", time.Time{}, time.Time{}, "", now); !errors.Is(err, ErrInvalid) {
		t.Errorf("no expiry: got %v, want ErrInvalid", err)
	}
	if _, err := NewEvent("bogus", "x", time.Time{}, exp, "", now); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown kind: got %v, want ErrInvalid", err)
	}
	if _, err := NewEvent(KindSub, "alice", now.Add(time.Hour), exp.Add(2*time.Hour), "", now); !errors.Is(err, ErrInvalid) {
		t.Errorf("issued_before an hour ahead: got %v, want ErrInvalid", err)
	}
}

func TestExpiryFor(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	tokenExp := now.Add(7 * time.Minute)
	ttl, leeway := 10*time.Minute, 30*time.Second
	tests := []struct {
		kind     Kind
		tokenExp time.Time
		before   time.Time
		want     time.Time
	}{
		{KindJTI, tokenExp, now, tokenExp.Add(leeway)},
		{KindJTI, time.Time{}, now, now.Add(ttl + leeway)},
		{KindSID, tokenExp, now, now.Add(ttl + leeway)},
		{KindSub, time.Time{}, now.Add(-time.Hour), now.Add(-time.Hour + ttl + leeway)},
		{KindClient, time.Time{}, now, now.Add(ttl + leeway)},
		{KindAll, time.Time{}, now, now.Add(ttl + leeway)},
	}
	for _, tt := range tests {
		if got := ExpiryFor(tt.kind, tt.tokenExp, tt.before, ttl, leeway); !got.Equal(tt.want) {
			t.Errorf("ExpiryFor(%s, %v, %v) = %v, want %v", tt.kind, tt.tokenExp, tt.before, got, tt.want)
		}
	}
}

func TestSignVerify(t *testing.T) {
	pub, priv := newKey(t)
	otherPub, otherPriv := newKey(t)
	e := event(t, KindSID, "session-1")
	data, err := Sign(e, priv)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("round trip", func(t *testing.T) {
		got, err := Verify(data, []ed25519.PublicKey{pub})
		if err != nil {
			t.Fatal(err)
		}
		if *got != *e {
			t.Errorf("got %+v, want %+v", got, e)
		}
	})
	t.Run("one of several trusted keys", func(t *testing.T) {
		if _, err := Verify(data, []ed25519.PublicKey{otherPub, pub}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("payload is the contract's fields", func(t *testing.T) {
		parts := strings.Split(string(data), ".")
		if len(parts) != 3 {
			t.Fatalf("not compact JWS: %s", data)
		}
		payload, err := base64.RawURLEncoding.DecodeString(parts[1])
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(payload, &m); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"id", "kind", "value", "expires_at", "iat"} {
			if _, ok := m[k]; !ok {
				t.Errorf("payload %s lacks %q", payload, k)
			}
		}
		hdr, _ := base64.RawURLEncoding.DecodeString(parts[0])
		if !bytes.Contains(hdr, []byte(`"typ":"`+EventType+`"`)) || !bytes.Contains(hdr, []byte(`"alg":"EdDSA"`)) {
			t.Errorf("header %s", hdr)
		}
	})

	forged := func(t *testing.T, data []byte, trusted ...ed25519.PublicKey) {
		t.Helper()
		_, err := Verify(data, trusted)
		if !errors.Is(err, ErrForged) {
			t.Fatalf("got %v, want ErrForged", err)
		}
	}
	t.Run("other key", func(t *testing.T) {
		other, err := Sign(e, otherPriv)
		if err != nil {
			t.Fatal(err)
		}
		forged(t, other, pub)
	})
	t.Run("no trusted key", func(t *testing.T) {
		if _, err := Verify(data, nil); err == nil {
			t.Fatal("verified with no trusted key")
		}
	})
	t.Run("tampered payload", func(t *testing.T) {
		parts := strings.Split(string(data), ".")
		var m map[string]any
		payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
		_ = json.Unmarshal(payload, &m)
		m["value"] = "session-2"
		changed, _ := json.Marshal(m)
		parts[1] = base64.RawURLEncoding.EncodeToString(changed)
		forged(t, []byte(strings.Join(parts, ".")), pub)
	})
	t.Run("tampered signature", func(t *testing.T) {
		b := bytes.Clone(data)
		b[len(b)-5] ^= 0x01
		if bytes.Equal(b, data) {
			t.Fatal("no change")
		}
		forged(t, b, pub)
	})
	t.Run("JWKS bundle signed with the same key", func(t *testing.T) {
		b, err := jwks.SignBundle(&jwks.Bundle{Sequence: 1, IssuedAt: time.Now().Unix(), JWKS: json.RawMessage(`{"keys":[]}`)}, priv)
		if err != nil {
			t.Fatal(err)
		}
		forged(t, b, pub)
		// Nor the other way round: an event is not a bundle.
		if _, err := jwks.VerifyBundle(data, []ed25519.PublicKey{pub}); err == nil {
			t.Fatal("an event verified as a JWKS bundle")
		}
	})
	t.Run("event payload with another typ", func(t *testing.T) {
		b, err := jwks.SignDistributed(e, jwks.BundleType, priv)
		if err != nil {
			t.Fatal(err)
		}
		forged(t, b, pub)
	})
	t.Run("garbage", func(t *testing.T) {
		for _, g := range []string{"", "a.b.c", "not a jws", `{"id":"x"}`, string(data) + ".x"} {
			if _, err := Verify([]byte(g), []ed25519.PublicKey{pub}); !errors.Is(err, ErrForged) {
				t.Errorf("Verify(%q) = %v, want ErrForged", g, err)
			}
		}
	})
	t.Run("oversized", func(t *testing.T) {
		forged(t, append(bytes.Clone(data), bytes.Repeat([]byte("A"), MaxEventSize)...), pub)
	})
	t.Run("signed but invalid", func(t *testing.T) {
		bad := *e
		bad.Kind = "everything"
		b, err := jwks.SignDistributed(&bad, EventType, priv)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(b, []ed25519.PublicKey{pub}); !errors.Is(err, ErrInvalid) || errors.Is(err, ErrForged) {
			t.Fatalf("got %v, want ErrInvalid only", err)
		}
		b, err = jwks.SignDistributed([]string{"not", "an", "event"}, EventType, priv)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(b, []ed25519.PublicKey{pub}); !errors.Is(err, ErrInvalid) {
			t.Fatalf("got %v, want ErrInvalid", err)
		}
	})
	t.Run("unknown payload fields are ignored", func(t *testing.T) {
		m := map[string]any{
			"id": e.ID, "kind": "jti", "value": "x", "expires_at": e.ExpiresAt, "iat": e.IssuedAt,
			"added_later": true,
		}
		b, err := jwks.SignDistributed(m, EventType, priv)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(b, []ed25519.PublicKey{pub}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("Sign refuses an invalid event", func(t *testing.T) {
		bad := *e
		bad.Value = ""
		if _, err := Sign(&bad, priv); !errors.Is(err, ErrInvalid) {
			t.Fatalf("got %v, want ErrInvalid", err)
		}
	})
}

// fuzzKey is fixed so that the seed corpus in testdata/fuzz/FuzzVerifyEvent
// (events signed with it) stays valid.
var fuzzKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))

// FuzzVerifyEvent feeds Verify arbitrary input: it must never panic, and
// whatever it accepts must be a valid event that signs back to something
// it accepts again.
func FuzzVerifyEvent(f *testing.F) {
	trusted := []ed25519.PublicKey{fuzzKey.Public().(ed25519.PublicKey)}
	now := time.Unix(1_700_000_000, 0)
	for _, k := range Kinds {
		v := "value-" + string(k)
		if k == KindAll {
			v = ""
		}
		e, err := NewEvent(k, v, now, now.Add(time.Hour), "seed", now)
		if err != nil {
			f.Fatal(err)
		}
		data, err := Sign(e, fuzzKey)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("eyJhbGciOiJub25lIn0.e30."))
	var neighbours [][]byte // valid events, so that a batch takes the batch path
	for i := range 4 {
		e, err := NewEvent(KindJTI, fmt.Sprintf("n-%d", i), time.Time{}, now.Add(time.Hour), "", now)
		if err != nil {
			f.Fatal(err)
		}
		data, err := Sign(e, fuzzKey)
		if err != nil {
			f.Fatal(err)
		}
		neighbours = append(neighbours, data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := Verify(data, trusted)
		// VerifyBatch gives the same answer for data among valid events.
		batch := append([][]byte{neighbours[0], data}, neighbours[1:]...)
		events, errs := VerifyBatch(batch, trusted)
		if (errs[1] == nil) != (err == nil) || err != nil && (errors.Is(errs[1], ErrForged) != errors.Is(err, ErrForged)) {
			t.Fatalf("VerifyBatch says %v, Verify says %v", errs[1], err)
		}
		if err == nil && *events[1] != *e {
			t.Fatalf("VerifyBatch decoded %+v, Verify %+v", events[1], e)
		}
		for i, err := range errs {
			if i != 1 && err != nil {
				t.Fatalf("a valid neighbour was refused: %v", err)
			}
		}
		if err != nil {
			if !errors.Is(err, ErrForged) && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is neither ErrForged nor ErrInvalid", err)
			}
			return
		}
		if err := e.Validate(); err != nil {
			t.Fatalf("accepted an invalid event: %v", err)
		}
		again, err := Sign(e, fuzzKey)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(again, trusted); err != nil {
			t.Fatalf("re-signed event does not verify: %v", err)
		}
	})
}
