package testenv

import (
	"bytes"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return i > 0 && i+2 < len(stat) && stat[i+2] != 'Z'
}

// gone waits a little for pid to die.
func gone(pid int) bool {
	for range 100 {
		if !alive(pid) {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// TestStartTakesTheGroupAlong: what a child started (here a shell's
// background sleep) dies with it, whether the child is killed or exits on
// its own, and is among what KillAll reaches.
func TestStartTakesTheGroupAlong(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	tests := []struct {
		name   string
		script string // prints the grandchild's pid
		end    func(p *Process)
	}{
		{"killed", "sleep 300 & echo $!; wait", func(p *Process) { p.Kill() }},
		{"stopped with SIGTERM", "sleep 300 & echo $!; wait", func(p *Process) { _ = p.Stop(10 * time.Second) }},
		{"exits on its own", "sleep 300 & echo $!", func(p *Process) { _ = p.Wait(10 * time.Second) }},
		{"KillAll", "sleep 300 & echo $!; wait", func(p *Process) {
			if n := KillAll(); n < 1 {
				t.Errorf("KillAll reached %d groups, want at least 1", n)
			}
			_ = p.Wait(10 * time.Second)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := &Tail{}
			cmd := exec.Command("sh", "-c", tt.script)
			cmd.Stdout = out
			p, err := Start(cmd)
			if err != nil {
				t.Fatal(err)
			}
			var grandchild int
			for range 200 {
				if s := strings.TrimSpace(out.String()); s != "" {
					if grandchild, err = strconv.Atoi(s); err != nil {
						t.Fatalf("the script printed %q", s)
					}
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if grandchild == 0 || !alive(grandchild) {
				t.Fatalf("no background sleep (pid %d)", grandchild)
			}
			t.Cleanup(func() { _ = syscall.Kill(grandchild, syscall.SIGKILL) })
			tt.end(p)
			if !p.Exited() {
				t.Fatal("the child still runs")
			}
			if !gone(grandchild) {
				t.Errorf("the child's background sleep (pid %d) outlived it", grandchild)
			}
		})
	}
}

// TestProcIncarnations: a Proc starts again after it stopped, counts its
// starts, says how the last one ended, and keeps the output of all.
func TestProcIncarnations(t *testing.T) {
	p := NewProc(t, "sleeper", 0, Command("sh", nil, "-c", "echo up; exec sleep 300"))
	if p.Alive() || p.Incarnation() != 0 {
		t.Fatalf("before the start: alive %v, incarnation %d", p.Alive(), p.Incarnation())
	}
	for i := 1; i <= 2; i++ {
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		if err := p.Start(); err == nil {
			t.Error("a second start of a running Proc succeeded")
		}
		for range 200 {
			if strings.Count(p.Out.String(), "up\n") == i {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if !p.Alive() || p.Incarnation() != i || p.Crashed() != nil {
			t.Fatalf("incarnation %d: alive %v, incarnation %d, crashed %v", i, p.Alive(), p.Incarnation(), p.Crashed())
		}
		if err := p.Stop(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		if p.Alive() || p.Crashed() == nil {
			t.Fatalf("after Stop: alive %v, crashed %v (want how it ended)", p.Alive(), p.Crashed())
		}
	}
	if got := strings.Count(p.Out.String(), "up\n"); got != 2 {
		t.Errorf("output of %d incarnations kept, want 2:\n%s", got, p.Out.String())
	}
}

// TestTail keeps the last Max bytes.
func TestTail(t *testing.T) {
	tests := []struct {
		max    int
		writes []string
		want   string
	}{
		{0, []string{"abc", "def"}, "abcdef"},
		{4, []string{"abc", "def"}, "cdef"},
		{4, []string{"abcdefgh"}, "efgh"},
	}
	for _, tt := range tests {
		l := &Tail{Max: tt.max}
		for _, w := range tt.writes {
			if n, err := l.Write([]byte(w)); n != len(w) || err != nil {
				t.Fatalf("Write(%q) = %d, %v", w, n, err)
			}
		}
		if got := l.String(); got != tt.want {
			t.Errorf("Max %d, writes %q: %q, want %q", tt.max, tt.writes, got, tt.want)
		}
	}
}
