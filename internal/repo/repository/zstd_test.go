package repository

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// Whatever the encoder (libzstd or pure Go) and level, a data blob is one
// zstd frame without checksum whose window is at most 2 MiB (format §7), and
// the pure-Go decoder reads it back.
func TestBlobEncoderFrames(t *testing.T) {
	var text bytes.Buffer
	for i := 0; text.Len() < 8<<20; i++ {
		fmt.Fprintf(&text, "%d GET /api/v1/items/%d 200 %dms user=%d\n", i, i*7919%100003, i%97, i%1013)
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	for _, c := range []Compression{CompressionAuto, CompressionFastest, CompressionMax} {
		enc := newBlobEncoder(c)
		for _, n := range []int{100, 64 << 10, 1 << 20, 8 << 20} {
			src := text.Bytes()[:n]
			out, ok := enc.encode(nil, src)
			if !ok || len(out) >= n {
				t.Fatalf("compression %v, %d bytes: ok=%v, %d bytes out", c, n, ok, len(out))
			}
			var h zstd.Header
			if err := h.Decode(out); err != nil {
				t.Fatal(err)
			}
			if h.HasCheckSum || h.WindowSize > encoderWindow {
				t.Errorf("compression %v, %d bytes: checksum %v, window %d", c, n, h.HasCheckSum, h.WindowSize)
			}
			back, err := dec.DecodeAll(out, nil)
			if err != nil || !bytes.Equal(back, src) {
				t.Fatalf("compression %v, %d bytes: decode: %v", c, n, err)
			}
		}
	}
}
