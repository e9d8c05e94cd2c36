package pack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"bunker/internal/repo"
	"bunker/internal/repo/crypto"
)

func testKey(t testing.TB) *crypto.Key {
	t.Helper()
	k, err := crypto.NewKey(crypto.NewMasterKey())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

type added struct {
	t          repo.BlobType
	plain      []byte
	compressed bool
}

// buildPack writes blobs to a pack and returns the pack and the sealed blobs.
func buildPack(t testing.TB, k *crypto.Key, in []added) ([]byte, [][]byte, []Blob) {
	t.Helper()
	w := NewWriter(0)
	var sealed [][]byte
	for _, a := range in {
		s := k.Seal(nil, a.plain)
		sealed = append(sealed, s)
		w.Add(a.t, k.BlobID(a.plain), s, len(a.plain)+7, a.compressed, nil)
	}
	if w.Count() != len(in) {
		t.Fatalf("Count = %d", w.Count())
	}
	blobs := append([]Blob(nil), w.Blobs()...)
	return w.Finish(k), sealed, blobs
}

func readHeader(k *crypto.Key, p []byte) ([]Blob, error) {
	if len(p) < 4 {
		return nil, ErrInvalid
	}
	n, err := HeaderLength(p[len(p)-4:], int64(len(p)))
	if err != nil {
		return nil, err
	}
	return DecodeHeader(k, p[len(p)-4-n:len(p)-4], int64(len(p)))
}

func TestWriterRoundTrip(t *testing.T) {
	k := testKey(t)
	for _, n := range []int{0, 1, 2, 10, 100} {
		var in []added
		for i := 0; i < n; i++ {
			typ := repo.DataBlob
			if i%3 == 0 {
				typ = repo.TreeBlob
			}
			in = append(in, added{typ, bytes.Repeat([]byte{byte(i)}, i*13), i%2 == 1})
		}
		p, sealed, want := buildPack(t, k, in)
		got, err := readHeader(k, p)
		if err != nil {
			t.Fatalf("%d blobs: %v", n, err)
		}
		if len(got) != n {
			t.Fatalf("%d blobs: header has %d", n, len(got))
		}
		var off uint32
		for i, b := range got {
			if b != want[i] {
				t.Fatalf("blob %d: %+v, want %+v", i, b, want[i])
			}
			if b.Offset != off {
				t.Fatalf("blob %d: offset %d, want %d", i, b.Offset, off)
			}
			if b.Type != in[i].t || b.Compressed != in[i].compressed || b.ID != k.BlobID(in[i].plain) ||
				b.Length != uint32(len(sealed[i])) || b.RawLength != uint32(len(in[i].plain)+7) {
				t.Fatalf("blob %d: %+v does not describe what was added", i, b)
			}
			// The offsets point at the sealed blob.
			plain, err := k.Open(nil, p[b.Offset:b.Offset+b.Length])
			if err != nil || !bytes.Equal(plain, in[i].plain) {
				t.Fatalf("blob %d at its offset: %v", i, err)
			}
			off += b.Length
		}
	}
}

func TestHeaderLength(t *testing.T) {
	le := func(n uint32) []byte { return binary.LittleEndian.AppendUint32(nil, n) }
	min := uint32(crypto.Overhead + len(magic))
	cases := []struct {
		trailer []byte
		size    int64
		ok      bool
	}{
		{le(min), int64(min) + 4, true},
		{le(min), int64(min) + 3, false},
		{le(min - 1), 1000, false},
		{le(0), 1000, false},
		{le(MaxHeaderSize), MaxHeaderSize + 4, true},
		{le(MaxHeaderSize + 1), MaxHeaderSize + 100, false},
		{le(0xffffffff), 1 << 40, false},
		{le(100)[:3], 1000, false},
		{nil, 1000, false},
		{append(le(100), 0), 1000, false},
		{le(100), -1, false},
	}
	for _, c := range cases {
		n, err := HeaderLength(c.trailer, c.size)
		if (err == nil) != c.ok {
			t.Errorf("HeaderLength(%x, %d) = %d, %v; want ok=%v", c.trailer, c.size, n, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("error %v does not wrap ErrInvalid", err)
		}
	}
}

func TestDecodeHeaderRejects(t *testing.T) {
	k := testKey(t)
	p, _, _ := buildPack(t, k, []added{{repo.DataBlob, []byte("one"), false}, {repo.DataBlob, []byte("two"), true}})
	if _, err := readHeader(k, p); err != nil {
		t.Fatal(err)
	}
	n := int(binary.LittleEndian.Uint32(p[len(p)-4:]))
	sealedHdr := p[len(p)-4-n : len(p)-4]

	// Garbage between the blobs and the header: the blobs no longer end where the header starts.
	withGap := append(append(append([]byte(nil), p[:len(p)-4-n]...), 0xAA), p[len(p)-4-n:]...)
	if _, err := readHeader(k, withGap); !errors.Is(err, ErrInvalid) {
		t.Errorf("gap before header: %v", err)
	}
	// Trailing garbage after the trailer.
	if _, err := readHeader(k, append(bytes.Clone(p), 0, 0, 0, 0)); err == nil {
		t.Error("trailing garbage accepted")
	}
	// DecodeHeader with a pack size that does not match the blobs.
	for _, d := range []int64{-1, 1, 1000} {
		if _, err := DecodeHeader(k, sealedHdr, int64(len(p))+d); !errors.Is(err, ErrInvalid) {
			t.Errorf("pack size off by %d: %v", d, err)
		}
	}
	// Wrong key, tampered header.
	if _, err := readHeader(testKey(t), p); !errors.Is(err, crypto.ErrUnauthenticated) {
		t.Errorf("wrong key: %v", err)
	}
	bad := bytes.Clone(p)
	bad[len(bad)-10] ^= 1
	if _, err := readHeader(k, bad); !errors.Is(err, crypto.ErrUnauthenticated) {
		t.Errorf("tampered header: %v", err)
	}
	// A truncated pack.
	if _, err := readHeader(k, p[:len(p)-1]); err == nil {
		t.Error("truncated pack accepted")
	}
}

// encodeHeader is the plaintext header format, as Finish writes it.
func encodeHeader(blobs []Blob) []byte {
	hdr := []byte(magic)
	for _, b := range blobs {
		var flags byte
		if b.Compressed {
			flags = FlagCompressed
		}
		hdr = append(hdr, byte(b.Type), flags)
		hdr = binary.LittleEndian.AppendUint32(hdr, b.Length)
		hdr = binary.LittleEndian.AppendUint32(hdr, b.RawLength)
		hdr = append(hdr, b.ID[:]...)
	}
	return hdr
}

func TestEncodeHeaderMatchesFinish(t *testing.T) {
	k := testKey(t)
	p, _, blobs := buildPack(t, k, []added{{repo.TreeBlob, []byte("t"), false}, {repo.DataBlob, []byte("data"), true}})
	n := int(binary.LittleEndian.Uint32(p[len(p)-4:]))
	hdr, err := k.Open(nil, p[len(p)-4-n:len(p)-4])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(hdr, encodeHeader(blobs)) {
		t.Fatalf("Finish wrote %x, test encoder %x", hdr, encodeHeader(blobs))
	}
}

func entry(t repo.BlobType, flags byte, length, raw uint32) []byte {
	e := []byte{byte(t), flags}
	e = binary.LittleEndian.AppendUint32(e, length)
	e = binary.LittleEndian.AppendUint32(e, raw)
	return append(e, bytes.Repeat([]byte{byte(length)}, repo.IDSize)...)
}

func TestParseHeader(t *testing.T) {
	ok1 := entry(repo.DataBlob, 0, 100, 72)
	ok2 := entry(repo.TreeBlob, FlagCompressed, 50, 1000)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	cases := []struct {
		name    string
		hdr     []byte
		dataEnd int64
		n       int
	}{
		{"empty", []byte(magic), 0, 0},
		{"one", cat([]byte(magic), ok1), 100, 1},
		{"two", cat([]byte(magic), ok1, ok2), 150, 2},
		{"no magic", nil, 0, -1},
		{"short magic", []byte("BKP"), 0, -1},
		{"bad magic", []byte("BKP2"), 0, -1},
		{"empty with data", []byte(magic), 10, -1},
		{"partial entry", cat([]byte(magic), ok1[:len(ok1)-1]), 100, -1},
		{"extra byte", cat([]byte(magic), ok1, []byte{0}), 100, -1},
		{"data before header", cat([]byte(magic), ok1), 101, -1},
		{"blobs past header", cat([]byte(magic), ok1, ok2), 149, -1},
		{"negative data end", cat([]byte(magic), ok1), -1, -1},
		{"type 0", cat([]byte(magic), entry(0, 0, 100, 72)), 100, -1},
		{"type 3", cat([]byte(magic), entry(3, 0, 100, 72)), 100, -1},
		{"unknown flag", cat([]byte(magic), entry(repo.DataBlob, 2, 100, 72)), 100, -1},
		{"length below overhead", cat([]byte(magic), entry(repo.DataBlob, 0, crypto.Overhead-1, 0)), crypto.Overhead - 1, -1},
		{"length at overhead", cat([]byte(magic), entry(repo.DataBlob, 0, crypto.Overhead, 0)), crypto.Overhead, 1},
		{"length too large", cat([]byte(magic), entry(repo.DataBlob, 0, MaxBlobSize+1, 0)), MaxBlobSize + 1, -1},
		{"raw length too large", cat([]byte(magic), entry(repo.DataBlob, FlagCompressed, 100, MaxBlobSize+1)), 100, -1},
	}
	for _, c := range cases {
		blobs, err := ParseHeader(c.hdr, c.dataEnd)
		if c.n < 0 {
			if err == nil || !errors.Is(err, ErrInvalid) {
				t.Errorf("%s: err = %v, want ErrInvalid", c.name, err)
			}
			continue
		}
		if err != nil || len(blobs) != c.n {
			t.Errorf("%s: %d blobs, %v; want %d", c.name, len(blobs), err, c.n)
		}
	}
}

// TestParseHeaderOffsetOverflow: blob offsets are 32 bits. A header whose
// blobs extend past 4 GiB must be refused, not have its offsets wrapped.
func TestParseHeaderOffsetOverflow(t *testing.T) {
	hdr := []byte(magic)
	var end int64
	for end <= 1<<32 {
		hdr = append(hdr, entry(repo.DataBlob, 0, MaxBlobSize, MaxBlobSize-crypto.Overhead)...)
		end += MaxBlobSize
	}
	blobs, err := ParseHeader(hdr, end)
	if err == nil {
		last := blobs[len(blobs)-1]
		t.Fatalf("accepted %d blobs ending at %d; last offset %d (wrapped)", len(blobs), end, last.Offset)
	}
	// Exactly 4 GiB of data: the last blob starts below 4 GiB, so it fits.
	hdr = hdr[:len(magic)+64*entrySize]
	if _, err := ParseHeader(hdr, 64*MaxBlobSize); err != nil {
		t.Fatalf("4 GiB of blobs: %v", err)
	}
}

// FuzzPackHeader parses arbitrary plaintext headers. dataEnd is the sum of the
// stored lengths the input declares, plus a small fuzzed difference, so that
// the fuzzer reaches both success and every kind of failure.
func FuzzPackHeader(f *testing.F) {
	f.Add([]byte(magic), int8(0))
	f.Add(bytes.Join([][]byte{[]byte(magic), entry(repo.DataBlob, 0, 100, 72)}, nil), int8(0))
	f.Add(bytes.Join([][]byte{[]byte(magic), entry(repo.DataBlob, 0, 100, 72), entry(repo.TreeBlob, 1, 50, 9999)}, nil), int8(0))
	f.Add(bytes.Join([][]byte{[]byte(magic), entry(repo.DataBlob, 0, 100, 72)}, nil), int8(-1))
	f.Add(bytes.Join([][]byte{[]byte(magic), entry(repo.DataBlob, 4, 100, 72)}, nil), int8(0))
	f.Add([]byte("BKP1garbage"), int8(3))
	f.Add([]byte{}, int8(0))
	f.Fuzz(func(t *testing.T, hdr []byte, delta int8) {
		var declared int64
		if len(hdr) >= len(magic) {
			for e := hdr[len(magic):]; len(e) >= entrySize; e = e[entrySize:] {
				declared += int64(binary.LittleEndian.Uint32(e[2:]))
			}
		}
		dataEnd := declared + int64(delta)
		blobs, err := ParseHeader(hdr, dataEnd)
		if err != nil {
			if !errors.Is(err, ErrInvalid) || blobs != nil {
				t.Fatalf("error %v (blobs %d) does not wrap ErrInvalid", err, len(blobs))
			}
			return
		}
		if delta != 0 {
			t.Fatalf("accepted with dataEnd %d != declared %d", dataEnd, declared)
		}
		if want := (len(hdr) - len(magic)) / entrySize; len(blobs) != want || cap(blobs) > want+1 {
			t.Fatalf("%d blobs (cap %d) from %d bytes", len(blobs), cap(blobs), len(hdr))
		}
		var off int64
		for i, b := range blobs {
			if int64(b.Offset) != off || b.Length < crypto.Overhead || b.Length > MaxBlobSize || b.RawLength > MaxBlobSize ||
				(b.Type != repo.DataBlob && b.Type != repo.TreeBlob) {
				t.Fatalf("blob %d invalid: %+v (offset should be %d)", i, b, off)
			}
			off += int64(b.Length)
		}
		if off != dataEnd {
			t.Fatalf("blobs end at %d, data at %d", off, dataEnd)
		}
		if re := encodeHeader(blobs); !bytes.Equal(re, hdr) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", re, hdr)
		}
	})
}

func ExampleParseHeader() {
	hdr := encodeHeader([]Blob{{Type: repo.DataBlob, Length: 40, RawLength: 12}, {Type: repo.TreeBlob, Compressed: true, Length: 60, RawLength: 100}})
	blobs, err := ParseHeader(hdr, 100)
	for _, b := range blobs {
		fmt.Println(b.Type, b.Offset, b.Length, b.Compressed)
	}
	fmt.Println(err)
	// Output:
	// data 0 40 false
	// tree 40 60 true
	// <nil>
}

// newTempFileWriter returns a file writer on a new temporary file, and the
// file (closed when the test ends).
func newTempFileWriter(t *testing.T) (*Writer, *os.File) {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "pack")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return NewFileWriter(f), f
}

