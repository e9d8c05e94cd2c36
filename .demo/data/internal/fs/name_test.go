package fs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

func TestValidName(t *testing.T) {
	good := []string{"a", "file.txt", "...", ".hidden", "bad\xffname", "with space\nnewline",
		strings.Repeat("x", 255), "a\\b", "-"}
	for _, n := range good {
		if err := ValidName(n); err != nil {
			t.Errorf("ValidName(%q) = %v, want nil", n, err)
		}
	}
	bad := []string{"", ".", "..", "a/b", "/", "/abs", "a\x00b", "\x00", strings.Repeat("x", 256)}
	for _, n := range bad {
		err := ValidName(n)
		if err == nil {
			t.Errorf("ValidName(%q) = nil, want error", n)
		} else if !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidName(%q) = %v, does not wrap ErrInvalidName", n, err)
		}
	}
}

func TestIsZero(t *testing.T) {
	for size := 0; size < 300; size++ {
		b := make([]byte, size)
		if !IsZero(b) {
			t.Fatalf("IsZero(zeros[%d]) = false", size)
		}
		for i := 0; i < size; i++ {
			b[i] = 1 << (i % 8)
			if IsZero(b) {
				t.Fatalf("IsZero: non-zero byte at %d of %d not detected", i, size)
			}
			b[i] = 0
		}
	}
	if !IsZero(nil) {
		t.Fatal("IsZero(nil) = false")
	}
	// Unaligned start.
	b := make([]byte, 1000)
	b[999] = 0x80
	for off := 0; off < 16; off++ {
		if IsZero(b[off:]) {
			t.Fatalf("offset %d: missed last byte", off)
		}
		if !IsZero(b[off:999]) {
			t.Fatalf("offset %d: zero slice reported non-zero", off)
		}
	}
}

func isZeroNaive(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func isZeroShift(b []byte) bool {
	return len(b) == 0 || b[0] == 0 && bytes.Equal(b[1:], b[:len(b)-1])
}

func isZeroWords(b []byte) bool {
	for len(b) >= 32 {
		if binary.LittleEndian.Uint64(b)|binary.LittleEndian.Uint64(b[8:])|
			binary.LittleEndian.Uint64(b[16:])|binary.LittleEndian.Uint64(b[24:]) != 0 {
			return false
		}
		b = b[32:]
	}
	return isZeroNaive(b)
}

func BenchmarkIsZero(b *testing.B) {
	buf := make([]byte, 1<<20)
	for _, bc := range []struct {
		name string
		fn   func([]byte) bool
	}{{"IsZero", IsZero}, {"naive", isZeroNaive}, {"shiftEqual", isZeroShift}, {"words", isZeroWords}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(buf)))
			for b.Loop() {
				if !bc.fn(buf) {
					b.Fatal("not zero")
				}
			}
		})
	}
}
