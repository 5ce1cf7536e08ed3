package jwks

import (
	"encoding/json"
	"fmt"
	"sort"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// Document renders the public keys of ks as a JWKS (RFC 7517): kid, kty,
// alg and "use":"sig" with the public parameters only. Keys are sorted by kid
// so equal sets render to equal bytes.
func Document(ks *KeySet) ([]byte, error) {
	ids := ks.IDs()
	sort.Strings(ids)
	set := jwk.NewSet()
	for _, id := range ids {
		pk, _ := ks.Lookup(id)
		k, err := jwk.Import(pk.Key)
		if err != nil {
			return nil, fmt.Errorf("encode key %s: %w", id, err)
		}
		for name, v := range map[string]any{jwk.KeyIDKey: id, jwk.AlgorithmKey: pk.Alg.jwa(), jwk.KeyUsageKey: "sig"} {
			if err := k.Set(name, v); err != nil {
				return nil, fmt.Errorf("encode key %s: %w", id, err)
			}
		}
		if err := set.AddKey(k); err != nil {
			return nil, fmt.Errorf("encode key %s: %w", id, err)
		}
	}
	out, err := json.Marshal(set)
	if err != nil {
		return nil, fmt.Errorf("encode JWKS: %w", err)
	}
	return out, nil
}
