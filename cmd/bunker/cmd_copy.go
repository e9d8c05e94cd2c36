package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"bunker/internal/backend"
	"bunker/internal/conf"
	"bunker/internal/policy"
	"bunker/internal/replicate"
	"bunker/internal/repo/repository"
	"bunker/internal/snapshot"
	"bunker/internal/ui"
)

// sideFlags name the repository at one end of a copy (the source, or the
// target when --to-* is used instead of the global options).
type sideFlags struct {
	repo, passwordFile, cacert, clientCert, credsFile string
}

// registerFrom adds the --from-* flags of the source repository.
func (s *sideFlags) registerFrom(f *pflag.FlagSet) {
	f.StringVar(&s.repo, "from-repo", "", "source repository `location` (env BUNKER_FROM_REPOSITORY)")
	f.StringVar(&s.passwordFile, "from-password-file", "", "`file` holding the source repository's password (env BUNKER_FROM_PASSWORD_FILE or BUNKER_FROM_PASSWORD_COMMAND)")
	f.StringVar(&s.cacert, "from-cacert", "", "PEM `file` of CA certificates to trust for the source's storage (env BUNKER_FROM_CACERT)")
	f.StringVar(&s.clientCert, "from-tls-client-cert", "", "PEM `file` with a client certificate and key for the source's repository server (env BUNKER_FROM_TLS_CLIENT_CERT)")
	f.StringVar(&s.credsFile, "from-credentials-file", "", "`file` of the source storage's credentials, NAME=value lines: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, BUNKER_REST_PASSWORD (default: BUNKER_FROM_AWS_* and BUNKER_FROM_REST_PASSWORD[_FILE]; never the target's)")
}

// sourceEnv maps what the source side reads from the environment to the
// BUNKER_FROM_* variables: nothing of the target's password or repository
// leaks to the source.
var sourceEnv = []string{"BUNKER_REPOSITORY", "BUNKER_PASSWORD_FILE", "BUNKER_PASSWORD_COMMAND", "BUNKER_CACERT", "BUNKER_TLS_CLIENT_CERT", "BUNKER_REST_PASSWORD_FILE", "BUNKER_REST_PASSWORD",
	"BUNKER_AWS_ACCESS_KEY_ID", "BUNKER_AWS_SECRET_ACCESS_KEY", "BUNKER_AWS_SESSION_TOKEN"}

// sourceOptions returns the options that open the source repository.
func (g *globalOptions) sourceOptions(s sideFlags) (*globalOptions, error) {
	o := *g
	o.repo, o.passwordFile, o.cacert, o.clientCert = s.repo, s.passwordFile, s.cacert, s.clientCert
	vars := map[string]string{}
	for _, name := range sourceEnv {
		vars[name] = os.Getenv(strings.Replace(name, "BUNKER_", "BUNKER_FROM_", 1))
	}
	creds, err := readCredentials(s.credsFile)
	if err != nil {
		return nil, err
	}
	// S3 credentials of the source: the file, else BUNKER_FROM_AWS_*; never
	// the environment's AWS_* or ~/.aws, which are the target's.
	if creds == nil {
		creds = map[string]string{}
	}
	for _, name := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} {
		if _, ok := creds[name]; !ok {
			creds[name] = vars["BUNKER_"+name]
		}
	}
	o.side = &sideEnv{vars: vars, creds: creds, isolated: true}
	if _, err := o.repoLocation(); err != nil {
		return nil, usagef("no source repository given: use --from-repo or set BUNKER_FROM_REPOSITORY")
	}
	return &o, nil
}

// targetOptions returns the options that open the target repository: the
// global ones, with --to-repo, --to-password-file and --to-credentials-file
// in place of --repo, --password-file and the environment's credentials.
func (g *globalOptions) targetOptions(repo, passwordFile, credsFile string) (*globalOptions, error) {
	o := *g
	if repo != "" {
		o.repo = repo
	}
	if passwordFile != "" {
		o.passwordFile = passwordFile
	}
	creds, err := readCredentials(credsFile)
	if err != nil {
		return nil, err
	}
	if creds != nil {
		o.side = &sideEnv{creds: creds}
	}
	if _, err := o.repoLocation(); err != nil {
		return nil, usagef("no target repository given: use --to-repo (or --repo, BUNKER_REPOSITORY)")
	}
	return &o, nil
}

// readCredentials reads a --from/--to-credentials-file (none: nil).
func readCredentials(file string) (map[string]string, error) {
	if file == "" {
		return nil, nil
	}
	creds, err := conf.ReadCredentials(file)
	if errors.Is(err, conf.ErrCredentials) {
		return nil, usageError{err}
	}
	return creds, err
}

// sideError says which repository of a copy an error is about, keeping the
// error's exit code.
func sideError(side string, err error) error {
	if err == nil {
		return nil
	}
	var ue usageError
	if errors.As(err, &ue) {
		return usageError{fmt.Errorf("%s repository: %w", side, ue.error)}
	}
	return fmt.Errorf("%s repository: %w", side, err)
}

