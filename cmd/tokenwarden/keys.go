package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/issuer"
)

func newKeysCommand(g *globals) *cobra.Command {
	var a adminClient
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Show, rotate or re-seal the issuer's signing keys (admin API)",
	}
	a.register(cmd)
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

func printRing(w io.Writer, info issuer.KeyRingInfo) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	// tabwriter buffers until Flush, which reports any write error.
	_, _ = fmt.Fprintln(tw, "KID\tALG\tSTATE\tCREATED\tACTIVATED\tRETIRED\tREMOVED AT")
	ts := func(t *time.Time) string {
		if t == nil {
			return "-"
		}
		return t.UTC().Format(time.RFC3339)
	}
	for _, k := range info.Keys {
		act := ts(k.ActivatedAt)
		if k.SignsFrom != nil {
			act = "from " + ts(k.SignsFrom)
		}
		_, _ = fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Alg, k.State, k.CreatedAt.UTC().Format(time.RFC3339), act, ts(k.RetiredAt), ts(k.RemoveAt))
	}
	_, _ = fmt.Fprintf(tw, "\nsequence %d, next transition %s\n", info.Sequence, info.NextTransition.UTC().Format(time.RFC3339))
	return tw.Flush()
}
