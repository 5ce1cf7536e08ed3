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
)

// newCheckCommand is a smoke test of a running issuer that needs nothing but
// this binary: the chart's `helm test` pod runs it (the image has no shell
// and no curl).
func newCheckCommand(g *globals) *cobra.Command {
	var iss, url string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check that an issuer is ready and publishes its discovery document and keys",
		Long: "Fetches the issuer's /readyz, /.well-known/openid-configuration and\n" +
			"/.well-known/jwks.json: it must be ready, the discovery document's issuer must be\n" +
			"--issuer, and the JWKS must hold at least one key. Prints one line and exits 0, or\n" +
			"prints what failed and exits 1. --url reaches the issuer where --issuer does not,\n" +
			"e.g. its in-cluster Service behind a public issuer URL.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if url == "" {
				url = iss
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			n, err := checkIssuer(ctx, strings.TrimSuffix(url, "/"), iss)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(g.stdout, "issuer %s is ready: discovery names it, JWKS holds %d key(s)\n", iss, n)
			return err
		},
	}
	cmd.Flags().StringVar(&iss, "issuer", envOr("TOKENWARDEN_ISSUER", "http://127.0.0.1:8080"), "the issuer identifier (iss) the discovery document must name (env TOKENWARDEN_ISSUER)")
	cmd.Flags().StringVar(&url, "url", "", "where to reach the issuer; default --issuer")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "give up after this long")
	return cmd
}

// checkIssuer runs the checks against base and returns the number of keys
// in the JWKS.
func checkIssuer(ctx context.Context, base, iss string) (int, error) {
	hc := &http.Client{}
	var ready struct {
		Checks map[string]string `json:"checks"`
	}
	if code, err := getJSON(ctx, hc, base+"/readyz", &ready); err != nil {
		return 0, err
	} else if code != http.StatusOK {
		var missing []string
		for k, v := range ready.Checks {
			if v != "ok" {
				missing = append(missing, k+": "+v)
			}
		}
		return 0, fmt.Errorf("issuer at %s is not ready (HTTP %d): %s", base, code, strings.Join(missing, "; "))
	}
	var disc struct {
		Issuer string `json:"issuer"`
	}
	if code, err := getJSON(ctx, hc, base+"/.well-known/openid-configuration", &disc); err != nil {
		return 0, err
	} else if code != http.StatusOK {
		return 0, fmt.Errorf("%s/.well-known/openid-configuration: HTTP %d", base, code)
	}
	if disc.Issuer != iss {
		return 0, fmt.Errorf("the discovery document at %s names issuer %q, want %q (the issuer's configured URL and --issuer differ)", base, disc.Issuer, iss)
	}
	// From base, not jwks_uri: jwks_uri is on the public URL, which the
	// checking pod may not reach.
	var set struct {
		Keys []struct {
			Kid string `json:"kid"`
			Kty string `json:"kty"`
		} `json:"keys"`
	}
	if code, err := getJSON(ctx, hc, base+"/.well-known/jwks.json", &set); err != nil {
		return 0, err
	} else if code != http.StatusOK {
		return 0, fmt.Errorf("%s/.well-known/jwks.json: HTTP %d", base, code)
	}
	if len(set.Keys) == 0 {
		return 0, fmt.Errorf("%s/.well-known/jwks.json holds no key", base)
	}
	for _, k := range set.Keys {
		if k.Kid == "" || k.Kty == "" {
			return 0, fmt.Errorf("%s/.well-known/jwks.json holds a key without kid or kty", base)
		}
	}
	return len(set.Keys), nil
}

// getJSON GETs url and decodes its JSON body into out (also for error
// statuses, whose body may say why).
func getJSON(ctx context.Context, hc *http.Client, url string, out any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, fmt.Errorf("check %s: %w", url, err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return 0, fmt.Errorf("%s: no answer in time (--timeout)", url)
		}
		return 0, fmt.Errorf("%s: %w", url, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", url, err)
	}
	if err := json.Unmarshal(b, out); err != nil && resp.StatusCode == http.StatusOK {
		return 0, fmt.Errorf("%s: not JSON: %w", url, err)
	}
	return resp.StatusCode, nil
}
