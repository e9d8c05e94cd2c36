// Package fstest provides helpers for tests that work on real directory
// trees: MakeTree creates a tree with every kind of entry and metadata bunker
// must preserve, Manifest records a tree and Compare reports the differences
// between two manifests.
package fstest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"bunker/internal/snapshot"
)

// XattrName is the extended attribute MakeTree sets.
const XattrName = "user.bunker.test"

// Tree describes what MakeTree created.
type Tree struct {
	// Xattrs is true if user xattrs could be set (on XattrFile and XattrDir).
	Xattrs bool
	// Root is true if root-only entries (CharDev, BlockDev, Owned, OwnedLink)
	// were made.
	Root bool
	// Sparse is true if the file system stored SparseFile with holes.
	Sparse bool

	// Relative paths of some entries of interest.
	SparseFile string
	HardLinks  []string // the three names of one inode, sorted
	XattrFile  string
	XattrDir   string
	Fifo       string
	CharDev    string // empty if !Root
	BlockDev   string // empty if !Root
	Owned      string // file chowned to 1234:5678, empty if !Root
	OwnedLink  string // symlink lchowned to 1234:5678, empty if !Root
	BadUTF8    string
	Newline    string
	Setuid     string
	StickyDir  string
	EmptyDir   string
}

// Sizes of some of the files MakeTree creates.
const (
	RandomSize     = 3 << 20
	TextSize       = 5 << 20
	SparseSize     = 64 << 20
	SparseDataSize = 1 << 20
)

// BaseTime is the modification time MakeTree gives to its first entry; the
// others get later times with different nanoseconds.
var BaseTime = time.Date(2021, 3, 4, 5, 6, 7, 123456789, time.UTC)

