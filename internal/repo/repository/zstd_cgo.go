//go:build cgo

package repository

/*
#include <stddef.h>

// The few functions of libzstd's stable API that github.com/DataDog/zstd
// compiles into the binary but does not wrap: a compression context whose
// parameters are set one by one (zstd.h, "Advanced compression API", stable
// since libzstd 1.4.0, parameter numbers fixed by it).
typedef struct ZSTD_CCtx_s ZSTD_CCtx;
ZSTD_CCtx *ZSTD_createCCtx(void);
size_t ZSTD_freeCCtx(ZSTD_CCtx *cctx);
size_t ZSTD_CCtx_setParameter(ZSTD_CCtx *cctx, int param, int value);
size_t ZSTD_compress2(ZSTD_CCtx *cctx, void *dst, size_t dstCapacity, const void *src, size_t srcSize);
unsigned ZSTD_isError(size_t code);
*/
import "C"

import (
	"runtime"
	"sync"
	"unsafe"

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
	large []cParam // parameters for inputs over largeInput bytes
	// ctxs holds the idle contexts. They are C memory (a few MiB each)
	// that the Go collector does not see: kept, not pooled in a sync.Pool
	// that drops them at each collection to be freed only by finalizers,
	// and at most maxCtx of them.
	ctxs   chan *cCtx
	mu     sync.Mutex
	made   int
	maxCtx int
}

// cCtx is one worker's pair of contexts: one for small inputs (and
// decoding), one for large ones, so that neither's workspace is resized
// back and forth between the two kinds of input.
type cCtx struct {
	small zstd.Ctx
	large *largeCtx
}

// largeCtx is made on first use; a cleanup frees it with its cCtx.
type largeCtx struct{ cc *C.ZSTD_CCtx }

type cParam struct{ param, value C.int }

// libzstd's parameter numbers (ZSTD_cParameter in zstd.h) and the value
// of its "double fast" strategy (ZSTD_dfast).
const (
	zLevel     = 100
	zWindowLog = 101
	zHashLog   = 102
	zChainLog  = 103
	zMinMatch  = 105
	zStrategy  = 107
	zDfast     = 2
)

// largeInput is the input size above which the default compression uses
// largeParams. Up to it, libzstd scales level 3's match tables down to the
// input, and level 3 is used as it is.
const largeInput = 256 << 10

// largeParams: above 256 KiB libzstd's level 3 sizes its two match tables
// for the whole 2 MiB window (512 and 256 KiB, more than a core's L2 cache
// once the other buffers are counted), and level 2 switches to a single
// table and a simpler search. This is level 3's search ("double fast") with
// the tables cut to 256 and 32 KiB. Measured on the bench's log and disk
// image cut in 1 MiB blocks, two compressions at a time (zstd -b): level 3
// 238.19 MB at 357 MB/s each, these 238.26 MB at 413 MB/s, level 2
// 239.67 MB at 478 MB/s. These keep 95% of level 3's gain over level 2 for
// less than half of its cost.
var largeParams = []cParam{{zStrategy, zDfast}, {zWindowLog, 21}, {zChainLog, 13}, {zHashLog, 16}, {zMinMatch, 5}}

func newBlobEncoder(c Compression) blobEncoder {
	level, large := 3, largeParams
	switch c {
	case CompressionFastest:
		level, large = 1, []cParam{{zLevel, 1}}
	case CompressionMax:
		// libzstd's high levels use match windows over 2 MiB (format §7).
		return newGoEncoder(c)
	}
	n := runtime.GOMAXPROCS(0) // as many as can run at once
	return &cEncoder{level: level, large: large, ctxs: make(chan *cCtx, n), maxCtx: n}
}

func (e *cEncoder) get() *cCtx {
	select {
	case c := <-e.ctxs:
		return c
	default:
	}
	e.mu.Lock()
	if e.made < e.maxCtx {
		e.made++
		e.mu.Unlock()
		c := &cCtx{small: zstd.NewCtx(), large: new(largeCtx)}
		runtime.AddCleanup(c, func(l *largeCtx) {
			if l.cc != nil {
				C.ZSTD_freeCCtx(l.cc)
			}
		}, c.large)
		return c
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
	n, err := ctx.small.DecompressInto(dst[:cap(dst)], frame)
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
	if len(src) <= largeInput {
		out, err := ctx.small.CompressLevel(dst[:0], src, e.level)
		if err != nil {
			return dst[:0], false
		}
		return out, true
	}
	if ctx.large.cc == nil {
		cc := C.ZSTD_createCCtx()
		if cc == nil {
			return dst[:0], false
		}
		for _, p := range e.large {
			if C.ZSTD_isError(C.ZSTD_CCtx_setParameter(cc, p.param, p.value)) != 0 {
				C.ZSTD_freeCCtx(cc)
				return dst[:0], false
			}
		}
		ctx.large.cc = cc
	}
	if b := compressBound(len(src)); cap(dst) < b {
		dst = make([]byte, 0, b)
	}
	n := C.ZSTD_compress2(ctx.large.cc, unsafe.Pointer(unsafe.SliceData(dst[:cap(dst)])), C.size_t(cap(dst)),
		unsafe.Pointer(unsafe.SliceData(src)), C.size_t(len(src)))
	if C.ZSTD_isError(n) != 0 {
		return dst[:0], false
	}
	return dst[:n], true
}
