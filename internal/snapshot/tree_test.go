package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"runtime"
	"strings"
	"testing"
	"time"

	"bunker/internal/repo"
)

func rid(b byte) (id repo.ID) {
	for i := range id {
		id[i] = b + byte(i)
	}
	return id
}

// fullTree has every node type and every field set, names that are not UTF-8,
// binary xattr values and zero times.
func fullTree() *Tree {
	t0 := time.Date(2024, 2, 29, 12, 34, 56, 789012345, time.UTC)
	return &Tree{Nodes: []*Node{
		{Name: "\x01ctl", Type: TypeFifo, Mode: 0o600},
		{Name: "a-dir", Type: TypeDir, Mode: 0o7777, UID: math.MaxUint32, GID: 1, User: "root", Group: "wheel",
			ModTime: t0, AccessTime: t0.Add(time.Second), ChangeTime: t0.Add(-time.Hour),
			Inode: math.MaxUint64, DeviceID: 2049, Links: 3, Subtree: rid(1)},
		{Name: "b-file", Type: TypeFile, Mode: 0o644, UID: 1000, GID: 1000, User: "ü", Group: "\xff\xfe",
			ModTime: time.Unix(-1, 1), AccessTime: time.Unix(1<<40, 999999999),
			Inode: 12345, DeviceID: 1, Links: 2, Size: math.MaxInt64,
			Xattrs:  []Xattr{{Name: "user.bin", Value: []byte{0, 1, 2, 0xff}}, {Name: "user.empty"}, {Name: "security.selinux", Value: []byte("system_u\x00")}},
			Content: []repo.ID{rid(2), rid(3), rid(2)}},
		{Name: "c-link", Type: TypeSymlink, Mode: 0o777, LinkTarget: "../\xc3\x28 not utf8/\x00x"},
		{Name: "d-blk", Type: TypeDev, Rdev: 0x0801, ModTime: time.Unix(0, 0)},
		{Name: "e-chr", Type: TypeCharDev, Rdev: math.MaxUint64},
		{Name: "f-sock", Type: TypeSocket},
		{Name: "g-empty-file", Type: TypeFile},
		{Name: "h-empty-dir", Type: TypeDir},
		{Name: "\xff\xfe", Type: TypeFile},
	}}
}

func nodesEqual(t *testing.T, got, want *Node) {
	t.Helper()
	if got.Name != want.Name || got.Type != want.Type || got.Mode != want.Mode || got.UID != want.UID || got.GID != want.GID ||
		got.User != want.User || got.Group != want.Group || got.Inode != want.Inode || got.DeviceID != want.DeviceID ||
		got.Links != want.Links || got.Rdev != want.Rdev || got.Size != want.Size || got.LinkTarget != want.LinkTarget ||
		got.Subtree != want.Subtree || len(got.Content) != len(want.Content) || len(got.Xattrs) != len(want.Xattrs) {
		t.Fatalf("node differs:\n got %+v\nwant %+v", got, want)
	}
	for _, p := range [][2]time.Time{{got.ModTime, want.ModTime}, {got.AccessTime, want.AccessTime}, {got.ChangeTime, want.ChangeTime}} {
		if !p[0].Equal(p[1]) || p[0].IsZero() != p[1].IsZero() {
			t.Fatalf("%q: time %v, want %v", got.Name, p[0], p[1])
		}
	}
	for i := range got.Content {
		if got.Content[i] != want.Content[i] {
			t.Fatalf("%q: content %d differs", got.Name, i)
		}
	}
	for i := range got.Xattrs {
		if got.Xattrs[i].Name != want.Xattrs[i].Name || !bytes.Equal(got.Xattrs[i].Value, want.Xattrs[i].Value) {
			t.Fatalf("%q: xattr %d differs", got.Name, i)
		}
	}
}

func TestTreeRoundTrip(t *testing.T) {
	long := fullTree()
	long.Nodes = append(long.Nodes, &Node{Name: strings.Repeat("\xff", maxString), Type: TypeFile})
	for _, tr := range []*Tree{{}, fullTree(), long} {
		b := tr.Encode()
		got, err := DecodeTree(b)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Nodes) != len(tr.Nodes) {
			t.Fatalf("%d nodes, want %d", len(got.Nodes), len(tr.Nodes))
		}
		for i := range got.Nodes {
			nodesEqual(t, got.Nodes[i], tr.Nodes[i])
		}
		if !bytes.Equal(got.Encode(), b) {
			t.Fatal("re-encoding differs")
		}
	}
}

