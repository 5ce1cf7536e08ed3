package directory

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Limits on argon2id parameters. A hash string comes from a file an operator
// edits (or, in a fuzzer, from anywhere), and its parameters decide how much
// memory and CPU one verification burns, so parameters beyond what any sane
// deployment uses are rejected as malformed rather than obeyed.
const (
	saltLen = 16 // bytes of random salt in hashes made by HashPassword
	keyLen  = 32 // bytes of derived key in hashes made by HashPassword

	maxMemoryKiB = 1 << 20 // 1 GiB
	maxTime      = 10
	maxThreads   = 64
	minSaltLen   = 8
	maxSaltLen   = 64
	minKeyLen    = 16
	maxKeyLen    = 64
	maxPHCLen    = 256 // no valid hash within the limits above is longer

	argon2Version = 19 // argon2.Version (0x13); the only version accepted
	phcPrefix     = "$argon2id$"
)

// b64 is the PHC string format's base64: standard alphabet, no padding.
// Strict rejects non-canonical trailing bits so each hash has one spelling.
var b64 = base64.RawStdEncoding.Strict()

// errMalformedHash is wrapped by every hash-parsing error, so callers can tell
// a broken hash (an operator's mistake) from a wrong password.
var errMalformedHash = errors.New("malformed argon2id hash")

// Params are the argon2id cost parameters. They are encoded in every hash, so
// changing them affects only new hashes; existing hashes keep verifying with
// the parameters they were made with.
type Params struct {
	Memory  uint32 // memory in KiB
	Time    uint32 // number of passes over the memory
	Threads uint8  // degree of parallelism (lanes)
}

// DefaultParams returns m=19456 KiB (19 MiB), t=2, p=1: the minimum argon2id
// configuration recommended by the OWASP Password Storage Cheat Sheet. It
// costs a few tens of milliseconds and 19 MiB per hash on one core, which
// keeps offline guessing expensive while an issuer pod with a modest memory
// limit can still verify one login per CPU at a time. RFC 9106's larger
// profiles (64 MiB or 2 GiB per hash) are too much memory per concurrent
// login for a small Kubernetes deployment; raise these when you can afford it.
func DefaultParams() Params {
	return Params{Memory: 19456, Time: 2, Threads: 1}
}

// validate rejects parameters argon2id cannot use (zero passes or lanes,
// which would make x/crypto panic) and absurd ones (see the limits above).
func (p Params) validate() error {
	switch {
	case p.Time < 1:
		return errors.New("argon2id time must be at least 1")
	case p.Time > maxTime:
		return fmt.Errorf("argon2id time %d exceeds the limit of %d", p.Time, maxTime)
	case p.Threads < 1:
		return errors.New("argon2id threads must be at least 1")
	case p.Threads > maxThreads:
		return fmt.Errorf("argon2id threads %d exceed the limit of %d", p.Threads, maxThreads)
	case p.Memory < 8*uint32(p.Threads):
		return fmt.Errorf("argon2id memory %d KiB is below the minimum of 8 KiB per thread", p.Memory)
	case p.Memory > maxMemoryKiB:
		return fmt.Errorf("argon2id memory %d KiB exceeds the limit of %d KiB (1 GiB)", p.Memory, maxMemoryKiB)
	}
	return nil
}

// HashPassword hashes password with argon2id under p and a fresh 16-byte
// random salt, returning a PHC string
// ($argon2id$v=19$m=...,t=...,p=...$salt$key, 32-byte key) for the users and
// clients files. The same function serves passwords and client secrets.
func HashPassword(password []byte, p Params) (string, error) {
	if err := p.validate(); err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("hash password: read random salt: %w", err)
	}
	h := phcHash{params: p, salt: salt, key: argon2.IDKey(password, salt, p.Time, p.Memory, p.Threads, keyLen)}
	return h.String(), nil
}

// VerifyPassword reports whether password matches hash, comparing in constant
// time. The error is non-nil only when hash itself is malformed or asks for
// absurd parameters (memory above 1 GiB, more than 10 passes, ...); a wrong
// password is (false, nil). The error never contains the hash or password.
func VerifyPassword(hash string, password []byte) (bool, error) {
	h, err := parsePHC(hash)
	if err != nil {
		return false, fmt.Errorf("verify password: %w", err)
	}
	return h.verify(password), nil
}

// phcHash is a parsed argon2id PHC string. The directory keeps hashes parsed
// so a malformed one fails at load time, not at someone's login.
type phcHash struct {
	params Params
	salt   []byte
	key    []byte
}

