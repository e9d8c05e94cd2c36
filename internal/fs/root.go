package fs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"bunker/internal/snapshot"
)

// RestoreOptions controls how SetMetadata applies a node's metadata.
type RestoreOptions struct {
	// Owner makes SetMetadata change the owner even when not running as root
	// (which normally fails unless the IDs are the caller's own). As root the
	// owner is always restored.
	Owner bool
	// NoXattrs disables restoring extended attributes.
	NoXattrs bool
}

// ErrSocket is returned by Mknod for sockets, which cannot be restored (a
// socket only exists while a process listens on it); nothing is created.
var ErrSocket = errors.New("sockets cannot be restored, skipped")

// ErrOutside is wrapped by the errors for paths that are not plain relative
// paths below the root, or that pass through a symlink or a non-directory.
var ErrOutside = errors.New("path does not stay inside the restore root")

// Warning wraps an error that did not stop an operation, for example an
// extended attribute the target file system does not support.
type Warning struct{ Err error }

func (w *Warning) Error() string { return "warning: " + w.Err.Error() }
func (w *Warning) Unwrap() error { return w.Err }

// IsWarning reports whether err is non-nil and consists only of *Warning
// errors (possibly joined with errors.Join).
func IsWarning(err error) bool {
	if err == nil {
		return false
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			if !IsWarning(e) {
				return false
			}
		}
		return true
	}
	var w *Warning
	return errors.As(err, &w)
}

// Root is a restore target directory. All its methods take slash-separated
// paths relative to the root and guarantee that nothing outside the root is
// created, modified or removed; see the package documentation. A Root is safe
// for concurrent use; operations on different paths do not interfere.
type Root struct {
	dir  string
	root *os.Root

	mu     sync.RWMutex // guards fd against Close
	fd     int          // directory fd of the root, -1 after Close
	closed bool

	// dirs caches descriptors of directories below the root, opened once
	// with the same no-symlink resolution: a restore creates thousands of
	// entries per directory. A cached descriptor keeps naming the directory
	// that was checked, even if its path is changed meanwhile.
	dirMu   sync.Mutex
	dirs    map[string]int
	maxDirs int

	// opened holds the directories Mkdir found already there, owned by
	// this user (not root) without write and search permission for it, and
	// opened up to u+rwx: their modes before, until SetMetadata sets one.
	openedMu sync.Mutex
	opened   map[string]uint32
}

// maxCachedDirs bounds the cached directory descriptors; so does a quarter
// of the process's limit on open files, which files being written and
// whatever else the process does share.
const maxCachedDirs = 4096

// dirCacheSize is how many directory descriptors a Root caches.
func dirCacheSize() int {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 64
	}
	return int(max(16, min(maxCachedDirs, lim.Cur/4)))
}

func (r *Root) cachedDir(key string) (int, bool) {
	r.dirMu.Lock()
	defer r.dirMu.Unlock()
	fd, ok := r.dirs[key]
	return fd, ok
}

// cacheDir keeps fd for key unless the cache is full or has one already; it
// reports whether it took ownership of fd.
func (r *Root) cacheDir(key string, fd int) bool {
	r.dirMu.Lock()
	defer r.dirMu.Unlock()
	if _, ok := r.dirs[key]; ok || len(r.dirs) >= r.maxDirs {
		return false
	}
	if r.dirs == nil {
		r.dirs = make(map[string]int)
	}
	r.dirs[key] = fd
	return true
}

// OpenRoot opens dir as a restore target, creating it (mode 0700, with
// parents) if it does not exist.
func OpenRoot(dir string) (*Root, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	f, err := root.Open(".")
	if err != nil {
		root.Close()
		return nil, err
	}
	var fd int
	var dupErr error
	rc, err := f.SyscallConn()
	if err == nil {
		err = rc.Control(func(raw uintptr) {
			fd, dupErr = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0)
		})
	}
	f.Close()
	if err == nil {
		err = dupErr
	}
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("open root %s: %w", dir, err)
	}
	return &Root{dir: dir, root: root, fd: fd, maxDirs: dirCacheSize()}, nil
}

