package reliability

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"bunker/internal/backend"
	"bunker/internal/backend/fault"
	"bunker/internal/backend/local"
	"bunker/internal/checker"
	"bunker/internal/repo"
	"bunker/internal/repo/crypto"
	"bunker/internal/repo/repository"
	"bunker/internal/snapshot"
)

func mustParseID(t testing.TB, s string) repo.ID {
	t.Helper()
	id, err := repo.ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// RELIABILITY B1: one flipped bit in a data pack. check --read-data finds it
// and names the pack, the blob, and exactly the files and snapshots that use
// the blob; a restore restores every other file identical, names the damaged
// files (exit 3) and does not leave them with wrong content.
func TestB1FlippedBitInDataPack(t *testing.T) {
	rng := rand.New(rand.NewPCG(0xb1, 1))
	tr := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	makeSource(t, src, 11, 6<<20)
	// One blob used by two files in the first snapshot, one in the second,
	// none in the third.
	dup := randomBytes(rng, 100<<10)
	writeFile(t, filepath.Join(src, "dup1"), dup)
	writeFile(t, filepath.Join(src, "a", "dup2"), dup)
	m1 := manifest(t, src)
	s1 := tr.backup(t, src)
	if err := os.Remove(filepath.Join(src, "a", "dup2")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(src, "other"), randomBytes(rng, 50<<10))
	s2 := tr.backup(t, src)
	if err := os.Remove(filepath.Join(src, "dup1")); err != nil {
		t.Fatal(err)
	}
	m3 := manifest(t, src)
	s3 := tr.backup(t, src)
	users := []string{s1, s2}
	sort.Strings(users)

	r := tr.open(t, repository.Options{})
	sn, err := r.LoadSnapshot(context.Background(), mustParseID(t, s1))
	if err != nil {
		t.Fatal(err)
	}
	node := findNode(t, r, sn.Tree, filepath.Join(src, "dup1"))
	if len(node.Content) != 1 {
		t.Fatalf("dup1 has %d blobs, want 1", len(node.Content))
	}
	blob := node.Content[0]
	loc, ok := r.LookupBlob(repo.BlobHandle{ID: blob, Type: repo.DataBlob})
	if !ok {
		t.Fatal("blob of dup1 not indexed")
	}
	bit := rng.Int64N(int64(loc.Length) * 8)
	flipBit(t, tr.packPath(loc.Pack.String()), int64(loc.Offset)+bit/8, uint(bit%8))
	t.Logf("flipped bit %d of blob %s in pack %s", bit, blob.Short(), loc.Pack.Short())

	code, res := tr.check(t, true)
	if code != 4 {
		t.Fatalf("check --read-data: exit %d, want 4", code)
	}
	wantFiles := []string{filepath.Join(src, "a", "dup2"), filepath.Join(src, "dup1")}
	if len(res.Damaged) != 1 {
		t.Fatalf("check names %d damaged blobs, want 1: %+v", len(res.Damaged), res.Damaged)
	}
	d := res.Damaged[0]
	if d.Pack != loc.Pack.String() || d.Blob != blob.String() {
		t.Errorf("damage names pack %s blob %s, want pack %s blob %s", d.Pack, d.Blob, loc.Pack, blob)
	}
	if !slices.Equal(d.Files, wantFiles) {
		t.Errorf("damaged files %q, want exactly %q", d.Files, wantFiles)
	}
	if !slices.Equal(d.Snapshots, users) {
		t.Errorf("damaged snapshots %q, want exactly %q (not %.8s)", d.Snapshots, users, s3)
	}
	var namesPack, namesBlob bool
	for _, p := range res.Problems {
		switch p.Object {
		case loc.Pack.String():
			namesPack = true
		case blob.String():
			namesBlob = true
		default:
			t.Errorf("unexpected problem: %v", p)
		}
	}
	if !namesPack || !namesBlob {
		t.Errorf("problems do not name the pack (%v) and the blob (%v): %v", namesPack, namesBlob, res.Problems)
	}

	// Restore of the first snapshot: everything else identical, the two
	// damaged files named and absent.
	target := t.TempDir()
	code, failed := tr.restore(t, s1, target)
	if code != 3 {
		t.Errorf("restore of a damaged snapshot: exit %d, want 3", code)
	}
	if !slices.Equal(failed, wantFiles) {
		t.Errorf("restore reports %q, want exactly %q", failed, wantFiles)
	}
	got := manifest(t, restoredAt(target, src))
	for _, p := range []string{"dup1", "a/dup2"} {
		if e, ok := got[p]; ok {
			t.Errorf("damaged file %s was left in the target (hash %.16s, want %.16s)", p, e.Hash, m1[p].Hash)
		}
	}
	compareManifests(t, "restore of the rest", without(m1, "dup1", "a/dup2"), without(got, "dup1", "a/dup2"))
	// A snapshot that does not use the blob is unaffected.
	verifyRestore(t, tr, src, s3, m3)

	// The runbook (docs/operations.md, "Data was lost"): repair index
	// --read-data leaves the damaged blob out of the index, repair
	// snapshots --forget cuts the files that used it; check --read-data is
	// then clean, and a backup of the same data stores it again rather
	// than deduplicating against the damaged copy.
	res2 := tr.run(t, nil, "repair", "index", "--read-data")
	if res2.code != 0 || !strings.Contains(res2.stdout, loc.Pack.String()+": content damaged") {
		t.Fatalf("repair index --read-data: %v", res2)
	}
	if res2 = tr.run(t, nil, "repair", "snapshots", "--forget"); res2.code != 0 {
		t.Fatalf("repair snapshots --forget: %v", res2)
	}
	tr.mustCheckClean(t, true)
	writeFile(t, filepath.Join(src, "dup1"), dup)
	s4 := tr.backup(t, src)
	verifyRestore(t, tr, src, s4, manifest(t, src))
	tr.mustCheckClean(t, true)
}

// TestB1FlippedBitInTreePack: a flipped bit in a tree blob, the root's or a
// subdirectory's, is named by check --read-data with its pack, the
// snapshots that use it and the directory ("/" for the root), and a flipped
// bit in a tree pack's header names the pack.
func TestB1FlippedBitInTreePack(t *testing.T) {
	rng := rand.New(rand.NewPCG(0xb1, 2))
	base := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	makeSource(t, src, 12, 1<<20)
	if err := os.MkdirAll(filepath.Join(src, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(src, "a", "b", "f"), randomBytes(rng, 10<<10))
	s1 := base.backup(t, src)
	writeFile(t, filepath.Join(src, "top"), randomBytes(rng, 10<<10))
	s2 := base.backup(t, src) // a new root; the same tree for a
	r := base.open(t, repository.Options{})
	load := func(id string) *snapshot.Snapshot {
		sn, err := r.LoadSnapshot(context.Background(), mustParseID(t, id))
		if err != nil {
			t.Fatal(err)
		}
		return sn
	}
	root1 := load(s1).Tree
	dirA := findNode(t, r, root1, filepath.Join(src, "a"))
	if other := findNode(t, r, load(s2).Tree, filepath.Join(src, "a")); other.Subtree != dirA.Subtree {
		t.Fatal("the two snapshots do not share the tree of a")
	}
	both := []string{s1, s2}
	sort.Strings(both)
	cases := []struct {
		name      string
		tree      repo.ID
		files     []string
		snapshots []string
	}{
		{"root", root1, []string{"/"}, []string{s1}},
		{"subdirectory", dirA.Subtree, []string{filepath.Join(src, "a") + "/"}, both},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := copyRepo(t, base)
			loc, ok := r.LookupBlob(repo.BlobHandle{ID: tc.tree, Type: repo.TreeBlob})
			if !ok {
				t.Fatal("tree not indexed")
			}
			bit := rng.Int64N(int64(loc.Length) * 8)
			flipBit(t, tr.packPath(loc.Pack.String()), int64(loc.Offset)+bit/8, uint(bit%8))
			code, res := tr.check(t, true)
			if code != 4 {
				t.Fatalf("check --read-data: exit %d, want 4", code)
			}
			if len(res.Damaged) != 1 {
				t.Fatalf("check names %d damaged blobs, want 1: %+v", len(res.Damaged), res.Damaged)
			}
			d := res.Damaged[0]
			if d.Pack != loc.Pack.String() || d.Blob != tc.tree.String() {
				t.Errorf("damage names pack %s blob %s, want pack %s blob %s", d.Pack, d.Blob, loc.Pack, tc.tree)
			}
			if !slices.Equal(d.Files, tc.files) || !slices.Equal(d.Snapshots, tc.snapshots) {
				t.Errorf("damage names files %q of snapshots %q, want %q of %q", d.Files, d.Snapshots, tc.files, tc.snapshots)
			}
		})
	}
	t.Run("pack header", func(t *testing.T) {
		tr := copyRepo(t, base)
		loc, _ := r.LookupBlob(repo.BlobHandle{ID: root1, Type: repo.TreeBlob})
		path := tr.packPath(loc.Pack.String())
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		// Inside the sealed header, which sits between the last blob and
		// the 4-byte length at the end.
		flipBit(t, path, fi.Size()-4-int64(1+rng.IntN(16)), uint(rng.IntN(8)))
		code, res := tr.check(t, true)
		if code != 4 {
			t.Fatalf("check --read-data: exit %d, want 4", code)
		}
		named := false
		for _, p := range res.Problems {
			named = named || p.Object == loc.Pack.String()
		}
		if !named {
			t.Errorf("check does not name the tree pack %s: %+v", loc.Pack.Short(), res.Problems)
		}
	})
}

