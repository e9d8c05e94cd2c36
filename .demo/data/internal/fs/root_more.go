package fs

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Remove deletes the non-directory entry at rel (a symlink is removed, never
// followed). A missing entry is not an error.
func (r *Root) Remove(rel string) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	p, err := r.openParent(rel)
	if err != nil {
		return err
	}
	defer p.close()
	return r.removeNonDir(p, rel)
}

// OpenFile opens the regular file at rel for reading, never following a symlink.
func (r *Root) OpenFile(rel string) (*os.File, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	p, err := r.openParent(rel)
	if err != nil {
		return nil, err
	}
	defer p.close()
	fd, err := unix.Openat(p.fd, p.name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, r.pathErr("open", rel, err)
	}
	return os.NewFile(uintptr(fd), filepath.Join(r.dir, rel)), nil
}
