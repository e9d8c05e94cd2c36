package repair_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"bunker/internal/backend"
	"bunker/internal/backend/fault"
	"bunker/internal/backend/mem"
	"bunker/internal/checker"
	"bunker/internal/repair"
	"bunker/internal/repo"
	"bunker/internal/repo/pack"
	"bunker/internal/repo/repository"
	"bunker/internal/repo/repotest"
	"bunker/internal/snapshot"
)

// --- Helpers ----------------------------------------------------------------

// ids lists the stored files of one type, sorted.
func ids(t testing.TB, be backend.Backend, ft backend.FileType) []repo.ID {
	t.Helper()
	return sortedIDs(slices.Collect(maps.Keys(repotest.Files(t, be, ft))))
}

func sortedIDs(l []repo.ID) []repo.ID {
	out := slices.Clone(l)
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// indexContents maps every pack of the loaded index to its blobs, by offset.
func indexContents(r *repository.Repository) map[repo.ID][]pack.Blob {
	m := r.Index().Packs()
	for _, l := range m {
		sort.Slice(l, func(i, j int) bool { return l[i].Offset < l[j].Offset })
	}
	return m
}

// tree walks a snapshot tree and returns every node by absolute path.
func walk(t testing.TB, r *repository.Repository, id repo.ID, dir string, out map[string]*snapshot.Node) map[string]*snapshot.Node {
	t.Helper()
	if out == nil {
		out = map[string]*snapshot.Node{}
	}
	for _, n := range repotest.LoadTree(t, r, id).Nodes {
		p := path.Join(dir, n.Name)
		out[p] = n
		if n.Type == snapshot.TypeDir {
			walk(t, r, n.Subtree, p, out)
		}
	}
	return out
}

func keys(m map[string]*snapshot.Node) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// --- Fixture ----------------------------------------------------------------

// fixture is a repository written in three flushes:
//
//	stage 1: data pack P1  {keep}
//	stage 2: data pack P2d {lost x}, tree pack P2t {treeB rootGone}
//	stage 3: tree pack P3t {treeA root rootOK}
//
// and three snapshots:
//
//	S      /a/keep (keep) /a/lost (lost) /b/x (x)      root in P3t, /b's tree in P2t
//	Sok    /keep (keep)                                nothing in stage 2
//	Sgone  /x (x)                                      root tree in P2t
type fixture struct {
	be    *mem.Backend
	data  map[string][]byte
	blobs map[string]repo.ID
	snaps map[string]repo.ID
	packs map[string]repo.ID
	sizes map[string]int
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{be: mem.New(), data: map[string][]byte{}, blobs: map[string]repo.ID{}, snaps: map[string]repo.ID{},
		packs: map[string]repo.ID{}, sizes: map[string]int{"keep": 5000, "lost": 6000, "x": 7000}}
	r, err := repository.Create(ctx, f.be, []byte(repotest.Password), repotest.Options)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	seed := uint64(10)
	file := func(name, as string) *snapshot.Node {
		if _, ok := f.blobs[name]; !ok {
			f.data[name] = repotest.RandBytes(seed, f.sizes[name])
			seed++
			f.blobs[name] = repotest.SaveData(t, r, f.data[name])
		}
		return repotest.FileNode(as, f.sizes[name], f.blobs[name])
	}
	file("keep", "keep")
	repotest.Flush(t, r)
	f.blobs["treeB"] = repotest.SaveTree(t, r, file("x", "x"))
	file("lost", "lost")
	f.blobs["rootGone"] = repotest.SaveTree(t, r, file("x", "x"), repotest.FileNode("empty", 0))
	repotest.Flush(t, r)
	f.blobs["treeA"] = repotest.SaveTree(t, r, file("keep", "keep"), file("lost", "lost"))
	f.blobs["root"] = repotest.SaveTree(t, r, repotest.DirNode("a", f.blobs["treeA"]), repotest.DirNode("b", f.blobs["treeB"]))
	f.blobs["rootOK"] = repotest.SaveTree(t, r, file("keep", "keep"))
	repotest.Flush(t, r)
	for i, s := range []string{"S", "Sok", "Sgone"} {
		root := map[string]string{"S": "root", "Sok": "rootOK", "Sgone": "rootGone"}[s]
		sn := &snapshot.Snapshot{Time: repotest.BaseTime.Add(time.Duration(i) * time.Hour), Tree: f.blobs[root], Paths: []string{"/src"},
			Hostname: "host", Tags: []string{"t1"}}
		if f.snaps[s], err = r.SaveSnapshot(ctx, sn); err != nil {
			t.Fatal(err)
		}
	}
	f.packs["P1"] = repotest.PackOf(t, r, repo.DataBlob, f.blobs["keep"])
	f.packs["P2d"] = repotest.PackOf(t, r, repo.DataBlob, f.blobs["lost"])
	f.packs["P2t"] = repotest.PackOf(t, r, repo.TreeBlob, f.blobs["treeB"])
	f.packs["P3t"] = repotest.PackOf(t, r, repo.TreeBlob, f.blobs["root"])
	check := map[string][2]any{"x": {repo.DataBlob, "P2d"}, "rootGone": {repo.TreeBlob, "P2t"},
		"treeA": {repo.TreeBlob, "P3t"}, "rootOK": {repo.TreeBlob, "P3t"}}
	for name, c := range check {
		if repotest.PackOf(t, r, c[0].(repo.BlobType), f.blobs[name]) != f.packs[c[1].(string)] {
			t.Fatalf("blob %s is not in pack %s", name, c[1])
		}
	}
	if n := len(ids(t, f.be, backend.PackFile)); n != 4 {
		t.Fatalf("fixture has %d packs, want 4", n)
	}
	return f
}

// --- RebuildIndex -------------------------------------------------------------

func TestRebuildIndex(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, f *fixture, index []repo.ID)
		// superseded: index files present when the rebuild runs.
		superseded int
	}{
		{"all index files removed", func(t *testing.T, f *fixture, index []repo.ID) {
			for _, id := range index {
				repotest.Remove(t, f.be, backend.IndexFile, id)
			}
		}, 0},
		{"index files intact", func(*testing.T, *fixture, []repo.ID) {}, 3},
		{"one index file garbage", func(t *testing.T, f *fixture, index []repo.ID) {
			repotest.Replace(t, f.be, backend.IndexFile, index[1], func(b []byte) []byte { return repotest.RandBytes(3, len(b)) })
		}, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t)
			want := indexContents(repotest.Open(t, f.be, true))
			wantBlobs := 0
			for _, l := range want {
				wantBlobs += len(l)
			}
			if len(want) != 4 || wantBlobs != 8 {
				t.Fatalf("original index: %d packs, %d blobs; want 4 and 8", len(want), wantBlobs)
			}
			oldIndex := ids(t, f.be, backend.IndexFile)
			tc.damage(t, f, oldIndex)
			present := ids(t, f.be, backend.IndexFile)

			// Dry run: the same report, nothing written.
			before := repotest.Listing(t, f.be)
			res, err := repair.RebuildIndex(ctx, repotest.Open(t, f.be, false), true)
			if err != nil {
				t.Fatal(err)
			}
			repotest.DiffListings(t, "dry run", before, repotest.Listing(t, f.be))
			if res.Packs != 4 || res.Blobs != 8 || res.LostBlobs != 0 || len(res.Damaged) != 0 || res.Superseded != tc.superseded || res.NewIndex != "" {
				t.Errorf("dry run result %+v", res)
			}

			res, err = repair.RebuildIndex(ctx, repotest.Open(t, f.be, false), false)
			if err != nil {
				t.Fatal(err)
			}
			if res.Packs != 4 || res.Blobs != 8 || res.LostBlobs != 0 || len(res.Damaged) != 0 || res.Superseded != tc.superseded {
				t.Errorf("result %+v", res)
			}
			after := ids(t, f.be, backend.IndexFile)
			if len(after) != 1 || after[0].String() != res.NewIndex {
				t.Fatalf("index files after the rebuild: %v, want only %s", after, res.NewIndex)
			}
			r := repotest.Open(t, f.be, true)
			nf, err := r.LoadIndexFile(ctx, after[0])
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(sortedIDs(nf.Supersedes), present) {
				t.Errorf("new index supersedes %v, want %v", nf.Supersedes, present)
			}
			got := indexContents(r)
			if len(got) != len(want) {
				t.Errorf("rebuilt index names %d packs, want %d", len(got), len(want))
			}
			for id, blobs := range want {
				if !slices.Equal(got[id], blobs) {
					t.Errorf("pack %s: rebuilt index lists %v, want %v", id.Short(), got[id], blobs)
				}
			}
			for _, s := range []string{"keep", "lost", "x"} {
				data, err := r.LoadBlob(ctx, repo.DataBlob, f.blobs[s])
				if err != nil || string(data) != string(f.data[s]) {
					t.Errorf("blob %s after the rebuild: %v", s, err)
				}
			}
		})
	}
}

