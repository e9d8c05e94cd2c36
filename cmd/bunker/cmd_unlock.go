package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
)

func newUnlockCmd(g *globalOptions) *cobra.Command {
	var all bool
	c := &cobra.Command{
		Use:   "unlock",
		Short: "Remove stale locks (with --remove-all, every lock)",
		Long: "unlock removes locks whose holder is gone: not refreshed for 30 minutes, or held by a\n" +
			"process of this host that no longer runs. With --remove-all it removes live locks and\n" +
			"damaged ones too; their holders notice and stop before committing anything.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx := c.Context()
			r, err := g.openRepo(ctx, false)
			if err != nil {
				return err
			}
			defer closeRepo(r)
			locks, err := r.Locks(ctx)
			if err != nil {
				return err
			}
			type row struct {
				ID        string    `json:"id"`
				Exclusive bool      `json:"exclusive"`
				Host      string    `json:"hostname"`
				PID       int       `json:"pid"`
				Time      time.Time `json:"time"`
				Stale     bool      `json:"stale"`
				Removed   bool      `json:"removed"`
				Error     string    `json:"error,omitempty"`
			}
			out := []row{}
			for _, l := range locks {
				rw := row{ID: l.ID.String(), Exclusive: l.Info.Exclusive, Host: l.Info.Hostname, PID: l.Info.PID, Time: l.Info.Time, Stale: l.Stale}
				if l.Err != nil {
					rw.Error = oneLine(l.Err)
				}
				if all || l.Stale {
					if err := r.RemoveLock(ctx, l.ID); err != nil {
						return fmt.Errorf("remove lock %s: %w", l.ID.Short(), err)
					}
					rw.Removed = true
				}
				out = append(out, rw)
			}
			if g.json {
				return printJSON(c.OutOrStdout(), out)
			}
			kept := 0
			for _, rw := range out {
				what := "live"
				if rw.Stale {
					what = "stale"
				}
				if rw.Error != "" {
					if rw.Removed {
						g.msgf(c, "removed unreadable lock %s (%s)\n", shortName(rw.ID), rw.Error)
					} else {
						kept++
						g.msgf(c, "kept unreadable lock %s: it may belong to a running process; use --remove-all to remove it (%s)\n", shortName(rw.ID), rw.Error)
					}
					continue
				}
				if rw.Removed {
					g.msgf(c, "removed %s lock %s of PID %d on %s (%s)\n", what, shortName(rw.ID), rw.PID, rw.Host, rw.Time.Local().Format(time.DateTime))
				} else {
					kept++
					g.msgf(c, "kept live lock %s of PID %d on %s (%s); use --remove-all to remove it\n", shortName(rw.ID), rw.PID, rw.Host, rw.Time.Local().Format(time.DateTime))
				}
			}
			if len(out) == 0 {
				g.msgf(c, "no locks\n")
			}
			return nil
		},
	}
	c.Flags().BoolVar(&all, "remove-all", false, "remove live locks too")
	return c
}
