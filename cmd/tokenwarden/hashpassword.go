package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/issuer/directory"
)

func newHashPasswordCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "hash-password",
		Short: "Read a password (or client secret) from stdin and print its argon2id hash",
		Long: "Reads one line from standard input and prints an argon2id hash for the\n" +
			"password_hash of a user or the secret_hash of a client, e.g.\n\n" +
			"  printf '%s' \"$PASSWORD\" | tokenwarden hash-password",
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			line, err := bufio.NewReader(io.LimitReader(g.stdin, 4096)).ReadString('\n')
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read password from stdin: %w", err)
			}
			pw := strings.TrimRight(line, "\r\n")
			if pw == "" {
				return errors.New("hash-password: empty password on stdin")
			}
			h, err := directory.HashPassword([]byte(pw), directory.DefaultParams())
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(g.stdout, h)
			return err
		},
	}
}
