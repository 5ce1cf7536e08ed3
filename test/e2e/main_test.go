// Package e2e drives the built tokenwarden binary as a user would: separate
// processes, real ports on 127.0.0.1, a real nats-server binary, the README
// walk-through run verbatim, and standard clients (golang.org/x/oauth2,
// github.com/coreos/go-oidc/v3) against the issuer.
package e2e

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

// binaries built once for the whole suite.
var (
	twBin   string
	natsBin string
)

func TestMain(m *testing.M) {
	// In a bin directory of their own: the README walk-through finds
	// them there.
	testenv.MainWithPrograms(m, "bin", &twBin, &natsBin)
}

// proc is a child process (testenv.Proc: its own process group, killed
// with the test binary and when the test ends) whose whole output is kept
// for waitFor and failure messages.
type proc struct {
	*testenv.Proc
	t *testing.T
}

// start runs bin with args until the test ends.
func start(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{Proc: testenv.NewProc(t, name, 0, testenv.Command(bin, env, args...)), t: t}
	if err := p.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	return p
}

// stop sends SIGTERM and waits; it returns how the process exited (nil
// for 0).
func (p *proc) stop(within time.Duration) error {
	if err := p.Stop(within); err != nil {
		return err
	}
	return p.Process().Err()
}

// waitFor polls the process output for re and returns the first match.
func (p *proc) waitFor(re *regexp.Regexp, within time.Duration) []string {
	p.t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(p.Out.String()); m != nil {
			return m
		}
		if err := p.Crashed(); err != nil {
			p.t.Fatalf("%v before printing %s:\n%s", err, re, p.Out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.t.Fatalf("%s did not print %s within %s:\n%s", p.Name, re, within, p.Out.String())
	return nil
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

func waitOK(t *testing.T, u string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(u); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s not 200 within %s", u, within)
}

// tw runs a short tokenwarden command and returns its output and error.
func tw(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, twBin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := testenv.CombinedOutput(cmd)
	return string(out), err
}

// startDev runs `tokenwarden dev` on free ports and returns the issuer and
// sidecar URLs.
func startDev(t *testing.T, data string) (*proc, string, string) {
	t.Helper()
	p := start(t, "dev", nil, twBin, "dev", "--data", data, "--issuer-addr", freeAddr(t), "--sidecar-addr", freeAddr(t), "--sidecar-grpc-addr", freeAddr(t), "--nats-addr", freeAddr(t))
	iss := p.waitFor(regexp.MustCompile(`issuer\s+(http://\S+)`), 60*time.Second)[1]
	sc := p.waitFor(regexp.MustCompile(`sidecar\s+(http://\S+)`), 10*time.Second)[1]
	waitOK(t, iss+"/readyz", 30*time.Second)
	waitOK(t, sc+"/readyz", 30*time.Second)
	return p, iss, sc
}

// TestREADMEWalkthrough runs the README's walk-through, verbatim, against
// `tokenwarden dev`, and compares what it prints with the output the README
// shows (timestamps and ids aside).
func TestREADMEWalkthrough(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	script, want := walkthrough(t, string(readme))
	_, iss, sc := startDev(t, t.TempDir())
	work := t.TempDir()
	if err := os.Symlink(filepath.Dir(twBin), filepath.Join(work, "bin")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "-c", "set -euo pipefail\n"+script)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "ISSUER="+iss, "SIDECAR="+sc)
	out, err := testenv.CombinedOutput(cmd)
	if err != nil {
		t.Fatalf("walk-through failed: %v\n%s", err, out)
	}
	if got, exp := normalize(string(out)), normalize(want); got != exp {
		t.Fatalf("walk-through output differs from the README.\ngot:\n%s\nREADME:\n%s", got, exp)
	}
}

// walkthrough extracts the sh blocks between the walkthrough markers and the
// output blocks that follow them.
func walkthrough(t *testing.T, readme string) (script, output string) {
	t.Helper()
	start, end := strings.Index(readme, "<!-- walkthrough:start -->"), strings.Index(readme, "<!-- walkthrough:end -->")
	if start < 0 || end < start {
		t.Fatal("README has no walkthrough markers")
	}
	var sh, outs []string
	sc := bufio.NewScanner(strings.NewReader(readme[start:end]))
	var cur *[]string
	var block []string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case cur == nil && line == "```sh":
			cur, block = &sh, nil
		case cur == nil && line == "```":
			cur, block = &outs, nil
		case cur != nil && line == "```":
			*cur = append(*cur, strings.Join(block, "\n"))
			cur = nil
		case cur != nil:
			block = append(block, line)
		}
	}
	if len(sh) < 4 || len(outs) < 4 {
		t.Fatalf("walkthrough: %d command blocks, %d output blocks", len(sh), len(outs))
	}
	return strings.Join(sh, "\n"), strings.Join(outs, "\n") + "\n"
}

