package revocation

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestLiveIgnoresStreamAnswers: what JetStream sends onto a revocation
// subject because someone named it as the reply subject of a stream read
// is not taken as a publish. With the sidecars' credential, one batched read
// naming a revocation subject as its reply delivers every stored event to
// every sidecar's live subscription (the server checks reply subjects
// against no permission): each would cost a signature check and a stream
// read, per sidecar. The messages are captured from a real server.
func TestLiveIgnoresStreamAnswers(t *testing.T) {
	n := newNATS(t)
	nc, js := n.connect()
	ensureStream(t, js)
	_, priv := newKey(t)
	p := NewPublisher(js, testPrefix, priv)
	publishN(t, p, 2, "stored")

	live := Subject(testPrefix, KindJTI)
	sub, err := nc.SubscribeSync(live)
	if err != nil {
		t.Fatal(err)
	}
	next := func(what string) *nats.Msg {
		t.Helper()
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("%s: nothing on %s: %v", what, live, err)
		}
		return m
	}
	ask := func(body string) {
		t.Helper()
		if err := nc.PublishRequest("$JS.API.DIRECT.GET."+StreamName(testPrefix), live, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}

	if _, err := p.Publish(context.Background(), event(t, KindJTI, "real")); err != nil {
		t.Fatal(err)
	}
	if m := next("the issuer's publish"); !published(m) {
		t.Fatalf("the issuer's publish was taken for an answer: %v", m.Header)
	}
	for _, tc := range []struct {
		name, body string
		answers    int
	}{
		{"a batched read, with headers", `{"seq":1,"batch":2}`, 3}, // 2 events and the end-of-batch status
		{"a batched read, no headers", `{"seq":1,"batch":2,"no_hdr":true}`, 3},
		{"a read past the end (404)", `{"seq":1000000}`, 1},
	} {
		ask(tc.body)
		for i := range tc.answers {
			if m := next(tc.name); published(m) {
				t.Errorf("%s: answer %d taken for a publish: %q %v", tc.name, i, m.Data, m.Header)
			}
		}
	}
}
