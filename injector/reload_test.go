package injector

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func writePair(t *testing.T, dir, cn string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{cn}}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func leafCN(t *testing.T, r *CertReloader) string {
	t.Helper()
	c, err := r.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	x, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return x.Subject.CommonName
}

func TestCertReloaderPicksUpNewCertificates(t *testing.T) {
	dir := t.TempDir()
	cf, kf := writePair(t, dir, "one.example")
	r, err := NewCertReloader(cf, kf, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r.now = func() time.Time { return now }
	if cn := leafCN(t, r); cn != "one.example" {
		t.Fatalf("cn %q", cn)
	}
	writePair(t, dir, "two.example")
	future := now.Add(2 * time.Hour)
	_ = os.Chtimes(cf, future, future)
	if cn := leafCN(t, r); cn != "one.example" {
		t.Fatal("re-read before the recheck interval")
	}
	now = now.Add(2 * recheck)
	if cn := leafCN(t, r); cn != "two.example" {
		t.Fatalf("after a change: cn %q, want two.example", cn)
	}
	// A broken pair keeps the last good certificate.
	if err := os.WriteFile(kf, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * recheck)
	if cn := leafCN(t, r); cn != "two.example" {
		t.Fatalf("after a broken update: cn %q", cn)
	}
	if _, err := NewCertReloader(cf, kf, nil); err == nil {
		t.Fatal("a broken pair must fail at start")
	}
}

func TestSourceReloadsChangedFiles(t *testing.T) {
	f := filepath.Join(t.TempDir(), "audience")
	if err := os.WriteFile(f, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func() (*Config, error) {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		if string(b) == "broken" {
			return nil, os.ErrInvalid
		}
		c := DefaultConfig("img")
		c.Audience = []string{string(b)}
		return &c, nil
	}
	s, err := NewSource(load, func(*Config) []string { return []string{f} }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	s.now = func() time.Time { return now }
	step := func(content string) string {
		if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		future := now.Add(time.Hour)
		_ = os.Chtimes(f, future, future)
		now = now.Add(2 * recheck)
		return s.Current().Audience[0]
	}
	if got := step("two"); got != "two" {
		t.Fatalf("audience %q after a change", got)
	}
	if got := step("broken"); got != "two" {
		t.Fatalf("a broken file replaced the configuration: %q", got)
	}
	if got := step("three"); got != "three" {
		t.Fatalf("audience %q after the file was fixed", got)
	}
}
