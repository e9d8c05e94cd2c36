package mem

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"bunker/internal/backend"
)

// ErrInvalidHandle is returned (wrapped) for a handle that cannot name a file.
var ErrInvalidHandle = backend.ErrInvalidHandle

// Backend stores files in a map. It is safe for concurrent use.
type Backend struct {
	mu    sync.RWMutex
	files map[backend.Handle]file
}

type file struct {
	data []byte
	mod  time.Time
}

var _ backend.Backend = (*Backend)(nil)

// New returns an empty in-memory backend.
func New() *Backend {
	return &Backend{files: make(map[backend.Handle]file)}
}

// checkHandle applies the rules every backend shares.
func checkHandle(h backend.Handle) error { return backend.CheckHandle(h) }

func validType(t backend.FileType) bool {
	for _, v := range backend.AllTypes {
		if v == t {
			return true
		}
	}
	return false
}

// Location returns "mem:".
func (b *Backend) Location() string { return "mem:" }

// Properties reports the backend's capabilities.
func (b *Backend) Properties() backend.Properties {
	return backend.Properties{Connections: 8}
}

// Close does nothing; the files stay until the Backend is garbage.
func (b *Backend) Close() error { return nil }

// Save stores a copy of data under h unless h exists.
func (b *Backend) Save(ctx context.Context, h backend.Handle, data []byte) error {
	if err := checkHandle(h); err != nil {
		return fmt.Errorf("save %v: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("save %v: %w", h, err)
	}
	buf := bytes.Clone(data)
	if buf == nil {
		buf = []byte{}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.files[h]; ok {
		return fmt.Errorf("save %v: %w", h, backend.ErrExists)
	}
	b.files[h] = file{data: buf, mod: time.Now()}
	return nil
}

// Load calls fn with a reader over a copy of the requested range of h.
func (b *Backend) Load(ctx context.Context, h backend.Handle, length int, offset int64, fn func(rd io.Reader) error) error {
	if err := checkHandle(h); err != nil {
		return fmt.Errorf("load %v: %w", h, err)
	}
	if length < 0 || offset < 0 {
		return fmt.Errorf("load %v: negative length %d or offset %d", h, length, offset)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("load %v: %w", h, err)
	}
	b.mu.RLock()
	f, ok := b.files[h]
	data := f.data
	if !ok {
		b.mu.RUnlock()
		return fmt.Errorf("load %v: %w", h, backend.ErrNotExist)
	}
	size := int64(len(data))
	n := int64(length)
	if length == 0 {
		n = size - offset
	}
	if offset > size || n > size-offset {
		b.mu.RUnlock()
		return fmt.Errorf("load %v: %d bytes at offset %d of a %d-byte file: %w",
			h, n, offset, size, io.ErrUnexpectedEOF)
	}
	buf := bytes.Clone(data[offset : offset+n])
	b.mu.RUnlock()
	return fn(bytes.NewReader(buf))
}

// Stat returns the size of h.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	if err := checkHandle(h); err != nil {
		return backend.FileInfo{}, fmt.Errorf("stat %v: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return backend.FileInfo{}, fmt.Errorf("stat %v: %w", h, err)
	}
	b.mu.RLock()
	f, ok := b.files[h]
	b.mu.RUnlock()
	if !ok {
		return backend.FileInfo{}, fmt.Errorf("stat %v: %w", h, backend.ErrNotExist)
	}
	return backend.FileInfo{Name: h.Name, Size: int64(len(f.data)), ModTime: f.mod}, nil
}

// Remove deletes h.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	if err := checkHandle(h); err != nil {
		return fmt.Errorf("remove %v: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("remove %v: %w", h, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.files[h]; !ok {
		return fmt.Errorf("remove %v: %w", h, backend.ErrNotExist)
	}
	delete(b.files, h)
	return nil
}

// List calls fn for each file of type t. It works on a snapshot of the names
// taken under the lock, so fn may call back into the backend.
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	if !validType(t) {
		return fmt.Errorf("list %v: %w: unknown file type %d", t, ErrInvalidHandle, int(t))
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %v: %w", t, err)
	}
	var infos []backend.FileInfo
	b.mu.RLock()
	for h, f := range b.files {
		if h.Type == t {
			infos = append(infos, backend.FileInfo{Name: h.Name, Size: int64(len(f.data)), ModTime: f.mod})
		}
	}
	b.mu.RUnlock()
	for _, fi := range infos {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("list %v: %w", t, err)
		}
		if err := fn(fi); err != nil {
			return err
		}
	}
	return nil
}
