package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"bunker/internal/backend"
)

const (
	dirMode  = 0o700
	fileMode = 0o400 // stored files are read-only once written
	tmpPref  = ".tmp-"
	cfgName  = "config"
	dataDir  = "data"
	listStep = 1000 // directory entries read per batch in List
)

// ErrInvalidHandle is returned (wrapped) for a handle that cannot name a file.
var ErrInvalidHandle = backend.ErrInvalidHandle

var typeDirs = map[backend.FileType]string{
	backend.KeyFile:      "keys",
	backend.PackFile:     dataDir,
	backend.IndexFile:    "index",
	backend.SnapshotFile: "snapshots",
	backend.LockFile:     "locks",
	backend.SettingsFile: "settings",
}

// Backend is a repository in a local directory. It is safe for concurrent use.
type Backend struct {
	dir string

	// Test hooks; nil in production.
	write      func(f *os.File, p []byte) (int, error) // replaces f.Write
	beforeLink func(tmp, final string) error           // runs after fsync, before the link
	link       func(oldpath, newpath string) error     // replaces linkNoReplace
}

var _ backend.Backend = (*Backend)(nil)

// Create makes the directory layout of a new repository in dir, which may
// already exist. It fails with an error wrapping backend.ErrExists if dir
// already holds a config file. The config itself is written by the caller
// with Save.
func Create(ctx context.Context, dir string) (*Backend, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	dir = filepath.Clean(dir)
	if _, err := os.Lstat(filepath.Join(dir, cfgName)); err == nil {
		return nil, fmt.Errorf("create %s: %w", dir, backend.ErrExists)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("create %s: %w", dir, mapErr(err))
	}
	dirs := []string{dir}
	for _, d := range typeDirs {
		dirs = append(dirs, filepath.Join(dir, d))
	}
	for i := 0; i < 256; i++ {
		dirs = append(dirs, filepath.Join(dir, dataDir, fmt.Sprintf("%02x", i)))
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, dirMode); err != nil {
			return nil, fmt.Errorf("create %s: %w", dir, mapErr(err))
		}
	}
	// Make the new entries durable: the data subdirectories in data/, the
	// type directories in the root.
	for _, d := range []string{filepath.Join(dir, dataDir), dir} {
		if err := syncDir(d); err != nil {
			return nil, fmt.Errorf("create %s: %w", dir, mapErr(err))
		}
	}
	// And dir itself in case it was new. Best effort: the parent may not be
	// ours to read.
	_ = syncDir(filepath.Dir(dir))
	return &Backend{dir: dir}, nil
}

// Open opens the repository in dir. It fails with an error wrapping
// backend.ErrNotExist if dir or its config file is missing.
func Open(ctx context.Context, dir string) (*Backend, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	dir = filepath.Clean(dir)
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, mapErr(err))
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("open %s: not a directory", dir)
	}
	fi, err = os.Stat(filepath.Join(dir, cfgName))
	if err != nil {
		return nil, fmt.Errorf("open %s: no repository config: %w", dir, mapErr(err))
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("open %s: config is not a regular file", dir)
	}
	// Repositories made before a file type existed lack its directory.
	// Making it is harmless; on a read-only repository it fails, and so
	// would any write.
	for _, d := range typeDirs {
		_ = os.Mkdir(filepath.Join(dir, d), dirMode)
	}
	return &Backend{dir: dir}, nil
}

// OpenLayout opens a directory made by Create whose config may not be
// stored yet (the repository server stores it in a later request).
func OpenLayout(ctx context.Context, dir string) (*Backend, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	dir = filepath.Clean(dir)
	fi, err := os.Stat(filepath.Join(dir, dataDir))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, mapErr(err))
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("open %s: not a repository directory", dir)
	}
	for _, d := range typeDirs {
		_ = os.Mkdir(filepath.Join(dir, d), dirMode)
	}
	return &Backend{dir: dir}, nil
}

// Location returns the repository directory.
func (b *Backend) Location() string { return b.dir }

// Properties reports the backend's capabilities.
func (b *Backend) Properties() backend.Properties {
	return backend.Properties{Connections: 4}
}

