package fault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"

	"bunker/internal/backend"
)

// ErrInjected is the error of injected failures for which Rules name none.
var ErrInjected = errors.New("fault: injected failure")

// Select picks the calls a fault applies to. The zero Select picks nothing.
type Select struct {
	// Match accepts the handles the fault may apply to; nil accepts none.
	Match func(backend.Handle) bool
	// Nth, if positive, restricts the fault to the Nth call (1-based) that
	// Match accepted; the fault then fires at most once.
	Nth int
	// Prob, if positive, makes each otherwise picked call fire with this
	// probability, drawn from the seeded source.
	Prob float64
}

// Any matches every handle.
func Any(backend.Handle) bool { return true }

// OfType matches the handles of type t.
func OfType(t backend.FileType) func(backend.Handle) bool {
	return func(h backend.Handle) bool { return h.Type == t }
}

// Is matches exactly h.
func Is(h backend.Handle) func(backend.Handle) bool {
	return func(x backend.Handle) bool { return x == h }
}

// Rules configure the faults. A Save picked by several faults gets the first
// of FailSave, DropSave, TruncateSave; a Load picked by both gets FailLoad.
type Rules struct {
	// Seed seeds the random source behind every Prob and every flipped bit.
	Seed uint64

	// FailSave makes the picked Saves return SaveErr (ErrInjected if nil)
	// without storing anything.
	FailSave Select
	SaveErr  error

	// DropSave makes the picked Saves return nil without storing anything:
	// an upload acknowledged but lost.
	DropSave Select

	// TruncateSave makes the picked Saves store only the first TruncateTo
	// bytes of their data (all of it if TruncateTo is negative), and return nil.
	TruncateSave Select
	TruncateTo   int

	// FailLoad makes the picked Loads return LoadErr (ErrInjected if nil)
	// without calling fn.
	FailLoad Select
	LoadErr  error

	// CorruptLoad flips one random bit of the data the picked Loads hand to
	// fn. The stored file is not changed.
	CorruptLoad Select

	// Hooks run before each operation, before any other fault is considered.
	// A non-nil error is returned (as is) instead of doing the operation.
	// They may be called concurrently.
	BeforeSave   func(h backend.Handle, data []byte) error
	BeforeLoad   func(h backend.Handle, length int, offset int64) error
	BeforeStat   func(h backend.Handle) error
	BeforeRemove func(h backend.Handle) error
	BeforeList   func(t backend.FileType) error

	// HideInList leaves the files it returns true for out of List, as a
	// storage whose listings lag behind its writes does (RELIABILITY C3).
	// Load and Stat still see them.
	HideInList func(t backend.FileType, fi backend.FileInfo) bool
}

// Backend is a fault-injecting decorator of another Backend. It is safe for
// concurrent use.
type Backend struct {
	inner backend.Backend

	mu       sync.Mutex
	rules    Rules
	rng      *rand.Rand
	counts   [5]int // calls accepted by Match, per Select, in Rules order
	injected int
}

var _ backend.Backend = (*Backend)(nil)

// New wraps inner with no faults configured; see SetRules.
func New(inner backend.Backend) *Backend {
	b := &Backend{inner: inner}
	b.SetRules(Rules{})
	return b
}

// SetRules replaces the rules, resets the call counters and reseeds the
// random source.
func (b *Backend) SetRules(r Rules) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rules = r
	b.rng = rand.New(rand.NewPCG(r.Seed, 0x9e3779b97f4a7c15))
	b.counts = [5]int{}
}

// Injected returns how many faults (not counting hook errors) have fired.
func (b *Backend) Injected() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.injected
}

// Inner returns the wrapped backend, to inspect what was really stored.
func (b *Backend) Inner() backend.Backend { return b.inner }

// hooks returns a copy of the rules, for their hooks.
func (b *Backend) hooks() Rules {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rules
}