type copyOptions struct {
	from                  sideFlags
	toRepo, toPW, toCreds string
	filter                snapshotFilter
	latest                int
	mode                  string
	dryRun                bool
}

func newCopyCmd(g *globalOptions) *cobra.Command {
	var o copyOptions
	c := &cobra.Command{
		Use:   "copy [SNAPSHOT-ID...]",
		Short: "Copy snapshots to another repository (the off-site replica)",
		Long: `Copy the snapshots of the source (--from-repo) that the target (--to-repo or
--repo) lacks, with all the data they refer to that the target lacks. Every
blob is verified before the target refers to it: damage in the source is
reported, never copied. Nothing is ever deleted from the target; it keeps its
own retention (forget and prune on the target).

When the target was made with 'bunker init --copy-params-from SOURCE', packs
move as they are; otherwise every blob is re-encoded for the target. An
interrupted copy, run again, moves only what is still missing.`,
		RunE: func(c *cobra.Command, args []string) error {
			return runCopy(c, g, o, args)
		},
	}
	f := c.Flags()
	o.from.registerFrom(f)
	f.StringVar(&o.toRepo, "to-repo", "", "target repository `location` (default: --repo, BUNKER_REPOSITORY)")
	f.StringVar(&o.toPW, "to-password-file", "", "`file` holding the target repository's password (default: --password-file, BUNKER_PASSWORD_FILE, BUNKER_PASSWORD_COMMAND)")
	f.StringVar(&o.toCreds, "to-credentials-file", "", "`file` of the target storage's credentials, as --from-credentials-file (default: the environment)")
	addFilterFlags(c, &o.filter)
	f.IntVar(&o.latest, "latest", 0, "copy only the `n` newest snapshots of each host and set of paths (0: all)")
	f.StringVar(&o.mode, "mode", "auto", "how data moves: auto, pack (packs as they are; fails unless the target shares the source's keys) or reencode")
	f.BoolVarP(&o.dryRun, "dry-run", "n", false, "show what would be copied; change nothing")
	return c
}

func runCopy(c *cobra.Command, g *globalOptions, o copyOptions, args []string) error {
	ctx := c.Context()
	if o.latest < 0 {
		return usagef("--latest must not be negative")
	}
	mode, err := replicate.ParseMode(o.mode)
	if err != nil {
		return usageError{err}
	}
	srcOpts, err := g.sourceOptions(o.from)
	if err != nil {
		return err
	}
	dstOpts, err := g.targetOptions(o.toRepo, o.toPW, o.toCreds)
	if err != nil {
		return err
	}
	srcLoc, _ := srcOpts.repoLocation()
	dstLoc, _ := dstOpts.repoLocation()
	if sameLocation(srcLoc, dstLoc) {
		return usagef("the source and the target are the same repository (%s)", srcLoc)
	}
	src, srcLock, releaseSrc, err := srcOpts.openRepoLocked(ctx, false, false)
	if errors.Is(err, backend.ErrPermission) {
		// A read-only credential cannot take a lock. Copying without one is
		// safe for the target (every blob is verified before the target
		// refers to it); a prune of the source meanwhile can only make
		// snapshots fail to copy.
		src, err = srcOpts.openRepo(ctx, false)
		if err == nil {
			releaseSrc = func() { closeRepo(src) }
			fmt.Fprintln(c.ErrOrStderr(), "note: the source's credential is read-only: copying without a lock on the source")
		}
	}
	if err != nil {
		return sideError("source", err)
	}
	defer releaseSrc()
	dst, dstLock, releaseDst, err := dstOpts.openRepoLocked(ctx, false, false)
	if err != nil {
		return sideError("target", err)
	}
	defer releaseDst()

	snaps, err := src.Snapshots(ctx)
	if err != nil {
		return sideError("source", err)
	}
	selected, err := selectForCopy(snaps, o, args)
	if err != nil {
		return err
	}
	verb := "copied"
	if o.dryRun {
		verb = "would copy"
	}
	var prog replicate.Progress
	stop := ui.StartProgress(c.ErrOrStderr(), !g.quiet && !g.json && isTerminal(os.Stderr), func() string {
		return fmt.Sprintf("%d snapshots copied, %d blobs, %s moved", prog.Snapshots.Load(), prog.Blobs.Load(), ui.Bytes(uint64(prog.Bytes.Load())))
	})
	res, err := replicate.Copy(ctx, src, dst, dstLock, selected, replicate.Options{
		Mode: mode, DryRun: o.dryRun, SourceLock: srcLock, Progress: &prog, All: snaps,
		Report: func(r replicate.SnapshotResult) {
			sn := r.Source
			desc := fmt.Sprintf("snapshot %s of %s at %s", sn.ID.Short(), sn.Hostname, sn.Time.Local().Format("2006-01-02 15:04:05"))
			switch {
			case r.Err != nil:
				fmt.Fprintf(c.ErrOrStderr(), "not copied: %s: %v\n", desc, r.Err)
			case !r.Target.IsNull():
				g.msgf(c, "%s %s as %s\n", verb, desc, r.Target.Short())
			default:
				g.msgf(c, "%s %s\n", verb, desc)
			}
		},
	})
	stop()
	if errors.Is(err, replicate.ErrIncompatible) {
		return usageError{err}
	}
	if err != nil {
		return err
	}
	printCopySummary(c, g, res, srcLoc, dstLoc)
	if len(res.Failed) > 0 {
		return fmt.Errorf("%w: %d snapshots were not copied because their data is damaged in the source (run `bunker check --read-data` on it)", errDamaged, len(res.Failed))
	}
	return nil
}

