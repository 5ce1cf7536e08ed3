package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tokenwarden/tokenwarden/internal/extauthz"
	"github.com/tokenwarden/tokenwarden/internal/testenv"
	"github.com/tokenwarden/tokenwarden/issuer"
	"github.com/tokenwarden/tokenwarden/issuer/directory"
	"github.com/tokenwarden/tokenwarden/sidecar"
)

func run(t *testing.T, ctx context.Context, stdin string, args ...string) (string, string, error) {
	t.Helper()
	var out, errb testenv.Buffer
	cmd := newRootCommand(strings.NewReader(stdin), &out, &errb)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

func TestVersion(t *testing.T) {
	out, _, err := run(t, t.Context(), "", "version")
	if err != nil || !strings.Contains(out, "tokenwarden ") || !strings.Contains(out, "go1.") {
		t.Fatalf("%q %v", out, err)
	}
}

func TestHashPassword(t *testing.T) {
	out, _, err := run(t, t.Context(), "s3cret\n", "hash-password")
	if err != nil {
		t.Fatal(err)
	}
	ok, err := directory.VerifyPassword(strings.TrimSpace(out), []byte("s3cret"))
	if err != nil || !ok {
		t.Fatalf("hash %q does not verify: %v", out, err)
	}
	if _, _, err := run(t, t.Context(), "", "hash-password"); err == nil {
		t.Fatal("empty password accepted")
	}
}

func TestBadInvocations(t *testing.T) {
	dir := t.TempDir()
	badYAML := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(badYAML, []byte("issuer: x\nunknown_key: 1\n"), 0o600)
	cases := [][]string{
		{"issuer", "--no-such-flag"},
		{"issuer", "--config", filepath.Join(dir, "missing.yaml")},
		{"issuer", "--config", badYAML},
		{"issuer", "--access-token-ttl", "ten minutes"},
		{"issuer"}, // no distribution key, no key-encryption key
		{"keys", "list"},
		{"--log-format", "xml", "issuer"},
	}
	for _, args := range cases {
		_, _, err := run(t, t.Context(), "", args...)
		if err == nil {
			t.Errorf("%v: no error", args)
			continue
		}
		if strings.Contains(err.Error(), "goroutine") || strings.Contains(err.Error(), "panic") {
			t.Errorf("%v: %v", args, err)
		}
	}
}

// TestLayeredConfig: file < environment < flags.
func TestLayeredConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "issuer.yaml")
	_ = os.WriteFile(file, []byte("issuer: https://from-file\nlisten: ':1'\naccess_token_ttl: 5m\nnats:\n  prefix: fromfile\n"), 0o600)
	t.Setenv("TOKENWARDEN_LISTEN", ":2")
	t.Setenv("TOKENWARDEN_NATS_PREFIX", "fromenv")
	cfg := issuer.DefaultConfig()
	settings := issuerSettings(&cfg)
	cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
	registerFlags(cmd, settings)
	if err := cmd.ParseFlags([]string{"--nats-prefix", "fromflag"}); err != nil {
		t.Fatal(err)
	}
	if err := loadLayered(cmd, file, &cfg, settings); err != nil {
		t.Fatal(err)
	}
	if cfg.Issuer != "https://from-file" || cfg.Listen != ":2" || cfg.NATS.Prefix != "fromflag" || cfg.AccessTokenTTL != 5*time.Minute || cfg.RefreshTokenTTL != 24*time.Hour {
		t.Fatalf("%+v", cfg)
	}
}

// TestPreviousKEKSettings: the previous key-encryption keys come as
// comma-separated lists, the files from the YAML file, the variable or the
// flag, the keys themselves only from the variable.
func TestPreviousKEKSettings(t *testing.T) {
	file := filepath.Join(t.TempDir(), "issuer.yaml")
	_ = os.WriteFile(file, []byte("previous_key_encryption_key_files: [/from/file]\n"), 0o600)
	t.Setenv("TOKENWARDEN_PREVIOUS_KEY_ENCRYPTION_KEYS", "a2V5MQ==, a2V5Mg==")
	for name, tc := range map[string]struct {
		env   string
		flags []string
		want  []string
	}{
		"file":     {want: []string{"/from/file"}},
		"variable": {env: "/k/1.key,/k/2.key", want: []string{"/k/1.key", "/k/2.key"}},
		"flag":     {env: "/k/1.key", flags: []string{"--previous-key-encryption-key-files", "/f/1.key,,/f/2.key"}, want: []string{"/f/1.key", "/f/2.key"}},
	} {
		t.Run(name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("TOKENWARDEN_PREVIOUS_KEY_ENCRYPTION_KEY_FILES", tc.env)
			}
			cfg := issuer.DefaultConfig()
			settings := issuerSettings(&cfg)
			cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
			registerFlags(cmd, settings)
			if err := cmd.ParseFlags(tc.flags); err != nil {
				t.Fatal(err)
			}
			if cmd.Flags().Lookup("previous-key-encryption-keys") != nil {
				t.Fatal("the keys themselves must not be a flag (ps shows flags)")
			}
			if err := loadLayered(cmd, file, &cfg, settings); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(cfg.PreviousKeyEncryptionKeyFiles, tc.want) || !slices.Equal(cfg.PreviousKeyEncryptionKeys, []string{"a2V5MQ==", "a2V5Mg=="}) {
				t.Fatalf("files %q, keys %q", cfg.PreviousKeyEncryptionKeyFiles, cfg.PreviousKeyEncryptionKeys)
			}
		})
	}
}

