package repair_test

import (
	"context"
	"testing"
	"time"

	"bunker/internal/backend"
	"bunker/internal/pruner"
	"bunker/internal/repair"
	"bunker/internal/repo"
	"bunker/internal/repo/repotest"
)

// A one-bit flip in a pack's header tag: every blob is intact and the old
// index says where each is, but repair index drops the pack and removes the
// old index files; the next prune deletes the pack for good.
func TestReviewRepairDropsRecoverableBlobs(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	repotest.Replace(t, f.be, backend.PackFile, f.packs["P2d"], func(b []byte) []byte { b[len(b)-10] ^= 0x40; return b })
	before := repotest.Open(t, f.be, true)
	if _, err := before.LoadBlob(ctx, repo.DataBlob, f.blobs["lost"]); err != nil {
		t.Fatalf("blob unreadable before repair: %v", err)
	}
	t.Log("before repair: blob 'lost' loads and verifies through the old index")
	if _, err := repair.RebuildIndex(ctx, repotest.Open(t, f.be, false), false); err != nil {
		t.Fatal(err)
	}
	after := repotest.Open(t, f.be, true)
	if _, err := after.LoadBlob(ctx, repo.DataBlob, f.blobs["lost"]); err != nil {
		t.Logf("after repair index: %v", err)
	}
	if _, err := repair.Snapshots(ctx, after, false, true); err != nil {
		t.Fatal(err)
	}
	rp := repotest.Open(t, f.be, false)
	plan, err := pruner.MakePlan(ctx, rp, pruner.Options{Wait: time.Millisecond}, time.Now().Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pruner.Execute(ctx, rp, plan, pruner.Options{Wait: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if !repotest.Exists(t, f.be, backend.PackFile, f.packs["P2d"]) {
		t.Error("DATA LOSS: intact blobs of a pack with a damaged header are gone after repair index + repair snapshots --forget + prune")
	}
}
