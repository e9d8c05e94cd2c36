package archiver

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"bunker/internal/fs"
	"bunker/internal/repo"
	"bunker/internal/snapshot"
)

// Repository is what the archiver needs of a repository.
type Repository interface {
	SaveBlob(ctx context.Context, t repo.BlobType, data []byte, id repo.ID) (repo.ID, bool, int, error)
	LoadBlob(ctx context.Context, t repo.BlobType, id repo.ID) ([]byte, error)
	HasBlob(h repo.BlobHandle) bool
	BlobID(data []byte) repo.ID
	// NewChunker returns a chunker with the repository's secret parameters.
	NewChunker(rd io.Reader) repo.Chunker
	// MinChunk is the smallest chunk the chunker cuts (except at the end).
	MinChunk() int
}

// Options configure one backup.
type Options struct {
	Excludes      []string
	OneFileSystem bool
	// ParentTree is the root tree of the snapshot to compare against; zero for none.
	ParentTree repo.ID
	// ParentTime is when that snapshot's backup started. A file it recorded
	// with an mtime less than racyWindow before then (or after) is read
	// again even if nothing seems to have changed: a write in the same
	// timestamp tick as the one recorded, after that backup read the file,
	// leaves its times as they were (git's "racily clean" files).
	ParentTime time.Time
	// CPUs is the number of cores the file and blob workers are sized by;
	// zero means GOMAXPROCS.
	CPUs int
	// FileWorkers read files; zero means 2 per CPU.
	FileWorkers int
	// BlobWorkers hash, compress, seal and pack chunks; zero means one per CPU.
	BlobWorkers int
	// Error is called for every entry that could not be read; the backup goes on.
	Error func(path string, err error)
	// Warn is called for every file kept that may not be what it was at
	// any one moment (an error that wraps ErrChangedWhileRead and names
	// the path, as Error's do).
	Warn func(path string, err error)
}

// ErrChangedWhileRead says that a file's size or times changed while it
// was read: its content in the snapshot is what was read, which may mix
// the old and the new (an appended log ends mid-line; a database file
// rewritten in place is torn). Its node keeps the times from before the
// read, so the next backup reads it again.
var ErrChangedWhileRead = errors.New("file changed while it was read; the snapshot holds what was read")

// Stats are live counters; read them with atomic loads while a backup runs.
type Stats struct {
	FilesNew, FilesChanged, FilesUnchanged atomic.Uint64
	DirsNew, DirsChanged, DirsUnchanged    atomic.Uint64
	BlobsAdded, BytesAdded, BytesAddedRaw  atomic.Uint64
	BytesProcessed, FilesProcessed         atomic.Uint64
	BytesRead                              atomic.Uint64
	Errors                                 atomic.Uint64
	Warnings                               atomic.Uint64 // files changed while read
}

// Summary copies the counters into a snapshot summary.
func (s *Stats) Summary() snapshot.Summary {
	return snapshot.Summary{
		FilesNew: s.FilesNew.Load(), FilesChanged: s.FilesChanged.Load(), FilesUnchanged: s.FilesUnchanged.Load(),
		DirsNew: s.DirsNew.Load(), DirsChanged: s.DirsChanged.Load(), DirsUnchanged: s.DirsUnchanged.Load(),
		BlobsAdded: s.BlobsAdded.Load(), BytesAdded: s.BytesAdded.Load(), BytesAddedRaw: s.BytesAddedRaw.Load(),
		BytesProcessed: s.BytesProcessed.Load(), FilesProcessed: s.FilesProcessed.Load(),
		Errors: s.Errors.Load(), Incomplete: s.Errors.Load() > 0, ChangedWhileRead: s.Warnings.Load(),
	}
}

// Archiver backs up file system paths into a repository.
type Archiver struct {
	repo  Repository
	opts  Options
	meta  *fs.MetaReader
	Stats Stats

	files chan *fileJob
	blobs chan *blobJob
	// chunkers holds the chunkers for large files. Cutting runs at 2 to
	// 5 GB/s, several times a blob worker's speed on data to compress, so
	// one is enough; each holds a 6 MiB buffer. (A second one, or a larger
	// buffer, left the cores less idle on data already stored but made the
	// first backup of the bench data no faster: see docs/architecture.md.)
	chunkers chan repo.Chunker
	// smallBufs holds the read buffers of files smaller than a chunk.
	smallBufs chan *[]byte
	// walkSem bounds the goroutines walking directories besides the caller's.
	walkSem chan struct{}
	ctx     context.Context
	// testChunkRead, if set, is called after each chunk of a file is read.
	testChunkRead func(path string)

	// fatalErr holds the first error that stops the run. It is read once
	// per entry by every walker: a mutex here was 2.5% of an unchanged
	// re-backup's CPU time.
	fatalErr atomic.Pointer[error]
}

