package chaos

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

// This file is the harness: processes, the NATS cluster, the issuers and
// sidecars, ports, and the faults (kill -9, SIGSTOP, SIGCONT, restart).

// proc is one child process that can be killed, paused and started again
// with the same command line (testenv.Proc: its own process group, killed
// with the test binary and when the test ends), and whether the harness
// paused it.
type proc struct {
	*testenv.Proc

	mu     sync.Mutex
	paused bool
}

// startProc starts bin; every incarnation is killed (with its process
// group) when the test ends, whatever state it is in.
func startProc(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{Proc: testenv.NewProc(t, name, 256<<10, testenv.Command(bin, env, args...))}
	if err := p.start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	return p
}

func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.Start(); err != nil {
		return err
	}
	p.paused = false
	return nil
}

// running reports whether the process is alive and not paused.
func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.Alive() && !p.paused
}

func (p *proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.Alive() {
		return fmt.Errorf("%s is not running", p.Name)
	}
	if err := p.Signal(sig); err != nil {
		return err
	}
	switch sig {
	case syscall.SIGSTOP:
		p.paused = true
	case syscall.SIGCONT:
		p.paused = false
	}
	return nil
}

// kill9 is kill -9 of the process group; it returns once the process is
// gone.
func (p *proc) kill9() error {
	if err := p.signal(syscall.SIGKILL); err != nil {
		return err
	}
	return p.Wait(10 * time.Second)
}

// terminate sends SIGTERM and waits, then kills.
func (p *proc) terminate(within time.Duration) error {
	if !p.Alive() {
		return fmt.Errorf("%s is not running", p.Name)
	}
	return p.Stop(within)
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().(*net.TCPAddr).Port
}

// poll calls f every interval until it returns nil or ctx/within ends, and
// returns f's last error then.
func poll(ctx context.Context, within, interval time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %s: %w", within, err)
		case <-time.After(interval):
		}
	}
}

var probeClient = &http.Client{Timeout: 2 * time.Second}

