package sidecar

import (
	"crypto/ed25519"
	"encoding/base64"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/jwks"
)

// FuzzVerifyRequest drives the /verify handler with arbitrary Authorization
// and X-Required-Scope values: it must answer 200, 401 or 403 and nothing
// else, never panic, and accept only the one genuine token.
func FuzzVerifyRequest(f *testing.F) {
	seed := make([]byte, ed25519.SeedSize)
	dist := ed25519.NewKeyFromSeed(seed)
	ring, err := jwks.NewRing(time.Now(), jwks.DefaultPolicy())
	if err != nil {
		f.Fatal(err)
	}
	ks, _ := ring.KeySet()
	doc, _ := jwks.Document(ks)
	bundle, _ := jwks.SignBundle(&jwks.Bundle{Sequence: 1, IssuedAt: time.Now().Unix(), JWKS: doc}, dist)
	dir := f.TempDir()
	if err := os.WriteFile(filepath.Join(dir, jwks.CacheFileName), bundle, 0o600); err != nil {
		f.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Issuer, cfg.Audience, cfg.CacheDir = testIssuer, []string{testAudience}, dir
	cfg.DistributionPublicKeys = []string{base64.StdEncoding.EncodeToString(dist.Public().(ed25519.PublicKey))}
	sc, err := New(cfg, WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		f.Fatal(err)
	}
	now := time.Now()
	genuine, _ := ring.Active().Sign(&jwks.Claims{Issuer: testIssuer, Subject: "alice", Audience: jwks.Audience{testAudience},
		Expiry: now.Add(time.Hour).Unix(), IssuedAt: now.Unix(), ID: "j1", ClientID: "c", Scope: "read"})
	h := sc.Handler()
	f.Add("Bearer "+genuine, "")
	f.Add("Bearer "+genuine, "write")
	f.Add("bearer  "+genuine+" ", "read")
	f.Add("Basic YWxhZGRpbjpvcGVuc2VzYW1l", "")
	f.Add("Bearer ", "")
	f.Fuzz(func(t *testing.T, authz, scope string) {
		req := httptest.NewRequest("GET", "/verify", nil)
		req.Header.Set("Authorization", authz)
		if scope != "" {
			req.Header.Set(HeaderRequiredScope, scope)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK:
			tok, _ := bearerToken(req)
			if tok != genuine {
				t.Fatalf("accepted %q", authz)
			}
		case http.StatusUnauthorized, http.StatusForbidden:
			www := rec.Header().Get("WWW-Authenticate")
			if www == "" {
				t.Fatalf("%d without WWW-Authenticate", rec.Code)
			}
			// Every quoted value stays a quoted value: no input may break
			// out of the challenge's syntax.
			if strings.Count(www, `"`)%2 != 0 || strings.ContainsAny(www, "\r\n") {
				t.Fatalf("malformed challenge %q", www)
			}
		default:
			t.Fatalf("status %d for %q", rec.Code, authz)
		}
	})
}
