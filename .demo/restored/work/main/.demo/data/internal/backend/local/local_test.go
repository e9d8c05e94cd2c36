package local

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"bunker/internal/backend"
	"bunker/internal/backend/backendtest"

	"golang.org/x/sys/unix"
)

func newBackend(t *testing.T) *Backend {
	t.Helper()
	be, err := Create(context.Background(), filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return be
}

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend { return newBackend(t) })
}

// TestConformanceLinkFallback runs the suite with the link(2) fallback that
// file systems without RENAME_NOREPLACE get.
func TestConformanceLinkFallback(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		be := newBackend(t)
		be.link = func(oldpath, newpath string) error {
			// What renameat2 says on such file systems.
			err := unix.Renameat2(unix.AT_FDCWD, oldpath, unix.AT_FDCWD, newpath, unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE)
			if !errors.Is(err, unix.EINVAL) {
				t.Fatalf("renameat2 with conflicting flags: %v, want EINVAL", err)
			}
			return linkFallback(oldpath, newpath)
		}
		return be
	})
}

// tmpFiles returns the temporary files left anywhere under dir.
func tmpFiles(t *testing.T, dir string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), tmpPref) {
			found = append(found, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func TestCreateOpen(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "repo")

	if _, err := Open(ctx, dir); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("Open(missing dir): err = %v, want ErrNotExist", err)
	}
	be, err := Create(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"keys", "data", "data/00", "data/7f", "data/ff", "index", "snapshots", "locks"} {
		fi, err := os.Stat(filepath.Join(dir, d))
		if err != nil || !fi.IsDir() || fi.Mode().Perm() != dirMode {
			t.Errorf("%s: %v, %v", d, fi, err)
		}
	}
	// Without a config there is no repository yet.
	if _, err := Open(ctx, dir); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("Open(no config): err = %v, want ErrNotExist", err)
	}
	cfg := backend.Handle{Type: backend.ConfigFile}
	if err := be.Save(ctx, cfg, []byte("config")); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(ctx, dir); !errors.Is(err, backend.ErrExists) {
		t.Errorf("Create over a repository: err = %v, want ErrExists", err)
	}
	be2, err := Open(ctx, dir)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if got, err := backend.LoadAll(ctx, be2, cfg); err != nil || string(got) != "config" {
		t.Errorf("config via Open = %q, %v", got, err)
	}
}

func TestLayoutAndMode(t *testing.T) {
	ctx := context.Background()
	be := newBackend(t)
	for h, rel := range map[backend.Handle]string{
		{Type: backend.ConfigFile}:               "config",
		{Type: backend.KeyFile, Name: "k1"}:      "keys/k1",
		{Type: backend.PackFile, Name: "abcdef"}: "data/ab/abcdef",
		{Type: backend.PackFile, Name: "ZZtop"}:  "data/ZZ/ZZtop", // subdir made on demand
		{Type: backend.IndexFile, Name: "i1"}:    "index/i1",
		{Type: backend.SnapshotFile, Name: "s1"}: "snapshots/s1",
		{Type: backend.LockFile, Name: "l1"}:     "locks/l1",
	} {
		if err := be.Save(ctx, h, []byte("x")); err != nil {
			t.Fatalf("Save(%v): %v", h, err)
		}
		fi, err := os.Stat(filepath.Join(be.Location(), rel))
		if err != nil {
			t.Errorf("%v not at %s: %v", h, rel, err)
			continue
		}
		if fi.Mode().Perm() != fileMode {
			t.Errorf("%s has mode %v, want %v", rel, fi.Mode().Perm(), os.FileMode(fileMode))
		}
		// Read-only files can still be removed.
		if err := be.Remove(ctx, h); err != nil {
			t.Errorf("Remove(%v): %v", h, err)
		}
	}
	if tmp := tmpFiles(t, be.Location()); len(tmp) != 0 {
		t.Errorf("temporary files left: %v", tmp)
	}
}