// TestRebuildIndexDamagedHeader: a pack whose own header is damaged is
// reported and left out of the index, after the intact blobs the old index
// files placed in it are copied to a new pack, so that they stay reachable
// and check passes (a dry run counts them as indexed). With no old entries
// for it, its blobs count as lost.
func TestRebuildIndexDamagedHeader(t *testing.T) {
	for _, oldIndexReadable := range []bool{true, false} {
		t.Run(fmt.Sprintf("old index readable %v", oldIndexReadable), func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t)
			// The last four bytes are the header's length; just before them
			// lies the sealed header's authentication tag.
			repotest.Replace(t, f.be, backend.PackFile, f.packs["P2d"], func(b []byte) []byte { b[len(b)-10] ^= 0x40; return b })
			oldIndex := ids(t, f.be, backend.IndexFile)
			if !oldIndexReadable {
				for _, id := range oldIndex {
					repotest.Remove(t, f.be, backend.IndexFile, id)
				}
			}
			for _, dryRun := range []bool{true, false} {
				before := repotest.Listing(t, f.be)
				res, err := repair.RebuildIndex(ctx, repotest.Open(t, f.be, false), dryRun)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(res.Damaged, []string{f.packs["P2d"].String()}) {
					t.Errorf("dry run %v: Damaged = %v, want [P2d %s]", dryRun, res.Damaged, f.packs["P2d"].Short())
				}
				// The three other packs, and P2d's two blobs: in P2d in a
				// dry run, in a new pack after the salvage.
				wantLost, wantPacks, wantBlobs, wantFrom, wantSalvaged := 0, 4, 8, []string{f.packs["P2d"].String()}, 2
				if dryRun {
					wantSalvaged = 0
				}
				if !oldIndexReadable {
					// lost and x were only in P2d.
					wantLost, wantPacks, wantBlobs, wantFrom, wantSalvaged = 0, 3, 6, nil, 0
				}
				if res.LostBlobs != wantLost || res.Packs != wantPacks || res.Blobs != wantBlobs || !slices.Equal(res.Salvaged, wantFrom) || res.SalvagedBlobs != wantSalvaged {
					t.Errorf("dry run %v: result %+v; want %d lost blobs, %d packs, %d blobs, salvaged %v (%d blobs)", dryRun, res, wantLost, wantPacks, wantBlobs, wantFrom, wantSalvaged)
				}
				if dryRun {
					repotest.DiffListings(t, "dry run", before, repotest.Listing(t, f.be))
				}
			}
			if !repotest.Exists(t, f.be, backend.PackFile, f.packs["P2d"]) {
				t.Error("the damaged pack was removed; it must be left for inspection")
			}
			for _, id := range oldIndex {
				if repotest.Exists(t, f.be, backend.IndexFile, id) {
					t.Errorf("superseded index file %s not removed", id.Short())
				}
			}
			r := repotest.Open(t, f.be, true)
			if r.Index().HasPack(f.packs["P2d"]) {
				t.Error("the damaged pack is still indexed")
			}
			for name, want := range map[string]bool{"keep": true, "lost": oldIndexReadable, "x": oldIndexReadable} {
				if got := r.HasBlob(repo.BlobHandle{Type: repo.DataBlob, ID: f.blobs[name]}); got != want {
					t.Errorf("blob %s indexed: %v, want %v", name, got, want)
				}
			}
			if oldIndexReadable {
				// The blobs of the damaged pack load and verify, from
				// their new pack.
				for _, name := range []string{"lost", "x"} {
					if data, err := r.LoadBlob(ctx, repo.DataBlob, f.blobs[name]); err != nil || string(data) != string(f.data[name]) {
						t.Errorf("blob %s of the pack with a damaged header: %v", name, err)
					}
				}
			}
		})
	}
}