// New returns an archiver.
func New(r Repository, opts Options) *Archiver {
	if opts.CPUs <= 0 {
		opts.CPUs = runtime.GOMAXPROCS(0)
	}
	if opts.FileWorkers <= 0 {
		opts.FileWorkers = 2 * opts.CPUs
	}
	if opts.BlobWorkers <= 0 {
		opts.BlobWorkers = opts.CPUs
	}
	return &Archiver{repo: r, opts: opts, meta: fs.NewMetaReader(fs.MetaOptions{})}
}

// future is a node that will be complete once done is closed. A nil node after
// done means the entry was skipped.
type future struct {
	done chan struct{}
	node *snapshot.Node
}

// closedDone is the done channel of every future resolved at creation: an
// unchanged re-backup resolves one per file.
var closedDone = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func resolved(n *snapshot.Node) *future {
	return &future{done: closedDone, node: n}
}

func (f *future) wait() *snapshot.Node { <-f.done; return f.node }

type fileJob struct {
	path string
	// dir is the directory the walk found the file in, open, and name the
	// file's name in it: the worker opens the file relative to it, so that
	// a directory of the path renamed and replaced by a symbolic link since
	// the walk (to /etc, say) cannot make it read another file. A nil dir
	// (a backup target) means path alone.
	dir  *dirRef
	name string
	// node is the file's node from the walk's lstat, or nil for a file the
	// walk did not stat (saveNewFile): the worker then makes it.
	node   *snapshot.Node
	fut    *future
	parent *snapshot.Node
}

// dirRef is a directory the walk has open, shared with the file jobs it
// queued: closed when the walk and every one of those jobs are done with it.
type dirRef struct {
	fd   int
	refs atomic.Int32
}

func newDirRef(fd int) *dirRef {
	d := &dirRef{fd: fd}
	d.refs.Store(1)
	return d
}

// dirfd returns the descriptor to open names relative to (AT_FDCWD for nil).
func (d *dirRef) dirfd() int {
	if d == nil {
		return unix.AT_FDCWD
	}
	return d.fd
}

func (d *dirRef) hold() {
	if d != nil {
		d.refs.Add(1)
	}
}

func (d *dirRef) release() {
	if d != nil && d.refs.Add(-1) == 0 {
		unix.Close(d.fd)
	}
}

// at returns the name to open relative to dirfd(): the name in the
// directory, or the whole path without one.
func (j *fileJob) at() string {
	if j.dir == nil {
		return j.path
	}
	return j.name
}

type blobJob struct {
	data   []byte // valid until done is closed
	result *repo.ID
	done   chan struct{}
	errp   *atomic.Pointer[error]
}

func (a *Archiver) fatal(err error) {
	a.fatalErr.CompareAndSwap(nil, &err)
}

func (a *Archiver) failed() error {
	if e := a.fatalErr.Load(); e != nil {
		return *e
	}
	return nil
}

func (a *Archiver) report(path string, err error) {
	if a.ctx != nil && a.ctx.Err() != nil && errors.Is(err, a.ctx.Err()) {
		// The run was cancelled (Ctrl-C): that is its one error, not
		// every file's in flight.
		return
	}
	a.Stats.Errors.Add(1)
	if a.opts.Error != nil {
		a.opts.Error(path, err)
	}
}

// Run backs up the given paths (absolute or relative to the working directory)
// and returns the ID of the root tree. Entries that cannot be read are reported
// through Options.Error and left out; storage and repository errors stop the run.
func (a *Archiver) Run(ctx context.Context, paths []string) (repo.ID, []string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.ctx = ctx
	targets, err := cleanTargets(paths)
	if err != nil {
		return repo.ID{}, nil, err
	}
	a.files = make(chan *fileJob, 256)
	a.blobs = make(chan *blobJob, a.opts.BlobWorkers)
	// One walker per P, spare Ps included (a walker is mostly in system
	// calls): an unchanged re-backup of the bench data with two spare Ps,
	// ten runs each, median 0.34 s against 0.355 s with one per core.
	a.walkSem = make(chan struct{}, runtime.GOMAXPROCS(0))
	a.chunkers = make(chan repo.Chunker, 1)
	a.chunkers <- nil // created on first use
	// A file smaller than a chunk is read whole into one buffer, skipping
	// the chunker. Each file worker has its own for the run: buffers from
	// a sync.Pool would be lost at each collection and their memory faulted
	// in again.
	a.smallBufs = make(chan *[]byte, a.opts.FileWorkers)
	for range a.opts.FileWorkers {
		b := make([]byte, 0, 64<<10)
		a.smallBufs <- &b
	}
	var fileWG, blobWG sync.WaitGroup
	for range a.opts.BlobWorkers {
		blobWG.Go(a.blobWorker)
	}
	for range a.opts.FileWorkers {
		fileWG.Go(a.fileWorker)
	}

	var parentRoot *snapshot.Tree
	if !a.opts.ParentTree.IsNull() {
		parentRoot, _ = a.loadTree(ctx, a.opts.ParentTree)
	}
	rootFut := a.saveVirtual(ctx, "/", buildTrie(targets), parentRoot)

	root := rootFut.wait()
	close(a.files)
	fileWG.Wait()
	close(a.blobs)
	blobWG.Wait()
	if err := a.failed(); err != nil {
		return repo.ID{}, nil, err
	}
	if err := ctx.Err(); err != nil {
		return repo.ID{}, nil, err
	}
	if root == nil {
		return repo.ID{}, nil, errors.New("nothing was backed up")
	}
	return root.Subtree, targets, nil
}

