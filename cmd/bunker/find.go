package main

import (
	"context"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"bunker/internal/repo"
	"bunker/internal/repo/repository"
	"bunker/internal/snapshot"
)

type snapshotFilter struct {
	hosts []string
	tags  []string
	paths []string
}

func (f snapshotFilter) match(sn *snapshot.Snapshot) bool {
	if len(f.hosts) > 0 && !slices.Contains(f.hosts, sn.Hostname) {
		return false
	}
	for _, t := range f.tags {
		if !slices.Contains(sn.Tags, t) {
			return false
		}
	}
	for _, p := range f.paths {
		if !slices.Contains(sn.Paths, p) {
			return false
		}
	}
	return true
}

// openSnapshot opens the repository with its index under a shared lock (so
// that no prune deletes what is being read) and resolves a snapshot; the
// caller calls release when done.
func (g *globalOptions) openSnapshot(ctx context.Context, arg string, f snapshotFilter, warn io.Writer) (*repository.Repository, *snapshot.Snapshot, func(), error) {
	r, _, release, err := g.openRepoLocked(ctx, true, false)
	if err != nil {
		return nil, nil, nil, err
	}
	sn, err := findSnapshot(ctx, r, arg, f, warn)
	if err != nil {
		release()
		return nil, nil, nil, err
	}
	return r, sn, release, nil
}

// Commands load snapshots with Repository.ReadableSnapshots, which returns
// the damaged ones apart: a command that reads one snapshot (restore, ls,
// diff, dump, a backup's parent) must not be stopped by another one's
// damage. Such a command warns about them (warnDamaged) once it has
// resolved its snapshot; one that lists or counts them all ends with
// errDamagedLeftOut.

// warnDamaged writes one line on w if snapshots were left out as damaged.
func warnDamaged(w io.Writer, damaged []repository.DamagedSnapshot) {
	if len(damaged) > 0 {
		fmt.Fprintf(w, "bunker: warning: %s\n", damagedText(damaged))
	}
}

// errDamagedLeftOut is the error of a command that listed or counted the
// readable snapshots and left damaged ones out (exit code 4).
func errDamagedLeftOut(damaged []repository.DamagedSnapshot) error {
	return fmt.Errorf("%s: %w", damagedText(damaged), repository.ErrCorrupt)
}

func damagedText(damaged []repository.DamagedSnapshot) string {
	var ids []string
	for i, d := range damaged {
		if i == 5 {
			ids = append(ids, fmt.Sprintf("and %d more", len(damaged)-i))
			break
		}
		ids = append(ids, d.ID.Short())
	}
	what := "damaged snapshot"
	if len(damaged) > 1 {
		what += "s"
	}
	return fmt.Sprintf("left out %d %s (%s); see `bunker check`", len(damaged), what, strings.Join(ids, ", "))
}

// findSnapshot resolves "latest" or an ID prefix among the readable
// snapshots, then warns on w about damaged ones. An ID that names a damaged
// snapshot is its damage (exit code 4).
func findSnapshot(ctx context.Context, r *repository.Repository, arg string, f snapshotFilter, w io.Writer) (*snapshot.Snapshot, error) {
	snaps, damaged, err := r.ReadableSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	sn, err := pickSnapshot(snaps, damaged, arg, f)
	if err == nil {
		warnDamaged(w, damaged)
	}
	return sn, err
}

// pickSnapshot resolves "latest" (the newest readable snapshot f matches)
// or an ID prefix among loaded snapshots.
func pickSnapshot(snaps []*snapshot.Snapshot, damaged []repository.DamagedSnapshot, arg string, f snapshotFilter) (*snapshot.Snapshot, error) {
	if arg == "latest" {
		for i := len(snaps) - 1; i >= 0; i-- {
			if f.match(snaps[i]) {
				return snaps[i], nil
			}
		}
		if len(damaged) > 0 {
			return nil, fmt.Errorf("no readable snapshot found: %w", errDamagedLeftOut(damaged))
		}
		return nil, fmt.Errorf("no snapshot found")
	}
	return byIDPrefix(snaps, damaged, arg)
}

// byIDPrefix finds the one snapshot whose ID starts with prefix, among the
// readable and the damaged ones.
func byIDPrefix(snaps []*snapshot.Snapshot, damaged []repository.DamagedSnapshot, prefix string) (*snapshot.Snapshot, error) {
	if len(prefix) < 4 {
		return nil, usagef("snapshot ID %q is too short (give at least 4 hex digits or 'latest')", prefix)
	}
	var found *snapshot.Snapshot
	var bad error
	n := 0
	for _, sn := range snaps {
		if strings.HasPrefix(sn.ID.String(), prefix) {
			found = sn
			n++
		}
	}
	for _, d := range damaged {
		if strings.HasPrefix(d.ID.String(), prefix) {
			bad = d.Err
			n++
		}
	}
	switch {
	case n > 1:
		return nil, usagef("snapshot ID prefix %q is ambiguous", prefix)
	case bad != nil:
		return nil, bad
	case found == nil:
		return nil, fmt.Errorf("no snapshot %q", prefix)
	}
	return found, nil
}

// loadTree loads and decodes a tree blob.
func loadTree(ctx context.Context, r *repository.Repository, id repo.ID) (*snapshot.Tree, error) {
	data, err := r.LoadBlob(ctx, repo.TreeBlob, id)
	if err != nil {
		return nil, err
	}
	return snapshot.DecodeTree(data)
}

// findNode follows a path ("/a/b") from a root tree; the root itself is a
// directory node with the root tree as Subtree.
func findNode(ctx context.Context, r *repository.Repository, root repo.ID, p string) (*snapshot.Node, error) {
	node := &snapshot.Node{Name: "/", Type: snapshot.TypeDir, Subtree: root}
	p = path.Clean("/" + p)
	if p == "/" {
		return node, nil
	}
	for _, name := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		if node.Type != snapshot.TypeDir {
			return nil, fmt.Errorf("%s: not found in snapshot", p)
		}
		t, err := loadTree(ctx, r, node.Subtree)
		if err != nil {
			return nil, err
		}
		node = t.Find(name)
		if node == nil {
			return nil, fmt.Errorf("%s: not found in snapshot", p)
		}
	}
	return node, nil
}

// walk calls fn for every node below the tree id, depth first, in name order.
func walk(ctx context.Context, r *repository.Repository, id repo.ID, dir string, fn func(p string, n *snapshot.Node) error) error {
	t, err := loadTree(ctx, r, id)
	if err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	for _, n := range t.Nodes {
		p := path.Join(dir, n.Name)
		if err := fn(p, n); err != nil {
			return err
		}
		if n.Type == snapshot.TypeDir {
			if err := walk(ctx, r, n.Subtree, p, fn); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}
