package sidecar

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"time"

	"github.com/tokenwarden/tokenwarden/jwks"
)

// Config is the sidecar's configuration, filled by the command from a YAML
// file, TOKENWARDEN_* variables and flags; Validate runs before anything
// starts.
type Config struct {
	// Listen is the TCP address of the HTTP API; loopback by default, since
	// the app (or its proxy) in the same pod is the only client.
	Listen string `yaml:"listen"`
	// Socket is an optional Unix socket path served in addition.
	Socket string `yaml:"socket"`
	// GRPCAddr is the TCP address of the gRPC API (Envoy ext_authz
	// envoy.service.auth.v3.Authorization/Check and grpc.health.v1),
	// plaintext HTTP/2; loopback by default, for the proxy in the same pod.
	// Empty turns it off.
	GRPCAddr string `yaml:"grpc_addr"`
	// GRPCSocket is an optional Unix socket path for the gRPC API, served
	// in addition (or instead, with grpc_addr empty).
	GRPCSocket string `yaml:"grpc_socket"`

	// Issuer is the iss tokens must carry, exactly.
	Issuer string `yaml:"issuer"`
	// Audience lists accepted audiences; a token must name one.
	Audience []string `yaml:"audience"`
	// Algorithms is the allow-list of token algorithms (default all of
	// ES256, EdDSA, RS256).
	Algorithms []string `yaml:"algorithms"`
	// Leeway is the clock skew allowed for exp, nbf and iat.
	Leeway time.Duration `yaml:"leeway"`
	// MaxTokenSize is the largest token accepted, in bytes.
	MaxTokenSize int `yaml:"max_token_size"`
	// TokenCacheSize bounds the verified-token cache (entries); 0 disables
	// it.
	TokenCacheSize int `yaml:"token_cache_size"`

	NATS NATSConfig `yaml:"nats"`

	// DistributionPublicKeyFiles are PEM files of the Ed25519 keys bundles
	// and revocation events must be signed with. DistributionPublicKeys are
	// the same inline (PEM, or base64 of the 32 raw bytes), for environment
	// variables.
	DistributionPublicKeyFiles []string `yaml:"distribution_public_key_files"`
	DistributionPublicKeys     []string `yaml:"distribution_public_keys"`

	// CacheDir keeps the last good signed JWKS bundle on disk, so a
	// restarted sidecar serves at once even while NATS is unreachable.
	CacheDir string `yaml:"cache_dir"`
	// JWKSFallbackURL is the issuer's /.well-known/jwks.json, used only
	// when NATS is unreachable and no bundle is held. Empty (the default)
	// trusts signed bundles only.
	JWKSFallbackURL string `yaml:"jwks_fallback_url"`
	// KeyRefreshInterval is the least time between on-demand key refreshes
	// caused by tokens with an unknown kid.
	KeyRefreshInterval time.Duration `yaml:"key_refresh_interval"`
	// RevocationMaxStaleness is how long the revocation set may go without
	// being confirmed current against the stream before the sidecar
	// reports not ready. /verify keeps answering from the set it holds
	// (see docs/security.md).
	RevocationMaxStaleness time.Duration `yaml:"revocation_max_staleness"`
	// AccessLog turns the access log on: a line per request (method,
	// route, status, latency, peer; never tokens). At Info only the lines
	// someone must look at: denials, errors, slow requests and sampled
	// successes; the rest at Debug. Off: no line at all.
	AccessLog bool `yaml:"access_log"`
	// AccessLogSuccessSample logs 1 in N successful requests of a route at
	// Info (the others at Debug): 0 none, 1 every one. Every success at
	// Info is a line per verification, megabytes a second on a busy pod.
	AccessLogSuccessSample int `yaml:"access_log_success_sample"`
	// AccessLogSlow is the handler time from which a request is logged at
	// Info whatever its outcome; 0 turns it off.
	AccessLogSlow time.Duration `yaml:"access_log_slow"`
}

// NATSConfig says how to reach NATS.
type NATSConfig struct {
	URL       string `yaml:"url"`
	Prefix    string `yaml:"prefix"`
	CredsFile string `yaml:"creds_file"`
}

// Revocation staleness bound: the default, and the least accepted (the
// consumer confirms its set every quarter of the bound, at least every 15s
// and at most every 5s or so, and a bound within a few probes of that
// would flap).
const (
	DefaultRevocationMaxStaleness = time.Minute
	MinRevocationMaxStaleness     = 15 * time.Second
)

// DefaultGRPCAddr is the gRPC API's default address: loopback, for the
// Envoy (Istio's, or one of the app's) in the same pod.
const DefaultGRPCAddr = "127.0.0.1:9191"

// DefaultAccessLogSlow is half the 200ms that Envoy's gRPC ext_authz waits by
// default: a verification takes microseconds (a cache hit) to a fraction
// of a millisecond (a signature check), so a request this slow means a
// starved process (CPU throttling, a long GC pause), worth a line before
// proxies start timing out.
const DefaultAccessLogSlow = 100 * time.Millisecond

