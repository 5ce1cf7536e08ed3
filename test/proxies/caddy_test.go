package proxies

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

// exampleCaddy is the example users copy; the test runs it verbatim but
// for its three addresses.
const exampleCaddy = "../../examples/caddy/Caddyfile"

// findCaddy returns the caddy binary (PATH, then Debian's /usr/bin). It
// fails rather than skips, as findNginx does.
func findCaddy(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("caddy")
	if err != nil {
		if _, serr := os.Stat("/usr/bin/caddy"); serr != nil {
			t.Fatal("caddy not found in PATH or at /usr/bin/caddy: run `make deps` " +
				"(on Debian/Ubuntu: apt-get update && apt-get install -y --no-install-recommends caddy)")
		}
		bin = "/usr/bin/caddy"
	}
	return bin
}

// caddyConfig is the example with its sidecar, app and listen addresses
// replaced; each must occur exactly once, so the test notices when the
// example changes shape. drop removes lines (exact, trimmed) for the
// control run that shows what they protect from.
func caddyConfig(t *testing.T, sidecarAddr, appAddr, port string, drop ...string) string {
	t.Helper()
	b, err := os.ReadFile(exampleCaddy)
	if err != nil {
		t.Fatal(err)
	}
	conf := string(b)
	for _, r := range [][2]string{
		{"forward_auth 127.0.0.1:8181 {", "forward_auth " + sidecarAddr + " {"},
		{"reverse_proxy 127.0.0.1:3000", "reverse_proxy " + appAddr},
		{"http://:8000 {", "http://:" + port + " {"},
	} {
		if n := strings.Count(conf, r[0]); n != 1 {
			t.Fatalf("%s: %q occurs %d times, want 1", exampleCaddy, r[0], n)
		}
		conf = strings.Replace(conf, r[0], r[1], 1)
	}
	for _, d := range drop {
		var kept []string
		for _, line := range strings.Split(conf, "\n") {
			if strings.TrimSpace(line) != d {
				kept = append(kept, line)
			}
		}
		if len(kept) == strings.Count(conf, "\n")+1 {
			t.Fatalf("%s: no line %q to drop", exampleCaddy, d)
		}
		conf = strings.Join(kept, "\n")
	}
	return conf
}

// caddyCommand is caddy with args in a world of its own under dir: its
// config (autosave) and data (certificates, instance id) directories
// there, not the user's, and no TOKENWARDEN_* or CADDY_* setting of the
// caller's. testenv.Start runs it in a process group of its own that dies
// with the test binary, so no caddy outlives the test.
func caddyCommand(bin, dir string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...) // #nosec G204 -- the test's own caddy
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir,
		"XDG_CONFIG_HOME=" + filepath.Join(dir, "config"), "XDG_DATA_HOME=" + filepath.Join(dir, "data"),
		"XDG_CACHE_HOME=" + filepath.Join(dir, "cache")}
	return cmd
}

// startCaddy runs the example (with drop, see caddyConfig) in front of
// appURL, asking sidecarURL, on a free loopback port, and stops it (its
// whole process group) when the test ends. It returns Caddy's base URL.
func startCaddy(t *testing.T, sidecarURL, appURL string, drop ...string) string {
	t.Helper()
	bin := findCaddy(t)
	host := func(u string) string { return strings.TrimPrefix(u, "http://") }
	var lastErr error
	for range 3 { // a free port can be taken between choosing and binding it
		dir := t.TempDir()
		listen := freePort(t)
		_, port, _ := net.SplitHostPort(listen)
		conf := filepath.Join(dir, "Caddyfile")
		if err := os.WriteFile(conf, []byte(caddyConfig(t, host(sidecarURL), host(appURL), port, drop...)), 0o600); err != nil {
			t.Fatal(err)
		}
		args := []string{"--config", conf, "--adapter", "caddyfile"}
		// adapt, not validate: validate provisions the modules, which
		// would bind nothing but is slower; adapt is what says "not
		// formatted" (a warning users would see too).
		if out, err := testenv.CombinedOutput(caddyCommand(bin, dir, append([]string{"adapt"}, args...)...)); err != nil {
			t.Fatalf("caddy adapt rejects the example: %v\n%s", err, out)
		} else if len(drop) == 0 && bytes.Contains(out, []byte(`"level":"warn"`)) {
			t.Fatalf("caddy adapt warns about the example (run caddy fmt):\n%s", out)
		}
		cmd := caddyCommand(bin, dir, append([]string{"run"}, args...)...)
		logs := &testenv.Tail{}
		cmd.Stdout, cmd.Stderr = logs, logs
		p, err := testenv.Start(cmd)
		if err != nil {
			t.Fatal(err)
		}
		// A graceful stop, then whatever is left of the group, Caddy or
		// anything it started.
		stop := func() { _ = p.Stop(5 * time.Second) }
		if err := waitListening(listen, p.Done()); err != nil {
			stop()
			lastErr = fmt.Errorf("caddy did not start: %w (%w)\n%s", err, p.Err(), logs.String())
			if strings.Contains(lastErr.Error(), "address already in use") {
				continue
			}
			t.Fatal(lastErr)
		}
		t.Cleanup(func() {
			stop()
			if t.Failed() {
				t.Logf("caddy's log:\n%s", logs.String())
			}
		})
		return "http://" + listen
	}
	t.Fatal(lastErr)
	return ""
}

