package issuer

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestRefreshTokenWithLineBreaks: base64's strict decoder skips CR and LF,
// so a refresh token with them in its family id used to pass the syntax
// check, fail the KV lookup as an invalid key and be answered 503
// temporarily_unavailable (with an error log line per request). It is a
// malformed token: 400 invalid_grant at the token endpoint, 200 at RFC
// 7009 revocation.
func TestRefreshTokenWithLineBreaks(t *testing.T) {
	e := newEnv(t)
	in := e.start()
	in.waitReady(t)
	for _, tok := range []string{
		"AAAAAAAAAAAAAAAAAAAA\n\n.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"AAAAAAAAAAAAAAAAAAAA\r\n.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n\n",
	} {
		if _, ok := parseRefreshToken(tok); ok {
			t.Errorf("%q parsed", tok)
		}
		if r := in.post(t, "app", "app-secret", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok}}); r.Status != 400 || r.str("error") != "invalid_grant" {
			t.Errorf("refresh with %q: %d %v", tok, r.Status, r.Body)
		}
		req, _ := http.NewRequest(http.MethodPost, in.url+"/oauth2/revoke", strings.NewReader(url.Values{"token": {tok}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("app", "app-secret")
		if r := do(t, req); r.Status != 200 {
			t.Errorf("revoke %q: %d %v", tok, r.Status, r.Body)
		}
	}
}
