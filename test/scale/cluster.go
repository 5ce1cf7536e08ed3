package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/natsconn"
	"github.com/tokenwarden/tokenwarden/issuer"
	"github.com/tokenwarden/tokenwarden/issuer/directory"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// What the tool deploys, as the chart does it: three nats-server processes
// in one JetStream cluster (routes without advertising, so clients keep
// to the URLs they were given, as behind the chart's Service; routes
// authenticated), with the chart's auth.conf: the issuer in the
// TOKENWARDEN account, the sidecars in SIDECARS, which reaches the stream
// and the bundle only through TOKENWARDEN's exports; and an issuer process
// with nats.replicas 3, so the revocation stream and every KV bucket are
// R3.
const (
	natsNodes     = 3
	prefix        = "tokenwarden"
	revStream     = "TOKENWARDEN_REVOCATIONS"
	jwksStream    = "KV_tokenwarden_jwks"
	audience      = "scale-api"
	appClient     = "scale-app"
	appSecret     = "scale-app-secret"
	adminClient   = "admin"
	adminSecret   = "admin-secret"
	propagationAt = 2 * time.Second // keys.propagation_delay: rotations 2 s apart
)

type natsNode struct {
	name        string
	port        int
	clusterPort int
	monPort     int
	conf        string
	proc        *child
}

// NATS users of auth.conf, as natsURLs takes them.
const (
	userIssuer  = "issuer"
	userSidecar = "sidecar"
)

type deployment struct {
	dir      string
	kids     *children
	natsBin  string
	twBin    string
	chartDir string
	users    natsUsers
	nodes    []*natsNode
	issuer   *child
	// issuerURL is the issuer's base URL and the iss of its tokens.
	issuerURL string
	distPub   ed25519.PublicKey
	distFile  string // PEM of distPub, for sidecar processes
	admin     string // admin access token
	http      *http.Client
}

// natsURLs is every node's URL with the credentials of user (userIssuer
// or userSidecar).
func (d *deployment) natsURLs(user string) string {
	pw := d.users.issuerPW
	if user == userSidecar {
		pw = d.users.sidecarPW
	}
	us := make([]string, 0, len(d.nodes))
	for _, n := range d.nodes {
		us = append(us, fmt.Sprintf("nats://%s:%s@127.0.0.1:%d", user, pw, n.port))
	}
	return strings.Join(us, ",")
}

// natsPIDs are the live nats-server processes.
func (d *deployment) natsPIDs() []int {
	var pids []int
	for _, n := range d.nodes {
		if n.proc != nil && !n.proc.exited() {
			pids = append(pids, n.proc.pid())
		}
	}
	return pids
}

func newHTTPClient() *http.Client { return &http.Client{Timeout: 30 * time.Second} }

func freePort() (int, error) {
	// Below the kernel's ephemeral range (32768 and up by default): a port
	// taken from there and released for a child to bind can be handed in
	// the meantime to one of the thousands of outgoing connections this
	// tool makes, and the child fails with "address already in use".
	for range 200 {
		p := 10000 + mrand.N(22000) // #nosec G404 -- a port, not a secret
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		_ = ln.Close()
		return p, nil
	}
	return 0, errors.New("free port: none free among 200 tried in 10000-31999")
}

// deploy starts the NATS cluster and the issuer in dir.
func deploy(ctx context.Context, kids *children, dir, natsBin, twBin, chartDir string) (*deployment, error) {
	d := &deployment{dir: dir, kids: kids, natsBin: natsBin, twBin: twBin, chartDir: chartDir, http: newHTTPClient()}
	if err := d.startNATS(ctx); err != nil {
		return d, err
	}
	if err := d.startIssuer(ctx); err != nil {
		return d, err
	}
	return d, nil
}

// stop stops the issuer and the NATS nodes.
func (d *deployment) stop() {
	if d.issuer != nil {
		d.issuer.stop(10 * time.Second)
	}
	for _, n := range d.nodes {
		if n.proc != nil {
			n.proc.stop(10 * time.Second)
		}
	}
}

