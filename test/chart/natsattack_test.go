package chart

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// These tests attack the chart's NATS with the sidecars' credential, which
// sits in every injected pod (docs/security.md: assume it leaks), while the
// real issuer and sidecars work.

const (
	revStream  = "TOKENWARDEN_REVOCATIONS"
	jwksStream = "KV_tokenwarden_jwks"
	jwksKey    = "$KV.tokenwarden_jwks.current"
	revFilter  = "tokenwarden.revocations.>"
)

// seenMsg is a message the attacker received.
type seenMsg struct {
	subject, reply string
	header         nats.Header
	data           []byte
}

func (m seenMsg) String() string {
	return fmt.Sprintf("subject %s reply %s header %v data %.200q", m.subject, m.reply, m.header, m.data)
}

// attacker is a client holding the sidecars' NATS credential.
type attacker struct {
	nc *nats.Conn
	js jetstream.JetStream

	mu   sync.Mutex
	errs []string // asynchronous errors, e.g. the server's permission violations
	seen []seenMsg
}

func newAttacker(t *testing.T, n *chartNATS) *attacker {
	t.Helper()
	a := &attacker{}
	nc, err := nats.Connect(n.url("sidecar"), nats.Name("attacker"), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.errs = append(a.errs, err.Error())
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	a.nc = nc
	if a.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	return a
}

// listen records every message on subject that the server lets through.
func (a *attacker) listen(t *testing.T, subject string) {
	t.Helper()
	if _, err := a.nc.Subscribe(subject, func(m *nats.Msg) {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.seen = append(a.seen, seenMsg{subject: m.Subject, reply: m.Reply, header: m.Header, data: m.Data})
	}); err != nil {
		t.Fatal(err)
	}
}

func (a *attacker) messages() []seenMsg {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]seenMsg(nil), a.seen...)
}

func (a *attacker) refused(what string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range a.errs {
		if strings.Contains(e, "Permissions Violation") && strings.Contains(e, what) {
			return true
		}
	}
	return false
}

