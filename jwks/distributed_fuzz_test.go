package jwks

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
)

// FuzzVerifyDistributedBatch checks the batch verifier that a sidecar's
// replay of the revocation stream uses against the one-at-a-time
// VerifyDistributed: the input is split at '\n' into up to 16 JWS (a
// character base64url never contains), verified together with one and with
// two trusted keys. For every item the batch must accept exactly what
// VerifyDistributed accepts (apart from payloads that are not one JSON
// value, which the batch leaves to its caller to decode), and only what
// the standard decoders say a trusted key signed. One forged item in a
// batch must not change the verdict on the others.
func FuzzVerifyDistributedBatch(f *testing.F) {
	trusted, other := bundleFuzzKeys()
	f.Add([]byte(""))
	f.Add([]byte("a.b.c\n..\ne30.e30.e30"))
	f.Fuzz(func(t *testing.T, data []byte) {
		items := bytes.Split(data, []byte("\n"))
		if len(items) > 16 {
			items = items[:16]
		}
		for _, keys := range [][]ed25519.PublicKey{{pubOf(trusted)}, {pubOf(other), pubOf(trusted)}} {
			payloads, errs := VerifyDistributedBatch(items, BundleType, keys)
			if len(payloads) != len(items) || len(errs) != len(items) {
				t.Fatalf("%d items, %d payloads, %d errors", len(items), len(payloads), len(errs))
			}
			for i, item := range items {
				var raw json.RawMessage
				single := VerifyDistributed(item, BundleType, keys, &raw)
				batchOK := errs[i] == nil
				switch {
				case batchOK && payloads[i] == nil:
					t.Fatalf("item %d accepted without a payload", i)
				case !batchOK && payloads[i] != nil:
					t.Fatalf("item %d refused (%v) with a payload", i, errs[i])
				case single == nil && !batchOK:
					t.Fatalf("item %d: VerifyDistributed accepts, the batch refuses: %v", i, errs[i])
				case batchOK && single != nil && json.Valid(payloads[i]):
					t.Fatalf("item %d: the batch accepts, VerifyDistributed refuses: %v", i, single)
				}
				if !batchOK {
					continue
				}
				signed := false
				for _, k := range keys {
					signed = signed || signedBy(item, k)
				}
				parts := strings.Split(string(item), ".")
				want, err := base64.RawURLEncoding.DecodeString(parts[1])
				if !signed || err != nil || !bytes.Equal(want, payloads[i]) {
					t.Fatalf("item %d accepted: signed by a trusted key %v, payload %q (decodes to %q, %v)", i, signed, payloads[i], want, err)
				}
			}
		}
	})
}
