package fstest

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"bunker/internal/snapshot"
)

func TestMakeTreeContents(t *testing.T) {
	dir := t.TempDir()
	tr := MakeTree(t, dir)
	m := Manifest(t, dir)
	t.Logf("tree: %d entries, xattrs=%v root=%v sparse=%v", len(m), tr.Xattrs, tr.Root, tr.Sparse)

	want := map[string]snapshot.NodeType{
		"empty": snapshot.TypeFile, "one": snapshot.TypeFile, "4k": snapshot.TypeFile,
		"dir1/random3m": snapshot.TypeFile, "dir1/text5m": snapshot.TypeFile,
		"emptydir": snapshot.TypeDir, "dir1/sub/deep": snapshot.TypeDir,
		"links/to-file": snapshot.TypeSymlink, "links/dangling": snapshot.TypeSymlink,
		"links/to-dir": snapshot.TypeSymlink, "links/absolute": snapshot.TypeSymlink,
		tr.Fifo: snapshot.TypeFifo, tr.SparseFile: snapshot.TypeFile,
		tr.BadUTF8: snapshot.TypeFile, tr.Newline: snapshot.TypeFile,
		tr.StickyDir: snapshot.TypeDir, tr.Setuid: snapshot.TypeFile,
	}
	if tr.Root {
		want[tr.CharDev] = snapshot.TypeCharDev
		want[tr.BlockDev] = snapshot.TypeDev
		want[tr.Owned] = snapshot.TypeFile
		want[tr.OwnedLink] = snapshot.TypeSymlink
	}
	for p, typ := range want {
		e, ok := m[p]
		if !ok {
			t.Errorf("%q missing", p)
			continue
		}
		if e.Type != typ {
			t.Errorf("%q: type %v, want %v", p, e.Type, typ)
		}
	}
	sizes := map[string]int64{"empty": 0, "one": 1, "4k": 4096, "dir1/random3m": RandomSize,
		"dir1/text5m": TextSize, tr.SparseFile: SparseSize}
	for p, size := range sizes {
		if m[p].Size != size {
			t.Errorf("%q: size %d, want %d", p, m[p].Size, size)
		}
	}
	modes := map[string]uint32{"modes/0640": 0o640, "modes/dir0750": 0o750, tr.Setuid: 0o4755,
		tr.StickyDir: 0o1777, "modes/setgid": 0o2750, "modes/0000": 0}
	for p, mode := range modes {
		if m[p].Mode != mode {
			t.Errorf("%q: mode %#o, want %#o", p, m[p].Mode, mode)
		}
	}
	for _, p := range tr.HardLinks {
		if m[p].LinkGroup != tr.HardLinks[0] {
			t.Errorf("%q: link group %q, want %q", p, m[p].LinkGroup, tr.HardLinks[0])
		}
	}
	if m["one"].LinkGroup != "" {
		t.Errorf("one: unexpected link group %q", m["one"].LinkGroup)
	}
	if m["links/absolute"].LinkTarget != "/nonexistent/bunker/absolute" {
		t.Errorf("absolute link target %q", m["links/absolute"].LinkTarget)
	}
	if tr.Xattrs {
		if got := m[tr.XattrFile].Xattrs[XattrName]; got != "file value" {
			t.Errorf("file xattr %q", got)
		}
		if _, ok := m[tr.XattrFile].Xattrs["user.bunker.empty"]; !ok {
			t.Errorf("empty xattr missing: %q", m[tr.XattrFile].Xattrs)
		}
		if got := m[tr.XattrDir].Xattrs[XattrName]; got != "dir value\x00\xff binary" {
			t.Errorf("dir xattr %q", got)
		}
	}
	if tr.Sparse != m[tr.SparseFile].Sparse() {
		t.Errorf("sparse: tree says %v, manifest %v", tr.Sparse, m[tr.SparseFile].Sparse())
	}
	if m["dir1/random3m"].Sparse() {
		t.Errorf("random file counted as sparse")
	}
	if tr.Root {
		if e := m[tr.CharDev]; unix.Major(e.Rdev) != 1 || unix.Minor(e.Rdev) != 3 {
			t.Errorf("chardev rdev %d:%d", unix.Major(e.Rdev), unix.Minor(e.Rdev))
		}
		if e := m[tr.BlockDev]; unix.Major(e.Rdev) != 7 || unix.Minor(e.Rdev) != 250 {
			t.Errorf("block device rdev %d:%d", unix.Major(e.Rdev), unix.Minor(e.Rdev))
		}
		for _, p := range []string{tr.Owned, tr.OwnedLink} {
			if e := m[p]; e.UID != 1234 || e.GID != 5678 {
				t.Errorf("%q: owner %d:%d", p, e.UID, e.GID)
			}
		}
		if m[tr.Owned].Mode != 0o4750 {
			t.Errorf("owned: mode %#o", m[tr.Owned].Mode)
		}
	}
	// Times: all distinct, with nanoseconds, atime != mtime.
	seen := map[int64]string{}
	for p, e := range m {
		if e.LinkGroup != "" && e.LinkGroup != p {
			continue // shares the inode (and times) with its group
		}
		if other, ok := seen[e.ModTime]; ok {
			t.Errorf("%q and %q share mtime", p, other)
		}
		seen[e.ModTime] = p
		if e.ModTime%1000 == 0 && e.ModTime != BaseTime.UnixNano() {
			// every mtime but possibly one has non-zero sub-microsecond digits
			t.Errorf("%q: mtime %d has no nanoseconds", p, e.ModTime)
		}
		if e.Type != snapshot.TypeSymlink && e.AccessTime == e.ModTime {
			t.Errorf("%q: atime == mtime", p)
		}
		if e.ModTime < BaseTime.UnixNano() || e.ModTime > BaseTime.AddDate(1, 0, 0).UnixNano() {
			t.Errorf("%q: mtime %s not set by MakeTree", p, fmtNs(e.ModTime))
		}
	}
}

