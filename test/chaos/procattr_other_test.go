//go:build !linux

package chaos

import "syscall"

// sysProcAttr puts a child in a process group of its own; only Linux can
// also have it killed when the test process dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
