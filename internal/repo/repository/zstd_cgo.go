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
	small []cParam // parameters for inputs up to largeInput bytes
	large []cParam // and for larger ones
	// ctxs holds the idle contexts. They are C memory (over 1 MiB each)
	// that the Go collector does not see: kept, not pooled in a sync.Pool
	// that drops them at each collection to be freed only by finalizers,
	// and at most maxCtx of them.
	ctxs   chan *cCtx
	mu     sync.Mutex
	made   int
	maxCtx int
}

// cCtx is one worker's contexts: a compression context for small inputs and
// one for large ones, so that neither's workspace is resized back and forth
// between the two kinds of input, and a decoding context.
type cCtx struct {
	dec          zstd.Ctx
	small, large *rawCtx
}

// rawCtx is a libzstd compression context, made on first use with its
// parameters set once; a cleanup frees it with its cCtx.
type rawCtx struct{ cc *C.ZSTD_CCtx }

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
// largeParams rather than smallParams.
const largeInput = 256 << 10

// smallParams: level 3's search ("double fast") with match tables of 32 and
// 16 KiB and a minimum match of 5. Level 3's tables take 192 KiB for inputs
// up to 16 KiB, 384 KiB up to 128 KiB and 512 KiB up to 256 KiB, and its
// minimum match is 4 below 16 KiB and above 128 KiB. In a backup one
// context serves small files on both cores between other work (reading,
// BLAKE3, AES, large blobs), so its tables are cold at every file, and
// level 3 took 1.8 times as long per byte as in a loop over the same files.
// libzstd cuts the tables further for inputs up to 2 KiB. Measured on the
// bench's 38,882 files up to 256 KiB (228 MB): in a loop, level 3 104.85 MB
// at 286-297 MB/s, these 105.12 MB at 319 MB/s; backing up those files
// alone, interleaved, 2.99 s of CPU time against level 3's 3.36 s (three
// runs each).
var smallParams = []cParam{{zStrategy, zDfast}, {zWindowLog, 18}, {zChainLog, 12}, {zHashLog, 13}, {zMinMatch, 5}}

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
	small, large := smallParams, largeParams
	switch c {
	case CompressionFastest:
		small = []cParam{{zLevel, 1}}
		large = small
	case CompressionMax:
		// libzstd's high levels use match windows over 2 MiB (format §7).
		return newGoEncoder(c)
	}
	n := runtime.GOMAXPROCS(0) // as many as can run at once
	return &cEncoder{small: small, large: large, ctxs: make(chan *cCtx, n), maxCtx: n}
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
		c := &cCtx{dec: zstd.NewCtx(), small: new(rawCtx), large: new(rawCtx)}
		runtime.AddCleanup(c, func(raw [2]*rawCtx) {
			for _, r := range raw {
				if r.cc != nil {
					C.ZSTD_freeCCtx(r.cc)
				}
			}
		}, [2]*rawCtx{c.small, c.large})
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
	n, err := ctx.dec.DecompressInto(dst[:cap(dst)], frame)
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
	rc, params := ctx.small, e.small
	if len(src) > largeInput {
		rc, params = ctx.large, e.large
	}
	if rc.cc == nil {
		cc := C.ZSTD_createCCtx()
		if cc == nil {
			return dst[:0], false
		}
		for _, p := range params {
			if C.ZSTD_isError(C.ZSTD_CCtx_setParameter(cc, p.param, p.value)) != 0 {
				C.ZSTD_freeCCtx(cc)
				return dst[:0], false
			}
		}
		rc.cc = cc
	}
	if b := compressBound(len(src)); cap(dst) < b {
		dst = make([]byte, 0, b)
	}
	n := C.ZSTD_compress2(rc.cc, unsafe.Pointer(unsafe.SliceData(dst[:cap(dst)])), C.size_t(cap(dst)),
		unsafe.Pointer(unsafe.SliceData(src)), C.size_t(len(src)))
	if C.ZSTD_isError(n) != 0 {
		return dst[:0], false
	}
	return dst[:n], true
}