// sameLocation compares two repository locations as written, ignoring a
// local: prefix and trailing slashes.
func sameLocation(a, b string) bool {
	norm := func(s string) string {
		s = strings.TrimPrefix(s, "local:")
		if !strings.Contains(s, ":") {
			if abs, err := filepath.Abs(s); err == nil {
				s = abs
			}
		}
		return strings.TrimRight(s, "/")
	}
	return norm(a) == norm(b)
}

// selectForCopy applies the IDs, the filters and --latest.
func selectForCopy(snaps []*snapshot.Snapshot, o copyOptions, ids []string) ([]*snapshot.Snapshot, error) {
	var out []*snapshot.Snapshot
	for _, sn := range snaps {
		if o.filter.match(sn) {
			out = append(out, sn)
		}
	}
	if len(ids) > 0 {
		var picked []*snapshot.Snapshot
		for _, id := range ids {
			found, err := byIDPrefix(out, nil, id)
			if err != nil {
				return nil, sideError("source", err)
			}
			picked = append(picked, found)
		}
		out = picked
	}
	if o.latest > 0 {
		var kept []*snapshot.Snapshot
		for _, grp := range policy.GroupSnapshots(out, policy.GroupBy{Host: true, Paths: true}) {
			s := grp.Snapshots // oldest first
			if len(s) > o.latest {
				s = s[len(s)-o.latest:]
			}
			kept = append(kept, s...)
		}
		out = kept
	}
	return out, nil
}

func printCopySummary(c *cobra.Command, g *globalOptions, res *replicate.Result, srcLoc, dstLoc string) {
	w := c.OutOrStdout()
	if g.json {
		copied := make([]map[string]string, 0, len(res.Copied))
		for _, r := range res.Copied {
			copied = append(copied, map[string]string{"source": r.Source.ID.String(), "target": r.Target.String()})
		}
		failed := make([]map[string]string, 0, len(res.Failed))
		for _, r := range res.Failed {
			failed = append(failed, map[string]string{"source": r.Source.ID.String(), "error": r.Err.Error()})
		}
		_ = printJSON(w, map[string]any{
			"message_type": "copy_summary", "dry_run": res.DryRun, "mode": res.Mode,
			"source": srcLoc, "target": dstLoc,
			"snapshots_selected": res.Selected, "snapshots_present": res.Present,
			"snapshots_copied": copied, "snapshots_failed": failed,
			"blobs": res.Blobs, "bytes": res.Bytes, "whole_packs": res.WholePacks, "damaged": res.Damaged,
			"lag_before_seconds": res.LagBefore.Seconds(), "lag_after_seconds": res.LagAfter.Seconds(),
		})
		return
	}
	if g.quiet {
		return
	}
	how := "packs moved as they are"
	if res.Mode == "reencode" {
		how = "re-encoded for the target"
	}
	if res.DryRun {
		n := res.Selected - res.Present - len(res.Failed)
		fmt.Fprintf(w, "dry run: %d of %d selected snapshots would be copied (%d already in the target); %d blobs, %s to read (%s)\n",
			n, res.Selected, res.Present, res.Blobs, ui.Bytes(uint64(res.Bytes)), how)
	} else {
		fmt.Fprintf(w, "%d of %d selected snapshots copied (%d already in the target, %d failed); %d blobs, %s read (%s; %d whole packs)\n",
			len(res.Copied), res.Selected, res.Present, len(res.Failed), res.Blobs, ui.Bytes(uint64(res.Bytes)), how, res.WholePacks)
	}
	switch {
	case res.NewestMissing == nil:
		fmt.Fprintf(w, "replica lag: none, the target has every selected snapshot\n")
	case res.LagAfter == 0:
		fmt.Fprintf(w, "replica lag was %s (snapshot %s); now none\n", ui.Duration(res.LagBefore.Round(time.Second)), res.NewestMissing.ID.Short())
	default:
		fmt.Fprintf(w, "replica lag: %s (the newest snapshot the target lacks is %s)\n", ui.Duration(res.LagAfter.Round(time.Second)), res.NewestMissing.ID.Short())
	}
}

// copyParamsSource opens the repository whose keys and chunker parameters
// a new repository will share (init --copy-params-from).
func copyParamsSource(ctx context.Context, g *globalOptions, s sideFlags) (*repository.Repository, func(), error) {
	o, err := g.sourceOptions(s)
	if err != nil {
		return nil, nil, err
	}
	r, err := o.openRepo(ctx, false)
	if err != nil {
		return nil, nil, sideError("source", err)
	}
	return r, func() { closeRepo(r) }, nil
}
