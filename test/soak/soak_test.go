package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestSoakShort runs the soak for a few seconds at a low rate against
// freshly built binaries, so that make test exercises the tool: separate
// processes, the open-loop load, revocations followed to the sidecar, key
// rotations, sampling and the leak rules.
func TestSoakShort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nats-server, an issuer and a sidecar for about 20s")
	}
	dir := t.TempDir()
	o := defaults()
	o.bin, o.natsBin = filepath.Join(dir, "tokenwarden"), filepath.Join(dir, "nats-server")
	for _, b := range []struct{ out, pkg string }{{o.bin, "github.com/tokenwarden/tokenwarden/cmd/tokenwarden"}, {o.natsBin, "github.com/nats-io/nats-server/v2"}} {
		if out, err := exec.CommandContext(t.Context(), "go", "build", "-o", b.out, b.pkg).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	o.duration, o.rate, o.conns, o.users = 12*time.Second, 200, 8, 8
	o.sampleEvery = time.Second
	var out bytes.Buffer
	o.out = &out
	err := run(t.Context(), o)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
}
