package proxies

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

// exampleNginx is the example users copy; the test runs it verbatim but
// for its three addresses.
const exampleNginx = "../../examples/nginx/nginx.conf"

// findNginx returns the nginx binary (PATH, then Debian's /usr/sbin). It
// fails rather than skips: CI installs nginx, and a green run that never
// started nginx would prove nothing.
func findNginx(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr != nil {
			t.Fatal("nginx not found in PATH or at /usr/sbin/nginx: run `make deps` " +
				"(on Debian/Ubuntu: apt-get update && apt-get install -y --no-install-recommends nginx)")
		}
		bin = "/usr/sbin/nginx"
	}
	out, err := testenv.CombinedOutput(exec.Command(bin, "-V"))
	if err != nil {
		t.Fatalf("%s -V: %v\n%s", bin, err, out)
	}
	if !bytes.Contains(out, []byte("http_auth_request_module")) {
		t.Fatalf("%s is built without ngx_http_auth_request_module (install Debian's nginx package):\n%s", bin, out)
	}
	return bin
}

// nginxConfig is the example with its sidecar, app and listen addresses
// replaced; each must occur exactly once, so the test notices when the
// example changes shape.
func nginxConfig(t *testing.T, sidecarAddr, appAddr, listen string) string {
	t.Helper()
	b, err := os.ReadFile(exampleNginx)
	if err != nil {
		t.Fatal(err)
	}
	conf := string(b)
	for _, r := range [][2]string{
		{"server 127.0.0.1:8181;", "server " + sidecarAddr + ";"},
		{"server 127.0.0.1:3000;", "server " + appAddr + ";"},
		{"listen 127.0.0.1:8000;", "listen " + listen + ";"},
	} {
		if n := strings.Count(conf, r[0]); n != 1 {
			t.Fatalf("%s: %q occurs %d times, want 1", exampleNginx, r[0], n)
		}
		conf = strings.Replace(conf, r[0], r[1], 1)
	}
	return conf
}

// startNginx runs the example as a foreground single process under a
// temporary prefix, on a free loopback port, and stops it when the test
// ends. It returns nginx's base URL.
func startNginx(t *testing.T, sidecarURL, appURL string) string {
	t.Helper()
	bin := findNginx(t)
	host := func(u string) string { return strings.TrimPrefix(u, "http://") }
	var lastErr error
	for range 3 { // a free port can be taken between choosing and binding it
		dir := t.TempDir()
		for _, d := range []string{"logs", "tmp"} {
			if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
				t.Fatal(err)
			}
		}
		listen := freePort(t)
		conf := filepath.Join(dir, "nginx.conf")
		if err := os.WriteFile(conf, []byte(nginxConfig(t, host(sidecarURL), host(appURL), listen)), 0o600); err != nil {
			t.Fatal(err)
		}
		errLog := filepath.Join(dir, "logs", "error.log")
		args := []string{"-p", dir + "/", "-c", conf, "-e", errLog}
		if out, err := testenv.CombinedOutput(exec.Command(bin, append(args, "-t")...)); err != nil {
			t.Fatalf("nginx -t rejects the example: %v\n%s", err, out)
		}
		// Foreground, one process (no workers to orphan, no privilege
		// switch when run as root): the test owns and stops it.
		cmd := exec.Command(bin, append(args, "-g", "daemon off; master_process off;")...)
		stderr := &testenv.Tail{}
		cmd.Stdout, cmd.Stderr = stderr, stderr
		p, err := testenv.Start(cmd)
		if err != nil {
			t.Fatal(err)
		}
		if err := waitListening(listen, p.Done()); err != nil {
			p.Kill()
			logs, _ := os.ReadFile(errLog)
			lastErr = fmt.Errorf("nginx did not start: %w (%w)\n%s%s", err, p.Err(), stderr.String(), logs)
			if strings.Contains(lastErr.Error(), "Address already in use") {
				continue
			}
			t.Fatal(lastErr)
		}
		t.Cleanup(func() {
			_ = p.Signal(syscall.SIGQUIT) // graceful stop
			if p.Wait(5*time.Second) != nil {
				p.Kill()
			}
			if t.Failed() {
				logs, _ := os.ReadFile(errLog)
				t.Logf("nginx error.log:\n%s", logs)
			}
		})
		return "http://" + listen
	}
	t.Fatal(lastErr)
	return ""
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().String()
}

func waitListening(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errors.New("exited")
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			_ = c.Close()
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return errors.New("not listening after 10s")
}

