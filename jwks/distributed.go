package jwks

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"

	"github.com/tokenwarden/tokenwarden/internal/edbatch"
)

// SignDistributed makes a compact EdDSA JWS of v with the given typ and the
// distribution key's id as kid. Bundles and revocation events both travel
// this way.
func SignDistributed(v any, typ string, key ed25519.PrivateKey) ([]byte, error) {
	payload, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", typ, err)
	}
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.TypeKey, typ); err != nil {
		return nil, err
	}
	if err := hdr.Set(jws.KeyIDKey, DistributionKeyID(key.Public().(ed25519.PublicKey))); err != nil {
		return nil, err
	}
	out, err := jws.Sign(payload, jws.WithKey(jwa.EdDSA(), key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", typ, err)
	}
	return out, nil
}

var errNoTrustedKey = errors.New("signature does not verify with any trusted distribution key")

// VerifyDistributed checks a distribution-key JWS of the given typ against
// the trusted keys and decodes its payload into v. Unknown payload fields are
// ignored (they are signed, and a newer issuer may add some during a rolling
// upgrade); a missing signature, another typ or trailing data are errors.
//
// It parses the compact form itself, as strictly as the token verifier:
// exactly three parts of canonical base64url, a header with only alg
// (EdDSA), typ and kid, a 64-byte signature checked with crypto/ed25519
// before the payload is decoded. A sidecar replaying a long revocation
// stream spends its time here, so there is no general JOSE machinery.
func VerifyDistributed(data []byte, typ string, trusted []ed25519.PublicKey, v any) error {
	if len(trusted) == 0 {
		return errors.New("no trusted distribution key configured")
	}
	d, err := parseDistributed(data, typ, nil)
	if err != nil {
		return err
	}
	ok := false
	for _, pub := range trusted {
		if d.mayBeSignedBy(pub, DistributionKeyID(pub)) && ed25519.Verify(pub, d.input, d.sig) {
			ok = true
			break
		}
	}
	if !ok {
		return errNoTrustedKey
	}
	payload, err := d.payload()
	if err != nil {
		return err
	}
	pdec := json.NewDecoder(bytes.NewReader(payload))
	if err := pdec.Decode(v); err != nil {
		return fmt.Errorf("decode payload: %w", err)
	}
	if pdec.More() {
		return errors.New("trailing data after payload")
	}
	return nil
}

// VerifyDistributedBatch is VerifyDistributed for many JWS of one typ: it
// returns, for each data[i], the payload its signature covers (JSON, not
// yet decoded) or why it was refused. Signatures by the same key are
// checked together (internal/edbatch), which is what makes a sidecar's
// replay of a long revocation stream fast; when a batch fails, each of its
// signatures is checked alone, so one forged input costs the others
// nothing but time and is refused exactly as VerifyDistributed would.
func VerifyDistributedBatch(data [][]byte, typ string, trusted []ed25519.PublicKey) (payloads [][]byte, errs []error) {
	payloads, errs = make([][]byte, len(data)), make([]error, len(data))
	if len(trusted) == 0 {
		for i := range errs {
			errs[i] = errors.New("no trusted distribution key configured")
		}
		return payloads, errs
	}
	kids := make([]string, len(trusted))
	for k, pub := range trusted {
		kids[k] = DistributionKeyID(pub)
	}
	parsed := make([]*distributed, len(data))
	// Group the inputs by the one key that may have signed them. An input
	// that several keys may have signed (no kid, several trusted keys) is
	// checked alone.
	groups := make(map[int][]int, len(trusted))
	var prev *distributed // the last input that parsed: the next one likely has its header
	for i, in := range data {
		d, err := parseDistributed(in, typ, prev)
		if err != nil {
			errs[i] = err
			continue
		}
		parsed[i], prev = d, d
		key, candidates := -1, 0
		for k, pub := range trusted {
			if d.mayBeSignedBy(pub, kids[k]) {
				key, candidates = k, candidates+1
			}
		}
		switch candidates {
		case 0:
			errs[i] = errNoTrustedKey
		case 1:
			groups[key] = append(groups[key], i)
		default:
			ok := false
			for k, pub := range trusted {
				if d.mayBeSignedBy(pub, kids[k]) && ed25519.Verify(pub, d.input, d.sig) {
					ok = true
					break
				}
			}
			if !ok {
				errs[i] = errNoTrustedKey
			}
		}
	}
	for k, idx := range groups {
		msgs, sigs := make([][]byte, len(idx)), make([][]byte, len(idx))
		for j, i := range idx {
			msgs[j], sigs[j] = parsed[i].input, parsed[i].sig
		}
		if edbatch.Verify(trusted[k], msgs, sigs) {
			continue
		}
		for j, i := range idx {
			if !ed25519.Verify(trusted[k], msgs[j], sigs[j]) {
				errs[i] = errNoTrustedKey
			}
		}
	}
	for i, d := range parsed {
		if errs[i] == nil && d != nil {
			payloads[i], errs[i] = d.payload()
		}
	}
	return payloads, errs
}

