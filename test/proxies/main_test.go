package proxies

import (
	"testing"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

// TestMain: a killed run takes its nginx and caddy processes with it (see
// testenv.Guard).
func TestMain(m *testing.M) { testenv.Main(m) }
