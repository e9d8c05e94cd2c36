package pruner_test

import (
	"context"
	"testing"
	"time"

	"bunker/internal/backend"
	"bunker/internal/backend/mem"
	"bunker/internal/pruner"
	"bunker/internal/repo"
	"bunker/internal/repo/repository"
	"bunker/internal/repo/repotest"
	"bunker/internal/snapshot"
)

// Interrupting prune during its wait skips the rescue: a snapshot committed
// in the window now refers to unindexed blobs.
func TestReviewInterruptedWait(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	r0, err := repository.Create(ctx, be, []byte(repotest.Password), repotest.Options)
	if err != nil {
		t.Fatal(err)
	}
	d0 := repotest.SaveData(t, r0, repotest.RandBytes(1, 5000))
	t0 := repotest.SaveTree(t, r0, repotest.FileNode("f0", 5000, d0))
	s0 := repotest.SaveSnapshot(t, r0, t0, repotest.BaseTime)
	r0.Close()

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
