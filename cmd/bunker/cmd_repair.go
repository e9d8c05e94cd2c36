package main

import (
	"fmt"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"bunker/internal/repair"
	"bunker/internal/snapshot"
)

func newRepairCmd(g *globalOptions) *cobra.Command {
	c := &cobra.Command{
		Use:   "repair",
		Short: "Rebuild the index from the packs, or rewrite snapshots around lost data",
	}
	var dryRun, forget, readData bool
	idx := &cobra.Command{
		Use:   "index",
		Short: "Rebuild the index from the packs' own headers (takes the exclusive lock)",
		Long: `Rebuild the index from the packs' own headers (takes the exclusive lock).

With --read-data every pack is also read whole and each of its blobs
verified: a pack with a damaged blob (a flipped bit that check --read-data
reported) has its other blobs copied to new packs and is removed, so that
the next backup stores the damaged data again rather than deduplicating
against it. Then run repair snapshots.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx := c.Context()
			r, lock, release, err := g.openRepoLocked(ctx, false, true)
			if err != nil {
				return err
			}
			defer release()
			ropts := []repair.Option{repair.WithLock(lock)}
			if readData {
				ropts = append(ropts, repair.ReadData())
			}
			res, err := repair.RebuildIndex(ctx, r, dryRun, ropts...)
			if res != nil && res.NewIndex != "" || err == nil {
				// Also when a removal after the new index failed: what
				// was done, then the error.
				if perr := printIndexResult(c, g, res, dryRun, readData); perr != nil && err == nil {
					err = perr
				}
			}
			return err
		},
	}
	idx.Flags().BoolVarP(&dryRun, "dry-run", "n", false, "report only; write nothing")
	idx.Flags().BoolVar(&readData, "read-data", false, "also read every pack whole and verify each blob")
	snaps := &cobra.Command{
		Use:   "snapshots",
		Short: "Rewrite snapshots that refer to lost data, leaving out what is lost (takes the exclusive lock)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx := c.Context()
			r, lock, release, err := g.openRepoLocked(ctx, true, true)
			if err != nil {
				return err
			}
			defer release()
			fl, err := loadFloor(ctx, r, time.Now())
			if err != nil {
				return err
			}
			keep := func(sn *snapshot.Snapshot) bool {
				young, err := fl.holds(ctx, sn)
				return young || err != nil // when in doubt, keep the original
			}
			res, err := repair.Snapshots(ctx, r, dryRun, forget, repair.WithLock(lock), repair.KeepSnapshots(keep))
			if err != nil {
				return err
			}
			if g.json {
				if res == nil {
					res = []repair.SnapshotResult{}
				}
				return printJSON(c.OutOrStdout(), res)
			}
			w := c.OutOrStdout()
			for _, s := range res {
				switch {
				case s.Unreadable:
					fmt.Fprintf(w, "snapshot %s: its file is damaged; nothing of it can be read\n", shortName(s.ID))
				case s.RootLost:
					fmt.Fprintf(w, "snapshot %s: its root tree is lost; nothing of it can be restored\n", shortName(s.ID))
				case s.New != "":
					fmt.Fprintf(w, "snapshot %s: rewritten as %s without %d lost entries:\n", shortName(s.ID), shortName(s.New), len(s.Lost))
				default:
					fmt.Fprintf(w, "snapshot %s: %d lost entries:\n", shortName(s.ID), len(s.Lost))
				}
				if !s.RootLost {
					for _, l := range s.Lost {
						fmt.Fprintf(w, "  lost %s\n", quote(l))
					}
				}
				if s.Removed {
					fmt.Fprintf(w, "  removed the original snapshot %s\n", shortName(s.ID))
				}
				if s.KeptByFloor && s.Unreadable {
					fmt.Fprintf(w, "  kept the damaged snapshot file %s: the storage has held it for less than the repository's min-retention;\n"+
						"  forget, prune and copy refuse to run until it is gone (see the runbook: docs/operations.md)\n", shortName(s.ID))
				} else if s.KeptByFloor {
					fmt.Fprintf(w, "  kept the original snapshot %s: it is younger than the repository's min-retention\n", shortName(s.ID))
				}
			}
			if len(res) == 0 {
				g.msgf(c, "no snapshot refers to lost data\n")
			} else if !forget && !dryRun {
				g.msgf(c, "the damaged originals are kept; run again with --forget to remove them\n")
			}
			return nil
		},
	}
	snaps.Flags().BoolVarP(&dryRun, "dry-run", "n", false, "report only; write nothing")
	snaps.Flags().BoolVar(&forget, "forget", false, "remove each damaged original once its repaired copy is stored")
	c.AddCommand(idx, snaps)
	return c
}

// printIndexResult prints what repair index found and did.
func printIndexResult(c *cobra.Command, g *globalOptions, res *repair.IndexResult, dryRun, readData bool) error {
	if g.json {
		return printJSON(c.OutOrStdout(), res)
	}
	w := c.OutOrStdout()
	for _, p := range res.Damaged {
		fmt.Fprintf(w, "pack %s: header unreadable, left out of the index\n", p)
	}
	if readData {
		fmt.Fprintf(w, "read %d packs: %d blobs failed to verify\n", res.PacksRead, res.BadBlobs)
	}
	for _, p := range res.DamagedData {
		switch {
		case dryRun:
			fmt.Fprintf(w, "pack %s: content damaged, would be left out of the index and removed\n", p)
		case slices.Contains(res.RemovedPacks, p):
			fmt.Fprintf(w, "pack %s: content damaged, left out of the index and removed\n", p)
		case slices.Contains(res.StillLocked, p):
			fmt.Fprintf(w, "pack %s: content damaged, left out of the index; Object Lock still holds it (prune removes it once that runs out; until then use repair index --read-data)\n", p)
		default:
			fmt.Fprintf(w, "pack %s: content damaged, left out of the index\n", p)
		}
	}
	switch {
	case dryRun && len(res.Salvaged)+len(res.DamagedData) > 0:
		fmt.Fprintf(w, "would copy the intact blobs of %d damaged packs to new packs\n", len(res.Salvaged)+len(res.DamagedData))
	case len(res.Salvaged)+len(res.DamagedData) > 0:
		fmt.Fprintf(w, "copied %d intact blobs of %d damaged packs to new packs\n", res.SalvagedBlobs, len(res.Salvaged)+len(res.DamagedData))
	}
	verb := "indexed"
	if dryRun {
		verb = "would index"
	}
	fmt.Fprintf(w, "%s %d blobs in %d packs, replacing %d index files\n", verb, res.Blobs, res.Packs, res.Superseded)
	if res.LostBlobs > 0 {
		fmt.Fprintf(w, "%d blobs the old index named are in no readable pack: run `bunker repair snapshots` to find what they belonged to\n", res.LostBlobs)
	}
	return nil
}
