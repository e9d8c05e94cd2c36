package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"bunker/internal/backend"
	"bunker/internal/policy"
	"bunker/internal/pruner"
	"bunker/internal/repo"
	"bunker/internal/repo/repository"
	"bunker/internal/snapshot"
	"bunker/internal/ui"
)

type forgetOptions struct {
	last, hourly, daily, weekly, monthly, yearly int
	within                                       string
	keepTags                                     []string
	groupBy                                      string
	hosts, tags, paths                           []string
	dryRun, prune                                bool
	pruneOpts                                    pruneOptions
}

// policy builds and checks the retention policy from the flags. A keep flag
// given explicitly must be at least 1: "--keep-daily 0" is a mistake, not a
// way to switch the rule off.
func (o *forgetOptions) policy(flags *pflag.FlagSet) (policy.Policy, error) {
	p := policy.Policy{Last: o.last, Hourly: o.hourly, Daily: o.daily, Weekly: o.weekly, Monthly: o.monthly, Yearly: o.yearly}
	for _, name := range []string{"last", "hourly", "daily", "weekly", "monthly", "yearly"} {
		f := flags.Lookup("keep-" + name)
		if f.Changed && f.Value.String() == "0" {
			return p, usagef("--keep-%s must be at least 1, got 0", name)
		}
	}
	if o.within != "" {
		d, err := policy.ParseDuration(o.within)
		if err != nil {
			return p, usagef("--keep-within: %v", err)
		}
		p.Within = d
	}
	for _, s := range o.keepTags {
		ts, err := policy.ParseTagSet(s)
		if err != nil {
			return p, usagef("--keep-tag: %v", err)
		}
		p.Tags = append(p.Tags, ts)
	}
	if err := p.Validate(); err != nil {
		return p, usageError{err}
	}
	return p, nil
}

func (o *forgetOptions) filter() (policy.Filter, error) {
	f := policy.Filter{Hosts: o.hosts, Paths: o.paths}
	for _, s := range o.tags {
		ts, err := policy.ParseTagSet(s)
		if err != nil {
			return f, usagef("--tag: %v", err)
		}
		f.Tags = append(f.Tags, ts)
	}
	return f, nil
}

type forgetDecision struct {
	ID      string    `json:"id"`
	Time    time.Time `json:"time"`
	Host    string    `json:"hostname"`
	Paths   []string  `json:"paths"`
	Tags    []string  `json:"tags,omitempty"`
	Keep    bool      `json:"keep"`
	Reasons []string  `json:"reasons"`
}

type forgetGroup struct {
	Key       string           `json:"group"`
	Decisions []forgetDecision `json:"snapshots"`
}

func newForgetCmd(g *globalOptions) *cobra.Command {
	var o forgetOptions
	c := &cobra.Command{
		Use:   "forget [SNAPSHOT...]",
		Short: "Remove snapshots by a retention policy, or by ID (under an exclusive lock)",
		Long: "forget removes snapshots: those the keep rules do not keep, in each group of snapshots\n" +
			"(by default, the same host and paths), or the snapshots named. The repository's\n" +
			"min-retention setting (`bunker config set min-retention 14d`) keeps every younger\n" +
			"snapshot whatever is asked. With --prune, the data only the removed snapshots used\n" +
			"is deleted right after. See docs/operations.md for retention schemes.",
		RunE: func(c *cobra.Command, args []string) error {
			return runForget(c, g, &o, args)
		},
	}
	f := c.Flags()
	f.IntVar(&o.last, "keep-last", 0, "keep the `n` newest snapshots")
	f.IntVar(&o.hourly, "keep-hourly", 0, "keep the newest snapshot of each of the last `n` hours that have one")
	f.IntVar(&o.daily, "keep-daily", 0, "keep the newest snapshot of each of the last `n` days that have one")
	f.IntVar(&o.weekly, "keep-weekly", 0, "keep the newest snapshot of each of the last `n` ISO weeks that have one")
	f.IntVar(&o.monthly, "keep-monthly", 0, "keep the newest snapshot of each of the last `n` months that have one")
	f.IntVar(&o.yearly, "keep-yearly", 0, "keep the newest snapshot of each of the last `n` years that have one")
	f.StringVar(&o.within, "keep-within", "", "keep snapshots taken within this `duration` (like 1y2m7d3h) of the group's newest")
	f.StringArrayVar(&o.keepTags, "keep-tag", nil, "keep snapshots with all of these `tags` (comma-separated; repeatable)")
	f.StringVar(&o.groupBy, "group-by", "host,paths", "group snapshots by these `keys` (host, paths, tags; \"\" for one group)")
	f.StringArrayVar(&o.hosts, "host", nil, "only consider snapshots of this `host` (repeatable)")
	f.StringArrayVar(&o.tags, "tag", nil, "only consider snapshots with all of these `tags` (comma-separated; repeatable)")
	f.StringArrayVar(&o.paths, "path", nil, "only consider snapshots of this `path` (repeatable)")
	f.BoolVarP(&o.dryRun, "dry-run", "n", false, "print what would be removed; change nothing")
	f.BoolVar(&o.prune, "prune", false, "prune right after, in the same lock")
	o.pruneOpts.register(c)
	return c
}

