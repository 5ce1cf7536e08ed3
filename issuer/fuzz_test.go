package issuer

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// Fuzz targets that drive a real issuer (embedded NATS with JetStream, the
// deployment of testenv.NewDeployment) through its http.Handler with
// httptest requests: the token endpoint's form parsing and client
// authentication, RFC 7009 revocation, the admin API's bearer check and
// the JSON of POST /admin/v1/revocations. One issuer serves every input of
// a fuzz process. Seeds are in testdata/fuzz/<Name>/ (written by
// TestWriteIssuerFuzzSeeds).
//
// Live credentials cannot be committed, so inputs may carry placeholders
// that are replaced before the request is made: @REFRESH@ and @ACCESS@ by
// the refresh and access token of a fresh login of alice through client
// app, @ADMIN@ by a live admin access token.

const (
	phRefresh = "@REFRESH@"
	phAccess  = "@ACCESS@"
	phAdmin   = "@ADMIN@"
)

// Credentials of testenv.NewDeployment.
var (
	fuzzClients = map[string]string{"app": "app-secret", "other": "other-secret", "service": "service-secret", "admin": "admin-secret"}
	fuzzUsers   = map[string]string{"alice": "alice-pw", "bob": "bob-pw"}
	// Grants of those clients.
	fuzzClientGrants = map[string][]string{
		"app":     {"password", "refresh_token", "client_credentials"},
		"other":   {"password", "refresh_token"},
		"service": {"client_credentials"},
		"admin":   {"client_credentials"},
	}
)

// oauthStatus is the status each RFC 6749 error code may come with.
var oauthStatus = map[string][]int{
	"invalid_request":        {400, 405, 413},
	"invalid_client":         {401},
	"invalid_grant":          {400},
	"unauthorized_client":    {400},
	"unsupported_grant_type": {400},
	"invalid_scope":          {400},
	"slow_down":              {429},
}

type fuzzIssuer struct {
	in    *instance
	h     http.Handler
	clock *fakeClock
	js    jetstream.JetStream
	admin string
}

func newFuzzIssuer(f *testing.F) *fuzzIssuer {
	f.Helper()
	e := newEnv(f)
	// The targets explore parsing and authentication, not the limiter
	// (TestBruteForce* does): with the defaults nearly every input would
	// be answered 429 before reaching either.
	e.cfg.RateLimit = RateLimitConfig{FailuresPerUser: 1 << 30, FailuresPerIP: 1 << 30}
	clock := newFakeClock()
	in := e.start(WithClock(clock.Now))
	in.waitReady(f)
	js := jetStream(f, e.nats.URL())
	return &fuzzIssuer{in: in, h: in.http.Config.Handler, clock: clock, js: js}
}

// serve runs one request through the handler.
func (fz *fuzzIssuer) serve(req *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	fz.h.ServeHTTP(rec, req)
	return rec
}

// lastSeq is the revocation stream's last sequence: it grows with every
// stored event.
func (fz *fuzzIssuer) lastSeq(t *testing.T) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := fz.js.Stream(ctx, revocation.StreamName(fz.in.cfg.NATS.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// token posts a well-formed token request and returns the decoded answer.
func (fz *fuzzIssuer) token(t *testing.T, client string, form url.Values) map[string]any {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/oauth2/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(client, fuzzClients[client])
	rec := fz.serve(req)
	var m map[string]any
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &m) != nil {
		t.Fatalf("token for %s: %d %s", client, rec.Code, rec.Body)
	}
	return m
}

// adminToken returns a live admin token, making a new one when a fuzzed
// revocation (sub admin, client admin, all, its jti) has covered the old
// one. issued_before may be up to leeway ahead, so the clock moves past it.
func (fz *fuzzIssuer) adminToken(t *testing.T) string {
	t.Helper()
	for range 5 {
		if fz.admin != "" {
			if c, err := fz.in.verifier.Verify(fz.admin); err == nil {
				if revoked, _ := fz.in.revocations.Check(c); !revoked {
					return fz.admin
				}
				fz.clock.Advance(fz.in.cfg.Leeway + time.Second)
			}
		}
		fz.admin, _ = fz.token(t, "admin", url.Values{"grant_type": {"client_credentials"}, "scope": {AdminScope}})["access_token"].(string)
	}
	t.Fatal("no live admin token")
	return ""
}

// live replaces the placeholders in s; the tokens it used are returned.
type liveTokens struct{ refresh, access, admin string }

func (fz *fuzzIssuer) substitute(t *testing.T, lt *liveTokens, s string) string {
	t.Helper()
	if (strings.Contains(s, phRefresh) || strings.Contains(s, phAccess)) && lt.refresh == "" {
		m := fz.token(t, "app", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}})
		lt.refresh, _ = m["refresh_token"].(string)
		lt.access, _ = m["access_token"].(string)
	}
	if strings.Contains(s, phAdmin) && lt.admin == "" {
		lt.admin = fz.adminToken(t)
	}
	return strings.NewReplacer(phRefresh, lt.refresh, phAccess, lt.access, phAdmin, lt.admin).Replace(s)
}

