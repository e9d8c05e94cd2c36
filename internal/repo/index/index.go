// Package index maps blobs to where they are stored, in memory and in index files.
//
// An index file lists packs and the blobs each holds (the same facts as the
// packs' own headers, so the index can be rebuilt from the packs). Index files
// are written after the packs they describe and before any snapshot that uses
// them. The in-memory Index is the union of all index files, safe for
// concurrent use: lookups take a read lock, additions a write lock.
package index

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"bunker/internal/repo"
	"bunker/internal/repo/pack"
)

// Location says where a blob is stored.
type Location = repo.Location

type entry struct {
	pack       uint32 // index into Index.packs
	offset     uint32
	length     uint32
	rawLength  uint32
	compressed bool
}

// Index is the in-memory union of index files.
type Index struct {
	mu      sync.RWMutex
	blobs   map[repo.BlobHandle]entry
	packs   []repo.ID
	packIdx map[repo.ID]uint32
}

// New returns an empty index.
func New() *Index {
	return &Index{blobs: make(map[repo.BlobHandle]entry), packIdx: make(map[repo.ID]uint32)}
}

// Has reports whether a blob is indexed.
func (x *Index) Has(h repo.BlobHandle) bool {
	x.mu.RLock()
	_, ok := x.blobs[h]
	x.mu.RUnlock()
	return ok
}

// Lookup returns a blob's location.
func (x *Index) Lookup(h repo.BlobHandle) (Location, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	e, ok := x.blobs[h]
	if !ok {
		return Location{}, false
	}
	return Location{Pack: x.packs[e.pack], Offset: e.offset, Length: e.length, RawLength: e.rawLength, Compressed: e.compressed}, true
}

// AddPack records the blobs of one pack. A blob already indexed in another pack
// keeps its first location (duplicates are harmless; prune removes them).
func (x *Index) AddPack(id repo.ID, blobs []pack.Blob) {
	x.mu.Lock()
	defer x.mu.Unlock()
	pi, ok := x.packIdx[id]
	if !ok {
		pi = uint32(len(x.packs))
		x.packs = append(x.packs, id)
		x.packIdx[id] = pi
	}
	for _, b := range blobs {
		h := b.Handle()
		if _, ok := x.blobs[h]; ok {
			continue
		}
		x.blobs[h] = entry{pack: pi, offset: b.Offset, length: b.Length, rawLength: b.RawLength, compressed: b.Compressed}
	}
}

// Len returns the number of blobs.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.blobs)
}

// HasPack reports whether a pack is referenced by the index.
func (x *Index) HasPack(id repo.ID) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	_, ok := x.packIdx[id]
	return ok
}

// Each calls fn for every blob, under the read lock (fn must not modify x).
func (x *Index) Each(fn func(h repo.BlobHandle, loc Location)) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for h, e := range x.blobs {
		fn(h, Location{Pack: x.packs[e.pack], Offset: e.offset, Length: e.length, RawLength: e.rawLength, Compressed: e.compressed})
	}
}

// Packs returns, per pack, the blobs the index places in it.
func (x *Index) Packs() map[repo.ID][]pack.Blob {
	out := make(map[repo.ID][]pack.Blob)
	x.Each(func(h repo.BlobHandle, l Location) {
		out[l.Pack] = append(out[l.Pack], pack.Blob{Type: h.Type, ID: h.ID, Compressed: l.Compressed, Offset: l.Offset, Length: l.Length, RawLength: l.RawLength})
	})
	return out
}

// File is the content of one index file.
type File struct {
	// Supersedes lists index files that this one replaces (written by prune).
	Supersedes []repo.ID
	Packs      []PackEntry
}

// PackEntry lists the blobs of one pack.
type PackEntry struct {
	ID    repo.ID
	Blobs []pack.Blob
}

const fileMagic = "BKI1"

// Limits for decoding untrusted index files.
const (
	maxPacks = 1 << 24
	maxBlobs = 1 << 26
)

// ErrInvalid is returned for a malformed index file.
var ErrInvalid = errors.New("invalid index file")