func TestManifestStable(t *testing.T) {
	dir := t.TempDir()
	MakeTree(t, dir)
	m1 := Manifest(t, dir)
	m2 := Manifest(t, dir)
	if d := Compare(m1, m2, CompareOptions{}); len(d) > 0 {
		t.Errorf("manifest not stable:\n%s", strings.Join(d, "\n"))
	}
}

// requireDiff checks that Compare reports exactly one difference for path
// that contains substr.
func requireDiff(t *testing.T, want, got map[string]Entry, opts CompareOptions, path, substr string) {
	t.Helper()
	d := Compare(want, got, opts)
	found := false
	for _, line := range d {
		if !strings.HasPrefix(line, `"`+path+`"`) {
			t.Errorf("unexpected difference: %s", line)
			continue
		}
		if strings.Contains(line, substr) {
			found = true
		}
	}
	if !found {
		t.Errorf("difference %q for %q not reported; got %q", substr, path, d)
	}
}

func TestCompareDetectsChanges(t *testing.T) {
	dir := t.TempDir()
	tr := MakeTree(t, dir)
	orig := Manifest(t, dir)
	p := func(rel string) string { return filepath.Join(dir, filepath.FromSlash(rel)) }
	keepTimes := func(rel string, fn func()) {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(p(rel), &st); err != nil {
			t.Fatal(err)
		}
		fn()
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p(rel), []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
	opts := CompareOptions{IgnoreDirMtime: true}

	t.Run("changed byte", func(t *testing.T) {
		keepTimes("dir1/random3m", func() {
			f, err := os.OpenFile(p("dir1/random3m"), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			b := []byte{0}
			if _, err := f.ReadAt(b, 1<<20); err == nil {
				t.Fatal("read on write-only file")
			}
			if _, err := f.WriteAt([]byte{0x5a}, 1<<20); err != nil {
				t.Fatal(err)
			}
			f.Close()
		})
		requireDiff(t, orig, Manifest(t, dir), opts, "dir1/random3m", "content hash")
	})
	orig = Manifest(t, dir)

	t.Run("changed mode", func(t *testing.T) {
		keepTimes("modes/0640", func() {
			if err := os.Chmod(p("modes/0640"), 0o644); err != nil {
				t.Fatal(err)
			}
		})
		requireDiff(t, orig, Manifest(t, dir), opts, "modes/0640", "mode 0644, want 0640")
	})
	orig = Manifest(t, dir)

	t.Run("broken hard link", func(t *testing.T) {
		b := tr.HardLinks[2] // hardlink/b
		data, err := readNoatime(p(b))
		if err != nil {
			t.Fatal(err)
		}
		keepTimes(b, func() {
			if err := os.Remove(p(b)); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p(b), data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p(b), os.FileMode(orig[b].Mode)); err != nil {
				t.Fatal(err)
			}
			if err := os.Lchown(p(b), int(orig[b].UID), int(orig[b].GID)); err != nil {
				t.Fatal(err)
			}
		})
		requireDiff(t, orig, Manifest(t, dir), opts, b, "hard-link group")
	})
	orig = Manifest(t, dir)

	t.Run("non-sparse copy", func(t *testing.T) {
		if !tr.Sparse {
			t.Skip("file system does not support sparse files")
		}
		data, err := readNoatime(p(tr.SparseFile))
		if err != nil {
			t.Fatal(err)
		}
		keepTimes(tr.SparseFile, func() {
			f, err := os.OpenFile(p(tr.SparseFile), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(data, 0); err != nil { // writes the holes as zeros
				t.Fatal(err)
			}
			f.Close()
		})
		requireDiff(t, orig, Manifest(t, dir), opts, tr.SparseFile, "not sparse")
	})
	orig = Manifest(t, dir)

	t.Run("symlink target", func(t *testing.T) {
		keepTimes("links", func() {
			os.Remove(p("links/dangling"))
			if err := os.Symlink("elsewhere", p("links/dangling")); err != nil {
				t.Fatal(err)
			}
		})
		requireDiff(t, orig, Manifest(t, dir), opts, "links/dangling", "link target")
	})
}

func TestComparePure(t *testing.T) {
	base := map[string]Entry{
		"a":    {Type: snapshot.TypeFile, Mode: 0o644, Size: 10, Hash: "h1", ModTime: 1, AccessTime: 2, Blocks: 8},
		"d":    {Type: snapshot.TypeDir, Mode: 0o755, ModTime: 3, AccessTime: 4},
		"l":    {Type: snapshot.TypeSymlink, Mode: 0o777, LinkTarget: "a", ModTime: 5, AccessTime: 6},
		"s":    {Type: snapshot.TypeFile, Mode: 0o644, Size: 1 << 20, Hash: "h2", Blocks: 8, ModTime: 7},
		"x":    {Type: snapshot.TypeFile, Xattrs: map[string]string{"user.a": "1"}},
		"h1":   {Type: snapshot.TypeFile, LinkGroup: "h1"},
		"h2":   {Type: snapshot.TypeFile, LinkGroup: "h1"},
		"o":    {Type: snapshot.TypeFile, UID: 1, GID: 2},
		"dev":  {Type: snapshot.TypeCharDev, Rdev: unix.Mkdev(1, 3)},
		"gone": {Type: snapshot.TypeFifo},
	}
	clone := func() map[string]Entry {
		m := make(map[string]Entry, len(base))
		for k, v := range base {
			m[k] = v
		}
		return m
	}
	if d := Compare(base, clone(), CompareOptions{}); d != nil {
		t.Fatalf("identical: %q", d)
	}
	cases := []struct {
		name   string
		change func(m map[string]Entry)
		opts   CompareOptions
		path   string
		substr string // "" means: no difference expected
	}{
		{"missing", func(m map[string]Entry) { delete(m, "gone") }, CompareOptions{}, "gone", "missing"},
		{"extra", func(m map[string]Entry) { m["new"] = Entry{Type: snapshot.TypeFile} }, CompareOptions{}, "new", "extra file"},
		{"type", func(m map[string]Entry) { m["gone"] = Entry{Type: snapshot.TypeFile} }, CompareOptions{}, "gone", "type file, want fifo"},
		{"hash", func(m map[string]Entry) { e := m["a"]; e.Hash = "h9"; m["a"] = e }, CompareOptions{}, "a", "content hash"},
		{"size", func(m map[string]Entry) { e := m["a"]; e.Size = 11; m["a"] = e }, CompareOptions{}, "a", "size 11, want 10"},
		{"mode", func(m map[string]Entry) { e := m["a"]; e.Mode = 0o4644; m["a"] = e }, CompareOptions{}, "a", "mode 04644, want 0644"},
		{"mtime", func(m map[string]Entry) { e := m["a"]; e.ModTime = 9; m["a"] = e }, CompareOptions{}, "a", "mtime"},
		{"atime", func(m map[string]Entry) { e := m["a"]; e.AccessTime = 9; m["a"] = e }, CompareOptions{}, "a", "atime"},
		{"atime ignored", func(m map[string]Entry) { e := m["a"]; e.AccessTime = 9; m["a"] = e }, CompareOptions{IgnoreAtime: true}, "a", ""},
		{"symlink atime never", func(m map[string]Entry) { e := m["l"]; e.AccessTime = 9; m["l"] = e }, CompareOptions{}, "l", ""},
		{"dir mtime", func(m map[string]Entry) { e := m["d"]; e.ModTime = 9; m["d"] = e }, CompareOptions{}, "d", "mtime"},
		{"dir mtime ignored", func(m map[string]Entry) { e := m["d"]; e.ModTime = 9; m["d"] = e }, CompareOptions{IgnoreDirMtime: true}, "d", ""},
		{"owner", func(m map[string]Entry) { e := m["o"]; e.UID = 0; m["o"] = e }, CompareOptions{}, "o", "owner 0:2, want 1:2"},
		{"owner ignored", func(m map[string]Entry) { e := m["o"]; e.UID = 0; m["o"] = e }, CompareOptions{IgnoreOwner: true}, "o", ""},
		{"link target", func(m map[string]Entry) { e := m["l"]; e.LinkTarget = "b"; m["l"] = e }, CompareOptions{}, "l", `link target "b", want "a"`},
		{"rdev", func(m map[string]Entry) { e := m["dev"]; e.Rdev = unix.Mkdev(1, 5); m["dev"] = e }, CompareOptions{}, "dev", "rdev 1:5, want 1:3"},
		{"xattr value", func(m map[string]Entry) {
			m["x"] = Entry{Type: snapshot.TypeFile, Xattrs: map[string]string{"user.a": "2"}}
		}, CompareOptions{}, "x", "xattr user.a"},
		{"xattr missing", func(m map[string]Entry) { m["x"] = Entry{Type: snapshot.TypeFile} }, CompareOptions{}, "x", "xattr user.a missing"},
		{"xattr ignored", func(m map[string]Entry) { m["x"] = Entry{Type: snapshot.TypeFile} }, CompareOptions{IgnoreXattrs: true}, "x", ""},
		{"hard link", func(m map[string]Entry) { e := m["h2"]; e.LinkGroup = ""; m["h2"] = e }, CompareOptions{}, "h2", "hard-link group"},
		{"not sparse", func(m map[string]Entry) { e := m["s"]; e.Blocks = 2048; m["s"] = e }, CompareOptions{}, "s", "not sparse"},
		{"sparse where original was not", func(m map[string]Entry) { e := m["a"]; e.Blocks = 0; m["a"] = e }, CompareOptions{}, "a", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := clone()
			c.change(got)
			d := Compare(base, got, c.opts)
			if c.substr == "" {
				if d != nil {
					t.Fatalf("unexpected differences %q", d)
				}
				return
			}
			if len(d) != 1 || !strings.HasPrefix(d[0], `"`+c.path+`": `) || !strings.Contains(d[0], c.substr) {
				t.Fatalf("got %q, want one line for %q containing %q", d, c.path, c.substr)
			}
		})
	}
}

func readNoatime(path string) ([]byte, error) {
	f, err := openNoatime(path, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}
