package checker

import (
	"context"
	"errors"
	"fmt"
	"path"
	"runtime"
	"sort"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"bunker/internal/backend"
	"bunker/internal/repo"
	"bunker/internal/repo/index"
	"bunker/internal/repo/pack"
	"bunker/internal/repo/repository"
	"bunker/internal/snapshot"
)

// Problem is one finding of a check.
type Problem struct {
	Kind   string `json:"kind"`             // "index", "pack", "snapshot", "tree", "blob"
	Object string `json:"object,omitempty"` // the file or blob concerned
	Msg    string `json:"message"`
}

func (p Problem) String() string {
	if p.Object != "" {
		return fmt.Sprintf("%s %s: %s", p.Kind, p.Object, p.Msg)
	}
	return fmt.Sprintf("%s: %s", p.Kind, p.Msg)
}

// Damage names what a damaged blob breaks.
type Damage struct {
	Pack      string   `json:"pack"`
	Blob      string   `json:"blob"`
	Snapshots []string `json:"snapshots"`
	Files     []string `json:"files"`
}

// Options select how much a check reads.
type Options struct {
	// ReadData reads and verifies every pack of the subset.
	ReadData bool
	// Subset selects packs for ReadData: pack n of every m (1 <= N <= M), by
	// the first bytes of the pack ID, so running 1/M..M/M covers everything.
	SubsetN, SubsetM uint32
	Progress         func(done, total int)
}

// Result is the outcome of a check.
type Result struct {
	Problems          []Problem `json:"problems"`
	Damaged           []Damage  `json:"damaged,omitempty"`
	Snapshots         int       `json:"snapshots"`
	Trees             int       `json:"trees"`
	Packs             int       `json:"packs"`
	PacksRead         int       `json:"packs_read"`
	UnreferencedPacks int       `json:"unreferenced_packs"`
}

// OK reports whether no problem was found.
func (r *Result) OK() bool { return len(r.Problems) == 0 }

type checker struct {
	repo *repository.Repository
	mu   sync.Mutex
	res  Result
	// packs as the index files describe them.
	packs map[repo.ID][]pack.Blob
	bad   map[repo.ID]repo.ID // damaged blob -> pack
	quiet bool                // set while tracing damage: problems were reported already
	// superseded index files (names); they and unindexed packs are no
	// longer used, so their locks may run out.
	superseded map[string]bool
}

func (c *checker) problem(kind, obj, format string, args ...any) {
	if c.quiet {
		return
	}
	c.mu.Lock()
	c.res.Problems = append(c.res.Problems, Problem{Kind: kind, Object: obj, Msg: fmt.Sprintf(format, args...)})
	c.mu.Unlock()
}

// Check verifies the repository's structure, and with ReadData its content.
// The repository's index must not be loaded yet: the check loads it itself.
func Check(ctx context.Context, r *repository.Repository, opts Options) (*Result, error) {
	c := &checker{repo: r, packs: make(map[repo.ID][]pack.Blob), bad: make(map[repo.ID]repo.ID)}
	if err := c.checkIndex(ctx); err != nil {
		return nil, err
	}
	stored, err := c.checkPacks(ctx)
	if err != nil {
		return nil, err
	}
	snaps := c.checkSnapshots(ctx)
	if err := c.checkObjectLocks(ctx); err != nil {
		return nil, err
	}
	if opts.ReadData {
		if err := c.readData(ctx, stored, opts); err != nil {
			return nil, err
		}
		if len(c.bad) > 0 {
			c.locateDamage(ctx, snaps)
		}
	}
	sort.Slice(c.res.Problems, func(i, j int) bool { return c.res.Problems[i].String() < c.res.Problems[j].String() })
	return &c.res, ctx.Err()
}

func (c *checker) checkIndex(ctx context.Context) error {
	ids, err := c.repo.List(ctx, backend.IndexFile)
	if err != nil {
		return err
	}
	files := map[repo.ID]*index.File{}
	for _, id := range ids {
		f, err := c.repo.LoadIndexFile(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			c.problem("index", id.String(), "%v", err)
			continue
		}
		files[id] = f
	}
	c.superseded = map[string]bool{}
	for _, f := range files {
		for _, id := range f.Supersedes {
			c.superseded[id.String()] = true
		}
	}
	idx := c.repo.Index()
	for _, p := range index.Live(files) {
		// A pack may be listed by two live index files (a prune that could
		// not tell whether its new index was stored lists the packs it meant
		// to delete again): the longer list counts, as for prune.
		if blobs, ok := c.packs[p.ID]; ok && len(blobs) >= len(p.Blobs) {
			continue
		}
		c.packs[p.ID] = p.Blobs
		idx.AddPack(p.ID, p.Blobs)
	}
	return nil
}

