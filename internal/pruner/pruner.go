// Package pruner frees the space of data no snapshot uses, without ever
// deleting what a snapshot, or a backup committing at the same moment, needs.
//
// A prune runs in two steps. Plan reads the index, the pack listing and every
// snapshot's trees and decides, pack by pack: keep, delete (no used blob),
// repack (too much unused: copy the used blobs to new packs, then delete),
// or, for a pack no index names, delete once it is older than the grace
// period (it may belong to a backup still writing). Plan changes nothing;
// `prune --dry-run` prints it. Execute carries the plan out in the order of
// docs/format.md ("Deleting safely"): new packs, one index file that
// supersedes all the old ones, a wait longer than repository.CommitWindow,
// a rescan for snapshots written meanwhile (whose packs are rescued), and only
// then deletions, each batch behind a check that the lock still holds.
package pruner

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"bunker/internal/backend"
	"bunker/internal/repo"
	"bunker/internal/repo/crypto"
	"bunker/internal/repo/index"
	"bunker/internal/repo/pack"
	"bunker/internal/repo/repository"
	"bunker/internal/snapshot"
)

// ErrNeedsRepair: the repository is damaged in a way that makes pruning
// unsafe (an indexed pack is missing or short, a snapshot refers to missing
// data, an index file is unreadable). Nothing was changed.
var ErrNeedsRepair = errors.New("repository needs repair before prune")

// Failpoints for crash tests (RELIABILITY A2).
const (
	FailpointRepacked = "prune-repacked" // new packs stored, no index names them
	FailpointIndexed  = "prune-indexed"  // new index stored, nothing deleted
	FailpointDeleting = "prune-deleting" // some packs deleted
)

// Defaults.
const (
	DefaultMaxUnused      = 20.0
	DefaultUnindexedGrace = time.Hour
	DefaultWait           = 2 * repository.CommitWindow
)

// Options tune a prune.
type Options struct {
	// MaxUnused is the share (percent) of a pack's bytes that may be unused
	// before the pack is repacked.
	MaxUnused float64
	// UnindexedGrace: a pack that no index names is deleted only when it is
	// older than this, by the storage's clock.
	UnindexedGrace time.Duration
	// Wait is the pause between writing the new index and deleting anything.
	Wait time.Duration
	// Lock is the held exclusive lock; it is checked before every commit.
	Lock *repository.Lock
	// Progress, if set, receives short status lines.
	Progress func(string)
	// IndexLoaded, if set, is told how many blobs the index holds once it
	// is loaded (the CLI sizes its memory limit by it).
	IndexLoaded func(blobs int)
	// Forgotten snapshots count as removed: `forget --dry-run --prune`
	// plans the prune that would follow the forget.
	Forgotten map[repo.ID]bool
}

func (o *Options) defaults() {
	if o.MaxUnused == 0 {
		o.MaxUnused = DefaultMaxUnused
	}
	if o.UnindexedGrace == 0 {
		o.UnindexedGrace = DefaultUnindexedGrace
	}
	if o.Wait == 0 {
		o.Wait = DefaultWait
	}
}

// Validate reports bad option values.
func (o Options) Validate() error {
	if o.MaxUnused < 0 || o.MaxUnused > 100 {
		return fmt.Errorf("--max-unused must be between 0 and 100 (percent), got %g", o.MaxUnused)
	}
	if o.UnindexedGrace < 0 || o.Wait < 0 {
		return errors.New("durations must not be negative")
	}
	return nil
}

// PackInfo describes one pack in a plan.
type PackInfo struct {
	ID          repo.ID `json:"id"`
	Size        int64   `json:"size"`
	Blobs       int     `json:"blobs"`
	UsedBlobs   int     `json:"used_blobs"`
	UnusedBytes int64   `json:"unused_bytes"`
}

// Plan is what a prune will do.
type Plan struct {
	Snapshots   int   `json:"snapshots"`
	IndexFiles  int   `json:"index_files"`
	Packs       int   `json:"packs"`
	UsedBlobs   int   `json:"used_blobs"`
	UsedBytes   int64 `json:"used_bytes"`
	UnusedBlobs int   `json:"unused_blobs"`
	UnusedBytes int64 `json:"unused_bytes"`
	// Delete: indexed packs without a used blob. Repack: packs whose used
	// blobs are copied before they are deleted. Unindexed: packs no index
	// names, older than the grace period, deleted. Young: unindexed packs
	// kept because they are younger.
	Delete    []PackInfo `json:"delete"`
	Repack    []PackInfo `json:"repack"`
	Unindexed []PackInfo `json:"unindexed"`
	Young     []PackInfo `json:"young_unindexed"`
	// RepackBytes is what repacking copies.
	RepackBytes int64 `json:"repack_bytes"`

	indexFiles []repo.ID
	snapIDs    map[repo.ID]bool
	kept       []index.PackEntry
	doomed     map[repo.ID]index.PackEntry // Delete and Repack, by ID
	copyBlobs  map[repo.ID][]pack.Blob     // used blobs of Repack packs
	trees      *index.Index                // where every tree blob is: the walks need no more
}

