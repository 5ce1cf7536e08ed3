package testenv

// The child processes of the suites that run the real programs (test/chaos,
// test/rollover, test/e2e, test/proxies, test/soak). Every child runs in a
// process group of its own, so that one signal reaches whatever it started
// and a Ctrl-C of the terminal reaches the test binary, not the child,
// before the cleanup does. On Linux the kernel also kills it when the test
// binary dies (Pdeathsig), and Guard has the test binary die with the go
// command that started it: a killed run (CI timeout, Ctrl-C) leaves no
// nats-server, issuer or sidecar behind.
//
// The caveat of Pdeathsig: the kernel sends it when the parent *thread*
// exits, not the parent process. The Go runtime ends a thread only when a
// goroutine that called runtime.LockOSThread returns without unlocking it;
// nothing that starts processes here does that, and neither does the go
// command, so in practice the signal comes when the process dies.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// groups holds the process groups Start made that may still have members.
// It is the one piece of package-level state here, on purpose: signals
// and process death are process-wide, so the set of groups a SIGINT must
// reach is too, whichever test or tool started them.
var groups = struct {
	sync.Mutex
	m map[int]struct{}
}{m: map[int]struct{}{}}

// KillAll sends SIGKILL (and SIGCONT, for a stopped one) to every process
// group Start made that is still registered, and returns how many.
func KillAll() int {
	groups.Lock()
	defer groups.Unlock()
	for pgid := range groups.m {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		_ = syscall.Kill(-pgid, syscall.SIGCONT)
	}
	return len(groups.m)
}

// Guard prepares a test binary (call it first in TestMain) whose tests
// start processes. It dies with its parent (the go command: a SIGKILL of go
// test would otherwise orphan it, and its children with it; Linux only),
// and on SIGINT or SIGTERM it kills every process group Start made before
// it dies of that signal: t.Cleanup does not run then. release, after
// m.Run, stops the signal handling and kills whatever is left.
func Guard() (release func()) {
	if err := DieWithParent(); err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case sig := <-sigs:
			n := KillAll()
			fmt.Fprintf(os.Stderr, "testenv: %v: killed %d process groups\n", sig, n)
			// Die of the signal, as the process would have without
			// the handler, so that the caller sees what happened.
			signal.Reset(sig)
			if s, ok := sig.(syscall.Signal); ok {
				_ = syscall.Kill(os.Getpid(), s)
			}
			time.Sleep(time.Second)
			os.Exit(1)
		case <-stop:
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			signal.Stop(sigs)
			close(stop)
			<-done
			KillAll()
		})
	}
}

// DieWithParent has the kernel kill this process (SIGKILL) when its
// parent dies, on Linux; elsewhere it does nothing. For a tool run by go
// run, which handles its signals itself; Guard calls it for test binaries.
func DieWithParent() error { return dieWithParent() }

// Main is the TestMain of a package whose tests start processes and need
// nothing else before m.Run: Guard, m.Run, exit.
func Main(m *testing.M) {
	release := Guard()
	code := m.Run()
	release()
	os.Exit(code)
}

// MainWithPrograms is Main for a package whose tests run the tokenwarden
// command and nats-server as processes: it builds both once, into a
// temporary directory (into its subdirectory sub, if sub is not ""), sets
// *tokenwarden and *natsServer to their paths before m.Run, and removes
// them after.
func MainWithPrograms(m *testing.M, sub string, tokenwarden, natsServer *string) {
	release := Guard()
	code := runWithPrograms(m, sub, tokenwarden, natsServer)
	release()
	os.Exit(code)
}

func runWithPrograms(m *testing.M, sub string, tokenwarden, natsServer *string) int {
	dir, err := os.MkdirTemp("", "tokenwarden-programs")
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	if *tokenwarden, *natsServer, err = BuildPrograms(filepath.Join(dir, sub)); err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	return m.Run()
}

// Process is a started child in a process group of its own.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // the exit error, set before done is closed
}

