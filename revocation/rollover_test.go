package revocation

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
	"github.com/tokenwarden/tokenwarden/jwks"
)

// TestPublishCopyAndWithVerified: a copy of an event signed by a second
// distribution key is stored beside the original (not swallowed by the
// duplicate window, which would leave verifiers that trust only the second
// key without it), a second copy by the same key is stored once, a
// consumer trusting both keys applies the event once and reports both
// messages to WithVerified with their bytes, and a consumer trusting only
// the second key applies the event from the copy.
func TestPublishCopyAndWithVerified(t *testing.T) {
	n := newNATS(t)
	_, js := n.connect()
	s := ensureStream(t, js)
	oldPub, oldPriv := newKey(t)
	newPub, newPriv := newKey(t)
	ctx := context.Background()

	e := event(t, KindSID, "session-1")
	if _, err := NewPublisher(js, testPrefix, oldPriv).Publish(ctx, e); err != nil {
		t.Fatal(err)
	}
	copier := NewPublisher(js, testPrefix, newPriv)
	first, err := copier.PublishCopy(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	again, err := copier.PublishCopy(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 || again != first {
		t.Fatalf("stream holds %d messages (want the original and one copy); copies at seq %d and %d", info.State.Msgs, first, again)
	}
	expired := event(t, KindJTI, "gone")
	expired.ExpiresAt = time.Now().Add(-time.Second).Unix()
	if _, err := copier.PublishCopy(ctx, expired); err == nil {
		t.Fatal("copy of an expired event published")
	}

	type seen struct {
		id  string
		kid string
	}
	cases := []struct {
		name    string
		trusted []ed25519.PublicKey
		want    []seen // WithVerified calls, in stream order
	}{
		{"both keys", []ed25519.PublicKey{oldPub, newPub},
			[]seen{{e.ID, jwks.DistributionKeyID(oldPub)}, {e.ID, jwks.DistributionKeyID(newPub)}}},
		{"new key only", []ed25519.PublicKey{newPub}, []seen{{e.ID, jwks.DistributionKeyID(newPub)}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var mu sync.Mutex
			var got []seen
			set := NewSet()
			cons := NewConsumer(js, testPrefix, c.trusted, set, WithLogger(testLogger()), WithLiveSubscription(false),
				WithVerified(func(ev *Event, data []byte) {
					mu.Lock()
					defer mu.Unlock()
					got = append(got, seen{ev.ID, headerKid(t, data)})
				}))
			testenv.Run(t, 5*time.Second, cons.Run)
			eventually(t, waitLong, "consumer caught up", cons.CaughtUp)
			mu.Lock()
			defer mu.Unlock()
			if len(got) != len(c.want) {
				t.Fatalf("WithVerified saw %v, want %v", got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Fatalf("WithVerified saw %v, want %v", got, c.want)
				}
			}
			if set.Len() != 1 {
				t.Fatalf("set holds %d events, want 1", set.Len())
			}
			if revoked, _ := set.Check(&jwks.Claims{SessionID: "session-1"}); !revoked {
				t.Fatal("the session is not revoked")
			}
		})
	}
}

// headerKid is the kid of the JWS data.
func headerKid(t *testing.T, data []byte) string {
	t.Helper()
	h, _, _ := bytes.Cut(data, []byte("."))
	b, err := base64.RawURLEncoding.DecodeString(string(h))
	var hdr struct {
		Kid string `json:"kid"`
	}
	if err != nil || json.Unmarshal(b, &hdr) != nil {
		t.Errorf("WithVerified got bytes that are not a JWS: %q", data)
	}
	return hdr.Kid
}