func TestFailedSaveLeavesNothing(t *testing.T) {
	ctx := context.Background()
	h := backend.Handle{Type: backend.PackFile, Name: "ab01"}
	errBoom := errors.New("boom")

	for _, c := range []struct {
		name  string
		setup func(be *Backend)
		want  error
	}{
		{"write ENOSPC", func(be *Backend) {
			be.write = func(f *os.File, p []byte) (int, error) {
				n, _ := f.Write(p[:len(p)/2]) // a partial write, as a full disk gives
				return n, &fs.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
			}
		}, backend.ErrNoSpace},
		{"write EDQUOT", func(be *Backend) {
			be.write = func(f *os.File, p []byte) (int, error) {
				return 0, &fs.PathError{Op: "write", Path: f.Name(), Err: syscall.EDQUOT}
			}
		}, backend.ErrNoSpace},
		{"write EROFS", func(be *Backend) {
			be.write = func(f *os.File, p []byte) (int, error) {
				return 0, &fs.PathError{Op: "write", Path: f.Name(), Err: syscall.EROFS}
			}
		}, backend.ErrPermission},
		{"link EACCES", func(be *Backend) {
			be.link = func(o, n string) error {
				return &os.LinkError{Op: "renameat2", Old: o, New: n, Err: syscall.EACCES}
			}
		}, backend.ErrPermission},
		{"interrupted before link", func(be *Backend) {
			be.beforeLink = func(tmp, final string) error { return errBoom }
		}, errBoom},
	} {
		t.Run(c.name, func(t *testing.T) {
			be := newBackend(t)
			c.setup(be)
			err := be.Save(ctx, h, bytes.Repeat([]byte("data"), 1000))
			if !errors.Is(err, c.want) {
				t.Errorf("Save: err = %v, want %v", err, c.want)
			}
			if tmp := tmpFiles(t, be.Location()); len(tmp) != 0 {
				t.Errorf("temporary files left: %v", tmp)
			}
			if _, err := os.Lstat(be.path(h)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("final name exists after a failed Save: %v", err)
			}
			// The name is still free.
			be.write, be.link, be.beforeLink = nil, nil, nil
			if err := be.Save(ctx, h, []byte("ok")); err != nil {
				t.Errorf("Save after failure: %v", err)
			}
		})
	}
}

// TestCrashBeforeLink freezes a Save at the moment just before the link, the
// state a crash there leaves on disk: the data is complete in a temporary
// file, and nothing, partial or whole, is visible under the final name.
func TestCrashBeforeLink(t *testing.T) {
	ctx := context.Background()
	be := newBackend(t)
	h := backend.Handle{Type: backend.IndexFile, Name: "idx"}
	data := bytes.Repeat([]byte{0xa5}, 100000)
	checked := false
	be.beforeLink = func(tmp, final string) error {
		checked = true
		if _, err := os.Lstat(final); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("final name visible before the link: %v", err)
		}
		if got, err := os.ReadFile(tmp); err != nil || !bytes.Equal(got, data) {
			t.Errorf("temporary file incomplete before the link: %d bytes, %v", len(got), err)
		}
		if _, err := be.Stat(ctx, h); !errors.Is(err, backend.ErrNotExist) {
			t.Errorf("Stat before the link: %v, want ErrNotExist", err)
		}
		if err := be.List(ctx, h.Type, func(fi backend.FileInfo) error {
			t.Errorf("List reports %q before the link", fi.Name)
			return nil
		}); err != nil {
			t.Error(err)
		}
		return nil
	}
	if err := be.Save(ctx, h, data); err != nil {
		t.Fatal(err)
	}
	if !checked {
		t.Fatal("beforeLink hook not called")
	}

	// A temporary file a crash left behind stays invisible and in nobody's way.
	stale := filepath.Join(be.Location(), "index", tmpPref+"123456")
	if err := os.WriteFile(stale, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := be.List(ctx, backend.IndexFile, func(fi backend.FileInfo) error {
		n++
		if fi.Name != "idx" {
			t.Errorf("List reports %q", fi.Name)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("List reported %d files, want 1", n)
	}
}

func TestCancelBeforeLink(t *testing.T) {
	be := newBackend(t)
	ctx, cancel := context.WithCancel(context.Background())
	be.beforeLink = func(string, string) error { t.Error("link reached after cancel"); return nil }
	be.write = func(f *os.File, p []byte) (int, error) {
		cancel() // cancelled while the data was being written
		return f.Write(p)
	}
	h := backend.Handle{Type: backend.KeyFile, Name: "k"}
	if err := be.Save(ctx, h, []byte("key")); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if tmp := tmpFiles(t, be.Location()); len(tmp) != 0 {
		t.Errorf("temporary files left: %v", tmp)
	}
}

func TestPermissionDenied(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores directory permissions")
	}
	ctx := context.Background()
	be := newBackend(t)
	keys := filepath.Join(be.Location(), "keys")
	if err := os.Chmod(keys, 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(keys, dirMode) })
	err := be.Save(ctx, backend.Handle{Type: backend.KeyFile, Name: "k"}, []byte("x"))
	if !errors.Is(err, backend.ErrPermission) {
		t.Errorf("Save into read-only dir: err = %v, want ErrPermission", err)
	}
}

func TestInvalidHandleIsClear(t *testing.T) {
	be := newBackend(t)
	err := be.Save(context.Background(), backend.Handle{Type: backend.PackFile, Name: "a/b"}, nil)
	if !errors.Is(err, ErrInvalidHandle) {
		t.Errorf("err = %v, want ErrInvalidHandle", err)
	}
}