// Start starts cmd in a process group of its own that dies with this
// process (see the file comment), and waits for it in the background:
// do not call cmd.Wait. Its whole group is killed once it exits, so
// nothing it started outlives it. A cmd made by exec.CommandContext has
// its group killed when the context ends.
func Start(cmd *exec.Cmd) (*Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	setDeathSignal(cmd.SysProcAttr)
	if cmd.Cancel != nil {
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	}
	if cmd.WaitDelay == 0 {
		// Something the child started may hold its output open after it
		// exited: Wait would wait for that, and the group would not be
		// killed. A second is enough for the last of its own output.
		cmd.WaitDelay = time.Second
	}
	// Registered under the lock KillAll takes, so that a SIGINT between
	// the fork and the registration cannot miss the group.
	groups.Lock()
	err := cmd.Start()
	if err == nil {
		groups.m[cmd.Process.Pid] = struct{}{}
	}
	groups.Unlock()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		pgid := cmd.Process.Pid
		groups.Lock()
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		delete(groups.m, pgid)
		groups.Unlock()
		p.err = err
		close(p.done)
	}()
	return p, nil
}

// CombinedOutput runs cmd as Start does and returns what it wrote to
// stdout and stderr.
func CombinedOutput(cmd *exec.Cmd) ([]byte, error) {
	if cmd.Stdout != nil || cmd.Stderr != nil {
		return nil, errors.New("testenv: CombinedOutput: Stdout or Stderr already set")
	}
	var out Tail // unbounded: max 0
	cmd.Stdout, cmd.Stderr = &out, &out
	p, err := Start(cmd)
	if err != nil {
		return nil, err
	}
	<-p.done
	return []byte(out.String()), p.err
}

// Pid is the process id, which is also its process group id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is how the process exited (nil for status 0); nil while it runs.
func (p *Process) Err() error {
	if !p.Exited() {
		return nil
	}
	return p.err
}

// Signal sends sig to the process group.
func (p *Process) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return errors.New("process has exited")
	}
	if err := syscall.Kill(-p.Pid(), sig); err != nil {
		return fmt.Errorf("signal %v to group %d: %w", sig, p.Pid(), err)
	}
	return nil
}

// Wait waits up to within for the process to exit; Err says how it did.
func (p *Process) Wait(within time.Duration) error {
	t := time.NewTimer(within)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		return fmt.Errorf("pid %d did not exit within %s", p.Pid(), within)
	}
}

// Stop sends SIGTERM to the group and waits up to within, then kills it.
// It returns an error only when the process had to be killed; Err says how
// it exited.
func (p *Process) Stop(within time.Duration) error {
	if p.Exited() {
		return nil
	}
	_ = p.Signal(syscall.SIGTERM)
	if err := p.Wait(within); err != nil {
		p.Kill()
		return fmt.Errorf("SIGTERM: %w", err)
	}
	return nil
}

// Kill sends SIGKILL (and SIGCONT, for a stopped one) to the group and
// waits for the process to exit.
func (p *Process) Kill() {
	if p.Exited() {
		return
	}
	_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
	_ = syscall.Kill(-p.Pid(), syscall.SIGCONT)
	_ = p.Wait(10 * time.Second)
}

// Tail keeps the last Max bytes written to it (all of them when Max is 0):
// a process's output for failure messages, bounded for a long run's logs.
type Tail struct {
	Max int

	mu sync.Mutex
	b  []byte
}

func (l *Tail) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	if over := len(l.b) - l.Max; l.Max > 0 && over > 0 {
		l.b = append(l.b[:0], l.b[over:]...)
	}
	return len(p), nil
}

func (l *Tail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

// Proc is a program a test starts, and may stop and start again: each
// start is an incarnation, made by the command function (which may read
// files that changed since the last one). All incarnations write to Out.
// It is killed, whatever its state, when the test ends, and Out is logged
// if the test failed.
type Proc struct {
	Name string
	Out  *Tail

	command func() (*exec.Cmd, error)

	mu          sync.Mutex
	cur         *Process
	starting    bool
	incarnation int
	startedAt   time.Time
}

// NewProc returns a Proc that is not started yet; outMax bounds Out (see
// Tail).
func NewProc(t testing.TB, name string, outMax int, command func() (*exec.Cmd, error)) *Proc {
	p := &Proc{Name: name, Out: &Tail{Max: outMax}, command: command}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("%s (incarnation %d) last output:\n%s", p.Name, p.Incarnation(), p.Out.String())
		}
	})
	return p
}