func cleanTargets(paths []string) ([]string, error) {
	var out []string
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, err
		}
		if _, err := os.Lstat(abs); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("%s: %w", p, ErrPathNotExist)
			}
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		out = append(out, abs)
	}
	sort.Strings(out)
	// Drop targets inside other targets: any kept one, not only the last
	// ("a", "a-x", "a/b" sort in that order).
	var kept []string
outer:
	for _, p := range out {
		for _, k := range kept {
			if p == k || strings.HasPrefix(p, strings.TrimSuffix(k, "/")+"/") {
				continue outer
			}
		}
		kept = append(kept, p)
	}
	return kept, nil
}

// ErrPathNotExist is returned when a path given to back up does not exist.
var ErrPathNotExist = errors.New("path does not exist")

// trie holds the targets by path component; a leaf marks a target to walk.
type trie struct {
	children map[string]*trie
	target   string
}

func buildTrie(targets []string) *trie {
	root := &trie{children: map[string]*trie{}}
	for _, t := range targets {
		cur := root
		if t == "/" {
			root.target = "/"
			continue
		}
		for _, c := range strings.Split(strings.TrimPrefix(t, "/"), "/") {
			next := cur.children[c]
			if next == nil {
				next = &trie{children: map[string]*trie{}}
				cur.children[c] = next
			}
			cur = next
		}
		cur.target = t
	}
	return root
}

// saveVirtual saves the directories above the targets: only the named children
// are included, each with the metadata of the real directory.
func (a *Archiver) saveVirtual(ctx context.Context, path string, t *trie, parent *snapshot.Tree) *future {
	if t.target != "" {
		return a.saveDirAt(ctx, path, parent)
	}
	names := make([]string, 0, len(t.children))
	for n := range t.children {
		names = append(names, n)
	}
	sort.Strings(names)
	futs := make([]*future, 0, len(names))
	for _, name := range names {
		child := t.children[name]
		cpath := filepath.Join(path, name)
		var pnode *snapshot.Node
		if parent != nil {
			pnode = parent.Find(name)
		}
		if child.target != "" {
			futs = append(futs, a.saveEntry(ctx, nil, cpath, cpath, pnode, 0))
			continue
		}
		node, err := a.meta.NodeAt(unix.AT_FDCWD, cpath, cpath, nil)
		if err == nil && node.Type == snapshot.TypeSymlink {
			// A target below a symbolic link to a directory (/home ->
			// /data/home, backing up /home/alice): the link is recorded as
			// the directory it leads to, as the target's path reads. A
			// symlink node holds no subtree: the target would be stored
			// and never be found again.
			node, err = a.followedDirNode(cpath)
		}
		if err != nil {
			a.report(cpath, err)
			if !onlyXattrsUnread(node, err) {
				continue
			}
		}
		var ptree *snapshot.Tree
		if pnode != nil && pnode.Type == snapshot.TypeDir {
			ptree, _ = a.loadTree(ctx, pnode.Subtree)
		}
		f := a.saveVirtual(ctx, cpath, child, ptree)
		futs = append(futs, a.finishDir(ctx, node, f))
	}
	dirNode := &snapshot.Node{Name: "/", Type: snapshot.TypeDir}
	return a.finishTree(ctx, path, dirNode, futs, parent)
}

// followedDirNode is the node of the directory path leads to, following
// symbolic links, named as path's last component. It is opened as path/.:
// openNoatime does not follow a link in the last component, and "." never
// is one.
func (a *Archiver) followedDirNode(path string) (*snapshot.Node, error) {
	fd, err := openNoatime(unix.AT_FDCWD, path+"/.", path, unix.O_DIRECTORY)
	if err != nil {
		return nil, err
	}
	defer fd.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(fd), &st); err != nil {
		return nil, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	return a.meta.NodeOfFile(int(fd), path, &st)
}

// finishDir wraps the future of a virtual directory's tree into its node.
func (a *Archiver) finishDir(ctx context.Context, node *snapshot.Node, inner *future) *future {
	f := &future{done: make(chan struct{})}
	go func() {
		defer close(f.done)
		if n := inner.wait(); n != nil {
			node.Subtree = n.Subtree
			f.node = node
		}
	}()
	return f
}

