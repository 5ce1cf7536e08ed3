package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/injector"
)

func injectorSettings(c *injector.Config) []setting {
	return []setting{
		{flag: "addr", usage: "HTTPS listen address", bind: &c.Addr},
		{flag: "tls-cert", usage: "serving certificate (PEM), re-read when it changes", bind: &c.TLSCertFile},
		{flag: "tls-key", usage: "serving key (PEM), re-read when it changes", bind: &c.TLSKeyFile},
		{flag: "namespace", usage: "the injector's own namespace, never mutated", bind: &c.Namespace},
		{flag: "sidecar-image", usage: "image of the injected sidecar", bind: &c.Image},
		{flag: "issuer", usage: "issuer identifier the sidecars require (iss)", bind: &c.Issuer},
		{flag: "audience", usage: "default audiences of the sidecars, comma-separated", bind: &c.Audience},
		{flag: "sidecar-port", usage: "default HTTP port of the sidecars", bind: &c.Port},
		{flag: "sidecar-grpc-port", usage: "default loopback port of the sidecars' gRPC API (Envoy ext_authz); 0 turns it off", bind: &c.GRPCPort},
		{flag: "nats-url", usage: "NATS URL the sidecars connect to", bind: &c.NATS.URL},
		{flag: "nats-prefix", usage: "prefix of the NATS buckets and streams", bind: &c.NATS.Prefix},
		{flag: "distribution-public-key-file", usage: "PEM files of trusted distribution keys, comma-separated", bind: &c.DistributionPublicKeyFiles},
		{flag: "distribution-public-keys", usage: "trusted distribution keys inline (PEM or base64), comma-separated", bind: &c.DistributionPublicKeys},
		{flag: "shutdown-delay", usage: "on SIGTERM, keep serving this long with /readyz failing before shutting down", bind: &c.ShutdownDelay},
	}
}

func newInjectorCommand(g *globals) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "injector",
		Short: "Run the mutating admission webhook that injects the sidecar into annotated pods",
		Long: "Runs the admission webhook of the Helm chart. POST /mutate takes an admission.k8s.io/v1\n" +
			"AdmissionReview and injects the sidecar into pods annotated tokenwarden.io/inject: \"true\";\n" +
			"GET /healthz, GET /readyz (503 once shutting down). Configuration comes from --config (YAML, see docs/kubernetes.md), then\n" +
			"TOKENWARDEN_* environment variables, then flags; the file, the key files and the TLS\n" +
			"certificate are re-read when they change.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			ver, _ := buildInfo()
			load := func() (*injector.Config, error) {
				cfg := injector.DefaultConfig("tokenwarden:" + ver)
				if err := loadLayered(cmd, file, &cfg, injectorSettings(&cfg)); err != nil {
					return nil, err
				}
				if err := cfg.Load(); err != nil {
					return nil, fmt.Errorf("injector config: %w", err)
				}
				return &cfg, nil
			}
			src, err := injector.NewSource(load, func(c *injector.Config) []string {
				return append([]string{file}, c.DistributionPublicKeyFiles...)
			}, log)
			if err != nil {
				return err
			}
			cfg := src.Current()
			if len(cfg.TrustedKeys()) == 0 {
				log.Warn("no distribution public key configured: pods asking for the sidecar will be refused until one is (distribution_public_keys)")
			}
			return serveInjector(cmd.Context(), log, cfg, injector.NewHandler(src.Current, log))
		},
	}
	cmd.Flags().StringVar(&file, "config", "", "injector configuration file (YAML)")
	registerFlags(cmd, injectorSettings(&injector.Config{}))
	return cmd
}

// serveInjector serves h on cfg.Addr, over TLS when a certificate is
// configured, until ctx ends, then drains for cfg.ShutdownDelay.
func serveInjector(ctx context.Context, log *slog.Logger, cfg *injector.Config, h http.Handler) error {
	d := &drainer{}
	hs := newHTTPServer(log, d.wrap(h))
	if cfg.TLSCertFile != "" {
		certs, err := injector.NewCertReloader(cfg.TLSCertFile, cfg.TLSKeyFile, log)
		if err != nil {
			return err
		}
		hs.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.GetCertificate}
	} else {
		log.Warn("no --tls-cert/--tls-key: serving plain HTTP, which the Kubernetes API server does not call")
	}
	ln, err := listenTCP(cfg.Addr, "injector", "--addr")
	if err != nil {
		return err
	}
	return runInjector(ctx, log, hs, d, cfg.ShutdownDelay, ln)
}

// runInjector serves hs (whose handler d wraps) on ln until ctx ends, then
// drains: the API server keeps calling a terminating injector until its
// endpoints are updated, and a refused call refuses the pod.
func runInjector(ctx context.Context, log *slog.Logger, hs *http.Server, d *drainer, delay time.Duration, ln net.Listener) error {
	// Decided before serving: Serve itself fills in hs.TLSConfig for HTTP/2.
	useTLS := hs.TLSConfig != nil
	errc := make(chan error, 1)
	go func() {
		var err error
		if useTLS {
			err = hs.ServeTLS(ln, "", "")
		} else {
			err = hs.Serve(ln)
		}
		if !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("injector HTTP on %s: %w", ln.Addr(), err)
		}
	}()
	log.Info("injector listening", "addr", ln.Addr().String(), "tls", useTLS)
	return waitAndDrain(ctx, log, "injector", d, delay, errc, hs)
}
