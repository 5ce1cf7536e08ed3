package directory

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitFor polls cond until it holds or a generous deadline passes; it asserts
// the outcome, never how long it took.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func newTestWatcher(t *testing.T, users, clients string, opts ...WatcherOption) (*Watcher, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	w, err := NewWatcher(users, clients, logger, opts...)
	if err != nil {
		t.Fatalf("NewWatcher: %v", err)
	}
	w.Current().shared.dummyParams = testParams // cheap dummy for Run's warm-up
	return w, logs
}

// runWatcher runs w.Run until the test ends.
func runWatcher(t *testing.T, w *Watcher) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestWatcherRunPicksUpRewrite(t *testing.T) {
	dir := t.TempDir()
	up := writeFile(t, dir, "users.yaml", usersYAML(t, "alice"))
	cp := writeFile(t, dir, "clients.yaml", clientsYAML(t, "app1"))
	var reloads atomic.Int32
	w, logs := newTestWatcher(t, up, cp, WithPollInterval(20*time.Millisecond),
		WithOnReload(func(d *Directory) { reloads.Add(1) }))
	first := w.Current()
	runWatcher(t, w)

	writeFile(t, dir, "users.yaml", usersYAML(t, "alice", "bob"))
	waitFor(t, "bob to appear", func() bool { _, ok := w.Current().User("bob"); return ok })
	if _, err := w.Current().AuthenticateUser("bob", "bob-password"); err != nil {
		t.Fatalf("bob cannot log in after reload: %v", err)
	}
	if _, ok := first.User("bob"); ok {
		t.Fatal("the old snapshot changed; snapshots must be immutable")
	}
	waitFor(t, "the OnReload callback", func() bool { return reloads.Load() >= 1 })
	if !strings.Contains(logs.String(), "users and clients reloaded") {
		t.Errorf("no reload log line in %q", logs)
	}

	writeFile(t, dir, "clients.yaml", clientsYAML(t, "app2"))
	waitFor(t, "app2 to replace app1", func() bool {
		_, ok1 := w.Current().Client("app1")
		_, ok2 := w.Current().Client("app2")
		return !ok1 && ok2
	})
}

// TestWatcherConfigMapSwap mimics how the kubelet updates a mounted
// ConfigMap: the files are symlinks through ..data, which is atomically
// re-pointed at a new timestamped directory.
func TestWatcherConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	v1 := filepath.Join(dir, "..2025_01_01_v1")
	if err := os.Mkdir(v1, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, v1, "users.yaml", usersYAML(t, "alice"))
	writeFile(t, v1, "clients.yaml", "")
	mustSymlink(t, filepath.Base(v1), filepath.Join(dir, "..data"))
	mustSymlink(t, "..data/users.yaml", filepath.Join(dir, "users.yaml"))
	mustSymlink(t, "..data/clients.yaml", filepath.Join(dir, "clients.yaml"))

	w, _ := newTestWatcher(t, filepath.Join(dir, "users.yaml"), filepath.Join(dir, "clients.yaml"), WithPollInterval(20*time.Millisecond))
	runWatcher(t, w)

	v2 := filepath.Join(dir, "..2025_01_01_v2")
	if err := os.Mkdir(v2, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, v2, "users.yaml", usersYAML(t, "carol"))
	writeFile(t, v2, "clients.yaml", "")
	mustSymlink(t, filepath.Base(v2), filepath.Join(dir, "..data_tmp"))
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(v1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "carol from the swapped ConfigMap", func() bool {
		_, ok := w.Current().User("carol")
		return ok && w.Current().Users() == 1
	})
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func TestWatcherBadRewriteKeepsOld(t *testing.T) {
	dir := t.TempDir()
	up := writeFile(t, dir, "users.yaml", usersYAML(t, "alice"))
	cp := writeFile(t, dir, "clients.yaml", clientsYAML(t, "app1"))
	var reloads atomic.Int32
	w, logs := newTestWatcher(t, up, cp, WithOnReload(func(*Directory) { reloads.Add(1) }))
	old := w.Current()

	writeFile(t, dir, "clients.yaml", "clients:\n  - id: app1\n    secret_hash: s3cret-oops\n    grants: [client_credentials]\n")
	err := w.Reload()
	if err == nil {
		t.Fatal("Reload accepted a malformed hash")
	}
	if !strings.HasPrefix(err.Error(), cp+":2: client \"app1\": secret_hash: malformed argon2id hash") {
		t.Errorf("Reload error %q", err)
	}
	if w.Current() != old {
		t.Fatal("a bad file replaced the directory")
	}
	if reloads.Load() != 0 {
		t.Fatal("OnReload called for a failed reload")
	}
	out := logs.String()
	if strings.Count(out, "\n") != 1 || !strings.Contains(out, "level=ERROR") ||
		!strings.Contains(out, "file="+cp) || !strings.Contains(out, "line=2") {
		t.Errorf("want one Error line naming the file and line, got %q", out)
	}
	if strings.Contains(out, "s3cret-oops") || strings.Contains(err.Error(), "s3cret-oops") {
		t.Error("the bad hash value leaked into the log or error")
	}

	// Polling sees the same bad content repeatedly but reports it once.
	writeFile(t, dir, "users.yaml", "users: [oops\n")
	for range 3 {
		w.poll()
	}
	if n := logs.count("level=ERROR"); n != 2 {
		t.Errorf("%d error lines after repeated polls of one bad file; want 2 (one per distinct failure)", n)
	}
	if w.Current() != old {
		t.Fatal("a bad file replaced the directory")
	}

	// A missing file is reported once too, and the old directory kept.
	if err := os.Remove(up); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		w.poll()
	}
	if n := logs.count("level=ERROR"); n != 3 {
		t.Errorf("%d error lines; want 3", n)
	}
	if err := w.Reload(); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Reload with a missing file = %v", err)
	}

	// Fixing the files recovers.
	writeFile(t, dir, "users.yaml", usersYAML(t, "alice"))
	writeFile(t, dir, "clients.yaml", clientsYAML(t, "app1"))
	w.poll()
	if w.Current() == old || reloads.Load() != 1 {
		t.Fatal("fixed files were not loaded")
	}
}

