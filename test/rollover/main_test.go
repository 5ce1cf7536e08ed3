// Package rollover runs the distribution-key rollover of docs/operations.md
// ("Rolling over the distribution key") verbatim against a deployment of
// separate processes on 127.0.0.1 (a nats-server with JetStream, two
// issuers, three sidecars) under load, and keeps a ledger: valid tokens
// refused, revocations lost, forged bundles and events accepted. Each must be
// 0.
//
// ROLLOVER_HOLD (a duration, default 1s) is how long the load runs after each
// process restart and around the procedure; a longer hold (say 30s) makes the
// long variant.
package rollover

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"testing"
)

// Binaries built once for the package.
var (
	twBin   string
	natsBin string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tokenwarden-rollover")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	twBin, natsBin = filepath.Join(dir, "tokenwarden"), filepath.Join(dir, "nats-server")
	for _, b := range []struct{ out, pkg string }{{twBin, "github.com/tokenwarden/tokenwarden/cmd/tokenwarden"}, {natsBin, "github.com/nats-io/nats-server/v2"}} {
		cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "rollover: build", b.pkg, err)
			_ = os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// tailBuffer keeps the last max bytes a process wrote, for failure messages.
type tailBuffer struct {
	mu  sync.Mutex
	b   []byte
	max int
}

func (l *tailBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	if over := len(l.b) - l.max; over > 0 {
		l.b = append(l.b[:0], l.b[over:]...)
	}
	return len(p), nil
}

func (l *tailBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

// proc is one program of the deployment. Every start reads envFile (if
// set), the way systemd's EnvironmentFile= does, so the procedure changes a
// program's distribution-key settings by rewriting that file and
// restarting it.
type proc struct {
	name    string
	bin     string
	args    []string
	env     []string
	envFile string
	url     string // its HTTP base, "" for nats-server
	out     *tailBuffer

	mu          sync.Mutex
	cmd         *exec.Cmd
	done        chan struct{}
	incarnation int
	fileEnv     []string // what envFile held at the current start
	up          bool     // ready and taking load (the harness's view, like a Service's endpoints)
}

func newProc(t *testing.T, name, bin, url string, env []string, envFile string, args ...string) *proc {
	p := &proc{name: name, bin: bin, args: args, env: env, envFile: envFile, url: url, out: &tailBuffer{max: 512 << 10}}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s (incarnation %d) last output:\n%s", p.name, p.incarnationNo(), p.out.String())
		}
	})
	return p
}

// readEnvFile parses KEY=VALUE lines; blank lines and # comments are skipped.
func readEnvFile(path string) ([]string, error) {
	f, err := os.Open(path) // #nosec G304 -- the test's own file
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	var env []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !strings.Contains(line, "=") {
			return nil, fmt.Errorf("%s: %q is not KEY=VALUE", path, line)
		}
		env = append(env, line)
	}
	return env, sc.Err()
}

func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !p.exited() {
		return fmt.Errorf("%s is still running", p.name)
	}
	var fileEnv []string
	if p.envFile != "" {
		var err error
		if fileEnv, err = readEnvFile(p.envFile); err != nil {
			return err
		}
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(append(append([]string{}, os.Environ()...), p.env...), fileEnv...)
	cmd.Stdout, cmd.Stderr = p.out, p.out
	// Its own process group (the cleanup kills the group), and SIGKILL
	// when the test process dies without a cleanup (Linux).
	cmd.SysProcAttr = procAttr()
	_, _ = fmt.Fprintf(p.out, "\n=== rollover: start %s (incarnation %d) with %q\n", p.name, p.incarnation+1, fileEnv)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.fileEnv = cmd, done, fileEnv
	p.incarnation++
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	return nil
}

// exited reports whether the current incarnation ended; p.mu held.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits for the exit, killing the group after 20s.
func (p *proc) stop() error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return nil
	case <-time.After(20 * time.Second):
		p.kill()
		return fmt.Errorf("%s did not exit within 20s of SIGTERM", p.name)
	}
}

// kill is SIGKILL to the process group; it waits for the exit.
func (p *proc) kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
}

func (p *proc) incarnationNo() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.incarnation
}

// state is whether the process takes load, and its incarnation.
func (p *proc) state() (up bool, incarnation int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.up && !p.exited(), p.incarnation
}

func (p *proc) setUp(up bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.up = up
}

// envValue is the value of key in the environment file read at the current
// start.
func (p *proc) envValue(key string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, kv := range p.fileEnv {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			return v
		}
	}
	return ""
}
