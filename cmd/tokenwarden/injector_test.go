package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestInjectorCommandServesAndStops(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	cfg := filepath.Join(t.TempDir(), "injector.yaml")
	if err := os.WriteFile(cfg, []byte("issuer: https://auth.example.com\naudience: [demo-api]\ndistribution_public_keys: [EcNF7hbaFGWoTG3ZJArxrkTq23iRjHAqcZeNkHl/Zl8=]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	g := &globals{logLevel: "info", logFormat: "text", stdin: strings.NewReader(""), stdout: io.Discard, stderr: &stderr}
	cmd := newInjectorCommand(g)
	cmd.SetArgs([]string{"--config", cfg, "--addr", addr, "--namespace", "tokenwarden"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("healthz: HTTP %d", resp.StatusCode)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("injector never answered: %v\n%s", err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, err := http.Post("http://"+addr+"/mutate", "application/json", strings.NewReader("{"))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("malformed review: HTTP %d", resp.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("stopping: %v", err)
	}
}

func TestInjectorCommandRejectsBadConfig(t *testing.T) {
	g := &globals{logLevel: "info", logFormat: "text", stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard}
	for name, args := range map[string][]string{
		"missing file":    {"--config", filepath.Join(t.TempDir(), "nope.yaml")},
		"bad port":        {"--sidecar-port", "0"},
		"tls cert no key": {"--tls-cert", "/x.crt"},
		"unknown flag":    {"--bogus"},
	} {
		t.Run(name, func(t *testing.T) {
			cmd := newInjectorCommand(g)
			cmd.SetArgs(args)
			cmd.SetOut(io.Discard)
			cmd.SetErr(io.Discard)
			if err := cmd.ExecuteContext(context.Background()); err == nil {
				t.Fatal("want an error")
			}
		})
	}
	cmd := newInjectorCommand(g)
	for _, f := range []string{"addr", "tls-cert", "tls-key", "config", "sidecar-image", "nats-url", "audience", "issuer"} {
		if cmd.Flags().Lookup(f) == nil {
			t.Errorf("no --%s flag", f)
		}
	}
}
