package index

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"sync"
	"testing"

	"bunker/internal/repo"
	"bunker/internal/repo/pack"
)

func id(b ...byte) (x repo.ID) {
	copy(x[:], b)
	x[31] = 0xee
	return x
}

func sampleFile() *File {
	return &File{
		Supersedes: []repo.ID{id(9, 9), id(8, 8)},
		Packs: []PackEntry{
			{ID: id(1), Blobs: []pack.Blob{
				{Type: repo.DataBlob, ID: id(1, 1), Offset: 0, Length: 100, RawLength: 72},
				{Type: repo.DataBlob, ID: id(1, 2), Compressed: true, Offset: 100, Length: 50, RawLength: 1 << 20},
			}},
			{ID: id(2), Blobs: []pack.Blob{
				{Type: repo.TreeBlob, ID: id(2, 1), Compressed: true, Offset: 1<<32 - 1, Length: pack.MaxBlobSize, RawLength: pack.MaxBlobSize},
			}},
			{ID: id(3), Blobs: []pack.Blob{}},
		},
	}
}

// normalize makes empty slices nil, for comparison of decoded files.
func normalize(f *File) *File {
	g := &File{}
	if len(f.Supersedes) > 0 {
		g.Supersedes = f.Supersedes
	}
	for _, p := range f.Packs {
		q := PackEntry{ID: p.ID}
		if len(p.Blobs) > 0 {
			q.Blobs = p.Blobs
		}
		g.Packs = append(g.Packs, q)
	}
	return g
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, f := range []*File{{}, {Supersedes: []repo.ID{id(1)}}, {Packs: []PackEntry{{ID: id(4)}}}, sampleFile()} {
		b := f.Encode()
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("%+v: %v", f, err)
		}
		if !reflect.DeepEqual(normalize(got), normalize(f)) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, f)
		}
		if !bytes.Equal(got.Encode(), b) {
			t.Fatal("second encoding differs")
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	good := sampleFile().Encode()
	if _, err := Decode(good); err != nil {
		t.Fatal(err)
	}
	// Every truncation fails.
	for n := 0; n < len(good); n++ {
		if _, err := Decode(good[:n]); !errors.Is(err, ErrInvalid) {
			t.Fatalf("truncated to %d of %d: %v", n, len(good), err)
		}
	}
	uv := binary.AppendUvarint
	blob := func(typ, flags byte) []byte {
		b := append([]byte{typ, flags}, make([]byte, 32)...)
		return uv(uv(uv(b, 0), 100), 72)
	}
	onePack := func(bl []byte) []byte {
		b := uv([]byte(fileMagic), 0)
		b = uv(b, 1)
		b = append(b, make([]byte, 32)...)
		b = uv(b, 1)
		return append(b, bl...)
	}
	if _, err := Decode(onePack(blob(1, 0))); err != nil {
		t.Fatalf("valid one-blob file: %v", err)
	}
	cases := map[string][]byte{
		"no magic":           nil,
		"bad magic":          []byte("BKI2\x00\x00"),
		"trailing":           append(bytes.Clone(good), 0),
		"type 0":             onePack(blob(0, 0)),
		"type 3":             onePack(blob(3, 0)),
		"unknown flag":       onePack(blob(1, 2)),
		"huge supersedes":    uv(uv([]byte(fileMagic), 1<<40), 0),
		"supersedes > input": append(uv([]byte(fileMagic), 2), make([]byte, 33)...),
		"huge pack count":    uv(uv([]byte(fileMagic), 0), 1<<40),
		"pack count > input": uv(uv([]byte(fileMagic), 0), 1000),
		"huge blob count":    uv(append(uv(uv([]byte(fileMagic), 0), 1), make([]byte, 32)...), 1<<40),
		"blob count > input": uv(append(uv(uv([]byte(fileMagic), 0), 1), make([]byte, 32)...), 2),
		"length too big": onePack(uv(uv(uv(append([]byte{1, 0}, make([]byte, 32)...), 0),
			pack.MaxBlobSize+1), 0)),
		"raw length too big": onePack(uv(uv(uv(append([]byte{1, 0}, make([]byte, 32)...), 0),
			100), pack.MaxBlobSize+1)),
		"offset too big": onePack(uv(uv(uv(append([]byte{1, 0}, make([]byte, 32)...), 1<<32),
			100), 72)),
		"varint overflow": append(uv([]byte(fileMagic), 0), bytes.Repeat([]byte{0xff}, 11)...),
	}
	for name, b := range cases {
		if f, err := Decode(b); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Decode = %+v, %v; want ErrInvalid", name, f, err)
		}
	}
}

