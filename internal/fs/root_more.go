package fs

import (
	"errors"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"bunker/internal/snapshot"
)

// Remove deletes the non-directory entry at rel (a symlink is removed, never
// followed). A missing entry is not an error.
func (r *Root) Remove(rel string) error {
	return r.inParent(rel, func(p *parent) error {
		return r.removeNonDir(p, rel)
	})
}

// SetFileMetadata applies n's metadata to a regular file this Root created
// and that is still open for writing, through its descriptor: no path is
// resolved again. Order as in SetMetadata: owner, xattrs, mode, times last.
func (r *Root) SetFileMetadata(f *File, n *snapshot.Node, opts RestoreOptions) error {
	fd := f.fd
	// A new file usually has the owner it should have already (restoring as
	// root what root owns): fstat is far cheaper than a chown, which the file
	// system journals.
	var st unix.Stat_t
	if (opts.Owner || os.Geteuid() == 0) && (unix.Fstat(fd, &st) != nil || st.Uid != n.UID || st.Gid != n.GID) {
		if err := unix.Fchown(fd, int(n.UID), int(n.GID)); err != nil {
			return &os.PathError{Op: "fchown", Path: f.Name(), Err: err}
		}
	}
	var warnings []error
	if !opts.NoXattrs {
		for _, x := range n.Xattrs {
			err := unix.Fsetxattr(fd, x.Name, x.Value, 0)
			if err == nil {
				continue
			}
			if isNotSupported(err) {
				warnings = append(warnings, &Warning{Err: &os.PathError{Op: "setxattr " + x.Name, Path: f.Name(), Err: err}})
				continue
			}
			return &os.PathError{Op: "setxattr " + x.Name, Path: f.Name(), Err: err}
		}
	}
	if err := unix.Fchmod(fd, n.Mode&0o7777); err != nil {
		return &os.PathError{Op: "fchmod", Path: f.Name(), Err: err}
	}
	ts := []unix.Timespec{timespec(n.AccessTime), timespec(n.ModTime)}
	if err := unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH); err != nil {
		if err := unix.Futimes(fd, []unix.Timeval{timeval(n.AccessTime), timeval(n.ModTime)}); err != nil {
			return &os.PathError{Op: "futimens", Path: f.Name(), Err: err}
		}
	}
	return errors.Join(warnings...)
}

// inParent runs fn with the open parent directory of rel, holding the root
// open meanwhile: every operation on one entry goes through here.
func (r *Root) inParent(rel string, fn func(p *parent) error) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	p, err := r.openParent(rel)
	if err != nil {
		return err
	}
	defer p.close()
	return fn(p)
}

// timeval is t for futimes (kernels without utimensat on a descriptor),
// without UnixNano's overflow.
func timeval(t time.Time) unix.Timeval {
	return unix.Timeval{Sec: t.Unix(), Usec: int64(t.Nanosecond() / 1000)}
}