// pick reports whether s picks a call on h, advancing *count. b.mu is held.
func (b *Backend) pick(s *Select, count *int, h backend.Handle) bool {
	if s.Match == nil || !s.Match(h) {
		return false
	}
	*count++
	if s.Nth > 0 && *count != s.Nth {
		return false
	}
	if s.Prob > 0 && b.rng.Float64() >= s.Prob {
		return false
	}
	return true
}

// Location names the wrapped backend.
func (b *Backend) Location() string { return "fault:" + b.inner.Location() }

// Properties are the wrapped backend's.
func (b *Backend) Properties() backend.Properties { return b.inner.Properties() }

// Close closes the wrapped backend.
func (b *Backend) Close() error { return b.inner.Close() }

// Save stores data in the wrapped backend unless a fault says otherwise.
func (b *Backend) Save(ctx context.Context, h backend.Handle, data []byte) error {
	if hook := b.hooks().BeforeSave; hook != nil {
		if err := hook(h, data); err != nil {
			return err
		}
	}
	b.mu.Lock()
	r := &b.rules
	fail := b.pick(&r.FailSave, &b.counts[0], h)
	drop := b.pick(&r.DropSave, &b.counts[1], h)
	trunc := b.pick(&r.TruncateSave, &b.counts[2], h)
	saveErr, truncTo := r.SaveErr, r.TruncateTo
	if fail || drop || trunc {
		b.injected++
	}
	b.mu.Unlock()

	switch {
	case fail:
		if saveErr == nil {
			saveErr = ErrInjected
		}
		return fmt.Errorf("save %v: %w", h, saveErr)
	case drop:
		return nil
	case trunc:
		if truncTo >= 0 && truncTo < len(data) {
			data = data[:truncTo]
		}
	}
	return b.inner.Save(ctx, h, data)
}

// Load reads from the wrapped backend unless a fault says otherwise.
func (b *Backend) Load(ctx context.Context, h backend.Handle, length int, offset int64, fn func(rd io.Reader) error) error {
	if hook := b.hooks().BeforeLoad; hook != nil {
		if err := hook(h, length, offset); err != nil {
			return err
		}
	}
	b.mu.Lock()
	r := &b.rules
	fail := b.pick(&r.FailLoad, &b.counts[3], h)
	corrupt := b.pick(&r.CorruptLoad, &b.counts[4], h)
	loadErr := r.LoadErr
	if fail || corrupt {
		b.injected++
	}
	b.mu.Unlock()

	if fail {
		if loadErr == nil {
			loadErr = ErrInjected
		}
		return fmt.Errorf("load %v: %w", h, loadErr)
	}
	if !corrupt {
		return b.inner.Load(ctx, h, length, offset, fn)
	}
	return b.inner.Load(ctx, h, length, offset, func(rd io.Reader) error {
		buf, err := io.ReadAll(rd)
		if err != nil {
			return err
		}
		if len(buf) > 0 {
			b.mu.Lock()
			bit := b.rng.IntN(len(buf) * 8)
			b.mu.Unlock()
			buf[bit/8] ^= 1 << (bit % 8)
		}
		return fn(bytes.NewReader(buf))
	})
}

// Stat asks the wrapped backend after the BeforeStat hook.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	if hook := b.hooks().BeforeStat; hook != nil {
		if err := hook(h); err != nil {
			return backend.FileInfo{}, err
		}
	}
	return b.inner.Stat(ctx, h)
}

// Remove removes from the wrapped backend after the BeforeRemove hook.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	if hook := b.hooks().BeforeRemove; hook != nil {
		if err := hook(h); err != nil {
			return err
		}
	}
	return b.inner.Remove(ctx, h)
}

// List lists the wrapped backend after the BeforeList hook.
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	if hook := b.hooks().BeforeList; hook != nil {
		if err := hook(t); err != nil {
			return err
		}
	}
	hide := b.hooks().HideInList
	if hide == nil {
		return b.inner.List(ctx, t, fn)
	}
	return b.inner.List(ctx, t, func(fi backend.FileInfo) error {
		if hide(t, fi) {
			return nil
		}
		return fn(fi)
	})
}
