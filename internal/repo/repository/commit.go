package repository

import (
	"context"
	"errors"
	"fmt"
	"time"

	"bunker/internal/backend"
	"bunker/internal/repo"
	"bunker/internal/repo/index"
	"bunker/internal/snapshot"
)

// CommitWindow bounds the time between a successful CheckCommit and the
// snapshot write it allows. Prune waits longer than this between rewriting
// the index and deleting anything, and then looks for snapshots written in
// the meantime (docs/format.md, "Deleting safely").
const CommitWindow = 10 * time.Second

// PartialIndexInterval is how often a backup writes an index file for the
// packs it has stored so far (checked after each pack and every quarter of
// it); it must stay well below prune's grace period for unindexed packs
// (one hour). A variable for crash tests only.
var PartialIndexInterval = 5 * time.Minute

// ErrPrunedMeanwhile: a prune that ran during this backup removed data the
// new snapshot would refer to. Nothing was committed; running the backup
// again stores the data anew.
var ErrPrunedMeanwhile = errors.New("a prune removed data this backup refers to while it ran")

// WalkTree calls fn for the tree blob id, every blob below it (data blobs of
// files and the trees of subdirectories), once per tree: trees in seen are
// skipped, and every visited tree is added to seen. A tree that cannot be
// loaded is reported to fn with its error and not descended into.
func (r *Repository) WalkTree(ctx context.Context, id repo.ID, seen map[repo.ID]bool, fn func(h repo.BlobHandle, err error) error) error {
	if seen[id] {
		return nil
	}
	seen[id] = true
	th := repo.BlobHandle{Type: repo.TreeBlob, ID: id}
	data, err := r.LoadBlob(ctx, repo.TreeBlob, id)
	var t *snapshot.Tree
	if err == nil {
		t, err = snapshot.DecodeTree(data)
		if err != nil {
			err = fmt.Errorf("tree %s: %w: %w", id.Short(), ErrCorrupt, err)
		}
	}
	if err := fn(th, err); err != nil || t == nil {
		return err
	}
	for _, n := range t.Nodes {
		for _, c := range n.Content {
			if err := fn(repo.BlobHandle{Type: repo.DataBlob, ID: c}, nil); err != nil {
				return err
			}
		}
		if n.Type == snapshot.TypeDir {
			if err := r.WalkTree(ctx, n.Subtree, seen, fn); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}

// CheckCommit is the last step before a snapshot with root tree `tree` is
// written (after Flush). If a prune has rewritten the index since this
// handle loaded it, it reloads the index and makes sure every blob the
// snapshot refers to is still indexed and every pack this handle wrote is
// still stored; otherwise it returns an error wrapping ErrPrunedMeanwhile.
// The snapshot must then be written within CommitWindow, or CheckCommit
// called again.
func (r *Repository) CheckCommit(ctx context.Context, tree repo.ID) error {
	r.mu.Lock()
	pruned := r.pruneSeen
	r.mu.Unlock()
	if !pruned {
		var err error
		if pruned, err = r.indexRewritten(ctx); err != nil || !pruned {
			return err
		}
		// From now on every check of this handle verifies the tree: the
		// reload below adopts the prune's index files.
		r.mu.Lock()
		r.pruneSeen = true
		r.mu.Unlock()
	}
	if err := r.ReloadIndex(ctx); err != nil {
		return err
	}
	// Every pack this handle wrote must still be stored: a prune that
	// missed our lock may have deleted one before our index named it.
	// Our own index files: one the reload read is in the index; one a
	// prune superseded no longer counts (its packs are doomed unless the
	// prune's index kept them); one that is neither is only hidden by a
	// lagging listing, and its packs count.
	r.mu.Lock()
	var own, lagging []index.PackEntry
	for id, packs := range r.ownIndex {
		own = append(own, packs...)
		if !r.indexFiles[id] && !r.superseded[id] {
			lagging = append(lagging, packs...)
		}
	}
	r.mu.Unlock()
	for _, p := range own {
		if _, err := r.be.Stat(ctx, backend.Handle{Type: backend.PackFile, Name: p.ID.String()}); errors.Is(err, backend.ErrNotExist) {
			return fmt.Errorf("%w: pack %s this backup wrote is gone", ErrPrunedMeanwhile, p.ID.Short())
		} else if err != nil {
			return fmt.Errorf("check pack %s: %w", p.ID.Short(), err)
		}
	}
	for _, p := range lagging {
		r.idx.AddPack(p.ID, p.Blobs)
	}
	missing := 0
	err := r.WalkTree(ctx, tree, map[repo.ID]bool{}, func(h repo.BlobHandle, err error) error {
		if err != nil || !r.idx.Has(h) {
			missing++
		}
		return nil
	})
	if err != nil {
		return err
	}
	if missing > 0 {
		return fmt.Errorf("%w: %d blobs are no longer indexed; nothing was committed, run the backup again", ErrPrunedMeanwhile, missing)
	}
	return nil
}

// indexRewritten reports whether an index file this handle loaded was
// removed or superseded by one it did not load: the mark of a prune or an
// index repair.
func (r *Repository) indexRewritten(ctx context.Context) (bool, error) {
	ids, err := r.List(ctx, backend.IndexFile)
	if err != nil {
		return false, fmt.Errorf("list index: %w", err)
	}
	r.mu.Lock()
	known := make(map[repo.ID]bool, len(r.indexFiles))
	for id := range r.indexFiles {
		known[id] = true
	}
	r.mu.Unlock()
	present := make(map[repo.ID]bool, len(ids))
	for _, id := range ids {
		present[id] = true
		if known[id] {
			continue
		}
		f, err := r.LoadIndexFile(ctx, id)
		if errors.Is(err, backend.ErrNotExist) {
			continue
		}
		if err != nil {
			return false, err
		}
		for _, s := range f.Supersedes {
			if known[s] {
				return true, nil
			}
		}
	}
	for id := range known {
		if !present[id] {
			// Listings may lag behind writes (our own file may not show
			// yet); only a file that Stat also misses is gone.
			_, err := r.be.Stat(ctx, backend.Handle{Type: backend.IndexFile, Name: id.String()})
			if errors.Is(err, backend.ErrNotExist) {
				return true, nil
			}
			if err != nil {
				return false, fmt.Errorf("check index file %s: %w", id.Short(), err)
			}
		}
	}
	return false, nil
}

// ReloadIndex replaces the in-memory index with the current index files.
func (r *Repository) ReloadIndex(ctx context.Context) error {
	r.mu.Lock()
	r.indexFiles = make(map[repo.ID]bool)
	r.superseded = make(map[repo.ID]bool)
	r.mu.Unlock()
	old := r.idx
	r.idx = index.New()
	if err := r.LoadIndex(ctx); err != nil {
		r.idx = old
		return err
	}
	return nil
}

// CommitSnapshot writes sn (whose data is flushed) once the lock still holds
// and CheckCommit passes, within CommitWindow of both checks.
func (r *Repository) CommitSnapshot(ctx context.Context, lock *Lock, sn *snapshot.Snapshot) (repo.ID, error) {
	for {
		start := time.Now()
		if err := lock.Check(ctx); err != nil {
			return repo.ID{}, fmt.Errorf("snapshot not saved: %w", err)
		}
		if err := r.CheckCommit(ctx, sn.Tree); err != nil {
			return repo.ID{}, fmt.Errorf("snapshot not saved: %w", err)
		}
		if time.Since(start) < CommitWindow {
			break
		}
	}
	id, err := r.SaveSnapshot(ctx, sn)
	if err != nil {
		return id, fmt.Errorf("save snapshot: %w", err)
	}
	// The window bounds when the write starts, not when it ends (a slow
	// storage, a stopped process). Check again now that it is stored: if a
	// prune removed data the snapshot uses meanwhile, withdraw the snapshot.
	if err := r.CheckCommit(ctx, sn.Tree); err != nil {
		if errors.Is(err, ErrPrunedMeanwhile) {
			rmErr := r.be.Remove(context.WithoutCancel(ctx), backend.Handle{Type: backend.SnapshotFile, Name: id.String()})
			if rmErr != nil {
				return id, fmt.Errorf("snapshot %s refers to data a concurrent prune removed, and removing it failed (%v): forget it: %w", id.Short(), rmErr, err)
			}
			return repo.ID{}, fmt.Errorf("snapshot withdrawn: %w", err)
		}
		return id, fmt.Errorf("snapshot %s saved, but checking it afterwards failed: %w (run `bunker check`)", id.Short(), err)
	}
	return id, nil
}

// SetIndex replaces the in-memory index and returns the previous one. Prune
// uses it to save blobs against the index it is about to write.
func (r *Repository) SetIndex(x *index.Index) *index.Index {
	old := r.idx
	r.idx = x
	return old
}

// ID returns the name of the lock's current file.
func (l *Lock) ID() repo.ID {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.id
}

// StorageTime returns a time by the storage's clock no later than now: when
// the storage stored this lock's current file.
func (l *Lock) StorageTime(ctx context.Context) (time.Time, error) {
	l.fileMu.Lock()
	defer l.fileMu.Unlock()
	id := l.ID()
	fi, err := l.r.be.Stat(ctx, backend.Handle{Type: backend.LockFile, Name: id.String()})
	if errors.Is(err, backend.ErrNotExist) {
		// The same loss Check reports: the holder must stop (exit 11), not
		// fail as if the storage had.
		err = fmt.Errorf("%w: lock file %s was removed by someone else", ErrLockLost, id.Short())
		l.fail(err)
		return time.Time{}, err
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("stat own lock: %w", err)
	}
	return fi.ModTime, nil
}