var volatile = []*regexp.Regexp{
	regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`),
	regexp.MustCompile(`event [A-Za-z0-9_-]{22}`),
	regexp.MustCompile(`sequence \d+`),
}

func normalize(s string) string {
	for _, re := range volatile {
		s = re.ReplaceAllString(s, "<"+re.String()[:5]+">")
	}
	return strings.TrimSpace(strings.ReplaceAll(s, "\r", ""))
}

// TestDevStopsCleanlyAndRestarts: SIGTERM stops dev with exit 0, and the
// data directory works for the next start (same keys).
func TestDevStopsCleanlyAndRestarts(t *testing.T) {
	data := t.TempDir()
	p, iss, _ := startDev(t, data)
	env := []string{"TOKENWARDEN_ISSUER=" + iss, "TOKENWARDEN_CLIENT_ID=admin", "TOKENWARDEN_CLIENT_SECRET=admin-secret"}
	before, err := tw(t, env, "keys", "list")
	if err != nil {
		t.Fatalf("keys list: %v\n%s", err, before)
	}
	if err := p.stop(20 * time.Second); err != nil {
		t.Fatalf("dev exit on SIGTERM: %v\n%s", err, p.Out.String())
	}
	_, iss2, _ := startDev(t, data)
	after, err := tw(t, []string{"TOKENWARDEN_ISSUER=" + iss2, "TOKENWARDEN_CLIENT_ID=admin", "TOKENWARDEN_CLIENT_SECRET=admin-secret"}, "keys", "list")
	if err != nil {
		t.Fatal(err)
	}
	active := regexp.MustCompile(`(?m)^(\S+)\s+ES256\s+active`).FindStringSubmatch(before)
	if active == nil || !strings.Contains(after, active[1]) {
		t.Fatalf("keys changed across restart:\n%s\n%s", before, after)
	}
}

// TestCommandErrors: bad flags, missing or malformed files and unreachable
// services give one clear line and a non-zero exit, never a stack trace.
func TestCommandErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(bad, []byte("listen: [\n"), 0o600)
	unknown := filepath.Join(dir, "unknown.yaml")
	_ = os.WriteFile(unknown, []byte("issuer: https://x\nlisen: :1\n"), 0o600)
	cases := []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"issuer", "--bogus"}, nil, "unknown flag"},
		{[]string{"issuer", "--config", filepath.Join(dir, "missing.yaml")}, nil, "missing.yaml"},
		{[]string{"issuer", "--config", bad}, nil, "bad.yaml"},
		{[]string{"issuer", "--config", unknown}, nil, "lisen"},
		{[]string{"sidecar", "--leeway", "soon"}, nil, "--leeway"},
		{[]string{"sidecar"}, nil, "issuer"},
		{[]string{"keys", "list", "--issuer", "http://127.0.0.1:1"}, []string{"TOKENWARDEN_CLIENT_ID=a", "TOKENWARDEN_CLIENT_SECRET=b"}, "127.0.0.1:1"},
		{[]string{"revoke", "sub"}, nil, "KIND VALUE"},
		{[]string{"revoke", "all"}, []string{"TOKENWARDEN_CLIENT_ID=a", "TOKENWARDEN_CLIENT_SECRET=b"}, "--issued-before"},
		{[]string{"revoke", "everything", "x"}, nil, "unknown kind"},
		{[]string{"version", "extra"}, nil, "unknown command"},
	}
	for _, c := range cases {
		out, err := tw(t, c.env, c.args...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if err == nil || !strings.Contains(out, c.want) || strings.Contains(out, "goroutine ") || strings.Contains(out, "panic") {
			t.Errorf("%v: err %v, output:\n%s", c.args, err, out)
			continue
		}
		if last := lines[len(lines)-1]; !strings.HasPrefix(last, "tokenwarden: ") && !strings.HasPrefix(last, "Error: ") {
			t.Errorf("%v: last line is not the error: %q", c.args, last)
		}
	}
	for _, cmd := range []string{"dev", "issuer", "sidecar", "keys", "revoke", "hash-password", "version"} {
		if out, err := tw(t, nil, cmd, "--help"); err != nil || !strings.Contains(out, "Usage:") {
			t.Errorf("%s --help: %v\n%s", cmd, err, out)
		}
	}
}