// status GETs u and returns the status code (0 when there is no answer).
func status(ctx context.Context, u string) int {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		return 0
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// ---- NATS cluster ----

type natsNode struct {
	name        string
	port        int
	clusterPort int
	monPort     int
	proc        *proc
}

func (n *natsNode) url() string { return "nats://127.0.0.1:" + strconv.Itoa(n.port) }

type natsCluster struct {
	nodes []*natsNode
}

func (c *natsCluster) urls() string {
	var us []string
	for _, n := range c.nodes {
		us = append(us, n.url())
	}
	return strings.Join(us, ",")
}

func (c *natsCluster) node(name string) *natsNode {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// startNATS starts a 3-node cluster with JetStream, each node with its own
// store, client, route and monitoring ports on 127.0.0.1.
func startNATS(t *testing.T, dir string) *natsCluster {
	t.Helper()
	c := &natsCluster{}
	for i := range 3 {
		c.nodes = append(c.nodes, &natsNode{name: fmt.Sprintf("n%d", i+1), port: freePort(t), clusterPort: freePort(t), monPort: freePort(t)})
	}
	for _, n := range c.nodes {
		var routes []string
		for _, o := range c.nodes {
			if o != n {
				routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", o.clusterPort))
			}
		}
		n.proc = startProc(t, "nats-"+n.name, nil, natsBin,
			"-n", n.name, "-a", "127.0.0.1", "-p", strconv.Itoa(n.port), "-m", strconv.Itoa(n.monPort),
			"-js", "-sd", filepath.Join(dir, "nats-"+n.name),
			"--cluster_name", "chaos", "--cluster", fmt.Sprintf("nats://127.0.0.1:%d", n.clusterPort),
			"--routes", strings.Join(routes, ","))
	}
	for _, n := range c.nodes {
		if err := waitNATS(t.Context(), n, 60*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// waitNATS waits until the node answers /healthz?js-enabled-only=true.
func waitNATS(ctx context.Context, n *natsNode, within time.Duration) error {
	u := fmt.Sprintf("http://127.0.0.1:%d/healthz", n.monPort)
	return poll(ctx, within, 50*time.Millisecond, func() error {
		if err := n.proc.Crashed(); err != nil {
			return err
		}
		if code := status(ctx, u); code != 200 {
			return fmt.Errorf("nats %s /healthz: %d", n.name, code)
		}
		return nil
	})
}

// streamLeader asks JetStream which server leads a stream.
func streamLeader(ctx context.Context, urls, stream string) (string, error) {
	nc, err := nats.Connect(urls, nats.Timeout(2*time.Second))
	if err != nil {
		return "", fmt.Errorf("connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return "", fmt.Errorf("stream %s: %w", stream, err)
	}
	info := s.CachedInfo()
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return "", fmt.Errorf("stream %s has no leader", stream)
	}
	if got := 1 + len(info.Cluster.Replicas); got != 3 {
		return "", fmt.Errorf("stream %s has %d replicas, want 3", stream, got)
	}
	return info.Cluster.Leader, nil
}

// ---- the deployment ----

const (
	issuerID      = "http://tokenwarden.chaos"
	audience      = "orders-api"
	revStream     = "TOKENWARDEN_REVOCATIONS"
	password      = "pw-chaos"
	shortTTL      = 2 * time.Second  // client "short": its jti events expire within seconds
	longTTL       = 30 * time.Minute // every other client: outlives the run
	leeway        = time.Second
	propagation   = 8 * time.Second // longer than the pause of the SIGSTOP scenario
	cleanUsers    = 16
	victimUsers   = 600
	sidecarCount  = 10
	issuerCount   = 2
	readyzTimeout = 90 * time.Second
)

type issuerProc struct {
	i    int
	url  string
	proc *proc
}

type sidecarProc struct {
	i        int
	url      string
	natsURLs string
	proc     *proc
}

type deployment struct {
	t        *testing.T
	dir      string
	nats     *natsCluster
	issuers  []*issuerProc
	sidecars []*sidecarProc
	distPub  string
	// kek is the issuers' key-encryption key. Only the leaked-key
	// scenario's attacker uses it, with NATS access, to unseal the ring.
	kek []byte
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func hashSecret(t *testing.T, secret string) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), twBin, "hash-password")
	cmd.Stdin = strings.NewReader(secret)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("hash-password: %v %s", err, out)
	}
	return strings.TrimSpace(string(out))
}

func cleanUser(i int) string  { return fmt.Sprintf("user-%02d", i) }
func victimUser(i int) string { return fmt.Sprintf("victim-%04d", i) }

// deploy starts the whole system: NATS, two issuers sharing the key files,
// and the sidecars. Sidecar 0 knows only NATS node n1 (the partition
// scenario cuts it off by stopping that node); the others know all three.
func deploy(t *testing.T) *deployment {
	t.Helper()
	dir := t.TempDir()
	d := &deployment{t: t, dir: dir}
	d.nats = startNATS(t, dir)

	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(priv)
	pubDER, _ := x509.MarshalPKIXPublicKey(pub)
	distKey := writeFile(t, dir, "distribution.key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	d.distPub = writeFile(t, dir, "distribution.pub", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})))
	kek := make([]byte, 32)
	_, _ = rand.Read(kek)
	kekFile := writeFile(t, dir, "kek", base64.StdEncoding.EncodeToString(kek))
	d.kek = kek

	pwHash := hashSecret(t, password)
	var users strings.Builder
	users.WriteString("users:\n")
	for i := range cleanUsers {
		fmt.Fprintf(&users, "  - username: %s\n    password_hash: %q\n", cleanUser(i), pwHash)
	}
	for i := range victimUsers {
		fmt.Fprintf(&users, "  - username: %s\n    password_hash: %q\n", victimUser(i), pwHash)
	}
	usersFile := writeFile(t, dir, "users.yaml", users.String())
	secretHash := hashSecret(t, "secret")
	clientsFile := writeFile(t, dir, "clients.yaml", fmt.Sprintf(`clients:
  - id: web
    secret_hash: %[1]q
    grants: [password, refresh_token]
    scopes: [read, write]
    audience: %[2]s
    access_token_ttl: %[3]s
  - id: short
    secret_hash: %[1]q
    grants: [password, refresh_token]
    scopes: [read]
    audience: %[2]s
    access_token_ttl: %[4]s
  - id: batch
    secret_hash: %[1]q
    grants: [client_credentials]
    scopes: [read]
    audience: %[2]s
    access_token_ttl: %[3]s
  - id: admin
    secret_hash: %[1]q
    grants: [client_credentials]
    scopes: ["tokenwarden:admin"]
    access_token_ttl: %[3]s
`, secretHash, audience, longTTL, shortTTL))

	for i := range issuerCount {
		port := freePort(t)
		p := startProc(t, fmt.Sprintf("issuer-%d", i), nil, twBin, "issuer",
			"--issuer", issuerID, "--listen", fmt.Sprintf("127.0.0.1:%d", port),
			"--nats-url", d.nats.urls(), "--nats-replicas", "3",
			"--users-file", usersFile, "--clients-file", clientsFile,
			"--distribution-key-file", distKey, "--key-encryption-key-file", kekFile,
			"--access-token-ttl", longTTL.String(), "--leeway", leeway.String(),
			"--propagation-delay", propagation.String(), "--rotation-period", "1h",
			"--log-level", "warn")
		d.issuers = append(d.issuers, &issuerProc{i: i, url: fmt.Sprintf("http://127.0.0.1:%d", port), proc: p})
	}
	for _, is := range d.issuers {
		if err := waitReady(t.Context(), is.proc, is.url, readyzTimeout); err != nil {
			t.Fatal(err)
		}
	}
	for i := range sidecarCount {
		urls := d.nats.urls()
		if i == 0 {
			urls = d.nats.nodes[0].url()
		}
		port := freePort(t)
		p := startProc(t, fmt.Sprintf("sidecar-%d", i), nil, twBin, "sidecar",
			"--listen", fmt.Sprintf("127.0.0.1:%d", port), "--issuer", issuerID, "--audience", audience,
			"--nats-url", urls, "--distribution-public-key-file", d.distPub,
			"--cache-dir", filepath.Join(dir, fmt.Sprintf("cache-%d", i)),
			"--leeway", leeway.String(), "--key-refresh-interval", "1s",
			"--access-log", "false", "--log-level", "warn", "--grpc-addr", "")
		d.sidecars = append(d.sidecars, &sidecarProc{i: i, url: fmt.Sprintf("http://127.0.0.1:%d", port), natsURLs: urls, proc: p})
	}
	for _, sc := range d.sidecars {
		if err := waitReady(t.Context(), sc.proc, sc.url, readyzTimeout); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// waitReady polls /readyz until 200, failing early if the process died.
func waitReady(ctx context.Context, p *proc, base string, within time.Duration) error {
	return poll(ctx, within, 25*time.Millisecond, func() error {
		if err := p.Crashed(); err != nil {
			return err
		}
		if code := status(ctx, base+"/readyz"); code != 200 {
			return fmt.Errorf("%s /readyz: %d", p.Name, code)
		}
		return nil
	})
}

// checkAlive fails if a process the harness did not kill has exited.
func (d *deployment) crashes() error {
	var errs []error
	for _, n := range d.nats.nodes {
		errs = append(errs, n.proc.Crashed())
	}
	for _, is := range d.issuers {
		errs = append(errs, is.proc.Crashed())
	}
	for _, sc := range d.sidecars {
		errs = append(errs, sc.proc.Crashed())
	}
	return errors.Join(errs...)
}