// TestFileWriterMatchesMemory: a file pack written in the background holds
// the same bytes as the same pack assembled in memory, its ID is the
// FileID of those bytes, and each blob's storage is released only after it
// is written (or gathered into a write), in order.
func TestFileWriterMatchesMemory(t *testing.T) {
	k := testKey(t)
	for _, n := range []int{0, 1, 2, 9, 200} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			fw, f := newTempFileWriter(t)
			mw := NewWriter(0)
			var released []int
			var mu sync.Mutex
			for i := range n {
				// Mostly blobs the writer gathers into one write, some
				// past stageMax that go straight to the file between them.
				size := 1 + i*97
				if i%7 == 3 {
					size = stageMax + i
				}
				plain := bytes.Repeat([]byte{byte(i)}, size)
				sealed := k.Seal(nil, plain)
				mw.Add(repo.DataBlob, k.BlobID(plain), sealed, len(plain), i%2 == 0, nil)
				buf := append([]byte(nil), sealed...)
				fw.Add(repo.DataBlob, k.BlobID(plain), buf, len(plain), i%2 == 0, func() {
					// Once released, the writer must not read buf again:
					// scribbling on it would show in the file.
					for j := range buf {
						buf[j] = 0xee
					}
					mu.Lock()
					released = append(released, i)
					mu.Unlock()
				})
				// Some blobs are written as they come, the rest by FinishFile.
				if i%3 == 1 {
					fw.WriteQueued()
				}
			}
			blobsEnd := mw.Size()
			if fw.Size() != blobsEnd {
				t.Fatalf("file writer's size %d, memory writer's %d", fw.Size(), blobsEnd)
			}
			id, size, err := fw.FinishFile(k)
			if err != nil {
				t.Fatal(err)
			}
			if len(released) != n {
				t.Fatalf("%d of %d blobs released after FinishFile", len(released), n)
			}
			for i, r := range released {
				if r != i {
					t.Fatalf("released out of order: %v", released)
				}
			}
			got, err := os.ReadFile(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			// The trailers differ (fresh nonces); the blobs and the
			// header's plaintext must not.
			want := mw.Finish(k)
			if size != len(got) || id != crypto.FileID(got) {
				t.Fatalf("FinishFile = %s, %d; file is %s, %d", id.Short(), size, crypto.FileID(got).Short(), len(got))
			}
			if len(want) != len(got) || !bytes.Equal(got[:blobsEnd], want[:blobsEnd]) {
				t.Fatal("file pack's blobs differ from the memory pack's")
			}
			blobs, err := readHeader(k, got)
			if err != nil || len(blobs) != n {
				t.Fatalf("header: %d blobs, %v", len(blobs), err)
			}
			for i, b := range blobs {
				if b != mw.Blobs()[i] {
					t.Fatalf("blob %d: %+v, want %+v", i, b, mw.Blobs()[i])
				}
			}
		})
	}
}

