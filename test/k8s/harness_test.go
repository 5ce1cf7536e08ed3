// Package k8s runs the Helm chart end to end on a real Kubernetes cluster: the one `make
// cluster-up` builds on this machine from upstream parts (hack/cluster). It installs the chart as
// docs/kubernetes.md tells a platform team to, then drives tokens through the cluster's own
// Services, rolls and kills its pods, reinstalls it, and upgrades and uninstalls it.
//
// It is skipped unless TW_E2E_KUBECONFIG names the cluster's kubeconfig; `make e2e-k8s` sets it
// (with PATH holding the cluster's kubectl and helm, and TW_E2E_TOKENWARDEN the built binary).
package k8s

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	ns      = "tokenwarden" // the chart's namespace, as in the docs
	appNS   = "shop"        // the app's namespace
	release = "tokenwarden"
)

// env is the cluster under test.
type env struct {
	t          *testing.T
	root       string // repository root
	kubeconfig string
	twBin      string // the tokenwarden binary, for revoke and keys
	hc         *http.Client
	timings    []timing
}

type timing struct {
	name string
	took time.Duration
	ok   bool
}

func newEnv(t *testing.T) *env {
	kc := os.Getenv("TW_E2E_KUBECONFIG")
	if kc == "" {
		t.Skip("no cluster: TW_E2E_KUBECONFIG is not set (make e2e-k8s sets it)")
	}
	if runtime.GOOS != "linux" {
		t.Skip("the local cluster is Linux only")
	}
	_, file, _, _ := runtime.Caller(0)
	root, err := filepath.Abs(filepath.Join(filepath.Dir(file), "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	tw := os.Getenv("TW_E2E_TOKENWARDEN")
	if tw == "" {
		tw = filepath.Join(root, "bin", "tokenwarden")
	}
	for _, b := range []string{"kubectl", "helm"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not on PATH (make e2e-k8s puts the cluster's in it): %v", b, err)
		}
	}
	return &env{t: t, root: root, kubeconfig: kc, twBin: tw,
		// Longer than a login can wait out a NATS failover (the issuer's 8 s budget, once for
		// NATS to be back and once for the write) plus its own work: a slow answer during a NATS
		// rollout is a success, not a failure.
		hc: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
}

// phase runs one step as a subtest and records how long it took.
func (e *env) phase(name string, f func(t *testing.T)) bool {
	start := time.Now()
	ok := e.t.Run(name, f)
	e.timings = append(e.timings, timing{name, time.Since(start), ok})
	e.t.Logf("phase %-44s %7.1fs %s", name, time.Since(start).Seconds(), map[bool]string{true: "ok", false: "FAILED"}[ok])
	return ok
}

func (e *env) printTimings() {
	var b strings.Builder
	var total time.Duration
	fmt.Fprintf(&b, "\n%-48s %8s\n", "phase", "seconds")
	for _, p := range e.timings {
		mark := ""
		if !p.ok {
			mark = "  FAILED"
		}
		fmt.Fprintf(&b, "%-48s %8.1f%s\n", p.name, p.took.Seconds(), mark)
		total += p.took
	}
	fmt.Fprintf(&b, "%-48s %8.1f\n", "total", total.Seconds())
	e.t.Log(b.String())
}

// run runs a command with the cluster's kubeconfig; it returns stdout (and stderr on failure).
func (e *env) run(ctx context.Context, stdin string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+e.kubeconfig)
	cmd.Dir = e.root
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s%s", name, strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String(), nil
}

func (e *env) kubectl(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := e.run(ctx, "", "kubectl", args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (e *env) helm(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out, err := e.run(ctx, "", "helm", args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// script runs a shell script the way a user pastes it (bash -euo pipefail).
func (e *env) script(t *testing.T, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	out, err := e.run(ctx, "", "bash", "-euo", "pipefail", "-c", script)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return out
}

// jsonpath returns kubectl's jsonpath output for one object.
func (e *env) jsonpath(t *testing.T, namespace, object, path string) string {
	t.Helper()
	return strings.TrimSpace(e.kubectl(t, "-n", namespace, "get", object, "-o", "jsonpath="+path))
}

// serviceURL is http://<ClusterIP>:<port>: the test runs on the node, where kube-proxy routes
// ClusterIPs, so it talks to the cluster's own Services.
func (e *env) serviceURL(t *testing.T, namespace, svc string) string {
	t.Helper()
	ip := e.jsonpath(t, namespace, "svc/"+svc, "{.spec.clusterIP}")
	port := e.jsonpath(t, namespace, "svc/"+svc, "{.spec.ports[0].port}")
	return "http://" + ip + ":" + port
}

// eventually retries f until it returns nil or within passes.
func eventually(t *testing.T, within time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, within, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// tokens is an answer of the token endpoint.
type tokens struct {
	Access  string `json:"access_token"`
	Refresh string `json:"refresh_token"`
	Scope   string `json:"scope"`
	Error   string `json:"error"`
}

func (e *env) token(issuer string, form url.Values, clientID, secret string) (*tokens, int, error) {
	req, err := http.NewRequest(http.MethodPost, issuer+"/oauth2/token", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(clientID, secret)
	resp, err := e.hc.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	var tk tokens
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err := json.Unmarshal(body, &tk); err != nil {
		return nil, resp.StatusCode, fmt.Errorf("token endpoint: %d %q", resp.StatusCode, body)
	}
	if resp.StatusCode != http.StatusOK {
		return &tk, resp.StatusCode, fmt.Errorf("token endpoint: %d %s", resp.StatusCode, body)
	}
	return &tk, resp.StatusCode, nil
}

func (e *env) login(issuer, scope string) (*tokens, error) {
	tk, _, err := e.token(issuer, url.Values{"grant_type": {"password"}, "username": {"demo"},
		"password": {"demo-password"}, "scope": {scope}}, "demo-app", "demo-secret")
	return tk, err
}

func (e *env) mustLogin(t *testing.T, issuer, scope string) *tokens {
	t.Helper()
	tk, err := e.login(issuer, scope)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// appAnswer is what the test app answers: its status, the identity it saw and the challenge.
type appAnswer struct {
	status    int
	subject   string
	challenge string
	body      string
}

func (e *env) callApp(app, path, token string) (appAnswer, error) {
	req, err := http.NewRequest(http.MethodGet, app+path, nil)
	if err != nil {
		return appAnswer{}, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		return appAnswer{}, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	a := appAnswer{status: resp.StatusCode, challenge: resp.Header.Get("WWW-Authenticate"), body: string(body)}
	var id struct {
		Subject string `json:"subject"`
	}
	if resp.StatusCode == http.StatusOK {
		_ = json.Unmarshal(body, &id)
		a.subject = id.Subject
	}
	return a, nil
}

// tw runs `tokenwarden ARGS...` against the issuer's admin API with the admin client.
func (e *env) tw(issuer string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.twBin, args...)
	cmd.Env = append(os.Environ(), "TOKENWARDEN_ISSUER="+issuer, "TOKENWARDEN_CLIENT_ID=admin", "TOKENWARDEN_CLIENT_SECRET=admin-secret")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("tokenwarden %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// admin is tw, failing t on an error.
func (e *env) admin(t *testing.T, issuer string, args ...string) string {
	t.Helper()
	out, err := e.tw(issuer, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// loop calls f again and again (every interval) until stopped, counting failures.
type loop struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stop       context.CancelFunc
	done       chan struct{}
}

func startLoop(interval time.Duration, f func() error) *loop {
	ctx, cancel := context.WithCancel(context.Background())
	l := &loop{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			if err := f(); err != nil {
				l.failed.Add(1)
				l.mu.Lock()
				if len(l.errs) < 10 {
					l.errs = append(l.errs, time.Now().Format("15:04:05.000")+" "+err.Error())
				}
				l.mu.Unlock()
			} else {
				l.ok.Add(1)
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return l
}

// finish stops the loop and fails t if any call failed or none succeeded.
func (l *loop) finish(t *testing.T, what string) {
	t.Helper()
	l.stop()
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	t.Logf("%s: %d succeeded, %d failed", what, l.ok.Load(), l.failed.Load())
	if l.failed.Load() > 0 || l.ok.Load() == 0 {
		t.Errorf("%s: %d of %d failed; first failures:\n%s", what, l.failed.Load(), l.ok.Load()+l.failed.Load(), strings.Join(l.errs, "\n"))
	}
}

// docBlock returns the shell commands between <!-- NAME:start --> and <!-- NAME:end --> in
// docs/kubernetes.md: the test runs the documented commands word for word.
func (e *env) docBlock(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.root, "docs", "kubernetes.md"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?s)<!-- ` + regexp.QuoteMeta(name) + `:start -->(.*?)<!-- ` + regexp.QuoteMeta(name) + `:end -->`)
	m := re.FindSubmatch(b)
	if m == nil {
		t.Fatalf("docs/kubernetes.md has no block %q", name)
	}
	var script strings.Builder
	for _, blk := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllSubmatch(m[1], -1) {
		script.Write(blk[1])
	}
	if script.Len() == 0 {
		t.Fatalf("block %q has no sh code", name)
	}
	return script.String()
}