func (d *deployment) startNATS(ctx context.Context) error {
	auth, err := chartAuthConf(d.chartDir)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.dir, "auth.conf"), []byte(auth), 0o600); err != nil {
		return fmt.Errorf("nats auth.conf: %w", err)
	}
	if d.users, err = newNATSUsers(); err != nil {
		return err
	}
	for i := range natsNodes {
		n := &natsNode{name: fmt.Sprintf("n%d", i+1)}
		var err error
		for _, p := range []*int{&n.port, &n.clusterPort, &n.monPort} {
			if *p, err = freePort(); err != nil {
				return err
			}
		}
		d.nodes = append(d.nodes, n)
	}
	for _, n := range d.nodes {
		var routes []string
		for _, o := range d.nodes {
			if o != n {
				routes = append(routes, fmt.Sprintf("nats://route:%s@127.0.0.1:%d", d.users.routePW, o.clusterPort))
			}
		}
		// The chart's nats.conf: the same payload bound and JetStream
		// limits, a cluster whose routes authenticate and are not
		// advertised to clients, and the chart's auth.conf.
		conf := fmt.Sprintf(`server_name: %s
listen: 127.0.0.1:%d
http: 127.0.0.1:%d
max_payload: 256KB
jetstream {
  store_dir: %q
  max_file_store: 1G
  max_memory_store: 64M
}
cluster {
  name: scale
  listen: 127.0.0.1:%d
  no_advertise: true
  authorization {
    user: route
    password: $ROUTE_PASSWORD
    timeout: 2
  }
  routes: [%s]
}
include ./auth.conf
`, n.name, n.port, n.monPort, filepath.Join(d.dir, "nats-"+n.name), n.clusterPort, strings.Join(routes, ", "))
		n.conf = filepath.Join(d.dir, "nats-"+n.name+".conf")
		if err := os.WriteFile(n.conf, []byte(conf), 0o600); err != nil {
			return fmt.Errorf("nats config: %w", err)
		}
		if err := d.startNode(n); err != nil {
			return err
		}
	}
	for _, n := range d.nodes {
		if err := d.waitNode(ctx, n, 90*time.Second); err != nil {
			return err
		}
	}
	return nil
}

func (d *deployment) startNode(n *natsNode) error {
	p, err := d.kids.start(startSpec{name: "nats-" + n.name, bin: d.natsBin, args: []string{"-c", n.conf}, dir: d.dir, env: d.users.env()})
	if err != nil {
		return err
	}
	n.proc = p
	return nil
}

