package fs

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"bunker/internal/fs/fstest"
	"bunker/internal/snapshot"
)

func TestMetaReaderNode(t *testing.T) {
	dir := t.TempDir()
	tr := fstest.MakeTree(t, dir)
	m := fstest.Manifest(t, dir)
	r := NewMetaReader(MetaOptions{})

	inodes := map[uint64]bool{}
	for rel, e := range m {
		path := filepath.Join(dir, filepath.FromSlash(rel))
		n, err := r.NodeAt(unix.AT_FDCWD, path, path, nil)
		if err != nil {
			t.Fatalf("%q: %v", rel, err)
		}
		check := func(field string, got, want any) {
			t.Helper()
			if got != want {
				t.Errorf("%q: %s = %v, want %v", rel, field, got, want)
			}
		}
		check("Name", n.Name, filepath.Base(path))
		check("Type", n.Type, e.Type)
		check("Mode", n.Mode, e.Mode)
		check("UID", n.UID, e.UID)
		check("GID", n.GID, e.GID)
		check("ModTime", n.ModTime.UnixNano(), e.ModTime)
		if e.Type != snapshot.TypeSymlink { // Manifest's readlink may update a link's atime
			check("AccessTime", n.AccessTime.UnixNano(), e.AccessTime)
		}
		check("LinkTarget", n.LinkTarget, e.LinkTarget)
		check("Rdev", n.Rdev, e.Rdev)
		if e.Type == snapshot.TypeFile {
			check("Size", n.Size, uint64(e.Size))
		} else {
			check("Size", n.Size, uint64(0))
		}
		if n.ChangeTime.IsZero() || n.Inode == 0 || n.Links == 0 || n.DeviceID == 0 {
			t.Errorf("%q: ctime/inode/links/dev not set: %+v", rel, n)
		}
		if len(n.Xattrs) != len(e.Xattrs) {
			t.Errorf("%q: %d xattrs, want %d", rel, len(n.Xattrs), len(e.Xattrs))
		}
		for i, x := range n.Xattrs {
			if i > 0 && n.Xattrs[i-1].Name >= x.Name {
				t.Errorf("%q: xattrs not sorted", rel)
			}
			if want, ok := e.Xattrs[x.Name]; !ok || want != string(x.Value) {
				t.Errorf("%q: xattr %s = %q, want %q", rel, x.Name, x.Value, want)
			}
		}
		if e.LinkGroup != "" {
			inodes[n.Inode] = true
			check("Links", n.Links, uint64(3))
		}
		if n.Content != nil || !n.Subtree.IsNull() {
			t.Errorf("%q: content or subtree set", rel)
		}
	}
	if len(inodes) != 1 {
		t.Errorf("hard links: %d distinct inodes, want 1", len(inodes))
	}
	if tr.Root {
		n := node(t, r, filepath.Join(dir, tr.CharDev))
		if n.Type != snapshot.TypeCharDev || unix.Major(n.Rdev) != 1 || unix.Minor(n.Rdev) != 3 {
			t.Errorf("chardev: %v %d:%d", n.Type, unix.Major(n.Rdev), unix.Minor(n.Rdev))
		}
		n = node(t, r, filepath.Join(dir, tr.Owned))
		if n.Mode != 0o4750 || n.UID != 1234 || n.GID != 5678 {
			t.Errorf("owned: mode %#o owner %d:%d", n.Mode, n.UID, n.GID)
		}
	}
	if n := node(t, r, filepath.Join(dir, tr.StickyDir)); n.Mode != 0o1777 {
		t.Errorf("sticky: mode %#o", n.Mode)
	}
	if n := node(t, r, filepath.Join(dir, "modes/setgid")); n.Mode != 0o2750 {
		t.Errorf("setgid: mode %#o", n.Mode)
	}
	if n := node(t, r, filepath.Join(dir, tr.BadUTF8)); n.Name != "bad\xffname" {
		t.Errorf("bad utf-8 name %q", n.Name)
	}
	if n := node(t, r, filepath.Join(dir, tr.SparseFile)); n.Size != fstest.SparseSize {
		t.Errorf("sparse size %d", n.Size)
	}
	// Nanoseconds survive.
	if n := node(t, r, filepath.Join(dir, "one")); n.ModTime.Nanosecond()%1000 == 0 {
		t.Errorf("mtime %v lost its nanoseconds", n.ModTime)
	}
	// NoXattrs.
	if tr.Xattrs {
		nr := NewMetaReader(MetaOptions{NoXattrs: true})
		if n := node(t, nr, filepath.Join(dir, tr.XattrFile)); n.Xattrs != nil {
			t.Errorf("NoXattrs: got %v", n.Xattrs)
		}
		if n := node(t, r, filepath.Join(dir, tr.XattrFile)); len(n.Xattrs) != 2 ||
			n.Xattrs[0].Name != "user.bunker.empty" || len(n.Xattrs[0].Value) != 0 ||
			n.Xattrs[1].Name != fstest.XattrName {
			t.Errorf("xattrs %q", n.Xattrs)
		}
	}
}

