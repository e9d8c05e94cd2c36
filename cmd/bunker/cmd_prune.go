package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"bunker/internal/pruner"
	"bunker/internal/repo/repository"
	"bunker/internal/ui"
)

type pruneOptions struct {
	maxUnused      float64
	unindexedGrace time.Duration
}

func (o *pruneOptions) register(c *cobra.Command) {
	c.Flags().Float64Var(&o.maxUnused, "max-unused", pruner.DefaultMaxUnused, "repack a pack when more than this `percent` of its bytes is unused")
	c.Flags().DurationVar(&o.unindexedGrace, "unindexed-grace", pruner.DefaultUnindexedGrace,
		"delete packs that no index names only when older than this (they may belong to a backup still running)")
}

func (o pruneOptions) options() (pruner.Options, error) {
	opts := pruner.Options{MaxUnused: o.maxUnused, UnindexedGrace: o.unindexedGrace}
	if opts.MaxUnused == 0 {
		opts.MaxUnused = 0.000001 // 0 means "repack anything with unused data", not the default
	}
	if v := os.Getenv("BUNKER_TEST_PRUNE_WAIT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return opts, usagef("BUNKER_TEST_PRUNE_WAIT: %v", err)
		}
		opts.Wait = max(d, time.Nanosecond)
	}
	if o.unindexedGrace == 0 {
		opts.UnindexedGrace = time.Nanosecond
	}
	if err := opts.Validate(); err != nil {
		return opts, usageError{err}
	}
	return opts, nil
}

func newPruneCmd(g *globalOptions) *cobra.Command {
	var o pruneOptions
	var dryRun bool
	c := &cobra.Command{
		Use:   "prune",
		Short: "Delete data no snapshot uses (under an exclusive lock)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			opts, err := o.options()
			if err != nil {
				return err
			}
			ctx := c.Context()
			r, lock, release, err := g.openRepoLocked(ctx, false, true)
			if err != nil {
				return err
			}
			defer release()
			return runPrune(c, g, r, lock, opts, dryRun)
		},
	}
	o.register(c)
	c.Flags().BoolVarP(&dryRun, "dry-run", "n", false, "print what would be deleted and repacked; change nothing")
	return c
}

// runPrune plans a prune, prints the plan and, unless dryRun, carries it out.
// r is open without its index, and lock is exclusive.
func runPrune(c *cobra.Command, g *globalOptions, r *repository.Repository, lock *repository.Lock, opts pruner.Options, dryRun bool) error {
	ctx := c.Context()
	opts.Lock = lock
	status := ""
	opts.Progress = func(s string) { status = s }
	opts.IndexLoaded = func(blobs int) { setMemoryLimit(2 * blobs) } // about 400 bytes per blob: the plan and the next index
	stop := ui.StartProgress(c.ErrOrStderr(), !g.quiet && !g.json && isTerminal(os.Stderr), func() string { return status })
	defer stop()
	now, err := lock.StorageTime(ctx)
	if err != nil {
		return err
	}
	plan, err := pruner.MakePlan(ctx, r, opts, now)
	if err != nil {
		return err
	}
	if !g.json {
		stop()
		printPlan(c, g, plan, opts)
	}
	if dryRun {
		if g.json {
			return printJSON(c.OutOrStdout(), map[string]any{"message_type": "prune", "dry_run": true, "plan": plan})
		}
		g.msgf(c, "dry run: nothing changed; a prune would free %s\n", ui.Bytes(uint64(max(plan.FreedBytes(), 0))))
		return nil
	}
	res, err := pruner.Execute(ctx, r, plan, opts)
	if err != nil {
		return fmt.Errorf("prune: %w", err)
	}
	if g.json {
		return printJSON(c.OutOrStdout(), map[string]any{"message_type": "prune", "dry_run": false, "plan": plan, "result": res})
	}
	for _, id := range res.Rescued {
		fmt.Fprintf(c.OutOrStdout(), "kept pack %s: a snapshot written during the prune uses it\n", id.Short())
	}
	if plan.Nothing() {
		g.msgf(c, "nothing to prune\n")
		return nil
	}
	g.msgf(c, "deleted %d packs (%s) and %d superseded index files; wrote %d new packs and index %s\n",
		res.DeletedPacks, ui.Bytes(uint64(res.DeletedBytes)), res.DeletedIndexes, res.NewPacks, res.NewIndex.Short())
	return nil
}

// printPlan prints a plan; the per-pack lines are the same for --dry-run
// and the real run.
func printPlan(c *cobra.Command, g *globalOptions, p *pruner.Plan, opts pruner.Options) {
	if g.quiet {
		return
	}
	w := c.OutOrStdout()
	fmt.Fprintf(w, "%d snapshots, %d index files, %d packs\n", p.Snapshots, p.IndexFiles, p.Packs)
	fmt.Fprintf(w, "used:   %d blobs, %s\n", p.UsedBlobs, ui.Bytes(uint64(p.UsedBytes)))
	fmt.Fprintf(w, "unused: %d blobs, %s\n", p.UnusedBlobs, ui.Bytes(uint64(p.UnusedBytes)))
	for _, pi := range p.Delete {
		fmt.Fprintf(w, "delete pack %s: no used blob (%s)\n", pi.ID, ui.Bytes(uint64(pi.Size)))
	}
	for _, pi := range p.Repack {
		fmt.Fprintf(w, "repack pack %s: %d of %d blobs used, %s unused\n", pi.ID, pi.UsedBlobs, pi.Blobs, ui.Bytes(uint64(pi.UnusedBytes)))
	}
	for _, pi := range p.Unindexed {
		fmt.Fprintf(w, "delete pack %s: no index names it (%s)\n", pi.ID, ui.Bytes(uint64(pi.Size)))
	}
	if len(p.Young) > 0 {
		fmt.Fprintf(w, "keeping %d packs that no index names: younger than %s, a running backup may still index them\n", len(p.Young), opts.UnindexedGrace)
	}
}
