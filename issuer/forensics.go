package issuer

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/jwks"
)

// ReadKeyRing reads and unseals the key ring stored in NATS under prefix
// with the key-encryption key kek: exactly what an attacker holding the
// issuer's NATS credential and the KEK holds. Incident drills use it (the
// "leaked key" scenario of test/chaos forges tokens with a real signing
// key), and so can a responder who must learn which keys were exposed.
func ReadKeyRing(ctx context.Context, js jetstream.JetStream, prefix string, kek []byte) (*jwks.Ring, error) {
	keks, err := newKeyEncryptionKeys(kek)
	if err != nil {
		return nil, err
	}
	kv, err := js.KeyValue(ctx, prefix+"_keys")
	if err != nil {
		return nil, fmt.Errorf("open key ring bucket: %w", err)
	}
	e, err := kv.Get(ctx, ringKey)
	if err != nil {
		return nil, fmt.Errorf("read key ring: %w", err)
	}
	m := &keyManager{keks: keks}
	return m.decode(e.Value())
}
