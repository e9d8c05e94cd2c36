package snapshot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"bunker/internal/repo"
)

// Tree encoding (version 1), before compression and sealing:
//
//	tree = 0x01 || uvarint(count) || node...
//	node = uvarint(field count) || field...   (fields in the order below)
//
// Strings and byte slices are uvarint(length) || bytes, times are
// varint(unix seconds) || uvarint(nanoseconds), IDs are 32 bytes. The binary
// form keeps names, link targets and xattrs byte for byte (JSON would mangle
// names that are not UTF-8) and is several times faster to encode and decode.
const treeVersion = 1

// Limits on what a decoder accepts from an untrusted tree.
const (
	maxTreeNodes   = 1 << 24
	minNodeBytes   = 20 // a node takes at least 25: 20 fields, a name of one byte, times of two
	maxString      = 1 << 16
	maxXattrs      = 1 << 12
	maxXattrValue  = 1 << 20
	maxContentBlob = 1 << 28
)

// ErrInvalidTree is returned for a tree blob that does not decode.
var ErrInvalidTree = errors.New("invalid tree")

// Sort orders the nodes by name.
func (t *Tree) Sort() {
	sort.Slice(t.Nodes, func(i, j int) bool { return t.Nodes[i].Name < t.Nodes[j].Name })
}

// Find returns the node with the given name, or nil.
func (t *Tree) Find(name string) *Node {
	i := sort.Search(len(t.Nodes), func(i int) bool { return t.Nodes[i].Name >= name })
	if i < len(t.Nodes) && t.Nodes[i].Name == name {
		return t.Nodes[i]
	}
	return nil
}

// Encode serialises a tree whose nodes are sorted by name.
func (t *Tree) Encode() []byte {
	b := make([]byte, 0, 64+len(t.Nodes)*160)
	b = append(b, treeVersion)
	b = binary.AppendUvarint(b, uint64(len(t.Nodes)))
	for _, n := range t.Nodes {
		b = n.appendTo(b)
	}
	return b
}

const nodeFields = 20

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		b = binary.AppendVarint(b, math.MinInt64)
		return binary.AppendUvarint(b, 0)
	}
	b = binary.AppendVarint(b, t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

func (n *Node) appendTo(b []byte) []byte {
	b = binary.AppendUvarint(b, nodeFields)
	b = appendString(b, n.Name)
	b = append(b, byte(n.Type))
	b = binary.AppendUvarint(b, uint64(n.Mode))
	b = binary.AppendUvarint(b, uint64(n.UID))
	b = binary.AppendUvarint(b, uint64(n.GID))
	b = appendString(b, n.User)
	b = appendString(b, n.Group)
	b = appendTime(b, n.ModTime)
	b = appendTime(b, n.AccessTime)
	b = appendTime(b, n.ChangeTime)
	b = binary.AppendUvarint(b, n.Inode)
	b = binary.AppendUvarint(b, n.DeviceID)
	b = binary.AppendUvarint(b, n.Links)
	b = binary.AppendUvarint(b, n.Rdev)
	b = binary.AppendUvarint(b, n.Size)
	b = appendString(b, n.LinkTarget)
	b = binary.AppendUvarint(b, uint64(len(n.Xattrs)))
	for _, x := range n.Xattrs {
		b = appendString(b, x.Name)
		b = binary.AppendUvarint(b, uint64(len(x.Value)))
		b = append(b, x.Value...)
	}
	b = binary.AppendUvarint(b, uint64(len(n.Content)))
	for _, id := range n.Content {
		b = append(b, id[:]...)
	}
	if n.Type == TypeDir {
		b = append(b, 1)
		b = append(b, n.Subtree[:]...)
	} else {
		b = append(b, 0)
	}
	// Field 20 is reserved for future flags; always zero in version 1.
	return append(b, 0)
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", ErrInvalidTree, what)
	}
}

