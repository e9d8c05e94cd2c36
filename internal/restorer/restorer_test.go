package restorer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"bunker/internal/repo"
	"bunker/internal/snapshot"
)

// fakeRepo serves trees and data blobs from memory, one pack per blob
// unless a test says otherwise, and can break a pack part way.
type fakeRepo struct {
	trees map[repo.ID][]byte
	data  map[repo.ID][]byte
	loc   map[repo.ID]repo.Location
	// failAfter breaks a pack's stream after that many blobs; missing
	// packs cannot be read at all.
	failAfter map[repo.ID]int
	missing   map[repo.ID]bool
	// wrong serves these bytes instead of a blob's own.
	wrong map[repo.ID][]byte
}

func newFakeRepo() *fakeRepo {
	return &fakeRepo{trees: map[repo.ID][]byte{}, data: map[repo.ID][]byte{}, loc: map[repo.ID]repo.Location{},
		failAfter: map[repo.ID]int{}, missing: map[repo.ID]bool{}, wrong: map[repo.ID][]byte{}}
}

func (f *fakeRepo) BlobID(b []byte) repo.ID { return repo.ID(sha256.Sum256(b)) }

// blob stores b in pack and returns its ID; blobs of a pack lie in the
// order they were added.
func (f *fakeRepo) blob(pack repo.ID, b []byte) repo.ID {
	id := f.BlobID(b)
	f.data[id] = b
	f.loc[id] = repo.Location{Pack: pack, Offset: uint32(len(f.loc)), Length: uint32(len(b)), RawLength: uint32(len(b))}
	return id
}

func (f *fakeRepo) tree(nodes ...*snapshot.Node) repo.ID {
	t := &snapshot.Tree{Nodes: nodes}
	t.Sort()
	b := t.Encode()
	id := f.BlobID(b)
	f.trees[id] = b
	return id
}

func (f *fakeRepo) LoadBlob(_ context.Context, _ repo.BlobType, id repo.ID) ([]byte, error) {
	if b, ok := f.trees[id]; ok {
		return b, nil
	}
	return nil, errors.New("no such tree")
}

func (f *fakeRepo) LookupBlob(h repo.BlobHandle) (repo.Location, bool) {
	l, ok := f.loc[h.ID]
	return l, ok
}

func (f *fakeRepo) LoadPackRange(_ context.Context, pid repo.ID, blobs []repo.PackedBlob, fn func(repo.PackedBlob, []byte, error) error) error {
	if f.missing[pid] {
		return errors.New("pack not found")
	}
	n, breaks := f.failAfter[pid]
	for i, b := range blobs {
		if breaks && i >= n {
			return errors.New("connection reset while reading the pack")
		}
		data := f.data[b.ID]
		if w, ok := f.wrong[b.ID]; ok {
			data = w
		}
		if err := fn(b, data, nil); err != nil {
			return err
		}
	}
	return nil
}

var testTime = time.Unix(1_000_000_000, 0)

func fileNode(f *fakeRepo, pack repo.ID, name string, content ...[]byte) *snapshot.Node {
	n := &snapshot.Node{Name: name, Type: snapshot.TypeFile, Mode: 0o644, ModTime: testTime, AccessTime: testTime, Links: 1}
	for _, c := range content {
		n.Content = append(n.Content, f.blob(pack, c))
		n.Size += uint64(len(c))
	}
	return n
}

