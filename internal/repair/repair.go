// Package repair rebuilds a damaged repository's index from its packs and
// rewrites snapshots that refer to lost data so that they restore what is
// left, naming exactly what was lost.
package repair

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"runtime"
	"slices"
	"sort"
	"sync"

	"golang.org/x/sync/errgroup"

	"bunker/internal/backend"
	"bunker/internal/repo"
	"bunker/internal/repo/crypto"
	"bunker/internal/repo/index"
	"bunker/internal/repo/pack"
	"bunker/internal/repo/repository"
	"bunker/internal/snapshot"
)

// IndexResult is what RebuildIndex found and did.
type IndexResult struct {
	Packs   int      `json:"packs"`
	Blobs   int      `json:"blobs"`
	Damaged []string `json:"damaged_packs,omitempty"` // packs whose header does not decode
	// DamagedData: with ReadData, packs whose header decodes but whose
	// content does not: BadBlobs blobs in them fail to verify, or the
	// bytes do not hash to the pack's name. Their blobs that verify were
	// copied to new packs and each such pack removed (with dryRun, nothing:
	// the packs are named, and their intact blobs counted as indexed).
	DamagedData []string `json:"damaged_data_packs,omitempty"`
	// RemovedPacks: the DamagedData packs removed once the new index was
	// stored (a plain repair index would otherwise index them again), and
	// StillLocked those Object Lock still holds: prune removes them once it
	// runs out, and until then a plain repair index indexes them again.
	RemovedPacks []string `json:"removed_packs,omitempty"`
	StillLocked  []string `json:"still_locked_packs,omitempty"`
	BadBlobs     int      `json:"bad_blobs"`
	PacksRead    int      `json:"packs_read"`
	// Salvaged: damaged packs the old index files had entries for. Each of
	// those blobs that still reads back whole and verifies was copied to a
	// new pack (with dryRun, none: they are only counted as indexed); the
	// damaged pack is no longer indexed, and is left for inspection until
	// prune removes it as unindexed.
	Salvaged []string `json:"salvaged_packs,omitempty"`
	// SalvagedBlobs counts the blobs copied from Salvaged and DamagedData.
	SalvagedBlobs int    `json:"salvaged_blobs"`
	LostBlobs     int    `json:"lost_blobs"` // blobs the old index named that no readable pack holds
	Superseded    int    `json:"superseded_index_files"`
	NewIndex      string `json:"new_index,omitempty"`
}