// TestRebuildIndexStorageError: a pack whose header cannot be loaded because
// the storage failed (not because the header is damaged) must not be dropped
// from the index: the rebuild has to stop, or keep it.
func TestRebuildIndexStorageError(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	fb := fault.New(f.be)
	victim := f.packs["P1"]
	fb.SetRules(fault.Rules{FailLoad: fault.Select{Match: fault.Is(backend.Handle{Type: backend.PackFile, Name: victim.String()})}})
	r, err := repository.Open(ctx, fb, []byte(repotest.Password), repotest.Options)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	res, err := repair.RebuildIndex(ctx, r, false)
	if err != nil {
		if !errors.Is(err, fault.ErrInjected) {
			t.Errorf("RebuildIndex = %v, want the storage error", err)
		}
		return
	}
	if !repotest.Open(t, f.be, true).Index().HasPack(victim) {
		t.Errorf("a transient read error dropped the intact pack %s from the index (reported as damaged: %v) "+
			"and the index files naming it were removed: the next prune deletes it as unindexed", victim.Short(), res.Damaged)
	}
}

// --- Snapshots ----------------------------------------------------------------

// breakFixture deletes the stage-2 packs, rebuilds the index and returns a
// handle with the new index loaded.
func breakFixture(t testing.TB, f *fixture) *repository.Repository {
	t.Helper()
	repotest.Remove(t, f.be, backend.PackFile, f.packs["P2d"])
	repotest.Remove(t, f.be, backend.PackFile, f.packs["P2t"])
	res, err := repair.RebuildIndex(context.Background(), repotest.Open(t, f.be, false), false)
	if err != nil {
		t.Fatal(err)
	}
	// lost, x, treeB, rootGone
	if res.LostBlobs != 4 || res.Packs != 2 {
		t.Fatalf("rebuild after losing P2d and P2t: %+v; want 4 lost blobs, 2 packs", res)
	}
	return repotest.Open(t, f.be, true)
}

