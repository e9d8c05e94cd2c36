package fs

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"bunker/internal/fs/fstest"
	"bunker/internal/snapshot"
)

func openRoot(t *testing.T, dir string) *Root {
	t.Helper()
	r, err := OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// restoreTree copies src into root the way a restorer does: entries in
// walk order, file data sparse, hard links as links, metadata children first.
func restoreTree(t *testing.T, src string, root *Root) {
	t.Helper()
	mr := NewMetaReader(MetaOptions{})
	type item struct {
		rel  string
		node *snapshot.Node
	}
	var items []item
	linked := map[[2]uint64]string{}
	err := filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		n, err := mr.NodeAt(unix.AT_FDCWD, path, path, nil)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		items = append(items, item{rel, n})
		if rel == "." {
			return nil
		}
		if n.Type != snapshot.TypeDir && n.Links > 1 {
			key := [2]uint64{n.DeviceID, n.Inode}
			if first, ok := linked[key]; ok {
				return root.Link(first, rel)
			}
			linked[key] = rel
		}
		switch n.Type {
		case snapshot.TypeDir:
			return root.Mkdir(rel)
		case snapshot.TypeFile:
			f, err := root.CreateFile(rel)
			if err != nil {
				return err
			}
			if err := copySparse(f, path); err != nil {
				f.Close()
				return err
			}
			return f.Close()
		case snapshot.TypeSymlink:
			return root.Symlink(rel, n.LinkTarget)
		default:
			return root.Mknod(rel, n.Type, n.Mode, n.Rdev)
		}
	})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	for i := len(items) - 1; i >= 0; i-- {
		if err := root.SetMetadata(items[i].rel, items[i].node, RestoreOptions{}); err != nil {
			t.Fatalf("SetMetadata(%q): %v", items[i].rel, err)
		}
	}
}

func copySparse(dst *File, srcPath string) error {
	src, err := os.OpenFile(srcPath, os.O_RDONLY|syscall.O_NOATIME, 0)
	if err != nil {
		return err
	}
	defer src.Close()
	buf := make([]byte, 64<<10)
	var off int64
	for {
		n, err := io.ReadFull(src, buf)
		if n > 0 && !IsZero(buf[:n]) {
			if _, err := dst.WriteAt(buf[:n], off); err != nil {
				return err
			}
		}
		off += int64(n)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return dst.Truncate(off)
		}
		if err != nil {
			return err
		}
	}
}

func TestRootRoundTrip(t *testing.T) {
	src := t.TempDir()
	tr := fstest.MakeTree(t, src)
	want := fstest.Manifest(t, src)
	var srcRoot unix.Stat_t
	if err := unix.Stat(src, &srcRoot); err != nil {
		t.Fatal(err)
	}

	dst := filepath.Join(t.TempDir(), "new", "target")
	root := openRoot(t, dst)
	restoreTree(t, src, root)

	got := fstest.Manifest(t, dst)
	if d := fstest.Compare(want, got, fstest.CompareOptions{}); len(d) > 0 {
		t.Errorf("restored tree differs:\n%s", strings.Join(d, "\n"))
	}
	var dstRoot unix.Stat_t
	if err := unix.Stat(dst, &dstRoot); err != nil {
		t.Fatal(err)
	}
	if dstRoot.Mtim != srcRoot.Mtim || dstRoot.Mode != srcRoot.Mode {
		t.Errorf("root dir: mtime %v mode %#o, want %v %#o", dstRoot.Mtim, dstRoot.Mode, srcRoot.Mtim, srcRoot.Mode)
	}
	t.Logf("restored %d entries (xattrs=%v, root=%v, sparse=%v)", len(got), tr.Xattrs, tr.Root, tr.Sparse)

	// Restoring again over the existing tree gives the same result. (The
	// first restore read the source directories, changing their atimes.)
	want = fstest.Manifest(t, src)
	restoreTree(t, src, root)
	if d := fstest.Compare(want, fstest.Manifest(t, dst), fstest.CompareOptions{}); len(d) > 0 {
		t.Errorf("second restore differs:\n%s", strings.Join(d, "\n"))
	}
}

