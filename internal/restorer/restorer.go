package restorer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"bunker/internal/fs"
	"bunker/internal/repo"
	"bunker/internal/snapshot"
)

// Repository is what the restorer needs of a repository.
type Repository interface {
	LoadBlob(ctx context.Context, t repo.BlobType, id repo.ID) ([]byte, error)
	LookupBlob(h repo.BlobHandle) (repo.Location, bool)
	LoadPackRange(ctx context.Context, packID repo.ID, blobs []repo.PackedBlob, fn func(b repo.PackedBlob, plain []byte, err error) error) error
	BlobID(data []byte) repo.ID
}

// Options select what to restore and how.
type Options struct {
	// Includes restricts the restore to these snapshot paths and what is below
	// them (for example "/home/alice"); empty means everything.
	Includes []string
	// Excludes leaves out matching entries (patterns as for backup).
	Excludes []string
	// Verify re-reads every restored file and checks it against the snapshot.
	Verify bool
	// Workers is the number of packs processed at once; zero means one per
	// CPU (decoding is CPU-bound; more workers only contend for directories).
	Workers int
	// Owner restores owners even when not running as root.
	Owner bool
	// Error is called for every entry that could not be restored.
	Error func(path string, err error)
	// Match decides exclusion; nil means no exclusions apply.
	Match func(patterns []string, path string) bool
}

// Stats count what a restore did.
type Stats struct {
	Files, Dirs, Links, Others atomic.Uint64
	Bytes                      atomic.Uint64
	Errors                     atomic.Uint64
}

// ErrIncomplete is returned when some entries could not be restored; each was
// reported through Options.Error.
var ErrIncomplete = errors.New("some entries could not be restored")

type target struct {
	file   *fileState
	offset int64
}

type fileState struct {
	rel       string
	node      *snapshot.Node
	mu        sync.Mutex
	f         *fs.File
	remaining int
	written   int64 // end of the data written so far
	failed    bool
	// created: this restore created the file at rel (so it may remove it
	// again); done: the file is finished, its content and metadata set.
	created, done bool
}

type blobTargets struct {
	blob    repo.PackedBlob
	targets []target
	// delivered is set once the blob has been handed to its targets, with
	// its data or its error (by the pack's one worker).
	delivered bool
}

type link struct{ from, to string }

// Restorer restores one snapshot tree into a target directory.
type Restorer struct {
	repo  Repository
	opts  Options
	root  *fs.Root
	Stats Stats
	ctx   context.Context // the run's, set by Run

	files     []*fileState
	packs     map[repo.ID]map[repo.ID]*blobTargets
	packOrder []repo.ID // packs in the order the walk first needed them
	links     []link
	dirs      []dirEntry
	inodes    map[[2]uint64]string
	metaOpts  fs.RestoreOptions
	reportMu  sync.Mutex
}

type dirEntry struct {
	rel  string
	node *snapshot.Node
}

// New returns a restorer.
func New(r Repository, opts Options) *Restorer {
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	return &Restorer{repo: r, opts: opts, packs: make(map[repo.ID]map[repo.ID]*blobTargets),
		inodes: make(map[[2]uint64]string), metaOpts: fs.RestoreOptions{Owner: opts.Owner}}
}

// report counts and passes on an error; calls are serialized, so the
// callback need not be safe for concurrent use.
func (r *Restorer) report(rel string, err error) {
	if r.ctx != nil && r.ctx.Err() != nil && errors.Is(err, r.ctx.Err()) {
		// The run was cancelled (Ctrl-C): that is its one error, not
		// every entry's it was restoring.
		return
	}
	r.Stats.Errors.Add(1)
	if r.opts.Error != nil {
		r.reportMu.Lock()
		defer r.reportMu.Unlock()
		r.opts.Error("/"+rel, err)
	}
}