// saveDirAt saves the directory at path, returning a future holding only its Subtree.
func (a *Archiver) saveDirAt(ctx context.Context, path string, parent *snapshot.Tree) *future {
	node, err := a.meta.NodeAt(unix.AT_FDCWD, path, path, nil)
	if err != nil {
		a.report(path, err)
		return resolved(nil)
	}
	return a.walkDir(ctx, nil, path, path, node, parent, node.DeviceID)
}

// saveEntry saves the entry name, of any kind, of the directory dir, whose
// full path is path (dir nil: name is a path). dev is the device of the
// backup root for --one-file-system (0 means the entry itself is a root).
func (a *Archiver) saveEntry(ctx context.Context, dir *dirRef, name, path string, pnode *snapshot.Node, dev uint64) *future {
	if a.excluded(path) {
		return resolved(nil)
	}
	node, err := a.meta.NodeAt(dir.dirfd(), name, path, pnode)
	if err != nil {
		a.report(path, err)
		if !onlyXattrsUnread(node, err) {
			return resolved(nil)
		}
	}
	if dev == 0 {
		dev = node.DeviceID
	}
	switch node.Type {
	case snapshot.TypeDir:
		var ptree *snapshot.Tree
		if pnode != nil && pnode.Type == snapshot.TypeDir {
			ptree, _ = a.loadTree(ctx, pnode.Subtree)
		}
		if a.opts.OneFileSystem && node.DeviceID != dev {
			// A mount point: keep the directory, not what is mounted on it.
			return a.finishTree(ctx, path, node, nil, ptree)
		}
		// Walk the subdirectory in another goroutine while a slot is free:
		// reading directories and lstat-ing entries is latency-bound, and an
		// unchanged re-backup is nothing but that.
		select {
		case a.walkSem <- struct{}{}:
			f := &future{done: make(chan struct{})}
			dir.hold() // until the subdirectory is open
			go func() {
				inner := a.walkDir(ctx, dir, name, path, node, ptree, dev)
				dir.release()
				<-a.walkSem
				f.node = inner.wait()
				close(f.done)
			}()
			return f
		default:
			return a.walkDir(ctx, dir, name, path, node, ptree, dev)
		}
	case snapshot.TypeFile:
		a.Stats.FilesProcessed.Add(1)
		a.Stats.BytesProcessed.Add(node.Size)
		if pnode != nil && unchanged(pnode, node, a.opts.ParentTime) && a.haveContent(pnode.Content) {
			node.Content = pnode.Content
			a.Stats.FilesUnchanged.Add(1)
			return resolved(node)
		}
		return a.queueFile(ctx, &fileJob{path: path, dir: dir, name: name, node: node, parent: pnode})
	default:
		return resolved(node)
	}
}

// racyWindow covers the coarsest file timestamps met (whole seconds: ext4
// with 128-byte inodes, FAT and some network file systems; others tick at
// the kernel's coarse clock, a few milliseconds).
const racyWindow = time.Second

// unchanged reports whether a file can keep the content the parent
// snapshot recorded for it (old), whose backup started at parentStart.
func unchanged(old, n *snapshot.Node, parentStart time.Time) bool {
	if !parentStart.IsZero() && !old.ModTime.Before(parentStart.Add(-racyWindow)) {
		return false
	}
	return old.Type == snapshot.TypeFile && old.Size == n.Size && old.Inode == n.Inode &&
		old.ModTime.Equal(n.ModTime) && old.ChangeTime.Equal(n.ChangeTime)
}

func (a *Archiver) haveContent(ids []repo.ID) bool {
	for _, id := range ids {
		if !a.repo.HasBlob(repo.BlobHandle{ID: id, Type: repo.DataBlob}) {
			return false
		}
	}
	return true
}

// walkDir saves the directory name of dir (dir nil: name is a path), whose
// full path is path and whose lstat gave node. It is opened relative to
// dir, never following a symbolic link: a directory of the path renamed and
// replaced by a symbolic link since the lstat (a user racing a backup run
// as root, with a link to /etc) cannot make the walk list another
// directory under its name. (Its inode is not compared with the lstat's:
// an automount point not mounted yet is mounted by the open, and is then
// another inode on another device.)
func (a *Archiver) walkDir(ctx context.Context, dir *dirRef, name, path string, node *snapshot.Node, parent *snapshot.Tree, dev uint64) *future {
	dirfd, ents, err := readDir(dir.dirfd(), name, path)
	if err != nil {
		a.report(path, err)
		// Keep the directory itself, empty: its metadata was readable.
		return a.finishTree(ctx, path, node, nil, parent)
	}
	self := newDirRef(dirfd)
	defer self.release()
	futs := make([]*future, 0, len(ents))
	for _, ent := range ents {
		if ctx.Err() != nil || a.failed() != nil {
			break
		}
		var pnode *snapshot.Node
		if parent != nil {
			pnode = parent.Find(ent.name)
		}
		epath := filepath.Join(path, ent.name)
		if ent.typ == unix.DT_REG && pnode == nil {
			futs = append(futs, a.saveNewFile(ctx, self, ent.name, epath))
			continue
		}
		futs = append(futs, a.saveEntry(ctx, self, ent.name, epath, pnode, dev))
	}
	return a.finishTree(ctx, path, node, futs, parent)
}

