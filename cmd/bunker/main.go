// Command bunker backs up and restores file systems into an encrypted,
// deduplicated repository.
package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"bunker/internal/archiver"
	"bunker/internal/backend"
	"bunker/internal/pruner"
	"bunker/internal/repo/crypto"
	"bunker/internal/repo/repository"
	"bunker/internal/restorer"
)

// Exit codes; documented in `bunker help exit-codes` and the README.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitIncomplete  = 3
	exitDamaged     = 4
	exitNoRepo      = 10
	exitLocked      = 11
	exitWrongPass   = 12
	exitPermission  = 13
	exitInterrupted = 130
)

const exitCodesHelp = `Exit codes:
  0    success
  1    failure (a path to back up does not exist, storage unreachable, disk full, unexpected error)
  2    usage error (unknown flag or command, bad argument)
  3    done, but incomplete: some files could not be read (backup) or restored (restore)
  4    the repository is damaged: check found problems, or data failed verification
  10   the repository does not exist
  11   the repository is locked by another process, or this process lost its lock
  12   wrong password (no key slot matches)
  13   the storage refused: permission denied, or this credential may not do that (append-only, read-only, wrong role)
  130  interrupted (SIGINT/SIGTERM)`

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

// usageError marks errors that are the caller's mistake in the command line.
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// errIncomplete marks a run that finished with some entries skipped; the
// details were already printed.
var errIncomplete = errors.New("incomplete")

// errDamaged marks a check that found problems; the details were already printed.
var errDamaged = errors.New("repository damaged")

func exitCode(err error) int {
	var ue usageError
	var pe *fs.PathError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, context.Canceled):
		return exitInterrupted
	case errors.As(err, &ue):
		return exitUsage
	case errors.Is(err, errIncomplete), errors.Is(err, restorer.ErrIncomplete):
		return exitIncomplete
	case errors.Is(err, errDamaged), errors.Is(err, pruner.ErrNeedsRepair), errors.Is(err, repository.ErrCorrupt), errors.Is(err, crypto.ErrUnauthenticated), errors.Is(err, repository.ErrVerify):
		return exitDamaged
	case errors.Is(err, repository.ErrNotFound):
		return exitNoRepo
	case errors.Is(err, repository.ErrLocked), errors.Is(err, repository.ErrLockLost):
		return exitLocked
	case errors.Is(err, repository.ErrWrongPassword):
		return exitWrongPass
	case errors.Is(err, repository.ErrAppendOnly), errors.Is(err, backend.ErrPermission):
		return exitPermission
	case errors.Is(err, archiver.ErrPathNotExist):
		return exitFailure
	case errors.As(err, &pe), errors.Is(err, backend.ErrNoSpace):
		return exitFailure
	}
	return exitFailure
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	stopProfile := startProfile()
	setMemoryLimit(0)
	if err := errors.Join(testLockTiming(), testLockDay(), testBackupTiming()); err != nil {
		fmt.Fprintf(os.Stderr, "bunker: %v\n", err)
		os.Exit(exitUsage)
	}
	root := newRootCmd()
	err := root.ExecuteContext(ctx)
	interrupted := ctx.Err() != nil
	stop()
	stopProfile()
	if err != nil {
		if interrupted {
			err = context.Canceled
		}
		if strings.HasPrefix(err.Error(), "unknown command") || strings.HasPrefix(err.Error(), "unknown flag") {
			err = usageError{err}
		}
		if !errors.Is(err, errIncomplete) && !errors.Is(err, errDamaged) {
			fmt.Fprintln(os.Stderr, "bunker: "+oneLine(err))
		}
		os.Exit(exitCode(err))
	}
}

// baseMemoryLimit is the Go heap bunker aims to stay under, beyond its
// index: the pipelines need a few buffers per core (chunker, pack data,
// compression scratch), and a soft limit makes the garbage collector return
// to them rather than let the heap double (GOGC) on a machine it shares with
// the services it backs up. GOMEMLIMIT, if set, wins. Measured on the bench
// (first backup): at 56 MiB the backup's resident memory stays under the key
// derivation's 64 MiB at start, and the collector costs no more time than at
// 64 MiB; at 48 MiB and below it does.
const baseMemoryLimit = 56 << 20