// escapeSetup creates an outside directory with content and a target root
// containing symlinks that point outside.
func escapeSetup(t *testing.T) (outside string, root *Root, target string) {
	base := t.TempDir()
	outside = filepath.Join(base, "outside")
	target = filepath.Join(base, "target")
	for _, d := range []string{outside, filepath.Join(outside, "sub"), target, filepath.Join(target, "in")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"passwd", "sub/secret"} {
		if err := os.WriteFile(filepath.Join(outside, f), []byte("outside "+f), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		"evil":            outside,                 // absolute, to a dir
		"evil-rel":        "../outside",            // relative, to a dir
		"evil-file":       outside + "/passwd",     // to a file
		"in/evil-up":      "../../outside/sub",     // nested
		"evil-dangling":   outside + "/new",        // to a name that does not exist
		"inside-link":     "in",                    // stays inside: still not followed
		"in/evil-passwd2": "../../outside/passwd",  // relative to a file
		"loop":            "loop",                  // a loop
		"evil-proc":       "/proc/self/cwd",        // magic link
		"evil-root":       "/",                     // the file-system root
		"evil-dotdot":     "..",                    // the parent of the target
		"in/evil-dotdot2": "../..",                 // grand parent
		"evil-deep":       outside + "/sub/secret", // deep file
	}
	for name, to := range links {
		if err := os.Symlink(to, filepath.Join(target, name)); err != nil {
			t.Fatal(err)
		}
	}
	return outside, openRoot(t, target), target
}

func TestRootNoEscape(t *testing.T) {
	outside, root, target := escapeSetup(t)
	before := fstest.Manifest(t, outside)
	var outsideSt unix.Stat_t
	if err := unix.Lstat(outside, &outsideSt); err != nil {
		t.Fatal(err)
	}
	parentOfTarget := filepath.Dir(target)
	parentBefore := fstest.Manifest(t, parentOfTarget)
	delete(parentBefore, "target") // changes legitimately

	node := &snapshot.Node{Type: snapshot.TypeFile, Mode: 0o777, UID: 4321, GID: 4321,
		ModTime: time.Unix(1, 0), AccessTime: time.Unix(1, 0),
		Xattrs: []snapshot.Xattr{{Name: "user.evil", Value: []byte("x")}}}
	dirNode := *node
	dirNode.Type = snapshot.TypeDir

	// Paths that must be rejected outright, for every operation.
	badPaths := []string{
		"evil/passwd", "evil/new", "evil-rel/passwd", "in/evil-up/secret", "inside-link/x",
		"evil-file/x", "loop/x", "evil-proc/x", "evil-root/etc/passwd", "evil-dotdot/x",
		"in/evil-dotdot2/x", "evil-dangling/x",
		"../outside/passwd", "in/../../outside/passwd", "..", "in/..", "./in", "in/.",
		"/etc/passwd", outside + "/passwd", "", "in//x", "in/", "a\x00b", "in/\x00",
		strings.Repeat("x", 256),
	}
	for _, p := range badPaths {
		errs := map[string]error{}
		_, errs["CreateFile"] = root.CreateFile(p)
		errs["Mkdir"] = root.Mkdir(p)
		errs["Symlink"] = root.Symlink(p, "x")
		errs["Mknod"] = root.Mknod(p, snapshot.TypeFifo, 0o644, 0)
		errs["Link old"] = root.Link(p, "in/link")
		errs["Link new"] = root.Link("in", p) // in is a dir: fails anyway, but not outside
		errs["SetMetadata"] = root.SetMetadata(p, node, RestoreOptions{Owner: true})
		errs["SetMetadata dir"] = root.SetMetadata(p, &dirNode, RestoreOptions{Owner: true})
		for op, err := range errs {
			if err == nil {
				t.Errorf("%s(%q) succeeded", op, p)
			}
		}
	}
	os.Remove(filepath.Join(target, "in", "link"))

	// Operations on the symlinks themselves replace or modify the link, never
	// what it points to.
	f, err := root.CreateFile("evil-file")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("replaced"), 0)
	f.Close()
	if err := root.Mkdir("evil"); err != nil {
		t.Fatal(err)
	}
	if err := root.Symlink("evil-rel", "/etc"); err != nil {
		t.Fatal(err)
	}
	if err := root.Mknod("in/evil-up", snapshot.TypeFifo, 0o600, 0); err != nil {
		t.Fatal(err)
	}
	if err := root.Link("in/evil-passwd2", "in/hardlink"); err != nil {
		t.Fatal(err) // links the symlink itself
	}
	if err := root.Link("inside-link", "evil-dangling"); err != nil {
		t.Fatal(err)
	}
	linkNode := *node
	linkNode.Type = snapshot.TypeSymlink
	for _, p := range []string{"evil-deep", "evil-root", "evil-dotdot", "in/evil-dotdot2", "evil-proc", "loop"} {
		err := root.SetMetadata(p, &linkNode, RestoreOptions{Owner: true})
		if err != nil && !(os.Geteuid() != 0 && errors.Is(err, os.ErrPermission)) {
			t.Errorf("SetMetadata(%q) on the link: %v", p, err)
		}
		// Wrong type: the entry is a symlink, not a file or dir.
		if err := root.SetMetadata(p, node, RestoreOptions{}); err == nil {
			t.Errorf("SetMetadata(%q) with a file node succeeded", p)
		}
	}
	if os.Geteuid() == 0 {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(target, "evil-deep"), &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != 4321 || st.Mtim.Sec != 1 {
			t.Errorf("SetMetadata did not change the link itself: uid %d mtime %v", st.Uid, st.Mtim)
		}
	}
	// Whatever the target contains now, the outside is untouched.
	if d := fstest.Compare(before, fstest.Manifest(t, outside), fstest.CompareOptions{}); len(d) > 0 {
		t.Errorf("outside directory changed:\n%s", strings.Join(d, "\n"))
	}
	var after unix.Stat_t
	if err := unix.Lstat(outside, &after); err != nil {
		t.Fatal(err)
	}
	if after.Mode != outsideSt.Mode || after.Uid != outsideSt.Uid || after.Mtim != outsideSt.Mtim {
		t.Errorf("outside directory itself changed")
	}
	parentAfter := fstest.Manifest(t, parentOfTarget)
	for p := range parentAfter {
		if p == "target" || strings.HasPrefix(p, "target/") {
			delete(parentAfter, p)
		}
	}
	for p := range parentBefore {
		if strings.HasPrefix(p, "target/") {
			delete(parentBefore, p)
		}
	}
	if d := fstest.Compare(parentBefore, parentAfter, fstest.CompareOptions{}); len(d) > 0 {
		t.Errorf("parent of target changed:\n%s", strings.Join(d, "\n"))
	}
	// And the links were handled as expected inside.
	m := fstest.Manifest(t, target)
	for p, typ := range map[string]snapshot.NodeType{
		"evil-file": snapshot.TypeFile, "evil": snapshot.TypeDir, "evil-rel": snapshot.TypeSymlink,
		"in/evil-up": snapshot.TypeFifo, "in/hardlink": snapshot.TypeSymlink, "evil-dangling": snapshot.TypeSymlink,
	} {
		if m[p].Type != typ {
			t.Errorf("%q: %v, want %v", p, m[p].Type, typ)
		}
	}
	if m["evil-rel"].LinkTarget != "/etc" || m["in/hardlink"].LinkGroup != "in/evil-passwd2" {
		t.Errorf("unexpected: %+v %+v", m["evil-rel"], m["in/hardlink"])
	}
}