// RebuildIndex reads the header of every pack and writes one index file that
// names them all and supersedes every existing index file, which it then
// removes. A pack whose header cannot be read (damaged, truncated) is
// reported and left out; the blobs the old index placed in it that still
// verify are copied to new packs first (see IndexResult.Salvaged). Run it
// under the exclusive lock; with dryRun it writes and removes nothing.
func RebuildIndex(ctx context.Context, r *repository.Repository, dryRun bool, opts ...Option) (*IndexResult, error) {
	o := options(opts)
	var infos []backend.FileInfo
	err := r.Backend().List(ctx, backend.PackFile, func(fi backend.FileInfo) error {
		if _, err := repo.ParseID(fi.Name); err == nil {
			infos = append(infos, fi)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list packs: %w", err)
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name < infos[j].Name })
	entries := make([]*index.PackEntry, len(infos))
	res := &IndexResult{}
	var salvage []salvageJob
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, fi := range infos {
		g.Go(func() error {
			id, _ := repo.ParseID(fi.Name)
			blobs, err := r.ReadPackHeader(gctx, id, fi.Size)
			if gctx.Err() != nil {
				return gctx.Err()
			}
			if err != nil {
				if !isLost(err) {
					return fmt.Errorf("read header of pack %s: %w (nothing changed)", id.Short(), err)
				}
				mu.Lock()
				res.Damaged = append(res.Damaged, id.String())
				mu.Unlock()
				return nil
			}
			entries[i] = &index.PackEntry{ID: id, Blobs: blobs}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	slices.Sort(res.Damaged)
	// With ReadData, every pack whose header decodes is read whole too: a
	// bit flip inside a blob leaves the header intact, and the index would
	// otherwise keep naming the damaged blob, so that every later backup
	// of the same data deduplicated against it instead of storing it again.
	var readBad map[repo.ID]*packDamage
	if o.readData {
		var err error
		if readBad, err = readPacks(ctx, r, infos, entries, res); err != nil {
			return nil, err
		}
		for i, e := range entries {
			if e == nil || readBad[e.ID] == nil {
				continue
			}
			d := readBad[e.ID]
			res.DamagedData = append(res.DamagedData, e.ID.String())
			switch {
			case dryRun && d.blobs == nil:
				entries[i] = nil // unreadable: counted as lost
			case dryRun:
				// Counted as the real run will leave it: the blobs that
				// verified indexed (from new packs), the others lost.
				keep := index.PackEntry{ID: e.ID}
				for _, b := range e.Blobs {
					if !d.blobs[b.Handle()] {
						keep.Blobs = append(keep.Blobs, b)
					}
				}
				entries[i] = &keep
			default:
				// The pack was just read whole: any failure to read it again
				// is the storage's, not damage (strict).
				salvage = append(salvage, salvageJob{entry: *e, size: infos[i].Size, strict: d.blobs != nil})
				entries[i] = nil
			}
		}
	}

	old, err := r.List(ctx, backend.IndexFile)
	if err != nil {
		return nil, fmt.Errorf("list index: %w", err)
	}
	res.Superseded = len(old)
	var oldFiles []*index.File
	oldEntries := map[repo.ID]index.PackEntry{}
	for _, id := range old {
		of, err := r.LoadIndexFile(ctx, id)
		if err != nil {
			if !isLost(err) {
				return nil, fmt.Errorf("read index file %s: %w (nothing changed)", id.Short(), err)
			}
			continue // a damaged index file is what this repairs
		}
		oldFiles = append(oldFiles, of)
		for _, p := range of.Packs {
			if len(p.Blobs) > len(oldEntries[p.ID].Blobs) {
				oldEntries[p.ID] = p
			}
		}
	}
	// A pack whose own header is damaged may still hold intact blobs that
	// the old index places: those are salvaged below (or, in a dry run,
	// counted as if they were).
	for i, fi := range infos {
		id, _ := repo.ParseID(fi.Name)
		if e, ok := oldEntries[id]; ok && entries[i] == nil && slices.Contains(res.Damaged, id.String()) {
			res.Salvaged = append(res.Salvaged, id.String())
			if dryRun {
				entries[i] = &e
			} else {
				salvage = append(salvage, salvageJob{entry: e, size: fi.Size})
			}
		}
	}
	f := &index.File{}
	now := index.New()
	add := func(e index.PackEntry) {
		f.Packs = append(f.Packs, e)
		now.AddPack(e.ID, e.Blobs)
		res.Packs++
		res.Blobs += len(e.Blobs)
	}
	for _, e := range entries {
		if e != nil {
			add(*e)
		}
	}
	if len(salvage) > 0 {
		if err := o.check(ctx); err != nil {
			return nil, err
		}
		packs, n, err := salvageBlobs(ctx, r, now, salvage)
		if err != nil {
			return nil, err
		}
		// A pack read whole just before is removed below (a plain repair
		// index would otherwise index its damaged blobs again), so every
		// blob of it that verified then must be held by a pack now.
		for _, j := range salvage {
			if !j.strict {
				continue
			}
			for _, b := range j.entry.Blobs {
				if !now.Has(b.Handle()) && !readBad[j.entry.ID].blobs[b.Handle()] {
					return nil, fmt.Errorf("salvage pack %s: blob %s verified on the first read but not on the second (a storage or memory fault): index unchanged, nothing removed (the packs written are left for prune); run the repair again", j.entry.ID.Short(), b.ID.Short())
				}
			}
		}
		res.SalvagedBlobs = n
		// Their blobs are in now already: the packs were stored against it.
		f.Packs = append(f.Packs, packs...)
		res.Packs += len(packs)
		res.Blobs += n
	}
	lost := map[repo.BlobHandle]bool{}
	for _, of := range oldFiles {
		for _, p := range of.Packs {
			for _, b := range p.Blobs {
				if !now.Has(b.Handle()) {
					lost[b.Handle()] = true
				}
			}
		}
	}
	res.LostBlobs = len(lost)
	if dryRun {
		return res, nil
	}
	if err := o.check(ctx); err != nil {
		return nil, err
	}
	f.Supersedes = old
	id, err := r.SaveIndex(ctx, f)
	if err != nil {
		return nil, err
	}
	res.NewIndex = id.String()
	// A pack with damaged content still has a readable header: left in
	// place, the next plain repair index would index it, damaged blobs and
	// all, and backups would deduplicate against them again. No index names
	// it now (the old index files are superseded), and what of it verified
	// (twice) is in new packs. Removed before the old index files, as prune
	// does, so that a failure there does not leave it.
	if err := o.check(ctx); err != nil {
		return res, err
	}
	for _, j := range salvage {
		if !j.strict {
			continue
		}
		h := backend.Handle{Type: backend.PackFile, Name: j.entry.ID.String()}
		removed, err := r.RemoveUnlessRetained(ctx, h)
		if err != nil {
			return res, fmt.Errorf("remove damaged pack %s: %w (its intact blobs are in new packs; until it is removed, a plain `repair index` indexes its damaged blobs again)", j.entry.ID.Short(), err)
		}
		if removed {
			res.RemovedPacks = append(res.RemovedPacks, j.entry.ID.String())
		} else {
			res.StillLocked = append(res.StillLocked, j.entry.ID.String())
		}
	}
	if err := o.check(ctx); err != nil {
		return res, err
	}
	for _, o := range old {
		// One Object Lock still holds stays: superseded, it is not read.
		if _, err := r.RemoveUnlessRetained(ctx, backend.Handle{Type: backend.IndexFile, Name: o.String()}); err != nil {
			return res, fmt.Errorf("remove superseded index %s: %w", o.Short(), err)
		}
	}
	return res, nil
}

// packDamage is what reading a pack whole found wrong with it: the blobs
// that failed to verify (nil if the pack could not be read at all; empty if
// only the hash of its bytes is wrong).
type packDamage struct {
	blobs map[repo.BlobHandle]bool
}

// readPacks reads every pack that has an entry (its header decoded) whole,
// verifying each blob its header lists and the hash of all its bytes, and
// returns the packs that failed; res counts the packs read and bad blobs.
func readPacks(ctx context.Context, r *repository.Repository, infos []backend.FileInfo, entries []*index.PackEntry, res *IndexResult) (map[repo.ID]*packDamage, error) {
	bad := map[repo.ID]*packDamage{}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0) + 1)
	for i, e := range entries {
		if e == nil {
			continue
		}
		g.Go(func() error {
			blobs := slices.Clone(e.Blobs)
			sort.Slice(blobs, func(a, b int) bool { return blobs[a].Offset < blobs[b].Offset })
			failed := map[repo.BlobHandle]bool{}
			ps, err := r.ReadPack(gctx, e.ID, infos[i].Size, blobs, func(b pack.Blob, _ []byte, err error) error {
				if err != nil {
					failed[b.Handle()] = true
				}
				return nil
			})
			if gctx.Err() != nil {
				return gctx.Err()
			}
			if err != nil && !isLost(err) {
				return fmt.Errorf("read pack %s: %w (nothing changed)", e.ID.Short(), err)
			}
			mu.Lock()
			defer mu.Unlock()
			res.PacksRead++
			res.BadBlobs += len(failed)
			switch {
			case err != nil: // gone since it was listed
				bad[e.ID] = &packDamage{}
			case len(failed) > 0 || ps.Hash != e.ID || ps.HeaderErr != nil:
				bad[e.ID] = &packDamage{blobs: failed}
			}
			return nil
		})
	}
	return bad, g.Wait()
}

// salvageJob is a damaged pack of size bytes, with its old index entry (or
// its own header's). strict: the pack was just read whole, so a read that
// ends early now is the storage failing, not the pack's damage.
type salvageJob struct {
	entry  index.PackEntry
	size   int64
	strict bool
}

// salvageBlobs copies to new packs the blobs of the damaged packs that no
// pack of now holds and that still read back whole and verify, and returns
// the new packs and how many blobs they hold. Blobs past a pack's end (it
// was truncated) or that fail to verify are left: lost.
func salvageBlobs(ctx context.Context, r *repository.Repository, now *index.Index, jobs []salvageJob) ([]index.PackEntry, int, error) {
	// Against an index of the readable packs only, so that every blob the
	// damaged packs alone hold is copied (and each once).
	prev := r.SetIndex(now)
	defer r.SetIndex(prev)
	for _, j := range jobs {
		var blobs []pack.Blob
		for _, b := range j.entry.Blobs {
			if int64(b.Offset)+int64(b.Length) <= j.size {
				blobs = append(blobs, b)
			}
		}
		sort.Slice(blobs, func(a, b int) bool { return blobs[a].Offset < blobs[b].Offset })
		err := r.CopySealed(ctx, r, j.entry.ID, blobs, func(pack.Blob, error) {})
		if err != nil && (j.strict || !isLost(err) && !errors.Is(err, io.ErrUnexpectedEOF)) {
			r.Abort()
			return nil, 0, fmt.Errorf("salvage pack %s: %w (index unchanged, nothing removed)", j.entry.ID.Short(), err)
		}
	}
	packs, err := r.FlushPacks(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("salvage: %w (nothing changed)", err)
	}
	n := 0
	for _, p := range packs {
		n += len(p.Blobs)
	}
	return packs, n, nil
}

// repairedKey identifies the repaired copy of sn with root tree tree: the
// same tree, time, host and paths.
func repairedKey(sn *snapshot.Snapshot, tree repo.ID) string {
	return fmt.Sprintf("%s %d %q %q", tree, sn.Time.UnixNano(), sn.Hostname, sn.Paths)
}

// SnapshotResult describes the repair of one snapshot.
type SnapshotResult struct {
	ID       string   `json:"id"`
	Lost     []string `json:"lost"`      // paths removed from the snapshot
	RootLost bool     `json:"root_lost"` // nothing of it can be restored
	// Unreadable: the snapshot file itself is damaged (it does not match
	// its name, decrypt or decode), so RootLost is set too.
	Unreadable bool   `json:"unreadable,omitempty"`
	New        string `json:"new_id,omitempty"`  // the rewritten snapshot
	Removed    bool   `json:"removed,omitempty"` // the original was removed (--forget)
	// KeptByFloor: --forget did not remove the original, which is younger
	// than the repository's min-retention.
	KeptByFloor bool `json:"kept_by_min_retention,omitempty"`
}

// Option tunes a repair.
type Option func(*opts)

type opts struct {
	lock     *repository.Lock
	keep     func(*snapshot.Snapshot) bool
	readData bool
}

func options(list []Option) opts {
	var o opts
	for _, f := range list {
		f(&o)
	}
	return o
}

// check verifies the lock before a commit, if one was given.
func (o opts) check(ctx context.Context) error {
	if o.lock == nil {
		return nil
	}
	return o.lock.Check(ctx)
}

// ReadData makes RebuildIndex read every pack whole and verify each blob,
// not only the packs' headers (see IndexResult.DamagedData).
func ReadData() Option { return func(o *opts) { o.readData = true } }

// WithLock makes a repair check its lock before every commit.
func WithLock(l *repository.Lock) Option { return func(o *opts) { o.lock = l } }

// KeepSnapshots makes `repair snapshots --forget` keep the originals keep
// returns true for (the min-retention floor).
func KeepSnapshots(keep func(*snapshot.Snapshot) bool) Option {
	return func(o *opts) { o.keep = keep }
}

// RepairedTag marks snapshots written by RepairSnapshots.
const RepairedTag = snapshot.RepairedTag

// Snapshots rewrites every snapshot that refers to data the index does not
// hold: files with a missing data blob and directories whose tree is missing
// or damaged are left out, every other entry is kept as it was. The new
// snapshot keeps the original's time, host and paths and gets the tag
// "repaired". With forget the original is removed once the new one is
// stored (and a snapshot whose root tree is lost, or whose own file is
// damaged, is removed). With dryRun
// nothing is written. Run it after RebuildIndex, under the exclusive lock,
// with the index loaded.
func Snapshots(ctx context.Context, r *repository.Repository, dryRun, forget bool, opts ...Option) ([]SnapshotResult, error) {
	o := options(opts)
	snaps, damaged, err := r.ReadableSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	// forgetOriginal removes a repaired or unreadable original (with
	// forget, unless the min-retention floor keeps it).
	forgetOriginal := func(res *SnapshotResult, sn *snapshot.Snapshot) error {
		switch {
		case dryRun || !forget:
		case o.keep != nil && o.keep(sn):
			res.KeptByFloor = true
		default:
			if err := o.check(ctx); err != nil {
				return err
			}
			if err := r.Backend().Remove(ctx, backend.Handle{Type: backend.SnapshotFile, Name: sn.ID.String()}); err != nil {
				return fmt.Errorf("remove snapshot %s: %w", sn.ID.Short(), err)
			}
			res.Removed = true
		}
		return nil
	}
	rw := &rewriter{r: r, dryRun: dryRun, done: map[repo.ID]treeResult{}}
	// The repaired copies a run before wrote: running again (say with
	// --forget after a first run without it) reuses them rather than
	// write the same copy twice.
	repaired := map[string]repo.ID{}
	for _, sn := range snaps {
		if slices.Contains(sn.Tags, RepairedTag) {
			repaired[repairedKey(sn, sn.Tree)] = sn.ID
		}
	}
	var out []SnapshotResult
	for _, sn := range snaps {
		res := SnapshotResult{ID: sn.ID.String()}
		newTree, lost, err := rw.tree(ctx, sn.Tree, "/")
		if err != nil {
			return out, err
		}
		switch {
		case len(lost) == 0 && newTree == sn.Tree:
			continue // whole
		case newTree.IsNull():
			res.RootLost = true
			res.Lost = []string{"/"}
		default:
			res.Lost = lost
		}
		if id, ok := repaired[repairedKey(sn, newTree)]; ok && !dryRun && !res.RootLost {
			res.New = id.String()
		} else if !dryRun && !res.RootLost {
			if err := o.check(ctx); err != nil {
				return out, err
			}
			if err := r.Flush(ctx); err != nil {
				return out, err
			}
			ns := *sn
			ns.Tree = newTree
			ns.Tags = append(slices.Clone(sn.Tags), RepairedTag)
			ns.Summary = nil
			// No longer the copy of its original: a later copy must not
			// take it as present, nor pair its trees with the source's.
			ns.Original, ns.OriginalRepo = nil, ""
			id, err := r.SaveSnapshot(ctx, &ns)
			if err != nil {
				return out, err
			}
			res.New = id.String()
		}
		if err := forgetOriginal(&res, sn); err != nil {
			return out, err
		}
		out = append(out, res)
	}
	// A damaged snapshot file holds nothing to rewrite; --forget removes it
	// like an original whose root tree is lost. Its own time cannot be
	// read, so the floor goes by the time the storage stored it.
	for _, d := range damaged {
		res := SnapshotResult{ID: d.ID.String(), Lost: []string{"/"}, RootLost: true, Unreadable: true}
		if err := forgetOriginal(&res, &snapshot.Snapshot{ID: d.ID}); err != nil {
			return out, err
		}
		out = append(out, res)
	}
	return out, nil
}

type treeResult struct {
	id   repo.ID
	lost []string // relative to the tree
}

type rewriter struct {
	r      *repository.Repository
	dryRun bool
	done   map[repo.ID]treeResult
}

// tree returns the ID of the tree id with everything lost left out (the zero
// ID if the tree itself is lost) and the lost paths below dir.
func (w *rewriter) tree(ctx context.Context, id repo.ID, dir string) (repo.ID, []string, error) {
	if tr, ok := w.done[id]; ok {
		lost := make([]string, len(tr.lost))
		for i, l := range tr.lost {
			lost[i] = path.Join(dir, l)
		}
		return tr.id, lost, nil
	}
	data, err := w.r.LoadBlob(ctx, repo.TreeBlob, id)
	var t *snapshot.Tree
	if err == nil {
		t, err = snapshot.DecodeTree(data)
	}
	if ctx.Err() != nil {
		return repo.ID{}, nil, ctx.Err()
	}
	if err != nil {
		if !isLost(err) {
			// The storage failed; the tree may be fine. Stop rather than
			// rewrite a snapshot around data that is not lost.
			return repo.ID{}, nil, fmt.Errorf("tree %s: %w", id.Short(), err)
		}
		w.done[id] = treeResult{}
		return repo.ID{}, nil, nil
	}
	var rel []string
	nt := &snapshot.Tree{}
	for _, n := range t.Nodes {
		switch {
		case n.Type == snapshot.TypeDir:
			sub, lost, err := w.tree(ctx, n.Subtree, n.Name)
			if err != nil {
				return repo.ID{}, nil, err
			}
			if sub.IsNull() {
				rel = append(rel, n.Name+"/")
				continue
			}
			rel = append(rel, lost...)
			if sub != n.Subtree {
				c := *n
				c.Subtree = sub
				n = &c
			}
		case slices.ContainsFunc(n.Content, func(c repo.ID) bool { return !w.r.HasBlob(repo.BlobHandle{Type: repo.DataBlob, ID: c}) }):
			rel = append(rel, n.Name)
			continue
		}
		nt.Nodes = append(nt.Nodes, n)
	}
	newID := id
	if len(rel) > 0 || len(nt.Nodes) != len(t.Nodes) {
		enc := nt.Encode()
		if w.dryRun {
			newID = w.r.BlobID(enc)
		} else if newID, _, _, err = w.r.SaveBlob(ctx, repo.TreeBlob, enc, repo.ID{}); err != nil {
			return repo.ID{}, nil, err
		}
	}
	w.done[id] = treeResult{id: newID, lost: rel}
	lost := make([]string, len(rel))
	for i, l := range rel {
		lost[i] = path.Join(dir, l)
	}
	return newID, lost, nil
}

// isLost reports whether err says that a blob is gone or damaged for good:
// no index names it, its pack is missing, or it does not decode.
func isLost(err error) bool {
	return errors.Is(err, repository.ErrBlobNotFound) || errors.Is(err, backend.ErrNotExist) ||
		errors.Is(err, repository.ErrCorrupt) || errors.Is(err, snapshot.ErrInvalidTree) ||
		errors.Is(err, pack.ErrInvalid) || errors.Is(err, crypto.ErrUnauthenticated)
}
