// Package injector is the mutating admission webhook of the Helm chart: it
// adds the tokenwarden sidecar to pods annotated tokenwarden.io/inject:
// "true", as a native sidecar (an init container with restartPolicy
// Always), so the application starts only once the sidecar holds verified
// keys and has replayed the revocation stream.
//
// It speaks admission.k8s.io/v1 over HTTPS and needs no access to the
// Kubernetes API: everything it writes into a pod comes from its own
// configuration and the pod's annotations.
package injector

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/tokenwarden/tokenwarden/sidecar"
)

// Annotations and labels the injector reads and writes.
const (
	// AnnotationInject opts a pod in: the value must be "true".
	AnnotationInject = "tokenwarden.io/inject"
	// AnnotationAudience overrides the accepted audiences (comma-separated).
	AnnotationAudience = "tokenwarden.io/audience"
	// AnnotationPort overrides the sidecar's HTTP port.
	AnnotationPort = "tokenwarden.io/port"
	// AnnotationGRPCPort overrides the loopback port of the sidecar's gRPC
	// API (Envoy ext_authz Check, for Istio's proxy in the pod); "off"
	// turns it off.
	AnnotationGRPCPort = "tokenwarden.io/grpc-port"
	// AnnotationStatus is set to StatusInjected on every injected pod; a pod
	// carrying it is never injected again.
	AnnotationStatus = "tokenwarden.io/status"
	StatusInjected   = "injected"
	// LabelSidecar marks injected pods, e.g. for NetworkPolicies that let
	// them reach NATS.
	LabelSidecar = "tokenwarden.io/sidecar"

	// ContainerName is the injected init container's name.
	ContainerName = "tokenwarden-sidecar"
	// PortName names the sidecar's container port.
	PortName = "tokenwarden"
	// CacheVolume is the emptyDir keeping the last good JWKS bundle across
	// sidecar restarts; CacheDir is where it is mounted.
	CacheVolume = "tokenwarden-cache"
	CacheDir    = "/var/cache/tokenwarden"
	// CredsVolume holds the NATS credentials file when NATS.CredsSecret is
	// set; CredsDir is where it is mounted.
	CredsVolume = "tokenwarden-nats-creds"
	CredsDir    = "/etc/tokenwarden/nats"
	credsFile   = "nats.creds" // #nosec G101 -- a file name, not a credential

	// sidecarUID is the numeric non-root user of the distroless image.
	sidecarUID = 65532
)