// authHeader matches every spelling of an X-Auth-* header that some app
// stack reads as one: any case, and "_" for "-" (CGI, FastCGI and WSGI
// turn both into HTTP_X_AUTH_…).
var authHeader = regexp.MustCompile(`(?i)^x[-_]auth[-_]`)

// forgedHeaders are identity headers a client adds to its request.
func forgedHeaders(h http.Header) http.Header {
	h = h.Clone()
	if h == nil {
		h = http.Header{}
	}
	for k, v := range map[string]string{
		"X-Auth-Subject": "admin", "X-Auth-Scope": "tokenwarden:admin", "X-Auth-Client-Id": "admin",
		"X-Auth-Token-Id": "forged", "X-Auth-Expires-At": "4102444800",
		// Not one of the sidecar's: copy_headers would leave it alone.
		"X-Auth-Role": "admin",
		// Other headers to Caddy (and to Go), the same to a CGI app.
		"X_Auth_Subject": "admin", "X-Auth_Subject": "admin", "X_auth-subject": "admin", "X_AUTH_ROLE": "admin",
	} {
		h[k] = []string{v} // as given: the spelling is the point
	}
	return h
}

// identityOf returns the X-Auth-* headers (every spelling, see authHeader)
// the app received, by name as received.
func identityOf(app *seen) map[string][]string {
	out := map[string][]string{}
	for k, v := range app.Headers {
		if authHeader.MatchString(k) {
			out[k] = v
		}
	}
	return out
}