func runForget(c *cobra.Command, g *globalOptions, o *forgetOptions, args []string) error {
	ctx := c.Context()
	var pol policy.Policy
	byID := len(args) > 0
	if byID {
		for _, name := range []string{"keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly", "keep-within", "keep-tag"} {
			if c.Flags().Changed(name) {
				return usagef("give either snapshot IDs or keep rules, not both")
			}
		}
	} else {
		var err error
		if pol, err = o.policy(c.Flags()); err != nil {
			return err
		}
	}
	by, err := policy.ParseGroupBy(o.groupBy)
	if err != nil {
		return usageError{err}
	}
	filter, err := o.filter()
	if err != nil {
		return err
	}
	pruneOpts, err := o.pruneOpts.options()
	if err != nil {
		return err
	}

	r, lock, release, err := g.openRepoLocked(ctx, false, true)
	if err != nil {
		return err
	}
	defer release()
	now := time.Now()
	fl, err := loadFloor(ctx, r, now)
	if err != nil {
		return err
	}
	floor := fl.age
	snaps, err := r.Snapshots(ctx)
	if err != nil {
		return err
	}

	var groups []forgetGroup
	var remove []*snapshot.Snapshot
	if byID {
		var ds []forgetDecision
		for _, a := range args {
			sn, err := pickSnapshot(snaps, nil, a, snapshotFilter{})
			if err != nil {
				return usageError{err}
			}
			young, err := fl.holds(ctx, sn)
			if err != nil {
				return err
			}
			if young {
				return usagef("snapshot %s is younger than the repository's min-retention %s: not removing it (nor any other)", sn.ID.Short(), fl.text)
			}
			ds = append(ds, decision(sn, false, []string{}))
			remove = append(remove, sn)
		}
		groups = append(groups, forgetGroup{Key: "named snapshots", Decisions: ds})
	} else {
		var selected []*snapshot.Snapshot
		for _, sn := range snaps {
			if filter.Match(sn) {
				selected = append(selected, sn)
			}
		}
		for _, grp := range policy.GroupSnapshots(selected, by) {
			decisions, err := policy.Apply(grp.Snapshots, pol, time.Local, now, floor, fl.text)
			if err != nil {
				if errors.Is(err, policy.ErrKeepsNothing) {
					return usagef("%s: %v; nothing removed", groupName(grp.Key), err)
				}
				return usageError{err}
			}
			fg := forgetGroup{Key: groupName(grp.Key)}
			for _, d := range decisions {
				reasons := d.Reasons
				if reasons == nil {
					reasons = []string{}
				}
				if !d.Keep {
					// Apply judged the floor by the snapshot's own time;
					// holds also asks the storage when it stored it.
					young, err := fl.holds(ctx, d.Snapshot)
					if err != nil {
						return err
					}
					if young {
						d.Keep, reasons = true, []string{"min-retention " + fl.text + " (by the time it was stored)"}
					}
				}
				fg.Decisions = append(fg.Decisions, decision(d.Snapshot, d.Keep, reasons))
				if !d.Keep {
					remove = append(remove, d.Snapshot)
				}
			}
			groups = append(groups, fg)
		}
	}

	if !g.json && !g.quiet {
		w := c.OutOrStdout()
		if !byID {
			fmt.Fprintf(w, "policy: %s\n", pol)
			if fl.text != "" {
				fmt.Fprintf(w, "min-retention: %s (snapshots younger than that are always kept)\n", fl.text)
			}
		}
		for _, grp := range groups {
			fmt.Fprintf(w, "\n%s:\n", grp.Key)
			var rows [][]string
			for _, d := range grp.Decisions {
				what := "remove"
				if d.Keep {
					what = "keep"
				}
				rows = append(rows, []string{shortName(d.ID), d.Time.Local().Format("2006-01-02 15:04:05"), d.Host,
					strings.Join(d.Tags, ","), what, strings.Join(d.Reasons, ", ")})
			}
			ui.Table(w, []string{"ID", "Time", "Host", "Tags", "Decision", "Kept by"}, rows)
		}
		fmt.Fprintln(w)
	}

	var removed, stillLocked []string
	if !o.dryRun {
		if err := lock.Check(ctx); err != nil {
			return fmt.Errorf("nothing removed: %w", err)
		}
		rt, locked := r.Retainer()
		for _, sn := range remove {
			h := backend.Handle{Type: backend.SnapshotFile, Name: sn.ID.String()}
			if locked {
				// Object Lock: a snapshot whose lock has not expired stays
				// until it has; a later forget removes it.
				_, until, err := rt.Retention(ctx, h)
				if err != nil && !errors.Is(err, backend.ErrNotExist) {
					return err
				}
				if until.After(time.Now()) {
					stillLocked = append(stillLocked, sn.ID.String())
					g.msgf(c, "snapshot %s is locked until %s: it will be removed by a forget after that\n", sn.ID.Short(), until.Local().Format(time.DateTime))
					continue
				}
			}
			if err := r.Backend().Remove(ctx, h); err != nil && !errors.Is(err, backend.ErrNotExist) {
				if locked && errors.Is(err, backend.ErrPermission) {
					// The storage's clock says it is still locked.
					stillLocked = append(stillLocked, sn.ID.String())
					g.msgf(c, "snapshot %s is still locked: it will be removed by a later forget\n", sn.ID.Short())
					continue
				}
				return fmt.Errorf("remove snapshot %s (removed %d before it): %w", sn.ID.Short(), len(removed), err)
			}
			removed = append(removed, sn.ID.String())
			g.msgf(c, "removed snapshot %s\n", sn.ID.Short())
		}
		if locked {
			// The snapshots kept stay locked: extend the locks that end
			// within half the period.
			// Every snapshot not removed is kept (also those the filters
			// left out of this forget).
			gone := map[string]bool{}
			for _, sn := range remove {
				gone[sn.ID.String()] = true
			}
			var keep []backend.Handle
			for _, sn := range snaps {
				if !gone[sn.ID.String()] {
					keep = append(keep, backend.Handle{Type: backend.SnapshotFile, Name: sn.ID.String()})
				}
			}
			if _, err := pruner.ExtendHandles(ctx, r, rt, keep); err != nil {
				return fmt.Errorf("extend the locks of kept snapshots: %w", err)
			}
		}
	}
	if o.dryRun {
		for _, sn := range remove {
			g.msgf(c, "would remove snapshot %s\n", sn.ID.Short())
		}
	}
	g.msgf(c, "%d snapshots kept, %d removed%s\n", countKept(groups), len(remove), map[bool]string{true: " (dry run: nothing changed)"}[o.dryRun])
	if g.json {
		if removed == nil {
			removed = []string{}
		}
		if groups == nil {
			groups = []forgetGroup{}
		}
		if err := printJSON(c.OutOrStdout(), map[string]any{"message_type": "forget", "dry_run": o.dryRun, "groups": groups, "removed": removed,
			"still_locked": stillLocked}); err != nil {
			return err
		}
	}
	if !o.prune {
		return nil
	}
	if o.dryRun {
		pruneOpts.Forgotten = map[repo.ID]bool{}
		for _, sn := range remove {
			pruneOpts.Forgotten[sn.ID] = true
		}
	}
	return runPrune(c, g, r, lock, pruneOpts, o.dryRun)
}