func TestRootReplace(t *testing.T) {
	dir := t.TempDir()
	root := openRoot(t, dir)
	write := func(rel, content string) {
		t.Helper()
		f, err := root.CreateFile(rel)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte(content), 0); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(root.Mkdir("d"))
	must(root.Mkdir("d")) // existing dir is fine
	write("d/f", "one")
	write("d/f", "two") // replaces
	if b, _ := os.ReadFile(filepath.Join(dir, "d/f")); string(b) != "two" {
		t.Errorf("content %q", b)
	}
	fi, _ := os.Lstat(filepath.Join(dir, "d/f"))
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("new file mode %v", fi.Mode())
	}
	fi, _ = os.Lstat(filepath.Join(dir, "d"))
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("new dir mode %v", fi.Mode())
	}

	// A directory is never removed.
	if _, err := root.CreateFile("d"); err == nil {
		t.Error("CreateFile over a directory succeeded")
	}
	if err := root.Symlink("d", "x"); err == nil {
		t.Error("Symlink over a directory succeeded")
	}
	if err := root.Mknod("d", snapshot.TypeFifo, 0o600, 0); err == nil {
		t.Error("Mknod over a directory succeeded")
	}
	if err := root.Link("d/f", "d"); err == nil {
		t.Error("Link over a directory succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "d/f")); err != nil {
		t.Errorf("directory content lost: %v", err)
	}

	// Mkdir replaces a file and a symlink.
	write("x", "file")
	must(root.Mkdir("x"))
	must(root.Symlink("y", "/"))
	must(root.Mkdir("y"))
	for _, p := range []string{"x", "y"} {
		if fi, err := os.Lstat(filepath.Join(dir, p)); err != nil || !fi.IsDir() {
			t.Errorf("%s: not a directory: %v", p, err)
		}
	}

	// Link: idempotent, replaces other entries.
	must(root.Link("d/f", "d/g"))
	must(root.Link("d/f", "d/g"))
	write("d/h", "other")
	must(root.Link("d/f", "d/h"))
	if b, _ := os.ReadFile(filepath.Join(dir, "d/h")); string(b) != "two" {
		t.Errorf("link content %q", b)
	}
	// Symlink targets are stored verbatim.
	for _, target := range []string{"/etc/passwd", "../../..", "a\xffb", "with space\n", strings.Repeat("t/", 500)} {
		must(root.Symlink("l", target))
		if got, _ := os.Readlink(filepath.Join(dir, "l")); got != target {
			t.Errorf("link target %q, want %q", got, target)
		}
	}
	if err := root.Symlink("l2", "a\x00b"); err == nil {
		t.Error("symlink target with NUL accepted")
	}

	// Sockets and other types are refused.
	if err := root.Mknod("s", snapshot.TypeSocket, 0o600, 0); !errors.Is(err, ErrSocket) {
		t.Errorf("socket: %v", err)
	}
	if err := root.Mknod("s", snapshot.TypeFile, 0o600, 0); err == nil {
		t.Error("Mknod of a file succeeded")
	}
	if _, err := os.Lstat(filepath.Join(dir, "s")); !os.IsNotExist(err) {
		t.Errorf("something was created for the socket: %v", err)
	}
	err := root.Mknod("blk", snapshot.TypeDev, 0o600, unix.Mkdev(7, 200))
	if os.Geteuid() == 0 {
		must(err)
		var st unix.Stat_t
		must(unix.Lstat(filepath.Join(dir, "blk"), &st))
		if st.Mode&unix.S_IFMT != unix.S_IFBLK || st.Rdev != unix.Mkdev(7, 200) {
			t.Errorf("block device: mode %#o rdev %d", st.Mode, st.Rdev)
		}
	} else if err == nil || !strings.Contains(err.Error(), "requires root") {
		t.Errorf("block device as non-root: %v", err)
	}

	// Root itself.
	must(root.Mkdir("."))
	if _, err := root.CreateFile("."); err == nil {
		t.Error("CreateFile(.) succeeded")
	}
	must(root.Close())
	if err := root.Mkdir("z"); err == nil {
		t.Error("Mkdir after Close succeeded")
	}
	if err := root.Close(); err == nil {
		t.Error("second Close succeeded")
	}
}