func resultsByID(res []repair.SnapshotResult) map[string]repair.SnapshotResult {
	m := map[string]repair.SnapshotResult{}
	for _, r := range res {
		m[r.ID] = r
	}
	return m
}

func TestSnapshots(t *testing.T) {
	tests := []struct {
		name           string
		dryRun, forget bool
	}{
		{"dry run", true, false},
		{"dry run with forget", true, true},
		{"rewrite", false, false},
		{"rewrite and forget", false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t)
			r := breakFixture(t, f)
			before := repotest.Listing(t, f.be)
			out, err := repair.Snapshots(ctx, r, tc.dryRun, tc.forget)
			if err != nil {
				t.Fatal(err)
			}
			byID := resultsByID(out)
			s, ok := byID[f.snaps["S"].String()]
			if !ok {
				t.Fatalf("S not reported: %+v", out)
			}
			if !slices.Equal(s.Lost, []string{"/a/lost", "/b"}) || s.RootLost {
				t.Errorf("S: lost %q (root lost %v), want [/a/lost /b]", s.Lost, s.RootLost)
			}
			g, ok := byID[f.snaps["Sgone"].String()]
			if !ok || !g.RootLost || !slices.Equal(g.Lost, []string{"/"}) || g.New != "" {
				t.Errorf("Sgone: %+v (reported %v), want root lost, lost [/], not rewritten", g, ok)
			}

			if tc.dryRun {
				repotest.DiffListings(t, "dry run", before, repotest.Listing(t, f.be))
				for _, res := range out {
					if res.New != "" || res.Removed {
						t.Errorf("dry run reports a write: %+v", res)
					}
				}
				return
			}

			// The originals stay unless forget.
			for _, name := range []string{"S", "Sgone"} {
				res := byID[f.snaps[name].String()]
				if got := repotest.Exists(t, f.be, backend.SnapshotFile, f.snaps[name]); got == tc.forget || res.Removed != tc.forget {
					t.Errorf("%s: stored %v, Removed %v; forget %v", name, got, res.Removed, tc.forget)
				}
			}
			if !repotest.Exists(t, f.be, backend.SnapshotFile, f.snaps["Sok"]) {
				t.Error("Sok, which lost nothing, was removed")
			}

			newID, err := repo.ParseID(s.New)
			if err != nil {
				t.Fatalf("S not rewritten: New = %q", s.New)
			}
			r2 := repotest.Open(t, f.be, true)
			ns, err := r2.LoadSnapshot(ctx, newID)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ns.Tags, []string{"t1", repair.RepairedTag}) || !ns.Time.Equal(repotest.BaseTime) || ns.Hostname != "host" || !slices.Equal(ns.Paths, []string{"/src"}) {
				t.Errorf("rewritten snapshot %+v: want the original's time, host and paths, tags [t1 repaired]", ns)
			}
			nodes := walk(t, r2, ns.Tree, "/", nil)
			if got := keys(nodes); !slices.Equal(got, []string{"/a", "/a/keep"}) {
				t.Errorf("rewritten tree holds %v, want [/a /a/keep]", got)
			}
			if n := nodes["/a/keep"]; n == nil || !slices.Equal(n.Content, []repo.ID{f.blobs["keep"]}) || n.Size != uint64(f.sizes["keep"]) || !n.ModTime.Equal(repotest.BaseTime) {
				t.Errorf("/a/keep: %+v", n)
			} else if data, err := r2.LoadBlob(ctx, repo.DataBlob, n.Content[0]); err != nil || string(data) != string(f.data["keep"]) {
				t.Errorf("/a/keep content: %v", err)
			}
			// Every blob of the rewritten snapshot is indexed and loads.
			err = r2.WalkTree(ctx, ns.Tree, map[repo.ID]bool{}, func(h repo.BlobHandle, err error) error {
				if err == nil {
					_, err = r2.LoadBlob(ctx, h.Type, h.ID)
				}
				if err != nil {
					t.Errorf("rewritten snapshot: %v", err)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestSnapshotsLeavesWholeSnapshotsAlone: a snapshot that refers to nothing
// lost is neither reported nor rewritten (nor removed with forget).
func TestSnapshotsLeavesWholeSnapshotsAlone(t *testing.T) {
	for _, forget := range []bool{false, true} {
		ctx := context.Background()
		f := newFixture(t)
		r := breakFixture(t, f)
		snapsBefore := ids(t, f.be, backend.SnapshotFile)
		out, err := repair.Snapshots(ctx, r, false, forget)
		if err != nil {
			t.Fatal(err)
		}
		if res, ok := resultsByID(out)[f.snaps["Sok"].String()]; ok {
			t.Errorf("forget %v: a whole snapshot was reported as repaired: %+v", forget, res)
		}
		if !repotest.Exists(t, f.be, backend.SnapshotFile, f.snaps["Sok"]) {
			t.Errorf("forget %v: a whole snapshot was removed", forget)
		}
		// S rewritten (+1), Sgone not (root lost); with forget both go (-2).
		want := len(snapsBefore) + 1
		if forget {
			want -= 2
		}
		if got := len(ids(t, f.be, backend.SnapshotFile)); got != want {
			t.Errorf("forget %v: %d snapshots after the repair, want %d", forget, got, want)
		}
	}

	// Nothing lost at all: nothing to do.
	f := newFixture(t)
	before := repotest.Listing(t, f.be)
	out, err := repair.Snapshots(context.Background(), repotest.Open(t, f.be, true), false, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 0 {
		t.Errorf("repair of an intact repository reports %d snapshots: %+v", len(out), out)
	}
	repotest.DiffListings(t, "repair of an intact repository", before, repotest.Listing(t, f.be))
}

// TestSnapshotsStorageError: a tree that cannot be loaded because the
// storage failed is not lost. Repairing around it would drop a whole
// directory (or, for a root tree, with forget, the whole snapshot) for good;
// the repair has to stop and change nothing.
func TestSnapshotsStorageError(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t) // nothing lost
	fb := fault.New(f.be)
	fb.SetRules(fault.Rules{FailLoad: fault.Select{Match: fault.Is(backend.Handle{Type: backend.PackFile, Name: f.packs["P2t"].String()})}})
	r, err := repository.Open(ctx, fb, []byte(repotest.Password), repotest.Options)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	before := repotest.Listing(t, f.be)
	out, err := repair.Snapshots(ctx, r, false, true)
	if err == nil {
		t.Errorf("Snapshots with an unreadable (not lost) tree pack succeeded: %+v", out)
	}
	repotest.DiffListings(t, "repair during a storage failure", before, repotest.Listing(t, f.be))
}

// TestRebuildIndexTruncatedPack: a pack cut short (RELIABILITY B2) loses
// its header; the blobs the old index placed before the cut are salvaged
// to a new pack, those after it are lost, and after repair index and
// repair snapshots --forget the repository checks clean, data included.
func TestRebuildIndexTruncatedPack(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	old := repotest.Open(t, f.be, true)
	first, second := f.blobs["lost"], f.blobs["x"]
	l1, ok1 := old.LookupBlob(repo.BlobHandle{Type: repo.DataBlob, ID: first})
	l2, ok2 := old.LookupBlob(repo.BlobHandle{Type: repo.DataBlob, ID: second})
	if !ok1 || !ok2 || l1.Pack != f.packs["P2d"] || l2.Pack != l1.Pack {
		t.Fatalf("fixture: blobs lost and x are not both in P2d: %+v %+v", l1, l2)
	}
	if l2.Offset < l1.Offset {
		first, second, l1, l2 = second, first, l2, l1
	}
	cut := int(l2.Offset) + 1 // the first blob whole, the second cut
	repotest.Replace(t, f.be, backend.PackFile, f.packs["P2d"], func(b []byte) []byte { return b[:cut] })

	res, err := repair.RebuildIndex(ctx, repotest.Open(t, f.be, false), false)
	if err != nil {
		t.Fatal(err)
	}
	if res.SalvagedBlobs != 1 || res.LostBlobs != 1 || !slices.Equal(res.Damaged, []string{f.packs["P2d"].String()}) {
		t.Errorf("result %+v: want P2d damaged, 1 blob salvaged and 1 lost", res)
	}
	r := repotest.Open(t, f.be, true)
	if _, err := r.LoadBlob(ctx, repo.DataBlob, first); err != nil {
		t.Errorf("the blob before the cut: %v", err)
	}
	if r.HasBlob(repo.BlobHandle{Type: repo.DataBlob, ID: second}) {
		t.Error("the blob past the cut is still indexed")
	}
	if _, err := repair.Snapshots(ctx, r, false, true); err != nil {
		t.Fatal(err)
	}
	cres, err := checker.Check(ctx, repotest.Open(t, f.be, false), checker.Options{ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range cres.Problems {
		t.Errorf("check --read-data after the repair: %v", p)
	}
}

// TestSnapshotsTwice: repair snapshots, then repair snapshots --forget (the
// runbook's order) leaves one repaired copy of each snapshot, not two.
func TestSnapshotsTwice(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	r := breakFixture(t, f)
	first, err := repair.Snapshots(ctx, r, false, false)
	if err != nil {
		t.Fatal(err)
	}
	second, err := repair.Snapshots(ctx, repotest.Open(t, f.be, true), false, true)
	if err != nil {
		t.Fatal(err)
	}
	s1, s2 := resultsByID(first)[f.snaps["S"].String()], resultsByID(second)[f.snaps["S"].String()]
	if s1.New == "" || s2.New != s1.New || !s2.Removed {
		t.Errorf("first %+v, then %+v: want the same repaired copy, and the original removed", s1, s2)
	}
	snaps, _, err := repotest.Open(t, f.be, true).ReadableSnapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, sn := range snaps {
		if slices.Contains(sn.Tags, repair.RepairedTag) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d repaired snapshots, want 1", n)
	}
}

// flipBitInLost flips a bit in the middle of blob "lost" in pack P2d: its
// header stays intact.
func flipBitInLost(t *testing.T, f *fixture) {
	t.Helper()
	loc, ok := repotest.Open(t, f.be, true).LookupBlob(repo.BlobHandle{Type: repo.DataBlob, ID: f.blobs["lost"]})
	if !ok || loc.Pack != f.packs["P2d"] {
		t.Fatalf("fixture: blob lost not in P2d: %+v", loc)
	}
	repotest.Replace(t, f.be, backend.PackFile, f.packs["P2d"], func(b []byte) []byte {
		b[int(loc.Offset)+int(loc.Length)/2] ^= 0x08
		return b
	})
}

// TestRebuildIndexReadData: a flipped bit inside a blob of a pack whose
// header is intact. repair index alone keeps the damaged blob indexed
// (it reads headers only), so a later backup of the same data would
// deduplicate against it; with ReadData the pack is found, its other blob
// copied to a new pack, the damaged one left out, and after repair
// snapshots check --read-data is clean and the data can be stored again.
func TestRebuildIndexReadData(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	flipBitInLost(t, f)

	res, err := repair.RebuildIndex(ctx, repotest.Open(t, f.be, false), false)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.DamagedData) != 0 || res.PacksRead != 0 || res.LostBlobs != 0 {
		t.Errorf("without ReadData: %+v; want no pack read", res)
	}
	if !repotest.Open(t, f.be, true).HasBlob(repo.BlobHandle{Type: repo.DataBlob, ID: f.blobs["lost"]}) {
		t.Fatal("without ReadData the damaged blob should still be indexed (headers only)")
	}

	for _, dryRun := range []bool{true, false} {
		before := repotest.Listing(t, f.be)
		res, err = repair.RebuildIndex(ctx, repotest.Open(t, f.be, false), dryRun, repair.ReadData())
		if err != nil {
			t.Fatal(err)
		}
		// The dry run counts what the real run will do: 7 of the 8 blobs
		// indexed, the damaged one lost.
		wantSalvaged, wantRemoved := 1, []string{f.packs["P2d"].String()}
		if dryRun {
			wantSalvaged, wantRemoved = 0, nil
		}
		if !slices.Equal(res.DamagedData, []string{f.packs["P2d"].String()}) || res.BadBlobs != 1 || res.PacksRead != 4 ||
			res.SalvagedBlobs != wantSalvaged || res.LostBlobs != 1 || res.Blobs != 7 || len(res.Damaged) != 0 ||
			!slices.Equal(res.RemovedPacks, wantRemoved) {
			t.Errorf("dry run %v: %+v; want P2d damaged (1 bad blob of 4 packs read), 7 blobs indexed, %d salvaged, 1 lost, removed %v",
				dryRun, res, wantSalvaged, wantRemoved)
		}
		if dryRun {
			repotest.DiffListings(t, "dry run", before, repotest.Listing(t, f.be))
		}
	}
	r := repotest.Open(t, f.be, true)
	if r.Index().HasPack(f.packs["P2d"]) {
		t.Error("the damaged pack is still indexed")
	}
	if r.HasBlob(repo.BlobHandle{Type: repo.DataBlob, ID: f.blobs["lost"]}) {
		t.Error("the damaged blob is still indexed")
	}
	if data, err := r.LoadBlob(ctx, repo.DataBlob, f.blobs["x"]); err != nil || string(data) != string(f.data["x"]) {
		t.Errorf("the intact blob of the damaged pack: %v", err)
	}
	// Removed: left in place, a plain repair index (the runbook's first
	// step) would index its damaged blob again.
	if repotest.Exists(t, f.be, backend.PackFile, f.packs["P2d"]) {
		t.Error("the pack with the damaged blob is still stored")
	}
	if _, err := repair.RebuildIndex(ctx, repotest.Open(t, f.be, false), false); err != nil {
		t.Fatal(err)
	}
	r = repotest.Open(t, f.be, true)
	if r.HasBlob(repo.BlobHandle{Type: repo.DataBlob, ID: f.blobs["lost"]}) {
		t.Error("a plain repair index after the repair indexes the damaged blob again")
	}

	out, err := repair.Snapshots(ctx, r, false, true)
	if err != nil {
		t.Fatal(err)
	}
	if s := resultsByID(out)[f.snaps["S"].String()]; !slices.Equal(s.Lost, []string{"/a/lost"}) {
		t.Errorf("repair snapshots: S lost %q, want [/a/lost]", s.Lost)
	}
	cres, err := checker.Check(ctx, repotest.Open(t, f.be, false), checker.Options{ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range cres.Problems {
		t.Errorf("check --read-data after the repair: %v", p)
	}
	// The data is stored again, not deduplicated against the damaged copy.
	w := repotest.Open(t, f.be, true)
	if id := repotest.SaveData(t, w, f.data["lost"]); id != f.blobs["lost"] {
		t.Fatalf("saved under %s, want %s", id.Short(), f.blobs["lost"].Short())
	}
	repotest.Flush(t, w)
	if data, err := repotest.Open(t, f.be, true).LoadBlob(ctx, repo.DataBlob, f.blobs["lost"]); err != nil || string(data) != string(f.data["lost"]) {
		t.Errorf("the blob stored again: %v", err)
	}
}

// TestRebuildIndexReadDataStorageFails: the salvage reads a damaged pack a
// second time; if the storage cuts that read short, its intact blobs must
// not be taken for lost (and the pack removed): the repair stops, and
// nothing changes.
func TestRebuildIndexReadDataStorageFails(t *testing.T) {
	for _, loadErr := range []error{fmt.Errorf("read: %w", io.ErrUnexpectedEOF), fault.ErrInjected} {
		t.Run(loadErr.Error(), func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t)
			flipBitInLost(t, f)
			before := repotest.Listing(t, f.be)
			fb := fault.New(f.be)
			// Loads of P2d: its header's length and its header (from the
			// end), the whole pack (0+0), then the salvage's range.
			p2d := backend.Handle{Type: backend.PackFile, Name: f.packs["P2d"].String()}
			var loads []string
			fb.SetRules(fault.Rules{BeforeLoad: func(h backend.Handle, length int, offset int64) error {
				if h != p2d {
					return nil
				}
				loads = append(loads, fmt.Sprintf("%d+%d", offset, length))
				if len(loads) == 4 {
					return loadErr
				}
				return nil
			}})
			r, err := repository.Open(ctx, fb, []byte(repotest.Password), repotest.Options)
			if err != nil {
				t.Fatal(err)
			}
			res, err := repair.RebuildIndex(ctx, r, false, repair.ReadData())
			if len(loads) != 4 || loads[2] != "0+0" || loads[3] == "0+0" {
				t.Errorf("loads of P2d %q: want the header's two, the whole pack's (0+0), then the salvage's", loads)
			}
			if err == nil || !strings.Contains(err.Error(), "index unchanged, nothing removed") {
				t.Fatalf("repair with the salvage's read failing: %+v, %v; want an error saying the index is unchanged", res, err)
			}
			repotest.DiffListings(t, "failed repair", before, repotest.Listing(t, f.be))
		})
	}
}

// TestRebuildIndexReadDataRemoveRefused: the storage refuses to remove the
// damaged pack. The new index (without it) is stored already: the error
// says so and what it leaves, and the result is returned with it.
func TestRebuildIndexReadDataRemoveRefused(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	flipBitInLost(t, f)
	fb := fault.New(f.be)
	p2d := backend.Handle{Type: backend.PackFile, Name: f.packs["P2d"].String()}
	fb.SetRules(fault.Rules{BeforeRemove: func(h backend.Handle) error {
		if h == p2d {
			return fmt.Errorf("remove: %w", backend.ErrPermission)
		}
		return nil
	}})
	r, err := repository.Open(ctx, fb, []byte(repotest.Password), repotest.Options)
	if err != nil {
		t.Fatal(err)
	}
	res, err := repair.RebuildIndex(ctx, r, false, repair.ReadData())
	if err == nil || !strings.Contains(err.Error(), "remove damaged pack") || res == nil || res.NewIndex == "" || len(res.RemovedPacks) != 0 {
		t.Fatalf("repair with the removal refused: %+v, %v; want the result with the new index, and the removal's error", res, err)
	}
	if repotest.Open(t, f.be, true).HasBlob(repo.BlobHandle{Type: repo.DataBlob, ID: f.blobs["lost"]}) {
		t.Error("the damaged blob is indexed")
	}
}