// waitNode waits until the node's /healthz answers 200: JetStream is
// enabled and every stream and consumer it holds is current.
func (d *deployment) waitNode(ctx context.Context, n *natsNode, within time.Duration) error {
	u := fmt.Sprintf("http://127.0.0.1:%d/healthz", n.monPort)
	deadline := time.Now().Add(within)
	for {
		if n.proc.exited() {
			return fmt.Errorf("nats %s exited: %w\n%s", n.name, n.proc.err, n.proc.tail(20))
		}
		if code, _ := d.get(ctx, u); code == http.StatusOK {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nats %s not healthy within %s\n%s", n.name, within, n.proc.tail(20))
		}
		if !natsconn.Sleep(ctx, 50*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// varz is what the tool reads from a node's /varz.
type varz struct {
	Connections int    `json:"connections"`
	InMsgs      uint64 `json:"in_msgs"`
	OutMsgs     uint64 `json:"out_msgs"`
	JetStream   struct {
		Stats struct {
			API struct {
				Total  uint64 `json:"total"`
				Errors uint64 `json:"errors"`
			} `json:"api"`
		} `json:"stats"`
	} `json:"jetstream"`
}

func (d *deployment) varz(ctx context.Context, n *natsNode) (varz, error) {
	var v varz
	code, body := d.get(ctx, fmt.Sprintf("http://127.0.0.1:%d/varz", n.monPort))
	if code != http.StatusOK {
		return v, fmt.Errorf("nats %s /varz: status %d", n.name, code)
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return v, fmt.Errorf("nats %s /varz: %w", n.name, err)
	}
	return v, nil
}

// clients is how many client connections a node holds (-1: unknown).
func (d *deployment) clients(ctx context.Context, n *natsNode) int {
	v, err := d.varz(ctx, n)
	if err != nil {
		return -1
	}
	return v.Connections
}

// traffic is the cluster's message and JetStream API counters, summed
// over the nodes (a restarted node starts its own over).
type traffic struct {
	msgs, api, apiErrors uint64
	at                   time.Time
}

func (d *deployment) traffic(ctx context.Context) traffic {
	t := traffic{at: time.Now()}
	for _, n := range d.nodes {
		if n.proc == nil || n.proc.exited() {
			continue
		}
		if v, err := d.varz(ctx, n); err == nil {
			t.msgs += v.InMsgs + v.OutMsgs
			t.api += v.JetStream.Stats.API.Total
			t.apiErrors += v.JetStream.Stats.API.Errors
		}
	}
	return t
}

// since returns the counters' growth since an earlier reading.
func (t traffic) since(from traffic) traffic {
	sub := func(a, b uint64) uint64 {
		if a < b {
			return 0
		}
		return a - b
	}
	return traffic{msgs: sub(t.msgs, from.msgs), api: sub(t.api, from.api), apiErrors: sub(t.apiErrors, from.apiErrors), at: t.at}
}

func (d *deployment) get(ctx context.Context, u string) (int, []byte) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, nil
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return 0, nil
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b
}

func (d *deployment) write(name string, b []byte) (string, error) {
	p := filepath.Join(d.dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		return "", fmt.Errorf("write %s: %w", name, err)
	}
	return p, nil
}

func (d *deployment) startIssuer(ctx context.Context) error {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("distribution key: %w", err)
	}
	d.distPub = pub
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return fmt.Errorf("distribution key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return fmt.Errorf("distribution key: %w", err)
	}
	distKey, err := d.write("distribution.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err != nil {
		return err
	}
	if d.distFile, err = d.write("distribution.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})); err != nil {
		return err
	}
	kek := make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		return fmt.Errorf("key-encryption key: %w", err)
	}
	kekFile, err := d.write("kek", []byte(base64.StdEncoding.EncodeToString(kek)))
	if err != nil {
		return err
	}
	// Cheap argon2id parameters: the tool logs in a handful of times and
	// measures NATS, not password hashing.
	p := directory.Params{Memory: 64, Time: 1, Threads: 1}
	adminHash, err := directory.HashPassword([]byte(adminSecret), p)
	if err != nil {
		return err
	}
	appHash, err := directory.HashPassword([]byte(appSecret), p)
	if err != nil {
		return err
	}
	users, err := d.write("users.yaml", []byte("users: []\n"))
	if err != nil {
		return err
	}
	clients, err := d.write("clients.yaml", fmt.Appendf(nil, `clients:
  - id: %s
    secret_hash: %q
    grants: [client_credentials]
    scopes: ["tokenwarden:admin"]
  - id: %s
    secret_hash: %q
    grants: [client_credentials]
    scopes: [read]
    audience: %s
`, adminClient, adminHash, appClient, appHash, audience))
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	d.issuerURL = "http://" + addr
	cfg, err := d.write("issuer.yaml", fmt.Appendf(nil, `issuer: %s
users_file: %s
clients_file: %s
nats:
  url: %s
  replicas: %d
keys:
  propagation_delay: %s
`, d.issuerURL, users, clients, d.natsURLs(userIssuer), natsNodes, propagationAt))
	if err != nil {
		return err
	}
	if d.issuer, err = d.kids.start(startSpec{name: "issuer", bin: d.twBin, dir: d.dir, args: []string{"issuer", "--config", cfg,
		"--listen", addr, "--distribution-key-file", distKey, "--key-encryption-key-file", kekFile, "--log-level", "warn"}}); err != nil {
		return err
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		if d.issuer.exited() {
			return fmt.Errorf("issuer exited: %w\n%s", d.issuer.err, d.issuer.tail(20))
		}
		if code, _ := d.get(ctx, d.issuerURL+"/readyz"); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("issuer not ready within 90s\n%s", d.issuer.tail(20))
		}
		if !natsconn.Sleep(ctx, 50*time.Millisecond) {
			return ctx.Err()
		}
	}
	if d.admin, err = d.token(ctx, adminClient, adminSecret, issuer.AdminScope); err != nil {
		return err
	}
	return d.checkReplicas(ctx)
}