func TestWatcherRunLogsBadRewrite(t *testing.T) {
	dir := t.TempDir()
	up := writeFile(t, dir, "users.yaml", usersYAML(t, "alice"))
	w, logs := newTestWatcher(t, up, "", WithPollInterval(20*time.Millisecond))
	old := w.Current()
	runWatcher(t, w)
	writeFile(t, dir, "users.yaml", usersYAML(t, "alice")+"    disable: true\n")
	waitFor(t, "the error to be logged", func() bool { return logs.count("level=ERROR") == 1 })
	if w.Current() != old {
		t.Fatal("a bad file replaced the directory")
	}
	if !strings.Contains(logs.String(), "field disable not found") {
		t.Errorf("log does not say what is wrong: %q", logs)
	}
}

func TestNewWatcherErrors(t *testing.T) {
	dir := t.TempDir()
	up := writeFile(t, dir, "users.yaml", usersYAML(t, "alice")+"  - username: alice\n    password_hash: x\n")
	_, err := NewWatcher(up, "", nil)
	if err == nil || !strings.HasPrefix(err.Error(), up+":4: user \"alice\":") {
		t.Errorf("NewWatcher error %v; want it to name the file, line and entry", err)
	}
	_, err = NewWatcher("", filepath.Join(dir, "missing.yaml"), nil)
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("NewWatcher(missing) = %v", err)
	}
	w, err := NewWatcher("", "", nil) // nothing to load is fine; a nil logger discards
	if err != nil || w.Current() == nil || w.Reload() != nil {
		t.Errorf("NewWatcher with no files: %v", err)
	}
}

// TestWatcherCacheSurvivesReload checks that a reload shares the verification
// cache: an unchanged client stays cached, so a reload is no throughput cliff.
func TestWatcherCacheSurvivesReload(t *testing.T) {
	dir := t.TempDir()
	clients := clientsYAML(t, "app1")
	cp := writeFile(t, dir, "clients.yaml", clients)
	up := writeFile(t, dir, "users.yaml", "")
	w, _ := newTestWatcher(t, up, cp)
	if _, err := w.Current().AuthenticateClient("app1", "app1-secret"); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "users.yaml", usersYAML(t, "alice"))
	if err := w.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Current().AuthenticateClient("app1", "app1-secret"); err != nil {
		t.Fatal(err)
	}
	if n := w.Current().shared.argonCalls.Load(); n != 1 {
		t.Fatalf("%d argon2id verifications; want 1 (cache kept across reload)", n)
	}
}

func TestWatcherReloadConcurrentWithCurrent(t *testing.T) {
	dir := t.TempDir()
	up := writeFile(t, dir, "users.yaml", usersYAML(t, "alice"))
	cp := writeFile(t, dir, "clients.yaml", clientsYAML(t, "app1"))
	w, _ := newTestWatcher(t, up, cp, WithPollInterval(time.Millisecond))
	runWatcher(t, w) // polling reloads race with explicit ones too

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for ctx.Err() == nil {
				d := w.Current()
				if d == nil {
					t.Error("Current returned nil")
					return
				}
				if _, ok := d.User("alice"); !ok {
					t.Error("alice missing from a snapshot")
					return
				}
				if _, err := d.AuthenticateClient("app1", "app1-secret"); err != nil {
					t.Errorf("AuthenticateClient: %v", err)
					return
				}
			}
		})
	}
	users := []string{usersYAML(t, "alice"), usersYAML(t, "alice", "bob")}
	for i := range 50 {
		writeFile(t, dir, "users.yaml", users[i%2])
		if i%5 == 0 {
			writeFile(t, dir, "clients.yaml", clientsYAML(t, "app1", "app2"))
		}
		if err := w.Reload(); err != nil {
			t.Errorf("Reload: %v", err)
		}
	}
	cancel()
	wg.Wait()
}
