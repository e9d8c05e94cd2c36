package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"bunker/internal/archiver"
	"bunker/internal/fs"
	"bunker/internal/policy"
	"bunker/internal/repo"
	"bunker/internal/repo/repository"
	"bunker/internal/snapshot"
	"bunker/internal/ui"
)

type backupOptions struct {
	excludes      []string
	excludeFiles  []string
	oneFileSystem bool
	tags          []string
	host          string
	stdin         bool
	stdinFilename string
	stdinCommand  bool
	force         bool
}

func newBackupCmd(g *globalOptions) *cobra.Command {
	var o backupOptions
	c := &cobra.Command{
		Use:   "backup [flags] PATH... | --stdin | --stdin-from-command -- CMD [ARG...]",
		Short: "Create a snapshot of files, or of a stream",
		Long: "Back up files and directories, or the standard input, or the output of a command.\n" +
			"Files whose size, times and inode match the previous snapshot of the same paths are not read again.\n\n" +
			"Exclude patterns (--exclude, --exclude-file; * ? [...] as in shell globs, never across a slash):\n" +
			"  *.tmp, .cache            no slash: any entry of that name\n" +
			"  /home/*/Downloads        leading slash: that absolute path (and what is below it)\n" +
			"  node_modules/.cache      other slashes: those consecutive path components, anywhere\n" +
			"A trailing slash is ignored.",
		RunE: func(c *cobra.Command, args []string) error {
			switch {
			case o.stdin && o.stdinCommand:
				return usagef("--stdin and --stdin-from-command exclude each other")
			case (o.stdin || o.stdinCommand) && len(o.excludes) > 0:
				return usagef("--exclude does not apply to a stream")
			case o.stdinCommand && len(args) == 0:
				return usagef("--stdin-from-command needs a command after --")
			case o.stdin && len(args) > 0:
				return usagef("--stdin takes no paths")
			case !o.stdin && !o.stdinCommand && len(args) == 0:
				return usagef("nothing to back up: give at least one path")
			}
			if o.stdin || o.stdinCommand {
				// Before the command starts: a name refused after would
				// leave it running with no reader.
				if err := fs.ValidName(o.stdinFilename); err != nil {
					return usagef("--stdin-filename %q: %v", o.stdinFilename, err)
				}
			}
			// Tags as forget and --keep-tag read them: "a,b" is two tags,
			// none empty.
			var tags []string
			for _, t := range o.tags {
				ts, err := policy.ParseTagSet(t)
				if err != nil {
					return usagef("--tag: %v", err)
				}
				for _, tag := range ts {
					if !slices.Contains(tags, tag) {
						tags = append(tags, tag)
					}
				}
			}
			o.tags = tags
			return runBackup(c, g, o, args)
		},
	}
	f := c.Flags()
	f.StringArrayVarP(&o.excludes, "exclude", "e", nil, "leave out entries matching `pattern` (repeatable)")
	f.StringArrayVar(&o.excludeFiles, "exclude-file", nil, "read exclude patterns from `file`, one per line")
	f.BoolVarP(&o.oneFileSystem, "one-file-system", "x", false, "do not cross file system boundaries")
	f.StringArrayVar(&o.tags, "tag", nil, "add `tags` to the snapshot (repeatable; a,b adds two)")
	f.StringVar(&o.host, "host", "", "record `name` as the host (default: this machine's hostname)")
	f.BoolVar(&o.stdin, "stdin", false, "back up the standard input as a file")
	f.StringVar(&o.stdinFilename, "stdin-filename", "stdin", "file `name` for --stdin and --stdin-from-command")
	f.BoolVar(&o.stdinCommand, "stdin-from-command", false, "back up the output of the command given after --; a non-zero exit fails the backup")
	f.BoolVar(&o.force, "force", false, "read every file, ignoring the previous snapshot")
	return c
}

func readExcludeFiles(files []string) ([]string, error) {
	var out []string
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("exclude file: %w", err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if line != "" && !strings.HasPrefix(line, "#") {
				out = append(out, line)
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("exclude file %s: %w", name, err)
		}
	}
	return out, nil
}

