package replicate_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"bunker/internal/backend"
	"bunker/internal/backend/fault"
	"bunker/internal/backend/mem"
	"bunker/internal/pruner"
	"bunker/internal/repair"
	"bunker/internal/replicate"
	"bunker/internal/repo"
	"bunker/internal/repo/index"
	"bunker/internal/repo/repotest"
	"bunker/internal/snapshot"
)

// Regressions found by a review of the copy (each test was first written to
// fail against the code it found the problem in).

// Review: the hints (target trees paired with source trees) are gathered
// only from the *selected* snapshots, though the comment of missing() says
// "selected or not". A nightly `bunker copy --latest 1` (or copying one
// snapshot by ID) thus has no hint at all and, re-encoding, reads every data
// blob of the snapshot from the source again, although the target holds the
// copy of the previous snapshot of the same host and paths.
func TestReviewHintsOnlyFromSelected(t *testing.T) {
	s := newSource(t)
	s.snapshot(t)
	be, dst := targets[0].make(t, s.r)
	mustCopy(t, s.r, dst, replicate.Options{})

	s.files["d2/f0"] = repotest.RandBytes(4242, 24<<10)
	id2 := s.snapshot(t)
	sn2, err := s.r.LoadSnapshot(context.Background(), id2)
	if err != nil {
		t.Fatal(err)
	}
	d := fresh(t, be)
	lock, err := d.Lock(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lock.Unlock(context.Background()) }()
	all, err := s.r.Snapshots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	res, err := replicate.Copy(context.Background(), fresh(t, s.be), d, lock, []*snapshot.Snapshot{sn2}, replicate.Options{All: all})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Copied) != 1 {
		t.Fatalf("copied %d", len(res.Copied))
	}
	// Only the two halves of the changed file are new.
	if res.Blobs != 2 {
		t.Errorf("copying only the newest snapshot read %d blobs (%d bytes) from the source; want 2: the target already holds the rest", res.Blobs, res.Bytes)
	}
}

// Review: a truncated source pack (the comment of packFailed and
// docs/format.md: "a source pack that cannot be read at all (gone,
// truncated) fails the blobs wanted from it") stops the whole copy: the
// backend's io.ErrUnexpectedEOF is not classified as source damage, so the
// snapshots that do not depend on the pack are not copied either.
func TestReviewTruncatedSourcePack(t *testing.T) {
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			s := newSource(t)
			good := s.snapshot(t)
			s.files["new/file"] = repotest.RandBytes(999, 40<<10)
			bad := s.snapshot(t)
			data := s.files["new/file"]
			id := s.r.BlobID(data[:len(data)/2])
			pk := repotest.PackOf(t, s.r, repo.DataBlob, id)
			loc, _ := s.r.LookupBlob(repo.BlobHandle{Type: repo.DataBlob, ID: id})
			repotest.Replace(t, s.be, backend.PackFile, pk, func(b []byte) []byte {
				return b[:loc.Offset+loc.Length/2]
			})
			be, dst := tg.make(t, s.r)
			res, err := runCopy(t, context.Background(), fresh(t, s.be), dst, replicate.Options{})
			if err != nil {
				t.Fatalf("a truncated source pack stopped the whole copy: %v", err)
			}
			if len(res.Failed) != 1 || res.Failed[0].Source.ID != bad {
				t.Fatalf("failed: %+v", res.Failed)
			}
			sameSnapshots(t, s.r, s.be, be, good)
		})
	}
}

