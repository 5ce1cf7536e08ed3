package issuer

import (
	"crypto/cipher"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// The key-encryption key (KEK) can be replaced in place: the issuer seals
// with its current KEK and opens with the current one or any previous one
// it is configured with, and `tokenwarden keys rewrap` re-seals every
// stored signing key under the current KEK (see rewrap.go). Each sealed key
// records the id of the KEK that sealed it, so opening picks the right KEK
// without trial decryption, and an issuer that lacks it says which one.

// KEKID names a key-encryption key without revealing it: the first 8 bytes
// of its SHA-256, in hex. An operator can compute it from the key file with
// `base64 -d key-encryption.key | sha256sum | cut -c1-16`.
func KEKID(kek []byte) string {
	sum := sha256.Sum256(kek)
	return hex.EncodeToString(sum[:8])
}

// validKEKID reports whether s has the form of a KEK id. Ids come from the
// key ring in NATS, which anyone with write access to the bucket can
// change: a malformed one is refused before it reaches a log line.
func validKEKID(s string) bool {
	if len(s) != 16 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// errUnknownKEK means a sealed signing key cannot be opened by any
// key-encryption key this issuer holds. A replica started before the KEK
// was replaced, or configured without the previous KEK, meets it.
var errUnknownKEK = errors.New("sealed under a key-encryption key this issuer does not hold")

type kek struct {
	id   string
	aead cipher.AEAD
}

// keyEncryptionKeys seals with the current KEK and opens with any it holds.
type keyEncryptionKeys struct {
	current  kek
	previous []kek
}

// newKeyEncryptionKeys builds the set; every key must be 32 bytes and
// appear once.
func newKeyEncryptionKeys(current []byte, previous ...[]byte) (*keyEncryptionKeys, error) {
	mk := func(b []byte) (kek, error) {
		aead, err := newAEAD(b)
		if err != nil {
			return kek{}, err
		}
		return kek{id: KEKID(b), aead: aead}, nil
	}
	cur, err := mk(current)
	if err != nil {
		return nil, fmt.Errorf("current key-encryption key: %w", err)
	}
	ks := &keyEncryptionKeys{current: cur}
	seen := map[string]bool{cur.id: true}
	for i, b := range previous {
		p, err := mk(b)
		if err != nil {
			return nil, fmt.Errorf("previous key-encryption key %d: %w", i+1, err)
		}
		if seen[p.id] {
			return nil, fmt.Errorf("previous key-encryption key %d (id %s) is given twice or is the current key", i+1, p.id)
		}
		seen[p.id] = true
		ks.previous = append(ks.previous, p)
	}
	return ks, nil
}

// currentID is the id of the KEK new seals use.
func (ks *keyEncryptionKeys) currentID() string { return ks.current.id }

// previousIDs are the ids of the KEKs kept only for opening.
func (ks *keyEncryptionKeys) previousIDs() []string {
	ids := make([]string, 0, len(ks.previous))
	for _, p := range ks.previous {
		ids = append(ids, p.id)
	}
	return ids
}

// held lists every KEK id, current first, for error messages.
func (ks *keyEncryptionKeys) held() string {
	return strings.Join(append([]string{ks.current.id}, ks.previousIDs()...), ", ")
}

func (ks *keyEncryptionKeys) seal(kid string, plain []byte) (sealed []byte, kekID string, err error) {
	sealed, err = seal(ks.current.aead, kid, plain)
	return sealed, ks.current.id, err
}

// unseal opens a signing key sealed under the KEK named kekID. An empty
// kekID is a record written before KEK ids were recorded: every held KEK is
// tried, the current one first.
func (ks *keyEncryptionKeys) unseal(kid, kekID string, sealed []byte) ([]byte, error) {
	all := append([]kek{ks.current}, ks.previous...)
	if kekID == "" {
		for _, k := range all {
			if plain, err := unseal(k.aead, kid, sealed); err == nil {
				return plain, nil
			}
		}
		return nil, fmt.Errorf("unseal key %s: none of the key-encryption keys this issuer holds (%s) opens it (%w, or the record is damaged)", kid, ks.held(), errUnknownKEK)
	}
	if !validKEKID(kekID) {
		return nil, fmt.Errorf("unseal key %s: malformed key-encryption key id", kid)
	}
	for _, k := range all {
		if k.id == kekID {
			return unseal(k.aead, kid, sealed)
		}
	}
	return nil, fmt.Errorf("unseal key %s: %w: %s (this issuer holds %s)", kid, errUnknownKEK, kekID, ks.held())
}

// decodeKEK parses a base64 KEK; where names its source for the error (never
// the value: it is a secret).
func decodeKEK(src, where string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(src))
	if err != nil || len(k) != 32 {
		return nil, fmt.Errorf("key-encryption key %s: want 32 bytes, base64-encoded", where)
	}
	return k, nil
}

// keyEncryptionKeys reads the current KEK and the previous ones from their
// files and variables: each must be 32 bytes, base64, and no key may be
// given twice (nor a previous key be the current one).
func (c *Config) keyEncryptionKeys() (current []byte, previous [][]byte, err error) {
	current, err = c.keyEncryptionKey()
	if err != nil {
		return nil, nil, err
	}
	seen := map[string]string{KEKID(current): "the current key-encryption key"}
	add := func(k []byte, where string) error {
		id := KEKID(k)
		if other, dup := seen[id]; dup {
			return fmt.Errorf("previous key-encryption key %s is the same key as %s (id %s)", where, other, id)
		}
		seen[id] = where
		previous = append(previous, k)
		return nil
	}
	for i, f := range c.PreviousKeyEncryptionKeyFiles {
		if strings.TrimSpace(f) == "" {
			return nil, nil, fmt.Errorf("previous_key_encryption_key_files item %d: empty file name", i+1)
		}
		b, err := os.ReadFile(f) // #nosec G304 -- operator configuration
		if err != nil {
			return nil, nil, fmt.Errorf("previous key-encryption key: %w", err)
		}
		k, err := decodeKEK(string(b), f)
		if err != nil {
			return nil, nil, err
		}
		if err := add(k, f); err != nil {
			return nil, nil, err
		}
	}
	for i, v := range c.PreviousKeyEncryptionKeys {
		where := fmt.Sprintf("TOKENWARDEN_PREVIOUS_KEY_ENCRYPTION_KEYS item %d", i+1)
		k, err := decodeKEK(v, where)
		if err != nil {
			return nil, nil, err
		}
		if err := add(k, where); err != nil {
			return nil, nil, err
		}
	}
	return current, previous, nil
}
