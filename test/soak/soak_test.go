package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

// TestMain: a killed run takes its processes with it (see testenv.Guard).
func TestMain(m *testing.M) { testenv.Main(m) }

// TestSoakShort runs the soak for a few seconds at a low rate against
// freshly built binaries, so that make test exercises the tool: separate
// processes, the open-loop load, revocations followed to the sidecar, key
// rotations, sampling and the leak rules.
func TestSoakShort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nats-server, an issuer and a sidecar for about 20s")
	}
	o := defaults()
	var err error
	if o.bin, o.natsBin, err = testenv.BuildPrograms(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	o.duration, o.rate, o.conns, o.users = 12*time.Second, 200, 8, 8
	o.sampleEvery = time.Second
	var out bytes.Buffer
	o.out = &out
	err = run(t.Context(), o)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
}