func TestIndex(t *testing.T) {
	x := New()
	f := sampleFile()
	for _, p := range f.Packs {
		x.AddPack(p.ID, p.Blobs)
	}
	if x.Len() != 3 {
		t.Fatalf("Len = %d", x.Len())
	}
	for _, p := range f.Packs {
		if !x.HasPack(p.ID) {
			t.Errorf("HasPack(%v) = false", p.ID.Short())
		}
		for _, b := range p.Blobs {
			if !x.Has(b.Handle()) {
				t.Errorf("Has(%v) = false", b.ID.Short())
			}
			loc, ok := x.Lookup(b.Handle())
			want := Location{Pack: p.ID, Offset: b.Offset, Length: b.Length, RawLength: b.RawLength, Compressed: b.Compressed}
			if !ok || loc != want {
				t.Errorf("Lookup = %+v, %v; want %+v", loc, ok, want)
			}
		}
	}
	if x.HasPack(id(7)) {
		t.Error("HasPack of an unknown pack")
	}
	// The type is part of the handle.
	h := repo.BlobHandle{ID: id(1, 1), Type: repo.TreeBlob}
	if x.Has(h) {
		t.Error("data blob found as tree blob")
	}
	if _, ok := x.Lookup(h); ok {
		t.Error("Lookup found a blob of another type")
	}
	packs := x.Packs()
	if len(packs) != 2 || len(packs[id(1)]) != 2 || len(packs[id(2)]) != 1 {
		t.Fatalf("Packs = %v", packs)
	}
	for pid, blobs := range packs {
		for _, b := range blobs {
			if loc, _ := x.Lookup(b.Handle()); loc.Pack != pid || loc.Offset != b.Offset || loc.Length != b.Length ||
				loc.RawLength != b.RawLength || loc.Compressed != b.Compressed {
				t.Errorf("Packs entry %+v disagrees with Lookup %+v", b, loc)
			}
		}
	}
	n := 0
	x.Each(func(repo.BlobHandle, Location) { n++ })
	if n != 3 {
		t.Errorf("Each visited %d", n)
	}
}

func TestFirstLocationWins(t *testing.T) {
	x := New()
	b := pack.Blob{Type: repo.DataBlob, ID: id(5), Offset: 10, Length: 100, RawLength: 50}
	x.AddPack(id(1), []pack.Blob{b})
	b2 := b
	b2.Offset, b2.Compressed = 999, true
	x.AddPack(id(2), []pack.Blob{b2})
	x.AddPack(id(1), []pack.Blob{b2}) // the same pack again
	loc, _ := x.Lookup(b.Handle())
	if loc.Pack != id(1) || loc.Offset != 10 || loc.Compressed {
		t.Fatalf("Lookup = %+v, want the first location", loc)
	}
	if x.Len() != 1 || !x.HasPack(id(2)) {
		t.Fatalf("Len %d, HasPack(2) %v", x.Len(), x.HasPack(id(2)))
	}
	// Within one AddPack, the first entry wins too.
	y := New()
	y.AddPack(id(3), []pack.Blob{b, b2})
	if loc, _ := y.Lookup(b.Handle()); loc.Offset != 10 {
		t.Fatalf("within one pack: %+v", loc)
	}
}

func TestConcurrent(t *testing.T) {
	x := New()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				b := pack.Blob{Type: repo.DataBlob, ID: id(byte(g), byte(i)), Offset: uint32(i), Length: 100, RawLength: 72}
				x.AddPack(id(byte(g), 0xff), []pack.Blob{b})
				if loc, ok := x.Lookup(b.Handle()); !ok || loc.Offset != uint32(i) {
					t.Errorf("Lookup after AddPack = %+v, %v", loc, ok)
					return
				}
				x.Has(repo.BlobHandle{ID: id(byte(7-g), byte(i)), Type: repo.DataBlob})
				if i%50 == 0 {
					x.Packs()
					x.Len()
				}
			}
		}()
	}
	wg.Wait()
	if x.Len() != 8*200 || len(x.Packs()) != 8 {
		t.Fatalf("Len %d, packs %d", x.Len(), len(x.Packs()))
	}
}

// FuzzIndexDecode: Decode never panics, allocates in proportion to its input,
// and what it accepts re-encodes to a file that decodes to the same content.
func FuzzIndexDecode(f *testing.F) {
	f.Add(sampleFile().Encode())
	f.Add((&File{}).Encode())
	f.Add((&File{Packs: []PackEntry{{ID: id(1), Blobs: []pack.Blob{{Type: repo.TreeBlob, ID: id(2), Length: 40, RawLength: 1}}}}}).Encode())
	f.Add([]byte("BKI1"))
	f.Add([]byte("BKI1\x00\xff\xff\xff\xff\x0f"))
	f.Add(append([]byte("BKI1\x00\x01"), make([]byte, 33)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) || got != nil {
				t.Fatalf("Decode = %v, %v", got, err)
			}
			return
		}
		// Bounded memory: every superseded ID takes 32 bytes, every pack at
		// least 33, every blob at least 37.
		nb := 0
		for _, p := range got.Packs {
			nb += len(p.Blobs)
			if cap(p.Blobs) > len(p.Blobs)+1 {
				t.Fatalf("blob slice cap %d for %d blobs", cap(p.Blobs), len(p.Blobs))
			}
			for _, bl := range p.Blobs {
				if bl.Type != repo.DataBlob && bl.Type != repo.TreeBlob || bl.Length > pack.MaxBlobSize || bl.RawLength > pack.MaxBlobSize {
					t.Fatalf("invalid blob accepted: %+v", bl)
				}
			}
		}
		if need := len(fileMagic) + 2 + 32*len(got.Supersedes) + 33*len(got.Packs) + 37*nb; need > len(b) {
			t.Fatalf("decoded more than %d bytes can hold: %d supersedes, %d packs, %d blobs", len(b), len(got.Supersedes), len(got.Packs), nb)
		}
		re := got.Encode()
		again, err := Decode(re)
		if err != nil {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
		if !reflect.DeepEqual(normalize(again), normalize(got)) {
			t.Fatalf("round trip differs:\n got %+v\nwant %+v", again, got)
		}
		if !bytes.Equal(again.Encode(), re) {
			t.Fatal("encoding is not stable")
		}
		if len(re) > len(b) {
			t.Fatalf("canonical encoding (%d bytes) longer than input (%d)", len(re), len(b))
		}
	})
}