func (c *checker) checkPacks(ctx context.Context) (map[repo.ID]int64, error) {
	stored := map[repo.ID]int64{}
	err := c.repo.Backend().List(ctx, backend.PackFile, func(fi backend.FileInfo) error {
		id, err := repo.ParseID(fi.Name)
		if err != nil {
			c.problem("pack", fi.Name, "file name is not a pack ID")
			return nil
		}
		stored[id] = fi.Size
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.res.Packs = len(stored)
	for id, blobs := range c.packs {
		size, ok := stored[id]
		if !ok {
			c.problem("pack", id.String(), "missing: the index lists %d blobs in it", len(blobs))
			for _, b := range blobs {
				c.bad[b.ID] = id
			}
			continue
		}
		if want := pack.ExpectedSize(blobs); size != want {
			c.problem("pack", id.String(), "size %d, but the index implies %d (truncated or extended)", size, want)
			for _, b := range blobs {
				c.bad[b.ID] = id
			}
		}
	}
	for id := range stored {
		if _, ok := c.packs[id]; !ok {
			// Left by an interrupted backup; harmless, prune removes it.
			c.res.UnreferencedPacks++
		}
	}
	return stored, nil
}

func (c *checker) checkSnapshots(ctx context.Context) []*snapshot.Snapshot {
	ids, err := c.repo.List(ctx, backend.SnapshotFile)
	if err != nil {
		c.problem("snapshot", "", "list: %v", err)
		return nil
	}
	var snaps []*snapshot.Snapshot
	for _, id := range ids {
		sn, err := c.repo.LoadSnapshot(ctx, id)
		if err != nil {
			c.problem("snapshot", id.String(), "%v", err)
			continue
		}
		snaps = append(snaps, sn)
	}
	c.res.Snapshots = len(snaps)
	seen := map[repo.ID]bool{}
	for _, sn := range snaps {
		c.walkTree(ctx, sn.Tree, "/", seen, func(string, *snapshot.Node) {})
	}
	c.res.Trees = len(seen)
	return snaps
}

// walkTree checks every tree below id once, calling fn for each node.
func (c *checker) walkTree(ctx context.Context, id repo.ID, dir string, seen map[repo.ID]bool, fn func(p string, n *snapshot.Node)) {
	if seen[id] || ctx.Err() != nil {
		return
	}
	seen[id] = true
	data, err := c.repo.LoadBlob(ctx, repo.TreeBlob, id)
	if err != nil {
		c.problem("tree", id.String(), "at %s: %v", dir, err)
		return
	}
	tree, err := snapshot.DecodeTree(data)
	if err != nil {
		c.problem("tree", id.String(), "at %s: %v", dir, err)
		return
	}
	idx := c.repo.Index()
	for _, n := range tree.Nodes {
		p := path.Join(dir, n.Name)
		fn(p, n)
		var size uint64
		complete := true
		for _, b := range n.Content {
			loc, ok := idx.Lookup(repo.BlobHandle{ID: b, Type: repo.DataBlob})
			if !ok {
				c.problem("blob", b.String(), "data blob of %s is missing", p)
				complete = false
				continue
			}
			size += uint64(loc.RawLength)
		}
		if n.Type == snapshot.TypeFile && complete && size != n.Size {
			c.problem("tree", id.String(), "%s: size %d recorded, content holds %d bytes", p, n.Size, size)
		}
		if n.Type == snapshot.TypeDir {
			c.walkTree(ctx, n.Subtree, p, seen, fn)
		}
	}
}

func inSubset(id repo.ID, n, m uint32) bool {
	if m <= 1 {
		return true
	}
	v := uint32(id[0])<<24 | uint32(id[1])<<16 | uint32(id[2])<<8 | uint32(id[3])
	return v%m == n-1
}

func (c *checker) readData(ctx context.Context, stored map[repo.ID]int64, opts Options) error {
	var ids []repo.ID
	for id := range stored {
		if _, indexed := c.packs[id]; indexed && inSubset(id, opts.SubsetN, opts.SubsetM) {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return string(ids[i][:]) < string(ids[j][:]) })
	var done int
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0) + 1)
	for _, id := range ids {
		g.Go(func() error {
			c.readPack(gctx, id, stored[id])
			mu.Lock()
			done++
			if opts.Progress != nil {
				opts.Progress(done, len(ids))
			}
			mu.Unlock()
			return gctx.Err()
		})
	}
	c.res.PacksRead = len(ids)
	return g.Wait()
}

func (c *checker) markBad(pid repo.ID, blobs []pack.Blob) {
	c.mu.Lock()
	for _, b := range blobs {
		c.bad[b.ID] = pid
	}
	c.mu.Unlock()
}