// MakeTree creates a tree with every kind of entry below dir (which must
// exist) and returns a description of it. See the package tests for the list.
func MakeTree(t testing.TB, dir string) *Tree {
	t.Helper()
	tr := &Tree{
		SparseFile: "sparse",
		HardLinks:  []string{"dir1/hardlink-c", "hardlink/a", "hardlink/b"},
		XattrFile:  "4k",
		XattrDir:   "dir1",
		Fifo:       "fifo",
		BadUTF8:    "bad\xffname",
		Newline:    "with space\nand newline",
		Setuid:     "modes/setuid",
		StickyDir:  "modes/sticky",
		EmptyDir:   "emptydir",
	}
	rng := rand.New(rand.NewPCG(1, 2))
	p := func(rel string) string { return filepath.Join(dir, filepath.FromSlash(rel)) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("MakeTree: %v", err)
		}
	}
	mkdir := func(rel string, mode os.FileMode) {
		t.Helper()
		must(os.Mkdir(p(rel), 0o700))
		must(os.Chmod(p(rel), mode))
	}
	write := func(rel string, data []byte, mode os.FileMode) {
		t.Helper()
		must(os.WriteFile(p(rel), data, 0o600))
		must(os.Chmod(p(rel), mode))
	}
	random := func(n int) []byte {
		b := make([]byte, n+8)
		for i := 0; i < n; i += 8 {
			binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
		}
		return b[:n:n]
	}

	for _, d := range []string{"dir1", "dir1/sub", "dir1/sub/deep", "emptydir", "hardlink", "modes", "links", "names"} {
		mkdir(d, 0o755)
	}
	write("empty", nil, 0o644)
	write("one", []byte{'x'}, 0o644)
	write("4k", random(4096), 0o644)
	write("dir1/random3m", random(RandomSize), 0o644)
	write("dir1/text5m", textData(TextSize), 0o644)
	write("dir1/sub/deep/file.txt", []byte("deep file\n"), 0o644)

	// Symlinks.
	must(os.Symlink("../one", p("links/to-file")))
	must(os.Symlink("does/not/exist", p("links/dangling")))
	must(os.Symlink("../dir1", p("links/to-dir")))
	must(os.Symlink("/nonexistent/bunker/absolute", p("links/absolute")))

	// Hard links: two in one directory, one in another.
	write("hardlink/a", []byte("hard-linked content\n"), 0o644)
	must(os.Link(p("hardlink/a"), p("hardlink/b")))
	must(os.Link(p("hardlink/a"), p("dir1/hardlink-c")))

	// Sparse file: 64 MiB apparent size with two 1 MiB data regions.
	f, err := os.OpenFile(p(tr.SparseFile), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	must(err)
	must(f.Truncate(SparseSize))
	_, err = f.WriteAt(random(SparseDataSize), 8<<20)
	must(err)
	_, err = f.WriteAt(random(SparseDataSize), 40<<20)
	must(err)
	must(f.Close())
	var st unix.Stat_t
	must(unix.Lstat(p(tr.SparseFile), &st))
	tr.Sparse = IsSparse(st.Blocks, st.Size)
	if !tr.Sparse {
		t.Logf("MakeTree: file system did not keep %s sparse (%d blocks)", tr.SparseFile, st.Blocks)
	}

	// Modes.
	write("modes/0640", []byte("0640\n"), 0o640)
	mkdir("modes/dir0750", 0o750)
	write(tr.Setuid, []byte("#!/bin/sh\n"), 0o755|os.ModeSetuid)
	mkdir(tr.StickyDir, 0o777|os.ModeSticky)
	write("modes/setgid", []byte("setgid\n"), 0o750|os.ModeSetgid)
	write("modes/0000", []byte("no permissions\n"), 0)

	// Awkward names.
	write("names/"+tr.BadUTF8, []byte("bad utf-8\n"), 0o644)
	write("names/"+tr.Newline, []byte("newline\n"), 0o644)
	write("names/"+strings.Repeat("n", 255), []byte("long name\n"), 0o644)
	tr.BadUTF8 = "names/" + tr.BadUTF8
	tr.Newline = "names/" + tr.Newline

	// Fifo.
	must(unix.Mkfifo(p(tr.Fifo), 0o640))

	// Extended attributes.
	errF := unix.Lsetxattr(p(tr.XattrFile), XattrName, []byte("file value"), 0)
	errD := unix.Lsetxattr(p(tr.XattrDir), XattrName, []byte("dir value\x00\xff binary"), 0)
	switch {
	case errF == nil && errD == nil:
		tr.Xattrs = true
		must(unix.Lsetxattr(p(tr.XattrFile), "user.bunker.empty", nil, 0))
	case errors.Is(errF, unix.ENOTSUP) || errors.Is(errD, unix.ENOTSUP):
		t.Logf("MakeTree: user xattrs not supported on %s, none set", dir)
		unix.Lremovexattr(p(tr.XattrFile), XattrName)
		unix.Lremovexattr(p(tr.XattrDir), XattrName)
	default:
		t.Fatalf("MakeTree: setxattr: %v / %v", errF, errD)
	}

	// Root only: devices and foreign owners.
	if os.Geteuid() == 0 {
		tr.Root = true
		tr.CharDev, tr.BlockDev, tr.Owned, tr.OwnedLink = "chardev", "blockdev", "owned", "links/owned"
		must(unix.Mknod(p(tr.CharDev), unix.S_IFCHR|0o644, int(unix.Mkdev(1, 3))))
		must(unix.Mknod(p(tr.BlockDev), unix.S_IFBLK|0o640, int(unix.Mkdev(7, 250))))
		write(tr.Owned, []byte("owned by 1234:5678\n"), 0o644)
		must(os.Lchown(p(tr.Owned), 1234, 5678))
		must(os.Chmod(p(tr.Owned), 0o750|os.ModeSetuid)) // after chown, which clears it
		must(os.Symlink("../owned", p(tr.OwnedLink)))
		must(os.Lchown(p(tr.OwnedLink), 1234, 5678))
	}

	// Times last, on every entry including dir itself, never following links.
	var paths []string
	must(filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		paths = append(paths, path)
		return nil
	}))
	sort.Strings(paths)
	for i, path := range paths {
		mtime := BaseTime.Add(time.Duration(i)*time.Hour + time.Duration(i)*1001*time.Nanosecond)
		atime := mtime.Add(-17*time.Minute - 333*time.Nanosecond)
		ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW))
	}
	return tr
}

// textData returns n bytes of compressible, text-like data.
func textData(n int) []byte {
	words := []string{"backup", "bunker", "snapshot", "chunk", "blob", "pack", "index",
		"tree", "restore", "the", "a", "of", "and", "deduplication", "repository"}
	rng := rand.New(rand.NewPCG(3, 4))
	var b bytes.Buffer
	b.Grow(n + 64)
	line := 0
	for b.Len() < n {
		fmt.Fprintf(&b, "%06d", line)
		for i := 0; i < 10; i++ {
			b.WriteByte(' ')
			b.WriteString(words[rng.IntN(len(words))])
		}
		b.WriteByte('\n')
		line++
	}
	return b.Bytes()[:n]
}