// Name returns the directory the root was opened with.
func (r *Root) Name() string { return r.dir }

// Close releases the root. Operations after Close fail.
func (r *Root) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return os.ErrClosed
	}
	r.closed = true
	r.dirMu.Lock()
	for _, fd := range r.dirs {
		unix.Close(fd)
	}
	r.dirs = nil
	r.dirMu.Unlock()
	err := unix.Close(r.fd)
	r.fd = -1
	if err2 := r.root.Close(); err == nil {
		err = err2
	}
	return err
}

// splitRel checks rel and splits it into its directory components and its
// final name. rel "." denotes the root itself (isRoot).
func splitRel(rel string) (dirs []string, name string, isRoot bool, err error) {
	if rel == "." {
		return nil, "", true, nil
	}
	if rel == "" {
		return nil, "", false, fmt.Errorf("%w: empty path", ErrOutside)
	}
	if rel[0] == '/' {
		return nil, "", false, fmt.Errorf("%w: %q is absolute", ErrOutside, rel)
	}
	parts := strings.Split(rel, "/")
	for _, p := range parts {
		if err := ValidName(p); err != nil {
			return nil, "", false, fmt.Errorf("%w: %q: %w", ErrOutside, rel, err)
		}
	}
	return parts[:len(parts)-1], parts[len(parts)-1], false, nil
}

// noOpenat2 is set when the kernel lacks openat2.
var noOpenat2 atomic.Bool

// parent is an open parent directory of an entry.
type parent struct {
	fd    int
	owned bool // fd must be closed
	name  string
}

func (p *parent) close() {
	if p.owned {
		unix.Close(p.fd)
	}
}

// openParent walks the directory components of rel from the root without
// following any symlink and returns the parent's fd and the final name. The
// caller must hold r.mu (read) until it has closed the parent.
func (r *Root) openParent(rel string) (*parent, error) {
	if r.closed {
		return nil, os.ErrClosed
	}
	dirs, name, isRoot, err := splitRel(rel)
	if err != nil {
		return nil, err
	}
	if isRoot {
		return nil, fmt.Errorf("%q: operation not possible on the root itself", rel)
	}
	p := &parent{fd: r.fd, name: name}
	if len(dirs) == 0 {
		return p, nil
	}
	key := strings.Join(dirs, "/")
	if fd, ok := r.cachedDir(key); ok {
		p.fd = fd
		return p, nil
	}
	p, err = r.resolveParent(p, key, dirs, rel)
	if err == nil && p.owned && r.cacheDir(key, p.fd) {
		p.owned = false // the cache owns it now
	}
	return p, err
}

