package main

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/issuer"
)

func newKeysCommand(g *globals) *cobra.Command {
	var a adminClient
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Show, rotate, revoke or re-seal the issuer's signing keys (admin API)",
	}
	a.register(cmd)
	var (
		reason string
		force  bool
	)
	revoke := &cobra.Command{
		Use:   "revoke KID --reason TEXT [--force]",
		Short: "Incident response for a leaked signing key: every sidecar refuses its tokens from now on",
		Long: "Revokes the signing key KID through the issuer's admin API and exits 0 only once the\n" +
			"revocation event is durably stored (JetStream acknowledged it). From the moment a sidecar\n" +
			"applies it, every token signed by KID is refused there (\"signing key revoked\"), cached\n" +
			"verdicts included, whatever its iat or jti. The issuer stops signing with KID at once and\n" +
			"drops it from the bundle and the JWKS; if KID was the active key, the next key signs at once.\n" +
			"Clients recover by refreshing (refresh tokens are not signed by the key).\n\n" +
			"--force is needed only to revoke the active key while its successor is not yet in the\n" +
			"published bundle: sidecars would then fetch the bundle on the first new token they meet.\n\n" +
			"  tokenwarden keys revoke 3q2-7wVx0dGkMUl0Ow5g_A --reason 'INC-1234: key leaked in a log'",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if reason == "" {
				return errors.New("--reason is required: say why the key is revoked (it is kept for audit)")
			}
			var res issuer.KeyRevocationResult
			body := map[string]any{"reason": reason, "force": force}
			if err := a.do(cmd.Context(), "POST", "/admin/v1/keys/"+url.PathEscape(args[0])+"/revoke", body, &res); err != nil {
				return err
			}
			return printKeyRevocation(g.stdout, res)
		},
	}
	revoke.Flags().StringVar(&reason, "reason", "", "why, for the audit trail (required)")
	revoke.Flags().BoolVar(&force, "force", false, "revoke the active key even when its successor is not in the published bundle yet")
	cmd.AddCommand(revoke)
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List the key ring: kid, alg, state and dates",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var info issuer.KeyRingInfo
			if err := a.do(cmd.Context(), "GET", "/admin/v1/keys", nil, &info); err != nil {
				return err
			}
			return printRing(g.stdout, info)
		},
	}, &cobra.Command{
		Use:   "rotate",
		Short: "Rotate now: the published next key starts signing and a new next key is published",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var info issuer.KeyRingInfo
			if err := a.do(cmd.Context(), "POST", "/admin/v1/keys/rotate", nil, &info); err != nil {
				return err
			}
			return printRing(g.stdout, info)
		},
	}, newKeysRewrapCommand(g, &a))
	return cmd
}

func printKeyRevocation(w io.Writer, res issuer.KeyRevocationResult) error {
	what := "revoked"
	if res.AlreadyRevoked {
		what = "already revoked"
	}
	_, err := fmt.Fprintf(w, "key %s %s (was %s)\n  event %s, stream sequence %d, kept until %s\n",
		res.Key.ID, what, res.Key.State, res.Revocation.ID, res.Revocation.Sequence, time.Unix(res.Revocation.ExpiresAt, 0).UTC().Format(time.RFC3339))
	if err == nil && res.ActivatedKID != "" {
		_, err = fmt.Fprintf(w, "  key %s signs from now on\n", res.ActivatedKID)
	}
	if err == nil && res.Warning != "" {
		_, err = fmt.Fprintf(w, "  warning: %s\n", res.Warning)
	}
	return err
}

func printRing(w io.Writer, info issuer.KeyRingInfo) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	// tabwriter buffers until Flush, which reports any write error.
	_, _ = fmt.Fprintln(tw, "KID\tALG\tSTATE\tCREATED\tACTIVATED\tRETIRED\tREMOVED AT\tBY")
	ts := func(t *time.Time) string {
		if t == nil {
			return "-"
		}
		return t.UTC().Format(time.RFC3339)
	}
	var revoked []issuer.KeyInfo
	for _, k := range info.Keys {
		act := ts(k.ActivatedAt)
		if k.SignsFrom != nil {
			act = "from " + ts(k.SignsFrom)
		}
		by := k.ActivatedBy
		if k.State == "revoked" {
			by = k.RevokedBy
			revoked = append(revoked, k)
		}
		if by == "" {
			by = "-"
		}
		_, _ = fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Alg, k.State, k.CreatedAt.UTC().Format(time.RFC3339), act, ts(k.RetiredAt), ts(k.RemoveAt), by)
	}
	_, _ = fmt.Fprintf(tw, "\nsequence %d, next transition %s\n", info.Sequence, info.NextTransition.UTC().Format(time.RFC3339))
	for _, k := range revoked {
		_, _ = fmt.Fprintf(tw, "revoked %s at %s by %s: %s\n", k.ID, ts(k.RevokedAt), k.RevokedBy, k.RevokeReason)
	}
	return tw.Flush()
}