// saveNewFile saves a regular file that has no node in the parent snapshot
// to compare with. The walk does not stat it: the file worker that reads it
// takes the metadata from the descriptor it reads (fstat, flistxattr). That
// is one system call per file fewer than an lstat here and an fstat there.
func (a *Archiver) saveNewFile(ctx context.Context, dir *dirRef, name, path string) *future {
	if a.excluded(path) {
		return resolved(nil)
	}
	a.Stats.FilesProcessed.Add(1)
	return a.queueFile(ctx, &fileJob{path: path, dir: dir, name: name})
}

// queueFile hands job to the file workers and returns its future. The job
// holds its directory until the worker is done with it.
func (a *Archiver) queueFile(ctx context.Context, job *fileJob) *future {
	job.fut = &future{done: make(chan struct{})}
	job.dir.hold()
	select {
	case a.files <- job:
		return job.fut
	case <-ctx.Done():
		job.dir.release()
		return resolved(nil)
	}
}

// onlyXattrsUnread reports whether node, read with the error err (NodeAt,
// NodeOfFile), is complete but for its extended attributes: the entry is
// then kept and err reported.
func onlyXattrsUnread(node *snapshot.Node, err error) bool {
	var xe *fs.XattrError
	return node != nil && errors.As(err, &xe)
}

// direntBufs hold readDir's buffer, in use only during the call: a new one
// for each directory was 115 MB allocated in a walk of the bench's 3,600
// (small, like os.File's own directory buffers, so a sync.Pool is enough).
var direntBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// dirEntry is an entry of a directory: its name and its type from the
// directory itself (unix.DT_REG, ...; DT_UNKNOWN where the file system does
// not say).
type dirEntry struct {
	name string
	typ  uint8
}

// readDir opens the directory name of dirfd (whose full path is path),
// not following a symbolic link, and returns it with its entries, sorted by
// name. The entries are then read relative to it.
func readDir(dirfd int, name, path string) (int, []dirEntry, error) {
	// Like files, directories are read without changing their atime.
	f, err := openNoatime(dirfd, name, path, unix.O_DIRECTORY)
	if err != nil {
		return -1, nil, err
	}
	fd := int(f)
	var ents []dirEntry
	bp := direntBufs.Get().(*[]byte)
	defer direntBufs.Put(bp)
	buf := *bp
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			unix.Close(fd)
			return -1, nil, &os.PathError{Op: "readdir", Path: path, Err: err}
		}
		if n <= 0 {
			break
		}
		if ents, err = parseDirents(buf[:n], ents); err != nil {
			unix.Close(fd)
			return -1, nil, &os.PathError{Op: "readdir", Path: path, Err: err}
		}
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].name < ents[j].name })
	return fd, ents, nil
}

// parseDirents appends the entries of getdents64's records in buf to ents,
// leaving out "." and ".." and records without an inode (removed entries,
// on some file systems). A record is the inode (8 bytes), the offset (8),
// the record's length (2), the type (1) and the name, NUL-terminated.
func parseDirents(buf []byte, ents []dirEntry) ([]dirEntry, error) {
	const nameOff = 19
	for len(buf) > 0 {
		if len(buf) < nameOff {
			return ents, errors.New("truncated directory entry")
		}
		reclen := int(binary.NativeEndian.Uint16(buf[16:18]))
		if reclen <= nameOff || reclen > len(buf) {
			return ents, errors.New("bad directory entry length")
		}
		name := buf[nameOff:reclen]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		ino := binary.NativeEndian.Uint64(buf[0:8])
		if ino != 0 && len(name) > 0 && string(name) != "." && string(name) != ".." {
			ents = append(ents, dirEntry{name: string(name), typ: buf[18]})
		}
		buf = buf[reclen:]
	}
	return ents, nil
}

