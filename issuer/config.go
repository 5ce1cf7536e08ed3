package issuer

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/jwks"
)

// Config is the issuer's configuration. The command fills it from a YAML
// file, TOKENWARDEN_* environment variables and flags (in rising order of
// precedence); Validate runs before anything starts, so a bad value stops
// the process with one clear line instead of a half-working service.
type Config struct {
	// Issuer is the "iss" of every token and the base of discovery
	// documents, e.g. https://auth.example.com.
	Issuer string `yaml:"issuer"`
	// Listen is the HTTP listen address.
	Listen string `yaml:"listen"`

	NATS NATSConfig `yaml:"nats"`

	UsersFile   string `yaml:"users_file"`
	ClientsFile string `yaml:"clients_file"`

	// DistributionKeyFile holds the Ed25519 private key (PKCS #8 PEM) that
	// signs JWKS bundles and revocation events for the sidecars.
	DistributionKeyFile string `yaml:"distribution_key_file"`
	// TrustedDistributionPublicKeyFiles (PKIX PEM files) and
	// TrustedDistributionPublicKeys (inline: PEM, or base64 of the 32 raw
	// bytes) are distribution public keys whose bundles and revocation
	// events this issuer accepts besides its own key's: the other key of a
	// distribution-key rollover, so that replicas signing with the old and
	// the new key apply each other's events and count each other's
	// bundles (docs/operations.md, "Rolling over the distribution key").
	// While any is set, the issuer also re-signs with its own key every
	// live event that only another key signed (see resign.go).
	TrustedDistributionPublicKeyFiles []string `yaml:"trusted_distribution_public_key_files"`
	TrustedDistributionPublicKeys     []string `yaml:"trusted_distribution_public_keys"`
	// KeyEncryptionKeyFile holds the 32-byte key (base64) that seals token
	// signing keys in NATS. KeyEncryptionKey is the same inline (use the
	// TOKENWARDEN_KEY_ENCRYPTION_KEY variable rather than a file on disk).
	KeyEncryptionKeyFile string `yaml:"key_encryption_key_file"`
	KeyEncryptionKey     string `yaml:"-"`
	// PreviousKeyEncryptionKeyFiles hold earlier key-encryption keys
	// (base64, one per file) that stored signing keys may still be sealed
	// under while the KEK is replaced: the issuer opens with them, never
	// seals. PreviousKeyEncryptionKeys are the same inline
	// (TOKENWARDEN_PREVIOUS_KEY_ENCRYPTION_KEYS, comma-separated); both
	// lists are used. See keyEncryptionKeys in kek.go.
	PreviousKeyEncryptionKeyFiles []string `yaml:"previous_key_encryption_key_files"`
	PreviousKeyEncryptionKeys     []string `yaml:"-"`

	Keys KeysConfig `yaml:"keys"`

	// AccessTokenTTL and RefreshTokenTTL are the defaults for clients that
	// set none.
	AccessTokenTTL  time.Duration `yaml:"access_token_ttl"`
	RefreshTokenTTL time.Duration `yaml:"refresh_token_ttl"`
	// Leeway is the clock skew verifiers allow; retired keys stay published
	// for the longest access-token lifetime plus this.
	Leeway time.Duration `yaml:"leeway"`

	RateLimit RateLimitConfig `yaml:"rate_limit"`

	// MaxBodyBytes caps request bodies.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`

	// ShutdownDelay is how long the command keeps serving after SIGTERM,
	// with /readyz failing, so load balancers stop sending requests before
	// the listener closes (a rolling update drops none). 0: stop at once.
	ShutdownDelay time.Duration `yaml:"shutdown_delay"`
}

// NATSConfig says how to reach NATS.
type NATSConfig struct {
	URL string `yaml:"url"`
	// Prefix names the buckets and streams (<prefix>_jwks, ...).
	Prefix string `yaml:"prefix"`
	// CredsFile is a NATS credentials file (JWT + nkey), optional.
	CredsFile string `yaml:"creds_file"`
	// Replicas of the KV buckets: 1 for a single server, 3 for a cluster.
	Replicas int `yaml:"replicas"`
	// RefreshRetention bounds how long an unused refresh-token family is
	// kept; it must be at least the longest refresh-token lifetime.
	RefreshRetention time.Duration `yaml:"refresh_retention"`
	// MaxConsumers is how many consumers the JWKS bucket and the revocation
	// stream accept: every sidecar holds one of each. nats-server's own
	// default is 1,000 per stream, too few for a large cluster.
	MaxConsumers int `yaml:"max_consumers"`
}

// KeysConfig is the rotation policy of the signing keys.
type KeysConfig struct {
	Algorithm        string        `yaml:"algorithm"`
	RotationPeriod   time.Duration `yaml:"rotation_period"`
	PropagationDelay time.Duration `yaml:"propagation_delay"`
}

// RateLimitConfig limits failed logins. Only failures count: a user who
// types the password right is never slowed down.
type RateLimitConfig struct {
	// FailuresPerUser is how many failed logins a username may have per
	// minute before further attempts get 429.
	FailuresPerUser int `yaml:"failures_per_user"`
	// FailuresPerIP is the same per client IP address.
	FailuresPerIP int `yaml:"failures_per_ip"`
}