// Close does nothing: the backend holds no open files between calls.
func (b *Backend) Close() error { return nil }

// checkHandle applies the rules every backend shares.
func checkHandle(h backend.Handle) error { return backend.CheckHandle(h) }

// dirOf is the directory that holds h.
func (b *Backend) dirOf(h backend.Handle) string {
	switch h.Type {
	case backend.ConfigFile:
		return b.dir
	case backend.PackFile:
		return filepath.Join(b.dir, dataDir, h.Name[:2])
	}
	return filepath.Join(b.dir, typeDirs[h.Type])
}

// path is where h is stored; h must be valid.
func (b *Backend) path(h backend.Handle) string {
	if h.Type == backend.ConfigFile {
		return filepath.Join(b.dir, cfgName)
	}
	return filepath.Join(b.dirOf(h), h.Name)
}

// Save stores data under h; see the package documentation for how.
func (b *Backend) Save(ctx context.Context, h backend.Handle, data []byte) error {
	if err := checkHandle(h); err != nil {
		return fmt.Errorf("save %v: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("save %v: %w", h, err)
	}
	if err := b.save(ctx, h, data); err != nil {
		return fmt.Errorf("save %v: %w", h, err)
	}
	return nil
}

func (b *Backend) save(ctx context.Context, h backend.Handle, data []byte) (err error) {
	dir := b.dirOf(h)
	f, err := os.CreateTemp(dir, tmpPref+"*")
	if errors.Is(err, fs.ErrNotExist) && h.Type == backend.PackFile {
		// A pack subdirectory outside 00..ff, or removed by hand.
		if err = b.mkdirSynced(dir); err != nil {
			return mapErr(err)
		}
		f, err = os.CreateTemp(dir, tmpPref+"*")
	}
	if err != nil {
		return mapErr(err)
	}
	tmp := f.Name()
	tmpLive := true
	defer func() {
		if f != nil {
			_ = f.Close()
		}
		if tmpLive {
			_ = os.Remove(tmp)
		}
	}()

	write := b.write
	if write == nil {
		write = (*os.File).Write
	}
	if _, err := write(f, data); err != nil {
		return mapErr(err)
	}
	tmpLive = false
	ff := f
	f = nil
	return b.commit(ctx, h, ff)
}

// commit makes the complete temporary file f the file h: it syncs and closes
// f, links it under h's final name without replacing anything, and syncs the
// directory. On any failure the temporary file is removed.
func (b *Backend) commit(ctx context.Context, h backend.Handle, f *os.File) (err error) {
	dir := b.dirOf(h)
	final := b.path(h)
	tmp := f.Name()
	tmpLive := true
	defer func() {
		if f != nil {
			_ = f.Close()
		}
		if tmpLive {
			_ = os.Remove(tmp)
		}
	}()
	if err := f.Chmod(fileMode); err != nil {
		return mapErr(err)
	}
	if err := f.Sync(); err != nil {
		return mapErr(err)
	}
	err = f.Close()
	f = nil
	if err != nil {
		return mapErr(err)
	}
	// Last chance to abandon the Save before the file becomes visible.
	if err := ctx.Err(); err != nil {
		return err
	}
	if b.beforeLink != nil {
		if err := b.beforeLink(tmp, final); err != nil {
			return err
		}
	}

	link := b.link
	if link == nil {
		link = linkNoReplace
	}
	err = link(tmp, final)
	if errors.Is(err, fs.ErrNotExist) && h.Type == backend.PackFile {
		// The pack subdirectory is missing (removed by hand, or a temporary
		// file made in data/ itself): make it and try once more.
		if err = b.mkdirSynced(dir); err == nil {
			err = link(tmp, final)
		}
	}
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return backend.ErrExists
		}
		return mapErr(err)
	}
	tmpLive = false

	if err := syncDir(dir); err != nil {
		// The file is complete but its name may not survive a crash. Take it
		// back so that a retry starts clean instead of meeting ErrExists.
		_ = os.Remove(final)
		return mapErr(err)
	}
	return nil
}

