package jwks

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// TestVerifyDistributedBatch checks that a batch answers, input by input,
// what VerifyDistributed answers: valid inputs by either of two trusted
// keys, forged, tampered and malformed ones, mixed in one batch large
// enough to be checked as batches.
func TestVerifyDistributedBatch(t *testing.T) {
	const typ = "test+jws"
	pub1, priv1, _ := ed25519.GenerateKey(rand.Reader)
	pub2, priv2, _ := ed25519.GenerateKey(rand.Reader)
	_, stranger, _ := ed25519.GenerateKey(rand.Reader)
	trusted := []ed25519.PublicKey{pub1, pub2}
	sign := func(key ed25519.PrivateKey, typ string, i int) []byte {
		out, err := SignDistributed(map[string]int{"n": i}, typ, key)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	var data [][]byte
	for i := range 40 {
		switch i % 8 {
		case 0, 1, 2:
			data = append(data, sign(priv1, typ, i))
		case 3, 4:
			data = append(data, sign(priv2, typ, i))
		case 5:
			data = append(data, sign(stranger, typ, i))
		case 6: // payload swapped for another signed by the same key
			a, b := sign(priv1, typ, i), sign(priv1, typ, i+1000)
			pa, pb := bytes.Split(a, []byte(".")), bytes.Split(b, []byte("."))
			data = append(data, bytes.Join([][]byte{pa[0], pb[1], pa[2]}, []byte(".")))
		case 7:
			switch i {
			case 7:
				data = append(data, sign(priv1, "other+jws", i))
			case 15:
				data = append(data, []byte("not.a.jws"))
			case 23:
				data = append(data, nil)
			default:
				s := sign(priv2, typ, i)
				s[len(s)-2] ^= 1 // signature bit
				data = append(data, s)
			}
		}
	}
	payloads, errs := VerifyDistributedBatch(data, typ, trusted)
	valid := 0
	for i, d := range data {
		var want map[string]int
		wantErr := VerifyDistributed(d, typ, trusted, &want)
		if (errs[i] == nil) != (wantErr == nil) {
			t.Fatalf("input %d: batch error %v, VerifyDistributed error %v", i, errs[i], wantErr)
		}
		if wantErr != nil {
			if errs[i].Error() != wantErr.Error() {
				t.Errorf("input %d: batch says %q, VerifyDistributed %q", i, errs[i], wantErr)
			}
			if payloads[i] != nil {
				t.Errorf("input %d: refused, yet a payload is returned", i)
			}
			continue
		}
		valid++
		var got map[string]int
		if err := json.Unmarshal(payloads[i], &got); err != nil || got["n"] != want["n"] {
			t.Errorf("input %d: payload %s, want n=%d", i, payloads[i], want["n"])
		}
	}
	if valid != 25 {
		t.Errorf("%d inputs valid, want 25", valid)
	}

	_, errs = VerifyDistributedBatch(data[:3], typ, nil)
	for i, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "no trusted") {
			t.Errorf("no trusted key, input %d: %v", i, err)
		}
	}
}

func BenchmarkVerifyDistributedBatch(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	data := make([][]byte, 64)
	for i := range data {
		var err error
		if data[i], err = SignDistributed(map[string]string{"id": fmt.Sprint(i)}, "test+jws", priv); err != nil {
			b.Fatal(err)
		}
	}
	trusted := []ed25519.PublicKey{pub}
	b.Run("one-by-one", func(b *testing.B) {
		for b.Loop() {
			for _, d := range data {
				var v map[string]string
				if err := VerifyDistributed(d, "test+jws", trusted, &v); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("batch", func(b *testing.B) {
		for b.Loop() {
			if _, errs := VerifyDistributedBatch(data, "test+jws", trusted); errs[0] != nil {
				b.Fatal(errs[0])
			}
		}
	})
}
