package rollover

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

// The deployment: what the procedure's variables point at.
const (
	issuerID = "https://auth.rollover.test"
	audience = "orders-api"
	oldName  = "distribution" // OLD
	users    = 8
)

type deployment struct {
	t          *testing.T
	dir        string
	keys       string // KEYS
	issuerEnv  string // ISSUER_ENV
	sidecarEnv string // SIDECAR_ENV
	oldPub     ed25519.PublicKey
	nats       *proc
	natsURL    string
	js         jetstream.JetStream
	issuers    []*proc
	sidecars   []*proc
	hc         *http.Client
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().String()
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// deploy starts nats-server, two issuers and three sidecars, as they run
// before the rollover: every program with the old key only.
func deploy(t *testing.T) *deployment {
	dir := t.TempDir()
	d := &deployment{t: t, dir: dir, keys: filepath.Join(dir, "keys"),
		issuerEnv: filepath.Join(dir, "issuer-distribution.env"), sidecarEnv: filepath.Join(dir, "sidecar-distribution.env"),
		hc: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}}
	t.Cleanup(d.hc.CloseIdleConnections)
	if err := os.Mkdir(d.keys, 0o700); err != nil {
		t.Fatal(err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	d.oldPub = pub
	der, _ := x509.MarshalPKCS8PrivateKey(priv)
	pubDER, _ := x509.MarshalPKIXPublicKey(pub)
	oldKey := writeFile(t, filepath.Join(d.keys, oldName+".key"), string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), 0o600)
	oldPubFile := writeFile(t, filepath.Join(d.keys, oldName+".pub"), string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})), 0o644)
	writeFile(t, d.issuerEnv, "TOKENWARDEN_DISTRIBUTION_KEY_FILE="+oldKey+"\n", 0o600)
	writeFile(t, d.sidecarEnv, "TOKENWARDEN_DISTRIBUTION_PUBLIC_KEY_FILE="+oldPubFile+"\n", 0o600)

	// Cheap argon2id parameters: the load logs in many times a second.
	var u strings.Builder
	u.WriteString("users:\n")
	for i := range users {
		fmt.Fprintf(&u, "  - username: u%d\n    password_hash: %q\n", i, testenv.Hash(t, fmt.Sprintf("pw-%d", i)))
	}
	usersFile := writeFile(t, filepath.Join(dir, "users.yaml"), u.String(), 0o600)
	clientsFile := writeFile(t, filepath.Join(dir, "clients.yaml"), fmt.Sprintf(`clients:
  - id: web
    secret_hash: %q
    grants: [password, refresh_token, client_credentials]
    scopes: [read]
    audience: %s
  - id: admin
    secret_hash: %q
    grants: [client_credentials]
    scopes: ["tokenwarden:admin"]
`, testenv.Hash(t, "web-secret"), audience, testenv.Hash(t, "admin-secret")), 0o600)
	// Access tokens outlive the test, so every revoked token can still be
	// checked at the end (a refusal for expiry proves nothing), and every
	// event is still live when the old key is dropped.
	cfgFile := writeFile(t, filepath.Join(dir, "issuer.yaml"), fmt.Sprintf(`issuer: %s
users_file: %s
clients_file: %s
keys:
  propagation_delay: 1s
access_token_ttl: 5m
`, issuerID, usersFile, clientsFile), 0o600)

	natsAddr := freeAddr(t)
	host, port, _ := strings.Cut(natsAddr, ":")
	d.natsURL = "nats://" + natsAddr
	d.nats = newProc(t, "nats-server", natsBin, "", nil, "", "-a", host, "-p", port, "-js", "-sd", filepath.Join(dir, "nats"))
	if err := d.nats.start(); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(d.natsURL, nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if d.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}

	kek := make([]byte, 32)
	_, _ = rand.Read(kek)
	for i := range 2 {
		addr := freeAddr(t)
		p := newProc(t, fmt.Sprintf("issuer-%d", i), twBin, "http://"+addr,
			[]string{"TOKENWARDEN_NATS_URL=" + d.natsURL, "TOKENWARDEN_KEY_ENCRYPTION_KEY=" + base64.StdEncoding.EncodeToString(kek)},
			d.issuerEnv, "issuer", "--config", cfgFile, "--listen", addr)
		d.issuers = append(d.issuers, p)
	}
	for i := range 3 {
		addr := freeAddr(t)
		p := newProc(t, fmt.Sprintf("sidecar-%d", i), twBin, "http://"+addr, nil, d.sidecarEnv,
			"sidecar", "--listen", addr, "--grpc-addr", "", "--issuer", issuerID, "--audience", audience, "--nats-url", d.natsURL,
			"--cache-dir", filepath.Join(dir, fmt.Sprintf("cache-%d", i)), "--access-log", "false")
		d.sidecars = append(d.sidecars, p)
	}
	// The issuers create the buckets and the stream; the sidecars wait for
	// them anyway.
	for _, p := range append(append([]*proc{}, d.issuers...), d.sidecars...) {
		if err := p.start(); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range append(append([]*proc{}, d.issuers...), d.sidecars...) {
		if err := d.waitReady(t.Context(), p); err != nil {
			t.Fatal(err)
		}
		p.setUp(true)
	}
	return d
}

// waitReady polls p's /readyz until 200, for up to a minute.
func (d *deployment) waitReady(ctx context.Context, p *proc) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if code, _, err := d.get(ctx, p.url+"/readyz", ""); err == nil && code == http.StatusOK {
			return nil
		}
		if !p.Alive() {
			return fmt.Errorf("%s exited before it was ready", p.name)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready within a minute", p.name)
}

// get sends a GET with an optional bearer token and returns the status and
// body.
func (d *deployment) get(ctx context.Context, url, bearer string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if w := resp.Header.Get("WWW-Authenticate"); w != "" {
		b = append(b, " "+w...)
	}
	return resp.StatusCode, string(b), nil
}

// metric reads one sample of p's /metrics: name with its labels as the
// exposition format writes them, e.g. `x_total{reason="forged"}`. A sample
// not (yet) exported is 0.
func (d *deployment) metric(ctx context.Context, p *proc, sample string) (float64, error) {
	code, body, err := d.get(ctx, p.url+"/metrics", "")
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("%s /metrics: %d", p.name, code)
	}
	for line := range strings.SplitSeq(body, "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, nil
}

// upProcs is the processes of ps that take load now.
func upProcs(ps []*proc) []*proc {
	var out []*proc
	for _, p := range ps {
		if up, _ := p.state(); up {
			out = append(out, p)
		}
	}
	return out
}
