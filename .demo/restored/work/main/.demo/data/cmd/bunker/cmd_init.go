package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"bunker/internal/backend"
	"bunker/internal/backend/local"
	"bunker/internal/repo/repository"
)

func newInitCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "init",
		Short: "Create a new repository",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx := c.Context()
			loc, err := g.repoLocation()
			if err != nil {
				return err
			}
			pw, err := g.password("enter a password for the new repository: ", true)
			if err != nil {
				return err
			}
			opts, err := g.repoOptions()
			if err != nil {
				return err
			}
			be, err := local.Create(ctx, loc)
			if errors.Is(err, backend.ErrExists) {
				return fmt.Errorf("%w at %s", repository.ErrAlreadyExists, loc)
			}
			if err != nil {
				return fmt.Errorf("create repository: %w", err)
			}
			defer be.Close()
			r, err := repository.Create(ctx, be, pw, opts)
			if err != nil {
				return err
			}
			defer r.Close()
			if g.json {
				return printJSON(c.OutOrStdout(), map[string]any{"message_type": "initialized", "id": r.Config().ID, "repository": loc})
			}
			g.msgf(c, "created repository %s at %s\n", r.Config().ID[:8], loc)
			g.msgf(c, "Keep the password safe: without it the data cannot be read back.\n")
			return nil
		},
	}
}
