package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/issuer"
)

// newKeysRewrapCommand is `tokenwarden keys rewrap`, the step of a
// key-encryption key replacement that re-seals the stored signing keys
// (docs/operations.md, "Rotating the key-encryption key").
func newKeysRewrapCommand(g *globals, a *adminClient) *cobra.Command {
	return &cobra.Command{
		Use:   "rewrap",
		Short: "Re-seal every stored signing key under the issuer's current key-encryption key",
		Long: "Re-seals every signing key stored in NATS under the current key-encryption key of the\n" +
			"issuer replica that answers (which must also hold the previous one). The keys, the ring's\n" +
			"sequence and the bundle sidecars see do not change. Safe to repeat: a second run\n" +
			"re-seals nothing and confirms that every key is under the current key-encryption key.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res issuer.RewrapResult
			if err := a.do(cmd.Context(), "POST", "/admin/v1/keys/rewrap", nil, &res); err != nil {
				return err
			}
			_, err := fmt.Fprintf(g.stdout, "re-sealed %d of %d signing keys: all are sealed under key-encryption key %s (ring sequence %d, unchanged)\n",
				res.Resealed, res.Keys, res.KEKID, res.Sequence)
			return err
		},
	}
}
