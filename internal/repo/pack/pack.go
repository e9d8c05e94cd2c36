// Package pack reads and writes pack files: many sealed blobs followed by a
// sealed header that lists them, then the header's length.
//
//	pack   = blob_1 || ... || blob_n || sealed(header) || uint32le(len(sealed(header)))
//	header = "BKP1" || entry_1 || ... || entry_n
//	entry  = type(1) || flags(1) || uint32le(stored length) || uint32le(raw length) || id(32)
//
// Blob offsets follow from the stored lengths. Because the header travels with
// the blobs, the index can always be rebuilt from the packs alone.
package pack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"math"
	"os"
	"sync"

	"bunker/internal/repo"
	"bunker/internal/repo/crypto"
)

// Flags of a blob entry.
const (
	FlagCompressed = 1 << 0
)

const (
	magic     = "BKP1"
	entrySize = 1 + 1 + 4 + 4 + repo.IDSize
	// MaxHeaderSize bounds the header a reader accepts (about 400k entries).
	MaxHeaderSize = 16 << 20
	// MaxBlobSize bounds a stored blob; chunks are at most 8 MiB raw (2 MiB
	// in repositories made since that bound).
	MaxBlobSize = 64 << 20
	// MaxBlobs is the most blobs a pack may hold: the header of that many
	// is the most a reader accepts (MaxHeaderSize), sealed.
	MaxBlobs = (MaxHeaderSize - crypto.Overhead - len(magic)) / entrySize
	// MaxChunkSealed is the stored size of the largest chunk (8 MiB, in
	// repositories made before the 2 MiB bound) stored uncompressed, with
	// the sealing overhead.
	MaxChunkSealed = 8<<20 + crypto.Overhead
)

// ErrInvalid is returned for a pack whose structure is wrong.
var ErrInvalid = errors.New("invalid pack")

// Blob describes one blob in a pack.
type Blob = repo.PackedBlob

// Writer assembles one pack, in memory or straight into a file. Add is not
// safe for concurrent use (the repository adds under its lock). In file
// mode Add only queues the blob; WriteQueued, safe to call from any goroutine
// (and meant to be called outside that lock), writes and hashes what is
// queued, in the order it was added. One caller writes at a time; one that
// finds another writing returns at once and leaves its blobs to it. So the
// callers that add blobs write them without a goroutine of the writer's own,
// which on a busy machine waited milliseconds to be scheduled each time it
// was woken (a first backup's blob workers spent 2 s in all waiting for it).
type Writer struct {
	buf   []byte
	file  *os.File
	size  int
	blobs []Blob

	// File mode. qmu guards queue, writing and done; the one caller that
	// set writing owns stage, spare, hash and err until it clears it.
	qmu     sync.Mutex
	idle    sync.Cond // signalled when writing is cleared
	queue   []queued
	writing bool
	done    bool // drained: nothing more is written
	spare   []queued
	stage   []byte
	hash    hash.Hash // the FileID of what was written so far
	err     error     // the first write error
}

type queued struct {
	b       []byte
	release func()
}

// NewWriter returns a writer with room for sizeHint bytes.
func NewWriter(sizeHint int) *Writer {
	return &Writer{buf: make([]byte, 0, sizeHint)}
}

// NewWriterBuffer returns a writer that assembles the pack in buf's storage
// (its length is ignored), so callers can reuse pack buffers.
func NewWriterBuffer(buf []byte) *Writer {
	return &Writer{buf: buf[:0]}
}

// NewFileWriter returns a writer that appends the pack to the empty file f.
// It ends with FinishFile or Discard, one of which must be called.
func NewFileWriter(f *os.File) *Writer {
	w := &Writer{file: f, hash: crypto.NewFileHasher()}
	w.idle.L = &w.qmu
	return w
}

// stageSize is the buffer in which WriteQueued gathers blobs smaller than
// stageMax (small files, trees) into one write: a system call per blob was a
// seventh of a small-file backup's system calls, and on virtual machines
// that trap them each costs far more than its copy.
const (
	stageSize = 256 << 10
	stageMax  = 32 << 10
)

// WriteQueued writes the queued blobs to the file unless another caller is
// writing them (file mode; in memory mode Add has copied them already).
func (w *Writer) WriteQueued() {
	if w.file == nil {
		return
	}
	w.qmu.Lock()
	if w.writing || w.done {
		w.qmu.Unlock()
		return
	}
	w.writing = true
	w.writeBatches()
	w.writing = false
	w.idle.Broadcast()
	w.qmu.Unlock()
}

