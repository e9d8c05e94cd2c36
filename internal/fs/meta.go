package fs

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"bunker/internal/snapshot"
)

// Limits for extended attributes (Linux XATTR_LIST_MAX and XATTR_SIZE_MAX).
const (
	maxXattrList  = 64 << 10
	maxXattrValue = 64 << 10
)

// MetaOptions configures a MetaReader.
type MetaOptions struct {
	// NoXattrs disables reading extended attributes.
	NoXattrs bool
}

// MetaReader builds snapshot nodes from file-system entries. It caches user
// and group name lookups and is safe for concurrent use.
type MetaReader struct {
	opts MetaOptions

	mu     sync.Mutex
	users  map[uint32]string
	groups map[uint32]string
	// lastUser and lastGroup hold the latest lookups: nearly every entry of
	// a tree has the same owner, and the walkers of a backup would otherwise
	// contend for mu twice per entry.
	lastUser, lastGroup atomic.Pointer[idName]
}

type idName struct {
	id   uint32
	name string
}

// NewMetaReader returns a MetaReader.
func NewMetaReader(opts MetaOptions) *MetaReader {
	return &MetaReader{
		opts:   opts,
		users:  make(map[uint32]string),
		groups: make(map[uint32]string),
	}
}

// XattrError reports that the extended attributes of an entry could not be
// read. Node returns it together with an otherwise complete node.
type XattrError struct {
	Path string
	Err  error
}

func (e *XattrError) Error() string {
	return fmt.Sprintf("read extended attributes of %s: %v", e.Path, e.Err)
}

func (e *XattrError) Unwrap() error { return e.Err }

// NodeAt builds the node for the entry name of the directory open as dirfd
// (or for the path name, with dirfd unix.AT_FDCWD), not following a final
// symlink; path is the entry's full path, for messages. Content and Subtree
// are left empty. Working relative to the directory, the kernel looks up one
// name instead of the whole path for each system call: most of an unchanged
// re-backup's time.
//
// If everything but the extended attributes could be read, NodeAt returns
// the node (without xattrs) together with a *XattrError; callers may treat
// that as a warning. Any other error is returned with a nil node.
//
// prev, if not nil, is the entry's node in an earlier snapshot. If the entry
// is still that inode and its ctime has not moved, its extended attributes
// and symlink target are taken from prev instead of read: changing either
// sets the ctime (as does any write), so they are the same.
func (r *MetaReader) NodeAt(dirfd int, name, path string, prev *snapshot.Node) (*snapshot.Node, error) {
	var st unix.Stat_t
	for {
		err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "lstat", Path: path, Err: err}
		}
		return r.node(entrySource{dirfd: dirfd, name: name, fd: -1}, path, &st, prev)
	}
}

// NodeOfFile builds the node of the file open as fd, whose fstat is st and
// whose full path is path (for messages and the node's name), reading its
// extended attributes through fd. Like NodeAt, it may return the node
// together with a *XattrError.
func (r *MetaReader) NodeOfFile(fd int, path string, st *unix.Stat_t) (*snapshot.Node, error) {
	if st.Mode&unix.S_IFMT == unix.S_IFLNK { // its target is not read through fd
		return nil, fmt.Errorf("%s: a symlink is not an open file", path)
	}
	return r.node(entrySource{fd: fd}, path, st, nil)
}

// entrySource is where node reads what a stat does not give (symlink
// target, extended attributes): the open file fd if it is not negative, or
// else the entry name of the directory dirfd.
type entrySource struct {
	dirfd int
	name  string
	fd    int
}

func (r *MetaReader) node(src entrySource, path string, st *unix.Stat_t, prev *snapshot.Node) (*snapshot.Node, error) {
	dirfd, name := src.dirfd, src.name
	typ, err := nodeType(st.Mode)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	n := &snapshot.Node{
		Name:       filepath.Base(path),
		Type:       typ,
		Mode:       st.Mode & 07777,
		UID:        st.Uid,
		GID:        st.Gid,
		User:       r.userName(st.Uid),
		Group:      r.groupName(st.Gid),
		ModTime:    time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
		AccessTime: time.Unix(st.Atim.Sec, st.Atim.Nsec),
		ChangeTime: time.Unix(st.Ctim.Sec, st.Ctim.Nsec),
		Inode:      st.Ino,
		DeviceID:   uint64(st.Dev),
		Links:      uint64(st.Nlink),
	}
	same := prev != nil && prev.Type == typ && prev.Inode == n.Inode && prev.DeviceID == n.DeviceID &&
		prev.ChangeTime.Equal(n.ChangeTime)
	switch typ {
	case snapshot.TypeFile:
		n.Size = uint64(st.Size)
	case snapshot.TypeDev, snapshot.TypeCharDev:
		n.Rdev = uint64(st.Rdev)
	case snapshot.TypeSymlink:
		if same {
			n.LinkTarget = prev.LinkTarget
			break
		}
		target, err := readlinkAt(dirfd, name)
		if err != nil {
			return nil, &os.PathError{Op: "readlink", Path: path, Err: err}
		}
		n.LinkTarget = target
	}
	if same && !r.opts.NoXattrs {
		n.Xattrs = prev.Xattrs
	} else if !r.opts.NoXattrs {
		var xattrs []snapshot.Xattr
		if src.fd >= 0 {
			xattrs, err = readXattrsFd(src.fd)
		} else {
			xattrs, err = readXattrsAt(dirfd, name, path)
		}
		if err != nil {
			return n, &XattrError{Path: path, Err: err}
		}
		n.Xattrs = xattrs
	}
	return n, nil
}

func readlinkAt(dirfd int, name string) (string, error) {
	size := 256
	for {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
		size *= 2
	}
}

