package repository

import (
	"runtime"

	"github.com/klauspost/compress/zstd"
)

// blobEncoder compresses data blobs into one zstd frame each (format §7:
// no frame checksum, a match window of at most 2 MiB). ok is false when it
// failed; the blob is then stored uncompressed.
type blobEncoder interface {
	encode(dst, src []byte) (out []byte, ok bool)
}

// goEncoder is klauspost's pure-Go encoder.
type goEncoder struct{ enc *zstd.Encoder }

func newGoEncoder(c Compression) goEncoder {
	level := zstd.SpeedDefault
	switch c {
	case CompressionFastest:
		level = zstd.SpeedFastest
	case CompressionMax:
		level = zstd.SpeedBestCompression
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithZeroFrames(true),
		zstd.WithWindowSize(encoderWindow), zstd.WithEncoderCRC(false))
	if err != nil {
		panic(err) // only for invalid options, which these are not
	}
	return goEncoder{enc: enc}
}

func (e goEncoder) encode(dst, src []byte) ([]byte, bool) {
	return e.enc.EncodeAll(src, dst[:0]), true
}

// compressBound is at least the largest zstd frame of n bytes (libzstd's
// ZSTD_COMPRESSBOUND, rounded up): an encoder given that much room never
// allocates.
func compressBound(n int) int { return n + n>>8 + 64 }
