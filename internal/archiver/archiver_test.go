package archiver

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"bunker/internal/backend/mem"
	"bunker/internal/repo"
	"bunker/internal/repo/repository"
	"bunker/internal/repo/repotest"
	"bunker/internal/snapshot"
)

// TestSaveFileReplacedByFIFO gives a file worker a job whose regular file
// has become a FIFO (same inode, as if found by the walk just before): it
// must fail the entry at once, not wait in open for a writer.
func TestSaveFileReplacedByFIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	ino := st.Ino
	a := New(nil, Options{})
	a.ctx = context.Background()
	job := &fileJob{path: path, node: &snapshot.Node{Name: "f", Type: snapshot.TypeFile, Inode: ino}}
	done := make(chan error, 1)
	go func() {
		_, err := a.saveFile(job)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a FIFO was saved as a file")
		}
	case <-time.After(10 * time.Second):
		// Unblock the open so the goroutine ends with the test binary.
		if w, err := os.OpenFile(path, os.O_WRONLY, 0); err == nil {
			w.Close()
		}
		t.Fatal("saving a file replaced by a FIFO waits in open")
	}
}

// dirent encodes one getdents64 record, padded to 8 bytes as the kernel does.
func dirent(ino uint64, typ uint8, name string) []byte {
	n := (19 + len(name) + 1 + 7) &^ 7
	b := make([]byte, n)
	binary.NativeEndian.PutUint64(b, ino)
	binary.NativeEndian.PutUint16(b[16:], uint16(n))
	b[18] = typ
	copy(b[19:], name)
	return b
}

