package sidecar

import (
	"slices"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// verdictCase is one row of the table HTTP /verify and gRPC Check must
// answer alike.
type verdictCase struct {
	name          string
	authorization []string // the client's Authorization header(s)
	scope         string   // the route's required scopes
	code          int
	// challenge: the WWW-Authenticate value, exactly, or its start when
	// it ends in "…".
	challenge string
	// joinedByEnvoy: the case has several Authorization headers, which
	// Envoy's headers map joins into one comma-separated value (header_map
	// keeps them apart). The sidecar cannot tell a joined value from a
	// single one, so that encoding is held only to the same status: a
	// denial, its challenge maybe the bare one (a joined "Basic …,Bearer …"
	// is a Basic credential, no token).
	joinedByEnvoy bool
}

// askAll answers c over every transport: /verify, and Check with the
// scope in a request header or in context_extensions, with Envoy's headers
// map or its raw header_map. It fails the test unless every answer is the
// same and the expected one.
func askAll(t *testing.T, base string, client authv3.AuthorizationClient, c verdictCase) {
	t.Helper()
	want := askHTTP(t, base, c.authorization, c.scope)
	if want.code != c.code || !challengeMatches(want.challenge, c.challenge) {
		t.Fatalf("/verify: %v, want %d %q", want, c.code, c.challenge)
	}
	if c.code == 200 && !strings.Contains(want.auth, "x-auth-subject=") {
		t.Fatalf("/verify allowed without identity headers: %v", want)
	}
	for _, tr := range []struct {
		name              string
		viaExtension, raw bool
	}{{"grpc header", false, false}, {"grpc context_extensions", true, false}, {"grpc header_map", false, true}, {"grpc header_map context_extensions", true, true}} {
		got := askGRPC(t, client, c.authorization, c.scope, tr.viaExtension, tr.raw)
		if c.joinedByEnvoy && !tr.raw {
			if got.code != want.code || got.auth != "" || !strings.HasPrefix(got.challenge, realm) {
				t.Errorf("%s: %v, /verify %v", tr.name, got, want)
			}
			continue
		}
		if got != want {
			t.Errorf("%s: %v\n/verify: %v", tr.name, got, want)
		}
	}
}

func challengeMatches(got, want string) bool {
	if p, ok := strings.CutSuffix(want, "…"); ok {
		return strings.HasPrefix(got, p)
	}
	return got == want
}

// TestVerdictsAgree is the shared table: /verify and Check give the same
// verdict, challenge and identity headers for every kind of request.
func TestVerdictsAgree(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	sc := w.start(w.config())
	sc.waitReady(t)
	client := authv3.NewAuthorizationClient(sc.serveGRPC(t))

	tok := w.token()
	expired := w.token(func(c *jwks.Claims) { c.Expiry = w.clock.Now().Add(-time.Hour).Unix(); c.IssuedAt = c.Expiry - 600 })
	otherAud := w.token(func(c *jwks.Claims) { c.Audience = jwks.Audience{"other-api"} })
	otherIss := w.token(func(c *jwks.Claims) { c.Issuer = "https://evil.example" })
	invalid := realm + `, error="invalid_token", error_description="…`
	cases := []verdictCase{
		{name: "valid", authorization: []string{"Bearer " + tok}, code: 200},
		{name: "valid, scheme in lower case", authorization: []string{"bearer " + tok}, code: 200},
		{name: "valid with the required scopes", authorization: []string{"Bearer " + tok}, scope: "read write", code: 200},
		{name: "expired", authorization: []string{"Bearer " + expired}, code: 401,
			challenge: realm + `, error="invalid_token", error_description="token expired"`},
		{name: "wrong audience", authorization: []string{"Bearer " + otherAud}, code: 401, challenge: invalid},
		{name: "wrong issuer", authorization: []string{"Bearer " + otherIss}, code: 401, challenge: invalid},
		{name: "tampered", authorization: []string{"Bearer " + tok[:len(tok)-4] + "AAAA"}, code: 401, challenge: invalid},
		{name: "missing scope", authorization: []string{"Bearer " + tok}, scope: "read admin", code: 403,
			challenge: realm + `, error="insufficient_scope", error_description="the token lacks a required scope", scope="admin"`},
		{name: "a required scope no token can hold", authorization: []string{"Bearer " + tok}, scope: `a"b`, code: 403,
			challenge: realm + `, error="insufficient_scope", error_description="the token lacks a required scope", scope="invalid-scope-requested"`},
		{name: "missing scope without a token", scope: "read", code: 401, challenge: realm},
		{name: "no token", code: 401, challenge: realm},
		{name: "another scheme", authorization: []string{"Basic YTpi"}, code: 401, challenge: realm},
		{name: "scheme alone", authorization: []string{"Bearer"}, code: 401, challenge: realm},
		{name: "malformed header", authorization: []string{"Bearer " + tok + " x"}, code: 401,
			challenge: realm + `, error="invalid_request", error_description="malformed bearer token"`},
		{name: "two Authorization headers", authorization: []string{"Bearer " + tok, "Bearer " + tok}, code: 401,
			challenge: realm + `, error="invalid_request", error_description="more than one Authorization header"`, joinedByEnvoy: true},
		{name: "a token and another scheme", authorization: []string{"Basic YTpi", "Bearer " + tok}, code: 401,
			challenge: realm + `, error="invalid_request", error_description="more than one Authorization header"`, joinedByEnvoy: true},
	}
	corpus := attackCorpus(t, w)
	for _, set := range []map[string]string{corpus.seeds, corpus.crafted} {
		for name, a := range set {
			cases = append(cases, verdictCase{name: "attack " + name, authorization: []string{"Bearer " + a}, code: 401, challenge: invalid})
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { askAll(t, sc.url, client, c) })
	}
}

// TestRevokedVerdictsAgree publishes a revocation event of every kind
// (revocation.Kinds, so a new kind is covered as soon as it exists) and
// checks /verify and Check both refuse the token, alike. Each kind gets a
// system of its own: "all" and "kid" revoke every token there is.
func TestRevokedVerdictsAgree(t *testing.T) {
	// The error description of each kind; a kind missing here is still
	// checked, for agreement and invalid_token.
	reasons := map[revocation.Kind]string{
		revocation.KindJTI: revocation.ReasonToken, revocation.KindSID: revocation.ReasonSession, revocation.KindSub: revocation.ReasonSubject,
		revocation.KindClient: revocation.ReasonClient, revocation.KindAll: revocation.ReasonAll, "kid": "signing key revoked",
	}
	for _, kind := range revocation.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			w := newWorld(t, jwks.ES256)
			sc := w.start(w.config())
			sc.waitReady(t)
			client := authv3.NewAuthorizationClient(sc.serveGRPC(t))
			tok := w.token()
			claims := introspect(t, sc, tok)
			var value string
			switch kind {
			case revocation.KindJTI:
				value = claims["jti"].(string)
			case revocation.KindSID:
				value = claims["sid"].(string)
			case revocation.KindSub:
				value = claims["sub"].(string)
			case revocation.KindClient:
				value = claims["client_id"].(string)
			case revocation.KindAll:
			case "kid":
				value = w.ring.Active().ID
			default:
				t.Fatalf("revocation kind %q is new: say here which token value it names", kind)
			}
			askAll(t, sc.url, client, verdictCase{authorization: []string{"Bearer " + tok}, code: 200})
			now := w.clock.Now()
			e, err := revocation.NewEvent(kind, value, now, now.Add(time.Hour), "test", now)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := revocation.NewPublisher(w.js, "tokenwarden", w.dist).Publish(t.Context(), e); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "event applied", func() bool { return askHTTP(t, sc.url, []string{"Bearer " + tok}, "").code == 401 })
			want := realm + `, error="invalid_token", error_description="…`
			if r, ok := reasons[kind]; ok {
				want = realm + `, error="invalid_token", error_description="` + r + `"`
			}
			// The cached token (a hit) and the same token's first sight
			// (a miss, after the cache lost it to a new key set) alike.
			askAll(t, sc.url, client, verdictCase{authorization: []string{"Bearer " + tok}, code: 401, challenge: want})
		})
	}
}

