//go:build cgo

package repository

import (
	"runtime"
	"sync"

	"github.com/DataDog/zstd"
)

// cEncoder compresses data blobs with libzstd, the reference C
// implementation (bundled by github.com/DataDog/zstd): measured on this
// project's dataset it compresses 1.6x faster than the pure-Go encoder at
// the same level, and a little smaller. The output is ordinary zstd frames,
// which the pure-Go decoder reads back on restore (FuzzBlobEncoder holds the
// two to that). Builds without cgo use the pure-Go encoder (zstd_nocgo.go).
type cEncoder struct {
	level int
	// ctxs holds the idle compression contexts. They are C memory (a few
	// MiB each) that the Go collector does not see: kept, not pooled in a
	// sync.Pool that drops them at each collection to be freed only by
	// finalizers, and at most maxCtx of them.
	ctxs   chan zstd.Ctx
	mu     sync.Mutex
	made   int
	maxCtx int
	// largeLevel is the level for inputs over largeInput bytes.
	largeLevel int
}

// largeInput is the input size above which libzstd's level 3 sizes its
// match tables for the whole 2 MiB window (768 KiB, more than a core's L2
// cache) where level 2 uses half of that and a 1 MiB window. Measured on
// the bench's 1-2 MiB chunks of a log and a disk image: level 2 took about
// a third less time for 1.5% more output, a seventh of a first backup's CPU
// time for 0.2% of its repository. Up to largeInput zstd scales both
// levels' tables down to the input, and level 3 costs little more for 1%
// less output on small files.
const largeInput = 256 << 10

func newBlobEncoder(c Compression) blobEncoder {
	level, largeLevel := 3, 2 // the default
	switch c {
	case CompressionFastest:
		level, largeLevel = 1, 1
	case CompressionMax:
		// libzstd's high levels use match windows over 2 MiB (format §7).
		return newGoEncoder(c)
	}
	n := runtime.GOMAXPROCS(0) // as many as can run at once
	return &cEncoder{level: level, largeLevel: largeLevel, ctxs: make(chan zstd.Ctx, n), maxCtx: n}
}

func (e *cEncoder) get() zstd.Ctx {
	select {
	case c := <-e.ctxs:
		return c
	default:
	}
	e.mu.Lock()
	if e.made < e.maxCtx {
		e.made++
		e.mu.Unlock()
		return zstd.NewCtx()
	}
	e.mu.Unlock()
	return <-e.ctxs
}

// decode decompresses one frame into dst's storage, never beyond its
// capacity, for the check of a blob just encoded (libzstd decodes 1.1 to 2.4
// times as fast as the pure-Go decoder on this project's data).
func (e *cEncoder) decode(dst, frame []byte) ([]byte, error) {
	ctx := e.get()
	defer func() { e.ctxs <- ctx }()
	if cap(dst) == 0 {
		return dst[:0], nil
	}
	n, err := ctx.DecompressInto(dst[:cap(dst)], frame)
	if err != nil {
		return dst[:0], err
	}
	return dst[:n], nil
}

// encode compresses src into dst's storage; ok is false when it failed
// (the blob is then stored uncompressed).
func (e *cEncoder) encode(dst, src []byte) ([]byte, bool) {
	ctx := e.get()
	defer func() { e.ctxs <- ctx }()
	level := e.level
	if len(src) > largeInput {
		level = e.largeLevel
	}
	out, err := ctx.CompressLevel(dst[:0], src, level)
	if err != nil {
		return dst[:0], false
	}
	return out, true
}
