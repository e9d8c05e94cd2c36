package main

import (
	"github.com/spf13/cobra"

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
			be, err := g.createBackend(ctx, nil)
			if err != nil {
				return err
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