// setMemoryLimit sets the soft memory limit for an index of indexBlobs
// entries (about 100 bytes each in memory, kept twice while loading).
func setMemoryLimit(indexBlobs int) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(baseMemoryLimit + int64(indexBlobs)*200)
}

// setMemoryLimitForKDF raises the soft memory limit by the default key
// derivation's memory, for openRepo to call before opening a repository and
// to lower again after. argon2 holds its 64 MiB for the whole derivation;
// under the base limit alone the collector ran cycle after cycle meanwhile
// (six in an unchanged re-backup, against two), each freeing nothing.
func setMemoryLimitForKDF() {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(baseMemoryLimit + int64(crypto.DefaultKDF.Memory)<<10)
}

// startProfile writes a CPU profile to $BUNKER_CPUPROFILE, a heap profile to
// $BUNKER_MEMPROFILE and block and mutex profiles to $BUNKER_BLOCKPROFILE.block
// and .mutex, for `go tool pprof`, and an execution trace to $BUNKER_TRACE.
func startProfile() func() {
	var cpu *os.File
	if p := os.Getenv("BUNKER_CPUPROFILE"); p != "" {
		if f, err := os.Create(p); err == nil && pprof.StartCPUProfile(f) == nil {
			cpu = f
		}
	}
	// BUNKER_MEMPROFILE_AFTER=5s takes the heap profile during the run instead.
	if d, err := time.ParseDuration(os.Getenv("BUNKER_MEMPROFILE_AFTER")); err == nil {
		time.AfterFunc(d, func() {
			if f, err := os.Create(os.Getenv("BUNKER_MEMPROFILE")); err == nil {
				_ = pprof.WriteHeapProfile(f)
				f.Close()
			}
		})
	}
	// BUNKER_TRACE writes an execution trace, for `go tool trace`.
	var tr *os.File
	if p := os.Getenv("BUNKER_TRACE"); p != "" {
		if f, err := os.Create(p); err == nil && trace.Start(f) == nil {
			tr = f
		}
	}
	// BUNKER_BLOCKPROFILE records where goroutines wait (locks, channels).
	blockPath := os.Getenv("BUNKER_BLOCKPROFILE")
	if blockPath != "" {
		runtime.SetBlockProfileRate(int(time.Microsecond))
		runtime.SetMutexProfileFraction(1)
	}
	return func() {
		if tr != nil {
			trace.Stop()
			tr.Close()
		}
		if blockPath != "" {
			for _, name := range []string{"block", "mutex"} {
				if f, err := os.Create(blockPath + "." + name); err == nil {
					_ = pprof.Lookup(name).WriteTo(f, 0)
					f.Close()
				}
			}
		}
		if cpu != nil {
			pprof.StopCPUProfile()
			cpu.Close()
		}
		if p := os.Getenv("BUNKER_MEMPROFILE"); p != "" {
			if f, err := os.Create(p); err == nil {
				_ = pprof.WriteHeapProfile(f)
				f.Close()
			}
		}
	}
}

