package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"bunker/internal/snapshot"
	"bunker/internal/ui"
)

func addFilterFlags(c *cobra.Command, f *snapshotFilter) {
	c.Flags().StringArrayVar(&f.hosts, "host", nil, "only snapshots of this `host` (repeatable)")
	c.Flags().StringArrayVar(&f.tags, "tag", nil, "only snapshots with this `tag` (repeatable)")
	c.Flags().StringArrayVar(&f.paths, "path", nil, "only snapshots of this `path` (repeatable)")
}

type snapshotJSON struct {
	*snapshot.Snapshot
	ID      string `json:"id"`
	ShortID string `json:"short_id"`
}

func newSnapshotsCmd(g *globalOptions) *cobra.Command {
	var f snapshotFilter
	c := &cobra.Command{
		Use:   "snapshots",
		Short: "List snapshots",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx := c.Context()
			r, err := g.openRepo(ctx, false)
			if err != nil {
				return err
			}
			defer closeRepo(r)
			snaps, damaged, err := r.ReadableSnapshots(ctx)
			if err != nil {
				return err
			}
			var out []snapshotJSON
			var rows [][]string
			for _, sn := range snaps {
				if !f.match(sn) {
					continue
				}
				out = append(out, snapshotJSON{Snapshot: sn, ID: sn.ID.String(), ShortID: sn.ID.Short()})
				size := ""
				if sn.Summary != nil {
					size = ui.Bytes(sn.Summary.BytesProcessed)
				}
				rows = append(rows, []string{sn.ID.Short(), sn.Time.Local().Format("2006-01-02 15:04:05"), sn.Hostname,
					strings.Join(sn.Tags, ","), size, strings.Join(sn.Paths, " ")})
			}
			if g.json {
				if out == nil {
					out = []snapshotJSON{}
				}
				if err := printJSON(c.OutOrStdout(), out); err != nil {
					return err
				}
			} else {
				ui.Table(c.OutOrStdout(), []string{"ID", "Time", "Host", "Tags", "Size", "Paths"}, rows)
				fmt.Fprintf(c.OutOrStdout(), "%d snapshots\n", len(rows))
			}
			if len(damaged) > 0 {
				return errDamagedLeftOut(damaged)
			}
			return nil
		},
	}
	addFilterFlags(c, &f)
	return c
}