func TestRootSetMetadata(t *testing.T) {
	dir := t.TempDir()
	root := openRoot(t, dir)
	f, err := root.CreateFile("f")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := root.Symlink("l", "f"); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 678901234, time.UTC)
	atime := time.Date(2019, 1, 2, 3, 4, 5, 1, time.UTC)
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	if os.Geteuid() == 0 {
		uid, gid = 1234, 5678
	}
	xattrs := []snapshot.Xattr{{Name: "user.a", Value: []byte("1")}, {Name: "user.b", Value: []byte{0, 255}}}
	n := &snapshot.Node{Type: snapshot.TypeFile, Mode: 0o4750, UID: uid, GID: gid,
		ModTime: mtime, AccessTime: atime, Xattrs: xattrs}
	err = root.SetMetadata("f", n, RestoreOptions{})
	xattrsOK := true
	if IsWarning(err) {
		t.Logf("xattrs not supported: %v", err)
		xattrsOK = false
	} else if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "f"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o4750 || st.Uid != uid || st.Gid != gid {
		t.Errorf("mode %#o owner %d:%d", st.Mode&0o7777, st.Uid, st.Gid)
	}
	if st.Mtim != unix.NsecToTimespec(mtime.UnixNano()) || st.Atim != unix.NsecToTimespec(atime.UnixNano()) {
		t.Errorf("times %v %v", st.Mtim, st.Atim)
	}
	if xattrsOK {
		got, err := ReadXattrs(filepath.Join(dir, "f"))
		if err != nil || len(got) != 2 || string(got[1].Value) != "\x00\xff" {
			t.Errorf("xattrs %q %v", got, err)
		}
	}

	// A symlink: times and owner on the link, user xattrs skipped, no chmod.
	ln := &snapshot.Node{Type: snapshot.TypeSymlink, Mode: 0o600, UID: uid, GID: gid,
		ModTime: mtime.Add(time.Hour), AccessTime: atime, Xattrs: xattrs}
	if err := root.SetMetadata("l", ln, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	var lst unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "l"), &lst); err != nil {
		t.Fatal(err)
	}
	if lst.Mtim != unix.NsecToTimespec(mtime.Add(time.Hour).UnixNano()) {
		t.Errorf("link mtime %v", lst.Mtim)
	}
	if err := unix.Lstat(filepath.Join(dir, "f"), &st); err != nil || st.Mtim != unix.NsecToTimespec(mtime.UnixNano()) {
		t.Errorf("link target modified: %v %v", st.Mtim, err)
	}

	// Zero times are left alone; the root itself can be set.
	dn := &snapshot.Node{Type: snapshot.TypeDir, Mode: 0o751, UID: uid, GID: gid, ModTime: mtime}
	if err := root.SetMetadata(".", dn, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o751 || st.Mtim != unix.NsecToTimespec(mtime.UnixNano()) {
		t.Errorf("root: mode %#o mtime %v", st.Mode&0o7777, st.Mtim)
	}
	if err := root.SetMetadata("f", dn, RestoreOptions{}); err == nil {
		t.Error("SetMetadata with a dir node on a file succeeded")
	}
	if err := root.SetMetadata("missing", n, RestoreOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing entry: %v", err)
	}
}

func TestIsWarning(t *testing.T) {
	w := &Warning{Err: errors.New("w")}
	cases := []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errors.New("e"), false},
		{w, true},
		{errors.Join(w, w), true},
		{errors.Join(w, errors.New("e")), false},
	}
	for _, c := range cases {
		if got := IsWarning(c.err); got != c.want {
			t.Errorf("IsWarning(%v) = %v", c.err, got)
		}
	}
}

func TestRootConcurrent(t *testing.T) {
	dir := t.TempDir()
	root := openRoot(t, dir)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := "d" + string(rune('a'+g))
			if err := root.Mkdir(d); err != nil {
				t.Error(err)
				return
			}
			for i := range 20 {
				rel := d + "/" + string(rune('a'+i))
				f, err := root.CreateFile(rel)
				if err != nil {
					t.Error(err)
					return
				}
				f.Close()
				if err := root.SetMetadata(rel, &snapshot.Node{Type: snapshot.TypeFile, Mode: 0o644,
					UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), ModTime: time.Unix(int64(i), 0)}, RestoreOptions{}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	var names []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			names = append(names, p)
		}
		return nil
	})
	sort.Strings(names)
	if len(names) != 160 {
		t.Errorf("%d files, want 160", len(names))
	}
}
