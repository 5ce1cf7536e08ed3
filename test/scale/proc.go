package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// children tracks every process the tool starts, so that all of them die
// with it: each runs in a process group of its own (a kill reaches
// whatever it started, and a Ctrl-C in the terminal reaches the tool
// first, which then kills them in order), and each is started with
// Pdeathsig SIGKILL, so the kernel kills it when the tool dies however it
// dies (kill -9 included). Pdeathsig fires when the thread that forked
// exits; the Go runtime only ends threads locked with LockOSThread, which
// this tool never uses.
type children struct {
	mu    sync.Mutex
	procs map[*child]struct{}
}

func newChildren() *children { return &children{procs: map[*child]struct{}{}} }

// child is one process started by the tool; its output goes to a log file
// unless the caller takes stdout.
type child struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // set before done is closed
}

type startSpec struct {
	name string
	bin  string
	args []string
	env  []string
	dir  string // log file directory
	// stdin and stdout, when set, are the child's ends of pipes: passed
	// as files, so that Wait never waits on a copy, and closed here once
	// the child holds them. stderr always goes to the log file.
	stdin, stdout *os.File
}

func (cs *children) start(s startSpec) (*child, error) {
	logPath := filepath.Join(s.dir, s.name+".log")
	// Appended to: a restarted process keeps the log of its earlier life.
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600) // #nosec G304 -- a file in the run's own directory
	if err != nil {
		return nil, fmt.Errorf("log file of %s: %w", s.name, err)
	}
	cmd := exec.Command(s.bin, s.args...) // #nosec G204 -- binaries this tool built or was given
	cmd.Env = append(os.Environ(), s.env...)
	cmd.Stdout, cmd.Stderr = f, f
	if s.stdin != nil {
		cmd.Stdin = s.stdin
	}
	if s.stdout != nil {
		cmd.Stdout = s.stdout
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	for _, p := range []*os.File{s.stdin, s.stdout} {
		if p != nil {
			_ = p.Close()
		}
	}
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("start %s: %w", s.name, err)
	}
	c := &child{name: s.name, cmd: cmd, log: logPath, done: make(chan struct{})}
	cs.mu.Lock()
	cs.procs[c] = struct{}{}
	cs.mu.Unlock()
	go func() {
		c.err = cmd.Wait()
		_ = f.Close()
		close(c.done)
		cs.mu.Lock()
		delete(cs.procs, c)
		cs.mu.Unlock()
	}()
	return c, nil
}

// killAll kills every live child's process group and waits for them.
func (cs *children) killAll() {
	cs.mu.Lock()
	all := make([]*child, 0, len(cs.procs))
	for c := range cs.procs {
		all = append(all, c)
	}
	cs.mu.Unlock()
	for _, c := range all {
		c.kill()
	}
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL to the child's process group and waits for it.
func (c *child) kill() {
	if c.exited() {
		return
	}
	_ = syscall.Kill(-c.pid(), syscall.SIGKILL)
	<-c.done
}

// stop sends SIGTERM to the group, and SIGKILL after within.
func (c *child) stop(within time.Duration) {
	if c.exited() {
		return
	}
	_ = syscall.Kill(-c.pid(), syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(within):
		c.kill()
	}
}

// tail returns the last n lines of the child's log, for error reports.
func (c *child) tail(n int) string {
	b, err := os.ReadFile(c.log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// ---- /proc readings ----

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat:
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// cpuTime is the CPU time (user + system) a process has used so far.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("cpu time of %d: %w", pid, err)
	}
	// The command name, in parentheses, may hold spaces: fields count
	// from the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("cpu time: malformed /proc stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, errors.New("cpu time: short /proc stat")
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("cpu time of %d: %w", pid, err)
	}
	return time.Duration(u+st) * time.Second / clockTicks, nil
}

// rssBytes reads a process's resident set size (VmRSS).
func rssBytes(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, fmt.Errorf("rss of %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("rss of %d: %w", pid, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("rss of %d: no VmRSS", pid)
}

// cpuOf sums the CPU time of several processes; a process that has gone
// counts nothing.
func cpuOf(pids []int) time.Duration {
	var sum time.Duration
	for _, p := range pids {
		if d, err := cpuTime(p); err == nil {
			sum += d
		}
	}
	return sum
}

// cpuMeter measures the CPU a set of processes uses over a window.
type cpuMeter struct {
	pids  func() []int
	start time.Time
	cpu   time.Duration
}

func startCPU(pids func() []int) *cpuMeter {
	return &cpuMeter{pids: pids, start: time.Now(), cpu: cpuOf(pids())}
}

// stop returns the CPU used since start and the wall time elapsed.
func (m *cpuMeter) stop() (cpu, wall time.Duration) {
	return cpuOf(m.pids()) - m.cpu, time.Since(m.start)
}