// Nothing reports whether the plan changes nothing.
func (p *Plan) Nothing() bool {
	return len(p.Delete) == 0 && len(p.Repack) == 0 && len(p.Unindexed) == 0
}

// FreedBytes is what the plan frees (stored bytes of deleted packs minus the
// copies repacking makes).
func (p *Plan) FreedBytes() int64 {
	var n int64
	for _, l := range [][]PackInfo{p.Delete, p.Repack, p.Unindexed} {
		for _, pi := range l {
			n += pi.Size
		}
	}
	return n - p.RepackBytes
}

// MakePlan reads the repository and decides what to delete and repack. It
// changes nothing. r must be open without its index loaded: the plan loads
// it. now is a time by the storage's clock (see Lock.StorageTime).
func MakePlan(ctx context.Context, r *repository.Repository, opts Options, now time.Time) (*Plan, error) {
	opts.defaults()
	progress := func(format string, args ...any) {
		if opts.Progress != nil {
			opts.Progress(fmt.Sprintf(format, args...))
		}
	}
	p := &Plan{snapIDs: map[repo.ID]bool{}, doomed: map[repo.ID]index.PackEntry{}, copyBlobs: map[repo.ID][]pack.Blob{}}

	progress("listing packs")
	listed := map[repo.ID]backend.FileInfo{}
	err := r.Backend().List(ctx, backend.PackFile, func(fi backend.FileInfo) error {
		if id, err := repo.ParseID(fi.Name); err == nil {
			listed[id] = fi
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list packs: %w", err)
	}

	progress("loading the index")
	live, err := loadIndexFiles(ctx, r, p)
	if err != nil {
		return nil, err
	}
	p.trees = index.New()
	indexed := make(map[repo.ID]index.PackEntry, len(live))
	for _, e := range live {
		if old, ok := indexed[e.ID]; ok {
			// The same pack in two live index files: keep the longer list.
			if len(old.Blobs) >= len(e.Blobs) {
				continue
			}
		}
		indexed[e.ID] = e
	}
	nblobs := 0
	for _, e := range indexed {
		addTrees(p.trees, e)
		nblobs += len(e.Blobs)
	}
	if opts.IndexLoaded != nil {
		opts.IndexLoaded(nblobs)
	}
	if err := checkPacksStored(ctx, r, indexed, listed); err != nil {
		return nil, err
	}
	r.SetIndex(p.trees)

	progress("reading snapshots")
	snaps, err := r.Snapshots(ctx)
	if err != nil {
		return nil, damage(err, "")
	}
	snaps = slices.DeleteFunc(snaps, func(sn *snapshot.Snapshot) bool { return opts.Forgotten[sn.ID] })
	p.Snapshots = len(snaps)
	used, err := usedBlobs(ctx, r, snaps, p.snapIDs)
	if err != nil {
		return nil, err
	}

	progress("planning")
	ids := make([]repo.ID, 0, len(indexed))
	for id := range indexed {
		ids = append(ids, id)
	}
	sortIDs(ids)
	p.Packs = len(ids)
	for _, id := range ids {
		e := indexed[id]
		pi := PackInfo{ID: id, Size: listed[id].Size, Blobs: len(e.Blobs)}
		var usedList []pack.Blob
		var total int64
		for _, b := range e.Blobs {
			total += int64(b.Length)
			h := b.Handle()
			if claimed, ok := used[h]; ok && !claimed {
				used[h] = true // counted in the first pack that has it
				usedList = append(usedList, b)
				p.UsedBlobs++
				p.UsedBytes += int64(b.Length)
				continue
			}
			pi.UnusedBytes += int64(b.Length)
			p.UnusedBlobs++
			p.UnusedBytes += int64(b.Length)
		}
		pi.UsedBlobs = len(usedList)
		switch {
		case pi.UsedBlobs == 0:
			p.Delete = append(p.Delete, pi)
			p.doomed[id] = e
		case float64(pi.UnusedBytes)*100 > opts.MaxUnused*float64(total):
			p.Repack = append(p.Repack, pi)
			p.doomed[id] = e
			sort.Slice(usedList, func(i, j int) bool { return usedList[i].Offset < usedList[j].Offset })
			p.copyBlobs[id] = usedList
			for _, b := range usedList {
				p.RepackBytes += int64(b.Length)
			}
		default:
			p.kept = append(p.kept, e)
		}
	}

	missing := 0
	for _, claimed := range used {
		if !claimed {
			missing++
		}
	}
	if missing > 0 {
		return nil, fmt.Errorf("%w: snapshots refer to %d blobs that are not in the index: run `bunker repair index`, then `bunker repair snapshots`",
			ErrNeedsRepair, missing)
	}

	var unindexed []repo.ID
	for id := range listed {
		if _, ok := indexed[id]; !ok {
			unindexed = append(unindexed, id)
		}
	}
	sortIDs(unindexed)
	for _, id := range unindexed {
		fi := listed[id]
		pi := PackInfo{ID: id, Size: fi.Size}
		if now.Sub(fi.ModTime) > opts.UnindexedGrace {
			p.Unindexed = append(p.Unindexed, pi)
		} else {
			p.Young = append(p.Young, pi)
		}
	}
	return p, nil
}

// loadIndexFiles reads every index file; an unreadable one stops the prune.
// It returns the live pack entries.
func loadIndexFiles(ctx context.Context, r *repository.Repository, p *Plan) ([]index.PackEntry, error) {
	ids, files, err := r.LoadIndexFiles(ctx)
	if err != nil {
		return nil, damage(err, " (run `bunker repair index`)")
	}
	byID := make(map[repo.ID]*index.File, len(ids))
	for i, id := range ids {
		byID[id] = files[i]
	}
	sortIDs(ids)
	p.indexFiles = ids
	p.IndexFiles = len(ids)
	return index.Live(byID), nil
}

// checkPacksStored refuses to prune when an indexed pack is missing or
// shorter than its blobs need (RELIABILITY B2). A pack the listing misses is
// asked for by name before it counts as missing: listings may lag (C3).
func checkPacksStored(ctx context.Context, r *repository.Repository, indexed map[repo.ID]index.PackEntry, listed map[repo.ID]backend.FileInfo) error {
	var missing, short []string
	for id, e := range indexed {
		fi, ok := listed[id]
		if !ok {
			var err error
			fi, err = r.Backend().Stat(ctx, backend.Handle{Type: backend.PackFile, Name: id.String()})
			if errors.Is(err, backend.ErrNotExist) {
				missing = append(missing, id.Short())
				continue
			}
			if err != nil {
				return err
			}
			listed[id] = fi
		}
		if fi.Size < pack.ExpectedSize(e.Blobs) {
			short = append(short, id.Short())
		}
	}
	if len(missing)+len(short) == 0 {
		return nil
	}
	slices.Sort(missing)
	slices.Sort(short)
	return fmt.Errorf("%w: the index names %d missing and %d truncated packs (%s): run `bunker repair index`, then `bunker repair snapshots`",
		ErrNeedsRepair, len(missing), len(short), firstFew(append(missing, short...)))
}

// usedBlobs walks every snapshot and returns the set of blobs they use
// (values false: not yet claimed by a pack). A tree that cannot be read
// stops the prune; data blobs no pack holds are found when packs claim them.
func usedBlobs(ctx context.Context, r *repository.Repository, snaps []*snapshot.Snapshot, ids map[repo.ID]bool) (map[repo.BlobHandle]bool, error) {
	used := make(map[repo.BlobHandle]bool, r.Index().Len())
	seen := map[repo.ID]bool{}
	var damaged []string
	for _, sn := range snaps {
		ids[sn.ID] = true
		bad := 0
		err := r.WalkTree(ctx, sn.Tree, seen, func(h repo.BlobHandle, err error) error {
			if err != nil && !isDamage(err) {
				return err // the storage failed: nothing is known to be wrong
			}
			if err != nil {
				bad++
				return nil
			}
			used[h] = false
			return nil
		})
		if err != nil {
			return nil, err
		}
		if bad > 0 {
			damaged = append(damaged, fmt.Sprintf("%s (%d blobs)", sn.ID.Short(), bad))
		}
	}
	if len(damaged) > 0 {
		return nil, fmt.Errorf("%w: snapshots refer to data that is not in the index: %s: run `bunker repair index`, then `bunker repair snapshots`",
			ErrNeedsRepair, firstFew(damaged))
	}
	return used, nil
}

// Result is what Execute did.
type Result struct {
	NewPacks       int       `json:"new_packs"`
	DeletedPacks   int       `json:"deleted_packs"`
	DeletedBytes   int64     `json:"deleted_bytes"`
	DeletedIndexes int       `json:"deleted_index_files"`
	Rescued        []repo.ID `json:"rescued_packs,omitempty"`
	// StillLocked: packs to delete that Object Lock still holds; a later
	// prune deletes them once they expire.
	StillLocked   []repo.ID `json:"still_locked_packs,omitempty"`
	LocksExtended int       `json:"locks_extended,omitempty"`
	NewIndex      repo.ID   `json:"new_index"`
}

// Execute carries out a plan made by MakePlan on the same handle.
func Execute(ctx context.Context, r *repository.Repository, p *Plan, opts Options) (*Result, error) {
	opts.defaults()
	res := &Result{}
	if p.Nothing() {
		if rt, ok := r.Retainer(); ok {
			n, err := ExtendLocks(ctx, r, rt)
			res.LocksExtended = n
			return res, err
		}
		return res, nil
	}
	progress := func(format string, args ...any) {
		if opts.Progress != nil {
			opts.Progress(fmt.Sprintf(format, args...))
		}
	}
	check := func() error {
		if opts.Lock == nil {
			return nil
		}
		return opts.Lock.Check(ctx)
	}

	// 1. Copy the used blobs of packs to repack, against an index of the
	// packs that stay, so that a blob also held by a kept pack is not copied.
	next := index.New()
	for _, e := range p.kept {
		next.AddPack(e.ID, e.Blobs)
	}
	r.SetIndex(next)
	defer r.SetIndex(p.trees)
	if len(p.Repack) > 0 {
		progress("repacking %d packs", len(p.Repack))
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	for _, pi := range p.Repack {
		g.Go(func() error {
			if err := r.CopyBlobs(gctx, pi.ID, p.copyBlobs[pi.ID]); err != nil {
				return fmt.Errorf("repack: %w (nothing deleted; run `bunker check --read-data`)", err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		r.Abort()
		return nil, err
	}
	newPacks, err := r.FlushPacks(ctx)
	if err != nil {
		return nil, fmt.Errorf("repack: %w", err)
	}
	res.NewPacks = len(newPacks)
	repository.Failpoint(FailpointRepacked)

	// 2. One index file naming every pack that stays and superseding all
	// the files read: from here on the doomed packs are unreferenced.
	if err := check(); err != nil {
		return nil, err
	}
	// stop ends a prune that wrote (or may have written) its new index but
	// cannot prove the deletions safe: every doomed pack is indexed again,
	// whatever the context, and nothing is deleted.
	stop := func(cause error) error {
		if len(p.doomed) == 0 {
			return fmt.Errorf("prune stopped before deleting anything: %w", cause)
		}
		rf := &index.File{}
		for _, e := range p.doomed {
			rf.Packs = append(rf.Packs, e)
		}
		if _, err := r.SaveIndex(context.WithoutCancel(ctx), rf); err != nil {
			return fmt.Errorf("prune stopped before deleting (%w), and indexing its packs again failed: %w: run `bunker repair index`", cause, err)
		}
		return fmt.Errorf("prune stopped before deleting anything: %w", cause)
	}
	f := &index.File{Supersedes: p.indexFiles, Packs: append(slices.Clone(p.kept), newPacks...)}
	if res.NewIndex, err = r.SaveIndex(ctx, f); err != nil {
		return nil, stop(err) // it may be stored even so
	}
	repository.Failpoint(FailpointIndexed)
	indexedAt := time.Now()

	// 3. Wait out the commit window of backups that checked the index
	// before it changed, then rescue what the snapshots they wrote use.
	if wait := opts.Wait - time.Since(indexedAt); wait > 0 {
		progress("waiting %s for backups committing meanwhile", wait.Round(time.Second))
		select {
		case <-ctx.Done():
			return nil, stop(ctx.Err())
		case <-time.After(wait):
		}
	}
	rescued, unindexedKeep, err := rescan(ctx, r, p, next, res.NewIndex)
	if err != nil {
		// Whether a snapshot written meanwhile needs a doomed pack cannot be told.
		return nil, stop(err)
	}
	if len(rescued) > 0 {
		rf := &index.File{}
		for _, id := range rescued {
			rf.Packs = append(rf.Packs, p.doomed[id])
		}
		if _, err := r.SaveIndex(ctx, rf); err != nil {
			return nil, stop(err)
		}
		res.Rescued = rescued
	}

	// 4. Delete, checking the lock between batches.
	var victims []PackInfo
	for _, l := range [][]PackInfo{p.Delete, p.Repack, p.Unindexed} {
		for _, pi := range l {
			if !slices.Contains(rescued, pi.ID) && !unindexedKeep[pi.ID] {
				victims = append(victims, pi)
			}
		}
	}
	progress("deleting %d packs", len(victims))
	// remove deletes one file unless Object Lock still holds it (then it
	// stays, unindexed or superseded, for a later prune).
	remove := r.RemoveUnlessRetained
	var mu sync.Mutex
	const batch = 64
	for i := 0; i < len(victims); i += batch {
		if err := check(); err != nil {
			return res, fmt.Errorf("stopped deleting after %d packs: %w", res.DeletedPacks, err)
		}
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(8)
		for _, pi := range victims[i:min(i+batch, len(victims))] {
			g.Go(func() error {
				done, err := remove(gctx, backend.Handle{Type: backend.PackFile, Name: pi.ID.String()})
				mu.Lock()
				defer mu.Unlock()
				if done {
					res.DeletedPacks++
					res.DeletedBytes += pi.Size
				} else if err == nil {
					res.StillLocked = append(res.StillLocked, pi.ID)
				}
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return res, fmt.Errorf("delete packs: %w", err)
		}
		repository.Failpoint(FailpointDeleting)
	}
	if err := check(); err != nil {
		return res, err
	}
	for _, id := range p.indexFiles {
		done, err := remove(ctx, backend.Handle{Type: backend.IndexFile, Name: id.String()})
		if err != nil {
			return res, fmt.Errorf("delete superseded index %s: %w", id.Short(), err)
		}
		if done {
			res.DeletedIndexes++
		}
	}
	if rt, locked := r.Retainer(); locked {
		n, err := ExtendLocks(ctx, r, rt)
		res.LocksExtended = n
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// ExtendLocks makes sure every object that the repository still uses stays
// locked for at least half the lock period: objects whose retain-until date
// is nearer are extended to a full period from now. In use are the index
// files no other supersedes, the packs they name, the keys, the config and
// the settings; what is no longer used (superseded index files, packs no
// index names, which prune deletes once they expire) is left to expire, and
// so are snapshot files, which forget extends for the snapshots it keeps.
// It returns how many locks it extended.
func ExtendLocks(ctx context.Context, r *repository.Repository, rt backend.Retainer) (int, error) {
	ids, files, err := r.LoadIndexFiles(ctx)
	if err != nil {
		return 0, err
	}
	byID := make(map[repo.ID]*index.File, len(ids))
	superseded := map[repo.ID]bool{}
	for i, id := range ids {
		byID[id] = files[i]
		for _, s := range files[i].Supersedes {
			superseded[s] = true
		}
	}
	var handles []backend.Handle
	for _, id := range ids {
		if !superseded[id] {
			handles = append(handles, backend.Handle{Type: backend.IndexFile, Name: id.String()})
		}
	}
	seen := map[repo.ID]bool{}
	for _, e := range index.Live(byID) {
		if !seen[e.ID] {
			seen[e.ID] = true
			handles = append(handles, backend.Handle{Type: backend.PackFile, Name: e.ID.String()})
		}
	}
	handles = append(handles, backend.Handle{Type: backend.ConfigFile})
	for _, t := range []backend.FileType{backend.KeyFile, backend.SettingsFile} {
		err := r.Backend().List(ctx, t, func(fi backend.FileInfo) error {
			handles = append(handles, backend.Handle{Type: t, Name: fi.Name})
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	return ExtendHandles(ctx, r, rt, handles)
}

// ExtendHandles extends the locks of the given objects that end within half
// the lock period to a full period from now.
func ExtendHandles(ctx context.Context, r *repository.Repository, rt backend.Retainer, handles []backend.Handle) (int, error) {
	period := r.LockDuration()
	now := time.Now()
	var extended atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, h := range handles {
		g.Go(func() error {
			_, until, err := rt.Retention(gctx, h)
			if errors.Is(err, backend.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			if until.Sub(now) >= period/2 {
				return nil
			}
			if err := rt.ExtendRetention(gctx, h, now.Add(period)); err != nil {
				return err
			}
			extended.Add(1)
			return nil
		})
	}
	err := g.Wait()
	return int(extended.Load()), err
}

// rescan looks at what appeared since the plan: snapshots written by backups
// that committed while the index changed (their blobs in doomed packs rescue
// those packs) and index files written by them (their packs are not
// unindexed garbage).
// newIdx holds the packs of the index prune wrote (kept and new packs).
func rescan(ctx context.Context, r *repository.Repository, p *Plan, newIdx *index.Index, writtenID repo.ID) ([]repo.ID, map[repo.ID]bool, error) {
	keep := map[repo.ID]bool{}
	known := map[repo.ID]bool{writtenID: true}
	for _, id := range p.indexFiles {
		known[id] = true
	}
	ids, err := r.List(ctx, backend.IndexFile)
	if err != nil {
		return nil, nil, fmt.Errorf("list index: %w", err)
	}
	for _, id := range ids {
		if known[id] {
			continue
		}
		f, err := r.LoadIndexFile(ctx, id)
		if err != nil {
			return nil, nil, fmt.Errorf("index file %s written during prune: %w", id.Short(), err)
		}
		for _, e := range f.Packs {
			keep[e.ID] = true
			newIdx.AddPack(e.ID, e.Blobs)
			addTrees(p.trees, e)
		}
	}
	snaps, err := r.List(ctx, backend.SnapshotFile)
	if err != nil {
		return nil, nil, fmt.Errorf("list snapshots: %w", err)
	}
	r.SetIndex(p.trees) // the new snapshots' trees may be only in doomed packs
	wanted := map[repo.BlobHandle]bool{}
	seen := map[repo.ID]bool{}
	for _, id := range snaps {
		if p.snapIDs[id] {
			continue
		}
		sn, err := r.LoadSnapshot(ctx, id)
		if errors.Is(err, backend.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("snapshot %s written during prune: %w", id.Short(), err)
		}
		err = r.WalkTree(ctx, sn.Tree, seen, func(h repo.BlobHandle, err error) error {
			if err != nil {
				// What is below this tree cannot be known: nothing is safe to delete.
				return fmt.Errorf("snapshot %s written during prune: %w", id.Short(), err)
			}
			if !newIdx.Has(h) {
				wanted[h] = true
			}
			return nil
		})
		if err != nil {
			return nil, nil, err
		}
	}
	var out []repo.ID
	if len(wanted) > 0 {
		found := map[repo.BlobHandle]bool{}
		for id, e := range p.doomed {
			held := false
			for _, b := range e.Blobs {
				if h := b.Handle(); wanted[h] {
					found[h], held = true, true
				}
			}
			if held {
				out = append(out, id)
			}
		}
		if len(found) < len(wanted) {
			return nil, nil, fmt.Errorf("snapshots written during prune use %d blobs that no pack is known to hold", len(wanted)-len(found))
		}
	}
	sortIDs(out)
	return out, keep, nil
}

// isDamage reports whether err says that stored data is missing or corrupt
// for good, as opposed to a storage failure that may pass.
func isDamage(err error) bool {
	return errors.Is(err, repository.ErrCorrupt) || errors.Is(err, repository.ErrBlobNotFound) ||
		errors.Is(err, backend.ErrNotExist) || errors.Is(err, crypto.ErrUnauthenticated)
}

// damage marks err as ErrNeedsRepair when it is damage, and leaves storage
// failures as they are.
func damage(err error, hint string) error {
	if isDamage(err) {
		return fmt.Errorf("%w: %w%s", ErrNeedsRepair, err, hint)
	}
	return err
}

func sortIDs(ids []repo.ID) {
	sort.Slice(ids, func(i, j int) bool { return string(ids[i][:]) < string(ids[j][:]) })
}

func firstFew(s []string) string {
	if len(s) > 5 {
		return fmt.Sprintf("%v and %d more", s[:5], len(s)-5)
	}
	return fmt.Sprint(s)
}

// addTrees adds the tree blobs of one pack to x.
func addTrees(x *index.Index, e index.PackEntry) {
	var trees []pack.Blob
	for _, b := range e.Blobs {
		if b.Type == repo.TreeBlob {
			trees = append(trees, b)
		}
	}
	if len(trees) > 0 {
		x.AddPack(e.ID, trees)
	}
}