// Command is the command function of a program with fixed arguments and
// extra environment.
func Command(bin string, env []string, args ...string) func() (*exec.Cmd, error) {
	return func() (*exec.Cmd, error) {
		cmd := exec.Command(bin, args...) // #nosec G204 -- tests name their own programs
		cmd.Env = append(os.Environ(), env...)
		return cmd, nil
	}
}

// Start starts the next incarnation. The command function runs without
// the Proc's lock held, so it may use the caller's own locks.
func (p *Proc) Start() error {
	p.mu.Lock()
	if p.starting || (p.cur != nil && !p.cur.Exited()) {
		p.mu.Unlock()
		return fmt.Errorf("%s is still running", p.Name)
	}
	p.starting = true
	next := p.incarnation + 1
	p.mu.Unlock()
	cur, err := p.startCommand(next)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.starting = false
	if err != nil {
		return fmt.Errorf("%s: %w", p.Name, err)
	}
	p.cur, p.startedAt, p.incarnation = cur, time.Now(), next
	return nil
}

func (p *Proc) startCommand(incarnation int) (*Process, error) {
	cmd, err := p.command()
	if err != nil {
		return nil, err
	}
	if cmd.Stdout == nil && cmd.Stderr == nil {
		cmd.Stdout, cmd.Stderr = p.Out, p.Out
	}
	_, _ = fmt.Fprintf(p.Out, "\n=== start %s (incarnation %d)\n", p.Name, incarnation)
	return Start(cmd)
}

func (p *Proc) current() *Process {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur
}

// Alive reports whether the current incarnation runs (perhaps stopped).
func (p *Proc) Alive() bool {
	cur := p.current()
	return cur != nil && !cur.Exited()
}

// Crashed returns how the current incarnation ended, if it did.
func (p *Proc) Crashed() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur != nil && p.cur.Exited() {
		return fmt.Errorf("%s (incarnation %d) exited: %w", p.Name, p.incarnation, p.cur.err)
	}
	return nil
}

// Started is when the current incarnation started.
func (p *Proc) Started() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.startedAt
}

// Incarnation is the number of starts so far.
func (p *Proc) Incarnation() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.incarnation
}

// Process is the current incarnation (nil before the first start).
func (p *Proc) Process() *Process { return p.current() }

// Signal sends sig to the current incarnation's group.
func (p *Proc) Signal(sig syscall.Signal) error {
	cur := p.current()
	if cur == nil {
		return fmt.Errorf("%s is not running", p.Name)
	}
	if err := cur.Signal(sig); err != nil {
		return fmt.Errorf("%s: %w", p.Name, err)
	}
	return nil
}

// Wait waits up to within for the current incarnation to exit.
func (p *Proc) Wait(within time.Duration) error {
	cur := p.current()
	if cur == nil {
		return nil
	}
	if err := cur.Wait(within); err != nil {
		return fmt.Errorf("%s: %w", p.Name, err)
	}
	return nil
}

// Stop is Process.Stop of the current incarnation.
func (p *Proc) Stop(within time.Duration) error {
	cur := p.current()
	if cur == nil {
		return nil
	}
	if err := cur.Stop(within); err != nil {
		return fmt.Errorf("%s: %w", p.Name, err)
	}
	return nil
}

// Kill kills the current incarnation, whatever its state, and waits.
func (p *Proc) Kill() {
	if cur := p.current(); cur != nil {
		cur.Kill()
	}
}

// BuildPrograms builds the tokenwarden command and nats-server (the
// version go.mod pins) into dir, for the suites that run them as
// processes, and returns their paths.
func BuildPrograms(dir string) (tokenwarden, natsServer string, err error) {
	tokenwarden, natsServer = filepath.Join(dir, "tokenwarden"), filepath.Join(dir, "nats-server")
	for _, b := range []struct{ out, pkg string }{
		{tokenwarden, "github.com/tokenwarden/tokenwarden/cmd/tokenwarden"},
		{natsServer, "github.com/nats-io/nats-server/v2"},
	} {
		cmd := exec.Command("go", "build", "-o", b.out, b.pkg) // #nosec G204 -- fixed packages, the caller's directory
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return "", "", fmt.Errorf("go build %s: %w", b.pkg, err)
		}
	}
	return tokenwarden, natsServer, nil
}
