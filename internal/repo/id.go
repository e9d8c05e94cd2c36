// Package repo holds the repository's shared vocabulary: IDs, blob types and the
// small role interfaces that the pipelines (archiver, restorer, checker) use.
package repo

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
)

// IDSize is the length of an ID in bytes.
const IDSize = 32

// ID names a blob (keyed BLAKE3 of its plaintext) or a stored file (BLAKE3 of
// its stored bytes, unkeyed, so anyone can verify a file against its name).
type ID [IDSize]byte

// String returns the lowercase hex form.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first 8 hex digits, for display.
func (id ID) Short() string { return hex.EncodeToString(id[:4]) }

// IsNull reports whether id is the zero ID.
func (id ID) IsNull() bool { return id == ID{} }

// ErrInvalidID is returned for a string that is not a 64-digit hex ID.
var ErrInvalidID = errors.New("invalid ID")

// ErrBlobTooLarge is returned by a repository for a blob it cannot store:
// over 64 MiB, the most a pack header or index may name. A tree this large
// is a directory of several hundred thousand entries or a file of some 2 TB.
var ErrBlobTooLarge = errors.New("larger than a blob may be (64 MiB; a tree this large is a directory of several hundred thousand entries or a file of some 2 TB)")

// ParseID parses a full 64-digit hex ID.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 2*IDSize {
		return id, fmt.Errorf("%w: %q", ErrInvalidID, s)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("%w: %q", ErrInvalidID, s)
	}
	return id, nil
}

// MarshalText implements encoding.TextMarshaler.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (id *ID) UnmarshalText(b []byte) error {
	v, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// BlobType says what a blob holds.
type BlobType uint8

// Blob types.
const (
	DataBlob BlobType = 1
	TreeBlob BlobType = 2
)

func (t BlobType) String() string {
	switch t {
	case DataBlob:
		return "data"
	case TreeBlob:
		return "tree"
	}
	return fmt.Sprintf("blobtype(%d)", uint8(t))
}

// BlobHandle names a blob together with its type.
type BlobHandle struct {
	ID   ID
	Type BlobType
}

// PackedBlob describes one blob as stored in a pack.
type PackedBlob struct {
	Type       BlobType
	ID         ID
	Compressed bool
	Offset     uint32
	Length     uint32 // stored (sealed) length
	RawLength  uint32 // plaintext length
}

// Handle returns the blob's handle.
func (b PackedBlob) Handle() BlobHandle { return BlobHandle{ID: b.ID, Type: b.Type} }

// Location says where a blob is stored.
type Location struct {
	Pack       ID
	Offset     uint32
	Length     uint32
	RawLength  uint32
	Compressed bool
}

// Chunker splits a stream into content-defined chunks; see repo/chunker.
type Chunker interface {
	// Next returns the next chunk, valid until the next call, or io.EOF.
	Next() ([]byte, error)
	// Reset starts over on a new stream.
	Reset(rd io.Reader)
	// OnOverwrite sets a function that the chunker calls with n before it
	// overwrites a chunk it has returned: it must return once the first n
	// chunks returned since Reset are no longer in use.
	OnOverwrite(fn func(n int))
}
