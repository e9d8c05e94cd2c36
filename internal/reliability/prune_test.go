package reliability

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"bunker/internal/archiver"
	"bunker/internal/backend"
	"bunker/internal/backend/fault"
	"bunker/internal/backend/local"
	"bunker/internal/pruner"
	"bunker/internal/repo/crypto"
	"bunker/internal/repo/repository"
	"bunker/internal/snapshot"
)

// fastPrune makes the CLI's prune wait only briefly between rewriting the
// index and deleting (the production wait is 20 s).
var fastPrune = "BUNKER_TEST_PRUNE_WAIT=50ms"

// churn builds a history of n snapshots in which every backup replaces a
// random file (so the old one's data becomes unused once its snapshots are
// forgotten) and changes a small one. It returns the snapshot IDs in order
// and their manifests.
func churn(t *testing.T, tr *testRepo, src string, seed uint64, n int) ([]string, history) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 0x9e))
	makeSource(t, src, seed, 3<<20)
	h := history{}
	var ids []string
	for i := 0; i < n; i++ {
		_ = os.Remove(filepath.Join(src, fmt.Sprintf("rot-%d", i-1)))
		writeFile(t, filepath.Join(src, fmt.Sprintf("rot-%d", i)), randomBytes(rng, 1<<20+rng.IntN(1<<20)))
		writeFile(t, filepath.Join(src, "small"), []byte(fmt.Sprintf("version %d %x\n", i, rng.Uint64())))
		m := manifest(t, src)
		id := tr.backup(t, src)
		h[id] = m
		ids = append(ids, id)
	}
	return ids, h
}

// packCount counts the pack files of a local repository.
func packCount(t *testing.T, tr *testRepo) int { return len(tr.listFiles(t, "data")) }

// RELIABILITY A2: kill -9 during prune at every phase. No kept snapshot
// loses a blob, the repository checks clean, and prune runs again to the end.
func TestA2KillPruneAtEveryPhase(t *testing.T) {
	for i, fp := range []string{pruner.FailpointRepacked, pruner.FailpointIndexed, pruner.FailpointDeleting} {
		t.Run(fp, func(t *testing.T) {
			tr := newTestRepo(t)
			src := filepath.Join(t.TempDir(), "src")
			ids, h := churn(t, tr, src, uint64(i), 6)
			if res := tr.run(t, nil, "forget", "--keep-last", "2"); res.code != 0 {
				t.Fatalf("forget: %v", res)
			}
			kept := ids[len(ids)-2:]
			res := tr.run(t, []string{fastPrune, "BUNKER_FAILPOINT=" + fp}, "prune", "--max-unused", "0")
			if res.signal != syscall.SIGKILL {
				t.Fatalf("failpoint %s did not kill the prune: %v", fp, res)
			}
			tr.mustCheckClean(t, true)
			for _, id := range kept {
				verifyRestore(t, tr, src, id, h[id])
			}
			before := packCount(t, tr)
			res = tr.run(t, []string{fastPrune}, "prune", "--max-unused", "0", "--unindexed-grace", "0")
			if res.code != 0 {
				t.Fatalf("prune after the crash: %v", res)
			}
			after := packCount(t, tr)
			t.Logf("%s: %d packs after the crash, %d after the second prune", fp, before, after)
			if fp != pruner.FailpointDeleting && after >= before {
				t.Errorf("second prune deleted nothing (%d packs before, %d after)", before, after)
			}
			tr.mustCheckClean(t, true)
			for _, id := range kept {
				verifyRestore(t, tr, src, id, h[id])
			}
			id := tr.backup(t, src)
			verifyRestore(t, tr, src, id, manifest(t, src))
		})
	}
}

// commitBackup backs up paths through a handle that may hold an outdated
// index, and commits the way the CLI does (lock check, CheckCommit).
func commitBackup(ctx context.Context, t *testing.T, r *repository.Repository, lock *repository.Lock, paths ...string) (*snapshot.Snapshot, error) {
	t.Helper()
	arch := archiver.New(r, archiver.Options{Error: func(p string, err error) { t.Errorf("backup: %s: %v", p, err) }})
	tree, targets, err := arch.Run(ctx, paths)
	if err != nil {
		r.Abort()
		return nil, err
	}
	if err := r.Flush(ctx); err != nil {
		return nil, err
	}
	sn := &snapshot.Snapshot{Time: time.Now(), Tree: tree, Paths: targets, Hostname: "other-host"}
	if _, err := r.CommitSnapshot(ctx, lock, sn); err != nil {
		return nil, err
	}
	return sn, nil
}

