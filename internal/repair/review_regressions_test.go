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
// index says where each is. Repair index leaves the pack out of the index
// (after copying its intact blobs to a new pack), and the next prune may
// delete it: the blobs must survive all of that.
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
	// The damaged pack itself may go (its intact blobs were copied to a
	// new pack by repair index); its intact blobs must not.
	final := repotest.Open(t, f.be, true)
	for _, name := range []string{"lost", "x"} {
		if data, err := final.LoadBlob(ctx, repo.DataBlob, f.blobs[name]); err != nil || string(data) != string(f.data[name]) {
			t.Errorf("DATA LOSS: intact blob %s of a pack with a damaged header is gone after repair index + repair snapshots --forget + prune: %v", name, err)
		}
	}
}