// distributed is a compact JWS of the distribution key, parsed but not yet
// verified.
type distributed struct {
	header     []byte // the protected header, base64url, as it came
	kid        string
	input      []byte // the signing input: header.payload
	sig        []byte
	payloadB64 []byte
}

// parseDistributed parses data as strictly as VerifyDistributed documents,
// without looking at the payload. prev, when not nil, is an input parsed
// before with the same typ: a header of the same bytes is not decoded again
// (one issuer's events all carry the same header).
func parseDistributed(data []byte, typ string, prev *distributed) (*distributed, error) {
	first := bytes.IndexByte(data, '.')
	second := first + 1 + bytes.IndexByte(data[first+1:], '.')
	if first <= 0 || second <= first+1 || second == len(data)-1 || bytes.IndexByte(data[second+1:], '.') >= 0 {
		return nil, errors.New("parse: not a compact JWS of three non-empty parts")
	}
	for _, c := range data {
		if c != '.' && !verifyB64Alphabet[c] {
			return nil, errors.New("parse: not base64url")
		}
	}
	sig, err := verifyB64.DecodeString(string(data[second+1:]))
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil, errors.New("parse signature: want 64 bytes of base64url")
	}
	d := &distributed{header: data[:first], input: data[:second], sig: sig, payloadB64: data[first+1 : second]}
	if prev != nil && bytes.Equal(prev.header, d.header) {
		d.kid = prev.kid
		return d, nil
	}
	hdrJSON, err := verifyB64.DecodeString(string(data[:first]))
	if err != nil {
		return nil, fmt.Errorf("parse header: %w", err)
	}
	var hdr struct {
		Alg string `json:"alg"`
		Typ string `json:"typ"`
		Kid string `json:"kid"`
	}
	dec := json.NewDecoder(bytes.NewReader(hdrJSON))
	dec.DisallowUnknownFields() // crit, jwk, jku, b64, ...: none belongs here
	if err := dec.Decode(&hdr); err != nil || dec.More() {
		return nil, errors.New("parse header: want a JSON object with only alg, typ and kid")
	}
	if hdr.Alg != "EdDSA" {
		return nil, errors.New("signature algorithm is not EdDSA")
	}
	if hdr.Typ != typ {
		return nil, fmt.Errorf("typ is not %s", typ)
	}
	d.kid = hdr.Kid
	return d, nil
}

// mayBeSignedBy reports whether pub (whose DistributionKeyID is kid) is a
// candidate signer: a well-formed key that the kid, when present, names.
func (d *distributed) mayBeSignedBy(pub ed25519.PublicKey, kid string) bool {
	return len(pub) == ed25519.PublicKeySize && (d.kid == "" || d.kid == kid)
}

// payload decodes the payload; call it only once the signature holds.
func (d *distributed) payload() ([]byte, error) {
	payload, err := verifyB64.DecodeString(string(d.payloadB64))
	if err != nil {
		return nil, fmt.Errorf("decode payload: %w", err)
	}
	return payload, nil
}