// TestFileWriterConcurrentAdders: blobs added under the caller's lock by
// several goroutines, each writing the queue after its add (as the
// repository does), land in the file in the order they were added.
func TestFileWriterConcurrentAdders(t *testing.T) {
	k := testKey(t)
	fw, f := newTempFileWriter(t)
	mw := NewWriter(0)
	var mu sync.Mutex // the repository's lock
	var released atomic.Int32
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 50 {
				size := 1 + (g*50+i)*131%(2*stageMax)
				plain := bytes.Repeat([]byte{byte(g), byte(i)}, size/2+1)
				sealed := k.Seal(nil, plain)
				mu.Lock()
				mw.Add(repo.DataBlob, k.BlobID(plain), sealed, len(plain), false, nil)
				fw.Add(repo.DataBlob, k.BlobID(plain), append([]byte(nil), sealed...), len(plain), false, func() { released.Add(1) })
				mu.Unlock()
				fw.WriteQueued()
			}
		})
	}
	wg.Wait()
	blobsEnd := mw.Size()
	if _, _, err := fw.FinishFile(k); err != nil {
		t.Fatal(err)
	}
	if released.Load() != 200 {
		t.Fatalf("%d of 200 blobs released", released.Load())
	}
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if want := mw.Finish(k); len(got) != len(want) || !bytes.Equal(got[:blobsEnd], want[:blobsEnd]) {
		t.Fatal("the file's blobs differ from the blobs in the order they were added")
	}
}

