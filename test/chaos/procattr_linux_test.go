package chaos

import "syscall"

// sysProcAttr puts a child in a process group of its own (a kill reaches
// whatever it started, and a Ctrl-C of go test does not reach it before
// the cleanup does) and has the kernel kill it when the test process dies
// before its cleanup could: kill -9 of go test, a timeout panic.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