// oneLine keeps an error message on one line.
func oneLine(err error) string {
	if errors.Is(err, context.Canceled) {
		return "interrupted"
	}
	var parts []string
	for _, l := range strings.Split(err.Error(), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

func newRootCmd() *cobra.Command {
	g := &globalOptions{}
	root := &cobra.Command{
		Use:   "bunker",
		Short: "Backups that restore: deduplicated, compressed, encrypted, verified",
		Long: "bunker backs up files and streams into an encrypted, deduplicated repository\n" +
			"and restores them.\n\n" + exitCodesHelp,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	g.register(root)
	root.AddCommand(
		newInitCmd(g), newBackupCmd(g), newSnapshotsCmd(g), newLsCmd(g), newDiffCmd(g),
		newStatsCmd(g), newRestoreCmd(g), newDumpCmd(g), newCheckCmd(g), newKeyCmd(g),
		newForgetCmd(g), newPruneCmd(g), newUnlockCmd(g), newRepairCmd(g), newConfigCmd(g), newServeCmd(g), newCopyCmd(g), newPKICmd(g), newDirectorCmd(g), newAgentCmd(g), newPlanCmd(g), newJobCmd(g), newBindExecCmd(), newWatchdogCmd(),
		&cobra.Command{Use: "exit-codes", Short: "List the exit codes", Run: func(c *cobra.Command, _ []string) {
			fmt.Fprintln(c.OutOrStdout(), exitCodesHelp)
		}},
	)
	for _, c := range root.Commands() {
		strictArgs(c)
	}
	return root
}

// strictArgs makes argument errors of c and its subcommands usage errors
// (exit 2), and a command that only groups others (key, repair, config...)
// refuse an unknown or missing subcommand: cobra would print the help and
// exit 0, so that a typo in a cron line would do nothing, silently.
func strictArgs(c *cobra.Command) {
	c.Args = wrapArgs(c.Args)
	if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
		c.Args = cobra.ArbitraryArgs
		c.RunE = func(c *cobra.Command, args []string) error {
			var names []string
			for _, sub := range c.Commands() {
				if sub.IsAvailableCommand() {
					names = append(names, sub.Name())
				}
			}
			if len(args) > 0 {
				return usagef("unknown command %q for %q (one of: %s)", args[0], c.CommandPath(), strings.Join(names, ", "))
			}
			return usagef("%q needs a command (one of: %s)", c.CommandPath(), strings.Join(names, ", "))
		}
	}
	for _, sub := range c.Commands() {
		strictArgs(sub)
	}
}

// wrapArgs turns cobra's argument errors into usage errors.
func wrapArgs(v cobra.PositionalArgs) cobra.PositionalArgs {
	if v == nil {
		return nil
	}
	return func(c *cobra.Command, args []string) error {
		if err := v(c, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// testLockTiming applies BUNKER_TEST_LOCK_TIMING ("refresh/stale", e.g.
// "1s/4s"): crash and concurrency tests shorten the lock timing with it so
// that stale and lost locks happen in seconds. Not for production use.
func testLockTiming() error {
	v := os.Getenv("BUNKER_TEST_LOCK_TIMING")
	if v == "" {
		return nil
	}
	a, b, _ := strings.Cut(v, "/")
	refresh, err1 := time.ParseDuration(a)
	stale, err2 := time.ParseDuration(b)
	if err1 != nil || err2 != nil || refresh <= 0 || stale <= refresh {
		return fmt.Errorf("BUNKER_TEST_LOCK_TIMING %q: want refresh/stale durations, refresh < stale", v)
	}
	repository.LockRefresh, repository.LockStale = refresh, stale
	return nil
}

// testPackSize is the pack size BUNKER_TEST_PACK_SIZE sets (0: the default).
var testPackSize int

// testBackupTiming applies BUNKER_TEST_PACK_SIZE (bytes) and
// BUNKER_TEST_INDEX_INTERVAL (a duration): crash tests make backups upload
// many small packs and write partial index files while they run, so that a
// kill lands among them. Not for production use.
func testBackupTiming() error {
	if v := os.Getenv("BUNKER_TEST_PACK_SIZE"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1<<10 {
			return fmt.Errorf("BUNKER_TEST_PACK_SIZE %q: want a size in bytes, at least 1024", v)
		}
		testPackSize = n
	}
	if v := os.Getenv("BUNKER_TEST_INDEX_INTERVAL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > repository.PartialIndexInterval {
			return fmt.Errorf("BUNKER_TEST_INDEX_INTERVAL %q: want a positive duration up to %v", v, repository.PartialIndexInterval)
		}
		repository.PartialIndexInterval = d
	}
	return nil
}

// testLockDay applies BUNKER_TEST_LOCK_DAY (a duration): the length of one
// day of --lock-days, so that Object Lock tests see locks expire in seconds.
// Not for production use.
func testLockDay() error {
	v := os.Getenv("BUNKER_TEST_LOCK_DAY")
	if v == "" {
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return fmt.Errorf("BUNKER_TEST_LOCK_DAY %q: want a positive duration", v)
	}
	repository.LockDay = d
	return nil
}