// RELIABILITY A4: a prune is interrupted after it deleted packs; then a
// backup from another host whose view of the index predates the prune (the
// closest thing Bunker has to an old cache: it keeps no cache on disk)
// deduplicates against data the prune deleted. It must not commit a
// snapshot that refers to a missing blob; the next backup is whole.
func TestA4InterruptedPruneThenBackupWithOldIndex(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	ids, _ := churn(t, tr, src, 4, 4)
	// The other host's source holds the file only the first snapshot has.
	other := filepath.Join(t.TempDir(), "other")
	target := t.TempDir()
	if code, failed := tr.restore(t, ids[0], target); code != 0 {
		t.Fatalf("restore: exit %d, %v", code, failed)
	}
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(restoredAt(target, src), "rot-0"), filepath.Join(other, "rot-0")); err != nil {
		t.Fatal(err)
	}
	old := tr.open(t, repository.Options{}) // index loaded before the prune

	if res := tr.run(t, nil, "forget", ids[0]); res.code != 0 {
		t.Fatalf("forget: %v", res)
	}
	res := tr.run(t, []string{fastPrune, "BUNKER_FAILPOINT=" + pruner.FailpointDeleting}, "prune")
	if res.signal != syscall.SIGKILL {
		t.Fatalf("prune was not killed: %v", res)
	}

	lock, err := old.Lock(ctx, false) // the killed prune's lock is stale: its PID is gone
	if err != nil {
		t.Fatal(err)
	}
	sn, err := commitBackup(ctx, t, old, lock, other)
	if err := lock.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err == nil {
		// Committed: then every blob it names must be stored.
		t.Logf("the old-index backup committed %s", sn.ID.Short())
	} else if !errors.Is(err, repository.ErrPrunedMeanwhile) {
		t.Fatalf("backup with an old index: %v", err)
	} else {
		t.Logf("the old-index backup refused to commit: %v", err)
	}
	tr.mustCheckClean(t, true)
	// A fresh backup of the same data stores it again and restores.
	id := tr.backup(t, other)
	verifyRestore(t, tr, other, id, manifest(t, other))
	if res := tr.run(t, []string{fastPrune}, "prune"); res.code != 0 {
		t.Fatalf("prune: %v", res)
	}
	tr.mustCheckClean(t, true)
}

// startAndWaitLock starts the CLI and returns once it has written a lock
// file (that is, once it is past taking its lock).
func startAndWaitLock(t *testing.T, tr *testRepo, env []string, args ...string) (*exec.Cmd, *strings.Builder, *strings.Builder) {
	t.Helper()
	before := tr.listFiles(t, "locks")
	cmd := tr.command(env, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(newIDs(before, tr.listFiles(t, "locks"))) == 0 {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("bunker %s never took its lock", args[0])
		}
		time.Sleep(5 * time.Millisecond)
	}
	return cmd, &stdout, &stderr
}

// stoppedBeforeCommit wants a backup that lost its lock to have exited 11
// with msg, committed no snapshot and left a repository that checks clean.
func stoppedBeforeCommit(t *testing.T, tr *testRepo, res cliResult, msg string) {
	t.Helper()
	if res.code != 11 || !strings.Contains(res.stderr, msg) {
		t.Fatalf("backup that lost its lock: want exit 11 and %q, got %v", msg, res)
	}
	if ids := tr.snapshotIDs(t); len(ids) != 0 {
		t.Fatalf("snapshots committed: %v", ids)
	}
	tr.mustCheckClean(t, true)
}

