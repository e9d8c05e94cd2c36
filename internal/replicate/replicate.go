// Package replicate copies snapshots from one repository to another (the
// off-site copy): each snapshot the target lacks, with everything it refers
// to that the target lacks, every blob verified before the target refers to
// it, in the order packs -> index -> snapshot, so that the target is
// consistent at every moment and an interrupted copy, run again, moves only
// what is still missing. Nothing is ever deleted from the target.
//
// Two ways to move data:
//
//   - pack level, when the target shares the source's keys (made with
//     `init --copy-params-from`): blob IDs are the same on both sides, and
//     packs move as they are (whole, or blob by blob still sealed when only
//     a small part of a pack is wanted);
//   - re-encoding, otherwise: blob IDs are keyed hashes, so each blob gets
//     the target's ID, and every tree is rewritten to name the new IDs.
//
// A snapshot and its copies share an origin (snapshot.Origin): that is how
// the target's copies are recognised, so a copy with nothing new reads only
// the two snapshot lists.
package replicate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"bunker/internal/backend"
	"bunker/internal/repo"
	"bunker/internal/repo/pack"
	"bunker/internal/repo/repository"
	"bunker/internal/snapshot"
)

// Mode chooses how data moves.
type Mode int

// Modes.
const (
	// ModeAuto moves packs when the repositories share keys, else re-encodes.
	ModeAuto Mode = iota
	// ModePack requires a pack-level copy (ErrIncompatible otherwise).
	ModePack
	// ModeReencode re-encodes even when packs could move as they are.
	ModeReencode
)

// ParseMode parses a --mode value.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "", "auto":
		return ModeAuto, nil
	case "pack":
		return ModePack, nil
	case "reencode":
		return ModeReencode, nil
	}
	return 0, fmt.Errorf("unknown copy mode %q (want auto, pack or reencode)", s)
}

// Errors.
var (
	ErrSameRepository = errors.New("source and target are the same repository")
	ErrIncompatible   = errors.New("the target does not share the source's keys, so packs cannot move as they are (create the target with `bunker init --copy-params-from SOURCE`, or copy without --mode pack to re-encode)")
	// ErrDamagedSource is wrapped by the error of a snapshot that was not
	// copied because data it refers to is damaged or missing in the source.
	ErrDamagedSource = errors.New("damaged or missing in the source")
)

// Options tune a copy.
type Options struct {
	Mode   Mode
	DryRun bool
	// BatchBytes: after about this many bytes are read for copying, the
	// target's packs are flushed and indexed and the snapshots of the batch
	// committed. 0 means 1 GiB.
	BatchBytes int64
	// Workers is how many packs are read at once; 0 means 3.
	Workers int
	// Report, if set, is called for each snapshot once it is copied, found
	// unable to be copied, or (in a dry run) planned.
	Report func(SnapshotResult)
	// SourceLock, if set, is checked before each batch is committed.
	SourceLock *repository.Lock
	// Now is the clock for the lag; nil means time.Now.
	Now func() time.Time
	// Progress, if set, is updated as data moves.
	Progress *Progress
	// All lists every snapshot of the source (selected or not); the copies
	// the target holds of any of them speed up the copy of the selected
	// ones. Nil means only the selected ones.
	All []*snapshot.Snapshot
}

// Progress counts what has moved so far; safe to read while a copy runs.
type Progress struct {
	Blobs, Bytes atomic.Int64 // read from the source and stored (or found) in the target
	Snapshots    atomic.Int64 // committed in the target
}

// SnapshotResult is what happened to one snapshot of the source.
type SnapshotResult struct {
	Source *snapshot.Snapshot
	// Target is the ID of the new snapshot in the target (zero in a dry run
	// or when the copy failed).
	Target repo.ID
	Err    error
}

// Result sums up a copy.
type Result struct {
	// Mode is "pack" or "reencode".
	Mode   string
	DryRun bool
	// Selected snapshots; of them Present were already in the target.
	Selected, Present int
	Copied            []SnapshotResult
	Failed            []SnapshotResult
	// Blobs and Bytes (as stored in the source) read for copying; in a dry
	// run, what would be. WholePacks is how many packs moved as they are.
	Blobs      int
	Bytes      int64
	WholePacks int
	// Damaged lists damage found in the source (one line each).
	Damaged []string
	// LagBefore and LagAfter: the age of the newest selected snapshot the
	// target lacked before, and still lacks after, the copy (0: none).
	LagBefore, LagAfter time.Duration
	// NewestMissing is the snapshot that LagBefore measures (nil if none).
	NewestMissing *snapshot.Snapshot
}

