package directory

import (
	"errors"
	"testing"
)

// FuzzParse checks that Parse never panics, returns exactly one of a
// directory and an error, and that what it accepts is self-consistent.
// Seeds are in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, users, clients []byte) {
		d, err := Parse(users, clients)
		if (d == nil) == (err == nil) {
			t.Fatalf("Parse = %v, %v; want exactly one non-nil", d, err)
		}
		if err != nil {
			return
		}
		for name, r := range d.users {
			if name != r.user.Username || checkName("username", name) != nil {
				t.Fatalf("accepted bad username %q", name)
			}
			if _, err := parsePHC(r.user.PasswordHash); err != nil {
				t.Fatalf("accepted user %q with a malformed hash: %v", name, err)
			}
		}
		for id, r := range d.clients {
			if id != r.client.ID || checkName("id", id) != nil {
				t.Fatalf("accepted bad client id %q", id)
			}
			if len(r.client.Grants) == 0 || (r.client.AllowsGrant(GrantRefreshToken) && !r.client.AllowsGrant(GrantPassword)) {
				t.Fatalf("client %q: accepted grants %q", id, r.client.Grants)
			}
			if r.client.AccessTokenTTL < 0 || r.client.RefreshTokenTTL < 0 {
				t.Fatalf("client %q: accepted a negative TTL", id)
			}
		}
	})
}

// FuzzVerifyPassword checks that VerifyPassword never panics on malformed
// hashes, and that every hash parsePHC accepts is in canonical form. Seeds
// are in testdata/fuzz/FuzzVerifyPassword.
func FuzzVerifyPassword(f *testing.F) {
	f.Fuzz(func(t *testing.T, hash string, password []byte) {
		h, perr := parsePHC(hash)
		if perr == nil {
			if h.String() != hash {
				t.Fatalf("parsePHC accepted a non-canonical hash: %q re-encodes as %q", hash, h.String())
			}
			// A well-formed hash may legitimately ask for up to 1 GiB and
			// 10 passes; do not let the fuzzer spend that per input.
			if p := h.params; p.Memory > 1024 || p.Time > 2 {
				return
			}
		}
		ok, err := VerifyPassword(hash, password)
		if perr != nil {
			if err == nil || ok || !errors.Is(err, errMalformedHash) {
				t.Fatalf("VerifyPassword(malformed) = %v, %v", ok, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("VerifyPassword(well-formed) error: %v", err)
		}
	})
}