// Review: a snapshot's origin is trusted to mean "same content". `bunker
// repair snapshots` (repair.Snapshots) keeps Original/OriginalRepo when it
// rewrites a damaged copy in the target without the lost files. The
// re-encoding copy then pairs the source's trees with the repaired target
// trees, and maps every *unchanged* source subtree to its repaired target
// subtree (planReencode: id == hs -> treeMap[id] = ht): every later copy in
// the target silently lacks the files the repair dropped, though the source
// holds them intact. (It also counts the repaired copy as "present", so the
// repaired snapshot is never copied again in full.)
func TestReviewRepairedTargetCopyUsedAsHint(t *testing.T) {
	ctx := context.Background()
	s := newSource(t)
	s.snapshot(t)
	be, dst := targets[0].make(t, s.r)
	mustCopy(t, s.r, dst, replicate.Options{})

	// The target loses one of its data packs; the user repairs it.
	d := fresh(t, be)
	if err := d.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	var lost repo.ID
	d.Index().Each(func(h repo.BlobHandle, loc index.Location) {
		if h.Type == repo.DataBlob && lost.IsNull() {
			lost = loc.Pack
		}
	})
	repotest.Remove(t, be, backend.PackFile, lost)
	if _, err := repair.RebuildIndex(ctx, fresh(t, be), false); err != nil {
		t.Fatal(err)
	}
	rres, err := repair.Snapshots(ctx, repotest.Open(t, be, true), false, true)
	if err != nil || len(rres) != 1 || len(rres[0].Lost) == 0 {
		t.Fatalf("repair: %+v %v", rres, err)
	}
	t.Logf("repair dropped %v from the target's copy", rres[0].Lost)

	// A new backup in the source, one unrelated file changed; the source
	// still holds every file intact.
	var changed string
	for p := range s.files {
		if !strings.Contains(strings.Join(rres[0].Lost, " "), p) {
			changed = p
			break
		}
	}
	s.files[changed] = repotest.RandBytes(31337, 10<<10)
	id2 := s.snapshot(t)
	// The repaired copy is no copy any more: the first snapshot is copied
	// again, whole, with the new one.
	res := mustCopy(t, fresh(t, s.be), fresh(t, be), replicate.Options{})
	if len(res.Copied) != 2 {
		t.Fatalf("copied %d (present %d, failed %+v), want 2", len(res.Copied), res.Present, res.Failed)
	}
	// The copy of the new snapshot must hold all of its files.
	sn2, err := s.r.LoadSnapshot(ctx, id2)
	if err != nil {
		t.Fatal(err)
	}
	var cp *snapshot.Snapshot
	snaps, _ := fresh(t, be).Snapshots(ctx)
	for _, c := range snaps {
		if c.Original != nil && *c.Original == id2 {
			cp = c
		}
	}
	if cp == nil {
		t.Fatal("no copy of the new snapshot")
	}
	d2 := repotest.Open(t, be, true)
	want, got := contents(t, s.r, sn2.Tree), contents(t, d2, cp.Tree)
	var missing []string
	for p := range want {
		if _, ok := got[p]; !ok {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		t.Errorf("the target's copy of the new snapshot lacks %v, which the source holds intact", missing)
	}
}

// Review: damage in the *target* (a pack of the target that holds a tree of
// the copy already there is gone) is reported as damage in the source:
// checkComplete's error (backend.ErrNotExist from the target's LoadBlob)
// passes isSourceDamage, the snapshot lands in Result.Failed and the CLI
// tells the user to run `check --read-data` on the source.
func TestReviewTargetDamageBlamedOnSource(t *testing.T) {
	ctx := context.Background()
	s := newSource(t)
	s.snapshot(t)
	be, dst := targets[1].make(t, s.r)
	mustCopy(t, s.r, dst, replicate.Options{})
	// Remove the target's pack holding the tree of d3.
	root := repotest.LoadTree(t, s.r, mustSnap(t, s.r).Tree)
	d3 := root.Find("d3").Subtree
	d := fresh(t, be)
	if err := d.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	repotest.Remove(t, be, backend.PackFile, repotest.PackOf(t, d, repo.TreeBlob, d3))

	s.files["d0/f0"] = repotest.RandBytes(4711, 10<<10)
	s.snapshot(t)
	res, err := runCopy(t, ctx, fresh(t, s.be), fresh(t, be), replicate.Options{})
	if err == nil {
		for _, f := range res.Failed {
			t.Errorf("target damage reported as a snapshot damaged in the source: %v (ErrDamagedSource: %v)", f.Err, errors.Is(f.Err, replicate.ErrDamagedSource))
		}
		t.Fatal("the copy went on over a damaged target")
	}
	if !strings.HasPrefix(err.Error(), "target: ") || errors.Is(err, replicate.ErrDamagedSource) {
		t.Errorf("error %q does not blame the target", err)
	}
}

func mustSnap(t *testing.T, r interface {
	Snapshots(context.Context) ([]*snapshot.Snapshot, error)
}) *snapshot.Snapshot {
	t.Helper()
	snaps, err := r.Snapshots(context.Background())
	if err != nil || len(snaps) == 0 {
		t.Fatal(fmt.Sprint(err))
	}
	return snaps[0]
}

// Review: StorePack adopts a pack already stored under the source pack's
// name (the leftover of an interrupted copy) without regard to its age.
// The commit protocol (docs/format.md 11b) protects the packs a writer has
// not indexed yet only by their youth ("Packs a running backup wrote but
// has not indexed are younger than the grace period"); an adopted leftover
// can be hours old. A prune that missed the copy's lock (C3/A6, the threat
// the protocol is built for) plans the leftover as old unindexed garbage,
// and the resumed copy adopts it, indexes it and commits a snapshot that
// refers to it before the prune deletes it: the target then holds a
// snapshot whose packs are gone. A backup in the same race is safe: its
// packs are new files, never in the prune's plan.
func TestReviewAdoptedOldLeftoverPrunedUnderCommit(t *testing.T) {
	ctx := context.Background()
	s := newSource(t)
	s.snapshot(t)
	be := mem.New()
	create(t, be, s.r)
	// An earlier copy stored the source's packs and was killed before it
	// wrote an index: the packs are in the target, unindexed.
	for p := range repotest.Files(t, s.be, backend.PackFile) {
		h := backend.Handle{Type: backend.PackFile, Name: p.String()}
		data, err := backend.LoadAll(ctx, s.be, h)
		if err != nil {
			t.Fatal(err)
		}
		if err := be.Save(ctx, h, data); err != nil {
			t.Fatal(err)
		}
	}
	// A prune of the target, two hours later by the storage's clock, whose
	// listing misses the lock of the copy that resumes meanwhile.
	pbe := fault.New(be)
	var once sync.Once
	var copyErr error
	pbe.SetRules(fault.Rules{BeforeRemove: func(h backend.Handle) error {
		if h.Type == backend.PackFile {
			once.Do(func() {
				// The resumed copy runs between the prune's rescan and its
				// deletions.
				_, copyErr = runCopy(t, ctx, fresh(t, s.be), fresh(t, be), replicate.Options{Mode: replicate.ModePack})
			})
		}
		return nil
	}})
	pr := fresh(t, pbe)
	opts := pruner.Options{Wait: time.Millisecond}
	plan, err := pruner.MakePlan(ctx, pr, opts, time.Now().Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pruner.Execute(ctx, pr, plan, opts); err != nil {
		t.Fatal(err)
	}
	if copyErr != nil {
		t.Fatalf("copy: %v", copyErr)
	}
	snaps, _ := fresh(t, be).Snapshots(ctx)
	t.Logf("target holds %d snapshots", len(snaps))
	checkClean(t, be, "after a copy adopted leftover packs a prune deleted")
}
