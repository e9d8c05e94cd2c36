package reliability

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"bunker/internal/repo"
	"bunker/internal/repo/repository"
	"bunker/internal/snapshot"
)

// RELIABILITY B4: a tampered snapshot or tree (changed references, a data
// blob presented as a tree) is found by check (exit 4) and refused by
// restore: an error names what was not restored, the rest is identical, and
// nothing is silently restored wrong.
func TestB4TamperedSnapshotsAndTrees(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	for _, d := range []string{"sub", "keep"} {
		if err := os.MkdirAll(filepath.Join(src, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	xData := []byte("the content of x, which the tampered trees misuse\n")
	writeFile(t, filepath.Join(src, "x"), xData)
	writeFile(t, filepath.Join(src, "sub", "y"), []byte("y\n"))
	writeFile(t, filepath.Join(src, "sub", "z"), []byte("z\n"))
	writeFile(t, filepath.Join(src, "keep", "k"), []byte("k\n"))
	m := manifest(t, src)
	sid := tr.backup(t, src)

	r := tr.open(t, repository.Options{})
	sn, err := r.LoadSnapshot(ctx, mustParseID(t, sid))
	if err != nil {
		t.Fatal(err)
	}
	xNode := findNode(t, r, sn.Tree, filepath.Join(src, "x"))
	dataID := xNode.Content[0]
	subTree := findNode(t, r, sn.Tree, filepath.Join(src, "sub")).Subtree
	xPath := filepath.Join(src, "x")
	subPath := filepath.Join(src, "sub")
	edit := func(name string, fn func(n *snapshot.Node)) func() repo.ID {
		return func() repo.ID {
			return rewriteTree(t, r, sn.Tree, src, func(tree *snapshot.Tree) { fn(tree.Find(name)) })
		}
	}

	for _, c := range []struct {
		name string
		tree func() repo.ID
		// lost lists the source paths (relative) a restore must name and
		// leave out; nil means nothing of the snapshot can be restored.
		lost     []string
		reported []string
	}{
		{name: "snapshot tree is a data blob", tree: func() repo.ID { return dataID }},
		{name: "data blob stored as a tree", tree: func() repo.ID {
			id, _, _, err := r.SaveBlob(ctx, repo.TreeBlob, xData, repo.ID{})
			if err != nil {
				t.Fatal(err)
			}
			return id
		}},
		{name: "subtree is a data blob", tree: edit("sub", func(n *snapshot.Node) { n.Subtree = dataID }),
			lost: []string{"sub/y", "sub/z"}, reported: []string{subPath}},
		{name: "file content is a tree blob", tree: edit("x", func(n *snapshot.Node) { n.Content = []repo.ID{subTree} }),
			lost: []string{"x"}, reported: []string{xPath}},
		{name: "file size larger than its content", tree: edit("x", func(n *snapshot.Node) { n.Size += 4096 }),
			lost: []string{"x"}, reported: []string{xPath}},
		{name: "file size smaller than its content", tree: edit("x", func(n *snapshot.Node) { n.Size -= 10 }),
			lost: []string{"x"}, reported: []string{xPath}},
	} {
		t.Run(c.name, func(t *testing.T) {
			id := saveSnapshot(t, r, c.tree())
			snFile := filepath.Join(tr.dir, "snapshots", id.String())
			defer os.Remove(snFile)

			code, res := tr.check(t, false)
			if code != 4 {
				t.Errorf("check: exit %d, want 4 (problems %v)", code, res.Problems)
			}
			target := t.TempDir()
			code, failed := tr.restore(t, id.String(), target)
			if code != 3 {
				t.Errorf("restore: exit %d, want 3", code)
			}
			if c.lost == nil {
				if len(failed) == 0 {
					t.Errorf("restore reported nothing")
				}
				var files []string
				for p, e := range manifest(t, target) {
					if e.Type != snapshot.TypeDir {
						files = append(files, p)
					}
				}
				if len(files) > 0 {
					t.Errorf("restore of an unusable snapshot wrote %q", files)
				}
				return
			}
			if !slices.Equal(failed, c.reported) {
				t.Errorf("restore reports %q, want %q", failed, c.reported)
			}
			got := manifest(t, restoredAt(target, src))
			for _, p := range c.lost {
				if e, ok := got[p]; ok {
					t.Errorf("%s restored from a tampered tree (size %d, hash %.16s; the source had size %d, hash %.16s)",
						p, e.Size, e.Hash, m[p].Size, m[p].Hash)
				}
			}
			// The directory holding lost entries may differ in mtime only if
			// it lost entries; compare everything else exactly.
			compareManifests(t, "restore of the rest", without(m, c.lost...), without(got, c.lost...))
		})
	}
	// Without the tampered snapshots the repository checks clean again.
	tr.mustCheckClean(t, true)
}