// IsSparse reports whether a file of size bytes occupying blocks 512-byte
// blocks counts as sparse: less than half of it is allocated.
func IsSparse(blocks, size int64) bool {
	return size > 0 && blocks*512 < size/2
}

// Entry is the recorded state of one file-system entry.
type Entry struct {
	Type       snapshot.NodeType
	Mode       uint32 // st_mode & 07777
	UID, GID   uint32
	Size       int64  // regular files only
	Hash       string // hex SHA-256 of the content, regular files only
	LinkTarget string
	Rdev       uint64 // devices only
	ModTime    int64  // ns since the epoch
	AccessTime int64  // ns since the epoch
	Xattrs     map[string]string
	// LinkGroup is the smallest relative path of the entries in the tree that
	// share this entry's inode; empty if no other entry does.
	LinkGroup string
	Blocks    int64 // st_blocks (512-byte units), regular files only
}

// Sparse reports whether the entry is a sparse regular file.
func (e Entry) Sparse() bool { return e.Type == snapshot.TypeFile && IsSparse(e.Blocks, e.Size) }

// Manifest records every entry below dir (not dir itself), keyed by the
// slash-separated path relative to dir. Files and directories are read with
// O_NOATIME where permitted so that recording does not change access times.
func Manifest(t testing.TB, dir string) map[string]Entry {
	t.Helper()
	m, err := manifest(dir)
	if err != nil {
		t.Fatalf("Manifest(%s): %v", dir, err)
	}
	return m
}

type inodeKey struct{ dev, ino uint64 }