// DefaultConfig returns the contract's defaults.
func DefaultConfig() Config {
	return Config{
		Listen:                 "127.0.0.1:8181",
		GRPCAddr:               DefaultGRPCAddr,
		Leeway:                 jwks.DefaultLeeway,
		MaxTokenSize:           jwks.DefaultMaxTokenSize,
		TokenCacheSize:         10_000,
		NATS:                   NATSConfig{URL: "nats://127.0.0.1:4222", Prefix: "tokenwarden"},
		KeyRefreshInterval:     30 * time.Second,
		RevocationMaxStaleness: DefaultRevocationMaxStaleness,
		AccessLog:              true,
		AccessLogSlow:          DefaultAccessLogSlow,
	}
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.Listen == "" && c.Socket == "" {
		add("listen or socket: at least one is required")
	}
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			add("listen: %q: %w", c.Listen, err)
		}
	}
	if c.GRPCAddr != "" {
		_, port, err := net.SplitHostPort(c.GRPCAddr)
		switch {
		case err != nil:
			add("grpc_addr: %q: %w", c.GRPCAddr, err)
		case c.GRPCAddr == c.Listen && port != "0":
			add("grpc_addr: %q is also the HTTP listen address; give gRPC a port of its own", c.GRPCAddr)
		}
	}
	if c.GRPCSocket != "" && c.GRPCSocket == c.Socket {
		add("grpc_socket: %q is also the HTTP socket; give gRPC a path of its own", c.GRPCSocket)
	}
	if c.Issuer == "" {
		add("issuer: required (the iss tokens must carry)")
	}
	if len(c.Audience) == 0 {
		add("audience: at least one is required")
	}
	for _, a := range c.Algorithms {
		if _, err := jwks.ParseAlgorithm(a); err != nil {
			add("algorithms: %w", err)
		}
	}
	if c.Leeway < 0 || c.Leeway > 5*time.Minute {
		add("leeway: %s, want 0 to 5m", c.Leeway)
	}
	if c.MaxTokenSize < 256 || c.MaxTokenSize > 1<<20 {
		add("max_token_size: %d, want 256 to 1048576", c.MaxTokenSize)
	}
	if c.TokenCacheSize < 0 {
		add("token_cache_size: must not be negative")
	}
	if c.NATS.URL == "" || c.NATS.Prefix == "" {
		add("nats.url and nats.prefix are required")
	}
	if len(c.DistributionPublicKeyFiles) == 0 && len(c.DistributionPublicKeys) == 0 {
		add("distribution_public_key_files or TOKENWARDEN_DISTRIBUTION_PUBLIC_KEYS: at least one key is required")
	}
	if c.JWKSFallbackURL != "" {
		// The fallback JWKS is unsigned: only TLS vouches for it, so plain
		// http is refused except on loopback.
		u, err := url.Parse(c.JWKSFallbackURL)
		switch {
		case err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http"):
			add("jwks_fallback_url: %q is not an http(s) URL", c.JWKSFallbackURL)
		case u.Scheme == "http" && !isLoopbackHost(u.Hostname()):
			add("jwks_fallback_url: %q must use https (plain http only on loopback)", c.JWKSFallbackURL)
		}
	}
	if c.KeyRefreshInterval < time.Second {
		add("key_refresh_interval: %s is below 1s", c.KeyRefreshInterval)
	}
	if c.RevocationMaxStaleness < MinRevocationMaxStaleness {
		add("revocation_max_staleness: %s is below %s", c.RevocationMaxStaleness, MinRevocationMaxStaleness)
	}
	if c.AccessLogSuccessSample < 0 {
		add("access_log_success_sample: %d, want 0 (no success at Info), 1 (every one) or N (1 in N)", c.AccessLogSuccessSample)
	}
	if c.AccessLogSlow < 0 {
		add("access_log_slow: %s must not be negative (0 turns it off)", c.AccessLogSlow)
	}
	return errors.Join(errs...)
}

// trustedKeys decodes every configured distribution public key, each once:
// during a distribution-key rollover a key may be listed twice (in a file
// and inline), and a key listed twice would make each of its signatures a
// candidate of two keys, which the batch verifier checks one by one.
func (c *Config) trustedKeys() ([]ed25519.PublicKey, error) {
	var keys []ed25519.PublicKey
	for _, f := range c.DistributionPublicKeyFiles {
		b, err := os.ReadFile(f) // #nosec G304 -- operator configuration
		if err != nil {
			return nil, fmt.Errorf("distribution public key: %w", err)
		}
		k, err := ParseDistributionPublicKey(string(b))
		if err != nil {
			return nil, fmt.Errorf("distribution public key %s: %w", f, err)
		}
		keys = appendKey(keys, k)
	}
	for i, s := range c.DistributionPublicKeys {
		k, err := ParseDistributionPublicKey(s)
		if err != nil {
			return nil, fmt.Errorf("distribution public key #%d: %w", i+1, err)
		}
		keys = appendKey(keys, k)
	}
	return keys, nil
}

func appendKey(keys []ed25519.PublicKey, k ed25519.PublicKey) []ed25519.PublicKey {
	for _, have := range keys {
		if have.Equal(k) {
			return keys
		}
	}
	return append(keys, k)
}

// ParseDistributionPublicKey accepts a PKIX PEM "PUBLIC KEY" block or the
// base64 (standard or URL alphabet) of the 32 raw Ed25519 bytes. It is
// jwks.ParseDistributionPublicKey, which the issuer shares.
func ParseDistributionPublicKey(s string) (ed25519.PublicKey, error) {
	return jwks.ParseDistributionPublicKey(s)
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
