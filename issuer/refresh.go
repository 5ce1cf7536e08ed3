package issuer

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A refresh token is "<family id>.<secret>": 128 random bits naming its
// family and 256 random bits of secret. The family record in KV holds only
// the SHA-256 of the current token and of the tokens it replaced, so a copy
// of the bucket yields no usable token. Rotation and reuse detection are
// compare-and-set on the record's revision: of two requests racing with
// the same token, exactly one can move the family forward.

const maxUsedHashes = 64 // replaced tokens remembered for reuse detection

type family struct {
	ID        string    `json:"id"`
	ClientID  string    `json:"client_id"`
	Subject   string    `json:"sub"`
	SessionID string    `json:"sid"`
	Scope     string    `json:"scope"` // granted at login: a refresh may ask for less, never more
	Current   string    `json:"current"`
	Used      []string  `json:"used,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"` // of the current token
	Revoked   bool      `json:"revoked,omitempty"`
	Reason    string    `json:"reason,omitempty"`
}

var (
	errFamilyNotFound = errors.New("refresh token family not found")
	errFamilyConflict = errors.New("refresh token family changed concurrently")
)

type familyStore struct{ kv jetstream.KeyValue }

func (s familyStore) create(ctx context.Context, f *family) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	retried := false
	err = retryFailover(ctx, func(ctx context.Context) error {
		_, err := s.kv.Create(ctx, f.ID, b)
		if err != nil && transient(err) {
			retried = true
		}
		return err
	})
	if err != nil && retried && errors.Is(err, jetstream.ErrKeyExists) && landed(ctx, s.kv, f.ID, b) {
		err = nil // the attempt whose reply a failover lost had stored it
	}
	if err != nil {
		return fmt.Errorf("store refresh token family: %w", err)
	}
	return nil
}

func (s familyStore) get(ctx context.Context, id string) (*family, uint64, error) {
	var e jetstream.KeyValueEntry
	err := retryFailover(ctx, func(ctx context.Context) (err error) {
		e, err = s.kv.Get(ctx, id)
		return err
	})
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, errFamilyNotFound
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read refresh token family: %w", err)
	}
	var f family
	if err := json.Unmarshal(e.Value(), &f); err != nil {
		return nil, 0, fmt.Errorf("decode refresh token family %s: %w", id, err)
	}
	return &f, e.Revision(), nil
}

func (s familyStore) update(ctx context.Context, f *family, rev uint64) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	retried := false
	err = retryFailover(ctx, func(ctx context.Context) error {
		_, err := s.kv.Update(ctx, f.ID, b, rev)
		if err != nil && transient(err) {
			retried = true
		}
		return err
	})
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		if retried && landed(ctx, s.kv, f.ID, b) {
			return nil // the attempt whose reply a failover lost had stored it
		}
		return errFamilyConflict
	}
	if err != nil {
		return fmt.Errorf("store refresh token family: %w", err)
	}
	return nil
}

// revoke marks a family dead, retrying on conflicts: a revocation must win
// against a racing rotation.
func (s familyStore) revoke(ctx context.Context, id, reason string) (*family, error) {
	for attempt := 0; attempt < 10; attempt++ {
		f, rev, err := s.get(ctx, id)
		if err != nil {
			return nil, err
		}
		if f.Revoked {
			return f, nil
		}
		// The current hash joins the used ones: a revoked family accepts no
		// token, but its owner can still prove it held one (a logout retry).
		f.Used = append(f.Used, f.Current)
		f.Revoked, f.Reason, f.Current = true, reason, ""
		err = s.update(ctx, f, rev)
		if errors.Is(err, errFamilyConflict) {
			continue
		}
		return f, err
	}
	return nil, errors.New("revoke refresh token family: too many concurrent changes")
}

// newRefreshToken returns a token for family id and its hash.
func newRefreshToken(familyID string) (token, hash string, err error) {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return "", "", fmt.Errorf("generate refresh token: %w", err)
	}
	token = familyID + "." + base64.RawURLEncoding.EncodeToString(secret)
	return token, hashToken(token), nil
}

func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

const base64URLAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// parseRefreshToken returns the family id of a well-formed token.
func parseRefreshToken(token string) (string, bool) {
	id, secret, ok := strings.Cut(token, ".")
	if !ok || len(id) != 22 || len(secret) != 43 {
		return "", false
	}
	// The decoder below skips '\r' and '\n' even in strict mode; an id
	// with them is no KV key, and the lookup would fail as if the store
	// were down (503).
	if strings.Trim(token, base64URLAlphabet+".") != "" {
		return "", false
	}
	if _, err := base64.RawURLEncoding.Strict().DecodeString(id); err != nil {
		return "", false
	}
	if _, err := base64.RawURLEncoding.Strict().DecodeString(secret); err != nil {
		return "", false
	}
	return id, true
}

// randomID returns 128 random bits, base64url: ids for families, sessions
// and tokens.
func randomID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate id: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// hashEqual compares two token hashes in constant time.
func hashEqual(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}
