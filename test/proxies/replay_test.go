package proxies

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// authHeaders are the identity headers a proxy copies upstream on 200.
var authHeaders = []string{"X-Auth-Subject", "X-Auth-Client-Id", "X-Auth-Scope", "X-Auth-Token-Id", "X-Auth-Expires-At"}

// rawRequest sends the request bytes as written (header case, order and
// all) to addr and reads one response.
func rawRequest(t *testing.T, addr, raw string) *http.Response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(strings.Fields(raw)[0], "http://"+addr, nil) // for HEAD: no body to read
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp
}

// checkVerdict asserts a sidecar answer: on 200 every identity header once,
// with the token's subject; otherwise the RFC 6750 challenge.
func checkVerdict(t *testing.T, resp *http.Response, status int, subject string, www ...string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d (WWW-Authenticate %q)", resp.StatusCode, status, resp.Header.Get("WWW-Authenticate"))
	}
	if status == 200 {
		for _, h := range authHeaders {
			if len(resp.Header.Values(h)) != 1 {
				t.Errorf("%s: %q, want exactly one", h, resp.Header.Values(h))
			}
		}
		if got := resp.Header.Get("X-Auth-Subject"); got != subject {
			t.Errorf("X-Auth-Subject %q, want %q", got, subject)
		}
		return
	}
	for _, h := range authHeaders {
		if resp.Header.Get(h) != "" {
			t.Errorf("refusal carries %s", h)
		}
	}
	got := resp.Header.Values("WWW-Authenticate")
	if len(got) != 1 {
		t.Fatalf("WWW-Authenticate %q, want exactly one", got)
	}
	for _, w := range append([]string{`Bearer realm="tokenwarden"`}, www...) {
		if !strings.Contains(got[0], w) {
			t.Errorf("WWW-Authenticate %q lacks %q", got[0], w)
		}
	}
}

// loadYAML reads an example configuration.
func loadYAML(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

// dig walks maps (string keys) and lists (int indexes, or a
// [2]string{key, value} selecting the element whose key has value).
func dig(t *testing.T, v any, path ...any) any {
	t.Helper()
	for i, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok || m[k] == nil {
				t.Fatalf("config: no %q at %v", k, path[:i+1])
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				t.Fatalf("config: no element %d at %v", k, path[:i+1])
			}
			v = l[k]
		case [2]string:
			l, ok := v.([]any)
			if !ok {
				t.Fatalf("config: not a list at %v", path[:i])
			}
			var found any
			for _, e := range l {
				if m, ok := e.(map[string]any); ok && fmt.Sprint(m[k[0]]) == k[1] {
					found = e
				}
			}
			if found == nil {
				t.Fatalf("config: no element with %s=%s at %v", k[0], k[1], path[:i+1])
			}
			v = found
		}
	}
	return v
}

// strs is a YAML list of strings.
func strs(t *testing.T, v any) []string {
	t.Helper()
	l, ok := v.([]any)
	if !ok {
		t.Fatalf("config: %v is not a list", v)
	}
	out := make([]string, 0, len(l))
	for _, e := range l {
		out = append(out, fmt.Sprint(e))
	}
	return out
}