// DefaultConfig returns the contract's defaults.
func DefaultConfig() Config {
	return Config{
		Issuer: "http://127.0.0.1:8080",
		Listen: ":8080",
		NATS: NATSConfig{
			URL:              "nats://127.0.0.1:4222",
			Prefix:           "tokenwarden",
			Replicas:         1,
			RefreshRetention: 7 * 24 * time.Hour,
			MaxConsumers:     100_000,
		},
		Keys: KeysConfig{
			Algorithm:        string(jwks.ES256),
			RotationPeriod:   24 * time.Hour,
			PropagationDelay: 5 * time.Minute,
		},
		AccessTokenTTL:  10 * time.Minute,
		RefreshTokenTTL: 24 * time.Hour,
		Leeway:          30 * time.Second,
		RateLimit:       RateLimitConfig{FailuresPerUser: 5, FailuresPerIP: 20},
		MaxBodyBytes:    64 << 10,
	}
}

// Validate reports every problem with c at once.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if u, err := url.Parse(c.Issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		add("issuer: %q is not an http(s) URL without query or fragment", c.Issuer)
	}
	if c.Listen == "" {
		add("listen: empty")
	}
	if c.NATS.URL == "" {
		add("nats.url: empty")
	}
	if c.NATS.Prefix == "" || strings.ContainsAny(c.NATS.Prefix, ". *>\t") {
		add("nats.prefix: %q must be non-empty without dots, spaces or wildcards", c.NATS.Prefix)
	}
	if c.NATS.MaxConsumers < 1000 {
		add("nats.max_consumers: %d, want at least 1000 (one per sidecar)", c.NATS.MaxConsumers)
	}
	if c.NATS.Replicas < 1 || c.NATS.Replicas > 5 {
		add("nats.replicas: %d, want 1 to 5", c.NATS.Replicas)
	}
	if c.DistributionKeyFile == "" {
		add("distribution_key_file: required")
	}
	for i, k := range c.TrustedDistributionPublicKeys {
		if _, err := jwks.ParseDistributionPublicKey(k); err != nil {
			add("trusted_distribution_public_keys #%d: %w", i+1, err)
		}
	}
	if c.KeyEncryptionKeyFile == "" && c.KeyEncryptionKey == "" {
		add("key_encryption_key_file or TOKENWARDEN_KEY_ENCRYPTION_KEY: required")
	}
	if _, err := jwks.ParseAlgorithm(c.Keys.Algorithm); err != nil {
		add("keys.algorithm: %w", err)
	}
	if c.AccessTokenTTL <= 0 || c.RefreshTokenTTL <= 0 {
		add("access_token_ttl and refresh_token_ttl must be positive")
	}
	if c.NATS.RefreshRetention < c.RefreshTokenTTL {
		add("nats.refresh_retention %s is shorter than refresh_token_ttl %s", c.NATS.RefreshRetention, c.RefreshTokenTTL)
	}
	if c.Leeway <= 0 {
		// Verifiers read 0 as their 30s default, while revocations would
		// expire at exp+0: a revoked token would come back for 30s.
		add("leeway must be positive (default 30s): it is the clock skew every verifier allows, and revocations are kept that long past a token's exp")
	}
	if c.RateLimit.FailuresPerUser < 1 || c.RateLimit.FailuresPerIP < 1 {
		add("rate_limit: failures_per_user and failures_per_ip must be at least 1")
	}
	if c.ShutdownDelay < 0 {
		add("shutdown_delay must not be negative")
	}
	if c.MaxBodyBytes < 1024 {
		add("max_body_bytes: %d is below 1024", c.MaxBodyBytes)
	}
	if err := c.policy(c.AccessTokenTTL).Validate(); err != nil {
		add("keys: %w", err)
	}
	return errors.Join(errs...)
}

func (c *Config) policy(maxAccessTTL time.Duration) jwks.Policy {
	return jwks.Policy{
		Alg:              jwks.Algorithm(c.Keys.Algorithm),
		RotationPeriod:   c.Keys.RotationPeriod,
		PropagationDelay: c.Keys.PropagationDelay,
		RetainRetired:    maxAccessTTL + c.Leeway,
	}
}

// LoadDistributionKey reads an Ed25519 private key in PKCS #8 PEM.
func LoadDistributionKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path) // #nosec G304 -- operator configuration
	if err != nil {
		return nil, fmt.Errorf("distribution key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("distribution key %s: want a PEM \"PRIVATE KEY\" block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("distribution key %s: %w", path, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("distribution key %s: want Ed25519, got %T", path, k)
	}
	return ek, nil
}

// EncodeDistributionKey renders key as PKCS #8 PEM.
func EncodeDistributionKey(key ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// EncodeDistributionPublicKey renders the public half as PKIX PEM, the form
// sidecars are configured with.
func EncodeDistributionPublicKey(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// keyEncryptionKey returns the 32-byte KEK from the inline value or file.
func (c *Config) keyEncryptionKey() ([]byte, error) {
	src, where := c.KeyEncryptionKey, "TOKENWARDEN_KEY_ENCRYPTION_KEY"
	if src == "" {
		b, err := os.ReadFile(c.KeyEncryptionKeyFile) // #nosec G304 -- operator configuration
		if err != nil {
			return nil, fmt.Errorf("key-encryption key: %w", err)
		}
		src, where = string(b), c.KeyEncryptionKeyFile
	}
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(src))
	if err != nil || len(k) != 32 {
		return nil, fmt.Errorf("key-encryption key %s: want 32 bytes, base64-encoded", where)
	}
	return k, nil
}
