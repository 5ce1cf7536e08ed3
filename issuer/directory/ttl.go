package directory

import "time"

// MaxAccessTokenTTL is the longest access-token lifetime any client sets
// (0 when none sets one). The issuer keeps a retired signing key published
// at least this long, so no token outlives its key.
func (d *Directory) MaxAccessTokenTTL() time.Duration {
	var longest time.Duration
	for _, r := range d.clients {
		longest = max(longest, r.client.AccessTokenTTL)
	}
	return longest
}
