package jwks

import (
	"crypto/ed25519"
	"crypto/rand"
)

func generateEd25519() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	return ed25519.GenerateKey(rand.Reader)
}

func trustedOf(priv ed25519.PrivateKey) []ed25519.PublicKey {
	return []ed25519.PublicKey{priv.Public().(ed25519.PublicKey)}
}