func finish(t *testing.T, cmd *exec.Cmd, stdout, stderr *strings.Builder) cliResult {
	t.Helper()
	err := cmd.Wait()
	res := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	if err := waitResult(err, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

// lockTiming shortens the lock timing of the CLI: refreshed every 200 ms,
// stale for others after 2 s, distrusted by its holder after 1 s.
const lockTiming = "BUNKER_TEST_LOCK_TIMING=200ms/2s"

// RELIABILITY A6: a backup and a prune stopped (SIGSTOP) past their lock's
// lifetime and resumed: they commit and delete nothing and exit with an
// error, while another process could use the repository meanwhile.
func TestA6StoppedPastLockLifetime(t *testing.T) {
	t.Run("backup", func(t *testing.T) {
		tr := newTestRepo(t)
		src := filepath.Join(t.TempDir(), "src")
		makeSource(t, src, 6, 48<<20)
		cmd, stdout, stderr := startAndWaitLock(t, tr, []string{lockTiming}, "backup", "--host", "reliability", src)
		if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2500 * time.Millisecond)
		// Its lock is stale now: an exclusive lock is granted to another.
		if res := tr.run(t, []string{lockTiming, fastPrune}, "prune"); res.code != 0 {
			t.Errorf("prune while the backup is stopped: %v", res)
		}
		if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		stoppedBeforeCommit(t, tr, finish(t, cmd, stdout, stderr), "lost the repository lock")
	})
	t.Run("prune", func(t *testing.T) {
		tr := newTestRepo(t)
		src := filepath.Join(t.TempDir(), "src")
		ids, h := churn(t, tr, src, 66, 4)
		if res := tr.run(t, nil, "forget", "--keep-last", "1"); res.code != 0 {
			t.Fatalf("forget: %v", res)
		}
		packs := tr.listFiles(t, "data")
		indexes := tr.listFiles(t, "index")
		cmd, stdout, stderr := startAndWaitLock(t, tr, []string{lockTiming, "BUNKER_TEST_PRUNE_WAIT=3s"}, "prune", "--max-unused", "0")
		// Stop it while it waits between its new index and the deletions.
		deadline := time.Now().Add(30 * time.Second)
		for len(newIDs(indexes, tr.listFiles(t, "index"))) == 0 {
			if time.Now().After(deadline) {
				_ = cmd.Process.Kill()
				t.Fatal("prune never wrote its index")
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(4 * time.Second)
		if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		res := finish(t, cmd, stdout, stderr)
		if res.code != 11 || !strings.Contains(res.stderr, "lost the repository lock") {
			t.Fatalf("resumed prune: want exit 11 and a lost-lock error, got %v", res)
		}
		for _, p := range packs {
			if _, err := os.Stat(tr.packPath(p)); err != nil {
				t.Errorf("the stopped prune deleted pack %.8s", p)
			}
		}
		tr.mustCheckClean(t, true)
		verifyRestore(t, tr, src, ids[len(ids)-1], h[ids[len(ids)-1]])
	})
}

// RELIABILITY C3: listings that miss recent objects. A backup's snapshot,
// index and packs stay out of listings for a while; a prune that starts
// meanwhile sees the snapshot's data as unused, yet deletes nothing the
// snapshot uses: unindexed packs are young, and the rescan after the wait
// (longer than the listing lag) rescues the packs it planned to delete.
func TestC3ListingsMissRecentObjects(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	rng := rand.New(rand.NewPCG(3, 3))
	makeSource(t, src, 3, 2<<20)
	writeFile(t, filepath.Join(src, "shared"), randomBytes(rng, 3<<20))
	const lag = 1500 * time.Millisecond
	first := tr.backup(t, src)
	time.Sleep(lag) // the first backup is old enough to be listed
	writeFile(t, filepath.Join(src, "fresh"), randomBytes(rng, 1<<20))
	m := manifest(t, src)

	openLagging := func() (*repository.Repository, *fault.Backend) {
		be, err := local.Open(ctx, tr.dir)
		if err != nil {
			t.Fatal(err)
		}
		fb := fault.New(be)
		r, err := repository.Open(ctx, fb, []byte(testPassword), repository.Options{KDF: crypto.TestKDF})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		return r, fb
	}
	// The second backup: shares "shared" with the first, adds "fresh".
	w := tr.open(t, repository.Options{})
	sn, err := backupInProcess(ctx, t, w, src)
	if err != nil {
		t.Fatal(err)
	}
	// Forget the first snapshot, then prune through a lagging listing.
	if err := w.Backend().Remove(ctx, backend.Handle{Type: backend.SnapshotFile, Name: first}); err != nil {
		t.Fatal(err)
	}
	r, fb := openLagging()
	fb.SetRules(fault.Rules{HideInList: func(ft backend.FileType, fi backend.FileInfo) bool {
		return ft != backend.LockFile && time.Since(fi.ModTime) < lag
	}})
	plan, err := pruner.MakePlan(ctx, r, pruner.Options{}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if plan.Snapshots != 0 || len(plan.Delete) == 0 {
		t.Fatalf("the lagging listing should hide the new snapshot and doom the first one's packs: %d snapshots, %d packs to delete",
			plan.Snapshots, len(plan.Delete))
	}
	if len(plan.Unindexed) != 0 {
		t.Fatalf("young unindexed packs planned for deletion: %v", plan.Unindexed)
	}
	res, err := pruner.Execute(ctx, r, plan, pruner.Options{Wait: 2 * lag})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rescued) == 0 {
		t.Fatalf("nothing rescued; deleted %d packs", res.DeletedPacks)
	}
	t.Logf("rescued %d of %d planned packs, deleted %d", len(res.Rescued), len(plan.Delete)+len(plan.Repack), res.DeletedPacks)
	tr.mustCheckClean(t, true)
	verifyRestore(t, tr, src, sn.ID.String(), m)
}

// RELIABILITY D2: backup and prune racing on shared chunks. A backup
// deduplicates against data that only a forgotten snapshot used while a
// prune deletes it; whichever way the race goes, nothing the committed
// snapshot uses is deleted.
func TestD2BackupAndPruneRace(t *testing.T) {
	ctx := context.Background()
	for _, order := range []string{"commit-during-prune-wait", "commit-after-prune"} {
		t.Run(order, func(t *testing.T) {
			tr := newTestRepo(t)
			src := filepath.Join(t.TempDir(), "src")
			rng := rand.New(rand.NewPCG(2, 2))
			makeSource(t, src, 2, 2<<20)
			writeFile(t, filepath.Join(src, "shared"), randomBytes(rng, 3<<20))
			first := tr.backup(t, src)
			writeFile(t, filepath.Join(src, "fresh"), randomBytes(rng, 1<<20))
			m := manifest(t, src)

			// The backup: it loaded the index while the first snapshot
			// still existed and stores only "fresh"; "shared" is deduplicated.
			b := tr.open(t, repository.Options{})
			lock, err := b.Lock(ctx, false)
			if err != nil {
				t.Fatal(err)
			}
			arch := archiver.New(b, archiver.Options{})
			tree, targets, err := arch.Run(ctx, []string{src})
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			sn := &snapshot.Snapshot{Time: time.Now(), Tree: tree, Paths: targets, Hostname: "reliability"}
			// Its lock was missed (a lagging listing): model that by
			// removing the lock file only for the prune's view.
			if err := lock.Unlock(ctx); err != nil {
				t.Fatal(err)
			}
			lock, err = b.Lock(ctx, false)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = lock.Unlock(ctx) }()

			if err := b.Backend().Remove(ctx, backend.Handle{Type: backend.SnapshotFile, Name: first}); err != nil {
				t.Fatal(err)
			}
			p := tr.openNoIndex(t)
			plan, err := pruner.MakePlan(ctx, p, pruner.Options{}, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if len(plan.Delete)+len(plan.Repack) == 0 {
				t.Fatal("the prune plans to delete nothing: the race would prove nothing")
			}
			switch order {
			case "commit-during-prune-wait":
				// The backup checked before the prune rewrote the index and
				// writes its snapshot inside its commit window, while the
				// prune waits.
				if err := b.CheckCommit(ctx, tree); err != nil {
					t.Fatal(err)
				}
				var wg sync.WaitGroup
				var res *pruner.Result
				var perr error
				wg.Add(1)
				go func() {
					defer wg.Done()
					res, perr = pruner.Execute(ctx, p, plan, pruner.Options{Wait: 1500 * time.Millisecond})
				}()
				waitForNewIndex(t, tr, plan)
				if _, err := b.SaveSnapshot(ctx, sn); err != nil {
					t.Fatal(err)
				}
				wg.Wait()
				if perr != nil {
					t.Fatal(perr)
				}
				if len(res.Rescued) == 0 {
					t.Fatal("the prune rescued nothing")
				}
				tr.mustCheckClean(t, true)
				verifyRestore(t, tr, src, sn.ID.String(), m)
			case "commit-after-prune":
				if _, err := pruner.Execute(ctx, p, plan, pruner.Options{Wait: time.Millisecond}); err != nil {
					t.Fatal(err)
				}
				_, err := b.CommitSnapshot(ctx, lock, sn)
				if !errors.Is(err, repository.ErrPrunedMeanwhile) {
					t.Fatalf("commit after the prune deleted its data: want ErrPrunedMeanwhile, got %v", err)
				}
				if ids := tr.snapshotIDs(t); len(ids) != 0 {
					t.Fatalf("snapshots %v were committed", ids)
				}
				tr.mustCheckClean(t, true)
				id := tr.backup(t, src)
				verifyRestore(t, tr, src, id, m)
			}
		})
	}
}

// waitForNewIndex waits until the prune of plan has written its index.
func waitForNewIndex(t *testing.T, tr *testRepo, plan *pruner.Plan) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		n := len(tr.listFiles(t, "index"))
		if n > plan.IndexFiles {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the prune never wrote its index")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// RELIABILITY D2, through the CLI: backups and forget --prune run at the
// same time for a while. Locks serialise them (a loser exits 11 and
// retries); at the end every snapshot restores whole and check passes.
func TestD2BackupAndPruneLoops(t *testing.T) {
	tr := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	makeSource(t, src, 22, 4<<20)
	h := history{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	stop := time.Now().Add(8 * time.Second)
	locked := 0
	wg.Add(2)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(22, 1))
		for i := 0; time.Now().Before(stop); i++ {
			mu.Lock()
			writeFile(t, filepath.Join(src, "rot"), randomBytes(rng, 512<<10))
			m := manifest(t, src)
			res := tr.run(t, nil, "backup", "--json", "--host", "reliability", src)
			switch res.code {
			case 0:
				before := map[string]bool{}
				for id := range h {
					before[id] = true
				}
				for _, id := range tr.snapshotIDs(t) {
					if !before[id] {
						h[id] = m
					}
				}
			case 11:
				locked++
			default:
				t.Errorf("backup: %v", res)
			}
			mu.Unlock()
		}
	}()
	go func() {
		defer wg.Done()
		for time.Now().Before(stop) {
			res := tr.run(t, []string{fastPrune}, "forget", "--keep-last", "2", "--prune", "--max-unused", "0")
			if res.code == 11 {
				mu.Lock()
				locked++
				mu.Unlock()
			} else if res.code != 0 {
				t.Errorf("forget --prune: %v", res)
			}
		}
	}()
	wg.Wait()
	t.Logf("%d snapshots taken, %d runs refused by a lock", len(h), locked)
	tr.mustCheckClean(t, true)
	for _, id := range tr.snapshotIDs(t) {
		verifyRestore(t, tr, src, id, h[id])
	}
}

// RELIABILITY D3: two pruners at once. One wins; the other changes nothing
// and says why (exit 11, the holder of the lock).
func TestD3TwoPruners(t *testing.T) {
	tr := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	ids, h := churn(t, tr, src, 33, 4)
	if res := tr.run(t, nil, "forget", "--keep-last", "1"); res.code != 0 {
		t.Fatalf("forget: %v", res)
	}
	var wg sync.WaitGroup
	results := make([]cliResult, 2)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = tr.run(t, []string{"BUNKER_TEST_PRUNE_WAIT=1s"}, "prune")
		}()
	}
	wg.Wait()
	wins, refused := 0, 0
	for _, res := range results {
		switch {
		case res.code == 0 && strings.Contains(res.stdout, "deleted "):
			wins++
		case res.code == 11 && strings.Contains(res.stderr, "locked") && !strings.Contains(res.stdout, "deleted "):
			refused++
		default:
			t.Errorf("unexpected prune result: %v", res)
		}
	}
	if wins != 1 || refused != 1 {
		t.Fatalf("want one winner and one refused, got %d and %d", wins, refused)
	}
	tr.mustCheckClean(t, true)
	verifyRestore(t, tr, src, ids[len(ids)-1], h[ids[len(ids)-1]])
}

// RELIABILITY D4: a lock removed by hand while its owner runs. The owner
// notices and stops before committing: no snapshot, no deletion.
func TestD4LockRemovedByHand(t *testing.T) {
	removeLocks := func(t *testing.T, tr *testRepo) {
		for _, l := range tr.listFiles(t, "locks") {
			if err := os.Remove(filepath.Join(tr.dir, "locks", l)); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Run("backup", func(t *testing.T) {
		tr := newTestRepo(t)
		src := filepath.Join(t.TempDir(), "src")
		makeSource(t, src, 4, 32<<20)
		cmd, stdout, stderr := startAndWaitLock(t, tr, nil, "backup", "--host", "reliability", src)
		removeLocks(t, tr)
		stoppedBeforeCommit(t, tr, finish(t, cmd, stdout, stderr), "removed by someone else")
	})
	t.Run("prune", func(t *testing.T) {
		tr := newTestRepo(t)
		src := filepath.Join(t.TempDir(), "src")
		ids, h := churn(t, tr, src, 44, 4)
		if res := tr.run(t, nil, "forget", "--keep-last", "1"); res.code != 0 {
			t.Fatalf("forget: %v", res)
		}
		packs := tr.listFiles(t, "data")
		cmd, stdout, stderr := startAndWaitLock(t, tr, []string{"BUNKER_TEST_PRUNE_WAIT=2s"}, "prune")
		removeLocks(t, tr)
		res := finish(t, cmd, stdout, stderr)
		if res.code != 11 {
			t.Fatalf("prune whose lock was removed: want exit 11, got %v", res)
		}
		for _, p := range packs {
			if _, err := os.Stat(tr.packPath(p)); err != nil {
				t.Errorf("pack %.8s deleted", p)
			}
		}
		tr.mustCheckClean(t, true)
		verifyRestore(t, tr, src, ids[len(ids)-1], h[ids[len(ids)-1]])
	})
}