// copyRepo copies a test repository (for one damage scenario each).
func copyRepo(t testing.TB, tr *testRepo) *testRepo {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	if out, err := exec.Command("cp", "-a", tr.dir, dir).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	return &testRepo{dir: dir, pwFile: tr.pwFile}
}

// RELIABILITY B2: a truncated, empty or missing pack or index file is found
// by check without --read-data (exit 4), and without reading any pack.
func TestB2DamagedFilesFoundWithoutReadingData(t *testing.T) {
	rng := rand.New(rand.NewPCG(0xb2, 1))
	tpl := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	makeSource(t, src, 22, 3<<20)
	tpl.backup(t, src)
	mutate(t, src, rng, 1, 1<<20)
	tpl.backup(t, src)

	r := tpl.open(t, repository.Options{})
	var dataPack string
	dataPacks := map[string]bool{} // packs of data blobs (trees are in packs of their own)
	for id, blobs := range r.Index().Packs() {
		if blobs[0].Type == repo.DataBlob {
			dataPacks[id.String()] = true
			if dataPack == "" || id.String() < dataPack {
				dataPack = id.String()
			}
		}
	}
	indexes := tpl.listFiles(t, "index")
	if dataPack == "" || len(indexes) != 2 {
		t.Fatalf("fixture: data pack %q, %d index files", dataPack, len(indexes))
	}
	packFile := func(tr *testRepo) string { return tr.packPath(dataPack) }
	indexFile := func(tr *testRepo) string { return filepath.Join(tr.dir, "index", indexes[0]) }
	truncate := func(name func(*testRepo) string, size func(int64) int64) func(*testRepo) {
		return func(tr *testRepo) {
			fi, err := os.Stat(name(tr))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(name(tr), size(fi.Size())); err != nil {
				t.Fatal(err)
			}
		}
	}
	remove := func(name func(*testRepo) string) func(*testRepo) {
		return func(tr *testRepo) {
			if err := os.Remove(name(tr)); err != nil {
				t.Fatal(err)
			}
		}
	}
	half := func(n int64) int64 { return n / 2 }
	zero := func(int64) int64 { return 0 }
	for _, c := range []struct {
		name   string
		damage func(*testRepo)
		object string // the file a problem must name; "" for any tree problem
	}{
		{"truncated pack", truncate(packFile, half), dataPack},
		{"pack one byte short", truncate(packFile, func(n int64) int64 { return n - 1 }), dataPack},
		{"empty pack", truncate(packFile, zero), dataPack},
		{"missing pack", remove(packFile), dataPack},
		{"truncated index", truncate(indexFile, half), indexes[0]},
		{"empty index", truncate(indexFile, zero), indexes[0]},
		{"missing index", remove(indexFile), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr := copyRepo(t, tpl)
			c.damage(tr)
			code, res := tr.check(t, false)
			if code != 4 {
				t.Fatalf("check: exit %d, want 4 (problems %v)", code, res.Problems)
			}
			named := false
			for _, p := range res.Problems {
				if p.Object == c.object || c.object == "" && (p.Kind == "tree" || p.Kind == "blob") {
					named = true
				}
			}
			if !named {
				t.Errorf("no problem names %q: %v", c.object, res.Problems)
			}
			if res.PacksRead != 0 {
				t.Errorf("check without --read-data read %d packs", res.PacksRead)
			}

			// In process, with every read of a data pack counted: none may
			// happen (tree blobs are read to walk the snapshots).
			var packLoads atomic.Int64
			be, err := local.Open(context.Background(), tr.dir)
			if err != nil {
				t.Fatal(err)
			}
			fb := fault.New(be)
			fb.SetRules(fault.Rules{BeforeLoad: func(h backend.Handle, length int, offset int64) error {
				if h.Type == backend.PackFile && dataPacks[h.Name] {
					packLoads.Add(1)
				}
				return nil
			}})
			r, err := repository.Open(context.Background(), fb, []byte(testPassword), repository.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			cres, err := checker.Check(context.Background(), r, checker.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if cres.OK() {
				t.Errorf("in-process check found nothing")
			}
			if n := packLoads.Load(); n != 0 {
				t.Errorf("check without --read-data read data packs %d times", n)
			}
		})
	}
}

// RELIABILITY B3: tampered ciphertext, tag or nonce, two blobs swapped inside
// a pack (index unchanged), a wrong key: every read is rejected as an
// authentication or verification failure, never returns a byte, never panics.
func TestB3TamperedBlobsAreRejected(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(0xb3, 1))
	tr := newTestRepo(t)
	r := tr.open(t, repository.Options{})
	// Two random (incompressible) blobs of equal size, and a third.
	plain := map[repo.ID][]byte{}
	var ids []repo.ID
	for _, data := range [][]byte{randomBytes(rng, 20000), randomBytes(rng, 20000), textBytes(rng, 30000)} {
		id := saveData(t, r, data)
		plain[id] = data
		ids = append(ids, id)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	locs := make([]repo.Location, len(ids))
	for i, id := range ids {
		locs[i], _ = r.LookupBlob(repo.BlobHandle{ID: id, Type: repo.DataBlob})
	}
	if locs[0].Pack != locs[1].Pack || locs[0].Length != locs[1].Length || locs[0].Pack != locs[2].Pack {
		t.Fatalf("fixture: blobs not in one pack with equal lengths: %+v", locs)
	}
	packFile := tr.packPath(locs[0].Pack.String())
	orig, err := os.ReadFile(packFile)
	if err != nil {
		t.Fatal(err)
	}
	blobsOfPack := func() []repo.PackedBlob {
		var out []repo.PackedBlob
		for i, id := range ids {
			l := locs[i]
			out = append(out, repo.PackedBlob{Type: repo.DataBlob, ID: id, Compressed: l.Compressed, Offset: l.Offset, Length: l.Length, RawLength: l.RawLength})
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Offset < out[j].Offset })
		return out
	}

	// expectRejected reads every blob through a fresh handle: the damaged
	// ones fail as wantErr and return nothing, the others are exact.
	expectRejected := func(t *testing.T, damaged map[repo.ID]bool, wantErr ...error) {
		t.Helper()
		r := tr.open(t, repository.Options{})
		for _, id := range ids {
			data, err := r.LoadBlob(ctx, repo.DataBlob, id)
			if !damaged[id] {
				if err != nil || string(data) != string(plain[id]) {
					t.Errorf("undamaged blob %s: err %v, %d bytes", id.Short(), err, len(data))
				}
				continue
			}
			if err == nil || data != nil {
				t.Errorf("damaged blob %s: err %v, %d bytes returned", id.Short(), err, len(data))
				continue
			}
			for _, w := range wantErr {
				if !errors.Is(err, w) {
					t.Errorf("damaged blob %s: error %v is not %v", id.Short(), err, w)
				}
			}
		}
		err := r.LoadPackRange(ctx, locs[0].Pack, blobsOfPack(), func(b repo.PackedBlob, p []byte, err error) error {
			switch {
			case damaged[b.ID] && (err == nil || p != nil):
				t.Errorf("LoadPackRange: damaged blob %s: err %v, %d bytes", b.ID.Short(), err, len(p))
			case !damaged[b.ID] && (err != nil || string(p) != string(plain[b.ID])):
				t.Errorf("LoadPackRange: undamaged blob %s: err %v", b.ID.Short(), err)
			}
			return nil
		})
		if err != nil {
			t.Errorf("LoadPackRange: %v", err)
		}
		res := checkInProcess(t, tr.openNoIndex(t), true)
		for id := range damaged {
			found := false
			for _, p := range res.Problems {
				found = found || p.Object == id.String()
			}
			if !found {
				t.Errorf("check --read-data does not name blob %s: %v", id.Short(), res.Problems)
			}
		}
	}
	restore := func(t *testing.T) {
		t.Helper()
		if err := os.WriteFile(packFile, orig, 0o400); err != nil {
			t.Fatal(err)
		}
	}
	flipIn := func(t *testing.T, from, n int64) {
		bit := rng.Int64N(n * 8)
		flipBit(t, packFile, from+bit/8, uint(bit%8))
	}
	a := int64(locs[0].Offset)
	alen := int64(locs[0].Length)

	t.Run("ciphertext", func(t *testing.T) {
		defer restore(t)
		flipIn(t, a+crypto.NonceSize, alen-crypto.Overhead)
		expectRejected(t, map[repo.ID]bool{ids[0]: true}, repository.ErrCorrupt, crypto.ErrUnauthenticated)
	})
	t.Run("tag", func(t *testing.T) {
		defer restore(t)
		flipIn(t, a+alen-crypto.TagSize, crypto.TagSize)
		expectRejected(t, map[repo.ID]bool{ids[0]: true}, repository.ErrCorrupt, crypto.ErrUnauthenticated)
	})
	t.Run("nonce", func(t *testing.T) {
		defer restore(t)
		flipIn(t, a, crypto.NonceSize)
		expectRejected(t, map[repo.ID]bool{ids[0]: true}, repository.ErrCorrupt, crypto.ErrUnauthenticated)
	})
	t.Run("swapped blobs", func(t *testing.T) {
		defer restore(t)
		b := int64(locs[1].Offset)
		data := slices.Clone(orig)
		copy(data[a:a+alen], orig[b:b+alen])
		copy(data[b:b+alen], orig[a:a+alen])
		if err := os.WriteFile(packFile, data, 0o400); err != nil {
			t.Fatal(err)
		}
		// Each opens (same key, no associated data) but is not what its ID says.
		expectRejected(t, map[repo.ID]bool{ids[0]: true, ids[1]: true}, repository.ErrCorrupt, repository.ErrBlobMismatch)
	})

	t.Run("random bit anywhere", func(t *testing.T) {
		// Every load of the pack gets one random bit flipped: each read either
		// fails as corrupt or returns the exact plaintext, never anything else.
		iterations := 300
		if soak() {
			iterations = 20000
		}
		be, err := local.Open(ctx, tr.dir)
		if err != nil {
			t.Fatal(err)
		}
		fb := fault.New(be)
		fb.SetRules(fault.Rules{Seed: 0xb3, CorruptLoad: fault.Select{Match: fault.OfType(backend.PackFile)}})
		fr, err := repository.Open(ctx, fb, []byte(testPassword), repository.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer fr.Close()
		if err := fr.LoadIndex(ctx); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < iterations; i++ {
			id := ids[i%len(ids)]
			data, err := fr.LoadBlob(ctx, repo.DataBlob, id)
			if err == nil || data != nil || !errors.Is(err, repository.ErrCorrupt) {
				t.Fatalf("iteration %d: corrupted blob %s: err %v, %d bytes", i, id.Short(), err, len(data))
			}
			bad := 0
			err = fr.LoadPackRange(ctx, locs[0].Pack, blobsOfPack(), func(b repo.PackedBlob, p []byte, err error) error {
				if err != nil {
					bad++
					if p != nil || !errors.Is(err, repository.ErrCorrupt) {
						t.Errorf("iteration %d: blob %s: err %v with %d bytes", i, b.ID.Short(), err, len(p))
					}
				} else if string(p) != string(plain[b.ID]) {
					t.Errorf("iteration %d: blob %s: wrong bytes returned without an error", i, b.ID.Short())
				}
				return nil
			})
			if err != nil || bad != 1 {
				t.Fatalf("iteration %d: LoadPackRange: %v, %d blobs failed, want 1", i, err, bad)
			}
		}
	})

	t.Run("wrong key", func(t *testing.T) {
		other := newTestRepo(t)
		otherPw := []byte("another password")
		oBe, err := local.Open(ctx, other.dir)
		if err != nil {
			t.Fatal(err)
		}
		// A second key slot with another password in the other repository.
		ro, err := repository.Open(ctx, oBe, []byte(testPassword), repository.Options{KDF: crypto.TestKDF})
		if err != nil {
			t.Fatal(err)
		}
		defer ro.Close()
		slot, err := ro.AddKey(ctx, otherPw)
		if err != nil {
			t.Fatal(err)
		}
		sn, err := ro.SaveSnapshot(ctx, &snapshot.Snapshot{Tree: ids[0], Hostname: "other"})
		if err != nil {
			t.Fatal(err)
		}

		// A blob sealed under this repository's key, opened with the other's.
		sealed := orig[locs[0].Offset : locs[0].Offset+locs[0].Length]
		b := blobsOfPack()[0]
		for _, x := range blobsOfPack() {
			if x.ID == ids[0] {
				b = x
			}
		}
		if p, err := ro.DecodeBlob(b, sealed, nil); err == nil || p != nil || !errors.Is(err, crypto.ErrUnauthenticated) || !errors.Is(err, repository.ErrCorrupt) {
			t.Errorf("blob opened with another repository's key: err %v, %d bytes", err, len(p))
		}

		// A wrong password opens nothing and writes nothing.
		before := dirListing(t, tr.dir, "")
		be, err := local.Open(ctx, tr.dir)
		if err != nil {
			t.Fatal(err)
		}
		if r, err := repository.Open(ctx, be, []byte("wrong password"), repository.Options{}); !errors.Is(err, repository.ErrWrongPassword) {
			t.Errorf("wrong password: %v (handle %v)", err, r != nil)
		}
		diffListings(t, "after a wrong password", before, dirListing(t, tr.dir, ""))

		// The other repository's key slot planted here: its password unlocks
		// the slot, but the keys in it open nothing of this repository.
		slotData, err := os.ReadFile(filepath.Join(other.dir, "keys", slot))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(tr.dir, "keys", slot), slotData)
		defer os.Remove(filepath.Join(tr.dir, "keys", slot))
		if r, err := repository.Open(ctx, be, otherPw, repository.Options{}); err == nil {
			r.Close()
			t.Errorf("a foreign key slot opened the repository")
		} else if !errors.Is(err, crypto.ErrUnauthenticated) && !errors.Is(err, repository.ErrWrongPassword) && !errors.Is(err, repository.ErrCorrupt) {
			t.Errorf("foreign key slot: unexpected error %v", err)
		}
		if r, err := repository.Open(ctx, be, []byte(testPassword), repository.Options{}); err != nil {
			t.Errorf("the owner's password no longer opens the repository with a foreign slot present: %v", err)
		} else {
			r.Close()
		}

		// Metadata files sealed under the other key.
		snData, err := os.ReadFile(filepath.Join(other.dir, "snapshots", sn.String()))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(tr.dir, "snapshots", sn.String()), snData)
		defer os.Remove(filepath.Join(tr.dir, "snapshots", sn.String()))
		if got, err := r.LoadSnapshot(ctx, sn); err == nil || got != nil || !errors.Is(err, crypto.ErrUnauthenticated) {
			t.Errorf("foreign snapshot: err %v, snapshot %v", err, got)
		}

		// This repository's own snapshot, tampered and renamed to match its
		// new content: the name check passes, authentication does not.
		own, err := r.SaveSnapshot(ctx, &snapshot.Snapshot{Tree: ids[0], Hostname: "own"})
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(tr.dir, "snapshots", own.String()))
		if err != nil {
			t.Fatal(err)
		}
		data[crypto.NonceSize+rng.IntN(len(data)-crypto.Overhead)] ^= 0x10
		renamed := crypto.FileID(data)
		writeFile(t, filepath.Join(tr.dir, "snapshots", renamed.String()), data)
		defer os.Remove(filepath.Join(tr.dir, "snapshots", renamed.String()))
		if got, err := r.LoadSnapshot(ctx, renamed); err == nil || got != nil || !errors.Is(err, crypto.ErrUnauthenticated) {
			t.Errorf("tampered, renamed snapshot: err %v, snapshot %v", err, got)
		}
		if err := os.Remove(filepath.Join(tr.dir, "snapshots", own.String())); err != nil {
			t.Fatal(err)
		}
	})
}

// RELIABILITY B3 (wrong key) and G7: a key slot of another repository that
// the same password unlocks is planted here. Its keys must be rejected (they
// open nothing of this repository) without locking the owner out: the
// owner's own slot still opens the repository, whichever slot is tried first.
func TestB3ForeignKeySlotWithTheSamePassword(t *testing.T) {
	tr := newTestRepo(t)
	own := tr.listFiles(t, "keys")[0]
	// Slots are tried in name order. Plant the other repository's slot under
	// the smallest possible name, so that it is always tried first.
	other := newTestRepo(t)
	data, err := os.ReadFile(filepath.Join(other.dir, "keys", other.listFiles(t, "keys")[0]))
	if err != nil {
		t.Fatal(err)
	}
	foreign := strings.Repeat("0", 64)
	writeFile(t, filepath.Join(tr.dir, "keys", foreign), data)
	r, err := tr.openErr(repository.Options{}, true)
	if err != nil {
		t.Fatalf("with a foreign slot %.8s planted before the owner's slot %.8s, the owner's password fails: %v", foreign, own, err)
	}
	defer r.Close()
	if r.KeyName() != own {
		t.Errorf("opened with slot %.8s, want the owner's %.8s", r.KeyName(), own)
	}
}
