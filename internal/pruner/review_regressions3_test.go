package pruner_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"bunker/internal/backend"
	"bunker/internal/backend/fault"
	"bunker/internal/backend/mem"
	"bunker/internal/pruner"
	"bunker/internal/repo"
	"bunker/internal/repo/repository"
	"bunker/internal/repo/repotest"
	"bunker/internal/snapshot"
)

// indexRewritten treats a transient Stat error on a vanished index file as
// "still there": after two prunes, a stalled backup commits a snapshot
// referring to deleted data.
func TestReviewStatErrorFailsOpen(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	be := fault.New(inner)
	r0, err := repository.Create(ctx, be, []byte(repotest.Password), repotest.Options)
	if err != nil {
		t.Fatal(err)
	}
	d0 := repotest.SaveData(t, r0, repotest.RandBytes(1, 5000))
	t0 := repotest.SaveTree(t, r0, repotest.FileNode("f0", 5000, d0))
	s0 := repotest.SaveSnapshot(t, r0, t0, repotest.BaseTime)
	r0.Close()
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
		if os.Getenv("NOFAULT") == "" && h.Type == backend.IndexFile && h.Name == f0.String() {
			return errors.New("503 slow down")
		}
		return nil
	}})
	_, err = rb.CommitSnapshot(ctx, lock, &snapshot.Snapshot{Time: time.Now(), Tree: tree, Paths: []string{"/x"}, Hostname: "h"})
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
