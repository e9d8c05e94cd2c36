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

// FuzzBlobEncoder: whatever a blob holds, the frame the backup's encoder
// writes decodes to it with the pure-Go decoder that restore uses, and with
// the decoder the backup checks it with; that check never writes past its
// buffer and fails when the buffer is too small.
func FuzzBlobEncoder(f *testing.F) {
	f.Add([]byte("hello, hello, hello, hello"))
	f.Add(bytes.Repeat([]byte{0}, 100<<10))
	f.Add(bytes.Repeat([]byte("0123456789abcdef"), 4096))
	f.Add(bytes.Repeat([]byte("0123456789abcdef"), 20<<10)) // over largeInput
	dec, err := zstd.NewReader(nil)
	if err != nil {
		f.Fatal(err)
	}
	defer dec.Close()
	enc := newBlobEncoder(CompressionAuto)
	r := &Repository{benc: enc, dec: dec}
	f.Fuzz(func(t *testing.T, src []byte) {
		out, ok := enc.encode(nil, src)
		if !ok {
			return
		}
		back, err := dec.DecodeAll(out, nil)
		if err != nil || !bytes.Equal(back, src) {
			t.Fatalf("pure-Go decoder: %v", err)
		}
		buf := make([]byte, len(src)+16)
		got, err := r.checkDecode(buf[:0:len(src)], out)
		if err != nil || !bytes.Equal(got, src) {
			t.Fatalf("check decoder: %v", err)
		}
		for _, b := range buf[len(src):] {
			if b != 0 {
				t.Fatal("check decoder wrote past its buffer's capacity")
			}
		}
		if len(src) > 0 {
			if got, err := r.checkDecode(buf[:0:len(src)-1], out); err == nil && bytes.Equal(got, src) {
				t.Fatal("check decoder fit a blob into too small a buffer")
			}
		}
	})
}
