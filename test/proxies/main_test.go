package proxies

import (
	"os"
	"testing"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

// TestMain: a killed run takes its nginx and caddy processes with it (see
// testenv.Guard).
func TestMain(m *testing.M) {
	release := testenv.Guard()
	code := m.Run()
	release()
	os.Exit(code)
}
