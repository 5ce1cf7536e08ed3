package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokenwarden/tokenwarden/issuer"
)

// adminClient calls the issuer's admin API with a client_credentials token
// for scope tokenwarden:admin.
type adminClient struct {
	base         string
	clientID     string
	clientSecret string
}

func (a *adminClient) register(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&a.base, "issuer", envOr("TOKENWARDEN_ISSUER", "http://127.0.0.1:8080"), "issuer base URL (env TOKENWARDEN_ISSUER)")
	cmd.PersistentFlags().StringVar(&a.clientID, "client-id", envOr("TOKENWARDEN_CLIENT_ID", ""), "admin client id (env TOKENWARDEN_CLIENT_ID)")
	cmd.PersistentFlags().StringVar(&a.clientSecret, "client-secret", envOr("TOKENWARDEN_CLIENT_SECRET", ""), "admin client secret (env TOKENWARDEN_CLIENT_SECRET; prefer the variable: flags show in ps)")
}

// do sends method path with an optional JSON body and decodes a 2xx answer
// into out. Any other answer becomes an error carrying the server's
// error_description.
func (a *adminClient) do(ctx context.Context, method, path string, body, out any) error {
	if a.clientID == "" || a.clientSecret == "" {
		return errors.New("admin API: --client-id and --client-secret (or TOKENWARDEN_CLIENT_ID and TOKENWARDEN_CLIENT_SECRET) are required")
	}
	base := strings.TrimSuffix(a.base, "/")
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cc := clientcredentials.Config{ClientID: a.clientID, ClientSecret: a.clientSecret, TokenURL: base + "/oauth2/token",
		Scopes: []string{issuer.AdminScope}, AuthStyle: oauth2.AuthStyleInHeader}
	hc := cc.Client(ctx)
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return fmt.Errorf("admin API %s: %w", base, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			return fmt.Errorf("admin API %s: getting a token failed: %s %s", base, re.ErrorCode, re.ErrorDescription)
		}
		return fmt.Errorf("admin API %s: %w", base, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("admin API %s: %w", base, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		_ = json.Unmarshal(b, &e)
		if e.Error == "" {
			e.Error = http.StatusText(resp.StatusCode)
		}
		return fmt.Errorf("admin API %s %s: %d %s: %s", method, path, resp.StatusCode, e.Error, e.Description)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("admin API %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}
