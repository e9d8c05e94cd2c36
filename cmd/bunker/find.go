package main

import (
	"context"
	"fmt"
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
func (g *globalOptions) openSnapshot(ctx context.Context, arg string, f snapshotFilter) (*repository.Repository, *snapshot.Snapshot, func(), error) {
	r, _, release, err := g.openRepoLocked(ctx, true, false)
	if err != nil {
		return nil, nil, nil, err
	}
	sn, err := findSnapshot(ctx, r, arg, f)
	if err != nil {
		release()
		return nil, nil, nil, err
	}
	return r, sn, release, nil
}

// findSnapshot resolves "latest" or an ID prefix.
func findSnapshot(ctx context.Context, r *repository.Repository, arg string, f snapshotFilter) (*snapshot.Snapshot, error) {
	snaps, err := r.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	if arg == "latest" {
		for i := len(snaps) - 1; i >= 0; i-- {
			if f.match(snaps[i]) {
				return snaps[i], nil
			}
		}
		return nil, fmt.Errorf("no snapshot found")
	}
	return byIDPrefix(snaps, arg)
}

// byIDPrefix finds the one snapshot whose ID starts with prefix.
func byIDPrefix(snaps []*snapshot.Snapshot, prefix string) (*snapshot.Snapshot, error) {
	if len(prefix) < 4 {
		return nil, usagef("snapshot ID %q is too short (give at least 4 hex digits or 'latest')", prefix)
	}
	var found *snapshot.Snapshot
	for _, sn := range snaps {
		if strings.HasPrefix(sn.ID.String(), prefix) {
			if found != nil {
				return nil, usagef("snapshot ID prefix %q is ambiguous", prefix)
			}
			found = sn
		}
	}
	if found == nil {
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
