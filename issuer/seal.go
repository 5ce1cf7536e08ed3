package issuer

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
)

// Private signing keys are stored in NATS sealed with AES-256-GCM under the
// key-encryption key, which lives only in the issuer's Secret or
// environment: whoever can read the KV bucket still cannot sign tokens. The
// kid is the additional data, so a sealed key cannot be swapped under
// another kid's record.

func newAEAD(kek []byte) (cipher.AEAD, error) {
	if len(kek) != 32 {
		return nil, errors.New("key-encryption key must be 32 bytes")
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func sealAD(kid string) []byte { return []byte("tokenwarden signing key " + kid) }

func seal(aead cipher.AEAD, kid string, plain []byte) ([]byte, error) {
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plain)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal key %s: %w", kid, err)
	}
	return aead.Seal(nonce, nonce, plain, sealAD(kid)), nil
}

func unseal(aead cipher.AEAD, kid string, sealed []byte) ([]byte, error) {
	n := aead.NonceSize()
	if len(sealed) < n+aead.Overhead() {
		return nil, fmt.Errorf("unseal key %s: too short", kid)
	}
	plain, err := aead.Open(nil, sealed[:n], sealed[n:], sealAD(kid))
	if err != nil {
		return nil, fmt.Errorf("unseal key %s: wrong key-encryption key or damaged record", kid)
	}
	return plain, nil
}
