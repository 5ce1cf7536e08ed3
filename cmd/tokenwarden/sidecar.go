package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/sidecar"
)

func sidecarSettings(c *sidecar.Config) []setting {
	return []setting{
		{flag: "listen", usage: "HTTP listen address (keep it on loopback)", bind: &c.Listen},
		{flag: "socket", usage: "also serve on this Unix socket path", bind: &c.Socket},
		{flag: "grpc-addr", usage: `gRPC listen address of Envoy ext_authz Check and grpc.health.v1 (keep it on loopback; "" turns it off)`, bind: &c.GRPCAddr},
		{flag: "grpc-socket", usage: "also serve the gRPC API on this Unix socket path", bind: &c.GRPCSocket},
		{flag: "issuer", usage: "issuer identifier tokens must carry (iss)", bind: &c.Issuer},
		{flag: "audience", usage: "accepted audiences, comma-separated", bind: &c.Audience},
		{flag: "algorithms", usage: "allowed token algorithms, comma-separated (default ES256,EdDSA,RS256)", bind: &c.Algorithms},
		{flag: "leeway", usage: "clock skew allowed for exp, nbf and iat", bind: &c.Leeway},
		{flag: "max-token-size", usage: "largest token accepted, bytes", bind: &c.MaxTokenSize},
		{flag: "token-cache-size", usage: "entries of the verified-token cache", bind: &c.TokenCacheSize},
		{flag: "nats-url", usage: "NATS server URL(s), comma-separated", bind: &c.NATS.URL},
		{flag: "nats-prefix", usage: "prefix of the NATS buckets and streams", bind: &c.NATS.Prefix},
		{flag: "nats-creds", usage: "NATS credentials file", bind: &c.NATS.CredsFile},
		{flag: "distribution-public-key-file", usage: "PEM files of trusted distribution keys, comma-separated", bind: &c.DistributionPublicKeyFiles},
		{flag: "distribution-public-keys", usage: "trusted distribution keys inline (PEM or base64), comma-separated", bind: &c.DistributionPublicKeys, envOnly: true},
		{flag: "cache-dir", usage: "directory keeping the last good JWKS bundle across restarts", bind: &c.CacheDir},
		{flag: "jwks-fallback-url", usage: "issuer JWKS URL used only when NATS is unreachable and no bundle is held", bind: &c.JWKSFallbackURL},
		{flag: "key-refresh-interval", usage: "least time between key refreshes caused by unknown kids", bind: &c.KeyRefreshInterval},
		{flag: "revocation-max-staleness", usage: "unready once revocations are not confirmed current for this long (at least 15s)", bind: &c.RevocationMaxStaleness},
		{flag: "access-log", usage: "access log on or off (true or false); at Info it holds denials, errors, slow and sampled requests", bind: &c.AccessLog},
		{flag: "access-log-success-sample", usage: "log 1 in N successful requests at Info, the others at Debug (0: none, 1: every one)", bind: &c.AccessLogSuccessSample},
		{flag: "access-log-slow", usage: "log requests taking at least this long at Info (0: off)", bind: &c.AccessLogSlow},
	}
}

func newSidecarCommand(g *globals) *cobra.Command {
	cfg := sidecar.DefaultConfig()
	return programCommand(g, "sidecar",
		"Run the sidecar: verify tokens on localhost from keys distributed over NATS",
		"Runs the sidecar. Configuration comes from --config (YAML, see examples/sidecar.yaml),\n"+
			"then TOKENWARDEN_* environment variables, then flags.",
		&cfg, sidecarSettings(&cfg),
		func(ctx context.Context, log *slog.Logger) error {
			sc, err := sidecar.New(cfg, sidecar.WithLogger(log))
			if err != nil {
				return err
			}
			lns, err := sidecarListeners(cfg)
			if err != nil {
				return err
			}
			grpcLns, err := sidecarGRPCListeners(cfg)
			if err != nil {
				closeAll(lns)
				return err
			}
			return runSidecar(ctx, log, sc, lns, grpcLns)
		})
}

// sidecarGRPCListeners opens the gRPC API's listeners: none when both
// grpc_addr and grpc_socket are empty.
func sidecarGRPCListeners(cfg sidecar.Config) ([]net.Listener, error) {
	var lns []net.Listener
	if cfg.GRPCAddr != "" {
		ln, err := listenTCP(cfg.GRPCAddr, "sidecar gRPC", "--grpc-addr")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
	}
	if cfg.GRPCSocket != "" {
		ln, err := listenUnix(cfg.GRPCSocket)
		if err != nil {
			closeAll(lns)
			return nil, err
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

func closeAll(lns []net.Listener) {
	for _, l := range lns {
		_ = l.Close()
	}
}

func sidecarListeners(cfg sidecar.Config) ([]net.Listener, error) {
	var lns []net.Listener
	if cfg.Listen != "" {
		ln, err := listenTCP(cfg.Listen, "sidecar", "--listen")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
	}
	if cfg.Socket != "" {
		ln, err := listenUnix(cfg.Socket)
		if err != nil {
			for _, l := range lns {
				_ = l.Close()
			}
			return nil, err
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// runSidecar serves the sidecar's HTTP API on lns and its gRPC API on
// grpcLns until ctx ends or a server fails. The gRPC server stops
// gracefully with the HTTP ones (Envoy's Checks in flight finish, up to
// shutdownTimeout), before the sidecar stops following NATS.
func runSidecar(ctx context.Context, log *slog.Logger, sc *sidecar.Sidecar, lns, grpcLns []net.Listener) error {
	if len(grpcLns) == 0 {
		return runProgram(ctx, log, "sidecar", sc, lns...)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	gs := sc.NewGRPCServer()
	errc := make(chan error, len(grpcLns))
	var wg sync.WaitGroup
	for _, ln := range grpcLns {
		wg.Go(func() {
			// Serve returns nil once stopped; anything else is a failure,
			// which stops the whole sidecar.
			if err := gs.Serve(ln); err != nil {
				errc <- fmt.Errorf("sidecar gRPC on %s: %w", ln.Addr(), err)
				cancel()
			}
		})
		log.Info("sidecar gRPC listening", "addr", ln.Addr().String())
	}
	wg.Go(func() {
		<-runCtx.Done()
		stopped := make(chan struct{})
		go func() { gs.GracefulStop(); close(stopped) }()
		t := time.NewTimer(shutdownTimeout)
		defer t.Stop()
		select {
		case <-stopped:
		case <-t.C:
			gs.Stop()
			<-stopped
		}
	})
	err := runProgram(runCtx, log, "sidecar", sc, lns...)
	cancel()
	wg.Wait()
	close(errc)
	for e := range errc {
		err = errors.Join(err, e)
	}
	return err
}
