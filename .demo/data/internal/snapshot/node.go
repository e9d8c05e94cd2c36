package snapshot

import (
	"time"

	"bunker/internal/repo"
)

// NodeType is the kind of a file-system entry.
type NodeType uint8

// Node types.
const (
	TypeFile NodeType = iota + 1
	TypeDir
	TypeSymlink
	TypeDev     // block device
	TypeCharDev // character device
	TypeFifo
	TypeSocket
)

func (t NodeType) String() string {
	switch t {
	case TypeFile:
		return "file"
	case TypeDir:
		return "dir"
	case TypeSymlink:
		return "symlink"
	case TypeDev:
		return "dev"
	case TypeCharDev:
		return "chardev"
	case TypeFifo:
		return "fifo"
	case TypeSocket:
		return "socket"
	}
	return "unknown"
}

// Xattr is one extended attribute.
type Xattr struct {
	Name  string
	Value []byte
}

// Node is one entry of a directory with its full metadata. Names, link targets
// and xattrs are kept byte for byte (they need not be UTF-8).
type Node struct {
	Name string
	Type NodeType
	// Mode holds the permission bits and setuid/setgid/sticky, as in st_mode & 07777.
	Mode       uint32
	UID, GID   uint32
	User       string
	Group      string
	ModTime    time.Time
	AccessTime time.Time
	ChangeTime time.Time
	// Inode, DeviceID (st_dev) and Links (st_nlink) identify hard-link sets and
	// unchanged files; they are not restored.
	Inode    uint64
	DeviceID uint64
	Links    uint64
	// Rdev is the device number of a block or character device.
	Rdev       uint64
	Size       uint64
	LinkTarget string
	Xattrs     []Xattr
	// Content lists the data blobs of a file, in order.
	Content []repo.ID
	// Subtree is the tree blob of a directory.
	Subtree repo.ID
}

// Tree is a directory's list of nodes, sorted by name, names unique.
type Tree struct {
	Nodes []*Node
}