func (c *checker) readPack(ctx context.Context, id repo.ID, size int64) {
	want := append([]pack.Blob(nil), c.packs[id]...)
	sort.Slice(want, func(i, j int) bool { return want[i].Offset < want[j].Offset })
	// Each listed blob is decoded as the pack streams past; the whole pack is
	// hashed on the way and its own header compared with the index at the end.
	res, err := c.repo.ReadPack(ctx, id, size, want, func(b pack.Blob, _ []byte, err error) error {
		if err != nil {
			c.problem("blob", b.ID.String(), "in pack %s: %v", id.Short(), err)
			c.markBad(id, []pack.Blob{b})
		}
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		c.problem("pack", id.String(), "read: %v", err)
		c.markBad(id, want)
		return
	}
	if res.Hash != id {
		c.problem("pack", id.String(), "content does not match its name (the file was changed or damaged)")
	}
	herr := res.HeaderErr
	if herr == nil && !sameBlobs(res.Header, want) {
		herr = errors.New("the pack header and the index disagree")
	}
	if herr != nil {
		c.problem("pack", id.String(), "header: %v", herr)
	}
}

func sameBlobs(a, b []pack.Blob) bool {
	if len(a) != len(b) {
		return false
	}
	m := make(map[repo.BlobHandle]pack.Blob, len(a))
	for _, x := range a {
		m[x.Handle()] = x
	}
	for _, y := range b {
		if x, ok := m[y.Handle()]; !ok || x != y {
			return false
		}
	}
	return true
}

// locateDamage names the snapshots and files that use damaged blobs.
func (c *checker) locateDamage(ctx context.Context, snaps []*snapshot.Snapshot) {
	byBlob := map[repo.ID]*Damage{}
	for b, p := range c.bad {
		byBlob[b] = &Damage{Pack: p.String(), Blob: b.String()}
	}
	c.quiet = true
	defer func() { c.quiet = false }()
	for _, sn := range snaps {
		hit := map[*Damage]bool{}
		if d := byBlob[sn.Tree]; d != nil {
			// The root tree itself: nothing below it can be walked.
			d.Files = appendOnce(d.Files, "/")
			hit[d] = true
		}
		c.walkTree(ctx, sn.Tree, "/", map[repo.ID]bool{}, func(p string, n *snapshot.Node) {
			for _, b := range n.Content {
				if d := byBlob[b]; d != nil {
					d.Files = appendOnce(d.Files, p)
					hit[d] = true
				}
			}
			if d := byBlob[n.Subtree]; d != nil && n.Type == snapshot.TypeDir {
				d.Files = appendOnce(d.Files, p+"/")
				hit[d] = true
			}
		})
		for d := range hit {
			d.Snapshots = appendOnce(d.Snapshots, sn.ID.String())
		}
	}
	for _, d := range byBlob {
		sort.Strings(d.Files)
		sort.Strings(d.Snapshots)
		c.res.Damaged = append(c.res.Damaged, *d)
	}
	sort.Slice(c.res.Damaged, func(i, j int) bool { return c.res.Damaged[i].Blob < c.res.Damaged[j].Blob })
}

func appendOnce(s []string, v string) []string {
	for _, x := range s {
		if x == v {
			return s
		}
	}
	return append(s, v)
}

// checkObjectLocks reports, for a repository under Object Lock, every object
// whose lock is missing, of another mode, or ends within a quarter of the
// lock period (prune extends locks at half of it; a quarter means prune has
// not run for a long time).
func (c *checker) checkObjectLocks(ctx context.Context) error {
	rt, ok := c.repo.Retainer()
	if !ok {
		return nil
	}
	mode := c.repo.Config().ObjectLock.Mode
	minUntil := time.Now().Add(c.repo.LockDuration() / 4)
	for _, t := range backend.AllTypes {
		if t == backend.LockFile {
			continue
		}
		var names []string
		err := c.repo.Backend().List(ctx, t, func(fi backend.FileInfo) error {
			if t == backend.IndexFile && c.superseded[fi.Name] {
				return nil
			}
			if id, err := repo.ParseID(fi.Name); t == backend.PackFile && (err != nil || c.packs[id] == nil) {
				return nil
			}
			names = append(names, fi.Name)
			return nil
		})
		if err != nil {
			return err
		}
		for _, name := range names {
			h := backend.Handle{Type: t, Name: name}
			m, until, err := rt.Retention(ctx, h)
			switch {
			case errors.Is(err, backend.ErrNotExist):
			case err != nil:
				return err
			case m == "" || until.IsZero():
				c.problem("lock", h.String(), "no Object Lock retention")
			case m != mode:
				c.problem("lock", h.String(), "Object Lock mode %s, the repository asks for %s", m, mode)
			case until.Before(minUntil):
				fix := "prune"
				if t == backend.SnapshotFile {
					fix = "forget with the retention policy"
				}
				c.problem("lock", h.String(), "locked only until %s (run %s to extend the locks)", until.Local().Format(time.DateTime), fix)
			}
		}
	}
	return nil
}
