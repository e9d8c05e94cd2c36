package pruner_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
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

// --- Helpers ----------------------------------------------------------------

// verifySnapshot loads every blob of a snapshot's tree through a handle with
// the current index and returns how many it loaded.
func verifySnapshot(t testing.TB, r *repository.Repository, snapID repo.ID) int {
	t.Helper()
	ctx := context.Background()
	sn, err := r.LoadSnapshot(ctx, snapID)
	if err != nil {
		t.Fatalf("load snapshot %s: %v", snapID.Short(), err)
	}
	n := 0
	err = r.WalkTree(ctx, sn.Tree, map[repo.ID]bool{}, func(h repo.BlobHandle, err error) error {
		n++
		if err != nil {
			t.Errorf("snapshot %s: %v blob %s: %v", snapID.Short(), h.Type, h.ID.Short(), err)
			return nil
		}
		if _, err := r.LoadBlob(ctx, h.Type, h.ID); err != nil {
			t.Errorf("snapshot %s: %v", snapID.Short(), err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func packIDs(l []pruner.PackInfo) []repo.ID {
	out := make([]repo.ID, len(l))
	for i, pi := range l {
		out[i] = pi.ID
	}
	slices.SortFunc(out, func(a, b repo.ID) int { return strings.Compare(a.String(), b.String()) })
	return out
}

func sorted(l ...repo.ID) []repo.ID {
	out := slices.Clone(l)
	slices.SortFunc(out, func(a, b repo.ID) int { return strings.Compare(a.String(), b.String()) })
	if out == nil {
		out = []repo.ID{}
	}
	return out
}

func sameIDs(a, b []repo.ID) bool {
	return slices.Equal(sorted(a...), sorted(b...))
}

func names(m map[string]repo.ID, l []repo.ID) []string {
	var out []string
	for _, id := range l {
		name := id.Short()
		for k, v := range m {
			if v == id {
				name = k
			}
		}
		out = append(out, name)
	}
	return out
}

// --- Fixture ----------------------------------------------------------------

// fixture is a repository of three snapshots, each written with its own
// Flush, so that every stage has its own data pack and tree pack:
//
//	S1: /a1 /a2            data pack D1 {a1 a2}, tree pack TP1 {T1}
//	S2: /b1 /b2            data pack D2 {b1 b2}, tree pack TP2 {T2}
//	S3: /dir/b1 /dir/c1    data pack D3 {c1},    tree pack TP3 {sub root3}
//
// b1 and b2 have the same size, so once S2 is gone D2 is half unused.
type fixture struct {
	be    *mem.Backend
	data  map[string][]byte
	blobs map[string]repo.ID // data blobs by name, and trees T1 T2 sub root3
	snaps map[string]repo.ID
	packs map[string]repo.ID
	index [][]repo.ID // index files written by each stage
	lens  map[repo.ID]int64
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{be: mem.New(), data: map[string][]byte{}, blobs: map[string]repo.ID{}, snaps: map[string]repo.ID{},
		packs: map[string]repo.ID{}, lens: map[repo.ID]int64{}}
	r, err := repository.Create(ctx, f.be, []byte(repotest.Password), repotest.Options)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	sizes := map[string]int{"a1": 6000, "a2": 7000, "b1": 8000, "b2": 8000, "c1": 3000}
	seed := uint64(1)
	file := func(name string) *snapshot.Node {
		if _, ok := f.blobs[name]; !ok {
			f.data[name] = repotest.RandBytes(seed, sizes[name])
			seed++
			f.blobs[name] = repotest.SaveData(t, r, f.data[name])
		}
		return repotest.FileNode(name, sizes[name], f.blobs[name])
	}
	indexBefore := map[repo.ID]backend.FileInfo{}
	newIndex := func() {
		var added []repo.ID
		for id := range repotest.Files(t, f.be, backend.IndexFile) {
			if _, ok := indexBefore[id]; !ok {
				added = append(added, id)
				indexBefore[id] = backend.FileInfo{}
			}
		}
		if len(added) != 1 {
			t.Fatalf("a stage wrote %d index files, want 1", len(added))
		}
		f.index = append(f.index, added)
	}

	f.blobs["T1"] = repotest.SaveTree(t, r, file("a1"), file("a2"))
	f.snaps["S1"] = repotest.SaveSnapshot(t, r, f.blobs["T1"], repotest.BaseTime)
	newIndex()
	f.blobs["T2"] = repotest.SaveTree(t, r, file("b1"), file("b2"))
	f.snaps["S2"] = repotest.SaveSnapshot(t, r, f.blobs["T2"], repotest.BaseTime.Add(time.Hour))
	newIndex()
	f.blobs["sub"] = repotest.SaveTree(t, r, file("b1"), file("c1"))
	f.blobs["root3"] = repotest.SaveTree(t, r, repotest.DirNode("dir", f.blobs["sub"]))
	f.snaps["S3"] = repotest.SaveSnapshot(t, r, f.blobs["root3"], repotest.BaseTime.Add(2*time.Hour))
	newIndex()

	packOfName := func(name string) repo.ID {
		tp := repo.DataBlob
		if name[0] == 'T' || name == "sub" || name == "root3" {
			tp = repo.TreeBlob
		}
		return repotest.PackOf(t, r, tp, f.blobs[name])
	}
	f.packs["D1"], f.packs["TP1"] = packOfName("a1"), packOfName("T1")
	f.packs["D2"], f.packs["TP2"] = packOfName("b1"), packOfName("T2")
	f.packs["D3"], f.packs["TP3"] = packOfName("c1"), packOfName("root3")
	for _, same := range [][2]string{{"a2", "D1"}, {"b2", "D2"}, {"sub", "TP3"}} {
		if packOfName(same[0]) != f.packs[same[1]] {
			t.Fatalf("blob %s is not in pack %s", same[0], same[1])
		}
	}
	distinct := map[repo.ID]bool{}
	for _, id := range f.packs {
		distinct[id] = true
	}
	if len(distinct) != 6 || len(repotest.Files(t, f.be, backend.PackFile)) != 6 {
		t.Fatalf("fixture has %d distinct packs (%d stored), want 6", len(distinct), len(repotest.Files(t, f.be, backend.PackFile)))
	}
	r.Index().Each(func(h repo.BlobHandle, loc repo.Location) { f.lens[h.ID] = int64(loc.Length) })
	return f
}

func (f *fixture) forget(t testing.TB, snaps ...string) {
	t.Helper()
	for _, s := range snaps {
		repotest.Remove(t, f.be, backend.SnapshotFile, f.snaps[s])
	}
}

func (f *fixture) len(names ...string) int64 {
	var n int64
	for _, name := range names {
		n += f.lens[f.blobs[name]]
	}
	return n
}

func (f *fixture) packSize(t testing.TB, name string) int64 {
	t.Helper()
	fi, err := f.be.Stat(context.Background(), backend.Handle{Type: backend.PackFile, Name: f.packs[name].String()})
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size
}

func (f *fixture) ids(names ...string) []repo.ID {
	out := []repo.ID{}
	for _, n := range names {
		out = append(out, f.packs[n])
	}
	return sorted(out...)
}

func (f *fixture) allIndexFiles() []repo.ID {
	var out []repo.ID
	for _, l := range f.index {
		out = append(out, l...)
	}
	return out
}

// --- Tests ------------------------------------------------------------------

func TestPlanClassification(t *testing.T) {
	tests := []struct {
		maxUnused float64
		repack    []string
		kept      []string
	}{
		{maxUnused: 10, repack: []string{"D2"}, kept: []string{"D3", "TP3"}},
		{maxUnused: 49, repack: []string{"D2"}, kept: []string{"D3", "TP3"}},
		{maxUnused: 90, repack: nil, kept: []string{"D2", "D3", "TP3"}},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("max-unused-%g", tc.maxUnused), func(t *testing.T) {
			f := newFixture(t)
			f.forget(t, "S1", "S2")
			before := repotest.Listing(t, f.be)
			r := repotest.Open(t, f.be, false)
			p, err := pruner.MakePlan(context.Background(), r, pruner.Options{MaxUnused: tc.maxUnused}, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			repotest.DiffListings(t, "MakePlan", before, repotest.Listing(t, f.be))

			if got, want := packIDs(p.Delete), f.ids("D1", "TP1", "TP2"); !slices.Equal(got, want) {
				t.Errorf("Delete = %v, want D1 TP1 TP2", names(f.packs, got))
			}
			if got, want := packIDs(p.Repack), f.ids(tc.repack...); !slices.Equal(got, want) {
				t.Errorf("Repack = %v, want %v", names(f.packs, got), tc.repack)
			}
			if len(p.Unindexed)+len(p.Young) != 0 {
				t.Errorf("Unindexed %v, Young %v: want none", p.Unindexed, p.Young)
			}
			// Kept: every indexed pack in no list.
			listed := map[repo.ID]bool{}
			for _, l := range [][]pruner.PackInfo{p.Delete, p.Repack} {
				for _, pi := range l {
					listed[pi.ID] = true
				}
			}
			var kept []repo.ID
			for _, id := range f.packs {
				if !listed[id] {
					kept = append(kept, id)
				}
			}
			if got, want := sorted(kept...), f.ids(tc.kept...); !slices.Equal(got, want) {
				t.Errorf("kept = %v, want %v", names(f.packs, got), tc.kept)
			}
			if p.Nothing() {
				t.Error("Nothing() with packs to delete")
			}

			if p.Snapshots != 1 || p.IndexFiles != 3 || p.Packs != 6 {
				t.Errorf("snapshots %d, index files %d, packs %d; want 1, 3, 6", p.Snapshots, p.IndexFiles, p.Packs)
			}
			if p.UsedBlobs != 4 || p.UnusedBlobs != 5 {
				t.Errorf("used %d unused %d blobs, want 4 and 5", p.UsedBlobs, p.UnusedBlobs)
			}
			if want := f.len("b1", "c1", "sub", "root3"); p.UsedBytes != want {
				t.Errorf("UsedBytes %d, want %d", p.UsedBytes, want)
			}
			if want := f.len("a1", "a2", "T1", "b2", "T2"); p.UnusedBytes != want {
				t.Errorf("UnusedBytes %d, want %d", p.UnusedBytes, want)
			}
			for _, pi := range p.Delete {
				if pi.UsedBlobs != 0 || pi.Size <= 0 || pi.UnusedBytes <= 0 {
					t.Errorf("deleted pack %+v", pi)
				}
			}
			var wantRepackBytes, freed int64
			for _, pi := range p.Repack {
				if pi.ID != f.packs["D2"] || pi.Blobs != 2 || pi.UsedBlobs != 1 || pi.UnusedBytes != f.len("b2") || pi.Size != f.packSize(t, "D2") {
					t.Errorf("repacked pack %+v, want D2 with 2 blobs, 1 used, %d unused bytes", pi, f.len("b2"))
				}
				wantRepackBytes += f.len("b1")
			}
			if p.RepackBytes != wantRepackBytes {
				t.Errorf("RepackBytes %d, want %d", p.RepackBytes, wantRepackBytes)
			}
			for _, n := range append([]string{"D1", "TP1", "TP2"}, tc.repack...) {
				freed += f.packSize(t, n)
			}
			if got := p.FreedBytes(); got != freed-wantRepackBytes {
				t.Errorf("FreedBytes %d, want %d", got, freed-wantRepackBytes)
			}
		})
	}
}

func TestPlanForgottenCountAsRemoved(t *testing.T) {
	f := newFixture(t)
	r := repotest.Open(t, f.be, false)
	p, err := pruner.MakePlan(context.Background(), r, pruner.Options{MaxUnused: 10,
		Forgotten: map[repo.ID]bool{f.snaps["S1"]: true, f.snaps["S2"]: true}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := packIDs(p.Delete), f.ids("D1", "TP1", "TP2"); !slices.Equal(got, want) || p.Snapshots != 1 {
		t.Errorf("Delete = %v (snapshots %d), want D1 TP1 TP2 (1)", names(f.packs, got), p.Snapshots)
	}
	// Nothing forgotten: every pack is used.
	r = repotest.Open(t, f.be, false)
	p, err = pruner.MakePlan(context.Background(), r, pruner.Options{MaxUnused: 10}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !p.Nothing() || p.UnusedBlobs != 0 || p.UsedBlobs != 9 {
		t.Errorf("plan without removed snapshots: delete %v repack %v, used %d unused %d",
			names(f.packs, packIDs(p.Delete)), names(f.packs, packIDs(p.Repack)), p.UsedBlobs, p.UnusedBlobs)
	}
}

func TestExecute(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.forget(t, "S1", "S2")
	r := repotest.Open(t, f.be, false)
	opts := pruner.Options{MaxUnused: 10, Wait: time.Millisecond}
	p, err := pruner.MakePlan(ctx, r, opts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Delete) != 3 || len(p.Repack) != 1 {
		t.Fatalf("plan: delete %d repack %d, want 3 and 1", len(p.Delete), len(p.Repack))
	}
	res, err := pruner.Execute(ctx, r, p, opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.DeletedPacks != 4 || res.NewPacks != 1 || res.DeletedIndexes != 3 || len(res.Rescued) != 0 {
		t.Errorf("result %+v: want 4 deleted packs, 1 new, 3 index files deleted, none rescued", res)
	}
	var wantBytes int64
	for _, n := range []string{"D1", "TP1", "TP2", "D2"} {
		if repotest.Exists(t, f.be, backend.PackFile, f.packs[n]) {
			t.Errorf("pack %s still stored", n)
		}
	}
	for _, pi := range append(slices.Clone(p.Delete), p.Repack...) {
		wantBytes += pi.Size
	}
	if res.DeletedBytes != wantBytes {
		t.Errorf("DeletedBytes %d, want %d", res.DeletedBytes, wantBytes)
	}
	for _, n := range []string{"D3", "TP3"} {
		if !repotest.Exists(t, f.be, backend.PackFile, f.packs[n]) {
			t.Errorf("kept pack %s was deleted", n)
		}
	}

	// One index file, superseding the three old ones.
	index := repotest.Files(t, f.be, backend.IndexFile)
	if _, ok := index[res.NewIndex]; !ok || len(index) != 1 {
		t.Fatalf("index files after prune: %d (new index present: %v), want only the new one", len(index), ok)
	}
	nf, err := r.LoadIndexFile(ctx, res.NewIndex)
	if err != nil {
		t.Fatal(err)
	}
	if !sameIDs(nf.Supersedes, f.allIndexFiles()) {
		t.Errorf("new index supersedes %v, want the 3 old index files", nf.Supersedes)
	}

	// The snapshot left reads back in full, b1 from its new pack.
	r2 := repotest.Open(t, f.be, true)
	if n := verifySnapshot(t, r2, f.snaps["S3"]); n != 4 {
		t.Errorf("walked %d blobs of S3, want 4", n)
	}
	loc, ok := r2.LookupBlob(repo.BlobHandle{Type: repo.DataBlob, ID: f.blobs["b1"]})
	if !ok || slices.Contains(f.ids("D1", "D2", "D3", "TP1", "TP2", "TP3"), loc.Pack) {
		t.Errorf("b1 not indexed in a new pack: %+v, %v", loc, ok)
	}
	data, err := r2.LoadBlob(ctx, repo.DataBlob, f.blobs["b1"])
	if err != nil || string(data) != string(f.data["b1"]) {
		t.Errorf("repacked b1: %v (content equal: %v)", err, string(data) == string(f.data["b1"]))
	}
	for _, n := range []string{"a1", "a2", "b2"} {
		if r2.HasBlob(repo.BlobHandle{Type: repo.DataBlob, ID: f.blobs[n]}) {
			t.Errorf("unused blob %s still indexed", n)
		}
	}
	if got := len(repotest.Files(t, f.be, backend.PackFile)); got != 3 {
		t.Errorf("%d packs stored, want 3 (D3, TP3, the new one)", got)
	}

	// A second prune has nothing to do.
	p2, err := pruner.MakePlan(ctx, repotest.Open(t, f.be, false), opts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !p2.Nothing() || p2.UnusedBlobs != 0 || p2.Packs != 3 || p2.IndexFiles != 1 {
		t.Errorf("second plan: nothing %v, unused %d, packs %d, index files %d", p2.Nothing(), p2.UnusedBlobs, p2.Packs, p2.IndexFiles)
	}
	res2, err := pruner.Execute(ctx, repotest.Open(t, f.be, false), p2, opts)
	if err != nil || res2.DeletedPacks != 0 || !res2.NewIndex.IsNull() {
		t.Errorf("second Execute: %+v, %v", res2, err)
	}
}

func TestUnindexedPacks(t *testing.T) {
	makers := []struct {
		name string
		make func(t *testing.T, r *repository.Repository)
	}{
		{"FlushPacks without index", func(t *testing.T, r *repository.Repository) {
			repotest.SaveData(t, r, repotest.RandBytes(100, 10000))
			packs, err := r.FlushPacks(context.Background())
			if err != nil || len(packs) != 1 {
				t.Fatalf("FlushPacks: %d packs, %v", len(packs), err)
			}
		}},
		{"Abort after a full pack", func(t *testing.T, r *repository.Repository) {
			repotest.SaveData(t, r, repotest.RandBytes(101, 40000))
			repotest.SaveData(t, r, repotest.RandBytes(102, 40000)) // fills the pack: uploaded
			repotest.SaveData(t, r, repotest.RandBytes(103, 1000))  // left open: dropped
			r.Abort()
		}},
	}
	for _, mk := range makers {
		t.Run(mk.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t)
			f.forget(t, "S1")
			before := repotest.Files(t, f.be, backend.PackFile)
			mk.make(t, repotest.Open(t, f.be, true))
			var orphan repo.ID
			var fi backend.FileInfo
			for id, info := range repotest.Files(t, f.be, backend.PackFile) {
				if _, ok := before[id]; !ok {
					if !orphan.IsNull() {
						t.Fatal("more than one unindexed pack")
					}
					orphan, fi = id, info
				}
			}
			if orphan.IsNull() {
				t.Fatal("no unindexed pack stored")
			}

			classify := []struct {
				now   time.Time
				young bool
			}{
				{time.Now(), true},
				{fi.ModTime.Add(59 * time.Minute), true},
				{fi.ModTime.Add(2 * time.Hour), false},
			}
			for _, c := range classify {
				p, err := pruner.MakePlan(ctx, repotest.Open(t, f.be, false), pruner.Options{}, c.now)
				if err != nil {
					t.Fatal(err)
				}
				young, old := packIDs(p.Young), packIDs(p.Unindexed)
				if c.young && (!slices.Equal(young, []repo.ID{orphan}) || len(old) != 0) ||
					!c.young && (!slices.Equal(old, []repo.ID{orphan}) || len(young) != 0) {
					t.Errorf("now = ModTime%+v: young %v unindexed %v, want the orphan young=%v", c.now.Sub(fi.ModTime).Round(time.Minute), young, old, c.young)
				}
				for _, pi := range append(p.Young, p.Unindexed...) {
					if pi.Size != fi.Size {
						t.Errorf("orphan size %d, want %d", pi.Size, fi.Size)
					}
				}
			}

			// Young: kept, while the rest of the plan is carried out.
			opts := pruner.Options{Wait: time.Millisecond}
			r := repotest.Open(t, f.be, false)
			p, err := pruner.MakePlan(ctx, r, opts, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Delete) != 2 {
				t.Fatalf("plan deletes %d packs, want D1 and TP1", len(p.Delete))
			}
			if _, err := pruner.Execute(ctx, r, p, opts); err != nil {
				t.Fatal(err)
			}
			if !repotest.Exists(t, f.be, backend.PackFile, orphan) {
				t.Fatal("young unindexed pack deleted")
			}
			if repotest.Exists(t, f.be, backend.PackFile, f.packs["D1"]) {
				t.Fatal("D1 not deleted")
			}

			// Older than the grace period: deleted.
			r = repotest.Open(t, f.be, false)
			p, err = pruner.MakePlan(ctx, r, opts, fi.ModTime.Add(2*time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(packIDs(p.Unindexed), []repo.ID{orphan}) || p.Nothing() {
				t.Fatalf("second plan: unindexed %v", packIDs(p.Unindexed))
			}
			res, err := pruner.Execute(ctx, r, p, opts)
			if err != nil {
				t.Fatal(err)
			}
			if repotest.Exists(t, f.be, backend.PackFile, orphan) || res.DeletedPacks != len(p.Delete)+len(p.Repack)+1 {
				t.Fatalf("unindexed pack older than the grace period not deleted (result %+v)", res)
			}
			r2 := repotest.Open(t, f.be, true)
			for _, s := range []string{"S2", "S3"} {
				verifySnapshot(t, r2, f.snaps[s])
			}
		})
	}
}

func TestRefusesDamagedRepository(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, f *fixture)
	}{
		{"used pack missing", func(t *testing.T, f *fixture) { repotest.Remove(t, f.be, backend.PackFile, f.packs["D3"]) }},
		{"unused pack missing", func(t *testing.T, f *fixture) { repotest.Remove(t, f.be, backend.PackFile, f.packs["D1"]) }},
		{"pack truncated by one byte", func(t *testing.T, f *fixture) {
			repotest.Replace(t, f.be, backend.PackFile, f.packs["D2"], func(b []byte) []byte { return b[:len(b)-1] })
		}},
		{"pack cut to its blobs", func(t *testing.T, f *fixture) {
			repotest.Replace(t, f.be, backend.PackFile, f.packs["TP3"], func(b []byte) []byte { return b[:len(b)/3] })
		}},
		{"index file unreadable", func(t *testing.T, f *fixture) {
			repotest.Replace(t, f.be, backend.IndexFile, f.index[0][0], func(b []byte) []byte { return repotest.RandBytes(7, len(b)) })
		}},
		{"index file flipped bit", func(t *testing.T, f *fixture) {
			repotest.Replace(t, f.be, backend.IndexFile, f.index[1][0], func(b []byte) []byte { b[len(b)/2] ^= 1; return b })
		}},
		{"index of a snapshot missing", func(t *testing.T, f *fixture) { repotest.Remove(t, f.be, backend.IndexFile, f.index[2][0]) }},
		{"snapshot unreadable", func(t *testing.T, f *fixture) {
			repotest.Replace(t, f.be, backend.SnapshotFile, f.snaps["S3"], func(b []byte) []byte { return b[:len(b)-1] })
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.forget(t, "S1")
			tc.damage(t, f)
			before := repotest.Listing(t, f.be)
			r := repotest.Open(t, f.be, false)
			p, err := pruner.MakePlan(context.Background(), r, pruner.Options{Wait: time.Millisecond}, time.Now().Add(24*time.Hour))
			if !errors.Is(err, pruner.ErrNeedsRepair) {
				t.Fatalf("MakePlan = %v, %v; want an error wrapping ErrNeedsRepair", p, err)
			}
			if p != nil {
				t.Error("a plan returned with the error")
			}
			repotest.DiffListings(t, "refused prune", before, repotest.Listing(t, f.be))
		})
	}
}

// TestRescue: a backup that passed its commit check just before the prune
// rewrote the index writes its snapshot during the prune's wait. The pack
// holding a blob it refers to was to be deleted; the prune keeps it.
func TestRescue(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.forget(t, "S1", "S2")
	backup := repotest.Open(t, f.be, true) // loaded the index before the prune
	r := repotest.Open(t, f.be, false)
	oldIndex := repotest.Files(t, f.be, backend.IndexFile)

	var (
		hooked   bool
		snapID   repo.ID
		checkErr error
	)
	opts := pruner.Options{MaxUnused: 10, Wait: 200 * time.Millisecond}
	opts.Progress = func(s string) {
		if !strings.HasPrefix(s, "waiting") || hooked {
			return
		}
		hooked = true
		// The prune's index is stored, nothing is deleted yet.
		newIndex := 0
		for id := range repotest.Files(t, f.be, backend.IndexFile) {
			if _, ok := oldIndex[id]; !ok {
				newIndex++
			}
		}
		if newIndex != 1 || !repotest.Exists(t, f.be, backend.PackFile, f.packs["D1"]) {
			t.Errorf("during the wait: %d new index files, D1 stored %v; want 1, true", newIndex, repotest.Exists(t, f.be, backend.PackFile, f.packs["D1"]))
		}
		// a1 lives only in D1, which the plan deletes.
		tree := repotest.SaveTree(t, backup, repotest.FileNode("again", len(f.data["a1"]), f.blobs["a1"]))
		repotest.Flush(t, backup)
		checkErr = backup.CheckCommit(ctx, tree)
		sn := &snapshot.Snapshot{Time: time.Now(), Tree: tree, Paths: []string{"/src"}, Hostname: "test"}
		var err error
		if snapID, err = backup.SaveSnapshot(ctx, sn); err != nil {
			t.Error(err)
		}
	}
	p, err := pruner.MakePlan(ctx, r, opts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(packIDs(p.Delete), f.packs["D1"]) {
		t.Fatal("plan does not delete D1")
	}
	res, err := pruner.Execute(ctx, r, p, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !hooked {
		t.Fatal("Execute never reported its wait: the concurrent backup did not run")
	}
	// The check made after the index changed must refuse the commit.
	if !errors.Is(checkErr, repository.ErrPrunedMeanwhile) {
		t.Errorf("CheckCommit after the prune's index was written = %v, want ErrPrunedMeanwhile", checkErr)
	}
	if !slices.Equal(res.Rescued, []repo.ID{f.packs["D1"]}) {
		t.Errorf("Rescued = %v, want [D1]", names(f.packs, res.Rescued))
	}
	if !repotest.Exists(t, f.be, backend.PackFile, f.packs["D1"]) {
		t.Fatal("rescued pack D1 deleted")
	}
	for _, n := range []string{"TP1", "TP2", "D2"} {
		if repotest.Exists(t, f.be, backend.PackFile, f.packs[n]) {
			t.Errorf("pack %s not deleted", n)
		}
	}
	r2 := repotest.Open(t, f.be, true)
	if !r2.Index().HasPack(f.packs["D1"]) {
		t.Error("no index names the rescued pack")
	}
	if n := verifySnapshot(t, r2, snapID); n != 2 {
		t.Errorf("walked %d blobs of the snapshot written meanwhile, want 2", n)
	}
	verifySnapshot(t, r2, f.snaps["S3"])
	// The next prune sees a healthy repository.
	if _, err := pruner.MakePlan(ctx, repotest.Open(t, f.be, false), opts, time.Now()); err != nil {
		t.Errorf("plan after the rescue: %v", err)
	}
}

func TestCheckCommit(t *testing.T) {
	tests := []struct {
		name     string
		prune    bool
		ref      string // data blob the new tree refers to
		preFlush bool   // the backup's tree is flushed before the prune plans
		want     error
	}{
		{name: "no prune", prune: false, ref: "a1", want: nil},
		{name: "pruned blob", prune: true, ref: "a1", want: repository.ErrPrunedMeanwhile},
		{name: "blob kept by the prune", prune: true, ref: "c1", want: nil},
		{name: "own pack pruned", prune: true, ref: "c1", preFlush: true, want: repository.ErrPrunedMeanwhile},
	}
	for _, tc := range tests {
		for _, via := range []string{"CheckCommit", "CommitSnapshot"} {
			t.Run(tc.name+"/"+via, func(t *testing.T) {
				ctx := context.Background()
				f := newFixture(t)
				f.forget(t, "S1", "S2")
				backup := repotest.Open(t, f.be, true) // loads the index before any prune
				var tree repo.ID
				mkTree := func() {
					tree = repotest.SaveTree(t, backup, repotest.FileNode("x", 1, f.blobs[tc.ref]), repotest.FileNode("new", 5000, repotest.SaveData(t, backup, repotest.RandBytes(55, 5000))))
					repotest.Flush(t, backup)
				}
				if tc.preFlush {
					mkTree()
				}
				if tc.prune {
					r := repotest.Open(t, f.be, false)
					opts := pruner.Options{Wait: time.Millisecond}
					p, err := pruner.MakePlan(ctx, r, opts, time.Now())
					if err != nil {
						t.Fatal(err)
					}
					if _, err := pruner.Execute(ctx, r, p, opts); err != nil {
						t.Fatal(err)
					}
					if repotest.Exists(t, f.be, backend.PackFile, f.packs["D1"]) {
						t.Fatal("prune kept D1")
					}
				}
				if !tc.preFlush {
					mkTree()
				}
				if via == "CheckCommit" {
					err := backup.CheckCommit(ctx, tree)
					if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
						t.Fatalf("CheckCommit = %v, want %v", err, tc.want)
					}
					return
				}
				// CommitSnapshot applies the same check behind the lock check.
				lock, err := backup.Lock(ctx, false)
				if err != nil {
					t.Fatal(err)
				}
				defer lock.Unlock(ctx)
				snaps := len(repotest.Files(t, f.be, backend.SnapshotFile))
				id, err := backup.CommitSnapshot(ctx, lock, &snapshot.Snapshot{Time: time.Now(), Tree: tree, Paths: []string{"/src"}, Hostname: "test"})
				if tc.want != nil {
					if !errors.Is(err, tc.want) || len(repotest.Files(t, f.be, backend.SnapshotFile)) != snaps {
						t.Fatalf("CommitSnapshot = %v (snapshots %d -> %d), want %v and nothing written", err, snaps, len(repotest.Files(t, f.be, backend.SnapshotFile)), tc.want)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				verifySnapshot(t, repotest.Open(t, f.be, true), id)
			})
		}
	}
}

// TestCommitCheckAfterIndexRewriteBeforeDeletion: a backup whose own index
// file the prune read and superseded (its packs are unused, so doomed)
// checks its commit after the prune's index is written, just before the
// deletions, and then writes its snapshot within CommitWindow. The check
// must refuse, or the snapshot's data must survive.
func TestCommitCheckAfterIndexRewriteBeforeDeletion(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	fb := fault.New(f.be)
	backup := repotest.Open(t, f.be, true)
	newData := repotest.RandBytes(77, 5000)
	tree := repotest.SaveTree(t, backup, repotest.FileNode("new", len(newData), repotest.SaveData(t, backup, newData)))
	repotest.Flush(t, backup) // the backup's index file, read by the prune below
	ownPack := repotest.PackOf(t, backup, repo.TreeBlob, tree)

	r, err := repository.Open(ctx, fb, []byte(repotest.Password), repotest.Options)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	opts := pruner.Options{Wait: time.Millisecond}
	p, err := pruner.MakePlan(ctx, r, opts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(packIDs(p.Delete), ownPack) {
		t.Fatal("the plan does not delete the backup's unreferenced tree pack")
	}
	var once sync.Once
	var checkErr error
	var snapID repo.ID
	fb.SetRules(fault.Rules{BeforeRemove: func(h backend.Handle) error {
		once.Do(func() { // every removal waits for this
			checkErr = backup.CheckCommit(ctx, tree)
			if checkErr == nil {
				snapID, _ = backup.SaveSnapshot(ctx, &snapshot.Snapshot{Time: time.Now(), Tree: tree, Paths: []string{"/src"}, Hostname: "test"})
			}
		})
		return nil
	}})
	if _, err := pruner.Execute(ctx, r, p, opts); err != nil {
		t.Fatal(err)
	}
	if checkErr != nil {
		if !errors.Is(checkErr, repository.ErrPrunedMeanwhile) {
			t.Fatalf("CheckCommit = %v, want ErrPrunedMeanwhile", checkErr)
		}
		return
	}
	if snapID.IsNull() {
		t.Fatal("snapshot not saved")
	}
	if !repotest.Exists(t, f.be, backend.PackFile, ownPack) {
		t.Errorf("CheckCommit passed after the prune wrote its index (the backup's own packs were still stored, "+
			"but no live index named them), the snapshot was committed, and the prune then deleted its pack %s: "+
			"the snapshot refers to deleted data", ownPack.Short())
	}
}

// TestRescanStorageError: while the prune looks at a snapshot written
// meanwhile, a tree of it cannot be loaded because the storage failed. The
// blobs below that tree may live only in packs the plan deletes: the prune
// must stop before deleting anything, or keep them.
func TestRescanStorageError(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.forget(t, "S1", "S2")
	backup := repotest.Open(t, f.be, true)
	fb := fault.New(f.be)
	r, err := repository.Open(ctx, fb, []byte(repotest.Password), repotest.Options)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var snapID repo.ID
	opts := pruner.Options{Wait: time.Millisecond}
	opts.Progress = func(s string) {
		if !strings.HasPrefix(s, "waiting") || !snapID.IsNull() {
			return
		}
		// A backup that checked its commit before the index changed: its
		// new root refers to T1 (in TP1, doomed), which holds a1 and a2 (in
		// D1, doomed).
		root := repotest.SaveTree(t, backup, repotest.DirNode("old", f.blobs["T1"]))
		repotest.Flush(t, backup)
		snapID, err = backup.SaveSnapshot(ctx, &snapshot.Snapshot{Time: time.Now(), Tree: root, Paths: []string{"/src"}, Hostname: "test"})
		if err != nil {
			t.Error(err)
		}
		fb.SetRules(fault.Rules{FailLoad: fault.Select{Match: fault.Is(backend.Handle{Type: backend.PackFile, Name: f.packs["TP1"].String()})}})
	}
	p, err := pruner.MakePlan(ctx, r, opts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	res, err := pruner.Execute(ctx, r, p, opts)
	if snapID.IsNull() {
		t.Fatal("the concurrent snapshot was not written")
	}
	if err != nil {
		for _, n := range []string{"D1", "TP1"} {
			if !repotest.Exists(t, f.be, backend.PackFile, f.packs[n]) {
				t.Errorf("Execute failed (%v) but deleted %s", err, n)
			}
		}
		return
	}
	lost := []string{}
	for _, n := range []string{"D1", "TP1"} {
		if !repotest.Exists(t, f.be, backend.PackFile, f.packs[n]) {
			lost = append(lost, n)
		}
	}
	if len(lost) > 0 {
		t.Errorf("a read error while rescanning the snapshot written meanwhile was ignored: the prune succeeded "+
			"(rescued %v) and deleted %v, which that snapshot needs", names(f.packs, res.Rescued), lost)
	}
}

func TestLockLostStopsExecute(t *testing.T) {
	tests := []struct {
		name string
		// duringWait: the lock is lost after the new index is written.
		duringWait bool
	}{
		{"before the index is written", false},
		{"during the wait", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t)
			f.forget(t, "S1", "S2")
			r := repotest.Open(t, f.be, false)
			lock, err := r.Lock(ctx, true)
			if err != nil {
				t.Fatal(err)
			}
			defer lock.Unlock(ctx)
			loseLock := func() { repotest.Remove(t, f.be, backend.LockFile, lock.ID()) }
			opts := pruner.Options{MaxUnused: 10, Wait: 10 * time.Millisecond, Lock: lock}
			if tc.duringWait {
				opts.Progress = func(s string) {
					if strings.HasPrefix(s, "waiting") {
						loseLock()
					}
				}
			}
			p, err := pruner.MakePlan(ctx, r, opts, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if !tc.duringWait {
				loseLock()
			}
			_, err = pruner.Execute(ctx, r, p, opts)
			if !errors.Is(err, repository.ErrLockLost) {
				t.Fatalf("Execute = %v, want ErrLockLost", err)
			}
			for n, id := range f.packs {
				if !repotest.Exists(t, f.be, backend.PackFile, id) {
					t.Errorf("pack %s deleted after the lock was lost", n)
				}
			}
			index := repotest.Files(t, f.be, backend.IndexFile)
			for _, id := range f.allIndexFiles() {
				if _, ok := index[id]; !ok {
					t.Errorf("index file %s deleted after the lock was lost", id.Short())
				}
			}
			if want := 3 + map[bool]int{false: 0, true: 1}[tc.duringWait]; len(index) != want {
				t.Errorf("%d index files, want %d", len(index), want)
			}
			verifySnapshot(t, repotest.Open(t, f.be, true), f.snaps["S3"])
		})
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		opts pruner.Options
		ok   bool
	}{
		{pruner.Options{MaxUnused: -1}, false},
		{pruner.Options{MaxUnused: -0.001}, false},
		{pruner.Options{MaxUnused: 100.001}, false},
		{pruner.Options{MaxUnused: 101}, false},
		{pruner.Options{MaxUnused: 0}, true},
		{pruner.Options{MaxUnused: 20}, true},
		{pruner.Options{MaxUnused: 100}, true},
		{pruner.Options{UnindexedGrace: -time.Second}, false},
		{pruner.Options{Wait: -time.Second}, false},
		{pruner.Options{UnindexedGrace: time.Hour, Wait: time.Second}, true},
	}
	for _, tc := range tests {
		err := tc.opts.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("Validate(%+v) = %v, want ok=%v", tc.opts, err, tc.ok)
		}
	}
}
