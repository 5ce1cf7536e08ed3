package directory

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// testParams are cheap argon2id parameters, so tests hash in microseconds.
var testParams = Params{Memory: 64, Time: 1, Threads: 1}

// mustHash hashes pw with testParams.
func mustHash(t testing.TB, pw string) string {
	t.Helper()
	h, err := HashPassword([]byte(pw), testParams)
	if err != nil {
		t.Fatalf("HashPassword: %v", err)
	}
	return h
}

// writeFile writes content to name in dir and returns the path.
func writeFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	// Write and rename, as editors and kubelet do, so a concurrent reader
	// never sees a half-written file.
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) count(substr string) int {
	return strings.Count(s.String(), substr)
}

// usersYAML renders a users file with one user per name, each with password
// name+"-password".
func usersYAML(t testing.TB, names ...string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("users:\n")
	for _, n := range names {
		b.WriteString("  - username: " + n + "\n    password_hash: \"" + mustHash(t, n+"-password") + "\"\n")
	}
	return b.String()
}

// clientsYAML renders a clients file with one client per id, each with
// secret id+"-secret" and grant client_credentials.
func clientsYAML(t testing.TB, ids ...string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("clients:\n")
	for _, id := range ids {
		b.WriteString("  - id: " + id + "\n    secret_hash: \"" + mustHash(t, id+"-secret") + "\"\n    grants: [client_credentials]\n")
	}
	return b.String()
}
