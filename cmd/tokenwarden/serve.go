package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
)

// program is a long-running part with an HTTP API: the issuer or the sidecar.
type program interface {
	Handler() http.Handler
	Run(ctx context.Context) error
}

// shutdownTimeout bounds how long a graceful shutdown waits for in-flight
// requests once the drain delay is over. The chart's
// terminationGracePeriodSeconds covers the delay plus this.
const shutdownTimeout = 10 * time.Second

// runProgram serves p's API on every listener and runs p until ctx ends or
// either fails, then shuts the HTTP servers down gracefully.
func runProgram(ctx context.Context, log *slog.Logger, name string, p program, lns ...net.Listener) error {
	return runDraining(ctx, log, name, p, 0, lns...)
}

// runDraining is runProgram with a drain delay: when ctx ends (SIGTERM),
// /readyz fails at once while every request is still served for delay,
// then the HTTP servers shut down gracefully, and only then is p stopped,
// so requests in flight keep their NATS connection to the end.
func runDraining(ctx context.Context, log *slog.Logger, name string, p program, delay time.Duration, lns ...net.Listener) error {
	// p outlives the signal: it is stopped after the HTTP servers.
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRun()
	errc := make(chan error, len(lns)+1)
	d := &drainer{}
	h := d.wrap(p.Handler())
	servers := make([]*http.Server, 0, len(lns))
	for _, ln := range lns {
		hs := newHTTPServer(log, h)
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
		if err := p.Run(runCtx); err != nil {
			errc <- fmt.Errorf("%s: %w", name, err)
		}
	}()
	err := waitAndDrain(ctx, log, name, d, delay, errc, servers...)
	stopRun()
	<-runDone
	return err
}

func newHTTPServer(log *slog.Logger, h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
}

// waitAndDrain waits for ctx to end or a server to fail. On ctx's end it
// drains: readiness fails, every answer closes its connection (clients
// reconnect, and kube-proxy sends new connections elsewhere once the
// endpoints are updated), and requests are served for delay. Then it shuts
// the servers down, waiting up to shutdownTimeout for requests in flight. A
// failure during the delay cuts it short.
//
// Idle connections stay open during the delay, to be closed by the answer
// to their next request: closing them at once (SetKeepAlivesEnabled(false))
// races a client that is sending on one, and the API server, which calls
// webhooks over HTTP/1.1 keep-alive connections, then fails the admission
// with "broken pipe" (seen in test/k8s's injector rollout).
func waitAndDrain(ctx context.Context, log *slog.Logger, name string, d *drainer, delay time.Duration, errc <-chan error, servers ...*http.Server) error {
	var err error
	select {
	case <-ctx.Done():
		d.start()
		if delay > 0 {
			log.Info(name+" draining: /readyz fails, requests are still served", "delay", delay.String())
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case err = <-errc:
				t.Stop()
			}
		}
	case err = <-errc:
	}
	shutdownCtx, done := context.WithTimeout(context.Background(), shutdownTimeout)
	defer done()
	for _, hs := range servers {
		_ = hs.Shutdown(shutdownCtx)
	}
	return err
}

// drainer makes /readyz answer 503 once shutdown has begun, whatever the
// program would say, so the kubelet takes the pod out of its Services
// while it still serves; and it closes each connection after its answer
// ("Connection: close", which Go's HTTP/2 server turns into a GOAWAY).
type drainer struct{ draining atomic.Bool }

func (d *drainer) start() { d.draining.Store(true) }

func (d *drainer) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !d.draining.Load() {
			h.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Connection", "close")
		if r.URL.Path == "/readyz" {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"status":"not ready","checks":{"shutdown":"shutting down"}}`+"\n")
			return
		}
		h.ServeHTTP(w, r)
	})
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
