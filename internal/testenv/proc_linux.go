package testenv

import (
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// setDeathSignal has the kernel SIGKILL the child when the thread that
// started it exits (see the caveat in proc.go).
func setDeathSignal(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }

// dieWithParent has the kernel SIGKILL this process when its parent dies:
// a test binary whose go command was killed would otherwise be orphaned
// and keep its children until its own timeout. The setting belongs to the
// calling thread's task but fires for the whole process, and Go keeps its
// threads; the parent is checked again afterwards, for one that died
// before the call.
func dieWithParent() error {
	ppid := os.Getppid()
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_PDEATHSIG): %w", err)
	}
	if os.Getppid() != ppid {
		fmt.Fprintln(os.Stderr, "testenv: the parent process died during start-up")
		os.Exit(1)
	}
	return nil
}
