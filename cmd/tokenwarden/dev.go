package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"text/template"
	"time"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/internal/embeddednats"
	"github.com/tokenwarden/tokenwarden/issuer"
	"github.com/tokenwarden/tokenwarden/issuer/directory"
	"github.com/tokenwarden/tokenwarden/sidecar"
)

// The dev seeds of the contract.
const (
	devUser, devPassword         = "demo", "demo-password"
	devClient, devClientSecret   = "demo-app", "demo-secret"
	devAdmin, devAdminSecret     = "admin", "admin-secret"
	devAudience                  = "demo-api"
	devPropagationDelay          = 10 * time.Second
	devUsersFile, devClientsFile = "users.yaml", "clients.yaml"
)

type devOptions struct {
	data        string
	issuerAddr  string
	sidecarAddr string
	sidecarGRPC string
	natsAddr    string
}

func newDevCommand(g *globals) *cobra.Command {
	var o devOptions
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run everything on this machine: embedded NATS, an issuer and a sidecar, with demo credentials",
		Long: "Runs an embedded NATS server with JetStream, an issuer and a sidecar (audience demo-api)\n" +
			"in one process, with seeded demo credentials. State lives under --data and survives restarts.\n" +
			"Ctrl-C stops it cleanly. Not for production: the keys are on local disk.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			if err := seedDevData(o.data); err != nil {
				return err
			}
			issuerLn, err := listenTCP(o.issuerAddr, "issuer", "--issuer-addr")
			if err != nil {
				return err
			}
			defer func() { _ = issuerLn.Close() }()
			sidecarLn, err := listenTCP(o.sidecarAddr, "sidecar", "--sidecar-addr")
			if err != nil {
				return err
			}
			defer func() { _ = sidecarLn.Close() }()
			var grpcLns []net.Listener
			if o.sidecarGRPC != "" {
				ln, err := listenTCP(o.sidecarGRPC, "sidecar gRPC", "--sidecar-grpc-addr")
				if err != nil {
					return err
				}
				defer func() { _ = ln.Close() }()
				grpcLns = append(grpcLns, ln)
			}
			if err := checkFree(o.natsAddr); err != nil {
				return err
			}
			ns, err := embeddednats.Start(embeddednats.Config{Addr: o.natsAddr, StoreDir: filepath.Join(o.data, "nats"), ServerName: "tokenwarden-dev"})
			if err != nil {
				return err
			}
			defer ns.Stop()

			cfg := issuer.DefaultConfig()
			cfg.Issuer = "http://" + issuerLn.Addr().String()
			cfg.Listen = issuerLn.Addr().String()
			cfg.NATS.URL = ns.URL()
			cfg.UsersFile = filepath.Join(o.data, devUsersFile)
			cfg.ClientsFile = filepath.Join(o.data, devClientsFile)
			cfg.DistributionKeyFile = filepath.Join(o.data, "distribution.key")
			cfg.KeyEncryptionKeyFile = filepath.Join(o.data, "key-encryption.key")
			cfg.Keys.PropagationDelay = devPropagationDelay
			srv, err := issuer.New(cfg, issuer.WithLogger(log.With("program", "issuer")))
			if err != nil {
				return err
			}
			scfg := sidecar.DefaultConfig()
			scfg.Listen = sidecarLn.Addr().String()
			scfg.GRPCAddr = ""
			grpcAddr := "off"
			if len(grpcLns) > 0 {
				scfg.GRPCAddr = grpcLns[0].Addr().String()
				grpcAddr = scfg.GRPCAddr
			}
			scfg.Issuer = cfg.Issuer
			scfg.Audience = []string{devAudience}
			scfg.NATS.URL = ns.URL()
			scfg.DistributionPublicKeyFiles = []string{filepath.Join(o.data, "distribution.pub")}
			scfg.CacheDir = filepath.Join(o.data, "sidecar-cache")
			sc, err := sidecar.New(scfg, sidecar.WithLogger(log.With("program", "sidecar")))
			if err != nil {
				return err
			}
			if err := printDevBanner(g.stdout, cfg.Issuer, "http://"+scfg.Listen, grpcAddr, ns.URL(), o); err != nil {
				return err
			}
			// Both run until Ctrl-C; if either fails, both stop.
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			errc := make(chan error, 2)
			go func() { errc <- runIssuer(ctx, log, srv, 0, issuerLn); cancel() }()
			// The sidecar starts once the issuer has made the bucket and the
			// stream it reads, so a first start logs no retries.
			waitIssuer(ctx, srv)
			go func() { errc <- runSidecar(ctx, log, sc, []net.Listener{sidecarLn}, grpcLns); cancel() }()
			return errors.Join(<-errc, <-errc)
		},
	}
	cmd.Flags().StringVar(&o.data, "data", ".tokenwarden-dev", "directory for NATS data, keys and the seeded users and clients")
	cmd.Flags().StringVar(&o.issuerAddr, "issuer-addr", "127.0.0.1:8080", "issuer listen address")
	cmd.Flags().StringVar(&o.sidecarAddr, "sidecar-addr", "127.0.0.1:8181", "sidecar listen address")
	cmd.Flags().StringVar(&o.sidecarGRPC, "sidecar-grpc-addr", sidecar.DefaultGRPCAddr, `sidecar gRPC (Envoy ext_authz) listen address; "" turns it off`)
	cmd.Flags().StringVar(&o.natsAddr, "nats-addr", "127.0.0.1:4222", "embedded NATS listen address")
	return cmd
}