// Run restores the tree into dir. Nothing is ever written outside dir.
func (r *Restorer) Run(ctx context.Context, tree repo.ID, dir string) error {
	root, err := fs.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("open target: %w", err)
	}
	defer root.Close()
	r.root = root
	r.ctx = ctx
	// Directories opened up to write in get their modes back however the
	// restore ends (see below for a restore that ends normally).
	defer r.root.RestoreOpenedModes()
	if err := r.walk(ctx, tree, ""); err != nil {
		return err
	}
	if err := r.writeContent(ctx); err != nil {
		return err
	}
	for _, l := range r.links {
		if err := r.root.Link(l.from, l.to); err != nil {
			r.report(l.to, err)
			continue
		}
		r.Stats.Links.Add(1)
	}
	// Directory metadata last, deepest first, so writing entries does not change it.
	for i := len(r.dirs) - 1; i >= 0; i-- {
		d := r.dirs[i]
		if err := r.root.SetMetadata(d.rel, d.node, r.metaOpts); err != nil && !fs.IsWarning(err) {
			r.report(d.rel, err)
		}
	}
	// Directories that were there already and were opened up to write in
	// them, and that the snapshot does not set (the parents of --include
	// paths), get their mode back.
	for rel, err := range r.root.RestoreOpenedModes() {
		r.report(rel, err)
	}
	if r.Stats.Errors.Load() > 0 {
		return ErrIncomplete
	}
	return ctx.Err()
}

// selected reports whether rel ("a/b") is to be restored, and whether a
// directory at rel must be descended into because an include lies below it.
func (r *Restorer) selected(rel string, isDir bool) (restore, descend bool) {
	abs := "/" + rel
	if r.opts.Match != nil && len(r.opts.Excludes) > 0 && r.opts.Match(r.opts.Excludes, abs) {
		return false, false
	}
	if len(r.opts.Includes) == 0 {
		return true, isDir
	}
	for _, inc := range r.opts.Includes {
		inc = path.Clean("/" + inc)
		if inc == "/" || abs == inc || strings.HasPrefix(abs, inc+"/") {
			return true, isDir
		}
		if isDir && strings.HasPrefix(inc, abs+"/") {
			descend = true
		}
	}
	return descend, descend
}

func (r *Restorer) loadTree(ctx context.Context, id repo.ID) (*snapshot.Tree, error) {
	data, err := r.repo.LoadBlob(ctx, repo.TreeBlob, id)
	if err != nil {
		return nil, err
	}
	return snapshot.DecodeTree(data)
}

func (r *Restorer) walk(ctx context.Context, id repo.ID, dir string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	tree, err := r.loadTree(ctx, id)
	if err != nil {
		r.report(dir, fmt.Errorf("directory not restored: %w", err))
		return nil
	}
	for _, n := range tree.Nodes {
		if err := fs.ValidName(n.Name); err != nil {
			r.report(path.Join(dir, n.Name), fmt.Errorf("refusing entry: %w", err))
			continue
		}
		rel := path.Join(dir, n.Name)
		restore, descend := r.selected(rel, n.Type == snapshot.TypeDir)
		if !restore && !descend {
			continue
		}
		switch n.Type {
		case snapshot.TypeDir:
			if err := r.root.Mkdir(rel); err != nil {
				r.report(rel, err)
				continue
			}
			r.Stats.Dirs.Add(1)
			if restore {
				r.dirs = append(r.dirs, dirEntry{rel: rel, node: n})
			}
			if err := r.walk(ctx, n.Subtree, rel); err != nil {
				return err
			}
		case snapshot.TypeFile:
			r.planFile(rel, n)
		case snapshot.TypeSymlink:
			if !r.linkedAgain(rel, n) {
				r.restoreOther(rel, n, func() error { return r.root.Symlink(rel, n.LinkTarget) })
			}
		case snapshot.TypeFifo, snapshot.TypeDev, snapshot.TypeCharDev:
			if !r.linkedAgain(rel, n) {
				r.restoreOther(rel, n, func() error { return r.root.Mknod(rel, n.Type, n.Mode, n.Rdev) })
			}
		case snapshot.TypeSocket:
			// A socket exists only while a process listens on it: nothing to restore.
		}
	}
	return nil
}

func (r *Restorer) restoreOther(rel string, n *snapshot.Node, create func() error) {
	if err := create(); err != nil {
		r.report(rel, err)
		return
	}
	if err := r.root.SetMetadata(rel, n, r.metaOpts); err != nil && !fs.IsWarning(err) {
		r.report(rel, err)
		return
	}
	r.Stats.Others.Add(1)
}

