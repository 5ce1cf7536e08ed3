package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
)

// revokedEvent is the part of the admin API's answer the command prints.
type revokedEvent struct {
	ID           string `json:"id"`
	Kind         string `json:"kind"`
	Value        string `json:"value"`
	IssuedBefore int64  `json:"issued_before"`
	ExpiresAt    int64  `json:"expires_at"`
	Reason       string `json:"reason"`
	Sequence     uint64 `json:"sequence"`
}

func newRevokeCommand(g *globals) *cobra.Command {
	var (
		a            adminClient
		issuedBefore string
		reason       string
		asJSON       bool
	)
	cmd := &cobra.Command{
		Use:   "revoke KIND VALUE | revoke all --issued-before T",
		Short: "Revoke tokens cluster-wide: one token (jti), a session (sid), a user (sub), a client, or all before a time",
		Long: "Revokes through the issuer's admin API and exits 0 only once the revocation is durably\n" +
			"stored (JetStream acknowledged it); every sidecar applies it within milliseconds.\n\n" +
			"  tokenwarden revoke jti 8Yh3cT0eQq2vZ1rP4xK9wA\n" +
			"  tokenwarden revoke sid SESSION_ID --reason 'lost laptop'\n" +
			"  tokenwarden revoke sub alice                      # every token alice holds now\n" +
			"  tokenwarden revoke client demo-app --issued-before 2026-11-29T12:00:00Z\n" +
			"  tokenwarden revoke all --issued-before 2026-11-29T12:00:00Z\n\n" +
			"sub, client and all revoke tokens issued at or before --issued-before (default: now);\n" +
			"tokens issued later, such as a fresh login, are not affected.",
		Args: func(_ *cobra.Command, args []string) error {
			switch {
			case len(args) == 1 && args[0] == "all":
				return nil
			case len(args) == 2 && args[0] != "all":
				switch args[0] {
				case "jti", "sid", "sub", "client":
					return nil
				case "kid":
					return errors.New("a signing key is revoked with: tokenwarden keys revoke KID --reason TEXT")
				}
				return fmt.Errorf("unknown kind %q: want jti, sid, sub, client or all", args[0])
			case len(args) == 2:
				return errors.New("revoke all takes no value, only --issued-before")
			}
			return errors.New("want KIND VALUE (jti, sid, sub, client) or: all --issued-before T")
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{"kind": args[0], "reason": reason}
			if len(args) == 2 {
				body["value"] = args[1]
			}
			if issuedBefore != "" {
				t, err := time.Parse(time.RFC3339, issuedBefore)
				if err != nil {
					return fmt.Errorf("--issued-before %q: want RFC 3339, like 2026-11-29T12:00:00Z", issuedBefore)
				}
				body["issued_before"] = t
			} else if args[0] == "all" {
				return errors.New("revoke all needs --issued-before (use the current time to revoke every token issued so far)")
			}
			var ev revokedEvent
			if err := a.do(cmd.Context(), "POST", "/admin/v1/revocations", body, &ev); err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(g.stdout).Encode(ev)
			}
			what := ev.Kind + " " + ev.Value
			if ev.Kind == "all" {
				what = "all tokens"
			}
			if ev.IssuedBefore != 0 {
				what += " issued at or before " + time.Unix(ev.IssuedBefore, 0).UTC().Format(time.RFC3339)
			}
			_, err := fmt.Fprintf(g.stdout, "revoked %s\n  event %s, stream sequence %d, kept until %s\n", what, ev.ID, ev.Sequence,
				time.Unix(ev.ExpiresAt, 0).UTC().Format(time.RFC3339))
			return err
		},
	}
	a.register(cmd)
	cmd.Flags().StringVar(&issuedBefore, "issued-before", "", "RFC 3339 time: revoke tokens issued at or before it (sub, client, all; default now)")
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the audit trail (never shown to token holders)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the stored event as JSON")
	return cmd
}