func node(t *testing.T, r *MetaReader, path string) *snapshot.Node {
	t.Helper()
	n, err := r.NodeAt(unix.AT_FDCWD, path, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestMetaReaderNames(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r := NewMetaReader(MetaOptions{})
	n := node(t, r, path)
	if u, err := user.LookupId(strconv.Itoa(os.Getuid())); err == nil && n.User != u.Username {
		t.Errorf("User %q, want %q", n.User, u.Username)
	}
	if g, err := user.LookupGroupId(strconv.Itoa(os.Getgid())); err == nil && n.Group != g.Name {
		t.Errorf("Group %q, want %q", n.Group, g.Name)
	}
	if os.Geteuid() == 0 {
		// An ID without a name yields an empty name.
		if err := os.Chown(path, 987654, 987655); err != nil {
			t.Fatal(err)
		}
		n := node(t, r, path)
		if n.UID != 987654 || n.User != "" || n.Group != "" {
			t.Errorf("unknown owner: %d %q %q", n.UID, n.User, n.Group)
		}
	}
}

// TestMetaReaderNamesAlternate asks for owners in turn, so that each lookup
// misses the reader's latest entry and must not return its name.
func TestMetaReaderNamesAlternate(t *testing.T) {
	want := func(id uint32, lookup func(string) (string, error)) string {
		name, err := lookup(strconv.FormatUint(uint64(id), 10))
		if err != nil {
			return ""
		}
		return name
	}
	r := NewMetaReader(MetaOptions{})
	own, ownGroup := uint32(os.Getuid()), uint32(os.Getgid())
	for i, id := range []uint32{own, 987654, own, own, 987654, 0, own} {
		if got, w := r.userName(id), want(id, lookupUser); got != w {
			t.Errorf("lookup %d: user %d is %q, want %q", i, id, got, w)
		}
		gid := id
		if id == own {
			gid = ownGroup
		}
		if got, w := r.groupName(gid), want(gid, lookupGroup); got != w {
			t.Errorf("lookup %d: group %d is %q, want %q", i, gid, got, w)
		}
	}
}

func TestMetaReaderConcurrent(t *testing.T) {
	dir := t.TempDir()
	for i := range 20 {
		if err := os.WriteFile(filepath.Join(dir, strconv.Itoa(i)), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := NewMetaReader(MetaOptions{})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				path := filepath.Join(dir, strconv.Itoa((i+g)%20))
				if _, err := r.NodeAt(unix.AT_FDCWD, path, path, nil); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
}

func TestReadXattrsLarge(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 3000) // ext4 limits a value to about one block
	for i := range big {
		big[i] = byte(i)
	}
	if err := unix.Lsetxattr(path, "user.big", big, 0); err != nil {
		t.Skipf("user xattrs not available: %v", err)
	}
	for i := range 30 {
		if err := unix.Lsetxattr(path, "user.name-number-"+strconv.Itoa(i), []byte{byte(i)}, 0); err != nil {
			t.Fatal(err)
		}
	}
	xs, err := ReadXattrs(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(xs) != 31 || xs[0].Name != "user.big" || string(xs[0].Value) != string(big) {
		t.Fatalf("got %d xattrs, first %q (%d bytes)", len(xs), xs[0].Name, len(xs[0].Value))
	}
}

// TestNodeAt: reading an entry relative to its open directory gives the node
// reading it by path gives, with listxattrat and with its fallback.
func TestNodeAt(t *testing.T) {
	dir := t.TempDir()
	fstest.MakeTree(t, dir)
	m := fstest.Manifest(t, dir)
	r := NewMetaReader(MetaOptions{})
	for _, fallback := range []bool{false, true} {
		noXattrAt.Store(fallback)
		for rel := range m {
			path := filepath.Join(dir, filepath.FromSlash(rel))
			want, err := r.NodeAt(unix.AT_FDCWD, path, path, nil)
			if err != nil {
				t.Fatal(err)
			}
			dfd, err := unix.Open(filepath.Dir(path), unix.O_RDONLY|unix.O_DIRECTORY, 0)
			if err != nil {
				t.Fatal(err)
			}
			got, err := r.NodeAt(dfd, filepath.Base(path), path, nil)
			unix.Close(dfd)
			if err != nil {
				t.Fatalf("%q: %v", rel, err)
			}
			// atime may move between the two reads (readlink).
			got.AccessTime = want.AccessTime
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%q (fallback %v): NodeAt\n%+v\nNode\n%+v", rel, fallback, got, want)
			}
		}
	}
	noXattrAt.Store(false)
	if _, err := r.NodeAt(unix.AT_FDCWD, filepath.Join(dir, "no such entry"), "x", nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing entry: %v", err)
	}
}

// TestNodeAtReusesUnchanged: an entry still the same inode with the same
// ctime as in the earlier snapshot keeps that snapshot's xattrs and symlink
// target without reading them; once either changes, the ctime moves and they
// are read again.
func TestNodeAtReusesUnchanged(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	link := filepath.Join(dir, "l")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("target-1", link); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(file, "user.a", []byte("1"), 0); err != nil {
		t.Skipf("no user xattrs here: %v", err)
	}
	r := NewMetaReader(MetaOptions{})
	read := func(path string, prev *snapshot.Node) *snapshot.Node {
		t.Helper()
		n, err := r.NodeAt(unix.AT_FDCWD, path, path, prev)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	prevF, prevL := read(file, nil), read(link, nil)
	if len(prevF.Xattrs) != 1 || prevL.LinkTarget != "target-1" {
		t.Fatalf("first read: %+v, %q", prevF.Xattrs, prevL.LinkTarget)
	}
	// Marked values show whether they were reused or read.
	prevF.Xattrs = []snapshot.Xattr{{Name: "user.marked", Value: []byte("prev")}}
	prevL.LinkTarget = "marked"
	if n := read(file, prevF); len(n.Xattrs) != 1 || n.Xattrs[0].Name != "user.marked" {
		t.Errorf("unchanged file: xattrs %+v, want the earlier snapshot's", n.Xattrs)
	}
	if n := read(link, prevL); n.LinkTarget != "marked" {
		t.Errorf("unchanged symlink: target %q, want the earlier snapshot's", n.LinkTarget)
	}
	// Another inode, or another type, is read whatever its ctime.
	other := *prevF
	other.Inode++
	if n := read(file, &other); len(n.Xattrs) != 1 || n.Xattrs[0].Name != "user.a" {
		t.Errorf("other inode: xattrs %+v, want the file's", n.Xattrs)
	}
	// A changed xattr moves the ctime.
	time.Sleep(10 * time.Millisecond)
	if err := unix.Lsetxattr(file, "user.b", []byte("2"), 0); err != nil {
		t.Fatal(err)
	}
	if n := read(file, prevF); len(n.Xattrs) != 2 || n.Xattrs[0].Name != "user.a" {
		t.Errorf("file with a new xattr: %+v", n.Xattrs)
	}
	// A new target is a new symlink.
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("target-2", link); err != nil {
		t.Fatal(err)
	}
	if n := read(link, prevL); n.LinkTarget != "target-2" {
		t.Errorf("replaced symlink: target %q", n.LinkTarget)
	}
}