// linkedAgain reports whether n, with more than one link, is an inode
// restored already under another name: rel is then made a hard link to it
// once contents are written. Otherwise rel becomes the inode's first name.
func (r *Restorer) linkedAgain(rel string, n *snapshot.Node) bool {
	if n.Links <= 1 {
		return false
	}
	key := [2]uint64{n.DeviceID, n.Inode}
	if first, ok := r.inodes[key]; ok {
		r.links = append(r.links, link{from: first, to: rel})
		return true
	}
	r.inodes[key] = rel
	return false
}

func (r *Restorer) planFile(rel string, n *snapshot.Node) {
	if r.linkedAgain(rel, n) {
		return
	}
	fst := &fileState{rel: rel, node: n, remaining: len(n.Content)}
	locs := make([]repo.Location, len(n.Content))
	var size uint64
	for i, id := range n.Content {
		loc, ok := r.repo.LookupBlob(repo.BlobHandle{ID: id, Type: repo.DataBlob})
		if !ok {
			r.report(rel, fmt.Errorf("data blob %s is missing from the repository", id.Short()))
			return
		}
		locs[i] = loc
		size += uint64(loc.RawLength)
	}
	// The recorded size must match the content: restoring would otherwise pad
	// with zeros or cut the file without a word.
	if size != n.Size {
		r.report(rel, fmt.Errorf("snapshot records %d bytes but the content holds %d: not restored", n.Size, size))
		return
	}
	var off int64
	for i, id := range n.Content {
		loc := locs[i]
		byBlob := r.packs[loc.Pack]
		if byBlob == nil {
			byBlob = make(map[repo.ID]*blobTargets)
			r.packs[loc.Pack] = byBlob
			r.packOrder = append(r.packOrder, loc.Pack)
		}
		bt := byBlob[id]
		if bt == nil {
			bt = &blobTargets{blob: repo.PackedBlob{Type: repo.DataBlob, ID: id, Compressed: loc.Compressed, Offset: loc.Offset, Length: loc.Length, RawLength: loc.RawLength}}
			byBlob[id] = bt
		}
		bt.targets = append(bt.targets, target{file: fst, offset: off})
		off += int64(loc.RawLength)
	}
	r.files = append(r.files, fst)
}

// writeContent creates every file and writes its content, reading each pack
// once; several packs are processed at once.
func (r *Restorer) writeContent(ctx context.Context) error {
	// Empty files are finished at once.
	for _, f := range r.files {
		if f.remaining == 0 && !f.failed {
			r.finishFile(f)
		}
	}
	// Packs in the order the tree first needs them: a backup stores files in
	// tree order, so this creates files directory by directory, as a copy
	// would, which keeps the file system's metadata updates local.
	ids := r.packOrder
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.opts.Workers)
	for _, pid := range ids {
		g.Go(func() error { return r.restorePack(gctx, pid) })
	}
	return g.Wait()
}

func (r *Restorer) restorePack(ctx context.Context, pid repo.ID) error {
	byBlob := r.packs[pid]
	blobs := make([]repo.PackedBlob, 0, len(byBlob))
	for _, bt := range byBlob {
		blobs = append(blobs, bt.blob)
	}
	sort.Slice(blobs, func(i, j int) bool { return blobs[i].Offset < blobs[j].Offset })
	err := r.repo.LoadPackRange(ctx, pid, blobs, func(b repo.PackedBlob, plain []byte, err error) error {
		bt := byBlob[b.ID]
		bt.delivered = true
		for _, t := range bt.targets {
			r.writeBlob(t, plain, err)
		}
		return ctx.Err()
	})
	if err != nil && ctx.Err() == nil {
		// The rest of the pack could not be read: the files that needed a
		// blob not yet delivered are damaged; those whose blobs came (and
		// may be finished) are not.
		for _, bt := range byBlob {
			if bt.delivered {
				continue
			}
			for _, t := range bt.targets {
				r.writeBlob(t, nil, err)
			}
		}
		return nil
	}
	return err
}

func (r *Restorer) writeBlob(t target, plain []byte, blobErr error) {
	f := t.file
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failed || f.done {
		return
	}
	if blobErr != nil {
		r.failFile(f, blobErr)
		return
	}
	if f.f == nil {
		file, err := r.root.CreateFile(f.rel)
		if err != nil {
			r.failFile(f, err)
			return
		}
		f.f, f.created = file, true
	}
	end, err := writeSparse(f.f, plain, t.offset)
	if err != nil {
		r.failFile(f, err)
		return
	}
	f.written = max(f.written, end)
	r.Stats.Bytes.Add(uint64(len(plain)))
	f.remaining--
	if f.remaining == 0 {
		r.finishFile(f)
	}
}

