//go:build !cgo

package repository

import (
	"runtime"

	"github.com/klauspost/compress/zstd"
)

// blobEncoder compresses data blobs with the pure-Go encoder (builds
// without cgo; see zstd_cgo.go).
type blobEncoder struct {
	enc *zstd.Encoder
}

func newBlobEncoder(c Compression) *blobEncoder {
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
	return &blobEncoder{enc: enc}
}

func (e *blobEncoder) encode(dst, src []byte) ([]byte, bool) {
	return e.enc.EncodeAll(src, dst[:0]), true
}
