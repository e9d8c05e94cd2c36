package fs

import (
	"errors"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// errNoXattrAt means listxattrat is not available: the caller falls back to
// the path.
var errNoXattrAt = errors.New("listxattrat not available")

// noXattrAt is set once the kernel (older than 6.13) or a seccomp filter
// has refused listxattrat.
var noXattrAt atomic.Bool

// listxattrAt is llistxattr of the entry name in the directory dirfd.
func listxattrAt(dirfd int, name string, buf []byte) (int, error) {
	if noXattrAt.Load() {
		return 0, errNoXattrAt
	}
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return 0, err
	}
	var bp unsafe.Pointer
	if len(buf) > 0 {
		bp = unsafe.Pointer(&buf[0])
	}
	for {
		n, _, e := unix.Syscall6(unix.SYS_LISTXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)),
			unix.AT_SYMLINK_NOFOLLOW, uintptr(bp), uintptr(len(buf)), 0)
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		case unix.ENOSYS, unix.EPERM:
			// EPERM: container runtimes' filters refuse system calls they
			// do not know so; listxattr itself never fails with it.
			noXattrAt.Store(true)
			return 0, errNoXattrAt
		}
		return 0, e
	}
}