// fuzzRequest builds a request from fuzzed parts, or reports false for
// parts no HTTP server would ever hand a handler (an invalid method, or a
// header value with control characters).
func fuzzRequest(method, target, contentType, authorization string, body []byte) (*http.Request, bool) {
	for _, v := range []string{contentType, authorization} {
		if strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f }) {
			return nil, false
		}
	}
	req, err := http.NewRequest(method, "http://issuer.test"+target, bytes.NewReader(body))
	if err != nil {
		return nil, false
	}
	req.RemoteAddr = "192.0.2.1:4711"
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	return req, true
}

// checkOAuthError asserts that rec is an RFC 6749 §5.2 error with a known
// code, the status and headers that code comes with, and nothing else.
func checkOAuthError(t *testing.T, rec *httptest.ResponseRecorder) (code, description string) {
	t.Helper()
	var body struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	dec := json.NewDecoder(rec.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil || dec.More() {
		t.Fatalf("%d: not an RFC 6749 error body: %v %q", rec.Code, err, rec.Body)
	}
	if !slices.Contains(oauthStatus[body.Error], rec.Code) {
		t.Fatalf("status %d with error %q (%s)", rec.Code, body.Error, body.Description)
	}
	h := rec.Header()
	if h.Get("Content-Type") != "application/json" || h.Get("Cache-Control") != "no-store" {
		t.Fatalf("error %q with headers %v", body.Error, h)
	}
	if rec.Code == 401 && !strings.HasPrefix(h.Get("WWW-Authenticate"), "Basic ") {
		t.Fatalf("401 without a Basic challenge: %v", h)
	}
	if rec.Code == 429 && h.Get("Retry-After") == "" {
		t.Fatalf("429 without Retry-After")
	}
	if rec.Code == 405 && h.Get("Allow") != http.MethodPost {
		t.Fatalf("405 without Allow: POST")
	}
	return body.Error, body.Description
}

// clientOf is the client a request authenticates as, by the RFC 6749 §2.3.1
// rules, decided independently of the issuer; ok only for a known client
// with its right secret and a single authentication method.
func clientOf(req *http.Request, form url.Values) (string, bool) {
	id, secret, basic := req.BasicAuth()
	if basic {
		var err1, err2 error
		id, err1 = url.QueryUnescape(id)
		secret, err2 = url.QueryUnescape(secret)
		if err1 != nil || err2 != nil || form.Has("client_secret") {
			return "", false
		}
		if fid := form.Get("client_id"); fid != "" && fid != id {
			return "", false
		}
	} else {
		id, secret = form.Get("client_id"), form.Get("client_secret")
	}
	want, known := fuzzClients[id]
	return id, known && secret == want
}

// FuzzTokenEndpoint: POST /oauth2/token with fuzzed method, content type,
// Authorization header and body never panics, never answers 5xx, issues a
// token only for valid credentials (and only what those credentials
// allow), and refuses with an RFC 6749 JSON error of a known code.
func FuzzTokenEndpoint(f *testing.F) {
	fz := newFuzzIssuer(f)
	f.Fuzz(func(t *testing.T, method, contentType, authorization string, body []byte) {
		var lt liveTokens
		authorization = fz.substitute(t, &lt, authorization)
		body = []byte(fz.substitute(t, &lt, string(body)))
		req, ok := fuzzRequest(method, "/oauth2/token", contentType, authorization, body)
		if !ok {
			return
		}
		rec := fz.serve(req)
		if rec.Code != 200 {
			checkOAuthError(t, rec)
			return
		}
		// Issued: re-derive from the request alone that it deserved it.
		form, err := url.ParseQuery(string(body))
		if err != nil || req.Method != http.MethodPost {
			t.Fatalf("token issued for method %q, body %q", req.Method, body)
		}
		client, ok := clientOf(req, form)
		if !ok {
			t.Fatalf("token issued without valid client credentials: %q %q", authorization, body)
		}
		grant := form.Get("grant_type")
		if !slices.Contains(fuzzClientGrants[client], grant) {
			t.Fatalf("client %s got a token by grant %q", client, grant)
		}
		wantSub := client
		switch grant {
		case "password":
			u := form.Get("username")
			if pw, known := fuzzUsers[u]; !known || form.Get("password") != pw {
				t.Fatalf("token issued for user %q without the right password", u)
			}
			wantSub = u
		case "refresh_token":
			if lt.refresh == "" || form.Get("refresh_token") != lt.refresh || client != "app" {
				t.Fatalf("refresh by %s with a token that is not its live one: %q", client, form.Get("refresh_token"))
			}
			wantSub = "alice"
		}
		var resp tokenResponse
		if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
			t.Fatal(err)
		}
		c, err := fz.in.anyAudience.Verify(resp.AccessToken)
		if err != nil || c.Subject != wantSub || c.ClientID != client {
			t.Fatalf("issued token %+v (%v); want sub %s client %s", c, err, wantSub, client)
		}
		if resp.TokenType != "Bearer" || rec.Header().Get("Cache-Control") != "no-store" ||
			(resp.RefreshToken == "") != (grant == "client_credentials") {
			t.Fatalf("token response %+v, headers %v", resp, rec.Header())
		}
	})
}