// restore runs a restore of tree into dir and returns the paths it
// reported and its error.
func restore(t *testing.T, f *fakeRepo, tree repo.ID, dir string, opts Options) ([]string, error) {
	t.Helper()
	var reported []string
	opts.Error = func(p string, err error) { reported = append(reported, p+": "+err.Error()) }
	if opts.Workers == 0 {
		opts.Workers = 1
	}
	err := New(f, opts).Run(context.Background(), tree, dir)
	return reported, err
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestBrokenPackHarmsOnlyWhatItHeld: a pack whose stream breaks part way
// fails only the files that needed a blob not yet delivered. A file it
// finished stays; a file restore had begun is removed (never left with
// zeros); what the target held at the path of a file restore never began
// (such as a newer version) is left alone.
func TestBrokenPackHarmsOnlyWhatItHeld(t *testing.T) {
	f := newFakeRepo()
	p := repo.ID{1}
	a := fileNode(f, p, "a", []byte("aaaa"))
	part := fileNode(f, p, "part", []byte("first half "), []byte("second half"))
	b := fileNode(f, p, "b", []byte("bbbb"))
	tree := f.tree(a, part, b)
	f.failAfter[p] = 2 // a's blob and part's first
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "b"), []byte("newer data"), 0o644); err != nil {
		t.Fatal(err)
	}
	reported, err := restore(t, f, tree, dir, Options{})
	if !errors.Is(err, ErrIncomplete) {
		t.Fatalf("restore: %v, want ErrIncomplete", err)
	}
	if got := readFile(t, filepath.Join(dir, "a")); got != "aaaa" {
		t.Errorf("a = %q", got)
	}
	if _, err := os.Lstat(filepath.Join(dir, "part")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the half-restored file is there: %v", err)
	}
	if got := readFile(t, filepath.Join(dir, "b")); got != "newer data" {
		t.Errorf("b = %q: the target's file was touched", got)
	}
	slices.Sort(reported)
	if len(reported) != 2 || !strings.HasPrefix(reported[0], "/b: ") || !strings.HasPrefix(reported[1], "/part: ") {
		t.Errorf("reported %q, want b and part", reported)
	}
}

// TestMissingPackLeavesTargetFile: a pack that cannot be read at all does
// not remove the file the target already has at that path.
func TestMissingPackLeavesTargetFile(t *testing.T) {
	f := newFakeRepo()
	p := repo.ID{2}
	tree := f.tree(fileNode(f, p, "a", []byte("from the snapshot")))
	f.missing[p] = true
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a"), []byte("newer data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := restore(t, f, tree, dir, Options{}); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("restore: %v, want ErrIncomplete", err)
	}
	if got := readFile(t, filepath.Join(dir, "a")); got != "newer data" {
		t.Errorf("a = %q", got)
	}
}

// TestTimesOutsideUnixNano: times after 2262 (beyond time.UnixNano) and
// before 1970 come back as stored, on files, directories and symlinks.
// (Before 1678, UnixNano's other end, is before what ext4 keeps: 1901.)
func TestTimesOutsideUnixNano(t *testing.T) {
	for _, when := range []time.Time{
		time.Date(2300, 1, 1, 0, 0, 0, 123456789, time.UTC),
		time.Date(1950, 6, 1, 12, 0, 0, 5000, time.UTC),
	} {
		t.Run(fmt.Sprint(when.Year()), func(t *testing.T) {
			f := newFakeRepo()
			file := fileNode(f, repo.ID{3}, "file", []byte("x"))
			empty := fileNode(f, repo.ID{3}, "empty")
			dir := &snapshot.Node{Name: "dir", Type: snapshot.TypeDir, Mode: 0o755, Subtree: f.tree()}
			link := &snapshot.Node{Name: "link", Type: snapshot.TypeSymlink, Mode: 0o777, LinkTarget: "file", Links: 1}
			for _, n := range []*snapshot.Node{file, empty, dir, link} {
				n.ModTime, n.AccessTime = when, when
			}
			target := t.TempDir()
			if reported, err := restore(t, f, f.tree(file, empty, dir, link), target, Options{}); err != nil {
				t.Fatalf("restore: %v %q", err, reported)
			}
			for _, name := range []string{"file", "empty", "dir", "link"} {
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(target, name), &st); err != nil {
					t.Fatal(err)
				}
				if got := time.Unix(st.Mtim.Unix()); !got.Equal(when) {
					t.Errorf("%s: mtime %v, want %v", name, got.UTC(), when)
				}
			}
		})
	}
}