// spareProcs is how many more Ps than cores a backup runs with (unless
// GOMAXPROCS is set), its file and blob workers still sized by the cores.
// Most of a backup's time is spent in cgo calls (zstd) and system calls
// (reads, fsyncs), and a goroutine in one keeps its P until the runtime
// takes it back, ten microseconds to ten milliseconds later, waking another
// thread to run the goroutines that wait meanwhile. With spare Ps those run
// at once. Measured on the bench data, ten interleaved first backups each:
// median 4.77 s with GOMAXPROCS at the 2 cores, 4.58 s with 4; context
// switches 17,400 involuntary and 23,600 voluntary, against 14,900 and
// 18,900.
const spareProcs = 2

func runBackup(c *cobra.Command, g *globalOptions, o backupOptions, args []string) error {
	ctx := c.Context()
	start := time.Now()
	excludes := slices.Clone(o.excludes)
	more, err := readExcludeFiles(o.excludeFiles)
	if err != nil {
		return err
	}
	excludes = append(excludes, more...)
	for _, p := range excludes {
		if _, err := matchCheck(p); err != nil {
			return usagef("bad exclude pattern %q: %v", p, err)
		}
	}
	host := o.host
	if host == "" {
		host, _ = os.Hostname()
	}
	// The memory limit alone paces the collector: the key derivation has
	// made the process that large already, and with GOGC's doubling from
	// the small heap after it, the index load and walk of an unchanged
	// re-backup ran eleven collections instead of one (the first backup's
	// heap stays at the limit either way). Only if bunker set the limit.
	if os.Getenv("GOGC") == "" && os.Getenv("GOMEMLIMIT") == "" {
		defer debug.SetGCPercent(debug.SetGCPercent(-1))
	}
	r, lock, release, err := g.openRepoLocked(ctx, true, false)
	if err != nil {
		return err
	}
	defer release()
	// Index what is stored every few minutes: prune never deletes a pack
	// that no index names until it is an hour old (docs/format.md 11b).
	r.SetIndexInterval(repository.PartialIndexInterval)

	cpus := runtime.GOMAXPROCS(0)
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(cpus + spareProcs)
		defer runtime.GOMAXPROCS(cpus)
	}

	var errMu sync.Mutex
	var readErrors, changed []string
	// entryReport returns an archiver callback that adds the entry's path
	// to list and prints one line of kind ("error", "warning") about it.
	entryReport := func(list *[]string, kind string) func(string, error) {
		return func(path string, err error) {
			errMu.Lock()
			*list = append(*list, path)
			errMu.Unlock()
			if g.json {
				_ = printJSON(c.ErrOrStderr(), map[string]any{"message_type": kind, "item": path, kind: err.Error()})
			} else {
				fmt.Fprintf(c.ErrOrStderr(), "%s: %s\n", kind, oneLine(err))
			}
		}
	}
	arch := archiver.New(r, archiver.Options{
		CPUs:          cpus,
		Excludes:      excludes,
		OneFileSystem: o.oneFileSystem,
		Error:         entryReport(&readErrors, "error"),
		Warn:          entryReport(&changed, "warning"),
	})
	sn := &snapshot.Snapshot{Time: start, Hostname: host, Tags: o.tags, Excludes: excludes, ProgramVersion: "bunker " + version,
		UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	if u, err := user.Current(); err == nil {
		sn.Username = u.Username
	}

	stopProgress := ui.StartProgress(c.ErrOrStderr(), !g.quiet && !g.json && isTerminal(os.Stderr), func() string {
		s := &arch.Stats
		return fmt.Sprintf("%d files, %s read, %s added", s.FilesProcessed.Load(), ui.Bytes(s.BytesRead.Load()), ui.Bytes(s.BytesAdded.Load()))
	})
	var tree repo.ID
	switch {
	case o.stdin || o.stdinCommand:
		tree, err = backupStream(ctx, arch, o, args)
		sn.Paths = []string{"/" + o.stdinFilename}
	default:
		var parent *snapshot.Snapshot
		if !o.force {
			parent, err = findParent(ctx, r, host, args, c.ErrOrStderr())
			if err != nil {
				stopProgress()
				return err
			}
		}
		if parent != nil {
			sn.Parent = &parent.ID
			arch.SetParent(parent.Tree, parent.Time)
		}
		var targets []string
		tree, targets, err = arch.Run(ctx, args)
		sn.Paths = targets
	}
	stopProgress()
	if err != nil {
		return err
	}
	// Packs, then the index, then the snapshot: a snapshot never refers to
	// data that is not stored and indexed.
	if err := r.Flush(ctx); err != nil {
		return err
	}
	sum := arch.Stats.Summary()
	sum.Start, sum.End = start, time.Now()
	sn.Tree = tree
	sn.Summary = &sum
	id, err := r.CommitSnapshot(ctx, lock, sn)
	if err != nil {
		return err
	}
	repository.Failpoint(repository.FailpointSnapshotStored)
	if g.json {
		if err := printJSON(c.OutOrStdout(), map[string]any{"message_type": "summary", "snapshot_id": id.String(), "summary": sum,
			"duration_seconds": sum.End.Sub(sum.Start).Seconds(), "errors": readErrors, "changed_while_read": changed}); err != nil {
			return err
		}
	} else if !g.quiet {
		w := c.OutOrStdout()
		fmt.Fprintf(w, "Files:       %d new, %d changed, %d unchanged\n", sum.FilesNew, sum.FilesChanged, sum.FilesUnchanged)
		fmt.Fprintf(w, "Directories: %d new, %d changed, %d unchanged\n", sum.DirsNew, sum.DirsChanged, sum.DirsUnchanged)
		fmt.Fprintf(w, "Added:       %s stored (%s before compression) in %d new blobs\n", ui.Bytes(sum.BytesAdded), ui.Bytes(sum.BytesAddedRaw), sum.BlobsAdded)
		fmt.Fprintf(w, "Processed:   %d files, %s in %s\n", sum.FilesProcessed, ui.Bytes(sum.BytesProcessed), ui.Duration(sum.End.Sub(sum.Start)))
		fmt.Fprintf(w, "snapshot %s saved\n", id.Short())
	} else {
		fmt.Fprintf(c.OutOrStdout(), "snapshot %s saved\n", id.Short())
	}
	if len(changed) > 0 && !g.json {
		// A warning, not a failure (exit 0): an appended log is the usual
		// case, and the next backup reads these files again.
		fmt.Fprintf(c.ErrOrStderr(), "bunker: warning: %d files changed while they were read (named above); snapshot %s holds what was read\n", len(changed), id.Short())
	}
	if len(readErrors) > 0 {
		fmt.Fprintf(c.ErrOrStderr(), "bunker: snapshot %s is incomplete: %d entries could not be read\n", id.Short(), len(readErrors))
		return errIncomplete
	}
	return nil
}