// FuzzRevokeEndpoint: POST /oauth2/revoke (RFC 7009) with fuzzed parts
// never panics or answers 5xx, refuses with RFC 6749 JSON errors, and
// stores a revocation only for a live token of the authenticated client.
func FuzzRevokeEndpoint(f *testing.F) {
	fz := newFuzzIssuer(f)
	f.Fuzz(func(t *testing.T, method, contentType, authorization string, body []byte) {
		var lt liveTokens
		authorization = fz.substitute(t, &lt, authorization)
		body = []byte(fz.substitute(t, &lt, string(body)))
		req, ok := fuzzRequest(method, "/oauth2/revoke", contentType, authorization, body)
		if !ok {
			return
		}
		before := fz.lastSeq(t)
		rec := fz.serve(req)
		stored := fz.lastSeq(t) - before
		if rec.Code != 200 {
			checkOAuthError(t, rec)
		} else if rec.Body.Len() != 0 || rec.Header().Get("Cache-Control") != "no-store" {
			t.Fatalf("200 with body %q, headers %v", rec.Body, rec.Header())
		}
		form, _ := url.ParseQuery(string(body))
		client, authenticated := clientOf(req, form)
		if rec.Code == 200 && (!authenticated || form.Get("token") == "") {
			t.Fatalf("200 without client authentication or token: %q %q", authorization, body)
		}
		if stored == 0 {
			return
		}
		tok := form.Get("token")
		if rec.Code != 200 || stored != 1 || client != "app" || tok == "" || (tok != lt.refresh && tok != lt.access) {
			t.Fatalf("%d revocation events stored for status %d, client %q, token %q", stored, rec.Code, client, tok)
		}
	})
}

