package issuer

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/jwks"
)

func randomKEK(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func b64(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

// TestKEKID: the id is what the operations guide tells operators to
// compute with `base64 -d key-encryption.key | sha256sum | cut -c1-16`
// (this vector is that pipeline's output for 32 zero bytes).
func TestKEKID(t *testing.T) {
	if got := KEKID(make([]byte, 32)); got != "66687aadf862bd77" {
		t.Fatalf("KEKID(zeros) = %s", got)
	}
	if !validKEKID(KEKID(randomKEK(t))) || validKEKID("66687AADF862BD77") || validKEKID("66687aadf862bd7") || validKEKID("") {
		t.Fatal("validKEKID")
	}
}

// TestKeyEncryptionKeysConfig: the current and previous KEKs are read from
// files and variables, each must be 32 bytes of base64, no key may appear
// twice, and no error ever shows a key.
func TestKeyEncryptionKeysConfig(t *testing.T) {
	dir := t.TempDir()
	cur, a, b := randomKEK(t), randomKEK(t), randomKEK(t)
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	curFile, aFile := file("cur.key", b64(cur)+"\n"), file("a.key", "  "+b64(a)+"\n")
	short := b64(make([]byte, 16))
	for name, tc := range map[string]struct {
		cfg      Config
		previous [][]byte // want, in order
		err      string   // want an error containing this
	}{
		"current only":           {cfg: Config{KeyEncryptionKey: b64(cur)}},
		"current from a file":    {cfg: Config{KeyEncryptionKeyFile: curFile}},
		"previous from a file":   {cfg: Config{KeyEncryptionKey: b64(cur), PreviousKeyEncryptionKeyFiles: []string{aFile}}, previous: [][]byte{a}},
		"previous inline":        {cfg: Config{KeyEncryptionKey: b64(cur), PreviousKeyEncryptionKeys: []string{b64(a), b64(b)}}, previous: [][]byte{a, b}},
		"files and inline":       {cfg: Config{KeyEncryptionKeyFile: curFile, PreviousKeyEncryptionKeyFiles: []string{aFile}, PreviousKeyEncryptionKeys: []string{b64(b)}}, previous: [][]byte{a, b}},
		"previous not base64":    {cfg: Config{KeyEncryptionKey: b64(cur), PreviousKeyEncryptionKeys: []string{b64(a), "not base64!"}}, err: "TOKENWARDEN_PREVIOUS_KEY_ENCRYPTION_KEYS item 2: want 32 bytes"},
		"previous too short":     {cfg: Config{KeyEncryptionKey: b64(cur), PreviousKeyEncryptionKeys: []string{short}}, err: "item 1: want 32 bytes"},
		"previous file too long": {cfg: Config{KeyEncryptionKey: b64(cur), PreviousKeyEncryptionKeyFiles: []string{file("long.key", b64(make([]byte, 33)))}}, err: "long.key: want 32 bytes"},
		"previous is current":    {cfg: Config{KeyEncryptionKeyFile: curFile, PreviousKeyEncryptionKeys: []string{b64(cur)}}, err: "is the same key as the current key-encryption key (id " + KEKID(cur)},
		"previous twice":         {cfg: Config{KeyEncryptionKey: b64(cur), PreviousKeyEncryptionKeyFiles: []string{aFile}, PreviousKeyEncryptionKeys: []string{b64(a)}}, err: "item 1 is the same key as " + aFile},
		"previous file missing":  {cfg: Config{KeyEncryptionKey: b64(cur), PreviousKeyEncryptionKeyFiles: []string{filepath.Join(dir, "nope.key")}}, err: "nope.key: no such file"},
		"previous file unnamed":  {cfg: Config{KeyEncryptionKey: b64(cur), PreviousKeyEncryptionKeyFiles: []string{aFile, " "}}, err: "previous_key_encryption_key_files item 2: empty file name"},
		"current bad":            {cfg: Config{KeyEncryptionKey: short, PreviousKeyEncryptionKeys: []string{b64(a)}}, err: "TOKENWARDEN_KEY_ENCRYPTION_KEY: want 32 bytes"},
	} {
		t.Run(name, func(t *testing.T) {
			gotCur, gotPrev, err := tc.cfg.keyEncryptionKeys()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				for _, k := range [][]byte{cur, a, b} {
					if strings.Contains(err.Error(), b64(k)) {
						t.Fatalf("the error shows a key: %v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(gotCur, cur) || len(gotPrev) != len(tc.previous) {
				t.Fatalf("current ok %v, %d previous, want %d", bytes.Equal(gotCur, cur), len(gotPrev), len(tc.previous))
			}
			for i := range gotPrev {
				if !bytes.Equal(gotPrev[i], tc.previous[i]) {
					t.Fatalf("previous %d differs", i)
				}
			}
		})
	}
}

// TestNewChecksPreviousKEKs: the issuer refuses to start with a previous
// KEK that is the current one, naming the problem.
func TestNewChecksPreviousKEKs(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg
	cfg.PreviousKeyEncryptionKeys = []string{cfg.KeyEncryptionKey}
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "same key as the current") {
		t.Fatalf("New: %v", err)
	}
	cfg.PreviousKeyEncryptionKeys = []string{b64(randomKEK(t))}
	if _, err := New(cfg); err != nil {
		t.Fatal(err)
	}
}

// TestUnsealWithWrongKEK: a sealed key meets an issuer without its KEK, in
// every form a record can take: a clear error that names the KEK ids (never
// a key), no panic, no plaintext.
func TestUnsealWithWrongKEK(t *testing.T) {
	a, b, c := randomKEK(t), randomKEK(t), randomKEK(t)
	set := func(cur []byte, prev ...[]byte) *keyEncryptionKeys {
		ks, err := newKeyEncryptionKeys(cur, prev...)
		if err != nil {
			t.Fatal(err)
		}
		return ks
	}
	underA, idA := set(a), KEKID(a)
	sealed, id, err := underA.seal("kid-1", []byte("private key"))
	if err != nil || id != idA {
		t.Fatalf("seal: %v, id %s", err, id)
	}
	flipped := append([]byte(nil), sealed...)
	flipped[len(flipped)-1] ^= 1
	for name, tc := range map[string]struct {
		keks    *keyEncryptionKeys
		kid     string
		kekID   string
		sealed  []byte
		unknown bool   // want errUnknownKEK
		msg     string // want in the error
	}{
		"other KEK":                  {keks: set(b), kid: "kid-1", kekID: idA, sealed: sealed, unknown: true, msg: idA + " (this issuer holds " + KEKID(b) + ")"},
		"other KEKs, legacy record":  {keks: set(b, c), kid: "kid-1", sealed: sealed, unknown: true, msg: "none of the key-encryption keys this issuer holds (" + KEKID(b) + ", " + KEKID(c) + ")"},
		"id says B, sealed under A":  {keks: set(b, a), kid: "kid-1", kekID: KEKID(b), sealed: sealed, msg: "wrong key-encryption key or damaged record"},
		"right KEK, damaged":         {keks: set(a), kid: "kid-1", kekID: idA, sealed: flipped, msg: "wrong key-encryption key or damaged record"},
		"right KEK, other kid":       {keks: set(a), kid: "kid-2", kekID: idA, sealed: sealed, msg: "unseal key kid-2"},
		"malformed id":               {keks: set(a), kid: "kid-1", kekID: "../../etc\n", sealed: sealed, msg: "malformed key-encryption key id"},
		"nil record":                 {keks: set(a), kid: "kid-1", kekID: idA, msg: "too short"},
		"nil record, legacy":         {keks: set(a), kid: "kid-1", unknown: true, msg: "none of the key-encryption keys"},
		"previous KEK opens, id":     {keks: set(b, a), kid: "kid-1", kekID: idA, sealed: sealed},
		"previous KEK opens, legacy": {keks: set(b, a), kid: "kid-1", sealed: sealed},
	} {
		t.Run(name, func(t *testing.T) {
			plain, err := tc.keks.unseal(tc.kid, tc.kekID, tc.sealed)
			if tc.msg == "" {
				if err != nil || string(plain) != "private key" {
					t.Fatalf("unseal = %q, %v", plain, err)
				}
				return
			}
			if err == nil || plain != nil {
				t.Fatalf("unseal = %q, %v: want an error", plain, err)
			}
			if errors.Is(err, errUnknownKEK) != tc.unknown || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %q (unknown KEK: %v), want %q (unknown KEK: %v)", err, errors.Is(err, errUnknownKEK), tc.msg, tc.unknown)
			}
			for _, k := range [][]byte{a, b, c} {
				if strings.Contains(err.Error(), b64(k)) {
					t.Fatal("the error shows a key")
				}
			}
		})
	}

	// A whole ring: sealed under A, read by an issuer holding B only (it
	// fails, saying why), by one holding B and A (it loads), and once
	// re-encoded there, every key names B.
	ring, err := jwks.NewRing(time.Now(), jwks.DefaultPolicy())
	if err != nil {
		t.Fatal(err)
	}
	stored, err := (&keyManager{keks: set(a)}).encode(ring)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (&keyManager{keks: set(b)}).decode(stored); !errors.Is(err, errUnknownKEK) {
		t.Fatalf("decode without the KEK: %v", err)
	}
	both := &keyManager{keks: set(b, a)}
	r, err := both.decode(stored)
	if err != nil || r.Active().ID != ring.Active().ID {
		t.Fatalf("decode with the previous KEK: %v", err)
	}
	again, err := both.encode(r)
	if err != nil {
		t.Fatal(err)
	}
	var sr storedRing
	if err := json.Unmarshal(again, &sr); err != nil {
		t.Fatal(err)
	}
	for _, k := range sr.Keys {
		if k.KEK != KEKID(b) {
			t.Fatalf("key %s sealed under %q, want the current KEK %s", k.ID, k.KEK, KEKID(b))
		}
	}
}

// TestNewKeyEncryptionKeys: the set refuses a wrong length and a key given
// twice.
func TestNewKeyEncryptionKeys(t *testing.T) {
	a, b := randomKEK(t), randomKEK(t)
	for name, tc := range map[string]struct {
		cur  []byte
		prev [][]byte
		err  string
	}{
		"ok":               {cur: a, prev: [][]byte{b}},
		"current short":    {cur: a[:31], err: "current key-encryption key: key-encryption key must be 32 bytes"},
		"previous long":    {cur: a, prev: [][]byte{append(b, 0)}, err: "previous key-encryption key 1: key-encryption key must be 32 bytes"},
		"previous current": {cur: a, prev: [][]byte{b, a}, err: "previous key-encryption key 2 (id " + KEKID(a) + ") is given twice or is the current key"},
	} {
		t.Run(name, func(t *testing.T) {
			ks, err := newKeyEncryptionKeys(tc.cur, tc.prev...)
			if tc.err == "" {
				if err != nil || ks.currentID() != KEKID(a) || len(ks.previousIDs()) != 1 {
					t.Fatalf("%v %+v", err, ks)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want %q", err, tc.err)
			}
		})
	}
}