// finishTree waits for the children in the background, then saves the tree
// blob and completes the directory's node.
func (a *Archiver) finishTree(ctx context.Context, path string, node *snapshot.Node, futs []*future, parent *snapshot.Tree) *future {
	f := &future{done: make(chan struct{})}
	go func() {
		defer close(f.done)
		tree := &snapshot.Tree{Nodes: make([]*snapshot.Node, 0, len(futs))}
		for _, cf := range futs {
			if n := cf.wait(); n != nil {
				tree.Nodes = append(tree.Nodes, n)
			}
		}
		if a.failed() != nil || ctx.Err() != nil {
			return
		}
		tree.Sort()
		id, added, _, err := a.repo.SaveBlob(ctx, repo.TreeBlob, tree.Encode(), repo.ID{})
		if errors.Is(err, repo.ErrBlobTooLarge) && path != "/" {
			// A directory of several hundred thousand entries: it is left
			// out and named, the rest of the backup goes on (exit 3).
			a.report(path, fmt.Errorf("directory left out: its %d entries make %w", len(tree.Nodes), err))
			return
		}
		if err != nil {
			a.fatal(fmt.Errorf("save tree of %s: %w", path, err))
			return
		}
		switch {
		case parent == nil:
			a.Stats.DirsNew.Add(1)
		case added:
			a.Stats.DirsChanged.Add(1)
		default:
			a.Stats.DirsUnchanged.Add(1)
		}
		node.Subtree = id
		f.node = node
	}()
	return f
}

func (a *Archiver) loadTree(ctx context.Context, id repo.ID) (*snapshot.Tree, error) {
	data, err := a.repo.LoadBlob(ctx, repo.TreeBlob, id)
	if err != nil {
		return nil, err
	}
	return snapshot.DecodeTree(data)
}

func (a *Archiver) excluded(path string) bool {
	return Excluded(a.opts.Excludes, path)
}

// Excluded reports whether path matches one of the patterns. A pattern without
// a slash matches any path component's name ("*.tmp", ".cache"); a pattern
// starting with a slash matches the whole absolute path or one of its leading
// directories ("/home/*/Downloads"); any other pattern with a slash matches
// that many consecutive components anywhere in the path ("node_modules/.cache",
// "*/tmp"), as restic's do. A trailing slash is ignored.
func Excluded(patterns []string, path string) bool {
	base := filepath.Base(path)
	for _, p := range patterns {
		switch {
		case !strings.Contains(p, "/"):
			if ok, _ := filepath.Match(p, base); ok {
				return true
			}
		case strings.HasPrefix(p, "/"):
			for cur := path; ; cur = filepath.Dir(cur) {
				if ok, _ := filepath.Match(strings.TrimSuffix(p, "/"), cur); ok {
					return true
				}
				if cur == "/" || cur == "." {
					break
				}
			}
		default:
			if matchComponents(strings.TrimSuffix(p, "/"), path) {
				return true
			}
		}
	}
	return false
}

// matchComponents reports whether the relative pattern p, of n components,
// matches n consecutive components of path (filepath.Match's wildcards never
// match a slash, so no other run of components can). It allocates nothing:
// it runs for every entry of the walk.
func matchComponents(p, path string) bool {
	n := strings.Count(p, "/") + 1
	path = strings.Trim(path, "/")
	for start := 0; ; {
		// end: after n components from start, if there are that many.
		end := start
		for k := 0; k < n; k++ {
			i := strings.IndexByte(path[end:], '/')
			switch {
			case k == n-1 && i < 0:
				end = len(path)
			case k == n-1:
				end += i
			case i < 0:
				return false
			default:
				end += i + 1
			}
		}
		if ok, _ := filepath.Match(p, path[start:end]); ok {
			return true
		}
		i := strings.IndexByte(path[start:], '/')
		if i < 0 {
			return false
		}
		start += i + 1
	}
}

func (a *Archiver) fileWorker() {
	for job := range a.files {
		if a.failed() != nil || a.ctx.Err() != nil {
			job.dir.release()
			close(job.fut.done)
			continue
		}
		n, err := a.saveFile(job)
		job.dir.release()
		if err != nil {
			a.report(job.path, err)
			n = nil
		}
		if n != nil && n.Type == snapshot.TypeFile {
			if job.parent == nil {
				a.Stats.FilesNew.Add(1)
			} else {
				a.Stats.FilesChanged.Add(1)
			}
		}
		job.fut.node = n
		close(job.fut.done)
	}
}

// rawFile reads a source file through its bare descriptor. os.File would
// register every file with the runtime's poller (several fcntl and a failing
// epoll_ctl per file): a tenth of a small-file backup's system calls.
type rawFile int

// openNoatime opens name, relative to dirfd, read-only without following a
// final symlink and, where allowed, without updating its atime; extra adds
// flags (O_DIRECTORY). path is the entry's full path, for errors.
// O_NONBLOCK (no effect on regular files and directories) keeps the open
// from waiting when the entry has been replaced by a FIFO since it was
// found: the caller's fstat then sees that it is not what was found. It
// also refuses, with EWOULDBLOCK, to wait for another holder's lease on the
// file to be broken (an NFS server's write delegation, Samba's oplocks):
// that open is made again without it, and waits as any reader would.
func openNoatime(dirfd int, name, path string, extra int) (rawFile, error) {
	flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK | extra
	for {
		fd, err := unix.Openat(dirfd, name, flags|unix.O_NOATIME, 0)
		if err == unix.EPERM { // O_NOATIME needs ownership (or root)
			fd, err = unix.Openat(dirfd, name, flags, 0)
		}
		if err == unix.EINTR {
			continue
		}
		if err == unix.EWOULDBLOCK && flags&unix.O_NONBLOCK != 0 {
			flags &^= unix.O_NONBLOCK
			continue
		}
		if err != nil {
			return -1, &os.PathError{Op: "open", Path: path, Err: err}
		}
		return rawFile(fd), nil
	}
}