// Encode serialises f (before compression and sealing).
func (f *File) Encode() []byte {
	n := 16 + len(f.Supersedes)*repo.IDSize
	for _, p := range f.Packs {
		n += repo.IDSize + 8 + len(p.Blobs)*(2+repo.IDSize+12)
	}
	b := make([]byte, 0, n)
	b = append(b, fileMagic...)
	b = binary.AppendUvarint(b, uint64(len(f.Supersedes)))
	for _, id := range f.Supersedes {
		b = append(b, id[:]...)
	}
	b = binary.AppendUvarint(b, uint64(len(f.Packs)))
	for _, p := range f.Packs {
		b = append(b, p.ID[:]...)
		b = binary.AppendUvarint(b, uint64(len(p.Blobs)))
		for _, bl := range p.Blobs {
			var flags byte
			if bl.Compressed {
				flags = pack.FlagCompressed
			}
			b = append(b, byte(bl.Type), flags)
			b = append(b, bl.ID[:]...)
			b = binary.AppendUvarint(b, uint64(bl.Offset))
			b = binary.AppendUvarint(b, uint64(bl.Length))
			b = binary.AppendUvarint(b, uint64(bl.RawLength))
		}
	}
	return b
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint(max uint64) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 || v > max {
		d.err = fmt.Errorf("%w: bad number", ErrInvalid)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.err = fmt.Errorf("%w: truncated", ErrInvalid)
		return nil
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

func (d *decoder) id() (id repo.ID) {
	copy(id[:], d.bytes(repo.IDSize))
	return id
}

// Decode parses an index file's plaintext.
func Decode(b []byte) (*File, error) {
	if len(b) < len(fileMagic) || string(b[:len(fileMagic)]) != fileMagic {
		return nil, fmt.Errorf("%w: bad magic", ErrInvalid)
	}
	d := &decoder{b: b[len(fileMagic):]}
	f := &File{}
	ns := d.uvarint(uint64(len(d.b) / repo.IDSize))
	for i := uint64(0); i < ns && d.err == nil; i++ {
		f.Supersedes = append(f.Supersedes, d.id())
	}
	np := d.uvarint(maxPacks)
	total := 0
	for i := uint64(0); i < np && d.err == nil; i++ {
		p := PackEntry{ID: d.id()}
		nb := d.uvarint(uint64(len(d.b)/(2+repo.IDSize+3)) + 1)
		total += int(nb)
		if total > maxBlobs {
			return nil, fmt.Errorf("%w: too many blobs", ErrInvalid)
		}
		if d.err == nil {
			p.Blobs = make([]pack.Blob, 0, nb)
		}
		for j := uint64(0); j < nb && d.err == nil; j++ {
			tf := d.bytes(2)
			if d.err != nil {
				break
			}
			bl := pack.Blob{Type: repo.BlobType(tf[0]), Compressed: tf[1]&pack.FlagCompressed != 0}
			if bl.Type != repo.DataBlob && bl.Type != repo.TreeBlob || tf[1]&^pack.FlagCompressed != 0 {
				return nil, fmt.Errorf("%w: bad blob type or flags", ErrInvalid)
			}
			bl.ID = d.id()
			bl.Offset = uint32(d.uvarint(1<<32 - 1))
			bl.Length = uint32(d.uvarint(pack.MaxBlobSize))
			bl.RawLength = uint32(d.uvarint(pack.MaxBlobSize))
			p.Blobs = append(p.Blobs, bl)
		}
		f.Packs = append(f.Packs, p)
	}
	if d.err != nil {
		return nil, d.err
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrInvalid, len(d.b))
	}
	return f, nil
}

// Live returns the packs listed by the index files that no other of them
// supersedes: what the repository's index is. files maps each file's ID to
// its content; files that could not be read are simply absent.
func Live(files map[repo.ID]*File) []PackEntry {
	superseded := make(map[repo.ID]bool)
	for _, f := range files {
		for _, s := range f.Supersedes {
			superseded[s] = true
		}
	}
	var out []PackEntry
	for id, f := range files {
		if !superseded[id] {
			out = append(out, f.Packs...)
		}
	}
	return out
}
