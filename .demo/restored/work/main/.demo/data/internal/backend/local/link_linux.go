//go:build linux

package local

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// linkNoReplace moves oldpath to newpath, failing with an error that matches
// fs.ErrExist if newpath exists. On success oldpath no longer exists (or, in
// the link fallback, its removal failed harmlessly); on failure it is untouched.
func linkNoReplace(oldpath, newpath string) error {
	err := unix.Renameat2(unix.AT_FDCWD, oldpath, unix.AT_FDCWD, newpath, unix.RENAME_NOREPLACE)
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// The file system (or kernel) does not know RENAME_NOREPLACE.
		return linkFallback(oldpath, newpath)
	}
	return &os.LinkError{Op: "renameat2", Old: oldpath, New: newpath, Err: err}
}