// resolveParent opens the directory dirs (joined: key) below the root.
func (r *Root) resolveParent(p *parent, key string, dirs []string, rel string) (*parent, error) {
	// One openat2 resolves the whole directory path inside the root and
	// refuses symlinks, magic links and escapes (Linux 5.6+); older kernels
	// take the component-by-component walk below.
	if !noOpenat2.Load() {
		fd, err := unix.Openat2(r.fd, key, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		switch err {
		case nil:
			p.fd, p.owned = fd, true
			return p, nil
		case unix.ENOSYS, unix.EPERM:
			noOpenat2.Store(true) // not available (or filtered by seccomp)
		case unix.EAGAIN:
			// A concurrent rename elsewhere; fall back to the walk.
		default:
			// Let the walk report which component is wrong.
		}
	}
	for i, d := range dirs {
		fd, err := unix.Openat(p.fd, d, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			p.close()
			sub := strings.Join(dirs[:i+1], "/")
			if err == unix.ELOOP || err == unix.ENOTDIR {
				return nil, fmt.Errorf("%s: %w: %q is not a directory (symlinks are never followed)", rel, ErrOutside, sub)
			}
			return nil, &os.PathError{Op: "openat", Path: sub, Err: err}
		}
		p.close()
		p.fd, p.owned = fd, true
	}
	return p, nil
}

func (r *Root) pathErr(op, rel string, err error) error {
	return &os.PathError{Op: op, Path: filepath.Join(r.dir, rel), Err: err}
}

// lstatAt returns the stat of name in dirfd without following a symlink.
func lstatAt(dirfd int, name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return st, err
}

// removeNonDir unlinks name in p if it exists and is not a directory; an
// existing directory is an error. unlinkat never follows a symlink and fails
// with EISDIR should the entry have been replaced by a directory meanwhile.
func (r *Root) removeNonDir(p *parent, rel string) error {
	st, err := lstatAt(p.fd, p.name)
	if err == unix.ENOENT {
		return nil
	}
	if err != nil {
		return r.pathErr("lstat", rel, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return r.pathErr("replace", rel, unix.EISDIR)
	}
	if err := unix.Unlinkat(p.fd, p.name, 0); err != nil && err != unix.ENOENT {
		return r.pathErr("unlink", rel, err)
	}
	return nil
}

// Mkdir creates the directory rel with mode 0700. An existing directory is
// kept; any other existing entry (including a symlink) is replaced. An
// existing directory this user (not root) owns but may not write in or
// search, such as one a previous restore left read-only, is opened up to
// u+rwx until SetMetadata sets its mode, or RestoreOpenedModes its mode
// before.
func (r *Root) Mkdir(rel string) error {
	if rel == "." {
		return nil
	}
	return r.inParent(rel, func(p *parent) error {
		for attempt := 0; ; attempt++ {
			err := unix.Mkdirat(p.fd, p.name, 0o700)
			if err == nil {
				return nil
			}
			if err != unix.EEXIST || attempt > 0 {
				return r.pathErr("mkdir", rel, err)
			}
			st, err := lstatAt(p.fd, p.name)
			if err != nil {
				return r.pathErr("lstat", rel, err)
			}
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				return r.openUp(p, rel, st)
			}
			if err := unix.Unlinkat(p.fd, p.name, 0); err != nil && err != unix.ENOENT {
				return r.pathErr("unlink", rel, err)
			}
		}
	})
}

// openUp gives an existing directory u+rwx if this user, not root, owns it
// and lacks any of those, remembering its mode (see Mkdir).
func (r *Root) openUp(p *parent, rel string, st unix.Stat_t) error {
	euid := os.Geteuid()
	if euid == 0 || st.Uid != uint32(euid) || st.Mode&0o700 == 0o700 {
		return nil
	}
	r.openedMu.Lock()
	defer r.openedMu.Unlock()
	if _, ok := r.opened[rel]; ok {
		return nil
	}
	if err := chmodAt(p.fd, p.name, st.Mode&0o7777|0o700); err != nil {
		return r.pathErr("chmod", rel, err)
	}
	if r.opened == nil {
		r.opened = make(map[string]uint32)
	}
	r.opened[rel] = st.Mode & 0o7777
	return nil
}

// RestoreOpenedModes gives the directories Mkdir opened up, and whose mode
// SetMetadata has not set since, their modes back, deepest first; it
// returns the errors by path.
func (r *Root) RestoreOpenedModes() map[string]error {
	r.openedMu.Lock()
	rels := make([]string, 0, len(r.opened))
	for rel := range r.opened {
		rels = append(rels, rel)
	}
	r.openedMu.Unlock()
	// Longer paths first: a child before its parent, whose mode may not
	// let this user reach the child.
	sort.Slice(rels, func(i, j int) bool { return len(rels[i]) > len(rels[j]) })
	var errs map[string]error
	for _, rel := range rels {
		r.openedMu.Lock()
		mode := r.opened[rel]
		delete(r.opened, rel)
		r.openedMu.Unlock()
		err := r.inParent(rel, func(p *parent) error {
			if err := chmodAt(p.fd, p.name, mode); err != nil {
				return r.pathErr("chmod", rel, err)
			}
			return nil
		})
		if err != nil {
			if errs == nil {
				errs = make(map[string]error)
			}
			errs[rel] = err
		}
	}
	return errs
}

// CreateFile creates a new, empty regular file rel with mode 0600 and opens
// it for reading and writing (restore --verify reads it back). An existing
// non-directory entry is removed first (a symlink is removed, never
// followed); an existing directory is an error.
func (r *Root) CreateFile(rel string) (*File, error) {
	var f *File
	err := r.inParent(rel, func(p *parent) error {
		const flags = unix.O_RDWR | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC
		fd, err := unix.Openat(p.fd, p.name, flags, 0o600)
		if err == unix.EEXIST {
			// Something is there already: remove it (never following a symlink) and retry.
			if err := r.removeNonDir(p, rel); err != nil {
				return err
			}
			fd, err = unix.Openat(p.fd, p.name, flags, 0o600)
		}
		if err != nil {
			return r.pathErr("create", rel, err)
		}
		f = &File{fd: fd, name: filepath.Join(r.dir, rel)}
		return nil
	})
	return f, err
}

// Symlink creates the symlink rel pointing to target, which is stored
// verbatim and never followed. An existing non-directory entry is replaced.
func (r *Root) Symlink(rel, target string) error {
	if target == "" || strings.IndexByte(target, 0) >= 0 {
		return r.pathErr("symlink", rel, fmt.Errorf("invalid link target %q", target))
	}
	return r.inParent(rel, func(p *parent) error {
		if err := r.removeNonDir(p, rel); err != nil {
			return err
		}
		if err := unix.Symlinkat(target, p.fd, p.name); err != nil {
			return r.pathErr("symlink", rel, err)
		}
		return nil
	})
}

// Mknod creates a fifo, character or block device at rel with the permission
// bits of mode (the final mode is set by SetMetadata). Devices require root.
// For sockets nothing is created and an error wrapping ErrSocket is returned.
// An existing non-directory entry is replaced.
func (r *Root) Mknod(rel string, typ snapshot.NodeType, mode uint32, rdev uint64) error {
	var ft uint32
	switch typ {
	case snapshot.TypeFifo:
		ft = unix.S_IFIFO
	case snapshot.TypeCharDev:
		ft = unix.S_IFCHR
	case snapshot.TypeDev:
		ft = unix.S_IFBLK
	case snapshot.TypeSocket:
		return r.pathErr("mknod", rel, ErrSocket)
	default:
		return r.pathErr("mknod", rel, fmt.Errorf("cannot create a %v with mknod", typ))
	}
	if ft != unix.S_IFIFO && os.Geteuid() != 0 {
		return r.pathErr("mknod", rel, fmt.Errorf("creating a %v requires root: %w", typ, os.ErrPermission))
	}
	return r.inParent(rel, func(p *parent) error {
		if err := r.removeNonDir(p, rel); err != nil {
			return err
		}
		if ft == unix.S_IFIFO {
			rdev = 0
		}
		if err := unix.Mknodat(p.fd, p.name, ft|(mode&0o777), int(rdev)); err != nil {
			return r.pathErr("mknod", rel, err)
		}
		return nil
	})
}

// Link creates newRel as a hard link to the existing entry oldRel (a symlink
// is linked itself, not its target). An existing non-directory entry at newRel
// is replaced, unless it already is the same inode.
func (r *Root) Link(oldRel, newRel string) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	op, err := r.openParent(oldRel)
	if err != nil {
		return err
	}
	defer op.close()
	np, err := r.openParent(newRel)
	if err != nil {
		return err
	}
	defer np.close()
	ost, err := lstatAt(op.fd, op.name)
	if err != nil {
		return r.pathErr("link", oldRel, err)
	}
	if nst, err := lstatAt(np.fd, np.name); err == nil && nst.Dev == ost.Dev && nst.Ino == ost.Ino {
		return nil
	}
	if err := r.removeNonDir(np, newRel); err != nil {
		return err
	}
	if err := unix.Linkat(op.fd, op.name, np.fd, np.name, 0); err != nil {
		return &os.LinkError{Op: "link", Old: filepath.Join(r.dir, oldRel), New: filepath.Join(r.dir, newRel), Err: err}
	}
	return nil
}