// writeBatches writes the queue until it is empty. The caller holds qmu and
// has set writing; qmu is released while writing.
func (w *Writer) writeBatches() {
	for len(w.queue) > 0 {
		batch := w.queue
		w.queue = w.spare[:0]
		w.qmu.Unlock()
		for i, q := range batch {
			switch {
			case w.err != nil:
			case len(q.b) <= stageMax:
				if len(w.stage)+len(q.b) > cap(w.stage) {
					w.flush()
					if w.stage == nil {
						w.stage = make([]byte, 0, stageSize)
					}
				}
				w.stage = append(w.stage, q.b...)
			default:
				w.flush()
				w.writeFile(q.b)
			}
			if q.release != nil {
				q.release()
			}
			batch[i] = queued{}
		}
		w.qmu.Lock()
		w.spare = batch[:0]
	}
}

// flush writes the staged small blobs.
func (w *Writer) flush() {
	if len(w.stage) > 0 {
		w.writeFile(w.stage)
	}
	w.stage = w.stage[:0]
}

func (w *Writer) writeFile(b []byte) {
	if w.err == nil {
		_, w.err = w.file.Write(b)
		w.hash.Write(b)
	}
}

// drain writes every queued blob, waiting for a caller writing some, and
// ends the writing (file mode).
func (w *Writer) drain() {
	if w.file == nil {
		return
	}
	w.qmu.Lock()
	defer w.qmu.Unlock()
	for w.writing {
		w.idle.Wait()
	}
	if w.done {
		return
	}
	w.writing = true
	w.writeBatches()
	w.flush()
	w.writing, w.done = false, true
}

// Discard ends a file writer whose pack will not be stored; the caller then
// removes the file.
func (w *Writer) Discard() { w.drain() }

// Buffer returns the writer's storage for reuse; the writer must not be used
// afterwards.
func (w *Writer) Buffer() []byte {
	b := w.buf
	w.buf = nil
	return b
}

// File returns the file of a file writer.
func (w *Writer) File() *os.File { return w.file }

// write appends b synchronously (the trailer; file mode: after drain).
func (w *Writer) write(b []byte) {
	if w.file == nil {
		w.buf = append(w.buf, b...)
	} else {
		w.writeFile(b)
	}
	w.size += len(b)
}

// Add appends a sealed blob whose storage the writer keeps until it calls
// release, if not nil: at once in memory mode; in file mode once the blob
// is written or copied, by WriteQueued (or by FinishFile or Discard). It never
// blocks. A write error is kept and returned by FinishFile.
func (w *Writer) Add(t repo.BlobType, id repo.ID, sealed []byte, rawLen int, compressed bool, release func()) {
	w.blobs = append(w.blobs, Blob{
		Type: t, ID: id, Compressed: compressed,
		Offset: uint32(w.size), Length: uint32(len(sealed)), RawLength: uint32(rawLen),
	})
	if w.file == nil {
		w.write(sealed)
		if release != nil {
			release()
		}
		return
	}
	w.size += len(sealed)
	w.qmu.Lock()
	defer w.qmu.Unlock()
	if w.done {
		// Nothing would write it, and the header would list it.
		panic("pack: Add after FinishFile or Discard")
	}
	w.queue = append(w.queue, queued{b: sealed, release: release})
}

// Size is the current size of the blobs.
func (w *Writer) Size() int { return w.size }

// Count is the number of blobs.
func (w *Writer) Count() int { return len(w.blobs) }

// Full reports whether the pack is to be finished: it holds packSize bytes
// of blobs, or MaxBlobs blobs (about 400,000 blobs of a few bytes each fill
// a header before they fill 16 MiB).
func (w *Writer) Full(packSize int) bool { return w.size >= packSize || len(w.blobs) >= MaxBlobs }

// Blobs returns the blobs added so far.
func (w *Writer) Blobs() []Blob { return w.blobs }

func (w *Writer) trailer(k *crypto.Key) []byte {
	hdr := make([]byte, 0, len(magic)+len(w.blobs)*entrySize)
	hdr = append(hdr, magic...)
	for _, b := range w.blobs {
		var flags byte
		if b.Compressed {
			flags |= FlagCompressed
		}
		hdr = append(hdr, byte(b.Type), flags)
		hdr = binary.LittleEndian.AppendUint32(hdr, b.Length)
		hdr = binary.LittleEndian.AppendUint32(hdr, b.RawLength)
		hdr = append(hdr, b.ID[:]...)
	}
	sealed := k.Seal(nil, hdr)
	return binary.LittleEndian.AppendUint32(sealed, uint32(len(sealed)))
}