// TestGRPCMetrics: Check is counted as /verify is, under transport grpc.
func TestGRPCMetrics(t *testing.T) {
	w := newWorld(t, jwks.ES256)
	sc := w.start(w.config())
	sc.waitReady(t)
	client := authv3.NewAuthorizationClient(sc.serveGRPC(t))
	tok := w.token()
	askGRPC(t, client, []string{"Bearer " + tok}, "", false, false)
	askGRPC(t, client, []string{"Bearer " + tok}, "admin", true, false)
	askGRPC(t, client, nil, "", false, false)
	askHTTP(t, sc.url, []string{"Bearer " + tok}, "")
	m := scrape(t, sc.url)
	for _, line := range []string{
		`tokenwarden_verifications_total{result="valid",transport="grpc"} 1`,
		`tokenwarden_verifications_total{result="insufficient_scope",transport="grpc"} 1`,
		`tokenwarden_verifications_total{result="no_token",transport="grpc"} 1`,
		`tokenwarden_verifications_total{result="valid",transport="http"} 1`,
		`tokenwarden_verification_duration_seconds_count{transport="grpc"} 2`,
		`tokenwarden_verification_duration_seconds_count{transport="http"} 1`,
	} {
		if !slices.Contains(strings.Split(m, "\n"), line) {
			t.Errorf("metrics lack %s:\n%s", line, grepLines(m, "tokenwarden_verification"))
		}
	}
}