// SetMetadata applies n's metadata to the entry at rel ("." is the root
// itself): the owner (as root, or with opts.Owner), the extended attributes,
// the mode (not for symlinks) and finally the access and modification times.
// The owner comes first because chown clears security.capability and the
// setuid bits; the attributes come before the mode because setting user.*
// needs write permission, which a read-only mode takes from a restore not
// run as root. A symlink at rel is never followed. n.Type must match the
// entry.
//
// Extended attributes the file system does not support are skipped; the
// returned error then satisfies IsWarning. For symlinks user.* attributes are
// skipped (Linux does not allow them there).
func (r *Root) SetMetadata(rel string, n *snapshot.Node, opts RestoreOptions) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return os.ErrClosed
	}
	var (
		dirfd int
		name  string
	)
	if rel == "." {
		dirfd, name = r.fd, "."
	} else {
		p, err := r.openParent(rel)
		if err != nil {
			return err
		}
		defer p.close()
		dirfd, name = p.fd, p.name
	}

	st, err := lstatAt(dirfd, name)
	if err != nil {
		return r.pathErr("lstat", rel, err)
	}
	typ, err := nodeType(st.Mode)
	if err != nil {
		return r.pathErr("setmeta", rel, err)
	}
	if typ != n.Type {
		return r.pathErr("setmeta", rel, fmt.Errorf("entry is a %v, node is a %v", typ, n.Type))
	}
	isLink := typ == snapshot.TypeSymlink

	if opts.Owner || os.Geteuid() == 0 {
		if err := unix.Fchownat(dirfd, name, int(n.UID), int(n.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return r.pathErr("lchown", rel, err)
		}
	}
	var warnings []error
	if !opts.NoXattrs && len(n.Xattrs) > 0 {
		path := "/proc/self/fd/" + strconv.Itoa(dirfd) + "/" + name
		for _, x := range n.Xattrs {
			if isLink && strings.HasPrefix(x.Name, "user.") {
				continue
			}
			err := unix.Lsetxattr(path, x.Name, x.Value, 0)
			if err == nil {
				continue
			}
			if isNotSupported(err) {
				warnings = append(warnings, &Warning{Err: r.pathErr("setxattr "+x.Name, rel, err)})
				continue
			}
			return r.pathErr("setxattr "+x.Name, rel, err)
		}
	}
	if !isLink {
		if err := chmodAt(dirfd, name, n.Mode&0o7777); err != nil {
			return r.pathErr("chmod", rel, err)
		}
		if typ == snapshot.TypeDir {
			r.openedMu.Lock()
			delete(r.opened, rel)
			r.openedMu.Unlock()
		}
	}
	ts := []unix.Timespec{timespec(n.AccessTime), timespec(n.ModTime)}
	if err := unix.UtimesNanoAt(dirfd, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return r.pathErr("utimensat", rel, err)
	}
	return errors.Join(warnings...)
}

func timespec(t time.Time) unix.Timespec {
	if t.IsZero() {
		return unix.Timespec{Nsec: unix.UTIME_OMIT}
	}
	// Not through UnixNano, which overflows outside the years 1678 to 2262.
	return unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
}

// chmodAt changes the mode of name in dirfd without following a symlink. It
// uses fchmodat2(AT_SYMLINK_NOFOLLOW) and, on kernels without it, a chmod
// through an O_PATH descriptor of the entry (after checking that the
// descriptor does not refer to a symlink).
func chmodAt(dirfd int, name string, mode uint32) error {
	if name == "." {
		return unix.Fchmodat(dirfd, name, mode, 0) // "." cannot be a symlink
	}
	err := unix.Fchmodat(dirfd, name, mode, unix.AT_SYMLINK_NOFOLLOW)
	if err != unix.EOPNOTSUPP && err != unix.ENOSYS {
		return err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return unix.ELOOP
	}
	return unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), mode)
}
