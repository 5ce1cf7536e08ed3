package injector

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// recheck is how often files are stat'ed for changes, at most.
const recheck = time.Second

// stamp identifies a version of a set of files by their modification times
// and sizes. Kubernetes updates Secret and ConfigMap volumes by swapping a
// symlink, which os.Stat follows, so a new version always has a new stamp.
type stamp string

func stampOf(files ...string) (stamp, error) {
	s := ""
	for _, f := range files {
		if f == "" {
			continue
		}
		fi, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		s += fmt.Sprintf("%s:%d:%d;", f, fi.ModTime().UnixNano(), fi.Size())
	}
	return stamp(s), nil
}

// CertReloader serves a TLS certificate from PEM files and re-reads them
// when they change, so a certificate renewed by cert-manager (or a new
// Helm-generated one) is used without a restart. A pair that does not load
// (say, the certificate was replaced and the key not yet) is logged and the
// previous one kept until the files settle.
type CertReloader struct {
	certFile, keyFile string
	log               *slog.Logger
	now               func() time.Time

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   stamp
	checked time.Time
}

// NewCertReloader loads the pair once; an error here is a configuration
// error.
func NewCertReloader(certFile, keyFile string, log *slog.Logger) (*CertReloader, error) {
	if log == nil {
		log = slog.Default()
	}
	r := &CertReloader{certFile: certFile, keyFile: keyFile, log: log, now: time.Now}
	st, err := stampOf(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate %s / key %s: %w", certFile, keyFile, err)
	}
	r.cert, r.stamp, r.checked = &cert, st, r.now()
	return r, nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (r *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := r.now(); now.Sub(r.checked) >= recheck {
		r.checked = now
		r.reloadLocked()
	}
	return r.cert, nil
}

func (r *CertReloader) reloadLocked() {
	st, err := stampOf(r.certFile, r.keyFile)
	if err != nil || st == r.stamp {
		if err != nil {
			r.log.Warn("TLS certificate files unreadable; serving the previous certificate", "err", err)
		}
		return
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		r.log.Warn("TLS certificate changed but does not load; serving the previous one", "err", err)
		return
	}
	r.cert, r.stamp = &cert, st
	r.log.Info("reloaded the TLS certificate", "cert", r.certFile)
}

// Source holds the current configuration and reloads it when its files
// change. A configuration that does not load is logged and the previous one
// kept.
type Source struct {
	load  func() (*Config, error)
	files func(*Config) []string
	log   *slog.Logger
	now   func() time.Time

	mu      sync.Mutex
	cfg     *Config
	stamp   stamp
	checked time.Time
}

// NewSource loads the configuration with load and watches the files that
// files names for it (the config file and the key files).
func NewSource(load func() (*Config, error), files func(*Config) []string, log *slog.Logger) (*Source, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &Source{load: load, files: files, log: log, now: time.Now}
	cfg, err := load()
	if err != nil {
		return nil, err
	}
	st, err := stampOf(files(cfg)...)
	if err != nil {
		return nil, err
	}
	s.cfg, s.stamp, s.checked = cfg, st, s.now()
	return s, nil
}

// Current returns the configuration in force, reloading it first if its
// files changed.
func (s *Source) Current() *Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if now.Sub(s.checked) < recheck {
		return s.cfg
	}
	s.checked = now
	st, err := stampOf(s.files(s.cfg)...)
	if err != nil || st == s.stamp {
		if err != nil {
			s.log.Warn("configuration files unreadable; keeping the configuration in force", "err", err)
		}
		return s.cfg
	}
	cfg, err := s.load()
	if err != nil {
		s.log.Error("configuration changed but does not load; keeping the one in force", "err", err)
		s.stamp = st // do not retry the same broken files every second
		return s.cfg
	}
	if st2, err := stampOf(s.files(cfg)...); err == nil {
		st = st2
	}
	s.cfg, s.stamp = cfg, st
	s.log.Info("reloaded the configuration", "trusted_keys", len(cfg.TrustedKeys()))
	return s.cfg
}