// checkReplicas makes sure the revocation stream and the bundle bucket
// are R3, as the chart has them.
func (d *deployment) checkReplicas(ctx context.Context) error {
	js, nc, err := d.jetstream()
	if err != nil {
		return err
	}
	defer nc.Close()
	for _, name := range []string{revStream, jwksStream} {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		s, err := js.Stream(rctx, name)
		cancel()
		if err != nil {
			return fmt.Errorf("stream %s: %w", name, err)
		}
		if r := s.CachedInfo().Config.Replicas; r != natsNodes {
			return fmt.Errorf("stream %s has %d replicas, want %d", name, r, natsNodes)
		}
	}
	return nil
}

// jetstream connects as the issuer, whose user may read the streams' state.
func (d *deployment) jetstream() (jetstream.JetStream, *nats.Conn, error) {
	nc, err := nats.Connect(d.natsURLs(userIssuer), nats.Name("tokenwarden-scale"), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, nil, fmt.Errorf("connect to NATS: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return js, nc, nil
}

// streamInfo returns a stream's consumer count and leader.
func (d *deployment) streamInfo(ctx context.Context, name string) (consumers int, leader string, err error) {
	js, nc, err := d.jetstream()
	if err != nil {
		return 0, "", err
	}
	defer nc.Close()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := js.Stream(rctx, name)
	if err != nil {
		return 0, "", fmt.Errorf("stream %s: %w", name, err)
	}
	info := s.CachedInfo()
	if info.Cluster != nil {
		leader = info.Cluster.Leader
	}
	return info.State.Consumers, leader, nil
}

// token gets an access token with the client_credentials grant.
func (d *deployment) token(ctx context.Context, id, secret, scope string) (string, error) {
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {scope}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.issuerURL+"/oauth2/token", strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(id, secret)
	resp, err := d.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("token for %s: %w", id, err)
	}
	defer func() { _ = resp.Body.Close() }()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || tok.AccessToken == "" {
		return "", fmt.Errorf("token for %s: status %d", id, resp.StatusCode)
	}
	return tok.AccessToken, nil
}

// admin posts to the admin API and returns the status and body.
func (d *deployment) adminPost(ctx context.Context, path string, body any) (int, []byte, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return 0, nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.issuerURL+path, bytes.NewReader(b))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+d.admin)
	resp, err := d.http.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("POST %s: %w", path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, out, nil
}

// revocationSent is one revocation through the admin API: its event id,
// when the request was sent and when the 201 arrived.
type revocationSent struct {
	id, jti   string
	sent, got time.Time
}

// revoke revokes a jti, retrying while the issuer answers 503 (a NATS
// failover it could not ride out) for up to within.
func (d *deployment) revoke(ctx context.Context, jti string, within time.Duration) (revocationSent, error) {
	deadline := time.Now().Add(within)
	for {
		r := revocationSent{jti: jti, sent: time.Now()}
		code, body, err := d.adminPost(ctx, "/admin/v1/revocations", map[string]string{
			"kind": string(revocation.KindJTI), "value": jti, "reason": "scale"})
		r.got = time.Now()
		if err == nil && code == http.StatusCreated {
			var ev struct {
				ID string `json:"id"`
			}
			if err := json.Unmarshal(body, &ev); err != nil || ev.ID == "" {
				return r, fmt.Errorf("revoke %s: 201 without an event id: %s", jti, body)
			}
			r.id = ev.ID
			return r, nil
		}
		if err == nil && code != http.StatusServiceUnavailable {
			return r, fmt.Errorf("revoke %s: %d %s", jti, code, body)
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("revoke %s: no 201 within %s: %w", jti, within, lastAttempt(code, err, body))
		}
		if !natsconn.Sleep(ctx, 100*time.Millisecond) {
			return r, ctx.Err()
		}
	}
}