// seen is what the upstream app received.
type seen struct {
	Method  string              `json:"method"`
	URI     string              `json:"uri"`
	Body    string              `json:"body"`
	Headers map[string][]string `json:"headers"`
}

// echoApp is the protected app: it answers with what it received.
func echoApp(t *testing.T, hits *atomic.Int64) string {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(seen{Method: r.Method, URI: r.RequestURI, Body: string(body), Headers: r.Header})
	}))
	t.Cleanup(hs.Close)
	return hs.URL
}

type nginxResult struct {
	status int
	header http.Header
	app    *seen // nil unless the app answered
}

func do(t *testing.T, method, u string, header http.Header, body string) nginxResult {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v // as given: lower-case keys stay lower-case on the wire
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	r := nginxResult{status: resp.StatusCode, header: resp.Header}
	if resp.StatusCode == 200 && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		r.app = &seen{}
		if err := json.NewDecoder(resp.Body).Decode(r.app); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

// checkDenials runs the subtests every proxy in front of the sidecar (at
// base, in front of the app counting hits) passes alike: no token, invalid
// tokens and a missing scope get the sidecar's status and challenge, never
// the app; with the scope, a POST body reaches the app intact. /orders/
// requires write in every example.
func checkDenials(t *testing.T, base string, hits *atomic.Int64, full, readOnly, otherAudience string) {
	t.Run("no token is 401 with a bare Bearer challenge", func(t *testing.T) {
		before := hits.Load()
		r := do(t, "GET", base+"/api/items", nil, "")
		refused(t, r, 401)
		if got := r.header.Get("WWW-Authenticate"); got != `Bearer realm="tokenwarden"` {
			t.Fatalf("WWW-Authenticate %q", got)
		}
		if hits.Load() != before {
			t.Fatal("the app was called")
		}
	})

	t.Run("invalid tokens are 401 invalid_token", func(t *testing.T) {
		before := hits.Load()
		for name, tok := range map[string]string{"garbage": "abc.def.ghi", "tampered": tamper(full), "wrong audience": otherAudience} {
			t.Run(name, func(t *testing.T) {
				refused(t, do(t, "POST", base+"/", bearer(tok), `{"a":1}`), 401, `Bearer realm="tokenwarden"`, `error="invalid_token"`, `error_description="`)
			})
		}
		refused(t, do(t, "GET", base+"/", http.Header{"Authorization": {"Bearer a b"}}, ""), 401, `error="invalid_request"`)
		if hits.Load() != before {
			t.Fatal("the app was called")
		}
	})

	t.Run("missing scope is 403 insufficient_scope", func(t *testing.T) {
		before := hits.Load()
		r := do(t, "POST", base+"/orders/new", bearer(readOnly), `{"item":1}`)
		refused(t, r, 403, `Bearer realm="tokenwarden"`, `error="insufficient_scope"`, `scope="write"`)
		if r.header.Get("Cache-Control") != "no-store" {
			t.Errorf("403 Cache-Control %q", r.header.Get("Cache-Control"))
		}
		if hits.Load() != before {
			t.Fatal("the app was called")
		}
		r = do(t, "POST", base+"/orders/new", bearer(full), `{"item":1}`)
		if r.status != 200 || r.app == nil || r.app.Method != "POST" || r.app.Body != `{"item":1}` ||
			http.Header(r.app.Headers).Get("X-Auth-Subject") != "alice" {
			t.Fatalf("status %d, app saw %+v", r.status, r.app)
		}
	})
}

// refused asserts the proxy refused without touching the app, with the
// sidecar's status and challenge.
func refused(t *testing.T, r nginxResult, status int, www ...string) {
	t.Helper()
	if r.status != status || r.app != nil {
		t.Fatalf("status %d (app answered: %v), want %d", r.status, r.app != nil, status)
	}
	got := r.header.Values("WWW-Authenticate")
	if len(got) != 1 {
		t.Fatalf("WWW-Authenticate %q, want exactly one", got)
	}
	for _, w := range www {
		if !strings.Contains(got[0], w) {
			t.Fatalf("WWW-Authenticate %q lacks %q", got[0], w)
		}
	}
}

// TestNginxAuthRequest runs examples/nginx/nginx.conf in a real nginx in
// front of an echo app, with a real sidecar fed by a real issuer over NATS.
func TestNginxAuthRequest(t *testing.T) {
	s := newSystem(t)
	sc := s.sidecar()
	var hits atomic.Int64
	app := echoApp(t, &hits)
	ngx := startNginx(t, sc, app)

	full := s.login("read write")
	readOnly := s.login("read")
	service := s.token("service", "service-secret", map[string][]string{"grant_type": {"client_credentials"}})
	other := s.token("other", "other-secret", map[string][]string{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}})

	t.Run("valid token reaches the app with its identity", func(t *testing.T) {
		c := claims(t, full)
		r := do(t, "GET", ngx+"/api/items?page=2", bearer(full), "")
		if r.status != 200 || r.app == nil {
			t.Fatalf("status %d", r.status)
		}
		h := http.Header(r.app.Headers)
		want := map[string]string{
			"X-Auth-Subject": "alice", "X-Auth-Client-Id": "app", "X-Auth-Scope": "read write",
			"X-Auth-Token-Id": c["jti"].(string), "X-Auth-Expires-At": fmt.Sprint(int64(c["exp"].(float64))),
		}
		for k, v := range want {
			if got := h.Values(k); len(got) != 1 || got[0] != v {
				t.Errorf("app got %s %q, want %q", k, got, v)
			}
		}
		if r.app.URI != "/api/items?page=2" || r.app.Method != "GET" {
			t.Errorf("app got %s %s", r.app.Method, r.app.URI)
		}
	})

	// With the scope, the body reaches the app intact: only the
	// subrequest to the sidecar drops it.
	checkDenials(t, ngx, &hits, full, readOnly, other)

	t.Run("client-supplied X-Auth headers never reach the app", func(t *testing.T) {
		spoof := bearer(service)
		spoof["X-Auth-Subject"] = []string{"admin"}
		spoof["x-auth-subject"] = []string{"root"} // other spelling, same header to nginx
		spoof["X-Auth-Scope"] = []string{"tokenwarden:admin"}
		spoof["X-Auth-Client-Id"] = []string{"admin"}
		spoof["X-Auth-Token-Id"] = []string{"forged"}
		spoof["X-Auth-Expires-At"] = []string{"4102444800"}
		r := do(t, "GET", ngx+"/", spoof, "")
		if r.status != 200 {
			t.Fatalf("status %d", r.status)
		}
		h := http.Header(r.app.Headers)
		for k, v := range map[string]string{"X-Auth-Subject": "service", "X-Auth-Scope": "read", "X-Auth-Client-Id": "service"} {
			if got := h.Values(k); len(got) != 1 || got[0] != v {
				t.Errorf("app got %s %q, want only %q", k, got, v)
			}
		}
		if got := h.Values("X-Auth-Token-Id"); len(got) != 1 || got[0] == "forged" {
			t.Errorf("app got X-Auth-Token-Id %q", got)
		}
		// Without a token, the forged identity is refused outright.
		delete(spoof, "Authorization")
		before := hits.Load()
		refused(t, do(t, "GET", ngx+"/", spoof, ""), 401)
		if hits.Load() != before {
			t.Fatal("the app was called")
		}
	})

	t.Run("scope policy comes from the config, not the client", func(t *testing.T) {
		h := bearer(readOnly)
		h["X-Required-Scope"] = []string{"write"} // the client cannot change the requirement...
		if r := do(t, "GET", ngx+"/", h, ""); r.status != 200 {
			t.Fatalf("status %d", r.status)
		}
		// ...nor escape it through the query or by spelling the path
		// differently: nginx matches locations on the decoded, normalized
		// path.
		for _, p := range []string{"/orders/?scope=", "/%6Frders/new", "/x/../orders/new", "//orders//new"} {
			refused(t, do(t, "GET", ngx+p, bearer(readOnly), ""), 403, `error="insufficient_scope"`)
		}
	})

	t.Run("the sidecar location is internal", func(t *testing.T) {
		for _, p := range []string{"/_tokenwarden/", "/_tokenwarden/write"} {
			if r := do(t, "GET", ngx+p, bearer(full), ""); r.status != 404 {
				t.Fatalf("%s: status %d", p, r.status)
			}
		}
	})

	t.Run("unprotected location", func(t *testing.T) {
		if r := do(t, "GET", ngx+"/healthz", nil, ""); r.status != 200 || r.app == nil {
			t.Fatalf("status %d", r.status)
		}
	})

	t.Run("sidecar down is 503 and never the app", func(t *testing.T) {
		dead := "http://" + freePort(t) // nothing listens there
		before := hits.Load()
		down := startNginx(t, dead, app)
		r := do(t, "GET", down+"/", bearer(full), "")
		if r.status != 503 || r.app != nil || hits.Load() != before {
			t.Fatalf("status %d, app called %v", r.status, hits.Load() != before)
		}
		if r.header.Get("Retry-After") == "" || r.header.Get("WWW-Authenticate") != "" {
			t.Fatalf("headers %v", r.header)
		}
	})
}
