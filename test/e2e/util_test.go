package e2e

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/testenv"
)

func regexpMust(s string) *regexp.Regexp { return regexp.MustCompile(s) }

func execWithStdin(bin, stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := testenv.CombinedOutput(cmd)
	return string(out), err
}