// Config is the injector's configuration (YAML, snake_case keys; see
// docs/kubernetes.md). The command fills it from a file, TOKENWARDEN_*
// variables and flags.
type Config struct {
	// Addr is the HTTPS listen address.
	Addr string `yaml:"addr"`
	// ShutdownDelay is how long the injector keeps answering after SIGTERM,
	// with /readyz failing, so the API server's calls move to another
	// replica before the listener closes. 0: stop at once. Read at start.
	ShutdownDelay time.Duration `yaml:"shutdown_delay"`
	// TLSCertFile and TLSKeyFile are the serving certificate and key (PEM),
	// re-read when they change. Both empty serves plain HTTP, which only a
	// local try can use: the API server calls webhooks over HTTPS.
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`
	// Namespace is the injector's own namespace: pods there are never
	// mutated, whatever the webhook's selectors say.
	Namespace string `yaml:"namespace"`

	// Image is the sidecar image; ImagePullPolicy its pull policy (empty:
	// the cluster's default).
	Image           string `yaml:"image"`
	ImagePullPolicy string `yaml:"image_pull_policy"`
	// Issuer is the iss the sidecars require.
	Issuer string `yaml:"issuer"`
	// Audience is the default accepted audience list, used for pods without
	// a tokenwarden.io/audience annotation. Empty makes the annotation
	// required.
	Audience []string `yaml:"audience"`
	// Port is the sidecar's default HTTP port (tokenwarden.io/port
	// overrides it per pod).
	Port int `yaml:"port"`
	// GRPCPort is the default port of the sidecar's gRPC API, on
	// 127.0.0.1 (tokenwarden.io/grpc-port overrides it per pod); 0 turns
	// it off by default.
	GRPCPort int `yaml:"grpc_port"`

	NATS NATSConfig `yaml:"nats"`

	// DistributionPublicKeys (PEM or base64 of the 32 raw bytes) and
	// DistributionPublicKeyFiles (PEM) are the keys the sidecars trust for
	// JWKS bundles and revocation events. Several are allowed, for a
	// rotation of the distribution key.
	DistributionPublicKeys     []string `yaml:"distribution_public_keys"`
	DistributionPublicKeyFiles []string `yaml:"distribution_public_key_files"`

	// Resources of the sidecar container, as Kubernetes quantities.
	Resources Resources `yaml:"resources"`
	// LogLevel and LogFormat of the sidecars.
	LogLevel  string `yaml:"log_level"`
	LogFormat string `yaml:"log_format"`
	// RevocationMaxStaleness is the sidecars' revocation_max_staleness:
	// how long their revocation set may go unconfirmed against NATS before
	// they report unready (docs/security.md, "Stale revocations").
	RevocationMaxStaleness time.Duration `yaml:"revocation_max_staleness"`

	// trusted holds the parsed keys, base64 of the raw bytes, after Load.
	trusted []string
}

// NATSConfig tells sidecars how to reach NATS.
type NATSConfig struct {
	// URL may carry user:password; it is written into the pod spec as is.
	URL    string `yaml:"url"`
	Prefix string `yaml:"prefix"`
	// URLSecret, when set, names a Secret in the pod's namespace whose key
	// holds the NATS URL (with credentials); it replaces URL.
	URLSecret SecretKeyRef `yaml:"url_secret"`
	// CredsSecret, when set, names a Secret in the pod's namespace whose key
	// holds a NATS credentials file (JWT and nkey seed).
	CredsSecret SecretKeyRef `yaml:"creds_secret"`
}

// SecretKeyRef names a key of a Secret in the injected pod's namespace.
type SecretKeyRef struct {
	Name string `yaml:"name"`
	Key  string `yaml:"key"`
}

// Set reports whether the reference names a Secret.
func (r SecretKeyRef) Set() bool { return r.Name != "" }

// Resources are the sidecar's requests and limits, e.g. cpu: 10m, memory:
// 64Mi.
type Resources struct {
	Requests map[string]string `yaml:"requests"`
	Limits   map[string]string `yaml:"limits"`
}

// DefaultConfig returns the defaults of a quick try without a config file:
// the given image, NATS at nats://tokenwarden-nats:4222.
func DefaultConfig(image string) Config {
	return Config{
		Addr:            ":8443",
		Image:           image,
		ImagePullPolicy: string(corev1.PullIfNotPresent),
		Issuer:          "http://tokenwarden-issuer:8080",
		Port:            8181,
		GRPCPort:        9191,
		NATS:            NATSConfig{URL: "nats://tokenwarden-nats:4222", Prefix: "tokenwarden"},
		Resources: Resources{
			Requests: map[string]string{"cpu": "10m", "memory": "32Mi"},
			Limits:   map[string]string{"memory": "128Mi"},
		},
		LogLevel:               "info",
		LogFormat:              "json",
		RevocationMaxStaleness: sidecar.DefaultRevocationMaxStaleness,
	}
}

// Load validates c and reads its key files; it reports every problem at
// once.
func (c *Config) Load() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.Addr == "" {
		add("addr: empty")
	}
	if c.ShutdownDelay < 0 {
		add("shutdown_delay must not be negative")
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		add("tls_cert_file and tls_key_file: set both or neither")
	}
	if c.Namespace != "" {
		for _, m := range validation.IsDNS1123Label(c.Namespace) {
			add("namespace %q: %s", c.Namespace, m)
		}
	}
	if c.Image == "" || strings.ContainsAny(c.Image, " \t\n") {
		add("image: %q is not an image reference", c.Image)
	}
	switch corev1.PullPolicy(c.ImagePullPolicy) {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		add("image_pull_policy: %q, want Always, IfNotPresent or Never", c.ImagePullPolicy)
	}
	if u, err := url.Parse(c.Issuer); c.Issuer == "" || err != nil || u.Host == "" {
		add("issuer: %q is not a URL (the iss tokens carry)", c.Issuer)
	}
	if _, err := ParseAudience(strings.Join(c.Audience, ",")); err != nil && len(c.Audience) > 0 {
		add("audience: %w", err)
	}
	if c.Port < 1 || c.Port > 65535 {
		add("port: %d, want 1 to 65535", c.Port)
	}
	if c.GRPCPort < 0 || c.GRPCPort > 65535 || (c.GRPCPort != 0 && c.GRPCPort == c.Port) {
		add("grpc_port: %d, want 1 to 65535 and not port, or 0 for off", c.GRPCPort)
	}
	if c.NATS.URL == "" && !c.NATS.URLSecret.Set() {
		add("nats.url or nats.url_secret: one is required")
	}
	if c.NATS.Prefix == "" || strings.ContainsAny(c.NATS.Prefix, ". *>\t") {
		add("nats.prefix: %q must be non-empty without dots, spaces or wildcards", c.NATS.Prefix)
	}
	for name, ref := range map[string]SecretKeyRef{"nats.url_secret": c.NATS.URLSecret, "nats.creds_secret": c.NATS.CredsSecret} {
		if !ref.Set() && ref.Key == "" {
			continue
		}
		for _, m := range validation.IsDNS1123Subdomain(ref.Name) {
			add("%s.name %q: %s", name, ref.Name, m)
		}
		for _, m := range validation.IsConfigMapKey(ref.Key) {
			add("%s.key %q: %s", name, ref.Key, m)
		}
	}
	if _, err := c.Resources.requirements(); err != nil {
		add("resources: %w", err)
	}
	var lvl = map[string]bool{"debug": true, "info": true, "warn": true, "error": true}
	if !lvl[c.LogLevel] {
		add("log_level: %q, want debug, info, warn or error", c.LogLevel)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		add("log_format: %q, want text or json", c.LogFormat)
	}
	if c.RevocationMaxStaleness < sidecar.MinRevocationMaxStaleness {
		add("revocation_max_staleness: %s is below %s", c.RevocationMaxStaleness, sidecar.MinRevocationMaxStaleness)
	}
	c.trusted = nil
	for i, s := range c.DistributionPublicKeys {
		k, err := sidecar.ParseDistributionPublicKey(s)
		if err != nil {
			add("distribution_public_keys #%d: %w", i+1, err)
			continue
		}
		c.addTrusted(k)
	}
	for _, f := range c.DistributionPublicKeyFiles {
		b, err := os.ReadFile(f) // #nosec G304 -- operator configuration
		if err != nil {
			add("distribution_public_key_files: %w", err)
			continue
		}
		k, err := sidecar.ParseDistributionPublicKey(string(b))
		if err != nil {
			add("distribution_public_key_files %s: %w", f, err)
			continue
		}
		c.addTrusted(k)
	}
	return errors.Join(errs...)
}

// TrustedKeys returns the distribution public keys (base64 of the raw
// bytes) as loaded by Load.
func (c *Config) TrustedKeys() []string { return c.trusted }

// addTrusted adds k to the trusted keys unless it is there: during a
// distribution-key rollover issuer.keys.extraTrustedPublicKeys may repeat
// the key of the keys Secret, and a sidecar given a key twice checks its
// signatures one by one instead of in batches.
func (c *Config) addTrusted(k ed25519.PublicKey) {
	b := base64.StdEncoding.EncodeToString(k)
	if !slices.Contains(c.trusted, b) {
		c.trusted = append(c.trusted, b)
	}
}

func (r Resources) requirements() (corev1.ResourceRequirements, error) {
	var out corev1.ResourceRequirements
	conv := func(in map[string]string, what string) (corev1.ResourceList, error) {
		if len(in) == 0 {
			return nil, nil
		}
		list := corev1.ResourceList{}
		for name, v := range in {
			switch corev1.ResourceName(name) {
			case corev1.ResourceCPU, corev1.ResourceMemory, corev1.ResourceEphemeralStorage:
			default:
				return nil, fmt.Errorf("%s: unsupported resource %q (want cpu, memory or ephemeral-storage)", what, name)
			}
			q, err := resource.ParseQuantity(v)
			if err != nil {
				return nil, fmt.Errorf("%s.%s: %q: %w", what, name, v, err)
			}
			list[corev1.ResourceName(name)] = q
		}
		return list, nil
	}
	var err error
	if out.Requests, err = conv(r.Requests, "requests"); err != nil {
		return out, err
	}
	if out.Limits, err = conv(r.Limits, "limits"); err != nil {
		return out, err
	}
	for name, req := range out.Requests {
		if lim, ok := out.Limits[name]; ok && req.Cmp(lim) > 0 {
			return out, fmt.Errorf("requests.%s %s is above limits.%s %s", name, req.String(), name, lim.String())
		}
	}
	return out, nil
}

// ParseAudience splits a comma-separated audience list; every entry must be
// non-empty and free of whitespace.
func ParseAudience(s string) ([]string, error) {
	var out []string
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if strings.ContainsAny(a, " \t\r\n") || strings.ContainsFunc(a, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return nil, fmt.Errorf("audience %q contains whitespace or control characters", a)
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, errors.New("no audience given")
	}
	return out, nil
}