// TempFile creates a temporary file for a pack whose name is not known yet,
// in the repository's own data directory (so that committing it is a rename).
// List never shows it. Commit it with SaveTempFile or drop it with
// DiscardTempFile.
func (b *Backend) TempFile() (*os.File, error) {
	f, err := os.CreateTemp(filepath.Join(b.dir, dataDir), tmpPref+"*")
	if err != nil {
		return nil, mapErr(err)
	}
	return f, nil
}

// SaveTempFile stores the complete temporary file f (from TempFile) as h,
// with the guarantees of Save; f is closed, and its temporary name is gone
// afterwards whatever the outcome.
func (b *Backend) SaveTempFile(ctx context.Context, h backend.Handle, f *os.File) error {
	if err := checkHandle(h); err != nil {
		b.DiscardTempFile(f)
		return fmt.Errorf("save %v: %w", h, err)
	}
	if err := b.commit(ctx, h, f); err != nil {
		return fmt.Errorf("save %v: %w", h, err)
	}
	return nil
}

// DiscardTempFile closes and removes a temporary file from TempFile.
func (b *Backend) DiscardTempFile(f *os.File) {
	_ = f.Close()
	_ = os.Remove(f.Name())
}

// mkdirSynced creates dir (a pack subdirectory) and makes its entry durable.
func (b *Backend) mkdirSynced(dir string) error {
	if err := os.Mkdir(dir, dirMode); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(filepath.Dir(dir))
}

// Load calls fn with a reader of length bytes at offset of h.
func (b *Backend) Load(ctx context.Context, h backend.Handle, length int, offset int64, fn func(rd io.Reader) error) error {
	if err := checkHandle(h); err != nil {
		return fmt.Errorf("load %v: %w", h, err)
	}
	if length < 0 || offset < 0 {
		return fmt.Errorf("load %v: negative length %d or offset %d", h, length, offset)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("load %v: %w", h, err)
	}
	f, err := openRaw(b.path(h))
	if err != nil {
		return fmt.Errorf("load %v: %w", h, mapErr(err))
	}
	defer f.close()
	size, err := f.size()
	if err != nil {
		return fmt.Errorf("load %v: %w", h, mapErr(err))
	}
	n := int64(length)
	if length == 0 {
		n = size - offset
	}
	if offset > size || n > size-offset {
		return fmt.Errorf("load %v: %d bytes at offset %d of a %d-byte file: %w",
			h, n, offset, size, io.ErrUnexpectedEOF)
	}
	// fn's error is returned as is: it is the caller's own.
	return fn(io.NewSectionReader(f, offset, n))
}

// Stat returns the size of h.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	if err := checkHandle(h); err != nil {
		return backend.FileInfo{}, fmt.Errorf("stat %v: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return backend.FileInfo{}, fmt.Errorf("stat %v: %w", h, err)
	}
	fi, err := os.Stat(b.path(h))
	if err != nil {
		return backend.FileInfo{}, fmt.Errorf("stat %v: %w", h, mapErr(err))
	}
	return backend.FileInfo{Name: h.Name, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Remove deletes h. The read-only mode of stored files does not matter:
// unlinking needs only write permission on the directory.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	if err := checkHandle(h); err != nil {
		return fmt.Errorf("remove %v: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("remove %v: %w", h, err)
	}
	if err := os.Remove(b.path(h)); err != nil {
		return fmt.Errorf("remove %v: %w", h, mapErr(err))
	}
	return nil
}

