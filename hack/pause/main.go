//go:build unix

// Command pause is the sandbox container of a pod, as registry.k8s.io/pause:
// it holds the pod's namespaces open doing nothing until SIGTERM or SIGINT,
// and, being PID 1 of a shared PID namespace, reaps every orphan on SIGCHLD.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	os.Exit(wait(sigs))
}

// wait reaps children on SIGCHLD and returns 0 on any other signal.
func wait(sigs <-chan os.Signal) int {
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			return 0
		}
		for {
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
	return 0
}