func (r *reader) uvarint(max uint64, what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 || v > max || n > 1 && r.b[n-1] == 0 { // the last test refuses non-minimal encodings
		r.fail(what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint(what string) int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 || n > 1 && r.b[n-1] == 0 {
		r.fail(what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) take(n uint64, what string) []byte {
	if r.err != nil {
		return nil
	}
	if uint64(len(r.b)) < n {
		r.fail(what)
		return nil
	}
	out := r.b[:n:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) str(what string) string {
	return string(r.take(r.uvarint(maxString, what), what))
}

// strLike reads a string, returning prev itself if they are equal.
func (r *reader) strLike(prev, what string) string {
	b := r.take(r.uvarint(maxString, what), what)
	if string(b) == prev {
		return prev
	}
	return string(b)
}

func (r *reader) time(what string) time.Time {
	s := r.varint(what)
	ns := r.uvarint(999999999, what)
	if s == math.MinInt64 {
		if ns != 0 {
			r.fail(what)
		}
		return time.Time{}
	}
	t := time.Unix(s, int64(ns))
	if t.IsZero() {
		r.fail(what) // the zero time has its own encoding, above
	}
	return t
}

// DecodeTree parses a tree blob. It checks the structure (sorted, unique,
// non-empty names, known types) but not that names are safe to restore: the
// restorer checks that itself.
func DecodeTree(b []byte) (*Tree, error) {
	if len(b) < 1 || b[0] != treeVersion {
		return nil, fmt.Errorf("%w: unknown version", ErrInvalidTree)
	}
	r := &reader{b: b[1:]}
	count := r.uvarint(maxTreeNodes, "node count")
	// A count the data cannot hold is refused before the nodes are allocated.
	if count > uint64(len(r.b))/minNodeBytes {
		return nil, fmt.Errorf("%w: node count", ErrInvalidTree)
	}
	t := &Tree{Nodes: make([]*Node, 0, count)}
	// The nodes share one allocation, and the user and group names, the
	// same in most nodes of a directory, are kept once: an unchanged
	// re-backup decodes every tree of the previous snapshot.
	slab := make([]Node, count)
	var user, group string
	for i := uint64(0); i < count && r.err == nil; i++ {
		if f := r.uvarint(255, "field count"); f != nodeFields && r.err == nil {
			return nil, fmt.Errorf("%w: node has %d fields", ErrInvalidTree, f)
		}
		n := &slab[i]
		n.Name = r.str("name")
		if tb := r.take(1, "type"); r.err == nil {
			n.Type = NodeType(tb[0])
			if n.Type < TypeFile || n.Type > TypeSocket {
				r.fail("unknown node type")
			}
		}
		n.Mode = uint32(r.uvarint(07777, "mode"))
		n.UID = uint32(r.uvarint(math.MaxUint32, "uid"))
		n.GID = uint32(r.uvarint(math.MaxUint32, "gid"))
		n.User = r.strLike(user, "user")
		n.Group = r.strLike(group, "group")
		user, group = n.User, n.Group
		n.ModTime = r.time("mtime")
		n.AccessTime = r.time("atime")
		n.ChangeTime = r.time("ctime")
		n.Inode = r.uvarint(math.MaxUint64, "inode")
		n.DeviceID = r.uvarint(math.MaxUint64, "device")
		n.Links = r.uvarint(math.MaxUint64, "links")
		n.Rdev = r.uvarint(math.MaxUint64, "rdev")
		n.Size = r.uvarint(math.MaxInt64, "size")
		n.LinkTarget = r.str("link target")
		nx := r.uvarint(maxXattrs, "xattr count")
		for j := uint64(0); j < nx && r.err == nil; j++ {
			name := r.str("xattr name")
			val := r.take(r.uvarint(maxXattrValue, "xattr value"), "xattr value")
			n.Xattrs = append(n.Xattrs, Xattr{Name: name, Value: append([]byte(nil), val...)})
		}
		nc := r.uvarint(maxContentBlob, "content count")
		if nc*repo.IDSize > uint64(len(r.b)) {
			r.fail("content count")
		}
		if r.err == nil && nc > 0 {
			n.Content = make([]repo.ID, nc)
			for j := range n.Content {
				copy(n.Content[j][:], r.take(repo.IDSize, "content"))
			}
		}
		if hs := r.take(1, "subtree flag"); r.err == nil {
			switch {
			case hs[0] == 1 && n.Type == TypeDir:
				copy(n.Subtree[:], r.take(repo.IDSize, "subtree"))
			case hs[0] == 0 && n.Type != TypeDir:
			default:
				r.fail("subtree flag does not match type")
			}
		}
		if fl := r.take(1, "flags"); r.err == nil && fl[0] != 0 {
			r.fail("unknown flags")
		}
		if r.err != nil {
			break
		}
		if n.Name == "" {
			return nil, fmt.Errorf("%w: empty name", ErrInvalidTree)
		}
		if len(t.Nodes) > 0 && t.Nodes[len(t.Nodes)-1].Name >= n.Name {
			return nil, fmt.Errorf("%w: names not sorted or not unique", ErrInvalidTree)
		}
		if n.Type != TypeFile && len(n.Content) > 0 {
			return nil, fmt.Errorf("%w: content on a %v", ErrInvalidTree, n.Type)
		}
		t.Nodes = append(t.Nodes, n)
	}
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: trailing bytes", ErrInvalidTree)
	}
	return t, nil
}
