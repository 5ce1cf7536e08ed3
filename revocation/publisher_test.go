package revocation

import (
	"context"
	"crypto/ed25519"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestNames(t *testing.T) {
	if got := StreamName("tokenwarden"); got != "TOKENWARDEN_REVOCATIONS" {
		t.Errorf("StreamName = %q", got)
	}
	if got := Subject("tokenwarden", KindSub); got != "tokenwarden.revocations.sub" {
		t.Errorf("Subject = %q", got)
	}
	if got := StreamName("acme"); got != "ACME_REVOCATIONS" {
		t.Errorf("StreamName(acme) = %q", got)
	}
}

func TestEnsureStream(t *testing.T) {
	n := newNATS(t)
	_, js := n.connect()
	ctx := context.Background()
	s, err := EnsureStream(ctx, js, StreamConfig{Prefix: testPrefix, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if cfg.Name != "TOKENWARDEN_REVOCATIONS" || len(cfg.Subjects) != 1 || cfg.Subjects[0] != "tokenwarden.revocations.>" {
		t.Errorf("name %q subjects %v", cfg.Name, cfg.Subjects)
	}
	if cfg.Storage != jetstream.FileStorage || cfg.Discard != jetstream.DiscardOld || cfg.MaxAge != time.Hour ||
		cfg.Duplicates != DefaultDuplicateWindow || !cfg.AllowMsgTTL {
		t.Errorf("config %+v", cfg)
	}
	// Idempotent, and an update changes the existing stream.
	s, err = EnsureStream(ctx, js, StreamConfig{Prefix: testPrefix, MaxAge: 2 * time.Hour, DuplicateWindow: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if cfg := s.CachedInfo().Config; cfg.MaxAge != 2*time.Hour || cfg.Duplicates != time.Minute {
		t.Errorf("after update: max age %s duplicates %s", cfg.MaxAge, cfg.Duplicates)
	}
	if _, err := EnsureStream(ctx, js, StreamConfig{Prefix: testPrefix, MaxAge: time.Minute, DuplicateWindow: time.Hour}); err == nil {
		t.Error("duplicate window longer than max age accepted")
	}
}

func TestPublish(t *testing.T) {
	n := newNATS(t)
	_, js := n.connect()
	s := ensureStream(t, js)
	pub, priv := newKey(t)
	p := NewPublisher(js, testPrefix, priv)
	ctx := context.Background()

	e := event(t, KindSub, "alice")
	seq, err := p.Publish(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	if seq != 1 {
		t.Errorf("seq = %d, want 1", seq)
	}

	t.Run("duplicate stored once", func(t *testing.T) {
		again, err := p.Publish(ctx, e)
		if err != nil {
			t.Fatal(err)
		}
		if again != seq {
			t.Errorf("retried publish got seq %d, want the original %d", again, seq)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs != 1 {
			t.Errorf("stream holds %d messages, want 1", info.State.Msgs)
		}
	})

	t.Run("stored message", func(t *testing.T) {
		msg, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if msg.Subject != "tokenwarden.revocations.sub" {
			t.Errorf("subject %q", msg.Subject)
		}
		if got := msg.Header.Get(jetstream.MsgIDHeader); got != e.ID {
			t.Errorf("Nats-Msg-Id %q, want %q", got, e.ID)
		}
		ttl, err := time.ParseDuration(msg.Header.Get(jetstream.MsgTTLHeader))
		if err != nil {
			t.Fatalf("Nats-TTL %q: %v", msg.Header.Get(jetstream.MsgTTLHeader), err)
		}
		if left := time.Until(e.Expires()); ttl < left || ttl > left+2*time.Second {
			t.Errorf("TTL %s, want just over the %s left until expires_at", ttl, left)
		}
		got, err := Verify(msg.Data, []ed25519.PublicKey{pub})
		if err != nil {
			t.Fatal(err)
		}
		if *got != *e {
			t.Errorf("stored %+v, want %+v", got, e)
		}
	})

	t.Run("expired event not published", func(t *testing.T) {
		old := event(t, KindJTI, "gone")
		old.ExpiresAt = time.Now().Add(-time.Second).Unix()
		if _, err := p.Publish(ctx, old); !errors.Is(err, ErrExpired) {
			t.Errorf("got %v, want ErrExpired", err)
		}
	})
	t.Run("invalid event not published", func(t *testing.T) {
		bad := event(t, KindJTI, "x")
		bad.Kind = "nope"
		if _, err := p.Publish(ctx, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("got %v, want ErrInvalid", err)
		}
	})
	t.Run("no stream", func(t *testing.T) {
		other := NewPublisher(js, "elsewhere", priv)
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := other.Publish(ctx, event(t, KindJTI, "x")); err == nil {
			t.Error("publish without a stream succeeded")
		}
	})
}

// TestMessageTTL checks that the stream drops an event once its TTL has
// passed (nats-server ≥ 2.11 per-message TTLs).
func TestMessageTTL(t *testing.T) {
	n := newNATS(t)
	_, js := n.connect()
	s := ensureStream(t, js)
	_, priv := newKey(t)
	p := NewPublisher(js, testPrefix, priv)
	now := time.Now()
	short, err := NewEvent(KindJTI, "short", time.Time{}, now.Add(time.Second), "", now)
	if err != nil {
		t.Fatal(err)
	}
	long := event(t, KindJTI, "long")
	for _, e := range []*Event{short, long} {
		if _, err := p.Publish(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 20*time.Second, "the short-lived event leaves the stream", func() bool {
		info, err := s.Info(context.Background())
		return err == nil && info.State.Msgs == 1
	})
	msg, err := s.GetLastMsgForSubject(context.Background(), Subject(testPrefix, KindJTI))
	if err != nil {
		t.Fatal(err)
	}
	if msg.Header.Get(jetstream.MsgIDHeader) != long.ID {
		t.Errorf("the remaining message is %s, want the long-lived %s", msg.Header.Get(jetstream.MsgIDHeader), long.ID)
	}
}