func TestTreeFind(t *testing.T) {
	tr := fullTree()
	for _, n := range tr.Nodes {
		if tr.Find(n.Name) != n {
			t.Fatalf("Find(%q) failed", n.Name)
		}
	}
	if tr.Find("b") != nil || tr.Find("") != nil || (&Tree{}).Find("x") != nil {
		t.Fatal("Find found a missing name")
	}
	shuffled := &Tree{Nodes: []*Node{tr.Nodes[3], tr.Nodes[0], tr.Nodes[2], tr.Nodes[1]}}
	shuffled.Sort()
	for i := 1; i < len(shuffled.Nodes); i++ {
		if shuffled.Nodes[i-1].Name >= shuffled.Nodes[i].Name {
			t.Fatal("Sort did not sort")
		}
	}
}

func encodeNodes(nodes ...*Node) []byte { return (&Tree{Nodes: nodes}).Encode() }

func TestDecodeTreeRejects(t *testing.T) {
	file := func(name string) *Node { return &Node{Name: name, Type: TypeFile} }
	good := fullTree().Encode()
	// Every truncation fails.
	for n := 0; n < len(good); n += 1 + n/64 {
		if _, err := DecodeTree(good[:n]); !errors.Is(err, ErrInvalidTree) {
			t.Fatalf("truncated to %d: %v", n, err)
		}
	}
	// Node bytes, edited: the first node of encodeNodes(file("a")) starts at 2.
	edit := func(nodes []*Node, fn func(b []byte) []byte) []byte {
		return fn(encodeNodes(nodes...))
	}
	cases := map[string][]byte{
		"empty input":       nil,
		"version 0":         {0, 0},
		"version 2":         {2, 0},
		"trailing bytes":    append(encodeNodes(file("a")), 0),
		"unsorted":          encodeNodes(file("b"), file("a")),
		"duplicate":         encodeNodes(file("a"), file("a")),
		"empty name":        encodeNodes(file("")),
		"dup across types":  encodeNodes(&Node{Name: "d", Type: TypeDir}, file("d")),
		"content on dir":    encodeNodes(&Node{Name: "d", Type: TypeDir, Content: []repo.ID{rid(1)}}),
		"content on link":   encodeNodes(&Node{Name: "l", Type: TypeSymlink, Content: []repo.ID{rid(1)}}),
		"content on fifo":   encodeNodes(&Node{Name: "f", Type: TypeFifo, Content: []repo.ID{rid(1)}}),
		"count too high":    append([]byte{1, 2}, encodeNodes(file("a"))[2:]...),
		"count > input":     binary.AppendUvarint([]byte{1}, 1000),
		"huge count":        binary.AppendUvarint([]byte{1}, math.MaxUint64),
		"mode too high":     encodeNodes(&Node{Name: "a", Type: TypeFile, Mode: 0o10000}),
		"size > MaxInt64":   encodeNodes(&Node{Name: "a", Type: TypeFile, Size: math.MaxInt64 + 1}),
		"name too long":     encodeNodes(file(strings.Repeat("n", maxString+1))),
		"user too long":     encodeNodes(&Node{Name: "a", Type: TypeFile, User: strings.Repeat("u", maxString+1)}),
		"too many xattrs":   encodeNodes(&Node{Name: "a", Type: TypeFile, Xattrs: make([]Xattr, maxXattrs+1)}),
		"xattr value large": encodeNodes(&Node{Name: "a", Type: TypeFile, Xattrs: []Xattr{{Name: "x", Value: make([]byte, maxXattrValue+1)}}}),
		"node type 0": edit([]*Node{file("a")}, func(b []byte) []byte {
			b[5] = 0
			return b
		}),
		"node type 8": edit([]*Node{file("a")}, func(b []byte) []byte {
			b[5] = 8
			return b
		}),
		"field count 19": edit([]*Node{file("a")}, func(b []byte) []byte {
			b[2] = 19
			return b
		}),
		"field count 21": edit([]*Node{file("a")}, func(b []byte) []byte {
			b[2] = 21
			return b
		}),
		"subtree flag on file": edit([]*Node{file("a")}, func(b []byte) []byte {
			b[len(b)-2] = 1
			return append(append(b[:len(b)-1], make([]byte, 32)...), 0)
		}),
		"subtree flag 2 on file": edit([]*Node{file("a")}, func(b []byte) []byte {
			b[len(b)-2] = 2
			return b
		}),
		"no subtree on dir": edit([]*Node{{Name: "d", Type: TypeDir}}, func(b []byte) []byte {
			return append(b[:len(b)-34], 0, 0)
		}),
		"subtree flag 2 on dir": edit([]*Node{{Name: "d", Type: TypeDir}}, func(b []byte) []byte {
			b[len(b)-34] = 2
			return b
		}),
		"reserved flags": edit([]*Node{file("a")}, func(b []byte) []byte {
			b[len(b)-1] = 1
			return b
		}),
		"content count > input": edit([]*Node{file("a")}, func(b []byte) []byte {
			b[len(b)-3] = 1 // content count 1, no ID follows
			return b
		}),
		// Non-canonical encodings: the encoder never writes them, and
		// accepting them would give one tree several encodings (and IDs).
		"non-minimal count": append([]byte{1, 0x81, 0x00}, encodeNodes(file("a"))[2:]...),
		"non-minimal field count": edit([]*Node{file("a")}, func(b []byte) []byte {
			return append([]byte{1, 1, 0x80 | nodeFields, 0}, b[3:]...)
		}),
		"non-minimal name length": edit([]*Node{file("a")}, func(b []byte) []byte {
			return append([]byte{1, 1, nodeFields, 0x81, 0}, b[4:]...)
		}),
		"zero time with nanoseconds": edit([]*Node{file("a")}, func(b []byte) []byte {
			// mtime follows name (2), type (1), mode, uid, gid (1 each), user, group (1 each).
			i := 3 + 2 + 1 + 3 + 2
			s, n := binary.Varint(b[i:])
			if s != math.MinInt64 || b[i+n] != 0 {
				panic("test layout changed")
			}
			b[i+n] = 5
			return b
		}),
	}
	// time.Unix(-62135596800, 0) is the zero time.Time: its encoding must be
	// the zero time's, so a node cannot carry it as explicit seconds.
	zt := encodeNodes(&Node{Name: "a", Type: TypeFile, ModTime: time.Unix(-62135596800, 1)})
	i := 3 + 2 + 1 + 3 + 2
	_, n := binary.Varint(zt[i:])
	zt[i+n] = 0
	cases["zero time as seconds"] = zt
	for name, b := range cases {
		if tr, err := DecodeTree(b); !errors.Is(err, ErrInvalidTree) {
			t.Errorf("%s: DecodeTree = %v, %v; want ErrInvalidTree", name, tr, err)
		}
	}
	// Sanity: the edit base cases decode.
	for _, nodes := range [][]*Node{{file("a")}, {{Name: "d", Type: TypeDir}}} {
		if _, err := DecodeTree(encodeNodes(nodes...)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDecodeTreeAllocation: the node count is checked against the input
// before the node slice is allocated.
func TestDecodeTreeAllocation(t *testing.T) {
	b := binary.AppendUvarint([]byte{1}, maxTreeNodes)
	b = append(b, make([]byte, 100)...)
	allocs := testing.AllocsPerRun(10, func() { _, _ = DecodeTree(b) })
	if allocs > 10 {
		t.Fatalf("%v allocations", allocs)
	}
	var ms1, ms2 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	for i := 0; i < 10; i++ {
		_, _ = DecodeTree(b)
	}
	runtime.ReadMemStats(&ms2)
	if d := ms2.TotalAlloc - ms1.TotalAlloc; d > 1<<20 {
		t.Fatalf("10 decodes of a %d-byte tree allocated %d bytes", len(b), d)
	}
}

// FuzzTreeDecode: DecodeTree never panics, allocates in proportion to its
// input, and what it accepts is valid and re-encodes to exactly the input.
func FuzzTreeDecode(f *testing.F) {
	f.Add(fullTree().Encode())
	f.Add((&Tree{}).Encode())
	f.Add(encodeNodes(&Node{Name: "a", Type: TypeFile, Content: []repo.ID{rid(1)}, Xattrs: []Xattr{{Name: "n", Value: []byte{0}}}}))
	f.Add(encodeNodes(&Node{Name: "d", Type: TypeDir, Subtree: rid(9)}, &Node{Name: "e", Type: TypeSymlink, LinkTarget: "d"}))
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0x7f})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := DecodeTree(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidTree) || tr != nil {
				t.Fatalf("DecodeTree = %v, %v", tr, err)
			}
			return
		}
		if cap(tr.Nodes) > len(b) {
			t.Fatalf("node slice cap %d for %d input bytes", cap(tr.Nodes), len(b))
		}
		for i, n := range tr.Nodes {
			if n.Name == "" || (i > 0 && tr.Nodes[i-1].Name >= n.Name) {
				t.Fatalf("node %d: bad or unsorted name %q", i, n.Name)
			}
			if n.Type < TypeFile || n.Type > TypeSocket || (n.Type != TypeFile && len(n.Content) > 0) ||
				(n.Type != TypeDir && !n.Subtree.IsNull()) || n.Mode > 0o7777 || n.Size > math.MaxInt64 {
				t.Fatalf("invalid node accepted: %+v", n)
			}
		}
		re := tr.Encode()
		if !bytes.Equal(re, b) {
			t.Fatalf("Encode(DecodeTree(x)) != x:\n got %x\nwant %x", re, b)
		}
	})
}
