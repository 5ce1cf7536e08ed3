package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/jwks"
	"github.com/tokenwarden/tokenwarden/sidecar"
)

// InProcess adapts the verifier of a sidecar embedded in the app
// (sidecar.New(…).Verifier()) to Verifier: no HTTP hop, and the same
// answers — status, error code, description, scope — as the sidecar's
// /verify gives for the same token and scopes.
func InProcess(v *sidecar.Verifier) Verifier { return inProcess{v: v} }

type inProcess struct{ v *sidecar.Verifier }

func (p inProcess) VerifyToken(_ context.Context, token string, scopes ...string) (*Identity, error) {
	if p.v == nil {
		return nil, fmt.Errorf("%w: no in-process verifier", ErrUnavailable)
	}
	if token == "" {
		return nil, ErrNoToken
	}
	if err := checkTokenSyntax(token); err != nil {
		return nil, err
	}
	c, _, err := p.v.Verify(token)
	if err != nil {
		// The sidecar's reasonOf: a VerifyError's fixed Reason, or a
		// generic text.
		desc := "invalid token"
		var ve *jwks.VerifyError
		if errors.As(err, &ve) && ve.Reason != "" {
			desc = ve.Reason
		}
		return nil, &Error{Status: http.StatusUnauthorized, Code: CodeInvalidToken, Description: desc}
	}
	if missing := sidecar.MissingScopes(c, strings.Join(scopes, " ")); missing != "" {
		return nil, &Error{Status: http.StatusForbidden, Code: CodeInsufficientScope,
			Description: "the token lacks a required scope", Scope: missing}
	}
	return &Identity{Subject: c.Subject, ClientID: c.ClientID, Scopes: c.Scopes(), TokenID: c.ID,
		ExpiresAt: time.Unix(c.Expiry, 0)}, nil
}
