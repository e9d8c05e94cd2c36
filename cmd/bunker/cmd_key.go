package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"bunker/internal/ui"
)

func newKeyCmd(g *globalOptions) *cobra.Command {
	var newPasswordFile string
	readNew := func() ([]byte, error) {
		if newPasswordFile != "" {
			b, err := os.ReadFile(newPasswordFile)
			if err != nil {
				return nil, fmt.Errorf("read new password file: %w", err)
			}
			return checkPassword(firstLine(b))
		}
		return readTerminalPassword("enter the new password: ", true)
	}
	c := &cobra.Command{Use: "key", Short: "Manage the repository's key slots (passwords)"}
	add := &cobra.Command{
		Use: "add", Short: "Add a key slot with a new password", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			r, err := g.openRepo(c.Context(), false)
			if err != nil {
				return err
			}
			defer closeRepo(r)
			pw, err := readNew()
			if err != nil {
				return err
			}
			id, err := r.AddKey(c.Context(), pw)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(c.OutOrStdout(), map[string]string{"id": id})
			}
			fmt.Fprintf(c.OutOrStdout(), "added key %s\n", shortName(id))
			return nil
		},
	}
	list := &cobra.Command{
		Use: "list", Short: "List key slots", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			r, err := g.openRepo(c.Context(), false)
			if err != nil {
				return err
			}
			defer closeRepo(r)
			keys, err := r.ListKeys(c.Context())
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(c.OutOrStdout(), keys)
			}
			var rows [][]string
			for _, k := range keys {
				cur := ""
				if k.Current {
					cur = "*"
				}
				created := k.Created.Local().Format("2006-01-02 15:04:05")
				if k.Damaged {
					created = "damaged: does not decode"
				}
				rows = append(rows, []string{cur + shortName(k.ID), k.Username, k.Hostname, created})
			}
			ui.Table(c.OutOrStdout(), []string{"ID", "User", "Host", "Created"}, rows)
			return nil
		},
	}
	remove := &cobra.Command{
		Use: "remove ID", Short: "Remove a key slot (not the one in use)", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			r, err := g.openRepo(c.Context(), false)
			if err != nil {
				return err
			}
			defer closeRepo(r)
			id, err := r.RemoveKey(c.Context(), args[0])
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(c.OutOrStdout(), map[string]string{"removed": id})
			}
			g.msgf(c, "removed key %s\n", shortName(id))
			return nil
		},
	}
	passwd := &cobra.Command{
		Use: "passwd", Short: "Change the password: add a new key slot, then remove the one in use", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx := c.Context()
			r, err := g.openRepo(ctx, false)
			if err != nil {
				return err
			}
			defer closeRepo(r)
			pw, err := readNew()
			if err != nil {
				return err
			}
			old := r.KeyName()
			id, err := r.AddKey(ctx, pw)
			if err != nil {
				return err
			}
			if err := r.RemoveKeyByID(ctx, old); err != nil {
				return fmt.Errorf("new key %s added, but removing the old key %s failed: %w", shortName(id), shortName(old), err)
			}
			if g.json {
				return printJSON(c.OutOrStdout(), map[string]string{"added": id, "removed": old})
			}
			g.msgf(c, "password changed: key %s replaces %s\n", shortName(id), shortName(old))
			return nil
		},
	}
	for _, sub := range []*cobra.Command{add, passwd} {
		sub.Flags().StringVar(&newPasswordFile, "new-password-file", "", "file holding the new password")
	}
	c.AddCommand(add, list, remove, passwd)
	return c
}

// shortName is the first 8 characters of a stored object's name, as IDs are
// shown; a stray file in the repository (keys/, locks/, snapshots/) may
// have a shorter name, which is shown whole, quoted.
func shortName(name string) string {
	if len(name) > 8 {
		return name[:8]
	}
	return quote(name)
}