// Finish appends the sealed header and returns the whole pack (memory mode).
func (w *Writer) Finish(k *crypto.Key) []byte {
	w.write(w.trailer(k))
	return w.buf
}

// FinishFile appends the sealed header to the file and returns the pack's ID
// and size (file mode).
func (w *Writer) FinishFile(k *crypto.Key) (repo.ID, int, error) {
	w.drain()
	w.write(w.trailer(k))
	var id repo.ID
	w.hash.Sum(id[:0])
	return id, w.size, w.err
}

// HeaderLength returns the length of the sealed header from a pack's last four bytes.
func HeaderLength(trailer []byte, packSize int64) (int, error) {
	if len(trailer) != 4 {
		return 0, fmt.Errorf("%w: short trailer", ErrInvalid)
	}
	n := int64(binary.LittleEndian.Uint32(trailer))
	if n < crypto.Overhead+int64(len(magic)) || n > MaxHeaderSize || n+4 > packSize {
		return 0, fmt.Errorf("%w: header length %d out of range for pack of %d bytes", ErrInvalid, n, packSize)
	}
	return int(n), nil
}

// DecodeHeader opens and parses a sealed header. packSize is the whole pack's
// size; every blob must lie before the header.
func DecodeHeader(k *crypto.Key, sealed []byte, packSize int64) ([]Blob, error) {
	hdr, err := k.Open(nil, sealed)
	if err != nil {
		return nil, fmt.Errorf("pack header: %w", err)
	}
	return ParseHeader(hdr, packSize-int64(len(sealed))-4)
}

// ParseHeader parses a plaintext header; dataEnd is where the blobs must end.
func ParseHeader(hdr []byte, dataEnd int64) ([]Blob, error) {
	if len(hdr) < len(magic) || string(hdr[:len(magic)]) != magic {
		return nil, fmt.Errorf("%w: bad header magic", ErrInvalid)
	}
	hdr = hdr[len(magic):]
	if len(hdr)%entrySize != 0 {
		return nil, fmt.Errorf("%w: header length %d is not a whole number of entries", ErrInvalid, len(hdr))
	}
	blobs := make([]Blob, 0, len(hdr)/entrySize)
	var off int64
	for len(hdr) > 0 {
		b := Blob{Type: repo.BlobType(hdr[0]), Compressed: hdr[1]&FlagCompressed != 0}
		if b.Type != repo.DataBlob && b.Type != repo.TreeBlob {
			return nil, fmt.Errorf("%w: unknown blob type %d", ErrInvalid, hdr[0])
		}
		if hdr[1]&^FlagCompressed != 0 {
			return nil, fmt.Errorf("%w: unknown blob flags %#x", ErrInvalid, hdr[1])
		}
		b.Length = binary.LittleEndian.Uint32(hdr[2:])
		b.RawLength = binary.LittleEndian.Uint32(hdr[6:])
		copy(b.ID[:], hdr[10:10+repo.IDSize])
		if b.Length < crypto.Overhead || b.Length > MaxBlobSize || b.RawLength > MaxBlobSize {
			return nil, fmt.Errorf("%w: blob %s has length %d", ErrInvalid, b.ID.Short(), b.Length)
		}
		if off > math.MaxUint32 {
			return nil, fmt.Errorf("%w: blob offset %d does not fit 32 bits", ErrInvalid, off)
		}
		b.Offset = uint32(off)
		off += int64(b.Length)
		if off > dataEnd {
			return nil, fmt.Errorf("%w: blobs extend past the header", ErrInvalid)
		}
		blobs = append(blobs, b)
		hdr = hdr[entrySize:]
	}
	if off != dataEnd {
		return nil, fmt.Errorf("%w: %d bytes between the last blob and the header", ErrInvalid, dataEnd-off)
	}
	return blobs, nil
}

// ExpectedSize is the size of a pack holding exactly these blobs.
func ExpectedSize(blobs []Blob) int64 {
	var end int64
	for _, b := range blobs {
		if e := int64(b.Offset) + int64(b.Length); e > end {
			end = e
		}
	}
	return end + crypto.Overhead + 4 + int64(len(blobs))*(2+8+repo.IDSize) + 4
}