// List calls fn for each stored file of type t. Temporary files and
// anything else whose name starts with a dot, and non-regular files, are
// skipped.
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %v: %w", t, err)
	}
	// fn's errors are the caller's own and are returned as is; they are
	// marked on the way up to tell them from the backend's.
	call := func(fi backend.FileInfo) error {
		if err := fn(fi); err != nil {
			return callerError{err}
		}
		return nil
	}
	var err error
	switch t {
	case backend.ConfigFile:
		var fi os.FileInfo
		fi, err = os.Stat(filepath.Join(b.dir, cfgName))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil
		case err != nil:
			err = mapErr(err)
		case fi.Mode().IsRegular():
			err = call(backend.FileInfo{Name: "", Size: fi.Size(), ModTime: fi.ModTime()})
		}
	case backend.PackFile:
		err = b.listDir(ctx, filepath.Join(b.dir, dataDir), func(sub os.DirEntry) error {
			if !sub.IsDir() || strings.HasPrefix(sub.Name(), ".") {
				return nil
			}
			return b.listFiles(ctx, filepath.Join(b.dir, dataDir, sub.Name()), call)
		})
	default:
		d, ok := typeDirs[t]
		if !ok {
			return fmt.Errorf("list %v: %w: unknown file type %d", t, ErrInvalidHandle, int(t))
		}
		err = b.listFiles(ctx, filepath.Join(b.dir, d), call)
	}
	var ce callerError
	if errors.As(err, &ce) {
		return ce.err
	}
	if err != nil {
		return fmt.Errorf("list %v: %w", t, err)
	}
	return nil
}

// callerError carries an error returned by List's callback.
type callerError struct{ err error }

func (e callerError) Error() string { return e.err.Error() }

// listFiles calls fn for each regular, non-hidden file in dir.
func (b *Backend) listFiles(ctx context.Context, dir string, fn func(backend.FileInfo) error) error {
	return b.listDir(ctx, dir, func(e os.DirEntry) error {
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
			return nil
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed since the directory was read
		}
		if err != nil {
			return mapErr(err)
		}
		return fn(backend.FileInfo{Name: e.Name(), Size: fi.Size(), ModTime: fi.ModTime()})
	})
}

// listDir calls fn for each entry of dir, reading the directory in batches so
// that huge directories are not held in memory at once. A missing directory
// is empty.
func (b *Backend) listDir(ctx context.Context, dir string, fn func(os.DirEntry) error) error {
	d, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return mapErr(err)
	}
	defer func() { _ = d.Close() }()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		entries, err := d.ReadDir(listStep)
		for _, e := range entries {
			if err := fn(e); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return mapErr(err)
		}
	}
}

// syncDir fsyncs a directory so that the entries in it are durable. Some file
// systems cannot sync directories at all; there is nothing better to do there.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOTSUP) {
		err = nil
	}
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// linkFallback is the link(2) + unlink(2) way of renaming without replacing:
// link fails with EEXIST if newpath exists.
func linkFallback(oldpath, newpath string) error {
	if err := os.Link(oldpath, newpath); err != nil {
		return err
	}
	// The data is safely under newpath. A leftover temporary name is only
	// clutter (List skips it), so its removal error is not the caller's.
	_ = os.Remove(oldpath)
	return nil
}

// mapErr wraps an operating-system error with the matching backend sentinel,
// keeping the original for the message.
func mapErr(err error) error {
	var sentinel error
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		sentinel = backend.ErrNoSpace
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS):
		sentinel = backend.ErrPermission
	case errors.Is(err, fs.ErrNotExist):
		sentinel = backend.ErrNotExist
	case errors.Is(err, fs.ErrExist):
		sentinel = backend.ErrExists
	default:
		return err
	}
	return fmt.Errorf("%w: %w", sentinel, err)
}

// rawFile reads a stored file through its bare descriptor. An os.File would
// register it with the runtime's poller (fcntl and a failing epoll_ctl on
// every open), a third of the system calls of loading one small tree blob,
// and an unchanged re-backup loads thousands.
type rawFile struct {
	fd   int
	path string
}

func openRaw(path string) (rawFile, error) {
	for {
		fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return rawFile{fd: -1}, &os.PathError{Op: "open", Path: path, Err: err}
		}
		return rawFile{fd: fd, path: path}, nil
	}
}

func (f rawFile) size() (int64, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(f.fd, &st); err != nil {
		return 0, &os.PathError{Op: "stat", Path: f.path, Err: err}
	}
	return st.Size, nil
}

// ReadAt implements io.ReaderAt.
func (f rawFile) ReadAt(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n, err := syscall.Pread(f.fd, p[done:], off+int64(done))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return done, &os.PathError{Op: "read", Path: f.path, Err: err}
		}
		if n == 0 {
			return done, io.EOF
		}
		done += n
	}
	return done, nil
}

func (f rawFile) close() { _ = syscall.Close(f.fd) }