func (f rawFile) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(int(f), p)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			// A file system that applies O_NONBLOCK to regular files (some
			// FUSE ones): read as if it had not been given.
			if fl, ferr := unix.FcntlInt(uintptr(f), unix.F_GETFL, 0); ferr == nil && fl&unix.O_NONBLOCK != 0 {
				if _, ferr := unix.FcntlInt(uintptr(f), unix.F_SETFL, fl&^unix.O_NONBLOCK); ferr == nil {
					continue
				}
			}
		}
		if err != nil {
			return 0, err
		}
		if n == 0 && len(p) > 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

func (f rawFile) Close() error { return unix.Close(int(f)) }

func (a *Archiver) saveFile(job *fileJob) (*snapshot.Node, error) {
	f, err := openNoatime(job.dir.dirfd(), job.at(), job.path, 0)
	if err != nil {
		if job.node == nil && errors.Is(err, unix.ELOOP) {
			// The directory said a regular file; it is a symbolic link
			// (now, or wrongly: some file systems' directory types).
			return a.notRegular(job)
		}
		return nil, err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f), &st); err != nil {
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG && job.node == nil {
		return a.notRegular(job)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || job.node != nil && st.Ino != job.node.Inode {
		return nil, errors.New("file was replaced while being read")
	}
	node := job.node
	if node == nil { // found by the walk without a stat (saveNewFile)
		var err error
		node, err = a.meta.NodeOfFile(int(f), job.path, &st)
		if err != nil {
			if !onlyXattrsUnread(node, err) {
				return nil, err
			}
			a.report(job.path, err)
		}
		a.Stats.BytesProcessed.Add(node.Size)
	}
	var rd io.Reader = f
	if st.Size < int64(a.repo.MinChunk()) {
		// One chunk: read it whole.
		bp := <-a.smallBufs
		defer func() { a.smallBufs <- bp }()
		buf, end, err := readSmall(f, (*bp)[:0], st.Size, a.repo.MinChunk())
		*bp = buf
		if err != nil {
			return nil, err
		}
		if end {
			a.Stats.BytesRead.Add(uint64(len(buf)))
			node.Size = uint64(len(buf))
			if len(buf) > 0 {
				id, err := a.saveData(buf)
				if err != nil {
					return nil, err
				}
				node.Content = []repo.ID{id}
			}
			return node, nil
		}
		// More than its size said (a file that grew, a /proc file that
		// says 0): chunked, from what was read, never held whole.
		rd = io.MultiReader(bytes.NewReader(buf), f)
	}
	var ch repo.Chunker
	select {
	case ch = <-a.chunkers:
	case <-a.ctx.Done():
		return nil, a.ctx.Err()
	}
	defer func() { a.chunkers <- ch }()
	if ch == nil {
		ch = a.repo.NewChunker(rd)
	} else {
		ch.Reset(rd)
	}
	var ids []*repo.ID
	var errp atomic.Pointer[error]
	var size uint64
	// Chunks go to the blob workers without a copy; before the chunker
	// overwrites one, it and those before it must be done.
	var dones []chan struct{}
	waited := 0
	release := func(n int) {
		for ; waited < n; waited++ {
			<-dones[waited]
		}
	}
	ch.OnOverwrite(release)
	defer ch.OnOverwrite(nil)
	for {
		chunk, err := ch.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			release(len(dones))
			return nil, err
		}
		size += uint64(len(chunk))
		a.Stats.BytesRead.Add(uint64(len(chunk)))
		if a.testChunkRead != nil {
			a.testChunkRead(job.path)
		}
		id := new(repo.ID)
		ids = append(ids, id)
		done := make(chan struct{})
		select {
		case a.blobs <- &blobJob{data: chunk, result: id, done: done, errp: &errp}:
			dones = append(dones, done)
		case <-a.ctx.Done():
			release(len(dones))
			return nil, a.ctx.Err()
		}
	}
	release(len(dones))
	if e := errp.Load(); e != nil {
		a.fatal(*e)
		return nil, *e
	}
	// A file read in many system calls is looked at again: a writer may
	// have changed it meanwhile (a file read whole in one is not: the
	// window is microseconds, and the check a system call per file).
	var after unix.Stat_t
	if err := unix.Fstat(int(f), &after); err == nil && (after.Size != st.Size || after.Mtim != st.Mtim || after.Ctim != st.Ctim) {
		a.Stats.Warnings.Add(1)
		if a.opts.Warn != nil {
			a.opts.Warn(job.path, &os.PathError{Op: "read", Path: job.path, Err: ErrChangedWhileRead})
		}
	}
	node.Size = size
	node.Content = make([]repo.ID, len(ids))
	for i, id := range ids {
		node.Content[i] = *id
	}
	return node, nil
}