// String encodes h in the PHC string format.
func (h phcHash) String() string {
	return fmt.Sprintf("%sv=%d$m=%d,t=%d,p=%d$%s$%s", phcPrefix, argon2Version,
		h.params.Memory, h.params.Time, h.params.Threads,
		b64.EncodeToString(h.salt), b64.EncodeToString(h.key))
}

// verify derives a key from password with h's salt and parameters and
// compares it with h's key in constant time.
func (h phcHash) verify(password []byte) bool {
	got := argon2.IDKey(password, h.salt, h.params.Time, h.params.Memory, h.params.Threads, uint32(len(h.key))) // #nosec G115 -- key length bounded by parsePHC
	return subtle.ConstantTimeCompare(got, h.key) == 1
}

// parsePHC parses an argon2id PHC string strictly: exactly
// $argon2id$v=19$m=M,t=T,p=P$SALT$KEY with canonical decimals and unpadded
// standard base64. Error messages describe the defect but never quote the
// input, which might be a password pasted into the wrong field.
func parsePHC(s string) (phcHash, error) {
	bad := func(what string) (phcHash, error) {
		return phcHash{}, fmt.Errorf("%w: %s", errMalformedHash, what)
	}
	if len(s) > maxPHCLen {
		return bad("too long")
	}
	if !strings.HasPrefix(s, phcPrefix) {
		return bad(`does not start with "$argon2id$"`)
	}
	parts := strings.Split(s[len(phcPrefix):], "$")
	if len(parts) != 4 {
		return bad("want the form $argon2id$v=19$m=M,t=T,p=P$salt$key")
	}
	if parts[0] != "v="+strconv.Itoa(argon2Version) {
		return bad("unsupported version (want v=19)")
	}
	kv := strings.Split(parts[1], ",")
	if len(kv) != 3 {
		return bad("parameters must be m=M,t=T,p=P")
	}
	var vals [3]uint64
	for i, name := range [3]string{"m=", "t=", "p="} {
		v, ok := strings.CutPrefix(kv[i], name)
		if !ok {
			return bad("parameters must be m=M,t=T,p=P in that order")
		}
		n, err := parseDecimal(v)
		if err != nil {
			return bad("parameter " + name[:1] + " " + err.Error())
		}
		vals[i] = n
	}
	if vals[0] > maxMemoryKiB || vals[1] > maxTime || vals[2] > maxThreads {
		// Checked here as well as in validate so the narrowing below is safe.
		return bad(fmt.Sprintf("parameters exceed the limits (m ≤ %d, t ≤ %d, p ≤ %d)", maxMemoryKiB, maxTime, maxThreads))
	}
	p := Params{Memory: uint32(vals[0]), Time: uint32(vals[1]), Threads: uint8(vals[2])} // #nosec G115 -- bounded just above
	if err := p.validate(); err != nil {
		return phcHash{}, fmt.Errorf("%w: %w", errMalformedHash, err)
	}
	salt, err := decodeB64(parts[2])
	if err != nil {
		return bad("salt is not unpadded standard base64")
	}
	if len(salt) < minSaltLen || len(salt) > maxSaltLen {
		return bad(fmt.Sprintf("salt must be %d to %d bytes", minSaltLen, maxSaltLen))
	}
	key, err := decodeB64(parts[3])
	if err != nil {
		return bad("key is not unpadded standard base64")
	}
	if len(key) < minKeyLen || len(key) > maxKeyLen {
		return bad(fmt.Sprintf("key must be %d to %d bytes", minKeyLen, maxKeyLen))
	}
	return phcHash{params: p, salt: salt, key: key}, nil
}

// decodeB64 decodes unpadded standard base64, rejecting the CR and LF that
// encoding/base64 would otherwise silently skip.
func decodeB64(s string) ([]byte, error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, errors.New("line break in base64")
	}
	return b64.DecodeString(s)
}

// parseDecimal parses a canonical unsigned decimal (digits only, no sign, no
// leading zero) of at most 10 digits, so each parameter has one spelling.
func parseDecimal(s string) (uint64, error) {
	if s == "" || len(s) > 10 {
		return 0, errors.New("is not a decimal number of 1 to 10 digits")
	}
	if len(s) > 1 && s[0] == '0' {
		return 0, errors.New("has a leading zero")
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, errors.New("is not a decimal number")
		}
		n = n*10 + uint64(c-'0')
	}
	return n, nil
}