// TestCaddyForwardAuth runs examples/caddy/Caddyfile in a real Caddy in
// front of an echo app, with a real sidecar fed by a real issuer over NATS.
func TestCaddyForwardAuth(t *testing.T) {
	s := newSystem(t)
	sc := s.sidecar()
	var hits atomic.Int64
	app := echoApp(t, &hits)
	cdy := startCaddy(t, sc, app)

	full := s.login("read write")
	readOnly := s.login("read")
	service := s.token("service", "service-secret", map[string][]string{"grant_type": {"client_credentials"}})
	other := s.token("other", "other-secret", map[string][]string{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}})

	// identity asserts the app got exactly the sidecar's five headers for
	// tok, and no other spelling of any X-Auth-* header.
	identity := func(t *testing.T, r nginxResult, tok string) {
		t.Helper()
		if r.status != 200 || r.app == nil {
			t.Fatalf("status %d, app answered: %v", r.status, r.app != nil)
		}
		c := claims(t, tok)
		want := map[string][]string{
			"X-Auth-Subject": {c["sub"].(string)}, "X-Auth-Client-Id": {c["client_id"].(string)}, "X-Auth-Scope": {c["scope"].(string)},
			"X-Auth-Token-Id": {c["jti"].(string)}, "X-Auth-Expires-At": {fmt.Sprint(int64(c["exp"].(float64)))},
		}
		got := identityOf(r.app)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("app got identity headers\n %v\nwant\n %v", got, want)
		}
	}

	t.Run("valid token reaches the app with its identity", func(t *testing.T) {
		r := do(t, "GET", cdy+"/api/items?page=2", bearer(full), "")
		identity(t, r, full)
		if r.app.URI != "/api/items?page=2" || r.app.Method != "GET" {
			t.Errorf("app got %s %s", r.app.Method, r.app.URI)
		}
	})

	// forward_auth asks the sidecar with a GET and no body, and keeps the
	// body for the app.
	checkDenials(t, cdy, &hits, full, readOnly, other)

	t.Run("client-supplied X-Auth headers never reach the app", func(t *testing.T) {
		for _, tok := range []string{service, full} {
			identity(t, do(t, "GET", cdy+"/", forgedHeaders(bearer(tok)), ""), tok)
			identity(t, do(t, "PUT", cdy+"/orders/1", forgedHeaders(bearer(full)), "x"), full)
		}
		// Without a token, the forged identity is refused outright.
		before := hits.Load()
		refused(t, do(t, "GET", cdy+"/", forgedHeaders(nil), ""), 401)
		if hits.Load() != before {
			t.Fatal("the app was called")
		}
	})

	t.Run("scope policy comes from the config, not the client", func(t *testing.T) {
		h := bearer(readOnly)
		h["X-Required-Scope"] = []string{"write"} // the client cannot change the requirement...
		if r := do(t, "GET", cdy+"/", h, ""); r.status != 200 {
			t.Fatalf("status %d", r.status)
		}
		// ...nor escape it through the query or by spelling the path
		// differently: Caddy matches paths decoded, cleaned and without
		// regard to case.
		for _, p := range []string{"/orders", "/orders?x=1", "/orders;/1", "/orders/?scope=", "/orders/x?scope=&scope=read", "/%6Frders/new", "/x/../orders/new",
			"//orders//new", "/ORDERS/new", "/healthz/../orders/new", "/x/..%2Forders/new"} {
			refused(t, do(t, "GET", cdy+p, bearer(readOnly), ""), 403, `error="insufficient_scope"`)
		}
	})

	t.Run("unprotected location", func(t *testing.T) {
		if r := do(t, "GET", cdy+"/healthz", nil, ""); r.status != 200 || r.app == nil || r.app.URI != "/healthz" {
			t.Fatalf("status %d, app saw %+v", r.status, r.app)
		}
		// Only that path: any other spelling that Caddy does not take
		// for /healthz needs a token; one it does reaches the app as
		// /healthz.
		before := hits.Load()
		for _, p := range []string{"/healthz/", "/healthz/x", "/healthz/../api", "/healthzz", "/healthz%2F..%2Fapi"} {
			refused(t, do(t, "GET", cdy+p, nil, ""), 401)
		}
		if hits.Load() != before {
			t.Fatal("the app was called")
		}
		for _, p := range []string{"/api/../healthz", "/api/..%2Fhealthz", "/HEALTHZ"} {
			if r := do(t, "GET", cdy+p, nil, ""); r.status == 200 && (r.app == nil || r.app.URI != "/healthz") {
				t.Errorf("%s: status %d, app saw %+v", p, r.status, r.app)
			}
		}
	})

	t.Run("sidecar down is 502 and never the app", func(t *testing.T) {
		dead := "http://" + freePort(t) // nothing listens there
		before := hits.Load()
		down := startCaddy(t, dead, app)
		r := do(t, "GET", down+"/", bearer(full), "")
		if r.status != 502 || r.app != nil || hits.Load() != before {
			t.Fatalf("status %d, app called %v", r.status, hits.Load() != before)
		}
		if r.header.Get("WWW-Authenticate") != "" {
			t.Fatalf("headers %v", r.header)
		}
	})

	t.Run("sidecar that never answers is 504 and never the app", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		// Accepts connections and reads, never answers: Caddy gives up
		// after the example's response_header_timeout.
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				// Until Caddy, stopped with the subtest, hangs up.
				go func() { _, _ = io.Copy(io.Discard, c); _ = c.Close() }()
			}
		}()
		before := hits.Load()
		hung := startCaddy(t, "http://"+ln.Addr().String(), app)
		r := do(t, "GET", hung+"/", bearer(full), "")
		_ = ln.Close()
		if r.status != 504 || r.app != nil || hits.Load() != before {
			t.Fatalf("status %d, app called %v", r.status, hits.Load() != before)
		}
	})

	t.Run("control: without the request_header lines forged headers pass", func(t *testing.T) {
		// What the four request_header lines protect from, shown on this
		// Caddy: the same example without them lets a client's headers
		// through that copy_headers does not override. Should this fail
		// after a Caddy upgrade, Caddy strips them itself; keep the lines
		// for the Caddy versions users still run.
		open := startCaddy(t, sc, app, "request_header -X-Auth-*", "request_header -X-Auth_*",
			"request_header -X_auth-*", "request_header -X_auth_*")
		r := do(t, "GET", open+"/", forgedHeaders(bearer(full)), "")
		if r.status != 200 || r.app == nil {
			t.Fatalf("status %d", r.status)
		}
		got := identityOf(r.app)
		var forged []string
		for k, v := range got {
			if strings.Contains(strings.Join(v, ","), "admin") {
				forged = append(forged, k)
			}
		}
		if len(forged) == 0 {
			t.Fatalf("no forged header reached the app without request_header: %v", got)
		}
		t.Logf("without request_header the app gets the client's %v", forged)
	})
}