// waitIssuer waits (at most 30s) until the issuer is ready.
func waitIssuer(ctx context.Context, srv *issuer.Server) {
	deadline := time.Now().Add(30 * time.Second)
	for srv.Ready() != nil && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
}

func checkFree(addr string) error {
	ln, err := listenTCP(addr, "NATS", "--nats-addr")
	if err != nil {
		return err
	}
	return ln.Close()
}

// seedDevData creates the data directory's keys and seeded users and
// clients on first start, and leaves them alone afterwards.
func seedDevData(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("dev data directory: %w", err)
	}
	distPath := filepath.Join(dir, "distribution.key")
	if _, err := os.Stat(distPath); errors.Is(err, os.ErrNotExist) {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		pemKey, err := issuer.EncodeDistributionKey(priv)
		if err != nil {
			return err
		}
		pemPub, err := issuer.EncodeDistributionPublicKey(pub)
		if err != nil {
			return err
		}
		if err := writeNew(distPath, pemKey, 0o600); err != nil {
			return err
		}
		if err := writeNew(filepath.Join(dir, "distribution.pub"), pemPub, 0o644); err != nil {
			return err
		}
	}
	kekPath := filepath.Join(dir, "key-encryption.key")
	if _, err := os.Stat(kekPath); errors.Is(err, os.ErrNotExist) {
		kek := make([]byte, 32)
		if _, err := rand.Read(kek); err != nil {
			return err
		}
		if err := writeNew(kekPath, []byte(base64.StdEncoding.EncodeToString(kek)+"\n"), 0o600); err != nil {
			return err
		}
	}
	usersPath, clientsPath := filepath.Join(dir, devUsersFile), filepath.Join(dir, devClientsFile)
	if _, err := os.Stat(usersPath); errors.Is(err, os.ErrNotExist) {
		h, err := directory.HashPassword([]byte(devPassword), directory.DefaultParams())
		if err != nil {
			return err
		}
		users := fmt.Sprintf("# Seeded by tokenwarden dev. Password of demo: %s\nusers:\n  - username: %s\n    password_hash: %q\n", devPassword, devUser, h)
		if err := writeNew(usersPath, []byte(users), 0o600); err != nil {
			return err
		}
	}
	if _, err := os.Stat(clientsPath); errors.Is(err, os.ErrNotExist) {
		app, err := directory.HashPassword([]byte(devClientSecret), directory.DefaultParams())
		if err != nil {
			return err
		}
		adm, err := directory.HashPassword([]byte(devAdminSecret), directory.DefaultParams())
		if err != nil {
			return err
		}
		clients := fmt.Sprintf(`# Seeded by tokenwarden dev. Secrets: %s / %s, %s / %s
clients:
  - id: %s
    secret_hash: %q
    grants: [password, refresh_token, client_credentials]
    scopes: [read, write]
    audience: %s
  - id: %s
    secret_hash: %q
    grants: [client_credentials]
    scopes: ["%s"]
`, devClient, devClientSecret, devAdmin, devAdminSecret, devClient, app, devAudience, devAdmin, adm, issuer.AdminScope)
		if err := writeNew(clientsPath, []byte(clients), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func writeNew(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode) // #nosec G304 -- path is under the --data directory the user chose
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

var devBanner = template.Must(template.New("banner").Parse(`
tokenwarden dev is running (Ctrl-C stops it)

  issuer   {{.Issuer}}
  sidecar  {{.Sidecar}}   (verifies tokens for audience demo-api)
  gRPC     {{.GRPC}}   (the sidecar's Envoy ext_authz Check and grpc.health.v1)
  NATS     {{.NATS}}   (JetStream data in {{.Data}})

Seeded credentials:
  user          demo / demo-password
  client        demo-app / demo-secret   grants password, refresh_token, client_credentials; scopes read write; audience demo-api
  admin client  admin / admin-secret     client_credentials, scope tokenwarden:admin

Try it:
  # log in as demo (password grant) and keep the tokens
  TOKENS=$(curl -s -u demo-app:demo-secret -d grant_type=password -d username=demo -d password=demo-password -d scope='read write' {{.Issuer}}/oauth2/token)
  ACCESS=$(echo "$TOKENS" | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
  REFRESH=$(echo "$TOKENS" | sed -E 's/.*"refresh_token":"([^"]+)".*/\1/')

  # ask the sidecar, as nginx auth_request would (200 with X-Auth-* headers)
  curl -si -H "Authorization: Bearer $ACCESS" '{{.Sidecar}}/verify?scope=read'

  # refresh with the client's id and secret, narrowing the scope to read
  curl -s -u demo-app:demo-secret -d grant_type=refresh_token -d refresh_token="$REFRESH" -d scope=read {{.Issuer}}/oauth2/token

  # the key ring, as security sees it
  TOKENWARDEN_ISSUER={{.Issuer}} TOKENWARDEN_CLIENT_ID=admin TOKENWARDEN_CLIENT_SECRET=admin-secret tokenwarden keys list

`))

func printDevBanner(w io.Writer, issuerURL, sidecarURL, grpcAddr, natsURL string, o devOptions) error {
	return devBanner.Execute(w, map[string]string{"Issuer": issuerURL, "Sidecar": sidecarURL, "GRPC": grpcAddr, "NATS": natsURL, "Data": o.data})
}
