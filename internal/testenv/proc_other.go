//go:build !linux

package testenv

import "syscall"

// setDeathSignal: only Linux kills a child with its parent; elsewhere the
// process group and Guard's signal handling are all there is.
func setDeathSignal(*syscall.SysProcAttr) {}

func dieWithParent() error { return nil }
