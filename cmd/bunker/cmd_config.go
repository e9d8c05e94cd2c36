package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"bunker/internal/policy"
)

// settingKeys documents the keys `bunker config` knows.
const settingKeys = "min-retention (a duration such as 14d, 2m, 1y; \"off\" for none)"

func newConfigCmd(g *globalOptions) *cobra.Command {
	c := &cobra.Command{
		Use:   "config",
		Short: "Show or change repository settings; validate director and agent configuration files",
		Long:  "Repository settings:\n  " + settingKeys,
	}
	get := &cobra.Command{
		Use:   "get [KEY]",
		Short: "Show the repository settings",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if len(args) == 1 && args[0] != "min-retention" {
				return usagef("unknown setting %q; settings: %s", args[0], settingKeys)
			}
			ctx := c.Context()
			r, err := g.openRepo(ctx, false)
			if err != nil {
				return err
			}
			defer closeRepo(r)
			s, _, err := r.LoadSettings(ctx)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(c.OutOrStdout(), s)
			}
			v := s.MinRetention
			if v == "" {
				v = "off"
			}
			fmt.Fprintf(c.OutOrStdout(), "min-retention %s\n", v)
			return nil
		},
	}
	set := &cobra.Command{
		Use:   "set KEY VALUE",
		Short: "Change a repository setting (takes the exclusive lock)",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			if args[0] != "min-retention" {
				return usagef("unknown setting %q; settings: %s", args[0], settingKeys)
			}
			value := args[1]
			if value == "off" || value == "0" {
				value = ""
			} else {
				d, err := policy.ParseDuration(value)
				if err != nil {
					return usagef("min-retention: %v", err)
				}
				value = d.String()
			}
			ctx := c.Context()
			r, lock, release, err := g.openRepoLocked(ctx, false, true)
			if err != nil {
				return err
			}
			defer release()
			s, _, err := r.LoadSettings(ctx)
			if err != nil {
				return err
			}
			if err := lock.Check(ctx); err != nil {
				return err
			}
			s.MinRetention = value
			if err := r.SaveSettings(ctx, s); err != nil {
				return err
			}
			if value == "" {
				value = "off"
			}
			g.msgf(c, "min-retention set to %s\n", value)
			return nil
		},
	}
	c.AddCommand(get, set, newConfigValidateCmd(g))
	return c
}
