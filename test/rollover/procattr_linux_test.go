package rollover

import "syscall"

// procAttr: a process group of its own, and SIGKILL if the test process
// dies before its cleanup runs.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