// FuzzAdminRevocation: POST /admin/v1/revocations, authorized, with a
// fuzzed content type and body never panics or answers 5xx; bad input is
// 400 invalid_request with a description and stores nothing; 201 means
// exactly one stored event that says what the request asked for.
func FuzzAdminRevocation(f *testing.F) {
	fz := newFuzzIssuer(f)
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		req, ok := fuzzRequest(http.MethodPost, "/admin/v1/revocations", contentType, "Bearer "+fz.adminToken(t), body)
		if !ok {
			return
		}
		before := fz.lastSeq(t)
		rec := fz.serve(req)
		stored := fz.lastSeq(t) - before
		switch rec.Code {
		case 400:
			if code, desc := checkOAuthError(t, rec); code != "invalid_request" || desc == "" || stored != 0 {
				t.Fatalf("400 %s (%q) with %d events stored", code, desc, stored)
			}
		case 201:
			var want struct {
				Kind         revocation.Kind `json:"kind"`
				Value        string          `json:"value"`
				IssuedBefore *time.Time      `json:"issued_before"`
				Reason       string          `json:"reason"`
			}
			if err := json.Unmarshal(body, &want); err != nil || !want.Kind.Valid() {
				t.Fatalf("201 for body %q (%v)", body, err)
			}
			var got struct {
				revocation.Event
				Sequence uint64 `json:"sequence"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			if stored != 1 || got.Sequence != before+1 {
				t.Fatalf("201 with %d events stored, sequence %d after %d", stored, got.Sequence, before)
			}
			if got.Kind != want.Kind || got.Value != want.Value || got.Reason != want.Reason || got.Validate() != nil {
				t.Fatalf("stored %+v for request %q", got.Event, body)
			}
			if ib := want.IssuedBefore; ib != nil && !ib.IsZero() && got.IssuedBefore != 0 && got.IssuedBefore != ib.Unix() {
				t.Fatalf("issued_before %v stored as %d", ib, got.IssuedBefore)
			}
			// The issuer applies it at once: a token it names is revoked.
			c := &jwks.Claims{IssuedAt: got.IssuedBefore}
			switch got.Kind {
			case revocation.KindJTI:
				c.ID = got.Value
			case revocation.KindSID:
				c.SessionID = got.Value
			case revocation.KindSub:
				c.Subject = got.Value
			case revocation.KindClient:
				c.ClientID = got.Value
			}
			if revoked, _ := fz.in.revocations.Check(c); !revoked {
				t.Fatalf("event %+v not applied by the issuer", got.Event)
			}
		default:
			t.Fatalf("status %d for %q %q: %s", rec.Code, contentType, body, rec.Body)
		}
	})
}

// adminRoutes are the admin API's routes; a fuzzed byte picks one.
var adminRoutes = []struct{ method, path string }{
	{"GET", "/admin/v1/revocations"},
	{"POST", "/admin/v1/revocations"},
	{"GET", "/admin/v1/keys"},
	{"POST", "/admin/v1/keys/rotate"},
	{"POST", "/admin/v1/keys/rewrap"},
}

// FuzzAdminAuth: every admin route with a fuzzed method and Authorization
// header never panics; only the exact live admin bearer token gets past
// the guard, everything else is 401 (or 405 from the router) with a
// well-formed challenge.
func FuzzAdminAuth(f *testing.F) {
	fz := newFuzzIssuer(f)
	f.Fuzz(func(t *testing.T, method string, route uint8, authorization string) {
		r := adminRoutes[int(route)%len(adminRoutes)]
		var lt liveTokens
		authorization = fz.substitute(t, &lt, authorization)
		// A body no revocation can come from: an authorized POST is a 400.
		req, ok := fuzzRequest(method, r.path, "application/json", authorization, []byte(`{}`))
		if !ok {
			return
		}
		rec := fz.serve(req)
		scheme, tok, _ := strings.Cut(authorization, " ")
		authorized := lt.admin != "" && strings.EqualFold(scheme, "Bearer") && tok == lt.admin
		switch {
		case rec.Code == 405:
			if req.Method == r.method || (req.Method == "HEAD" && r.method == "GET") {
				t.Fatalf("405 for %s %s", req.Method, r.path)
			}
		case rec.Code == 401:
			if authorized {
				t.Fatalf("live admin token refused: %s", rec.Body)
			}
			www := rec.Header().Get("WWW-Authenticate")
			if !strings.HasPrefix(www, "Bearer ") || strings.Count(www, `"`)%2 != 0 || strings.ContainsAny(www, "\r\n") {
				t.Fatalf("malformed challenge %q", www)
			}
			var body map[string]string
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body["error"] != "invalid_token" {
				t.Fatalf("401 body %q", rec.Body)
			}
		case !authorized:
			t.Fatalf("%s %s with Authorization %q answered %d: %s", req.Method, r.path, authorization, rec.Code, rec.Body)
		case rec.Code >= 500:
			t.Fatalf("%s %s answered %d: %s", req.Method, r.path, rec.Code, rec.Body)
		}
	})
}

// FuzzParseRefreshToken: the refresh-token syntax check (the first thing
// done with a presented refresh token) never panics and accepts exactly
// 22 + "." + 43 characters of canonical base64url.
func FuzzParseRefreshToken(f *testing.F) {
	f.Fuzz(func(t *testing.T, token string) {
		id, ok := parseRefreshToken(token)
		if !ok {
			if id != "" {
				t.Fatalf("rejected %q with id %q", token, id)
			}
			return
		}
		fid, secret, _ := strings.Cut(token, ".")
		if id != fid || len(fid) != 22 || len(secret) != 43 {
			t.Fatalf("accepted %q as family %q", token, id)
		}
		for _, p := range []string{fid, secret} {
			if strings.ContainsFunc(p, func(r rune) bool {
				return !strings.ContainsRune("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", r)
			}) {
				t.Fatalf("accepted non-base64url %q", token)
			}
		}
		// The hash of what is accepted is what a family stores.
		if len(hashToken(token)) != 64 {
			t.Fatal("hash length")
		}
	})
}

