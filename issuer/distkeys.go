package issuer

import (
	"crypto/ed25519"
	"fmt"
	"os"

	"github.com/tokenwarden/tokenwarden/jwks"
)

// trustedDistributionKeys is own, the public half of this issuer's
// distribution key, followed by every other key of
// trusted_distribution_public_key_files and trusted_distribution_public_keys,
// each once. Bundles and revocation events are verified against this list.
func (c *Config) trustedDistributionKeys(own ed25519.PublicKey) ([]ed25519.PublicKey, error) {
	keys := []ed25519.PublicKey{own}
	add := func(k ed25519.PublicKey) {
		for _, have := range keys {
			if have.Equal(k) {
				return
			}
		}
		keys = append(keys, k)
	}
	for _, f := range c.TrustedDistributionPublicKeyFiles {
		b, err := os.ReadFile(f) // #nosec G304 -- operator configuration
		if err != nil {
			return nil, fmt.Errorf("trusted distribution public key: %w", err)
		}
		k, err := jwks.ParseDistributionPublicKey(string(b))
		if err != nil {
			return nil, fmt.Errorf("trusted distribution public key %s: %w", f, err)
		}
		add(k)
	}
	for i, s := range c.TrustedDistributionPublicKeys {
		k, err := jwks.ParseDistributionPublicKey(s)
		if err != nil {
			return nil, fmt.Errorf("trusted_distribution_public_keys #%d: %w", i+1, err)
		}
		add(k)
	}
	return keys, nil
}
