package sidecar

import (
	"encoding/base64"
	"sync"

	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

func base64URL(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// switchable is a RevocationChecker whose rule a test changes.
type switchable struct {
	mu sync.Mutex
	rc RevocationChecker
}

func (s *switchable) set(rc RevocationChecker) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rc = rc
}

func (s *switchable) Check(c *jwks.Claims) (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rc == nil {
		return false, ""
	}
	return s.rc.Check(c)
}

func (s *switchable) Has(kind revocation.Kind, value string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rc != nil && s.rc.Has(kind, value)
}