func matchCheck(pattern string) (bool, error) { return filepath.Match(pattern, "") }

// findParent returns the newest snapshot of the same host and paths.
func findParent(ctx context.Context, r *repository.Repository, host string, args []string, warn io.Writer) (*snapshot.Snapshot, error) {
	targets, err := archiver.CleanTargets(args)
	if err != nil {
		return nil, err
	}
	snaps, damaged, err := r.ReadableSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	warnDamaged(warn, damaged)
	for i := len(snaps) - 1; i >= 0; i-- {
		sn := snaps[i]
		p := slices.Clone(sn.Paths)
		sort.Strings(p)
		if sn.Hostname == host && slices.Equal(p, targets) {
			return sn, nil
		}
	}
	return nil, nil
}

func backupStream(ctx context.Context, arch *archiver.Archiver, o backupOptions, args []string) (repo.ID, error) {
	if !o.stdinCommand {
		id, _, err := arch.SaveStream(ctx, o.stdinFilename, os.Stdin, 0o644)
		return id, err
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return repo.ID{}, err
	}
	if err := cmd.Start(); err != nil {
		return repo.ID{}, fmt.Errorf("start %s: %w", args[0], err)
	}
	id, _, saveErr := arch.SaveStream(ctx, o.stdinFilename, out, 0o644)
	if saveErr != nil {
		// Stop the command rather than read the rest of its output (a
		// dump of hundreds of GB) for nothing.
		_ = cmd.Process.Kill()
	}
	waitErr := cmd.Wait()
	if saveErr != nil {
		return repo.ID{}, saveErr // the cause; the command was killed for it
	}
	if waitErr != nil {
		var ee *exec.ExitError
		if errors.As(waitErr, &ee) {
			return repo.ID{}, fmt.Errorf("command %s failed (%v): no snapshot saved", args[0], ee.ProcessState)
		}
		return repo.ID{}, fmt.Errorf("command %s: %w", args[0], waitErr)
	}
	return id, nil
}