// TestSparseWithinChunks: the zero blocks inside a chunk that holds some
// data stay holes, wherever the chunk starts in the file, and the content
// and size are right, trailing zeros included.
func TestSparseWithinChunks(t *testing.T) {
	f := newFakeRepo()
	first := make([]byte, 5000) // the next chunk starts off a block boundary
	first[0] = 1
	second := make([]byte, 1<<20)
	copy(second[100:], "data near the start")
	copy(second[700_000:], "and some in the middle")
	third := make([]byte, 300_000) // zeros only, at the end
	third[10] = 7
	var want []byte
	want = append(append(append(want, first...), second...), third...)
	want = append(want, make([]byte, 1<<20)...)
	tree := f.tree(fileNode(f, repo.ID{4}, "img", first, second, third, make([]byte, 1<<20)))
	dir := t.TempDir()
	if reported, err := restore(t, f, tree, dir, Options{Verify: true}); err != nil {
		t.Fatalf("restore: %v %q", err, reported)
	}
	path := filepath.Join(dir, "img")
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("content differs (%v)", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	// Five blocks hold data (one of them straddles the first two chunks).
	if used := st.Blocks * 512; used > 64<<10 {
		t.Errorf("the file uses %d bytes on disk for %d of length: not sparse", used, len(want))
	}
}

// TestHardLinkedNonFiles: symlinks and FIFOs with several names come back
// as one inode, as regular files do.
func TestHardLinkedNonFiles(t *testing.T) {
	f := newFakeRepo()
	var nodes []*snapshot.Node
	for _, name := range []string{"l1", "l2"} {
		nodes = append(nodes, &snapshot.Node{Name: name, Type: snapshot.TypeSymlink, Mode: 0o777, LinkTarget: "somewhere",
			ModTime: testTime, Links: 2, Inode: 10, DeviceID: 1})
	}
	for _, name := range []string{"p1", "p2"} {
		nodes = append(nodes, &snapshot.Node{Name: name, Type: snapshot.TypeFifo, Mode: 0o644,
			ModTime: testTime, Links: 2, Inode: 11, DeviceID: 1})
	}
	dir := t.TempDir()
	if reported, err := restore(t, f, f.tree(nodes...), dir, Options{}); err != nil {
		t.Fatalf("restore: %v %q", err, reported)
	}
	for _, pair := range [][2]string{{"l1", "l2"}, {"p1", "p2"}} {
		var a, b unix.Stat_t
		if unix.Lstat(filepath.Join(dir, pair[0]), &a) != nil || unix.Lstat(filepath.Join(dir, pair[1]), &b) != nil {
			t.Fatalf("%v not restored", pair)
		}
		if a.Ino != b.Ino || a.Nlink != 2 {
			t.Errorf("%v: inodes %d and %d, %d links", pair, a.Ino, b.Ino, a.Nlink)
		}
	}
}

// TestVerifyReadsBack: --verify reads each file back and reports one
// whose content does not match its IDs.
func TestVerifyReadsBack(t *testing.T) {
	f := newFakeRepo()
	good := fileNode(f, repo.ID{5}, "good", []byte("good"))
	bad := fileNode(f, repo.ID{5}, "bad", []byte("meant"))
	f.wrong[bad.Content[0]] = []byte("wrong") // same length, other bytes
	good.Mode, bad.Mode = 0o200, 0o200        // not readable once the mode is set
	dir := t.TempDir()
	reported, err := restore(t, f, f.tree(good, bad), dir, Options{Verify: true})
	if !errors.Is(err, ErrIncomplete) || len(reported) != 1 || !strings.HasPrefix(reported[0], "/bad: verify: ") {
		t.Errorf("restore: %v, reported %q; want one verify error for bad", err, reported)
	}
}

// TestManyDirectoriesFewDescriptors: the directories a restore keeps open
// stay well within the process's limit on open files.
func TestManyDirectoriesFewDescriptors(t *testing.T) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = 256
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Skipf("cannot lower the limit on open files: %v", err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	f := newFakeRepo()
	var dirs []*snapshot.Node
	for i := range 400 {
		sub := f.tree(fileNode(f, repo.ID{6}, "f", []byte(fmt.Sprint(i))))
		dirs = append(dirs, &snapshot.Node{Name: fmt.Sprintf("d%03d", i), Type: snapshot.TypeDir, Mode: 0o755, ModTime: testTime, Subtree: sub})
	}
	dir := t.TempDir()
	if reported, err := restore(t, f, f.tree(dirs...), dir, Options{Workers: 2}); err != nil {
		t.Fatalf("restore: %v; %d errors, first %q", err, len(reported), reported[0])
	}
	if got := readFile(t, filepath.Join(dir, "d399", "f")); got != "399" {
		t.Errorf("d399/f = %q", got)
	}
}
