package main

import (
	"context"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/issuer"
)

func issuerSettings(c *issuer.Config) []setting {
	return []setting{
		{flag: "issuer", usage: "issuer identifier URL (the iss of every token)", bind: &c.Issuer},
		{flag: "listen", usage: "HTTP listen address", bind: &c.Listen},
		{flag: "nats-url", usage: "NATS server URL(s), comma-separated", bind: &c.NATS.URL},
		{flag: "nats-prefix", usage: "prefix of the NATS buckets and streams", bind: &c.NATS.Prefix},
		{flag: "nats-creds", usage: "NATS credentials file", bind: &c.NATS.CredsFile},
		{flag: "nats-replicas", usage: "replicas of the JetStream buckets", bind: &c.NATS.Replicas},
		{flag: "nats-max-consumers", usage: "consumers the JWKS bucket and revocation stream accept (one each per sidecar)", bind: &c.NATS.MaxConsumers},
		{flag: "users-file", usage: "users YAML file", bind: &c.UsersFile},
		{flag: "clients-file", usage: "clients YAML file", bind: &c.ClientsFile},
		{flag: "distribution-key-file", usage: "Ed25519 private key (PKCS#8 PEM) that signs bundles and events", bind: &c.DistributionKeyFile},
		{flag: "trusted-distribution-public-key-file", usage: "PEM files of more distribution public keys whose bundles and events are accepted (a distribution-key rollover), comma-separated", bind: &c.TrustedDistributionPublicKeyFiles},
		{flag: "trusted-distribution-public-keys", usage: "the same keys inline (PEM or base64), comma-separated", bind: &c.TrustedDistributionPublicKeys, envOnly: true},
		{flag: "key-encryption-key-file", usage: "file with the base64 32-byte key sealing signing keys at rest", bind: &c.KeyEncryptionKeyFile},
		{flag: "key-encryption-key", usage: "the key-encryption key itself, base64", bind: &c.KeyEncryptionKey, envOnly: true},
		{flag: "previous-key-encryption-key-files", usage: "files with earlier key-encryption keys, comma-separated: opened with, never sealed with, until `tokenwarden keys rewrap`", bind: &c.PreviousKeyEncryptionKeyFiles},
		{flag: "previous-key-encryption-keys", usage: "earlier key-encryption keys themselves, base64, comma-separated", bind: &c.PreviousKeyEncryptionKeys, envOnly: true},
		{flag: "signing-alg", usage: "algorithm of new signing keys: ES256, EdDSA or RS256", bind: &c.Keys.Algorithm},
		{flag: "rotation-period", usage: "how long a key signs before rotation", bind: &c.Keys.RotationPeriod},
		{flag: "propagation-delay", usage: "how long a key is published before it signs", bind: &c.Keys.PropagationDelay},
		{flag: "access-token-ttl", usage: "default access-token lifetime", bind: &c.AccessTokenTTL},
		{flag: "refresh-token-ttl", usage: "default refresh-token lifetime", bind: &c.RefreshTokenTTL},
		{flag: "leeway", usage: "clock leeway allowed to verifiers", bind: &c.Leeway},
		{flag: "shutdown-delay", usage: "on SIGTERM, keep serving this long with /readyz failing before shutting down", bind: &c.ShutdownDelay},
	}
}

func newIssuerCommand(g *globals) *cobra.Command {
	cfg := issuer.DefaultConfig()
	return programCommand(g, "issuer",
		"Run the issuer: OAuth2 token endpoint, key rotation, JWKS publication over NATS",
		"Runs the issuer. Configuration comes from --config (YAML, see examples/issuer.yaml),\n"+
			"then TOKENWARDEN_* environment variables, then flags. SIGHUP reloads the users and clients files.",
		&cfg, issuerSettings(&cfg),
		func(ctx context.Context, log *slog.Logger) error {
			srv, err := issuer.New(cfg, issuer.WithLogger(log))
			if err != nil {
				return err
			}
			return serveIssuer(ctx, log, srv, cfg.Listen, cfg.ShutdownDelay)
		})
}

// serveIssuer listens on addr and runs srv until ctx ends (then drains for
// delay), reloading the users and clients files on SIGHUP.
func serveIssuer(ctx context.Context, log *slog.Logger, srv *issuer.Server, addr string, delay time.Duration) error {
	ln, err := listenTCP(addr, "issuer", "--listen")
	if err != nil {
		return err
	}
	return runIssuer(ctx, log, srv, delay, ln)
}

func runIssuer(ctx context.Context, log *slog.Logger, srv *issuer.Server, delay time.Duration, ln net.Listener) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// The reloader stops with the process, not at SIGTERM: the issuer keeps
	// serving while it drains.
	hupCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	go func() {
		for {
			select {
			case <-hupCtx.Done():
				return
			case <-hup:
				_ = srv.ReloadDirectory()
			}
		}
	}()
	return runDraining(ctx, log, "issuer", srv, delay, ln)
}