type copier struct {
	src, dst *repository.Repository
	opts     Options
	pack     bool // pack-level copy
	srcID    string
	res      *Result

	// hints: the source snapshots that the target already holds, with the
	// target's tree for each (their origin is the same).
	hints []hint

	planned map[repo.BlobHandle]bool
	walked  map[repo.ID]bool
	want    map[repo.ID][]pack.Blob // source pack -> blobs to copy in this batch
	wantLen int64
	// Re-encoding: source ID -> target ID, for data blobs and for trees.
	mu      sync.Mutex
	blobMap map[repo.ID]repo.ID
	treeMap map[repo.ID]repo.ID
	trees   map[repo.ID]*snapshot.Tree // source trees of the batch
	bad     map[repo.BlobHandle]string
	// complete memoises target trees whose whole closure the target holds.
	complete map[repo.ID]bool
	packSize map[repo.ID]int64 // blob bytes per source pack, from its index
}

type hint struct {
	sn         *snapshot.Snapshot // in the source
	srcTree    repo.ID
	targetTree repo.ID
}

// Copy copies the selected snapshots of src that dst lacks. dst must be
// held under lock (shared), src should be (shared). The indexes are loaded
// only if something is to be copied. A snapshot whose data is damaged in
// src is reported in Result.Failed and not copied; the others are. The
// error is for what stops the whole copy (storage, a lost lock, ctx).
func Copy(ctx context.Context, src, dst *repository.Repository, lock *repository.Lock, selected []*snapshot.Snapshot, opts Options) (*Result, error) {
	if src.Config().ID == dst.Config().ID {
		return nil, fmt.Errorf("%w (ID %s)", ErrSameRepository, src.Config().ID[:8])
	}
	shared := dst.SharesKeys(src)
	if opts.Mode == ModePack && !shared {
		return nil, ErrIncompatible
	}
	if opts.BatchBytes <= 0 {
		opts.BatchBytes = 1 << 30
	}
	if opts.Workers <= 0 {
		opts.Workers = 3
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Progress == nil {
		opts.Progress = &Progress{}
	}
	c := &copier{
		src: src, dst: dst, opts: opts, pack: shared && opts.Mode != ModeReencode, srcID: src.Config().ID,
		res:     &Result{Mode: "reencode", DryRun: opts.DryRun, Selected: len(selected)},
		planned: map[repo.BlobHandle]bool{}, walked: map[repo.ID]bool{}, want: map[repo.ID][]pack.Blob{},
		blobMap: map[repo.ID]repo.ID{}, treeMap: map[repo.ID]repo.ID{}, trees: map[repo.ID]*snapshot.Tree{},
		bad: map[repo.BlobHandle]string{}, complete: map[repo.ID]bool{},
	}
	if c.pack {
		c.res.Mode = "pack"
	}
	missing, err := c.missing(ctx, selected)
	if err != nil {
		return nil, err
	}
	c.res.Present = len(selected) - len(missing)
	if n := len(missing); n > 0 {
		c.res.NewestMissing = missing[n-1]
		c.res.LagBefore = lag(opts.Now(), missing[n-1])
		c.res.LagAfter = c.res.LagBefore
	}
	if len(missing) == 0 {
		return c.res, nil
	}
	if err := src.LoadIndex(ctx); err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	if err := dst.LoadIndex(ctx); err != nil {
		return nil, fmt.Errorf("target: %w", err)
	}
	c.packSize = map[repo.ID]int64{}
	src.Index().Each(func(_ repo.BlobHandle, loc repo.Location) { c.packSize[loc.Pack] += int64(loc.Length) })
	if !opts.DryRun {
		dst.SetIndexInterval(repository.PartialIndexInterval)
	}

	var batch []*snapshot.Snapshot
	var failedPlan []SnapshotResult
	for _, sn := range missing {
		if err := c.plan(ctx, sn); err != nil {
			if !isSourceDamage(err) {
				c.abort()
				return nil, err
			}
			r := SnapshotResult{Source: sn, Err: fmt.Errorf("%w: %w", ErrDamagedSource, err)}
			failedPlan = append(failedPlan, r)
			c.res.Damaged = append(c.res.Damaged, err.Error())
			c.report(r)
			continue
		}
		batch = append(batch, sn)
		if c.wantLen >= opts.BatchBytes {
			if err := c.runBatch(ctx, lock, batch); err != nil {
				c.abort()
				return nil, err
			}
			batch = nil
		}
	}
	if err := c.runBatch(ctx, lock, batch); err != nil {
		c.abort()
		return nil, err
	}
	c.res.Failed = append(failedPlan, c.res.Failed...)
	c.res.LagAfter = 0
	if !opts.DryRun {
		copied := map[*snapshot.Snapshot]bool{}
		for _, r := range c.res.Copied {
			copied[r.Source] = true
		}
		for i := len(missing) - 1; i >= 0; i-- {
			if !copied[missing[i]] {
				c.res.LagAfter = lag(opts.Now(), missing[i])
				break
			}
		}
	} else {
		c.res.LagAfter = c.res.LagBefore
	}
	return c.res, nil
}

func lag(now time.Time, sn *snapshot.Snapshot) time.Duration {
	if d := now.Sub(sn.Time); d > 0 {
		return d
	}
	return 0
}

func (c *copier) abort() {
	if !c.opts.DryRun {
		c.dst.Abort()
	}
}

func (c *copier) report(r SnapshotResult) {
	if c.opts.Report != nil {
		c.opts.Report(r)
	}
}

// targetError marks a failure of the target: it stops the copy whatever
// it wraps.
type targetError struct{ err error }

func (e targetError) Error() string { return "target: " + e.err.Error() }
func (e targetError) Unwrap() error { return e.err }

func targetErr(err error) error {
	if err == nil {
		return nil
	}
	var te targetError
	if errors.As(err, &te) {
		return err
	}
	return targetError{err}
}

// isSourceDamage tells errors that fail one snapshot (its data in the
// source is damaged or gone) from those that stop the copy.
func isSourceDamage(err error) bool {
	var te targetError
	if errors.As(err, &te) {
		return false
	}
	return errors.Is(err, repository.ErrCorrupt) || errors.Is(err, repository.ErrBlobNotFound) || errors.Is(err, ErrDamagedSource) ||
		errors.Is(err, backend.ErrNotExist) || errors.Is(err, io.ErrUnexpectedEOF)
}

// missing returns the selected snapshots the target lacks, oldest first,
// and gathers the hints: every source snapshot (selected or not, of
// Options.All) the target already holds a copy of.
func (c *copier) missing(ctx context.Context, selected []*snapshot.Snapshot) ([]*snapshot.Snapshot, error) {
	have, err := c.dst.Snapshots(ctx)
	if err != nil {
		return nil, fmt.Errorf("target: %w", err)
	}
	dstID := c.dst.Config().ID
	byOrigin := make(map[string]*snapshot.Snapshot, len(have))
	for _, sn := range have {
		if slices.Contains(sn.Tags, snapshot.RepairedTag) {
			// Rewritten without lost files: not a copy of anything any
			// more (repair also drops its origin; this covers older ones).
			continue
		}
		byOrigin[sn.Origin(dstID)] = sn
	}
	all := c.opts.All
	if all == nil {
		all = selected
	}
	for _, sn := range all {
		if t, ok := byOrigin[sn.Origin(c.srcID)]; ok {
			c.hints = append(c.hints, hint{sn: sn, srcTree: sn.Tree, targetTree: t.Tree})
		}
	}
	var out []*snapshot.Snapshot
	for _, sn := range selected {
		if _, ok := byOrigin[sn.Origin(c.srcID)]; !ok {
			out = append(out, sn)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, nil
}

// hintFor picks, for a snapshot about to be copied, the newest snapshot the
// target holds of the same host and paths, no newer than it: its trees
// usually share most of their subtrees, which then need no walking.
func (c *copier) hintFor(sn *snapshot.Snapshot) *hint {
	var best *hint
	for i := range c.hints {
		h := &c.hints[i]
		if c.pack && h.srcTree != h.targetTree {
			continue // not a copy made with the same keys
		}
		if h.sn.Hostname != sn.Hostname || !slices.Equal(h.sn.Paths, sn.Paths) || h.sn.Time.After(sn.Time) {
			continue
		}
		if best == nil || h.sn.Time.After(best.sn.Time) {
			best = h
		}
	}
	return best
}

// plan walks a snapshot's source trees and queues every blob the target
// lacks (and, re-encoding, every blob with no known target ID).
func (c *copier) plan(ctx context.Context, sn *snapshot.Snapshot) error {
	var hs, ht repo.ID
	if h := c.hintFor(sn); h != nil {
		hs, ht = h.srcTree, h.targetTree
	}
	if c.pack {
		return c.planPack(ctx, sn.Tree, hs)
	}
	return c.planReencode(ctx, sn.Tree, hs, ht)
}

// need queues a blob of the source for copying.
func (c *copier) need(h repo.BlobHandle) error {
	if c.planned[h] {
		return nil
	}
	loc, ok := c.src.LookupBlob(h)
	if !ok {
		err := fmt.Errorf("%v blob %s: %w", h.Type, h.ID.Short(), repository.ErrBlobNotFound)
		c.bad[h] = err.Error()
		return err
	}
	c.planned[h] = true
	c.want[loc.Pack] = append(c.want[loc.Pack], pack.Blob{Type: h.Type, ID: h.ID, Compressed: loc.Compressed, Offset: loc.Offset, Length: loc.Length, RawLength: loc.RawLength})
	c.wantLen += int64(loc.Length)
	c.res.Blobs++
	c.res.Bytes += int64(loc.Length)
	return nil
}

func (c *copier) loadTree(ctx context.Context, r *repository.Repository, id repo.ID) (*snapshot.Tree, error) {
	data, err := r.LoadBlob(ctx, repo.TreeBlob, id)
	if err != nil {
		return nil, err
	}
	t, err := snapshot.DecodeTree(data)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w: %w", id.Short(), repository.ErrCorrupt, err)
	}
	return t, nil
}

// planPack: blob IDs are the same on both sides. A subtree equal to the
// hint's subtree at the same path is in the target with everything below it.
func (c *copier) planPack(ctx context.Context, id, hintID repo.ID) error {
	if id == hintID || c.walked[id] {
		return nil
	}
	c.walked[id] = true
	th := repo.BlobHandle{Type: repo.TreeBlob, ID: id}
	if !c.dst.HasBlob(th) {
		if err := c.need(th); err != nil {
			return err
		}
	}
	t, err := c.loadTree(ctx, c.src, id)
	if err != nil {
		// Later snapshots with this tree skip it (walked): remember why.
		c.bad[th] = err.Error()
		return err
	}
	var ht *snapshot.Tree
	if !hintID.IsNull() {
		if ht, err = c.loadTree(ctx, c.src, hintID); err != nil {
			ht = nil // only a shortcut
		}
	}
	for _, n := range t.Nodes {
		for _, b := range n.Content {
			h := repo.BlobHandle{Type: repo.DataBlob, ID: b}
			if !c.dst.HasBlob(h) {
				if err := c.need(h); err != nil {
					return err
				}
			}
		}
		if n.Type == snapshot.TypeDir {
			var hsub repo.ID
			if ht != nil {
				if hn := ht.Find(n.Name); hn != nil && hn.Type == snapshot.TypeDir {
					hsub = hn.Subtree
				}
			}
			if err := c.planPack(ctx, n.Subtree, hsub); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}

// planReencode: the hint pair (hs in the source, ht in the target) are the
// same directory, one the rewrite of the other; pairing their nodes gives
// target IDs for unchanged files without reading them.
func (c *copier) planReencode(ctx context.Context, id, hs, ht repo.ID) error {
	if b, ok := c.treeMap[id]; ok && c.dst.HasBlob(repo.BlobHandle{Type: repo.TreeBlob, ID: b}) {
		return nil
	}
	if !hs.IsNull() && id == hs && c.dst.HasBlob(repo.BlobHandle{Type: repo.TreeBlob, ID: ht}) {
		c.treeMap[id] = ht
		return nil
	}
	if c.walked[id] {
		return nil
	}
	c.walked[id] = true
	t, err := c.loadTree(ctx, c.src, id)
	if err != nil {
		return err
	}
	c.trees[id] = t
	var hsT, htT *snapshot.Tree
	if !hs.IsNull() {
		hsT, err = c.loadTree(ctx, c.src, hs)
		if err == nil {
			htT, err = c.loadTree(ctx, c.dst, ht)
		}
		if err != nil || !samePairing(hsT, htT) {
			hsT, htT = nil, nil
		}
	}
	for _, n := range t.Nodes {
		var sn, tn *snapshot.Node
		if hsT != nil {
			if j := findIndex(hsT, n.Name); j >= 0 {
				sn, tn = hsT.Nodes[j], htT.Nodes[j]
			}
		}
		if sn != nil && sn.Type == n.Type {
			for k := range sn.Content {
				c.learn(sn.Content[k], tn.Content[k])
			}
		}
		for _, b := range n.Content {
			if tb, ok := c.blobMap[b]; ok && c.dst.HasBlob(repo.BlobHandle{Type: repo.DataBlob, ID: tb}) {
				continue
			}
			delete(c.blobMap, b)
			if err := c.need(repo.BlobHandle{Type: repo.DataBlob, ID: b}); err != nil {
				return err
			}
		}
		if n.Type == snapshot.TypeDir {
			var hsub, tsub repo.ID
			if sn != nil && sn.Type == snapshot.TypeDir {
				hsub, tsub = sn.Subtree, tn.Subtree
			}
			if err := c.planReencode(ctx, n.Subtree, hsub, tsub); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}

// samePairing checks that a target tree has the shape of the source tree it
// should be the rewrite of: same names, types and numbers of blobs.
func samePairing(s, t *snapshot.Tree) bool {
	if len(s.Nodes) != len(t.Nodes) {
		return false
	}
	for i, n := range s.Nodes {
		m := t.Nodes[i]
		if n.Name != m.Name || n.Type != m.Type || n.Size != m.Size || len(n.Content) != len(m.Content) {
			return false
		}
	}
	return true
}

func findIndex(t *snapshot.Tree, name string) int {
	i := sort.Search(len(t.Nodes), func(i int) bool { return t.Nodes[i].Name >= name })
	if i < len(t.Nodes) && t.Nodes[i].Name == name {
		return i
	}
	return -1
}

// learn records that source blob s is target blob t, if both indexes agree
// on its length and the target holds it.
func (c *copier) learn(s, t repo.ID) {
	if _, ok := c.blobMap[s]; ok {
		return
	}
	sl, ok1 := c.src.LookupBlob(repo.BlobHandle{Type: repo.DataBlob, ID: s})
	tl, ok2 := c.dst.LookupBlob(repo.BlobHandle{Type: repo.DataBlob, ID: t})
	if ok1 && ok2 && sl.RawLength == tl.RawLength {
		c.blobMap[s] = t
	}
}

// runBatch copies the queued blobs, writes the target's index, then
// commits the batch's snapshots that the target now holds completely.
func (c *copier) runBatch(ctx context.Context, lock *repository.Lock, batch []*snapshot.Snapshot) error {
	defer func() {
		c.want, c.wantLen = map[repo.ID][]pack.Blob{}, 0
		clear(c.trees)
	}()
	if len(batch) == 0 {
		return nil
	}
	if c.opts.DryRun {
		for _, sn := range batch {
			c.report(SnapshotResult{Source: sn})
		}
		return nil
	}
	if err := c.transfer(ctx); err != nil {
		return err
	}
	roots := make([]repo.ID, len(batch))
	rootErr := make([]error, len(batch))
	for i, sn := range batch {
		if c.pack {
			roots[i] = sn.Tree
			continue
		}
		roots[i], rootErr[i] = c.rewrite(ctx, sn.Tree)
		if rootErr[i] != nil && !isSourceDamage(rootErr[i]) {
			return rootErr[i]
		}
	}
	if err := c.dst.Flush(ctx); err != nil {
		return targetErr(err)
	}
	if l := c.opts.SourceLock; l != nil {
		if err := l.Check(ctx); err != nil {
			return fmt.Errorf("source: %w", err)
		}
	}
	for i, sn := range batch {
		err := rootErr[i]
		if err == nil {
			err = c.checkComplete(ctx, roots[i])
		}
		if err != nil {
			if !isSourceDamage(err) {
				return err
			}
			r := SnapshotResult{Source: sn, Err: err}
			c.res.Failed = append(c.res.Failed, r)
			c.report(r)
			continue
		}
		cp := *sn
		cp.Tree = roots[i]
		cp.Parent = nil
		cp.ID = repo.ID{}
		if cp.Original == nil || cp.OriginalRepo == "" {
			id := sn.ID
			cp.Original, cp.OriginalRepo = &id, c.srcID
		}
		id, err := c.dst.CommitSnapshot(ctx, lock, &cp)
		if err != nil {
			return targetErr(err)
		}
		c.hints = append(c.hints, hint{sn: sn, srcTree: sn.Tree, targetTree: roots[i]})
		repository.Failpoint(repository.FailpointCopyCommitted)
		r := SnapshotResult{Source: sn, Target: id}
		c.opts.Progress.Snapshots.Add(1)
		c.res.Copied = append(c.res.Copied, r)
		c.report(r)
	}
	return nil
}

// transfer moves the queued blobs, several source packs at once.
func (c *copier) transfer(ctx context.Context) error {
	packs := make([]repo.ID, 0, len(c.want))
	for id := range c.want {
		packs = append(packs, id)
	}
	slices.SortFunc(packs, func(a, b repo.ID) int { return slices.Compare(a[:], b[:]) })
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.opts.Workers)
	for _, id := range packs {
		blobs := c.want[id]
		sort.Slice(blobs, func(i, j int) bool { return blobs[i].Offset < blobs[j].Offset })
		g.Go(func() error { return c.transferPack(gctx, id, blobs) })
	}
	return g.Wait()
}

func (c *copier) markBad(b pack.Blob, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bad[b.Handle()] = err.Error()
	c.res.Damaged = append(c.res.Damaged, err.Error())
}

func (c *copier) transferPack(ctx context.Context, id repo.ID, blobs []pack.Blob) error {
	if !c.pack {
		err := c.src.LoadPackRange(ctx, id, blobs, func(b pack.Blob, plain []byte, err error) error {
			if err != nil {
				c.markBad(b, fmt.Errorf("blob %s of pack %s: %w", b.ID.Short(), id.Short(), err))
				return nil
			}
			tid, _, _, err := c.dst.SaveBlob(ctx, b.Type, plain, repo.ID{})
			if err != nil {
				return targetErr(err)
			}
			c.mu.Lock()
			c.blobMap[b.ID] = tid
			c.mu.Unlock()
			c.opts.Progress.Blobs.Add(1)
			c.opts.Progress.Bytes.Add(int64(b.Length))
			return nil
		})
		return c.packFailed(id, blobs, err)
	}
	var want int64
	for _, b := range blobs {
		want += int64(b.Length)
	}
	if want*2 >= c.packSize[id] {
		// Most of the pack is wanted: move it whole, once all of it checks.
		err := c.wholePack(ctx, id)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, repository.ErrAlreadyStored):
			// Left by an earlier run: never adopted (see
			// ErrAlreadyStored); the blobs go to new packs.
		case !isSourceDamage(err):
			return err
		default:
			c.mu.Lock()
			c.res.Damaged = append(c.res.Damaged, err.Error())
			c.mu.Unlock()
			// Salvage what is intact, blob by blob.
		}
	}
	err := c.dst.CopySealed(ctx, c.src, id, blobs, c.markBad)
	if err == nil {
		c.opts.Progress.Blobs.Add(int64(len(blobs)))
		c.opts.Progress.Bytes.Add(want)
	}
	return c.packFailed(id, blobs, err)
}

// packFailed: a source pack that cannot be read at all (gone, truncated)
// fails the blobs wanted from it that were not copied; anything else stops
// the copy.
func (c *copier) packFailed(id repo.ID, blobs []pack.Blob, err error) error {
	if err == nil || !isSourceDamage(err) {
		return err
	}
	for _, b := range blobs {
		if _, ok := c.blobMapped(b.ID); ok || c.dst.HasBlob(b.Handle()) {
			continue
		}
		c.markBad(b, fmt.Errorf("source pack %s: %w", id.Short(), err))
	}
	return nil
}

func (c *copier) blobMapped(id repo.ID) (repo.ID, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.blobMap[id]
	return t, ok
}

func (c *copier) wholePack(ctx context.Context, id repo.ID) error {
	fi, err := c.src.Backend().Stat(ctx, backend.Handle{Type: backend.PackFile, Name: id.String()})
	if err != nil {
		return fmt.Errorf("source pack %s: %w", id.Short(), err)
	}
	data, blobs, err := c.src.ReadVerifiedPack(ctx, id, fi.Size)
	if err != nil {
		return err
	}
	if err := c.dst.StorePack(ctx, id, data, blobs); err != nil {
		if errors.Is(err, repository.ErrAlreadyStored) {
			return err
		}
		return targetErr(err)
	}
	c.mu.Lock()
	c.res.WholePacks++
	c.mu.Unlock()
	c.opts.Progress.Blobs.Add(int64(len(blobs)))
	c.opts.Progress.Bytes.Add(int64(len(data)))
	return nil
}

// rewrite stores the target's version of a source tree (and of the trees
// below it) and returns its ID.
func (c *copier) rewrite(ctx context.Context, id repo.ID) (repo.ID, error) {
	if b, ok := c.treeMap[id]; ok {
		return b, nil
	}
	t := c.trees[id]
	if t == nil {
		var err error
		if t, err = c.loadTree(ctx, c.src, id); err != nil {
			return repo.ID{}, err
		}
	}
	nt := &snapshot.Tree{Nodes: make([]*snapshot.Node, len(t.Nodes))}
	for i, n := range t.Nodes {
		m := *n
		if len(n.Content) > 0 {
			m.Content = make([]repo.ID, len(n.Content))
			for k, b := range n.Content {
				tb, ok := c.blobMap[b]
				if !ok {
					h := repo.BlobHandle{Type: repo.DataBlob, ID: b}
					if why, bad := c.bad[h]; bad {
						return repo.ID{}, fmt.Errorf("%w: %s", ErrDamagedSource, why)
					}
					return repo.ID{}, fmt.Errorf("data blob %s: %w", b.Short(), ErrDamagedSource)
				}
				m.Content[k] = tb
			}
		}
		if n.Type == snapshot.TypeDir {
			sub, err := c.rewrite(ctx, n.Subtree)
			if err != nil {
				return repo.ID{}, err
			}
			m.Subtree = sub
		}
		nt.Nodes[i] = &m
	}
	tid, _, _, err := c.dst.SaveBlob(ctx, repo.TreeBlob, nt.Encode(), repo.ID{})
	if err != nil {
		return repo.ID{}, targetErr(err)
	}
	c.treeMap[id] = tid
	return tid, nil
}

// checkComplete makes sure the target indexes every blob below tree id,
// reading the target's own trees: the last word before a snapshot refers
// to them. A blob missing because it failed its check in the source fails
// the snapshot; anything else wrong in the target stops the copy.
func (c *copier) checkComplete(ctx context.Context, id repo.ID) error {
	if c.complete[id] {
		return nil
	}
	th := repo.BlobHandle{Type: repo.TreeBlob, ID: id}
	if !c.dst.HasBlob(th) {
		return c.explain(th)
	}
	t, err := c.loadTree(ctx, c.dst, id)
	if err != nil {
		return targetErr(fmt.Errorf("read back tree %s: %w", id.Short(), err))
	}
	for _, n := range t.Nodes {
		for _, b := range n.Content {
			h := repo.BlobHandle{Type: repo.DataBlob, ID: b}
			if !c.dst.HasBlob(h) {
				return c.explain(h)
			}
		}
		if n.Type == snapshot.TypeDir {
			if err := c.checkComplete(ctx, n.Subtree); err != nil {
				return err
			}
		}
	}
	c.complete[id] = true
	return nil
}

// explain says why the target lacks a blob: damage found in the source, or
// else something wrong with the target.
func (c *copier) explain(h repo.BlobHandle) error {
	if why, ok := c.bad[h]; ok {
		return fmt.Errorf("%w: %s", ErrDamagedSource, why)
	}
	return targetErr(fmt.Errorf("%v blob %s is not in the target's index after the copy", h.Type, h.ID.Short()))
}