func decision(sn *snapshot.Snapshot, keep bool, reasons []string) forgetDecision {
	return forgetDecision{ID: sn.ID.String(), Time: sn.Time, Host: sn.Hostname, Paths: sn.Paths, Tags: sn.Tags, Keep: keep, Reasons: reasons}
}

func groupName(k policy.GroupKey) string {
	if s := k.String(); s != "" {
		return "group " + s
	}
	return "all snapshots"
}

func countKept(groups []forgetGroup) int {
	n := 0
	for _, g := range groups {
		for _, d := range g.Decisions {
			if d.Keep {
				n++
			}
		}
	}
	return n
}

// floor is the repository's min-retention at a moment: no snapshot younger
// than age, by its own time or by the time the storage stored it (a host
// whose clock runs behind writes snapshots that look old), is forgotten.
type floor struct {
	r    *repository.Repository
	now  time.Time
	age  time.Duration // 0: no floor
	text string        // the setting as written, "14d"
}

// loadFloor reads the repository's min-retention.
func loadFloor(ctx context.Context, r *repository.Repository, now time.Time) (floor, error) {
	f := floor{r: r, now: now}
	settings, _, err := r.LoadSettings(ctx)
	if err != nil || settings.MinRetention == "" {
		return f, err
	}
	d, err := policy.ParseDuration(settings.MinRetention)
	if err != nil {
		return f, fmt.Errorf("repository setting min-retention %q: %w", settings.MinRetention, err)
	}
	cutoff := now.AddDate(-d.Years, -d.Months, -d.Days).Add(-time.Duration(d.Hours) * time.Hour)
	f.age, f.text = now.Sub(cutoff), settings.MinRetention
	return f, nil
}

// holds reports whether the floor keeps sn.
func (f floor) holds(ctx context.Context, sn *snapshot.Snapshot) (bool, error) {
	if f.age <= 0 {
		return false, nil
	}
	if f.now.Sub(sn.Time) < f.age {
		return true, nil
	}
	fi, err := f.r.Backend().Stat(ctx, backend.Handle{Type: backend.SnapshotFile, Name: sn.ID.String()})
	if err != nil {
		return false, fmt.Errorf("snapshot %s: %w", sn.ID.Short(), err)
	}
	return f.now.Sub(fi.ModTime) < f.age, nil
}
