package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// cluster is a deployment of separate processes sharing one nats-server:
// an issuer and two sidecars.
type cluster struct {
	issuer      string
	issuerProc  *proc
	sidecars    []string
	sockets     []string // the sidecars' Unix sockets
	admin       []string // env for admin commands
	dir         string
	clientsFile string
}

func hashSecret(t *testing.T, secret string) string {
	t.Helper()
	out, err := execWithStdin(twBin, secret, "hash-password")
	if err != nil {
		t.Fatalf("hash-password: %v %s", err, out)
	}
	return strings.TrimSpace(out)
}

func startCluster(t *testing.T) *cluster {
	dir := t.TempDir()
	natsAddr := freeAddr(t)
	host, port, _ := strings.Cut(natsAddr, ":")
	nats := start(t, "nats-server", nil, natsBin, "-a", host, "-p", port, "-js", "-sd", filepath.Join(dir, "nats"))
	nats.waitFor(regexpMust(`Server is ready`), 30*time.Second)
	natsURL := "nats://" + natsAddr

	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(priv)
	pubDER, _ := x509.MarshalPKIXPublicKey(pub)
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	distKey := write("distribution.key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	distPub := write("distribution.pub", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})))
	kek := make([]byte, 32)
	_, _ = rand.Read(kek)
	users := write("users.yaml", fmt.Sprintf("users:\n  - username: carol\n    password_hash: %q\n", hashSecret(t, "carol-pw")))
	clients := write("clients.yaml", fmt.Sprintf(`clients:
  - id: web
    secret_hash: %q
    grants: [password, refresh_token, client_credentials]
    scopes: [read, write]
    audience: orders-api
  - id: admin
    secret_hash: %q
    grants: [client_credentials]
    scopes: ["tokenwarden:admin"]
`, hashSecret(t, "web-secret"), hashSecret(t, "admin-secret")))
	issuerAddr := freeAddr(t)
	issuerURL := "http://" + issuerAddr
	// Configuration through a file, the environment and flags at once.
	cfgFile := write("issuer.yaml", fmt.Sprintf("issuer: %s\nusers_file: %s\nclients_file: %s\nkeys:\n  propagation_delay: 1s\n", issuerURL, users, clients))
	issuerProc := start(t, "issuer", []string{"TOKENWARDEN_KEY_ENCRYPTION_KEY=" + base64.StdEncoding.EncodeToString(kek), "TOKENWARDEN_NATS_URL=" + natsURL},
		twBin, "issuer", "--config", cfgFile, "--listen", issuerAddr, "--distribution-key-file", distKey, "--log-format", "json")
	waitOK(t, issuerURL+"/readyz", 60*time.Second)

	c := &cluster{issuer: issuerURL, admin: []string{"TOKENWARDEN_ISSUER=" + issuerURL, "TOKENWARDEN_CLIENT_ID=admin", "TOKENWARDEN_CLIENT_SECRET=admin-secret"},
		dir: dir, clientsFile: clients}
	c.issuerProc = issuerProc
	for i := range 2 {
		addr := freeAddr(t)
		sock := filepath.Join(dir, fmt.Sprintf("sidecar-%d.sock", i))
		start(t, fmt.Sprintf("sidecar-%d", i), nil, twBin, "sidecar", "--listen", addr, "--socket", sock, "--grpc-addr", freeAddr(t), "--issuer", issuerURL, "--audience", "orders-api",
			"--nats-url", natsURL, "--distribution-public-key-file", distPub, "--cache-dir", filepath.Join(dir, fmt.Sprintf("cache-%d", i)))
		waitOK(t, "http://"+addr+"/readyz", 60*time.Second)
		c.sidecars = append(c.sidecars, "http://"+addr)
		c.sockets = append(c.sockets, sock)
	}
	return c
}

func verifyAt(t *testing.T, sidecar, tok string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", sidecar+"/verify/orders/42", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// TestSeparateProcesses: the seed flow with standard clients, a revocation
// seen by both sidecars, and key rotations seen by both with no valid token
// rejected.
func TestSeparateProcesses(t *testing.T) {
	c := startCluster(t)
	ctx := t.Context()
	web := &oauth2.Config{ClientID: "web", ClientSecret: "web-secret", Scopes: []string{"read", "write"},
		Endpoint: oauth2.Endpoint{TokenURL: c.issuer + "/oauth2/token", AuthStyle: oauth2.AuthStyleInHeader}}

	// golang.org/x/oauth2: password grant, then a refresh through a
	// TokenSource whose token has expired.
	tok, err := web.PasswordCredentialsToken(ctx, "carol", "carol-pw")
	if err != nil {
		t.Fatal(err)
	}
	if tok.RefreshToken == "" || tok.Extra("scope") != "read write" {
		t.Fatalf("password grant: %+v", tok)
	}
	for _, sc := range c.sidecars {
		if code := verifyAt(t, sc, tok.AccessToken); code != 200 {
			t.Fatalf("%s: %d", sc, code)
		}
	}
	stale := *tok
	stale.Expiry = time.Now().Add(-time.Minute)
	refreshed, err := web.TokenSource(ctx, &stale).Token()
	if err != nil {
		t.Fatal(err)
	}
	if refreshed.AccessToken == tok.AccessToken || refreshed.RefreshToken == tok.RefreshToken {
		t.Fatal("refresh did not rotate the tokens")
	}
	cc := clientcredentials.Config{ClientID: "web", ClientSecret: "web-secret", TokenURL: c.issuer + "/oauth2/token", Scopes: []string{"read"}}
	svc, err := cc.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// go-oidc, configured by discovery alone, accepts the issuer's tokens.
	provider, err := oidc.NewProvider(ctx, c.issuer)
	if err != nil {
		t.Fatal(err)
	}
	idv := provider.Verifier(&oidc.Config{ClientID: "orders-api"})
	for _, at := range []string{refreshed.AccessToken, svc.AccessToken} {
		if _, err := idv.Verify(ctx, at); err != nil {
			t.Fatalf("go-oidc: %v", err)
		}
	}

	// A revocation by security reaches both sidecars.
	out, err := tw(t, c.admin, "revoke", "sub", "carol", "--reason", "e2e")
	if err != nil {
		t.Fatalf("revoke: %v\n%s", err, out)
	}
	for _, sc := range c.sidecars {
		deadline := time.Now().Add(10 * time.Second)
		for verifyAt(t, sc, refreshed.AccessToken) != 401 {
			if time.Now().After(deadline) {
				t.Fatalf("%s still accepts a revoked token", sc)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if verifyAt(t, sc, svc.AccessToken) != 200 {
			t.Fatalf("%s rejects the client's own token", sc)
		}
	}

	// Rotations while tokens are issued and verified on both sidecars.
	var rejected, verified atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			tok, err := cc.Token(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			for _, sc := range c.sidecars {
				if code := verifyAt(t, sc, tok.AccessToken); code != 200 {
					rejected.Add(1)
					t.Errorf("valid token rejected by %s during rotation: %d", sc, code)
				} else {
					verified.Add(1)
				}
			}
		}
	})
	for range 3 {
		time.Sleep(1200 * time.Millisecond) // the propagation delay is 1s
		if out, err := tw(t, c.admin, "keys", "rotate"); err != nil {
			t.Fatalf("rotate: %v\n%s", err, out)
		}
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("3 rotations: %d verifications, %d rejected", verified.Load(), rejected.Load())
	if verified.Load() == 0 || rejected.Load() != 0 {
		t.Fatalf("verified %d, rejected %d", verified.Load(), rejected.Load())
	}
	list, _ := tw(t, c.admin, "keys", "list")
	if strings.Count(list, "retired") < 3 {
		t.Errorf("expected 3 retired keys still published:\n%s", list)
	}
}

// TestUnixSocketAndSIGHUP: the sidecar answers on its Unix socket, and the
// issuer reloads its clients file on SIGHUP.
func TestUnixSocketAndSIGHUP(t *testing.T) {
	c := startCluster(t)
	cc := clientcredentials.Config{ClientID: "web", ClientSecret: "web-secret", TokenURL: c.issuer + "/oauth2/token"}
	tok, err := cc.Token(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", c.sockets[0])
	}}}
	req, _ := http.NewRequest("GET", "http://sidecar/verify", nil)
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Auth-Subject") != "web" {
		t.Fatalf("over the Unix socket: %d", resp.StatusCode)
	}
	resp, err = hc.PostForm("http://sidecar/introspect", url.Values{"token": {tok.AccessToken}})
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("introspection over the Unix socket: %d", resp.StatusCode)
	}

	// A new client, then SIGHUP: it works at once.
	clients, _ := os.ReadFile(c.clientsFile)
	added := string(clients) + fmt.Sprintf("  - id: batch\n    secret_hash: %q\n    grants: [client_credentials]\n    scopes: [read]\n    audience: orders-api\n", hashSecret(t, "batch-secret"))
	if err := os.WriteFile(c.clientsFile, []byte(added), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.issuerProc.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	batch := clientcredentials.Config{ClientID: "batch", ClientSecret: "batch-secret", TokenURL: c.issuer + "/oauth2/token"}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := batch.Token(t.Context()); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("new client after SIGHUP: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A broken file is refused; the clients before it keep working.
	if err := os.WriteFile(c.clientsFile, []byte("clients: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = c.issuerProc.Signal(syscall.SIGHUP)
	time.Sleep(300 * time.Millisecond)
	if _, err := batch.Token(t.Context()); err != nil {
		t.Fatalf("a broken clients file took effect: %v", err)
	}
	if !strings.Contains(c.issuerProc.Out.String(), "clients") {
		t.Errorf("no log line about the broken clients file:\n%s", c.issuerProc.Out.String())
	}
}