// notRegular saves the entry of a job the walk took for a regular file from
// its directory's listing without a stat, and found otherwise when opened:
// it is saved as what its lstat says it is, as the walk would have.
func (a *Archiver) notRegular(job *fileJob) (*snapshot.Node, error) {
	node, err := a.meta.NodeAt(job.dir.dirfd(), job.at(), job.path, nil)
	if err != nil {
		if !onlyXattrsUnread(node, err) {
			return nil, err
		}
		a.report(job.path, err)
	}
	if node.Type == snapshot.TypeFile {
		// A regular file again: replaced twice while being read.
		return nil, errors.New("file was replaced while being read")
	}
	return node, nil
}

// readSmall reads a file that fstat says is smaller than limit into buf's
// storage, up to limit bytes; end reports that it met the end of the file
// (else limit bytes were read and the file goes on).
func readSmall(f rawFile, buf []byte, size int64, limit int) (_ []byte, end bool, _ error) {
	if want := int(min(size+1, int64(limit))); cap(buf) < want {
		buf = make([]byte, 0, want)
	}
	for {
		if len(buf) >= limit {
			return buf, false, nil
		}
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(2*cap(buf), limit)-len(buf))
		}
		n, err := f.Read(buf[len(buf):min(cap(buf), limit)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, true, nil
		}
		if err != nil {
			return buf, false, err
		}
		// A first read that asked for more than the file's size and got
		// exactly its size met the end of the file: the read that would
		// return 0 to say so is one system call in seven for a small file.
		// (A file that grew just after is the same as one that grew just
		// after that read.)
		if n == len(buf) && int64(n) == size && n < cap(buf) {
			return buf, true, nil
		}
	}
}

func (a *Archiver) blobWorker() {
	for job := range a.blobs {
		if job.errp.Load() == nil && a.failed() == nil {
			id, err := a.saveData(job.data)
			if err != nil {
				job.errp.CompareAndSwap(nil, &err)
			}
			*job.result = id
		}
		close(job.done)
	}
}

func (a *Archiver) saveData(data []byte) (repo.ID, error) {
	id, added, n, err := a.repo.SaveBlob(a.ctx, repo.DataBlob, data, repo.ID{})
	if err != nil {
		a.fatal(err)
		return id, err
	}
	if added {
		a.Stats.BlobsAdded.Add(1)
		a.Stats.BytesAdded.Add(uint64(n))
		a.Stats.BytesAddedRaw.Add(uint64(len(data)))
	}
	return id, nil
}

// SaveStream stores the content of rd as a single file named name at the root
// of a new tree and returns the tree's ID and the file's size.
func (a *Archiver) SaveStream(ctx context.Context, name string, rd io.Reader, mode uint32) (repo.ID, uint64, error) {
	if err := fs.ValidName(name); err != nil {
		return repo.ID{}, 0, err
	}
	a.ctx = ctx
	ch := a.repo.NewChunker(rd)
	now := time.Now()
	node := &snapshot.Node{Name: name, Type: snapshot.TypeFile, Mode: mode, UID: uint32(os.Getuid()), GID: uint32(os.Getgid()),
		ModTime: now, AccessTime: now, ChangeTime: now, Links: 1}
	for {
		chunk, err := ch.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return repo.ID{}, 0, err
		}
		id, err := a.saveData(chunk)
		if err != nil {
			return repo.ID{}, 0, err
		}
		node.Size += uint64(len(chunk))
		node.Content = append(node.Content, id)
	}
	a.Stats.FilesNew.Add(1)
	a.Stats.FilesProcessed.Add(1)
	a.Stats.BytesProcessed.Add(node.Size)
	tree := &snapshot.Tree{Nodes: []*snapshot.Node{node}}
	id, _, _, err := a.repo.SaveBlob(ctx, repo.TreeBlob, tree.Encode(), repo.ID{})
	return id, node.Size, err
}

// SetParent sets the root tree of the previous snapshot to compare against,
// and when its backup started.
func (a *Archiver) SetParent(tree repo.ID, started time.Time) {
	a.opts.ParentTree, a.opts.ParentTime = tree, started
}

// CleanTargets makes paths absolute, checks that they exist, sorts them and
// drops those inside others; these are the snapshot's paths.
func CleanTargets(paths []string) ([]string, error) { return cleanTargets(paths) }