// FuzzDecodeKeyRing: the key ring record read from NATS KV (JSON metadata
// that anyone with write access to the bucket can change, plus private
// keys sealed with the key-encryption key) never panics the decoder, and
// a ring that decodes is valid and survives a round trip. With reseal
// set, each sealed_private_key is taken as plaintext and sealed with the
// issuer's key first, as if the writer held the key-encryption key: that
// explores the private-key and ring validation behind the AEAD.
func FuzzDecodeKeyRing(f *testing.F) {
	m := fuzzKeyManager(f)
	f.Fuzz(func(t *testing.T, data []byte, reseal bool) {
		if reseal {
			var sr storedRing
			if json.Unmarshal(data, &sr) != nil {
				return
			}
			for i, k := range sr.Keys {
				sealed, kekID, err := m.keks.seal(k.ID, k.Sealed)
				if err != nil {
					t.Fatal(err)
				}
				sr.Keys[i].Sealed, sr.Keys[i].KEK = sealed, kekID
			}
			var err error
			if data, err = json.Marshal(sr); err != nil {
				t.Fatal(err)
			}
		}
		r, err := m.decode(data)
		if (r == nil) == (err == nil) {
			t.Fatalf("decode = %v, %v: want exactly one non-nil", r, err)
		}
		if err != nil {
			return
		}
		if r.Active() == nil || r.Validate() != nil {
			t.Fatalf("decoded an invalid ring: %+v", r)
		}
		if _, err := r.KeySet(); err != nil {
			t.Fatalf("decoded ring without a key set: %v", err)
		}
		b, err := m.encode(r)
		if err != nil {
			t.Fatalf("decoded ring does not encode: %v", err)
		}
		again, err := m.decode(b)
		if err != nil || again.Sequence != r.Sequence || len(again.Keys) != len(r.Keys) {
			t.Fatalf("round trip: %v", err)
		}
		for i, k := range r.Keys {
			if k2 := again.Keys[i]; k2.ID != k.ID || k2.State != k.State || k2.Alg != k.Alg {
				t.Fatalf("round trip changed key %d: %+v → %+v", i, k, k2)
			}
		}
	})
}

// fuzzKEK is the key-encryption key the seeds of FuzzDecodeKeyRing and
// FuzzUnseal were sealed with; fuzzPreviousKEK the previous one the fuzz
// issuer still opens with (the seeds sealed under it), as during a KEK
// replacement.
var (
	fuzzKEK         = []byte("tokenwarden fuzz KEK 32 bytes!!!")
	fuzzPreviousKEK = []byte("tokenwarden fuzz old KEK 32 byte")
)

func fuzzKeyManager(tb testing.TB) *keyManager {
	keks, err := newKeyEncryptionKeys(fuzzKEK, fuzzPreviousKEK)
	if err != nil {
		tb.Fatal(err)
	}
	return &keyManager{keks: keks}
}

// FuzzUnseal: opening a sealed key record (its kid, the id of the KEK it
// names, the sealed bytes) never panics, and succeeds only for what was
// sealed under that very kid with one of the issuer's KEKs: the one the id
// names, or, for a record without an id, whichever opens it.
func FuzzUnseal(f *testing.F) {
	m := fuzzKeyManager(f)
	ids := []string{m.keks.currentID(), m.keks.previousIDs()[0]}
	f.Fuzz(func(t *testing.T, kid, kekID string, sealed []byte) {
		plain, err := m.keks.unseal(kid, kekID, sealed)
		if err != nil {
			if plain != nil {
				t.Fatal("plaintext with an error")
			}
			return
		}
		// It opened: so it is authentic for this kid and no other.
		if _, err := m.keks.unseal(kid+"x", kekID, sealed); err == nil {
			t.Fatalf("sealed key opens under kid %q and %q", kid, kid+"x")
		}
		// Exactly one KEK opens it: the one the id names, if it names one.
		opened := 0
		for _, id := range ids {
			if p, err := m.keks.unseal(kid, id, sealed); err == nil {
				opened++
				if kekID != "" && id != kekID {
					t.Fatalf("record naming KEK %s opens under KEK %s too", kekID, id)
				}
				if !bytes.Equal(p, plain) {
					t.Fatal("two plaintexts for one record")
				}
			}
		}
		if opened != 1 {
			t.Fatalf("record opens under %d KEKs", opened)
		}
		// Every record the seeds hold was sealed from such a plaintext; the
		// fuzzer cannot forge another.
		if !bytes.HasPrefix(plain, []byte("fuzz-plain-")) {
			t.Fatalf("opened a record nobody sealed: kid %q, plaintext %q", kid, plain)
		}
	})
}