// request sends a request and reports whether JetStream answered it
// without an error (a request refused by permissions, or by having no
// one to answer it, gets no such answer).
func (a *attacker) request(subject string, body []byte) (ok bool, answer string) {
	msg, err := a.nc.Request(subject, body, time.Second)
	if err != nil {
		return false, err.Error()
	}
	var resp struct {
		Error *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if json.Unmarshal(msg.Data, &resp) == nil && resp.Error != nil {
		return false, resp.Error.Description
	}
	return true, string(msg.Data)
}

// consumers lists the consumers of stream with their configuration, as the
// server holds them (what the tests know and the attacker does not).
func consumers(t *testing.T, n *chartNATS, stream string) map[string]*server.ConsumerInfo {
	t.Helper()
	jsz, err := n.ns.Jsz(&server.JSzOptions{Accounts: true, Streams: true, Consumer: true, Config: true})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*server.ConsumerInfo{}
	for _, acc := range jsz.AccountDetails {
		for _, s := range acc.Streams {
			if s.Name != stream {
				continue
			}
			for _, c := range s.Consumer {
				out[c.Name] = c
			}
		}
	}
	return out
}

// victim is a sidecar's two followers on a connection of their own with
// the sidecar user: the revocation consumer without its live subscription
// (so that every event must come through the consumer the attacker goes
// after) and the JWKS cache.
type victim struct {
	nc    *nats.Conn
	set   *revocation.Set
	cons  *revocation.Consumer
	cache *jwks.Cache
}

func startVictim(t *testing.T, d *system, name string, log *slog.Logger) *victim {
	t.Helper()
	nc, err := nats.Connect(d.n.url("sidecar"), nats.Name(name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	v := &victim{nc: nc, set: revocation.NewSet()}
	trusted := []ed25519.PublicKey{d.dep.DistributionKey}
	v.cons = revocation.NewConsumer(js, "tokenwarden", trusted, v.set, revocation.WithLogger(log),
		revocation.WithLiveSubscription(false), revocation.WithProbeInterval(250*time.Millisecond))
	if v.cache, err = jwks.NewCache(jwks.CacheConfig{Trusted: trusted, Bucket: "tokenwarden_jwks", Logger: log}); err != nil {
		t.Fatal(err)
	}
	runBackground(t, v.cons.Run)
	runBackground(t, func(ctx context.Context) error { return v.cache.Run(ctx, js) })
	eventually(t, "the victim's first replay", func() bool { return v.cons.CaughtUp() && v.cache.Status().Sequence > 0 })
	return v
}

func (v *victim) holds(ids []string) bool {
	have := map[string]bool{}
	for _, e := range v.set.Events() {
		have[e.ID] = true
	}
	for _, id := range ids {
		if !have[id] {
			return false
		}
	}
	return true
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// oauth posts a form to the issuer's endpoint path as client app.
func oauth(t *testing.T, issuerURL, path string, form url.Values) map[string]any {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, issuerURL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("app", "app-secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	out := map[string]any{}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: HTTP %d %v", path, resp.StatusCode, out)
	}
	return out
}

// TestNATSSidecarCredentialReadsNoIssuerReply: with the sidecar
// credential, whatever it subscribes to, nothing the issuer is answered
// can be read while the issuer works — refresh-token families, the sealed
// key ring, publish acknowledgements — nor the names of its consumers.
func TestNATSSidecarCredentialReadsNoIssuerReply(t *testing.T) {
	n := startChartNATS(t)
	d := startIssuer(t, n)
	sidecarURL := d.startSidecar(t)
	a := newAttacker(t, n)
	a.listen(t, "_INBOX.>")
	a.listen(t, revFilter)
	refusedSubs := []string{">", "$KV.>", "$JS.>", "$JS.EVENT.>", "_R_.>", "$SYS.>"}
	for _, s := range refusedSubs {
		a.listen(t, s)
	}
	if err := a.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	// The issuer at work: a login that creates a refresh-token family, a
	// refresh that reads and rewrites it, a rotation that rewrites the
	// sealed key ring (which every issuer replica watches), an admin
	// revocation (a publish acknowledged to the issuer, delivered to its
	// consumer) and a logout that destroys the family.
	login := oauth(t, d.issuerURL, "/oauth2/token", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}, "scope": {"read"}})
	refreshed := oauth(t, d.issuerURL, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {fmt.Sprint(login["refresh_token"])}})
	seq := d.rotate(t)
	tok := token(t, d.issuerURL, "service", "service-secret", "read")
	d.revoke(t, "client", "service")
	oauth(t, d.issuerURL, "/oauth2/revoke", url.Values{"token": {fmt.Sprint(refreshed["refresh_token"])}})
	// The sidecar followed all of it, through replies and deliveries the
	// attacker could try to read.
	waitBody(t, sidecarURL+"/readyz", fmt.Sprintf("sequence %d", seq))
	eventually(t, "the sidecar to apply the revocation", func() bool { return verify(t, sidecarURL, tok) == 401 })
	// The sidecar reads the stream at least every 5 s: once the attacker
	// has seen one of those reads, the capture works.
	eventually(t, "the attacker to see a read of the sidecar's", func() bool {
		for _, m := range a.messages() {
			if strings.HasPrefix(m.subject, "_INBOX.") {
				return true
			}
		}
		return false
	})
	if err := a.nc.Flush(); err != nil { // everything routed to the attacker so far has arrived
		t.Fatal(err)
	}

	for _, s := range refusedSubs {
		if !a.refused(fmt.Sprintf("Subscription to %q", s)) {
			t.Errorf("the sidecar credential may subscribe to %s", s)
		}
	}
	// What the issuer is answered goes to its subscriptions; anything of
	// its private buckets names them.
	var issuerSubs []string
	connz, err := n.ns.Connz(&server.ConnzOptions{Subscriptions: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range connz.Conns {
		if c.Name == "tokenwarden-issuer" {
			issuerSubs = append(issuerSubs, c.Subs...)
		}
	}
	if len(issuerSubs) == 0 {
		t.Fatal("found no subscription of the issuer: the check below would prove nothing")
	}
	markers := []string{"KV_tokenwarden_keys", "KV_tokenwarden_refresh", "KV_tokenwarden_denied",
		"$KV.tokenwarden_keys.", "$KV.tokenwarden_refresh.", "$KV.tokenwarden_denied.", "$JS.ACK."}
	for name := range allConsumers(t, n) {
		markers = append(markers, name) // the issuer's: sidecars hold none
	}
	seen := a.messages()
	inbox, events := 0, 0
	for _, m := range seen {
		if strings.HasPrefix(m.subject, "tokenwarden.revocations.") {
			events++
			continue
		}
		inbox++
		for _, sub := range issuerSubs {
			if server.SubjectsCollide(sub, m.subject) {
				t.Errorf("the sidecar credential read a reply to the issuer (its subscription %s): %s", sub, m)
			}
		}
		all := m.subject + " " + m.reply + " " + fmt.Sprint(m.header) + " " + string(m.data)
		for _, mk := range markers {
			if strings.Contains(all, mk) {
				t.Errorf("the sidecar credential read something of the issuer's (%s): %s", mk, m)
			}
		}
	}
	// A real sidecar ran beside: the capture must have seen its traffic,
	// or the checks above prove nothing.
	if inbox == 0 || events == 0 {
		t.Errorf("the attacker saw %d inbox messages and %d events: the capture is broken", inbox, events)
	}
}

// TestNATSSidecarCredentialCannotTamperWithConsumers: with the sidecar
// credential, no consumer can be deleted, created, updated (re-filtered,
// switched to headers only, given another delivery subject), paused,
// fetched from or listed: not the issuer's, and a sidecar holds none. What
// the credential can still do to another sidecar, have JetStream send its
// answers onto that sidecar's inboxes, costs no event: the victims keep
// receiving every event and every bundle.
func TestNATSSidecarCredentialCannotTamperWithConsumers(t *testing.T) {
	n := startChartNATS(t)
	d := startIssuer(t, n)
	sidecarURL := d.startSidecar(t)
	v := startVictim(t, d, "victim-sidecar", d.quiet)
	a := newAttacker(t, n)
	a.listen(t, "_INBOX.>")
	if err := a.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	var ids []string
	allThere := func() bool { return v.holds(ids) && allIn(ids, d.revocationEvents(t)) }

	// 1. Every read a sidecar makes is answered again, as soon as the
	// attacker sees its answer begin, onto the same inbox with reads of
	// the attacker's own that would skip an event or find nothing: a
	// sidecar taking either would lose events.
	var injected sync.WaitGroup
	var injections atomic.Int64
	answered := map[string]bool{} // inboxes already answered again (the attacker's own answers land there too)
	inject, err := a.nc.Subscribe("_INBOX.>", func(m *nats.Msg) {
		seq, err := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
		if err != nil || answered[m.Subject] {
			return
		}
		answered[m.Subject] = true
		injected.Add(1)
		defer injected.Done()
		injections.Add(1)
		for _, req := range []string{
			fmt.Sprintf(`{"seq":%d,"batch":100}`, seq+2),
			fmt.Sprintf(`{"seq":%d,"batch":100}`, seq+1000),
			fmt.Sprintf(`{"seq":%d}`, seq+2),
			fmt.Sprintf(`{"seq":%d,"batch":100,"next_by_subj":"tokenwarden.revocations.sid"}`, seq),
		} {
			_ = a.nc.PublishRequest("$JS.API.DIRECT.GET."+revStream, m.Subject, []byte(req))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		kind := []string{"jti", "sid"}[i%2]
		ids = append(ids, d.revoke(t, kind, fmt.Sprintf("under-injection-%d", i)))
	}
	seq := d.rotate(t)
	eventually(t, "every event under injection at the victim and the issuer", allThere)
	// A replay under injection: thousands of events, read in large
	// batches by a sidecar that starts now. (Whether an injection lands
	// inside a batch is up to timing; TestFetchTakesOnlyItsAnswer in
	// package revocation checks what happens when one does.)
	ids = append(ids, publishDirect(t, d, 2500)...)
	var logged testenv.Buffer
	v2 := startVictim(t, d, "replaying-sidecar", slog.New(slog.NewTextHandler(&logged, nil)))
	eventually(t, "every event at the replaying sidecar", func() bool { return v2.holds(ids) })
	t.Logf("the replaying sidecar said its reads were interrupted: %v", strings.Contains(logged.String(), "was interrupted"))
	eventually(t, "the victim's JWKS cache to follow the rotation under injection", func() bool { return v.cache.Status().Sequence >= seq })
	waitBody(t, sidecarURL+"/readyz", fmt.Sprintf("sequence %d", seq))
	if err := inject.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	injected.Wait()
	if injections.Load() == 0 {
		t.Fatal("the attacker never saw an answer to inject after: the check above proves nothing")
	}
	t.Logf("the attacker answered %d reads again", injections.Load())

	// 2. Nothing the attacker saw names a consumer: no sidecar holds one,
	// and the issuer's deliveries never reach the sidecars' account.
	for _, m := range a.messages() {
		if strings.HasPrefix(m.reply, "$JS.ACK.") {
			t.Errorf("the attacker saw a consumer's delivery: %s", m)
		}
	}
	for _, stream := range []string{revStream, jwksStream} {
		if c := consumers(t, n, stream); len(c) > 0 {
			t.Errorf("stream %s has consumers: %v", stream, keys(c))
		}
	}

	// 3. Refused: every consumer operation, on the issuer's consumers
	// (the watches of its private buckets; their names taken from the
	// server, since the attacker cannot learn them) and on any name of
	// the streams sidecars read.
	before := allConsumers(t, n)
	if len(before) == 0 {
		t.Fatal("the issuer holds no consumer: the check below would prove nothing")
	}
	type target struct{ stream, name, filter string }
	var targets []target
	for name, c := range before {
		targets = append(targets, target{c.Stream, name, c.Config.FilterSubject})
	}
	targets = append(targets, target{revStream, "x_1", revFilter}, target{jwksStream, "x_1", jwksKey})
	var attempts sync.WaitGroup
	for _, tg := range targets {
		cfg := map[string]any{"name": tg.name, "filter_subject": tg.filter, "deliver_policy": "all", "ack_policy": "none",
			"headers_only": true, "inactive_threshold": 60000000000}
		pushCfg := map[string]any{"name": tg.name, "filter_subject": tg.filter, "deliver_policy": "all", "ack_policy": "none",
			"deliver_subject": "_INBOX.attacker"}
		narrowed := map[string]any{"name": tg.name, "filter_subject": "tokenwarden.revocations.none", "deliver_policy": "all", "ack_policy": "none"}
		body := func(c map[string]any) []byte {
			b, _ := json.Marshal(map[string]any{"stream_name": tg.stream, "config": c})
			return b
		}
		for attempt, req := range map[string]struct {
			subject string
			body    []byte
		}{
			"delete":                     {"$JS.API.CONSUMER.DELETE." + tg.stream + "." + tg.name, nil},
			"update":                     {"$JS.API.CONSUMER.CREATE." + tg.stream + "." + tg.name + "." + tg.filter, body(cfg)},
			"update without a filter":    {"$JS.API.CONSUMER.CREATE." + tg.stream + "." + tg.name, body(cfg)},
			"re-filter":                  {"$JS.API.CONSUMER.CREATE." + tg.stream + "." + tg.name + ".tokenwarden.revocations.none", body(narrowed)},
			"redirect":                   {"$JS.API.CONSUMER.CREATE." + tg.stream + "." + tg.name + "." + tg.filter, body(pushCfg)},
			"update through legacy":      {"$JS.API.CONSUMER.CREATE." + tg.stream, body(cfg)},
			"update as a durable":        {"$JS.API.CONSUMER.DURABLE.CREATE." + tg.stream + "." + tg.name, body(cfg)},
			"pause":                      {"$JS.API.CONSUMER.PAUSE." + tg.stream + "." + tg.name, []byte(`{"pause_until":"2100-01-01T00:00:00Z"}`)},
			"fetch from":                 {"$JS.API.CONSUMER.MSG.NEXT." + tg.stream + "." + tg.name, []byte(`{"batch":10,"no_wait":true}`)},
			"read the configuration of":  {"$JS.API.CONSUMER.INFO." + tg.stream + "." + tg.name, nil},
			"list the consumers next to": {"$JS.API.CONSUMER.LIST." + tg.stream, nil},
			"list the names next to":     {"$JS.API.CONSUMER.NAMES." + tg.stream, nil},
		} {
			// Refused requests wait for their timeout: all at once.
			attempts.Go(func() {
				if ok, answer := a.request(req.subject, req.body); ok || !strings.Contains(answer, "no responders") && !strings.Contains(answer, "timeout") {
					t.Errorf("%s consumer %s of %s: the sidecar credential was answered %q", attempt, tg.name, tg.stream, answer)
				}
			})
		}
	}
	attempts.Wait()
	after := allConsumers(t, n)
	for name, c := range before {
		switch got := after[name]; {
		case got == nil:
			t.Errorf("consumer %s of %s is gone", name, c.Stream)
		case fmt.Sprint(got.Config) != fmt.Sprint(c.Config):
			t.Errorf("consumer %s of %s changed: %+v, was %+v", name, c.Stream, got.Config, c.Config)
		case got.Paused:
			t.Errorf("consumer %s of %s was paused", name, c.Stream)
		}
	}
	for name, c := range after {
		if before[name] == nil {
			t.Errorf("a consumer %s of %s appeared", name, c.Stream)
		}
	}

	// 4. And after all this, every event and bundle still reaches the
	// victims.
	for i := range 3 {
		ids = append(ids, d.revoke(t, "jti", fmt.Sprintf("after-%d", i)))
	}
	seq = d.rotate(t)
	eventually(t, "every event at the victim and the issuer", allThere)
	eventually(t, "the victim's JWKS cache to follow the last rotation", func() bool { return v.cache.Status().Sequence >= seq })
}

// publishDirect publishes n events with the issuer's credential and
// distribution key, as the issuer would, and returns their ids.
func publishDirect(t *testing.T, d *system, n int) []string {
	t.Helper()
	raw, err := os.ReadFile(d.dep.DistributionKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		t.Fatal("distribution key: no PEM block")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(d.n.url("issuer"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	p := revocation.NewPublisher(js, "tokenwarden", key.(ed25519.PrivateKey))
	ids := make([]string, 0, n)
	for i := range n {
		now := time.Now()
		e, err := revocation.NewEvent(revocation.KindJTI, fmt.Sprintf("bulk-%d", i), time.Time{}, now.Add(time.Hour), "", now)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = p.Publish(ctx, e)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, e.ID)
	}
	return ids
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// allConsumers lists every consumer on the server, by name.
func allConsumers(t *testing.T, n *chartNATS) map[string]*server.ConsumerInfo {
	t.Helper()
	jsz, err := n.ns.Jsz(&server.JSzOptions{Accounts: true, Streams: true, Consumer: true, Config: true})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*server.ConsumerInfo{}
	for _, acc := range jsz.AccountDetails {
		for _, s := range acc.Streams {
			for _, c := range s.Consumer {
				out[c.Name] = c
			}
		}
	}
	return out
}

func allIn(ids []string, have map[string]bool) bool {
	for _, id := range ids {
		if !have[id] {
			return false
		}
	}
	return true
}

// TestNATSSidecarCredentialCannotWriteThroughReplies: JetStream sends its
// answer to whatever reply subject a request names, and the server does
// not check that subject against permissions; a consumer delivers to
// whatever subject its creator names. With the sidecar credential, neither
// may land in a bucket or the stream.
func TestNATSSidecarCredentialCannotWriteThroughReplies(t *testing.T) {
	n := startChartNATS(t)
	startIssuer(t, n)
	inc, err := nats.Connect(n.url("issuer"))
	if err != nil {
		t.Fatal(err)
	}
	defer inc.Close()
	ijs, err := jetstream.New(inc)
	if err != nil {
		t.Fatal(err)
	}
	streams := []string{"KV_tokenwarden_keys", "KV_tokenwarden_refresh", "KV_tokenwarden_denied", jwksStream, revStream}
	state := func() map[string]uint64 {
		out := map[string]uint64{}
		for _, name := range streams {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			s, err := ijs.Stream(ctx, name)
			cancel()
			if err != nil {
				t.Fatalf("stream %s: %v", name, err)
			}
			out[name] = s.CachedInfo().State.LastSeq
		}
		return out
	}
	before := state()

	a := newAttacker(t, n)
	canary := a.nc.NewRespInbox()
	answered := make(chan struct{}, 100)
	if _, err := a.nc.Subscribe(canary, func(*nats.Msg) { answered <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	targets := []string{"$KV.tokenwarden_keys.ring", "$KV.tokenwarden_refresh.x", "$KV.tokenwarden_denied.x", jwksKey, "tokenwarden.revocations.jti"}
	// Every request the sidecar credential may make.
	requests := []struct{ subject, body string }{
		{"$JS.API.STREAM.INFO." + jwksStream, ""},
		{"$JS.API.DIRECT.GET." + jwksStream + "." + jwksKey, ""},
		{"$JS.API.STREAM.INFO." + revStream, ""},
		{"$JS.API.DIRECT.GET." + revStream, `{"seq":1,"batch":10}`},
	}
	sent := 0
	for i, target := range targets {
		for _, r := range requests {
			if err := a.nc.PublishRequest(r.subject, target, []byte(r.body)); err != nil {
				t.Fatal(err)
			}
			// The same request with a reply the attacker can see: once
			// these are answered, so were the others.
			if err := a.nc.PublishRequest(r.subject, canary, []byte(r.body)); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		// A push consumer delivering onto the target (refused: see
		// TestNATSSidecarCredentialCannotTamperWithConsumers).
		name := fmt.Sprintf("p_%d", i)
		push := fmt.Sprintf(`{"stream_name":%q,"config":{"name":%q,"filter_subject":%q,"deliver_subject":%q,"deliver_policy":"all","ack_policy":"none","inactive_threshold":60000000000}}`, jwksStream, name, jwksKey, target)
		if err := a.nc.PublishRequest("$JS.API.CONSUMER.CREATE."+jwksStream+"."+name+"."+jwksKey, target, []byte(push)); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	for got < sent {
		select {
		case <-answered:
			got++
			continue
		case <-time.After(3 * time.Second):
			// A request the credential may not make is never answered.
		}
		break
	}
	if got == 0 {
		t.Fatal("none of the attacker's own requests was answered: the check below would prove nothing")
	}
	time.Sleep(200 * time.Millisecond) // not an assertion: gives a stray write time to land before the comparison
	after := state()
	for _, name := range streams {
		if after[name] != before[name] {
			t.Errorf("the sidecar credential wrote into %s: last sequence %d, was %d", name, after[name], before[name])
		}
	}
}
