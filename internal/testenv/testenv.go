// Package testenv builds the real parts tests run against: an embedded
// NATS server and an issuer deployment's files (users, clients, keys), with
// argon2id parameters cheap enough for tests. Only tests import it.
package testenv

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/tokenwarden/tokenwarden/internal/embeddednats"
	"github.com/tokenwarden/tokenwarden/issuer/directory"
)

// Params keep argon2id cheap in tests; production parameters are exercised
// by the directory package's own tests.
var Params = directory.Params{Memory: 64, Time: 1, Threads: 1}

// NATS starts an embedded server with JetStream under dir, stopped when the
// test ends.
func NATS(t testing.TB, dir string) *embeddednats.Server {
	t.Helper()
	ns, err := embeddednats.Start(embeddednats.Config{Addr: "127.0.0.1:0", StoreDir: filepath.Join(dir, "nats")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Stop)
	return ns
}

// Hash hashes a password with Params.
func Hash(t testing.TB, s string) string {
	t.Helper()
	h, err := directory.HashPassword([]byte(s), Params)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// Deployment is an issuer configuration with its files written to disk.
// Users: alice/alice-pw, bob/bob-pw (scopes read). Clients: app/app-secret
// (all grants, read write, audience demo-api), other/other-secret
// (password+refresh, audience other-api), service/service-secret
// (client_credentials, read, audiences demo-api and reports),
// admin/admin-secret (client_credentials, tokenwarden:admin).
//
// It does not import package issuer (whose own tests use it); callers copy
// the fields into an issuer.Config.
type Deployment struct {
	UsersFile           string
	ClientsFile         string
	DistributionKeyFile string
	KeyEncryptionKey    string // base64
	DistributionKey     ed25519.PublicKey
}

// NewDeployment writes the files under dir.
func NewDeployment(t testing.TB, dir string) *Deployment {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	kek := make([]byte, 32)
	_, _ = rand.Read(kek)
	d := &Deployment{DistributionKey: pub, KeyEncryptionKey: base64.StdEncoding.EncodeToString(kek)}
	d.DistributionKeyFile = write("dist.key", string(pemKey))
	d.UsersFile = write("users.yaml", fmt.Sprintf(`users:
  - username: alice
    password_hash: %q
  - username: bob
    password_hash: %q
    scopes: [read]
`, Hash(t, "alice-pw"), Hash(t, "bob-pw")))
	d.ClientsFile = write("clients.yaml", fmt.Sprintf(`clients:
  - id: app
    secret_hash: %q
    grants: [password, refresh_token, client_credentials]
    scopes: [read, write]
    audience: demo-api
  - id: other
    secret_hash: %q
    grants: [password, refresh_token]
    scopes: [read, write]
    audience: other-api
  - id: service
    secret_hash: %q
    grants: [client_credentials]
    scopes: [read]
    audience: [demo-api, reports]
  - id: admin
    secret_hash: %q
    grants: [client_credentials]
    scopes: ["tokenwarden:admin"]
`, Hash(t, "app-secret"), Hash(t, "other-secret"), Hash(t, "service-secret"), Hash(t, "admin-secret")))
	return d
}