// rotation is one on-demand key rotation: when its 200 arrived, and the
// ring's new sequence, which the bundle the issuer published before
// answering carries.
type rotation struct {
	got time.Time
	seq uint64
}

// rotate rotates the signing keys on demand, retrying while the next key
// is not ready (409) or the issuer is failing over (503), for up to
// within.
func (d *deployment) rotate(ctx context.Context, within time.Duration) (rotation, error) {
	deadline := time.Now().Add(within)
	for {
		code, body, err := d.adminPost(ctx, "/admin/v1/keys/rotate", struct{}{})
		got := time.Now()
		if err == nil && code == http.StatusOK {
			var ring struct {
				Sequence uint64 `json:"sequence"`
			}
			if err := json.Unmarshal(body, &ring); err != nil || ring.Sequence == 0 {
				return rotation{}, fmt.Errorf("rotate: 200 without a ring sequence: %s", body)
			}
			return rotation{got: got, seq: ring.Sequence}, nil
		}
		if err == nil && code != http.StatusConflict && code != http.StatusServiceUnavailable {
			return rotation{}, fmt.Errorf("rotate: %d %s", code, body)
		}
		if time.Now().After(deadline) {
			return rotation{}, fmt.Errorf("rotate: no 200 within %s: %w", within, lastAttempt(code, err, body))
		}
		if !natsconn.Sleep(ctx, 200*time.Millisecond) {
			return rotation{}, ctx.Err()
		}
	}
}

// natsWarnings counts the warning and error lines of every node's log
// by message, with addresses, client ids and numbers taken out, so that
// a failure shows what the servers saw (slow consumers, stale
// connections, a JetStream API queue that overflowed).
func (d *deployment) natsWarnings() map[string]int {
	out := map[string]int{}
	for _, n := range d.nodes {
		if n.proc == nil {
			continue
		}
		b, err := os.ReadFile(n.proc.log)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			i := strings.Index(line, "[WRN] ")
			if i < 0 {
				i = strings.Index(line, "[ERR] ")
			}
			if i < 0 {
				continue
			}
			out[normalizeLogLine(line[i:])]++
		}
	}
	return out
}

var (
	logClientRe = regexp.MustCompile(`[0-9.]+:[0-9]+ - [a-z]+:[0-9]+( - "[^"]*")?( - [^ ]+)? - `)
	logNumberRe = regexp.MustCompile(`[0-9]+(\.[0-9]+)?(µs|ms|s|m|h)?`)
	logQuotedRe = regexp.MustCompile(`"[^"]*"|'[^']*'`)
	logGroupRe  = regexp.MustCompile(`\[[SC]-R[0-9][FM]-[A-Za-z0-9]+\]`)
)

func normalizeLogLine(s string) string {
	s = logClientRe.ReplaceAllString(s, "")
	s = logGroupRe.ReplaceAllString(s, "[raft group]")
	s = logQuotedRe.ReplaceAllString(s, `"…"`)
	s = logNumberRe.ReplaceAllString(s, "N")
	if len(s) > 110 {
		s = s[:110] + "…"
	}
	return s
}

// lastAttempt describes the last failed attempt of a retried request.
func lastAttempt(code int, err error, body []byte) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("status %d: %s", code, bytes.TrimSpace(body))
}

// node returns the node of a server name.
func (d *deployment) node(name string) (*natsNode, error) {
	for _, n := range d.nodes {
		if n.name == name {
			return n, nil
		}
	}
	return nil, errors.New("no NATS node named " + name)
}
