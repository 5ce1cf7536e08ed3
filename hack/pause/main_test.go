//go:build unix

package main

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestWait: SIGCHLD reaps an exited child (a later wait for it finds no
// child), and SIGTERM ends the loop with status 0.
func TestWait(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", "exit 3")
	if err := cmd.Start(); err != nil {
		t.Skip("no /bin/sh:", err)
	}
	pid := cmd.Process.Pid
	// Let the child exit (a zombie until reaped).
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || containsState(b, 'Z') || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	sigs := make(chan os.Signal, 2)
	sigs <- syscall.SIGCHLD
	sigs <- syscall.SIGTERM
	if got := wait(sigs); got != 0 {
		t.Fatalf("wait = %d, want 0", got)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); !errors.Is(err, syscall.ECHILD) {
		t.Fatalf("child %d not reaped: wait4 err %v", pid, err)
	}
}

// containsState reports whether a /proc/PID/stat line has state s (the
// field after the parenthesized command name).
func containsState(stat []byte, s byte) bool {
	for i := len(stat) - 1; i > 0; i-- {
		if stat[i] == ')' {
			return i+2 < len(stat) && stat[i+2] == s
		}
	}
	return false
}
