// Package limit wraps a Backend with bandwidth limits (bytes per second up
// and down, token buckets from golang.org/x/time/rate) and a bound on the
// operations in flight.
package limit

import (
	"context"
	"io"

	"golang.org/x/time/rate"

	"bunker/internal/backend"
)

// Options are the limits; zero means unlimited.
type Options struct {
	Upload, Download int64 // bytes per second
	Connections      int   // operations at once
}

// Backend is a limited Backend.
type Backend struct {
	inner    backend.Backend
	up, down *rate.Limiter
	sem      chan struct{}
}

var _ backend.Backend = (*Backend)(nil)

const burst = 256 << 10

// Wrap returns be with the limits applied (be itself if there are none).
func Wrap(be backend.Backend, o Options) backend.Backend {
	if o.Upload <= 0 && o.Download <= 0 && o.Connections <= 0 {
		return be
	}
	b := &Backend{inner: be}
	if o.Upload > 0 {
		b.up = rate.NewLimiter(rate.Limit(o.Upload), burst)
	}
	if o.Download > 0 {
		b.down = rate.NewLimiter(rate.Limit(o.Download), burst)
	}
	if o.Connections > 0 {
		b.sem = make(chan struct{}, o.Connections)
	}
	return b
}

func (b *Backend) acquire(ctx context.Context) (func(), error) {
	if b.sem == nil {
		return func() {}, nil
	}
	select {
	case b.sem <- struct{}{}:
		return func() { <-b.sem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// wait takes n bytes' worth of tokens, a burst at a time.
func wait(ctx context.Context, l *rate.Limiter, n int) error {
	if l == nil {
		return nil
	}
	for n > 0 {
		k := min(n, burst)
		if err := l.WaitN(ctx, k); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// Location returns the wrapped backend's.
func (b *Backend) Location() string { return b.inner.Location() }

// Properties returns the wrapped backend's, with Connections bounded.
func (b *Backend) Properties() backend.Properties {
	p := b.inner.Properties()
	if b.sem != nil && (p.Connections == 0 || p.Connections > cap(b.sem)) {
		p.Connections = cap(b.sem)
	}
	return p
}

// Close closes the wrapped backend.
func (b *Backend) Close() error { return b.inner.Close() }

// Save stores data at the upload rate.
func (b *Backend) Save(ctx context.Context, h backend.Handle, data []byte) error {
	release, err := b.acquire(ctx)
	if err != nil {
		return err
	}
	defer release()
	if err := wait(ctx, b.up, len(data)); err != nil {
		return err
	}
	return b.inner.Save(ctx, h, data)
}

// Load reads at the download rate.
func (b *Backend) Load(ctx context.Context, h backend.Handle, length int, offset int64, fn func(rd io.Reader) error) error {
	release, err := b.acquire(ctx)
	if err != nil {
		return err
	}
	defer release()
	return b.inner.Load(ctx, h, length, offset, func(rd io.Reader) error {
		if b.down != nil {
			rd = &reader{ctx: ctx, r: rd, l: b.down}
		}
		return fn(rd)
	})
}

type reader struct {
	ctx context.Context
	r   io.Reader
	l   *rate.Limiter
}

func (r *reader) Read(p []byte) (int, error) {
	if len(p) > burst {
		p = p[:burst]
	}
	n, err := r.r.Read(p)
	if werr := wait(r.ctx, r.l, n); werr != nil && err == nil {
		err = werr
	}
	return n, err
}

// Stat asks the wrapped backend.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	release, err := b.acquire(ctx)
	if err != nil {
		return backend.FileInfo{}, err
	}
	defer release()
	return b.inner.Stat(ctx, h)
}

// Remove asks the wrapped backend.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	release, err := b.acquire(ctx)
	if err != nil {
		return err
	}
	defer release()
	return b.inner.Remove(ctx, h)
}

// List asks the wrapped backend. The listing is collected first, so that
// fn may call the backend without waiting for the slot List holds.
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	release, err := b.acquire(ctx)
	if err != nil {
		return err
	}
	var infos []backend.FileInfo
	err = b.inner.List(ctx, t, func(fi backend.FileInfo) error {
		infos = append(infos, fi)
		return nil
	})
	release()
	if err != nil {
		return err
	}
	for _, fi := range infos {
		if err := fn(fi); err != nil {
			return err
		}
	}
	return nil
}

// Unwrap returns the wrapped backend (for its optional interfaces).
func (b *Backend) Unwrap() backend.Backend { return b.inner }