func nodeType(mode uint32) (snapshot.NodeType, error) {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return snapshot.TypeFile, nil
	case unix.S_IFDIR:
		return snapshot.TypeDir, nil
	case unix.S_IFLNK:
		return snapshot.TypeSymlink, nil
	case unix.S_IFBLK:
		return snapshot.TypeDev, nil
	case unix.S_IFCHR:
		return snapshot.TypeCharDev, nil
	case unix.S_IFIFO:
		return snapshot.TypeFifo, nil
	case unix.S_IFSOCK:
		return snapshot.TypeSocket, nil
	}
	return 0, fmt.Errorf("unknown file type %#o", mode&unix.S_IFMT)
}

func (r *MetaReader) userName(uid uint32) string {
	return r.lookup(&r.lastUser, r.users, uid, lookupUser)
}

func (r *MetaReader) groupName(gid uint32) string {
	return r.lookup(&r.lastGroup, r.groups, gid, lookupGroup)
}

// lookupUser and lookupGroup return the name of a decimal user or group ID.
func lookupUser(id string) (string, error) {
	u, err := user.LookupId(id)
	if err != nil {
		return "", err
	}
	return u.Username, nil
}

func lookupGroup(id string) (string, error) {
	g, err := user.LookupGroupId(id)
	if err != nil {
		return "", err
	}
	return g.Name, nil
}

// lookup returns the name of id from last, then from cache (guarded by
// r.mu), then from find; an id without a name gets "".
func (r *MetaReader) lookup(last *atomic.Pointer[idName], cache map[uint32]string, id uint32, find func(string) (string, error)) string {
	if e := last.Load(); e != nil && e.id == id {
		return e.name
	}
	r.mu.Lock()
	name, ok := cache[id]
	r.mu.Unlock()
	if !ok {
		name, _ = find(strconv.FormatUint(uint64(id), 10))
		r.mu.Lock()
		cache[id] = name
		r.mu.Unlock()
	}
	last.Store(&idName{id: id, name: name})
	return name
}

// isNotSupported reports whether err means that the file system (or the
// entry type) does not support extended attributes.
func isNotSupported(err error) bool {
	return errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP)
}

// ReadXattrs returns the extended attributes of path (not following a final
// symlink), sorted by name. A file system without xattr support yields none.
func ReadXattrs(path string) ([]snapshot.Xattr, error) {
	return readXattrsAt(unix.AT_FDCWD, path, path)
}

// readXattrsAt is ReadXattrs for the entry name of the directory dirfd.
// The list is read relative to it where the kernel can (listxattrat, Linux
// 6.13); the values, which few files have, by path.
func readXattrsAt(dirfd int, name, path string) ([]snapshot.Xattr, error) {
	return readXattrs(func(buf []byte) (int, error) {
		if dirfd != unix.AT_FDCWD {
			n, err := listxattrAt(dirfd, name, buf)
			if err != errNoXattrAt {
				return n, err
			}
		}
		return unix.Llistxattr(path, buf)
	}, func(attr string, buf []byte) (int, error) {
		return unix.Lgetxattr(path, attr, buf)
	})
}

// readXattrsFd is ReadXattrs for the open file fd.
func readXattrsFd(fd int) ([]snapshot.Xattr, error) {
	return readXattrs(func(buf []byte) (int, error) {
		return unix.Flistxattr(fd, buf)
	}, func(attr string, buf []byte) (int, error) {
		return unix.Fgetxattr(fd, attr, buf)
	})
}

// readXattrs reads the names of the attributes with names and each value
// with get, and returns them sorted by name.
func readXattrs(names func(buf []byte) (int, error), get func(attr string, buf []byte) (int, error)) ([]snapshot.Xattr, error) {
	list, err := readXattrBuf(maxXattrList, names)
	if err != nil {
		if isNotSupported(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("list: %w", err)
	}
	var sorted []string
	for len(list) > 0 {
		i := 0
		for i < len(list) && list[i] != 0 {
			i++
		}
		if i > 0 {
			sorted = append(sorted, string(list[:i]))
		}
		if i == len(list) {
			break
		}
		list = list[i+1:]
	}
	sort.Strings(sorted)
	var xattrs []snapshot.Xattr
	for _, name := range sorted {
		val, err := readXattrBuf(maxXattrValue, func(buf []byte) (int, error) {
			return get(name, buf)
		})
		if errors.Is(err, unix.ENODATA) {
			continue // removed since the list was read
		}
		if err != nil {
			return nil, fmt.Errorf("get %q: %w", name, err)
		}
		if val == nil {
			val = []byte{}
		}
		xattrs = append(xattrs, snapshot.Xattr{Name: name, Value: val})
	}
	return xattrs, nil
}

// readXattrBuf calls get with growing buffers until the result fits. The
// first call asks for the size; ERANGE (the value grew in between) retries.
func readXattrBuf(limit int, get func([]byte) (int, error)) ([]byte, error) {
	size := 256
	for attempt := 0; attempt < 8; attempt++ {
		buf := make([]byte, size)
		n, err := get(buf)
		if err == nil {
			if n == 0 {
				return nil, nil
			}
			return buf[:n:n], nil
		}
		if !errors.Is(err, unix.ERANGE) {
			return nil, err
		}
		if size >= limit {
			return nil, fmt.Errorf("larger than %d bytes: %w", limit, err)
		}
		// Ask for the current size; grow to at least that.
		want, err := get(nil)
		if err != nil {
			return nil, err
		}
		size = max(size*2, want)
		size = min(size, limit)
	}
	return nil, fmt.Errorf("size keeps changing: %w", unix.ERANGE)
}
