package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/loadtest"
	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

// The deployment the soak runs against: one nats-server with JetStream, one
// issuer and one sidecar, each its own process on 127.0.0.1, configured as
// in test/e2e (key-encryption key, distribution key pair, users and clients
// files).
type cluster struct {
	nats, issuer, sidecar *proc
	issuerURL, sidecarURL string
}

const (
	audience     = "soak-api"
	appClient    = "soak-app"
	appSecret    = "soak-app-secret"
	adminClient  = "admin"
	adminSecret  = "admin-secret"
	userPassword = "soak-password"
)

func userName(i int) string { return fmt.Sprintf("soak-user-%03d", i) }

// buildNATS builds nats-server from the module's own dependency, as test/e2e does.
func buildNATS(ctx context.Context, dir string) (string, error) {
	out := filepath.Join(dir, "nats-server")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/nats-io/nats-server/v2") // #nosec G204 -- a path in the run's own directory
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build nats-server: %w\n%s", err, b)
	}
	return out, nil
}

func startCluster(ctx context.Context, o options, dir string) (*cluster, error) {
	c := &cluster{}
	natsAddr, err := loadtest.FreeAddr()
	if err != nil {
		return nil, err
	}
	host, port, _ := strings.Cut(natsAddr, ":")
	if c.nats, err = startProc(dir, "nats-server", nil, o.natsBin, "-a", host, "-p", port, "-js", "-sd", filepath.Join(dir, "nats")); err != nil {
		return c, err
	}
	if err := waitDial(natsAddr, 30*time.Second); err != nil {
		return c, fmt.Errorf("nats-server: %w", err)
	}
	natsURL := "nats://" + natsAddr

	write := func(name string, b []byte) (string, error) {
		p := filepath.Join(dir, name)
		return p, os.WriteFile(p, b, 0o600)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return c, err
	}
	der, _ := x509.MarshalPKCS8PrivateKey(priv)
	pubDER, _ := x509.MarshalPKIXPublicKey(pub)
	distKey, err := write("distribution.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err != nil {
		return c, err
	}
	distPub, err := write("distribution.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}))
	if err != nil {
		return c, err
	}
	kek := make([]byte, 32)
	_, _ = rand.Read(kek)
	kekFile, err := write("kek", []byte(base64.StdEncoding.EncodeToString(kek)))
	if err != nil {
		return c, err
	}
	// Every user and client shares one hash: hash-password runs argon2id,
	// once is enough.
	hash, err := hashPassword(ctx, o.bin, userPassword)
	if err != nil {
		return c, err
	}
	appHash, err := hashPassword(ctx, o.bin, appSecret)
	if err != nil {
		return c, err
	}
	adminHash, err := hashPassword(ctx, o.bin, adminSecret)
	if err != nil {
		return c, err
	}
	var users strings.Builder
	users.WriteString("users:\n")
	for i := range o.users {
		fmt.Fprintf(&users, "  - username: %s\n    password_hash: %q\n", userName(i), hash)
	}
	usersFile, err := write("users.yaml", []byte(users.String()))
	if err != nil {
		return c, err
	}
	clientsFile, err := write("clients.yaml", fmt.Appendf(nil, `clients:
  - id: %s
    secret_hash: %q
    grants: [password, refresh_token]
    scopes: [read]
    audience: %s
  - id: %s
    secret_hash: %q
    grants: [client_credentials]
    scopes: ["tokenwarden:admin"]
`, appClient, appHash, audience, adminClient, adminHash))
	if err != nil {
		return c, err
	}

	issuerAddr, err := loadtest.FreeAddr()
	if err != nil {
		return c, err
	}
	c.issuerURL = "http://" + issuerAddr
	// A propagation delay of 2 s lets an on-demand rotation follow the
	// previous one after 2 s; short access tokens keep the revocation set
	// (events live access TTL + leeway) and the retired keys bounded.
	cfg, err := write("issuer.yaml", fmt.Appendf(nil, "issuer: %s\nusers_file: %s\nclients_file: %s\nkeys:\n  propagation_delay: 2s\n",
		c.issuerURL, usersFile, clientsFile))
	if err != nil {
		return c, err
	}
	if c.issuer, err = startProc(dir, "issuer", []string{"TOKENWARDEN_NATS_URL=" + natsURL}, o.bin, "issuer", "--config", cfg,
		"--listen", issuerAddr, "--distribution-key-file", distKey, "--key-encryption-key-file", kekFile,
		"--access-token-ttl", o.tokenTTL.String(), "--log-level", "warn"); err != nil {
		return c, err
	}
	if err := c.issuer.waitReady(c.issuerURL+"/readyz", 60*time.Second); err != nil {
		return c, err
	}

	sidecarAddr, err := loadtest.FreeAddr()
	if err != nil {
		return c, err
	}
	c.sidecarURL = "http://" + sidecarAddr
	if c.sidecar, err = startProc(dir, "sidecar", nil, o.bin, "sidecar", "--listen", sidecarAddr, "--issuer", c.issuerURL,
		"--audience", audience, "--nats-url", natsURL, "--distribution-public-key-file", distPub, "--log-level", "warn", "--grpc-addr", ""); err != nil {
		return c, err
	}
	if err := c.sidecar.waitReady(c.sidecarURL+"/readyz", 60*time.Second); err != nil {
		return c, err
	}
	return c, nil
}

// stop stops the processes in reverse order of start and returns the
// first that did not exit cleanly on SIGTERM.
func (c *cluster) stop() error {
	var errs []error
	for _, p := range []*proc{c.sidecar, c.issuer, c.nats} {
		if p != nil {
			errs = append(errs, p.stop(15*time.Second))
		}
	}
	return errors.Join(errs...)
}

// logTails returns the last lines each process wrote, for a failure report.
func (c *cluster) logTails(n int) string {
	var b strings.Builder
	for _, p := range []*proc{c.nats, c.issuer, c.sidecar} {
		if p != nil {
			fmt.Fprintf(&b, "--- %s (last %d lines)\n%s", p.name, n, p.tail(n))
		}
	}
	return b.String()
}

func hashPassword(ctx context.Context, bin, secret string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, "hash-password") // #nosec G204 -- the operator names the binary
	cmd.Stdin = strings.NewReader(secret)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s hash-password: %w: %s", bin, err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

func waitDial(addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return conn.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting connections within %s: %w", addr, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// proc is a child process (testenv.Process: its own process group, killed
// with the soak) whose output goes to a log file in the run's directory.
type proc struct {
	*testenv.Process
	name string
	log  string
}

func startProc(dir, name string, env []string, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath) // #nosec G304 -- a file in the run's own directory
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...) // #nosec G204 -- the operator names the binaries
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	tp, err := testenv.Start(cmd)
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		<-tp.Done()
		_ = f.Close()
	}()
	return &proc{Process: tp, name: name, log: logPath}, nil
}

func (p *proc) waitReady(u string, within time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- loadtest.WaitReady(u, within) }()
	select {
	case err := <-errc:
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		return nil
	case <-p.Done():
		return fmt.Errorf("%s exited during start-up: %w", p.name, p.Err())
	}
}

// stop sends SIGTERM and waits; a process that exits non-zero or has to
// be killed is an error.
func (p *proc) stop(within time.Duration) error {
	if p.Exited() {
		return fmt.Errorf("%s had already exited: %w", p.name, p.Err())
	}
	if err := p.Stop(within); err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	if err := p.Err(); err != nil {
		return fmt.Errorf("%s on SIGTERM: %w", p.name, err)
	}
	return nil
}

func (p *proc) tail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return err.Error() + "\n"
	}
	lines := strings.SplitAfter(string(b), "\n")
	if len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return strings.Join(lines[max(0, len(lines)-n):], "")
}