// holeSize is the granularity of the holes a restore leaves: file system
// blocks are 4 KiB (or a multiple of it), and a block with any data written
// is allocated whole.
const holeSize = 4096

// writeSparse writes data at off in f, leaving out every piece of it that
// is all zeros and covers a whole holeSize block of the file (aligned in
// the file, not in data), so that those blocks stay holes: a sparse file
// comes back sparse even where its chunks hold some data. It returns the
// end of the last byte written (off if none), for the size to be set
// after.
func writeSparse(f *fs.File, data []byte, off int64) (int64, error) {
	end := off
	run := -1 // start in data of the non-zero run being collected
	flush := func(i int) error {
		if run < 0 {
			return nil
		}
		if _, err := f.WriteAt(data[run:i], off+int64(run)); err != nil {
			return err
		}
		end = off + int64(i)
		run = -1
		return nil
	}
	for i := 0; i < len(data); {
		// The piece up to the next block boundary of the file.
		n := min(len(data)-i, holeSize-int((off+int64(i))%holeSize))
		if n == holeSize && fs.IsZero(data[i:i+n]) {
			if err := flush(i); err != nil {
				return end, err
			}
		} else if run < 0 {
			run = i
		}
		i += n
	}
	return end, flush(len(data))
}

// failFile removes a file that cannot be restored whole, if this restore
// created it: a restore never leaves a file with silent zeros where data was
// lost. A file it had not created yet (whatever the target held at that
// path, such as a newer version) is left as it is.
func (r *Restorer) failFile(f *fileState, err error) {
	f.failed = true
	if f.f != nil {
		f.f.Close()
		f.f = nil
	}
	if f.created {
		_ = r.root.Remove(f.rel)
	}
	r.report(f.rel, fmt.Errorf("not restored: %w", err))
}

// finishFile sets the size and metadata of a file whose content is all
// written (creating it first if it is empty) and closes it.
func (r *Restorer) finishFile(f *fileState) {
	if f.f == nil {
		file, err := r.root.CreateFile(f.rel)
		if err != nil {
			f.failed = true
			r.report(f.rel, err)
			return
		}
		f.f, f.created = file, true
	}
	// The size is set explicitly only where the file ends in a hole.
	if f.written != int64(f.node.Size) {
		if err := f.f.Truncate(int64(f.node.Size)); err != nil {
			r.failFile(f, err)
			return
		}
	}
	if r.opts.Verify {
		// Read back before the metadata, from the descriptor written: the
		// file's mode may not let its owner read it once set.
		if err := r.verifyFile(f); err != nil {
			r.report(f.rel, fmt.Errorf("verify: %w", err))
		}
	}
	// Metadata through the open descriptor: times last, after the data.
	merr := r.root.SetFileMetadata(f.f, f.node, r.metaOpts)
	file := f.f
	f.f = nil
	if err := file.Close(); err != nil {
		r.failFile(f, err)
		return
	}
	f.done = true
	if merr != nil && !fs.IsWarning(merr) {
		r.report(f.rel, merr)
	}
	r.Stats.Files.Add(1)
}

// verifyFile reads a file back through the descriptor it was written with
// and checks each chunk against its ID, and the size.
func (r *Restorer) verifyFile(f *fileState) error {
	file := f.f
	var buf []byte
	var off int64
	for _, id := range f.node.Content {
		loc, _ := r.repo.LookupBlob(repo.BlobHandle{ID: id, Type: repo.DataBlob})
		if cap(buf) < int(loc.RawLength) {
			buf = make([]byte, loc.RawLength)
		}
		buf = buf[:loc.RawLength]
		if _, err := file.ReadAt(buf, off); err != nil && !(errors.Is(err, io.EOF) && len(buf) == 0) {
			return err
		}
		if r.repo.BlobID(buf) != id {
			return fmt.Errorf("content at offset %d differs from the snapshot", off)
		}
		off += int64(loc.RawLength)
	}
	var one [1]byte
	if n, _ := file.ReadAt(one[:], off); n != 0 {
		return errors.New("file is longer than in the snapshot")
	}
	return nil
}