func manifest(dir string) (map[string]Entry, error) {
	m := make(map[string]Entry)
	inodes := make(map[inodeKey][]string)
	var walk func(rel string) error
	walk = func(rel string) error {
		names, err := readDirNames(filepath.Join(dir, filepath.FromSlash(rel)))
		if err != nil {
			return err
		}
		for _, name := range names {
			crel := name
			if rel != "." {
				crel = rel + "/" + name
			}
			path := filepath.Join(dir, filepath.FromSlash(crel))
			// Stat before reading anything so that the times are untouched.
			var st unix.Stat_t
			if err := unix.Lstat(path, &st); err != nil {
				return err
			}
			e := Entry{
				Mode:       st.Mode & 0o7777,
				UID:        st.Uid,
				GID:        st.Gid,
				ModTime:    st.Mtim.Nano(),
				AccessTime: st.Atim.Nano(),
			}
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFREG:
				e.Type = snapshot.TypeFile
				e.Size, e.Blocks = st.Size, st.Blocks
				if e.Hash, err = hashFile(path); err != nil {
					return err
				}
			case unix.S_IFDIR:
				e.Type = snapshot.TypeDir
			case unix.S_IFLNK:
				e.Type = snapshot.TypeSymlink
				if e.LinkTarget, err = os.Readlink(path); err != nil {
					return err
				}
			case unix.S_IFBLK:
				e.Type, e.Rdev = snapshot.TypeDev, st.Rdev
			case unix.S_IFCHR:
				e.Type, e.Rdev = snapshot.TypeCharDev, st.Rdev
			case unix.S_IFIFO:
				e.Type = snapshot.TypeFifo
			case unix.S_IFSOCK:
				e.Type = snapshot.TypeSocket
			default:
				return fmt.Errorf("%s: unknown type %#o", path, st.Mode)
			}
			if e.Xattrs, err = readXattrs(path); err != nil {
				return err
			}
			if e.Type != snapshot.TypeDir {
				k := inodeKey{st.Dev, st.Ino}
				inodes[k] = append(inodes[k], crel)
			}
			m[crel] = e
			if e.Type == snapshot.TypeDir {
				if err := walk(crel); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk("."); err != nil {
		return nil, err
	}
	for _, paths := range inodes {
		if len(paths) < 2 {
			continue
		}
		sort.Strings(paths)
		for _, p := range paths {
			e := m[p]
			e.LinkGroup = paths[0]
			m[p] = e
		}
	}
	return m, nil
}

// openNoatime opens path read-only, with O_NOATIME if the caller may use it.
func openNoatime(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|flag|syscall.O_NOATIME|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrPermission) {
		f, err = os.OpenFile(path, os.O_RDONLY|flag|syscall.O_NOFOLLOW, 0)
	}
	return f, err
}

func readDirNames(path string) ([]string, error) {
	f, err := openNoatime(path, syscall.O_DIRECTORY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	sort.Strings(names)
	return names, err
}

func hashFile(path string) (string, error) {
	f, err := openNoatime(path, syscall.O_NONBLOCK)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func readXattrs(path string) (map[string]string, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(path, buf)
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("llistxattr %s: %w", path, err)
	}
	var m map[string]string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		val := make([]byte, 64<<10)
		vn, err := unix.Lgetxattr(path, name, val)
		if err != nil {
			return nil, fmt.Errorf("lgetxattr %s %s: %w", path, name, err)
		}
		if m == nil {
			m = make(map[string]string)
		}
		m[name] = string(val[:vn])
	}
	return m, nil
}

// CompareOptions relaxes Compare.
type CompareOptions struct {
	// IgnoreAtime skips access times. Access times of symlinks are never
	// compared: reading a link (readlink) updates its atime.
	IgnoreAtime bool
	// IgnoreDirMtime skips modification times of directories.
	IgnoreDirMtime bool
	// IgnoreOwner skips UID and GID.
	IgnoreOwner bool
	// IgnoreXattrs skips extended attributes.
	IgnoreXattrs bool
}

// Compare returns the differences between two manifests, one human-readable
// line each, sorted by path. No differences yields an empty (nil) slice. A
// file that is sparse in want must be sparse in got.
func Compare(want, got map[string]Entry, opts CompareOptions) []string {
	var diffs []string
	add := func(path, format string, args ...any) {
		diffs = append(diffs, fmt.Sprintf("%q: ", path)+fmt.Sprintf(format, args...))
	}
	paths := make([]string, 0, len(want)+len(got))
	for p := range want {
		paths = append(paths, p)
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	for _, p := range paths {
		w, wok := want[p]
		g, gok := got[p]
		switch {
		case !gok:
			add(p, "missing (want %v)", w.Type)
			continue
		case !wok:
			add(p, "extra %v", g.Type)
			continue
		}
		if w.Type != g.Type {
			add(p, "type %v, want %v", g.Type, w.Type)
			continue
		}
		if w.Mode != g.Mode {
			add(p, "mode %#o, want %#o", g.Mode, w.Mode)
		}
		if !opts.IgnoreOwner && (w.UID != g.UID || w.GID != g.GID) {
			add(p, "owner %d:%d, want %d:%d", g.UID, g.GID, w.UID, w.GID)
		}
		if w.Size != g.Size {
			add(p, "size %d, want %d", g.Size, w.Size)
		}
		if w.Hash != g.Hash {
			add(p, "content hash %.16s, want %.16s", g.Hash, w.Hash)
		}
		if w.LinkTarget != g.LinkTarget {
			add(p, "link target %q, want %q", g.LinkTarget, w.LinkTarget)
		}
		if w.Rdev != g.Rdev {
			add(p, "rdev %d:%d, want %d:%d", unix.Major(g.Rdev), unix.Minor(g.Rdev), unix.Major(w.Rdev), unix.Minor(w.Rdev))
		}
		if w.ModTime != g.ModTime && !(opts.IgnoreDirMtime && w.Type == snapshot.TypeDir) {
			add(p, "mtime %s, want %s", fmtNs(g.ModTime), fmtNs(w.ModTime))
		}
		if w.AccessTime != g.AccessTime && !opts.IgnoreAtime && w.Type != snapshot.TypeSymlink {
			add(p, "atime %s, want %s", fmtNs(g.AccessTime), fmtNs(w.AccessTime))
		}
		if !opts.IgnoreXattrs {
			compareXattrs(w.Xattrs, g.Xattrs, func(format string, args ...any) { add(p, format, args...) })
		}
		if w.LinkGroup != g.LinkGroup {
			add(p, "hard-link group %q, want %q", g.LinkGroup, w.LinkGroup)
		}
		if w.Sparse() && !g.Sparse() {
			add(p, "not sparse: %d bytes allocated for size %d, want at most %d (as in the original: %d)",
				g.Blocks*512, g.Size, g.Size/2, w.Blocks*512)
		}
	}
	return diffs
}

func compareXattrs(want, got map[string]string, add func(string, ...any)) {
	names := make([]string, 0, len(want)+len(got))
	for n := range want {
		names = append(names, n)
	}
	for n := range got {
		if _, ok := want[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		w, wok := want[n]
		g, gok := got[n]
		switch {
		case !gok:
			add("xattr %s missing", n)
		case !wok:
			add("extra xattr %s", n)
		case w != g:
			add("xattr %s = %q, want %q", n, g, w)
		}
	}
}

func fmtNs(ns int64) string {
	return time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
}
