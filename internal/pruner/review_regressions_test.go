package pruner_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"bunker/internal/backend"
	"bunker/internal/backend/fault"
	"bunker/internal/backend/mem"
	"bunker/internal/checker"
	"bunker/internal/pruner"
	"bunker/internal/repo"
	"bunker/internal/repo/repository"
	"bunker/internal/repo/repotest"
	"bunker/internal/snapshot"
)

// R1: a backup running longer than --unindexed-grace whose lock prune did not
// see: its uploaded-but-unindexed packs are deleted, yet CheckCommit passes
// (it Stats own packs only for "lagging" index files), and the snapshot is
// committed referring to deleted packs.
func TestReviewLongBackupUnindexedPacksDeleted(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	oneSnapshot(t, be)

	// Backup starts: loads the index, uploads packs (64 KiB packs).
	rb := repotest.Open(t, be, true)
	lock, err := rb.Lock(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Unlock(ctx)
	var content []repo.ID
	for i := 0; i < 10; i++ {
		content = append(content, repotest.SaveData(t, rb, repotest.RandBytes(uint64(100+i), 30000)))
	}
	time.Sleep(200 * time.Millisecond) // let the full packs upload

	// Prune whose lock check missed the backup, more than an hour later by
	// the storage clock (MakePlan's now).
	rp := repotest.Open(t, be, false)
	plan, err := pruner.MakePlan(ctx, rp, pruner.Options{Wait: time.Millisecond}, time.Now().Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("plan: %d unindexed packs to delete", len(plan.Unindexed))
	if _, err := pruner.Execute(ctx, rp, plan, pruner.Options{Wait: time.Millisecond}); err != nil {
		t.Fatal(err)
	}

	// Backup finishes.
	tree := repotest.SaveTree(t, rb, repotest.FileNode("big", 300000, content...))
	if err := rb.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	id, err := rb.CommitSnapshot(ctx, lock, &snapshot.Snapshot{Time: time.Now(), Tree: tree, Paths: []string{"/x"}, Hostname: "h"})
	if err != nil {
		t.Logf("commit refused (good): %v", err)
		return
	}
	t.Logf("snapshot %s committed", id.Short())
	rc := repotest.Open(t, be, true)
	bad := 0
	for _, c := range content {
		if _, err := rc.LoadBlob(ctx, repo.DataBlob, c); err != nil {
			bad++
			t.Logf("committed snapshot: %v", err)
		}
	}
	if bad > 0 {
		t.Errorf("BUG: committed snapshot refers to %d blobs whose packs prune deleted", bad)
	}
}

// R2: Lock.Check racing with the background refresh reports a false loss.
func TestReviewCheckRacesRefresh(t *testing.T) {
	old := repository.LockRefresh
	repository.LockRefresh = 2 * time.Millisecond
	defer func() { repository.LockRefresh = old }()
	ctx := context.Background()
	be := mem.New()
	r, err := repository.Create(ctx, be, []byte(repotest.Password), repotest.Options)
	if err != nil {
		t.Fatal(err)
	}
	lock, err := r.Lock(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Unlock(ctx)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if err := lock.Check(ctx); err != nil {
			if errors.Is(err, repository.ErrLockLost) {
				t.Errorf("BUG: false lock loss while nobody touched the lock: %v", err)
			}
			return
		}
	}
}

// R3: the commit window bounds the start of the snapshot write, not its end:
// a snapshot Save that takes longer than prune's wait (slow storage, process
// stopped between the check and the write) commits a snapshot whose data the
// prune deleted.
func TestReviewSlowSnapshotSave(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	be := fault.New(inner)
	d0, s0 := oneSnapshot(t, be)

	rb := repotest.Open(t, be, true)
	lock, err := rb.Lock(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Unlock(ctx)
	// New snapshot reuses d0 (dedup) in a new tree.
	tree := repotest.SaveTree(t, rb, repotest.FileNode("again", 5000, d0))
	if err := rb.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var saving atomic.Bool
	started := make(chan struct{})
	pruned := make(chan struct{})
	be.SetRules(fault.Rules{BeforeSave: func(h backend.Handle, _ []byte) error {
		if h.Type == backend.SnapshotFile && saving.CompareAndSwap(false, true) {
			close(started)
			<-pruned // the Save is slow: it lands after the prune
		}
		return nil
	}})
	done := make(chan error, 1)
	go func() {
		_, err := rb.CommitSnapshot(ctx, lock, &snapshot.Snapshot{Time: time.Now(), Tree: tree, Paths: []string{"/x"}, Hostname: "h"})
		done <- err
	}()
	<-started
	// forget S0, then prune (its lock missed the backup), with the real wait.
	repotest.Remove(t, inner, backend.SnapshotFile, s0)
	rp := repotest.Open(t, be, false)
	opts := pruner.Options{Wait: 200 * time.Millisecond, UnindexedGrace: time.Hour}
	plan, err := pruner.MakePlan(ctx, rp, opts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	res, err := pruner.Execute(ctx, rp, plan, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("prune deleted %d packs", res.DeletedPacks)
	close(pruned)
	if err := <-done; err != nil {
		t.Logf("commit failed (good): %v", err)
		if n := len(repotest.Files(t, inner, backend.SnapshotFile)); n != 0 {
			t.Errorf("the failed commit left %d snapshot files", n)
		}
		return
	}
	rc := repotest.Open(t, be, true)
	if _, err := rc.LoadBlob(ctx, repo.DataBlob, d0); err != nil {
		t.Errorf("BUG: committed snapshot lost data: %v", err)
	}
	if _, err := rc.LoadBlob(ctx, repo.TreeBlob, tree); err != nil {
		t.Errorf("BUG: committed snapshot lost its root tree: %v", err)
	}
}

// Interrupting prune during its wait skips the rescue: a snapshot committed
// in the window now refers to unindexed blobs.
func TestReviewInterruptedWait(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	d0, s0 := oneSnapshot(t, be)

	rb := repotest.Open(t, be, true)
	lock, _ := rb.Lock(ctx, false)
	defer lock.Unlock(ctx)
	tree := repotest.SaveTree(t, rb, repotest.FileNode("again", 5000, d0))
	repotest.Flush(t, rb)

	repotest.Remove(t, be, backend.SnapshotFile, s0)
	rp := repotest.Open(t, be, false)
	opts := pruner.Options{Wait: 2 * time.Second}
	plan, err := pruner.MakePlan(ctx, rp, opts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// The backup commits (its check ran before the new index).
	if _, err := rb.CommitSnapshot(ctx, lock, &snapshot.Snapshot{Time: time.Now(), Tree: tree, Paths: []string{"/x"}, Hostname: "h"}); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond) // Ctrl-C during the wait
	defer cancel()
	_, err = pruner.Execute(cctx, rp, plan, opts)
	t.Logf("prune: %v", err)
	rc := repotest.Open(t, be, true)
	if _, err := rc.LoadBlob(ctx, repo.DataBlob, d0); err != nil {
		t.Errorf("BUG: committed snapshot unreadable after interrupted prune: %v", err)
	}
	_, err = pruner.MakePlan(ctx, repotest.Open(t, be, false), opts, time.Now())
	t.Logf("next prune plan: %v", err)
}

// indexRewritten treats a transient Stat error on a vanished index file as
// "still there": after two prunes, a stalled backup commits a snapshot
// referring to deleted data.
func TestReviewStatErrorFailsOpen(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	be := fault.New(inner)
	d0, s0 := oneSnapshot(t, be)
	f0 := repo.ID{}
	for id := range repotest.Files(t, inner, backend.IndexFile) {
		f0 = id
	}

	rb := repotest.Open(t, be, true) // loads F0
	lock, _ := rb.Lock(ctx, false)
	defer lock.Unlock(ctx)
	tree := repotest.SaveTree(t, rb, repotest.FileNode("again", 5000, d0))

	prune := func() {
		rp := repotest.Open(t, be, false)
		opts := pruner.Options{Wait: time.Millisecond}
		plan, err := pruner.MakePlan(ctx, rp, opts, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pruner.Execute(ctx, rp, plan, opts); err != nil {
			t.Fatal(err)
		}
	}
	repotest.Remove(t, inner, backend.SnapshotFile, s0)
	prune() // N1 supersedes F0; D0 and F0 deleted
	// Something for a second prune to do.
	rx := repotest.Open(t, be, true)
	dx := repotest.SaveData(t, rx, repotest.RandBytes(9, 4000))
	sx := repotest.SaveSnapshot(t, rx, repotest.SaveTree(t, rx, repotest.FileNode("x", 4000, dx)), repotest.BaseTime)
	rx.Close()
	repotest.Remove(t, inner, backend.SnapshotFile, sx)
	prune() // N2 supersedes N1; N1 deleted

	repotest.Flush(t, rb)
	be.SetRules(fault.Rules{BeforeStat: func(h backend.Handle) error {
		if h.Type == backend.IndexFile && h.Name == f0.String() {
			return errors.New("503 slow down")
		}
		return nil
	}})
	_, err := rb.CommitSnapshot(ctx, lock, &snapshot.Snapshot{Time: time.Now(), Tree: tree, Paths: []string{"/x"}, Hostname: "h"})
	be.SetRules(fault.Rules{})
	if err != nil {
		t.Logf("refused (good): %v", err)
		return
	}
	rc := repotest.Open(t, be, true)
	if _, err := rc.LoadBlob(ctx, repo.DataBlob, d0); err != nil {
		t.Errorf("BUG: snapshot committed on a transient Stat error refers to deleted data: %v", err)
	}
}

// oneSnapshot makes a repository in be holding one snapshot of one file,
// whose data blob it returns with the snapshot's ID: the blob a stale
// backup deduplicates against while a prune removes the snapshot.
func oneSnapshot(t *testing.T, be backend.Backend) (repo.ID, repo.ID) {
	t.Helper()
	r0, err := repository.Create(context.Background(), be, []byte(repotest.Password), repotest.Options)
	if err != nil {
		t.Fatal(err)
	}
	defer r0.Close()
	d0 := repotest.SaveData(t, r0, repotest.RandBytes(1, 5000))
	t0 := repotest.SaveTree(t, r0, repotest.FileNode("f0", 5000, d0))
	return d0, repotest.SaveSnapshot(t, r0, t0, repotest.BaseTime)
}

// TestFailedIndexSaveLeavesCheckClean: when the new index of a prune fails
// to save (not stored: network error, full disk), the prune lists its
// doomed packs again in a new index file, while the old files, not
// superseded, still list them. check must count each pack once, not report
// every doomed pack as damaged.
func TestFailedIndexSaveLeavesCheckClean(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.forget(t, "S1", "S2")
	fb := fault.New(f.be)
	rp := repotest.Open(t, fb, false)
	opts := pruner.Options{MaxUnused: 10, Wait: time.Millisecond}
	plan, err := pruner.MakePlan(ctx, rp, opts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	fb.SetRules(fault.Rules{FailSave: fault.Select{Match: fault.OfType(backend.IndexFile), Nth: 1}})
	if _, err := pruner.Execute(ctx, rp, plan, opts); err == nil {
		t.Fatal("prune succeeded although its index could not be saved")
	}
	res, err := checker.Check(ctx, repotest.Open(t, f.be, false), checker.Options{ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range res.Problems {
		t.Errorf("check after the stopped prune: %v", p)
	}
}