// TestFileWriterAddAfterDiscard: adding to a writer that has ended is a
// programming error that must not pass silently (the blob would be listed
// in the header and missing from the file).
func TestFileWriterAddAfterDiscard(t *testing.T) {
	w, _ := newTempFileWriter(t)
	w.Discard()
	defer func() {
		if recover() == nil {
			t.Fatal("Add after Discard did not panic")
		}
	}()
	w.Add(repo.DataBlob, repo.ID{1}, []byte("x"), 1, false, nil)
}

// TestFileWriterDiscard: Discard waits for queued blobs, releases them, and
// ends the writing goroutine.
func TestFileWriterDiscard(t *testing.T) {
	k := testKey(t)
	w, _ := newTempFileWriter(t)
	var released atomic.Int32
	for i := range 10 {
		w.Add(repo.DataBlob, repo.ID{byte(i)}, k.Seal(nil, []byte{byte(i)}), 1, false, func() { released.Add(1) })
	}
	w.Discard()
	if released.Load() != 10 {
		t.Fatalf("%d of 10 blobs released", released.Load())
	}
}

// TestWriterFullAtMaxBlobs: a pack of tiny blobs is full at MaxBlobs, long
// before its size, and the header of that many blobs is one a reader takes.
func TestWriterFullAtMaxBlobs(t *testing.T) {
	k := testKey(t)
	w := NewWriter(0)
	sealed := k.Seal(nil, []byte("tiny"))
	var id repo.ID
	for i := range MaxBlobs {
		if w.Full(16 << 20) {
			t.Fatalf("full at %d blobs of %d bytes", i, w.Size())
		}
		binary.LittleEndian.PutUint64(id[:], uint64(i))
		w.Add(repo.DataBlob, id, sealed, 4, false, nil)
	}
	if !w.Full(16 << 20) {
		t.Fatalf("not full at MaxBlobs (%d blobs)", w.Count())
	}
	blobs, err := readHeader(k, w.Finish(k))
	if err != nil || len(blobs) != MaxBlobs {
		t.Fatalf("reading the header back: %d blobs, %v", len(blobs), err)
	}
}
