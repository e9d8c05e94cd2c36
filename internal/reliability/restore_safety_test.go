package reliability

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"bunker/internal/fs"
	"bunker/internal/fs/fstest"
	"bunker/internal/repo/repository"
	"bunker/internal/restorer"
	"bunker/internal/snapshot"
)

// arena is a scratch directory with restore targets below targets/ and an
// outside directory holding sentinels that no restore may touch.
type arena struct {
	parent, targets, outside string
	before                   map[string]string
}

func newArena(t testing.TB) *arena {
	t.Helper()
	a := &arena{parent: t.TempDir()}
	a.targets = filepath.Join(a.parent, "targets")
	a.outside = filepath.Join(a.parent, "outside")
	for _, d := range []string{a.targets, a.outside, filepath.Join(a.outside, "etc")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(a.outside, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"))
	writeFile(t, filepath.Join(a.outside, "sentinel"), []byte("keep me\n"))
	writeFile(t, filepath.Join(a.outside, "linked"), []byte("hard-linked from a target\n"))
	a.before = dirListing(t, a.parent, "targets")
	return a
}

// target returns a new restore target path.
func (a *arena) target(name string) string { return filepath.Join(a.targets, name) }

// unchanged fails the test if anything outside targets/ changed or appeared.
func (a *arena) unchanged(t testing.TB) {
	t.Helper()
	diffListings(t, "outside the restore targets", a.before, dirListing(t, a.parent, "targets"))
}

func readString(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Errorf("%v", err)
	}
	return string(b)
}

// RELIABILITY F1: names with "..", ".", separators, an absolute path, NUL
// and more than 255 bytes: nothing is written outside the target, every bad
// entry is reported (restorer.ErrIncomplete, CLI exit 3), the good entries
// are restored.
func TestF1HostileNames(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	r := tr.open(t, repository.Options{})
	a := newArena(t)
	evil := []byte("written by a hostile snapshot\n")
	escape := saveTree(t, r, fileNode(t, r, "escaped", evil), fileNode(t, r, "sentinel", evil))
	sub := saveTree(t, r,
		dirNode("..", escape),
		fileNode(t, r, "fine", []byte("fine\n")),
		fileNode(t, r, "../../outside/sentinel", evil),
	)
	root := saveTree(t, r,
		dirNode("..", escape),
		fileNode(t, r, ".", evil),
		fileNode(t, r, "a/b", evil),
		fileNode(t, r, "/abs", evil),
		fileNode(t, r, "../outside/sentinel", evil),
		dirNode("../outside", escape),
		fileNode(t, r, "nul\x00name", evil),
		fileNode(t, r, strings.Repeat("x", 300), evil),
		fileNode(t, r, "ok", []byte("ok\n")),
		dirNode("sub", sub),
	)
	const bad = 10 // 8 in the root, 2 in sub
	id := saveSnapshot(t, r, root)

	target := a.target("in-process")
	reported, err := restoreInProcess(ctx, r, root, target)
	if !errors.Is(err, restorer.ErrIncomplete) {
		t.Errorf("restore of hostile names: %v, want ErrIncomplete", err)
	}
	if len(reported) != bad {
		t.Errorf("%d entries reported, want %d: %v", len(reported), bad, reported)
	}
	for _, rep := range reported {
		if !errors.Is(rep.err, fs.ErrInvalidName) {
			t.Errorf("reported %q: %v, want an invalid-name error", rep.path, rep.err)
		}
	}
	got := manifest(t, target)
	var names []string
	for p := range got {
		names = append(names, p)
	}
	if len(got) != 3 || got["ok"].Type != snapshot.TypeFile || got["sub/fine"].Type != snapshot.TypeFile {
		t.Errorf("target holds %q, want exactly ok, sub, sub/fine", names)
	}
	a.unchanged(t)

	// The CLI: exit 3, every bad entry named.
	code, failed := tr.restore(t, id.String(), a.target("cli"))
	if code != 3 || len(failed) != bad {
		t.Errorf("CLI restore: exit %d, %d entries reported (want 3, %d): %q", code, len(failed), bad, failed)
	}
	a.unchanged(t)
}

// RELIABILITY F1: duplicate and colliding names. A hostile tree may list a
// name twice (a symlink to an outside directory, then a directory of that
// name whose entries would be written through it): such a tree does not
// decode (names must be sorted and unique), so that directory is reported
// and nothing of it is written. Names that a case- or normalization-
// insensitive file system would take for one are distinct here, and are
// restored apart. Nothing is written outside the target.
func TestF1DuplicateAndCollidingNames(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	r := tr.open(t, repository.Options{})
	a := newArena(t)
	evil := []byte("written through a duplicate name\n")
	inner := saveTree(t, r, fileNode(t, r, "sentinel", evil), fileNode(t, r, "new", evil))
	dups := saveTree(t, r,
		symlinkNode("dup", a.outside),
		dirNode("dup", inner),
		fileNode(t, r, "twice", []byte("first\n")),
		fileNode(t, r, "twice", evil),
	)
	root := saveTree(t, r,
		dirNode("dups", dups),
		fileNode(t, r, "Case", []byte("upper\n")),
		fileNode(t, r, "case", []byte("lower\n")),
		fileNode(t, r, "\u00e9", []byte("precomposed\n")),
		fileNode(t, r, "e\u0301", []byte("decomposed\n")),
	)
	id := saveSnapshot(t, r, root)
	target := a.target("in-process")
	reported, err := restoreInProcess(ctx, r, root, target)
	if !errors.Is(err, restorer.ErrIncomplete) {
		t.Errorf("restore of a tree with duplicate names: %v, want ErrIncomplete", err)
	}
	if len(reported) != 1 || reported[0].path != "/dups" || !errors.Is(reported[0].err, snapshot.ErrInvalidTree) {
		t.Errorf("reported %v, want /dups as an invalid tree", reported)
	}
	a.unchanged(t)
	got := manifest(t, target)
	for name, want := range map[string]string{"Case": "upper\n", "case": "lower\n", "\u00e9": "precomposed\n", "e\u0301": "decomposed\n"} {
		if got[name].Type != snapshot.TypeFile || readString(t, filepath.Join(target, name)) != want {
			t.Errorf("%q: %+v, want a file holding %q", name, got[name], want)
		}
	}
	for p := range got {
		if strings.HasPrefix(p, "dups/") {
			t.Errorf("%s restored from a tree that does not decode", p)
		}
	}
	code, failed := tr.restore(t, id.String(), a.target("cli"))
	if code != 3 || len(failed) != 1 {
		t.Errorf("CLI restore: exit %d, reported %q; want 3 and the one directory", code, failed)
	}
	a.unchanged(t)
}

// RELIABILITY F2: symlink tricks. A snapshot with symlinks evil -> an
// outside directory, then a snapshot with a directory evil holding passwd
// restored into the same target; symlinks and a hard link to an outside file
// planted in the target before a restore writes through them; a hard-link
// set in the snapshot. Nothing is written outside the target.
func TestF2SymlinkTricks(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	r := tr.open(t, repository.Options{})
	a := newArena(t)
	owned := []byte("owned\n")
	passwdDir := saveTree(t, r, fileNode(t, r, "passwd", owned))

	t.Run("symlink then directory", func(t *testing.T) {
		first := saveTree(t, r,
			symlinkNode("evil", filepath.Join(a.outside, "etc")),
			symlinkNode("rel", "../../outside/etc"),
		)
		second := saveTree(t, r, dirNode("evil", passwdDir), dirNode("rel", passwdDir))
		saveSnapshot(t, r, second)
		target := a.target("two-snapshots")
		if rep, err := restoreInProcess(ctx, r, first, target); err != nil {
			t.Fatalf("restore of the symlinks: %v %v", err, rep)
		}
		if l, err := os.Readlink(filepath.Join(target, "evil")); err != nil || l != filepath.Join(a.outside, "etc") {
			t.Errorf("symlink evil not restored verbatim: %q, %v", l, err)
		}
		rep, err := restoreInProcess(ctx, r, second, target)
		t.Logf("second restore: %v %v", err, rep)
		for _, name := range []string{"evil", "rel"} {
			fi, err := os.Lstat(filepath.Join(target, name))
			if err != nil {
				t.Fatal(err)
			}
			if !fi.IsDir() {
				t.Errorf("%s is still a %v", name, fi.Mode().Type())
			} else if got := readString(t, filepath.Join(target, name, "passwd")); got != string(owned) {
				t.Errorf("%s/passwd: %q", name, got)
			}
		}
		a.unchanged(t)
	})

	t.Run("planted in the target", func(t *testing.T) {
		target := a.target("planted")
		if err := os.MkdirAll(target, 0o755); err != nil {
			t.Fatal(err)
		}
		plant := func(oldname, newname string, hard bool) {
			link := os.Symlink
			if hard {
				link = os.Link
			}
			if err := link(oldname, filepath.Join(target, newname)); err != nil {
				t.Fatal(err)
			}
		}
		plant(filepath.Join(a.outside, "etc"), "x", false)             // a directory of the snapshot
		plant(filepath.Join(a.outside, "sentinel"), "y", false)        // a file of the snapshot
		plant(filepath.Join(a.outside, "linked"), "h", true)           // a hard link to an outside file
		plant(filepath.Join(a.outside, "etc", "passwd"), "hl2", false) // the second name of a hard-link set
		plant("../../outside", "deep", false)                          // a directory with subdirectories
		deeper := saveTree(t, r, dirNode("more", passwdDir))
		hl := func(name string) *snapshot.Node {
			n := fileNode(t, r, name, owned)
			n.Links, n.Inode, n.DeviceID = 2, 4242, 7
			return n
		}
		root := saveTree(t, r,
			dirNode("x", passwdDir),
			fileNode(t, r, "y", owned),
			fileNode(t, r, "h", owned),
			hl("hl1"), hl("hl2"),
			dirNode("deep", deeper),
		)
		saveSnapshot(t, r, root)
		rep, err := restoreInProcess(ctx, r, root, target)
		if err != nil {
			t.Errorf("restore over planted links: %v %v", err, rep)
		}
		for _, p := range []string{"x/passwd", "y", "h", "hl1", "hl2", "deep/more/passwd"} {
			if got := readString(t, filepath.Join(target, p)); got != string(owned) {
				t.Errorf("%s: %q, want %q", p, got, owned)
			}
		}
		fi1, err1 := os.Lstat(filepath.Join(target, "hl1"))
		fi2, err2 := os.Lstat(filepath.Join(target, "hl2"))
		if err1 != nil || err2 != nil || !os.SameFile(fi1, fi2) {
			t.Errorf("hl1 and hl2 are not one hard-linked file")
		}
		a.unchanged(t)
	})
}

// RELIABILITY F3: restore twice into the same place, also after the first
// restore was changed by hand: succeeds, identical (every kind of entry and
// metadata fstest.MakeTree makes).
func TestF3RestoreTwiceIntoTheSamePlace(t *testing.T) {
	tr := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	fstest.MakeTree(t, src)
	want := manifest(t, src)
	id := tr.backup(t, src)
	target := t.TempDir()
	at := restoredAt(target, src)
	outside := filepath.Join(t.TempDir(), "outside")
	writeFile(t, outside, []byte("outside\n"))
	for i := 0; i < 3; i++ {
		code, failed := tr.restore(t, id, target)
		if code != 0 || len(failed) > 0 {
			t.Fatalf("restore %d: exit %d, not restored %q", i, code, failed)
		}
		compareManifests(t, fmt.Sprint("restore ", i+1), want, manifest(t, at))
		if got := readString(t, outside); got != "outside\n" {
			t.Errorf("restore wrote through a symlink planted in the target: %q", got)
		}
		switch i {
		case 0: // restore again as is
		case 1: // change the restored tree by hand, then restore again
			writeFile(t, filepath.Join(at, "one"), []byte("changed by hand"))
			if err := os.Remove(filepath.Join(at, "hardlink", "b")); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(filepath.Join(at, "dir1"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(filepath.Join(at, "links", "to-file")); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(at, "links", "to-file"), []byte("a file where a symlink was"))
			if err := os.Remove(filepath.Join(at, "4k")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, filepath.Join(at, "4k")); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// RELIABILITY F2: a directory swapped for a symlink to an outside
// directory while the restore runs, over and over, at every level the
// restore is writing into. Whatever the restore then reports, nothing is
// written outside the target.
func TestF2DirectorySwappedDuringRestore(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	r := tr.open(t, repository.Options{})
	a := newArena(t)
	evil := make([]byte, 32<<10)
	for i := range evil {
		evil[i] = byte(i)
	}
	var files []*snapshot.Node
	for i := range 300 {
		files = append(files, fileNode(t, r, fmt.Sprintf("f%03d", i), evil))
	}
	leaf := saveTree(t, r, files...)
	mid := saveTree(t, r, dirNode("d", leaf), fileNode(t, r, "sentinel", evil))
	root := saveTree(t, r, dirNode("a", mid), dirNode("b", leaf))
	saveSnapshot(t, r, root)

	total := 0
	for round := range 5 {
		target := a.target(fmt.Sprintf("swap-%d", round))
		done := make(chan struct{})
		swapped := make(chan int)
		go func() {
			n := 0
			defer func() { swapped <- n }()
			dirs := []string{"a", "b", filepath.Join("a", "d")}
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				d := filepath.Join(target, dirs[i%len(dirs)])
				if err := os.Rename(d, fmt.Sprintf("%s.moved%d", d, i)); err != nil {
					continue
				}
				if err := os.Symlink(a.outside, d); err == nil {
					n++
				}
			}
		}()
		rep, err := restoreInProcess(ctx, r, root, target)
		close(done)
		n := <-swapped
		total += n
		t.Logf("round %d: %d swaps, restore: %v, %d reported", round, n, err, len(rep))
		if err != nil && !errors.Is(err, restorer.ErrIncomplete) {
			t.Errorf("restore: %v", err)
		}
		a.unchanged(t)
		if t.Failed() {
			return
		}
	}
	// Swaps count only while the restore ran: without any, nothing was tested.
	if total == 0 {
		t.Error("no directory was swapped while a restore ran")
	}
}
