package chaos

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

// markerEnv marks the processes of a run the kill test kills: the run
// inherits it, and so does every process the run starts.
const markerEnv = "TOKENWARDEN_CHAOS_KILL_MARKER"

// TestKilledRunLeavesNoProcess is issue 14's "a killed chaos run leaves no
// process behind: a test kills it and counts". Each case starts a real
// chaos run (TestChaos with no fault scenario and a long load, so that it
// is killed under load), waits until its NATS nodes, issuers and sidecars
// are up, kills it as a CI timeout or a Ctrl-C would, and counts the
// processes of the run still alive: none may be, within a few seconds.
func TestKilledRunLeavesNoProcess(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counts processes in /proc; only Linux kills a child with its parent")
	}
	if os.Getenv(markerEnv) != "" {
		t.Skip("inside a run that is being killed")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		// viaGo runs the suite as `go test` does, the test binary a child
		// of the go command; otherwise the test binary alone.
		viaGo bool
		sig   syscall.Signal
		// toGroup sends sig to the run's process group (a terminal's
		// Ctrl-C, a CI runner's kill of the job); otherwise to the
		// run's first process only (the go command, or the test binary).
		toGroup bool
	}{
		// The go command dies at once; its test binary, orphaned, must
		// not live on (with its children) until its own timeout.
		{name: "SIGKILL to go test", viaGo: true, sig: syscall.SIGKILL},
		{name: "SIGKILL to the test binary", sig: syscall.SIGKILL},
		{name: "SIGINT to the group (Ctrl-C)", viaGo: true, sig: syscall.SIGINT, toGroup: true},
		{name: "SIGTERM to the group", sig: syscall.SIGTERM, toGroup: true},
	}
	// Two runs at a time: four deployments of fifteen processes at once
	// would starve a two-core machine; one at a time would be slow.
	slots := make(chan struct{}, 2)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			slots <- struct{}{}
			defer func() { <-slots }()
			marker := newMarker(t)
			var args []string
			bin := os.Args[0]
			testArgs := []string{"-test.run=^TestChaos$/^$", "-test.timeout=3m", "-chaos.duration=10m"}
			if tc.viaGo {
				// In the package's directory with no package named, go
				// test streams the run's output instead of holding it.
				bin, args = goBin, []string{"test", "-count=1", "-vet=off"}
				if raceEnabled {
					args = append(args, "-race")
				}
				for _, a := range testArgs {
					args = append(args, strings.TrimPrefix(a, "test."))
				}
			} else {
				args = testArgs
			}
			cmd := exec.Command(bin, args...) // #nosec G204 -- the test's own binary or go
			cmd.Env = append(withoutEnv(os.Environ(), "CHAOS_DURATION"), markerEnv+"="+marker,
				binDirEnv+"="+filepath.Dir(twBin))
			out := &testenv.Tail{Max: 1 << 20}
			cmd.Stdout, cmd.Stderr = out, out
			// A group of its own, like a job's, and deliberately not
			// testenv.Start: its cleanup would kill the group itself and
			// hide what the run does on its own.
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { _ = cmd.Wait(); close(exited) }()
			t.Cleanup(func() {
				// Whatever the outcome, nothing of the run stays.
				for _, p := range marked(marker) {
					_ = syscall.Kill(p.pid, syscall.SIGKILL)
				}
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-exited
				if t.Failed() {
					t.Logf("the run's output:\n%s", out.String())
				}
			})

			// Up: the suite says so once every process is ready.
			if err := poll(t.Context(), 3*time.Minute, 100*time.Millisecond, func() error {
				select {
				case <-exited:
					return fmt.Errorf("the run exited before its deployment was up")
				default:
				}
				if !strings.Contains(out.String(), "deployed in") {
					return fmt.Errorf("not deployed yet")
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			before := kinds(marked(marker))
			want := map[string]int{"nats-server": 3, "issuer": issuerCount, "sidecar": sidecarCount}
			for k, n := range want {
				if before[k] != n {
					t.Fatalf("before the kill: %d %s processes of the run, want %d (the count sees %v)", before[k], k, n, before)
				}
			}
			t.Logf("before the kill: %v", before)

			target := cmd.Process.Pid
			if tc.toGroup {
				target = -target
			}
			if err := syscall.Kill(target, tc.sig); err != nil {
				t.Fatal(err)
			}
			var left []procInfo
			err := poll(context.Background(), 10*time.Second, 100*time.Millisecond, func() error {
				if left = marked(marker); len(left) > 0 {
					return fmt.Errorf("%d processes left", len(left))
				}
				return nil
			})
			if err != nil {
				var b strings.Builder
				for _, p := range left {
					fmt.Fprintf(&b, "\n  pid %d: %s", p.pid, p.cmdline)
				}
				t.Fatalf("%v after %v: %d processes of the run are alive (%v):%s", err, tc.sig, len(left), kinds(left), b.String())
			}
		})
	}
}

// procInfo is a live process of a run.
type procInfo struct {
	pid     int
	cmdline string
}

// marked scans /proc for the live (not zombie) processes whose environment
// holds the marker.
func marked(marker string) []procInfo {
	want := []byte(markerEnv + "=" + marker + "\x00")
	entries, _ := os.ReadDir("/proc")
	var found []procInfo
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		env, err := os.ReadFile(filepath.Join(dir, "environ"))
		if err != nil || !bytes.Contains(env, want) {
			continue
		}
		// A zombie (dead, not yet reaped by whoever adopted it) runs
		// nothing; its environ reads empty anyway, but say so.
		if stat, err := os.ReadFile(filepath.Join(dir, "stat")); err == nil {
			if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
				continue
			}
		}
		cmdline, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		found = append(found, procInfo{pid: pid, cmdline: strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " "))})
	}
	return found
}

// kinds counts processes by what they are.
func kinds(ps []procInfo) map[string]int {
	m := map[string]int{}
	for _, p := range ps {
		args := strings.Fields(p.cmdline)
		k := "other"
		switch {
		case len(args) == 0:
		case filepath.Base(args[0]) == "nats-server":
			k = "nats-server"
		case filepath.Base(args[0]) == "tokenwarden" && len(args) > 1:
			k = args[1]
		case filepath.Base(args[0]) == "go":
			k = "go"
		case strings.HasSuffix(args[0], ".test"):
			k = "test binary"
		}
		m[k]++
	}
	return m
}

func newMarker(t *testing.T) string {
	t.Helper()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func withoutEnv(env []string, key string) []string {
	var kept []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			kept = append(kept, kv)
		}
	}
	return kept
}