func TestExampleIssuerConfigLoads(t *testing.T) {
	cfg := issuer.DefaultConfig()
	settings := issuerSettings(&cfg)
	cmd := &cobra.Command{Use: "x"}
	registerFlags(cmd, settings)
	if err := loadLayered(cmd, "../../examples/issuer.yaml", &cfg, settings); err != nil {
		t.Fatal(err)
	}
	cfg.KeyEncryptionKey = "x" // the files it names do not exist here
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestDev runs `tokenwarden dev` in-process: seeded credentials work, the
// admin commands work against it, Ctrl-C stops it cleanly, and a restart on
// the same data directory keeps the keys.
func TestDev(t *testing.T) {
	data := t.TempDir()
	start := func() (string, *testenv.Buffer, func()) {
		ctx, cancel := context.WithCancel(context.Background())
		var out, errb testenv.Buffer
		cmd := newRootCommand(strings.NewReader(""), &out, &errb)
		cmd.SetArgs([]string{"dev", "--data", data, "--issuer-addr", "127.0.0.1:0", "--nats-addr", "127.0.0.1:0", "--sidecar-addr", "127.0.0.1:0", "--sidecar-grpc-addr", "127.0.0.1:0"})
		done := make(chan error, 1)
		go func() { done <- cmd.ExecuteContext(ctx) }()
		re := regexp.MustCompile(`issuer\s+(http://127\.0\.0\.1:\d+)`)
		deadline := time.Now().Add(60 * time.Second)
		for {
			if m := re.FindStringSubmatch(out.String()); m != nil {
				waitReady(t, m[1])
				return m[1], &out, func() {
					cancel()
					select {
					case err := <-done:
						if err != nil {
							t.Errorf("dev exited with %v; stderr %s", err, errb.String())
						}
					case <-time.After(20 * time.Second):
						t.Error("dev did not stop within 20s of cancel")
					}
				}
			}
			select {
			case err := <-done:
				t.Fatalf("dev exited early: %v\n%s", err, errb.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("no banner; stdout %s stderr %s", out.String(), errb.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	base, out, stop := start()
	if !strings.Contains(out.String(), "demo-password") || !strings.Contains(out.String(), "curl ") {
		t.Errorf("banner lacks credentials or curl example:\n%s", out.String())
	}
	form := url.Values{"grant_type": {"password"}, "username": {"demo"}, "password": {"demo-password"}, "scope": {"read"}}
	req, _ := http.NewRequest("POST", base+"/oauth2/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("demo-app", "demo-secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("demo login: %v %v", err, resp)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&tok)
	_ = resp.Body.Close()
	// The dev sidecar verifies it, for audience demo-api.
	sidecarURL := regexp.MustCompile(`sidecar\s+(http://127\.0\.0\.1:\d+)`).FindStringSubmatch(out.String())
	if sidecarURL == nil {
		t.Fatalf("banner has no sidecar:\n%s", out.String())
	}
	waitReady(t, sidecarURL[1])
	vreq, _ := http.NewRequest("GET", sidecarURL[1]+"/verify?scope=read", nil)
	vreq.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	vresp, err := http.DefaultClient.Do(vreq)
	if err != nil || vresp.StatusCode != 200 || vresp.Header.Get("X-Auth-Subject") != "demo" {
		t.Fatalf("sidecar verify: %v %v", err, vresp)
	}
	_ = vresp.Body.Close()
	checkDevGRPC(t, out.String(), tok.AccessToken)
	listOut, _, err := run(t, t.Context(), "", "keys", "list", "--issuer", base, "--client-id", "admin", "--client-secret", "admin-secret")
	if err != nil || !strings.Contains(listOut, "active") || !strings.Contains(listOut, "next") {
		t.Fatalf("keys list: %v\n%s", err, listOut)
	}
	// The next key is younger than the propagation delay: rotation refused
	// with a clear message, not a stack trace.
	_, _, err = run(t, t.Context(), "", "keys", "rotate", "--issuer", base, "--client-id", "admin", "--client-secret", "admin-secret")
	if err == nil || !strings.Contains(err.Error(), "not yet propagated") {
		t.Fatalf("early rotate: %v", err)
	}
	// Re-sealing finds every key under dev's key-encryption key already.
	kek, err := os.ReadFile(filepath.Join(data, "key-encryption.key"))
	if err != nil {
		t.Fatal(err)
	}
	kekBytes, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(string(kek)))
	rewrapOut, _, err := run(t, t.Context(), "", "keys", "rewrap", "--issuer", base, "--client-id", "admin", "--client-secret", "admin-secret")
	if want := "re-sealed 0 of 2 signing keys: all are sealed under key-encryption key " + issuer.KEKID(kekBytes); err != nil || !strings.Contains(rewrapOut, want) {
		t.Fatalf("keys rewrap: %v\n%s\nwant %q", err, rewrapOut, want)
	}
	if _, _, err := run(t, t.Context(), "", "keys", "list", "--issuer", base, "--client-id", "admin", "--client-secret", "wrong"); err == nil || !strings.Contains(err.Error(), "invalid_client") {
		t.Fatalf("wrong admin secret: %v", err)
	}
	// tokenwarden check (the chart's helm test) passes against a real
	// issuer, and names a wrong issuer identifier.
	if checkOut, errOut, err := run(t, t.Context(), "", "check", "--issuer", base); err != nil || !strings.Contains(checkOut, "is ready") {
		t.Fatalf("check: %v\n%s%s", err, checkOut, errOut)
	}
	if _, _, err := run(t, t.Context(), "", "check", "--issuer", "https://auth.example.com", "--url", base); err == nil || !strings.Contains(err.Error(), `want "https://auth.example.com"`) {
		t.Fatalf("check with the wrong issuer: %v", err)
	}
	activeLine := regexp.MustCompile(`(?m)^(\S+)\s+ES256\s+active`).FindStringSubmatch(listOut)
	stop()

	base2, _, stop2 := start()
	defer stop2()
	listOut2, _, err := run(t, t.Context(), "", "keys", "list", "--issuer", base2, "--client-id", "admin", "--client-secret", "admin-secret")
	if err != nil || activeLine == nil || !strings.Contains(listOut2, activeLine[1]) {
		t.Fatalf("after restart, active key changed: %v\nbefore:\n%s\nafter:\n%s", err, listOut, listOut2)
	}
}

func TestDevPortTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	_, _, err = run(t, t.Context(), "", "dev", "--data", t.TempDir(), "--issuer-addr", ln.Addr().String(), "--sidecar-addr", "127.0.0.1:0", "--sidecar-grpc-addr", "127.0.0.1:0", "--nats-addr", "127.0.0.1:0")
	if err == nil || !strings.Contains(err.Error(), "--issuer-addr") {
		t.Fatalf("port taken: %v", err)
	}
	_, _, err = run(t, t.Context(), "", "dev", "--data", t.TempDir(), "--issuer-addr", "127.0.0.1:0", "--sidecar-addr", "127.0.0.1:0", "--sidecar-grpc-addr", "127.0.0.1:0", "--nats-addr", ln.Addr().String())
	if err == nil || !strings.Contains(err.Error(), "--nats-addr") {
		t.Fatalf("NATS port taken: %v", err)
	}
	_, _, err = run(t, t.Context(), "", "dev", "--data", t.TempDir(), "--issuer-addr", "127.0.0.1:0", "--sidecar-addr", ln.Addr().String(), "--sidecar-grpc-addr", "127.0.0.1:0", "--nats-addr", "127.0.0.1:0")
	if err == nil || !strings.Contains(err.Error(), "--sidecar-addr") {
		t.Fatalf("sidecar port taken: %v", err)
	}
	_, _, err = run(t, t.Context(), "", "dev", "--data", t.TempDir(), "--issuer-addr", "127.0.0.1:0", "--sidecar-addr", "127.0.0.1:0", "--sidecar-grpc-addr", ln.Addr().String(), "--nats-addr", "127.0.0.1:0")
	if err == nil || !strings.Contains(err.Error(), "--sidecar-grpc-addr") {
		t.Fatalf("sidecar gRPC port taken: %v", err)
	}
}

func waitReady(t *testing.T, base string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s not ready", base)
}

// checkDevGRPC asks the dev sidecar's gRPC API, at the address its banner
// prints, about token: healthy, and Check allows it as demo.
func checkDevGRPC(t *testing.T, banner, token string) {
	t.Helper()
	m := regexp.MustCompile(`gRPC\s+(127\.0\.0\.1:\d+)`).FindStringSubmatch(banner)
	if m == nil {
		t.Fatalf("banner has no gRPC address:\n%s", banner)
	}
	conn, err := grpc.NewClient(m[1], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	h, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{Service: sidecar.AuthorizationService})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health: %v %v", h, err)
	}
	req := extauthz.Filter{ContextExtensions: map[string]string{sidecar.ScopeContextExtension: "read"}}.CheckRequest(
		extauthz.Request{Method: "GET", Path: "/", Host: "app", Headers: [][2]string{{"authorization", "Bearer " + token}}})
	resp, err := authv3.NewAuthorizationClient(conn).Check(t.Context(), req)
	if err != nil || resp.GetStatus().GetCode() != 0 || len(resp.GetOkResponse().GetHeaders()) != 5 ||
		resp.GetOkResponse().GetHeaders()[0].GetHeader().GetValue() != "demo" {
		t.Fatalf("gRPC Check: %v %v", resp, err)
	}
}