func TestParseDirents(t *testing.T) {
	join := func(recs ...[]byte) []byte { return bytes.Join(recs, nil) }
	for _, tc := range []struct {
		name string
		buf  []byte
		want []dirEntry
		bad  bool
	}{
		{name: "empty"},
		{name: "dots left out", buf: join(dirent(1, unix.DT_DIR, "."), dirent(2, unix.DT_DIR, ".."), dirent(3, unix.DT_REG, "f")),
			want: []dirEntry{{"f", unix.DT_REG}}},
		{name: "types and lengths", buf: join(dirent(4, unix.DT_LNK, "link"), dirent(5, unix.DT_UNKNOWN, "exactly-5"), dirent(6, unix.DT_FIFO, "..x")),
			want: []dirEntry{{"link", unix.DT_LNK}, {"exactly-5", unix.DT_UNKNOWN}, {"..x", unix.DT_FIFO}}},
		{name: "no inode left out", buf: join(dirent(0, unix.DT_REG, "gone"), dirent(7, unix.DT_REG, "kept")),
			want: []dirEntry{{"kept", unix.DT_REG}}},
		{name: "truncated header", buf: dirent(1, unix.DT_REG, "f")[:10], bad: true},
		{name: "length past the end", buf: dirent(1, unix.DT_REG, "f")[:20], bad: true},
		{name: "length too small", buf: func() []byte {
			b := dirent(1, unix.DT_REG, "f")
			binary.NativeEndian.PutUint16(b[16:], 19)
			return b
		}(), bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseDirents(tc.buf, nil)
			if tc.bad {
				if err == nil {
					t.Fatalf("no error, entries %v", got)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func FuzzParseDirents(f *testing.F) {
	f.Add(bytes.Join([][]byte{dirent(1, unix.DT_DIR, "."), dirent(2, unix.DT_REG, "file")}, nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, buf []byte) {
		ents, err := parseDirents(buf, nil)
		if err != nil {
			return
		}
		for _, e := range ents {
			if e.name == "" || e.name == "." || e.name == ".." || strings.IndexByte(e.name, 0) >= 0 {
				t.Fatalf("bad entry %q", e.name)
			}
		}
	})
}

// TestReadDir lists a directory with an entry of each kind and wants the
// names sorted and the types the kernel gives (ext4 and tmpfs fill them in).
func TestReadDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "b-file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "a-dir"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("b-file", filepath.Join(dir, "c-link")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, "d-fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	fd, ents, err := readDir(unix.AT_FDCWD, dir, dir)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	want := []dirEntry{{"a-dir", unix.DT_DIR}, {"b-file", unix.DT_REG}, {"c-link", unix.DT_LNK}, {"d-fifo", unix.DT_FIFO}}
	if !slices.Equal(ents, want) {
		t.Fatalf("readDir: %v, want %v", ents, want)
	}
}

// newTestArchiver returns an archiver on a new in-memory repository, ready
// for saveFile outside Run.
func newTestArchiver(t *testing.T) (*Archiver, *repository.Repository) {
	t.Helper()
	r, err := repository.Create(context.Background(), mem.New(), []byte(repotest.Password), repotest.Options)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	a := New(r, Options{})
	a.ctx = context.Background()
	a.smallBufs = make(chan *[]byte, 1)
	b := make([]byte, 0, 64<<10)
	a.smallBufs <- &b
	return a, r
}

// A directory the walk has listed is renamed and replaced by a symbolic
// link to another directory before a file worker opens a new file found in
// it (as a user racing a backup run as root might, with a link to /etc):
// the worker reads the file the walk listed, relative to the directory it
// listed, never the one the link leads to.
func TestNewFileOpenedInItsDirectory(t *testing.T) {
	root := t.TempDir()
	d, other := filepath.Join(root, "d"), filepath.Join(root, "other")
	for _, dir := range []string{d, other} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(d, "f"), []byte("the file listed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other, "f"), []byte("another file"), 0o600); err != nil {
		t.Fatal(err)
	}
	fd, _, err := readDir(unix.AT_FDCWD, d, d)
	if err != nil {
		t.Fatal(err)
	}
	dir := newDirRef(fd)
	if err := os.Rename(d, filepath.Join(root, "d2")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(other, d); err != nil {
		t.Fatal(err)
	}
	a, r := newTestArchiver(t)
	node, err := a.saveFile(&fileJob{path: filepath.Join(d, "f"), dir: dir, name: "f"})
	dir.release()
	if err != nil {
		t.Fatal(err)
	}
	if want := r.BlobID([]byte("the file listed")); len(node.Content) != 1 || node.Content[0] != want || node.Size != 15 || node.Mode&0o777 != 0o644 {
		t.Errorf("saved %+v, want the file listed (content %s, 15 bytes, mode 644)", node, want.Short())
	}
}

// A file the directory listed as a regular file (so the walk did not stat
// it) and the worker finds to be something else is saved as what it is, as
// the walk's lstat would have saved it: a symbolic link (O_NOFOLLOW's
// ELOOP) or a FIFO (opened without waiting). (A file the walk did stat
// that has changed kind is refused as replaced: TestSaveFileReplacedByFIFO.)
func TestNewFileNotRegular(t *testing.T) {
	root := t.TempDir()
	if err := os.Symlink("target", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(root, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, _ := newTestArchiver(t)
	for name, want := range map[string]snapshot.NodeType{"link": snapshot.TypeSymlink, "fifo": snapshot.TypeFifo} {
		fd, _, err := readDir(unix.AT_FDCWD, root, root)
		if err != nil {
			t.Fatal(err)
		}
		dir := newDirRef(fd)
		done := make(chan struct{})
		var node *snapshot.Node
		go func() {
			defer close(done)
			node, err = a.saveFile(&fileJob{path: filepath.Join(root, name), dir: dir, name: name})
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the worker waits", name)
		}
		dir.release()
		if err != nil || node == nil || node.Type != want || node.Name != name || len(node.Content) != 0 {
			t.Errorf("%s: saved %+v, %v; want a %v node", name, node, err, want)
		}
		if name == "link" && node != nil && node.LinkTarget != "target" {
			t.Errorf("link target %q", node.LinkTarget)
		}
	}
}

// openFDs counts the process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// Every directory the walk opens is closed once the walk and the file jobs
// queued from it are done, whether the run succeeds or is cancelled.
func TestRunClosesDirectories(t *testing.T) {
	root := t.TempDir()
	for i := range 40 {
		d := filepath.Join(root, fmt.Sprintf("d%02d", i))
		if err := os.MkdirAll(filepath.Join(d, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		for j := range 5 {
			if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%d", j)), []byte(fmt.Sprint(i, j)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Symlink("f0", filepath.Join(d, "sub", "link")); err != nil {
			t.Fatal(err)
		}
	}
	for _, cancelled := range []bool{false, true} {
		_, r := newTestArchiver(t)
		before := openFDs(t)
		ctx, cancel := context.WithCancel(context.Background())
		if cancelled {
			cancel()
		}
		_, _, err := New(r, Options{}).Run(ctx, []string{root})
		cancel()
		if !cancelled && err != nil {
			t.Fatal(err)
		}
		if after := openFDs(t); after != before {
			t.Errorf("cancelled %v: %d descriptors open after the run, %d before", cancelled, after, before)
		}
	}
}

// A file another process holds a write lease on (as an NFS server does for
// a write delegation) is read once the holder gives the lease up: O_NONBLOCK
// makes the first open fail with EWOULDBLOCK instead of waiting for the
// lease break, and the worker opens it again without the flag. The lease
// holder here is the test itself, which gives the lease up when the kernel
// signals it that a reader is waiting (SIGIO).
func TestSaveFileWaitsForLeaseBreak(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leased")
	if err := os.WriteFile(path, []byte("leased content"), 0o644); err != nil {
		t.Fatal(err)
	}
	holder, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	sigio := make(chan os.Signal, 1)
	signal.Notify(sigio, unix.SIGIO)
	defer signal.Stop(sigio)
	if _, err := unix.FcntlInt(holder.Fd(), unix.F_SETLEASE, unix.F_WRLCK); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no write lease in CI: %v", err)
		}
		t.Skipf("no write lease here: %v", err)
	}
	a, r := newTestArchiver(t)
	type result struct {
		node *snapshot.Node
		err  error
	}
	done := make(chan result, 1)
	go func() {
		n, err := a.saveFile(&fileJob{path: path})
		done <- result{n, err}
	}()
	select {
	case <-sigio:
	case res := <-done:
		t.Fatalf("the read did not wait for the lease: %+v, %v", res.node, res.err)
	case <-time.After(10 * time.Second):
		t.Fatal("the lease holder was never asked to give the lease up")
	}
	if _, err := unix.FcntlInt(holder.Fd(), unix.F_SETLEASE, unix.F_UNLCK); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-done:
		if res.err != nil || len(res.node.Content) != 1 || res.node.Content[0] != r.BlobID([]byte("leased content")) {
			t.Errorf("saved %+v, %v; want the leased file's content", res.node, res.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the read did not end after the lease was given up")
	}
}

// TestCleanTargets: targets are made absolute and sorted, and one inside
// another is dropped even when a sibling sorts between them.
func TestCleanTargets(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"a/b", "a-x", "c"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := func(s string) string { return filepath.Join(dir, s) }
	for _, tc := range []struct{ in, want []string }{
		{[]string{p("a"), p("a-x"), p("a/b/")}, []string{p("a"), p("a-x")}},
		{[]string{p("a/b"), p("a")}, []string{p("a")}},
		{[]string{p("c"), p("a-x"), p("c")}, []string{p("a-x"), p("c")}},
		{[]string{"/", p("a")}, []string{"/"}},
	} {
		got, err := cleanTargets(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("cleanTargets(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// smallTrees refuses tree blobs over max bytes, as a repository refuses
// those over 64 MiB (a directory of several hundred thousand entries).
type smallTrees struct {
	*repository.Repository
	max int
}

func (s smallTrees) SaveBlob(ctx context.Context, t repo.BlobType, data []byte, id repo.ID) (repo.ID, bool, int, error) {
	if t == repo.TreeBlob && len(data) > s.max {
		return id, false, 0, fmt.Errorf("tree blob of %d bytes: %w", len(data), repo.ErrBlobTooLarge)
	}
	return s.Repository.SaveBlob(ctx, t, data, id)
}

// TestTooLargeDirectoryLeftOut: a directory whose tree is too large to
// store is reported and left out; the rest of the backup is saved.
func TestTooLargeDirectoryLeftOut(t *testing.T) {
	_, r := newTestArchiver(t)
	root := t.TempDir()
	for _, d := range []string{"big", "small"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 200 {
		if err := os.WriteFile(filepath.Join(root, "big", fmt.Sprintf("entry-%03d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "small", "f"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	var reported []string
	a := New(smallTrees{r, 8 << 10}, Options{Error: func(p string, err error) { reported = append(reported, p+": "+err.Error()) }})
	tree, _, err := a.Run(context.Background(), []string{root})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(reported) != 1 || !strings.HasPrefix(reported[0], filepath.Join(root, "big")+": directory left out") {
		t.Errorf("reported %q", reported)
	}
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := findNode(t, r, tree, filepath.Join(root, "small", "f"))
	if n == nil || n.Size != 4 {
		t.Errorf("small/f: %+v", n)
	}
	if findNode(t, r, tree, filepath.Join(root, "big")) != nil {
		t.Error("the directory too large is in the snapshot")
	}
}

// findNode walks the snapshot tree from root to path, nil if it is not there.
func findNode(t *testing.T, r *repository.Repository, root repo.ID, path string) *snapshot.Node {
	t.Helper()
	id := root
	var node *snapshot.Node
	for _, name := range strings.Split(strings.TrimPrefix(path, "/"), "/") {
		data, err := r.LoadBlob(context.Background(), repo.TreeBlob, id)
		if err != nil {
			t.Fatal(err)
		}
		tree, err := snapshot.DecodeTree(data)
		if err != nil {
			t.Fatal(err)
		}
		if node = tree.Find(name); node == nil {
			return nil
		}
		id = node.Subtree
	}
	return node
}

// TestFileLargerThanItsSize: a file whose size says it is small but which
// holds more (a /proc file says 0; a file that grew after the stat) is
// chunked as it is read, not read whole into one blob (a /proc/PID/pagemap
// made the process run out of memory).
func TestFileLargerThanItsSize(t *testing.T) {
	const path = "/proc/kallsyms"
	want, err := os.ReadFile(path)
	if err != nil || len(want) < 3<<20 {
		t.Skipf("%s: %d bytes, %v", path, len(want), err)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != 0 {
		t.Skipf("%s: size %v, %v", path, st, err)
	}
	_, r := newTestArchiver(t)
	tree, _, err := New(r, Options{}).Run(context.Background(), []string{path})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := findNode(t, r, tree, path)
	if n == nil || n.Size < uint64(len(want))/2 || len(n.Content) < 2 {
		t.Fatalf("node %+v: want the file's %d bytes in several chunks", n, len(want))
	}
	var size int
	for _, id := range n.Content {
		data, err := r.LoadBlob(context.Background(), repo.DataBlob, id)
		if err != nil {
			t.Fatal(err)
		}
		if len(data) > 2<<20 {
			t.Errorf("a chunk of %d bytes", len(data))
		}
		size += len(data)
	}
	if uint64(size) != n.Size {
		t.Errorf("content %d bytes, node size %d", size, n.Size)
	}
}

// TestUnchangedRacy: a file the parent snapshot recorded with an mtime
// within a second before that backup started (or after) is read again,
// even with size, times and inode as recorded: a write in the same
// timestamp tick after that backup read it would leave them so (seen on
// ext4 with one-second timestamps). Older files keep their content.
func TestUnchangedRacy(t *testing.T) {
	start := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	node := func(mtime time.Time) *snapshot.Node {
		return &snapshot.Node{Type: snapshot.TypeFile, Size: 100, Inode: 7, ModTime: mtime, ChangeTime: mtime}
	}
	for _, tc := range []struct {
		mtime time.Time
		want  bool
	}{
		{start.Add(-time.Hour), true},
		{start.Add(-1001 * time.Millisecond), true},
		{start.Add(-time.Second), false},
		{start.Add(-300 * time.Millisecond), false},
		{start.Add(time.Minute), false},
	} {
		if got := unchanged(node(tc.mtime), node(tc.mtime), start); got != tc.want {
			t.Errorf("mtime %v before the parent's start: unchanged = %v, want %v", start.Sub(tc.mtime), got, tc.want)
		}
	}
	if !unchanged(node(start), node(start), time.Time{}) {
		t.Error("without a parent start time, matching nodes are unchanged")
	}
}

// TestWalkOpensDirectoryInItsParent: the walk opens a directory relative to
// its parent's descriptor. A parent renamed and replaced by a symbolic link
// since the lstat (a user racing a backup run as root, with a link to a
// directory they may not read) does not make it list the link's target
// under the directory's name.
func TestWalkOpensDirectoryInItsParent(t *testing.T) {
	root := t.TempDir()
	for _, p := range []string{"p/d", "other/d"} {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Symbolic links only: the walk resolves them without file workers.
	if err := os.Symlink("x", filepath.Join(root, "p", "d", "mine")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("x", filepath.Join(root, "other", "d", "secret")); err != nil {
		t.Fatal(err)
	}
	a, r := newTestArchiver(t)
	var reported []string
	a.opts.Error = func(p string, err error) { reported = append(reported, err.Error()) }
	pfd, _, err := readDir(unix.AT_FDCWD, filepath.Join(root, "p"), filepath.Join(root, "p"))
	if err != nil {
		t.Fatal(err)
	}
	parent := newDirRef(pfd)
	defer parent.release()
	dpath := filepath.Join(root, "p", "d")
	node, err := a.meta.NodeAt(pfd, "d", dpath, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The race: p renamed away and replaced by a link to other.
	if err := os.Rename(filepath.Join(root, "p"), filepath.Join(root, "p2")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "other"), filepath.Join(root, "p")); err != nil {
		t.Fatal(err)
	}
	n := a.walkDir(a.ctx, parent, "d", dpath, node, nil, node.DeviceID).wait()
	if err := r.Flush(a.ctx); err != nil {
		t.Fatal(err)
	}
	data, err := r.LoadBlob(a.ctx, repo.TreeBlob, n.Subtree)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := snapshot.DecodeTree(data)
	if err != nil {
		t.Fatal(err)
	}
	if tree.Find("secret") != nil || tree.Find("mine") == nil || len(reported) != 0 {
		t.Errorf("p/d recorded with %d entries (reported %q), want mine and not secret", len(tree.Nodes), reported)
	}
}

// TestChangedWhileRead: a file chunked while a writer appends to it or
// rewrites part of it is kept, with the times from before the read (so
// the next backup reads it again), and reported through Warn; a file left
// alone is not.
func TestChangedWhileRead(t *testing.T) {
	past := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name   string
		change func(t *testing.T, path string)
	}{
		{"unchanged", nil},
		{"appended", func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.Write([]byte("one more line\n")); err != nil {
				t.Fatal(err)
			}
		}},
		{"rewritten in place", func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte("torn"), 1<<20); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "db")
			data := make([]byte, 3<<20)
			for i := range data {
				data[i] = byte(i * 7 / 5)
			}
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			// Times well before the change, whatever the clock's tick.
			if err := os.Chtimes(path, past, past); err != nil {
				t.Fatal(err)
			}
			a, _ := newTestArchiver(t)
			if a.repo.MinChunk() >= len(data) {
				t.Fatalf("the file (%d bytes) is not chunked (minimum chunk %d)", len(data), a.repo.MinChunk())
			}
			var warned []string
			a.opts.Warn = func(p string, err error) {
				if !errors.Is(err, ErrChangedWhileRead) || !strings.Contains(err.Error(), p) {
					t.Errorf("warning %v, want ErrChangedWhileRead naming %s", err, p)
				}
				warned = append(warned, p)
			}
			done := false
			a.testChunkRead = func(string) {
				if tc.change != nil && !done {
					done = true
					tc.change(t, path)
				}
			}
			a.chunkers = make(chan repo.Chunker, 1)
			a.chunkers <- nil
			a.blobs = make(chan *blobJob, 1)
			go a.blobWorker()
			defer close(a.blobs)
			node, err := a.saveFile(&fileJob{path: path})
			if err != nil {
				t.Fatal(err)
			}
			wantWarned := []string(nil)
			if tc.change != nil {
				wantWarned = []string{path}
			}
			if !slices.Equal(warned, wantWarned) {
				t.Errorf("warned about %q, want %q", warned, wantWarned)
			}
			if got := a.Stats.Summary().ChangedWhileRead; got != uint64(len(wantWarned)) {
				t.Errorf("summary counts %d files changed while read, want %d", got, len(wantWarned))
			}
			if !node.ModTime.Equal(past) || len(node.Content) == 0 {
				t.Errorf("node %+v: want it kept, with the mtime from before the read (%v)", node, past)
			}
		})
	}
}

func TestExcluded(t *testing.T) {
	tests := []struct {
		pattern, path string
		want          bool
	}{
		{"*.tmp", "/home/u/a.tmp", true},
		{"*.tmp", "/home/u/a.tmp.keep", false},
		{".cache", "/home/u/.cache", true},
		{".cache", "/home/u/.cache2", false},
		{"/home/*/Downloads", "/home/u/Downloads", true},
		{"/home/*/Downloads", "/home/u/Downloads/big.iso", true},
		{"/home/*/Downloads/", "/home/u/Downloads", true},
		{"/home/*/Downloads", "/srv/home/u/Downloads", false},
		// Relative with a slash: that many components anywhere.
		{"node_modules/.cache", "/srv/app/node_modules/.cache", true},
		{"node_modules/.cache", "/srv/app/node_modules/.cache/x/y", true},
		{"node_modules/.cache", "/srv/app/node_modules/.cached", false},
		{"node_modules/.cache", "/srv/app/node_modules", false},
		{"node_modules/.cache/", "/node_modules/.cache", true},
		{"*/tmp", "/var/tmp", true},
		{"*/tmp", "/tmp", false},
		{"u/*.log", "/home/u/app.log", true},
		{"u/*.log", "/home/u/sub/app.log", false},
		{"a//b", "/a/b", false},
		{"a/b", "/", false},
		{"a/b", "/a", false},
		{"a/b", "/x/a/b", true},
		{"x/a/b", "/x/a/b", true},
		{"x/a/b", "/y/x/a/b/c", true},
		{"x/a/b", "/x/a", false},
		{"node_modules/", "/srv/node_modules/x", true},
	}
	for _, tc := range tests {
		if got := Excluded([]string{tc.pattern}, tc.path); got != tc.want {
			t.Errorf("Excluded(%q, %q) = %v, want %v", tc.pattern, tc.path, got, tc.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { Excluded([]string{"node_modules/.cache"}, "/srv/app/node_modules/x/y") }); n != 0 {
		t.Errorf("a relative pattern with a slash allocates %v times per entry, want 0", n)
	}
}
