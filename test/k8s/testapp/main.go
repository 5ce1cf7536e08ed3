// Command testapp is the application of the Kubernetes end-to-end test: an
// HTTP server that lets through only requests whose bearer token the pod's
// tokenwarden sidecar verified (sidecar/client's middleware) and answers
// with what it was told about the caller.
//
//	GET  /healthz      200 "ok", no token needed (probes)
//	ANY  /write[/...]  needs scope write
//	ANY  /...          needs a valid token
//
// A verified request gets JSON: subject, client_id, scopes, token_id,
// expires_at (unix seconds), method, path and pod (the host name). Refusals
// are the middleware's: 401 / 403 with the sidecar's WWW-Authenticate, 503
// when the sidecar cannot be asked.
//
// Flags (and environment): -addr (TESTAPP_ADDR, default :8000), -sidecar
// (TOKENWARDEN_SIDECAR, default http://127.0.0.1:8181).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tokenwarden/tokenwarden/sidecar/client"
)

// Answer is the JSON body of a verified request.
type Answer struct {
	Subject   string   `json:"subject"`
	ClientID  string   `json:"client_id"`
	Scopes    []string `json:"scopes"`
	TokenID   string   `json:"token_id"`
	ExpiresAt int64    `json:"expires_at"`
	Method    string   `json:"method"`
	Path      string   `json:"path"`
	Pod       string   `json:"pod"`
}

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stderr, nil); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "testapp:", err)
		}
		os.Exit(1)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// run serves until ctx ends or SIGTERM/SIGINT, then drains for up to 10s.
// ready, if not nil, receives the listener's address once it listens.
func run(ctx context.Context, args []string, stderr io.Writer, ready chan<- string) error {
	fs := flag.NewFlagSet("testapp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", envOr("TESTAPP_ADDR", ":8000"), "listen address")
	sidecar := fs.String("sidecar", envOr("TOKENWARDEN_SIDECAR", "http://127.0.0.1:8181"), "the sidecar's address (http://host:port or unix:///path)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	// What the sidecar said the moment the app started: a native sidecar with a startup probe
	// is ready before the kubelet starts the app, and the end-to-end test checks this line.
	log.Info("sidecar ready at start: " + sidecarReadiness(ctx, *sidecar))
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *addr, err)
	}
	pod, _ := os.Hostname()
	srv := &http.Server{
		Handler:           NewHandler(client.New(*sidecar), pod),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       90 * time.Second,
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("testapp listening", "addr", ln.Addr().String(), "sidecar", *sidecar)
	if ready != nil {
		ready <- ln.Addr().String()
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("testapp stopping")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// sidecarReadiness is the status of one GET of the sidecar's /readyz, or the error.
func sidecarReadiness(ctx context.Context, base string) string {
	if !strings.HasPrefix(base, "http://") {
		return "not asked (" + base + ")"
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/readyz", nil)
	if err != nil {
		return err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err.Error()
	}
	_ = resp.Body.Close()
	return strconv.Itoa(resp.StatusCode)
}

// NewHandler is the app: v verifies every request but /healthz.
func NewHandler(v client.Verifier, pod string) http.Handler {
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, ok := client.IdentityFrom(r.Context())
		if !ok { // the middleware never lets such a request through
			http.Error(w, "no identity", http.StatusInternalServerError)
			return
		}
		scopes := id.Scopes
		if scopes == nil {
			scopes = []string{}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(Answer{
			Subject:   id.Subject,
			ClientID:  id.ClientID,
			Scopes:    scopes,
			TokenID:   id.TokenID,
			ExpiresAt: id.ExpiresAt.Unix(),
			Method:    r.Method,
			Path:      r.URL.Path,
			Pod:       pod,
		})
	})
	authenticated := client.Middleware(v)(echo)
	writer := client.Middleware(v, client.WithScopes("write"))(echo)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("/write", writer)
	mux.Handle("/write/", writer)
	mux.Handle("/", authenticated)
	return mux
}
