// Command tokenwarden is the one binary of tokenwarden: the issuer, the
// sidecar, the local all-in-one dev mode and the admin tools. This package
// only wires flags, files and signals to the issuer and sidecar packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal the servers drain; a second one (an impatient
	// Ctrl-C) gets the default behaviour and ends the process at once.
	go func() { <-ctx.Done(); stop() }()
	if err := newRootCommand(os.Stdin, os.Stdout, os.Stderr).ExecuteContext(ctx); err != nil {
		// One line, no stack: what failed and where.
		fmt.Fprintln(os.Stderr, "tokenwarden: "+strings.ReplaceAll(err.Error(), "\n", "; "))
		os.Exit(1)
	}
}

// globals are the flags every command shares.
type globals struct {
	logLevel  string
	logFormat string
	stdin     io.Reader
	stdout    io.Writer
	stderr    io.Writer
}

func newRootCommand(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdin: stdin, stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "tokenwarden",
		Short:         "Token authentication for Kubernetes, verified locally by a sidecar",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", envOr("TOKENWARDEN_LOG_LEVEL", "info"), "log level: debug, info, warn or error (env TOKENWARDEN_LOG_LEVEL)")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", envOr("TOKENWARDEN_LOG_FORMAT", "text"), "log format: text or json (env TOKENWARDEN_LOG_FORMAT)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return fmt.Errorf("%w (see --help)", err) })
	root.AddCommand(
		newIssuerCommand(g),
		newSidecarCommand(g),
		newInjectorCommand(g),
		newDevCommand(g),
		newKeysCommand(g),
		newRevokeCommand(g),
		newHashPasswordCommand(g),
		newCheckCommand(g),
		newVersionCommand(g),
	)
	return root
}

func (g *globals) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch g.logFormat {
	case "json":
		return slog.New(slog.NewJSONHandler(g.stderr, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(g.stderr, opts)), nil
	}
	return nil, errors.New("--log-format: want text or json")
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}
