package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"
)

// program is a long-running part with an HTTP API: the issuer or the sidecar.
type program interface {
	Handler() http.Handler
	Run(ctx context.Context) error
}

// runProgram serves p's API on every listener and runs p until ctx ends or
// either fails, then shuts the HTTP servers down gracefully.
func runProgram(ctx context.Context, log *slog.Logger, name string, p program, lns ...net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(lns)+1)
	servers := make([]*http.Server, 0, len(lns))
	for _, ln := range lns {
		hs := &http.Server{Handler: p.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
			WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		servers = append(servers, hs)
		go func() {
			if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s HTTP on %s: %w", name, ln.Addr(), err)
			}
		}()
		log.Info(name+" listening", "addr", ln.Addr().String())
	}
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		if err := p.Run(ctx); err != nil {
			errc <- fmt.Errorf("%s: %w", name, err)
		}
	}()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancel()
	shutdownCtx, done := context.WithTimeout(context.Background(), 10*time.Second)
	defer done()
	for _, hs := range servers {
		_ = hs.Shutdown(shutdownCtx)
	}
	<-runDone
	return err
}

// listenTCP listens on addr, naming flag in the error so the user knows
// what to change.
func listenTCP(addr, what, flag string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s address %s is not available (change it with %s): %w", what, addr, flag, err)
	}
	return ln, nil
}

// listenUnix listens on a Unix socket, replacing a stale socket file left
// by a previous run. The socket is group-accessible so an app container
// sharing the volume (and group) can reach it.
func listenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		_ = os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("unix socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil { // #nosec G302 -- a socket shared with the app's group
		_ = ln.Close()
		return nil, fmt.Errorf("unix socket %s: %w", path, err)
	}
	return ln, nil
}

// programCommand is the command of a long-running program (issuer,
// sidecar): it loads cfg from --config, then TOKENWARDEN_* variables, then
// flags, and runs start with the configured logger.
func programCommand(g *globals, use, short, long string, cfg any, settings []setting, start func(context.Context, *slog.Logger) error) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			if err := loadLayered(cmd, file, cfg, settings); err != nil {
				return err
			}
			return start(cmd.Context(), log)
		},
	}
	cmd.Flags().StringVar(&file, "config", "", use+" configuration file (YAML)")
	registerFlags(cmd, settings)
	return cmd
}
