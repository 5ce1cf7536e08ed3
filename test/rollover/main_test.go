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
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

// Binaries built once for the package.
var (
	twBin   string
	natsBin string
)

func TestMain(m *testing.M) {
	// Built once; a killed run takes its processes with it (see testenv.Guard).
	testenv.MainWithPrograms(m, "", &twBin, &natsBin)
}

// proc is one program of the deployment (testenv.Proc: its own process
// group, killed with the test binary and when the test ends). Every start
// reads envFile (if set), the way systemd's EnvironmentFile= does, so the
// procedure changes a program's distribution-key settings by rewriting that
// file and restarting it.
type proc struct {
	*testenv.Proc
	name string
	url  string // its HTTP base, "" for nats-server

	mu      sync.Mutex
	fileEnv []string // what envFile held at the current start
	up      bool     // ready and taking load (the harness's view, like a Service's endpoints)
}

func newProc(t *testing.T, name, bin, url string, env []string, envFile string, args ...string) *proc {
	p := &proc{name: name, url: url}
	p.Proc = testenv.NewProc(t, name, 512<<10, func() (*exec.Cmd, error) {
		var fileEnv []string
		if envFile != "" {
			var err error
			if fileEnv, err = readEnvFile(envFile); err != nil {
				return nil, err
			}
		}
		cmd := exec.Command(bin, args...)
		cmd.Env = append(append(append([]string{}, os.Environ()...), env...), fileEnv...)
		p.mu.Lock()
		p.fileEnv = fileEnv
		p.mu.Unlock()
		return cmd, nil
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
	if err := p.Start(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_, _ = fmt.Fprintf(p.Out, "=== with %q\n", p.fileEnv)
	return nil
}

// stop sends SIGTERM and waits for the exit, killing the group after 20s.
func (p *proc) stop() error { return p.Stop(20 * time.Second) }

// state is whether the process takes load, and its incarnation.
func (p *proc) state() (up bool, incarnation int) {
	p.mu.Lock()
	up = p.up
	p.mu.Unlock()
	return up && p.Alive(), p.Incarnation()
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
