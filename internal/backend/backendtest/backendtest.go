package backendtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"bunker/internal/backend"
)

// Run runs the conformance suite. newBackend must return a fresh, empty
// backend for each call; Run closes it when the subtest ends.
func Run(t *testing.T, newBackend func(t *testing.T) backend.Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, be backend.Backend)
	}{
		{"Properties", testProperties},
		{"RoundTrip", testRoundTrip},
		{"AllTypes", testAllTypes},
		{"LoadRange", testLoadRange},
		{"LoadPartialRead", testLoadPartialRead},
		{"LoadFnError", testLoadFnError},
		{"Stat", testStat},
		{"ModTime", testModTime},
		{"NoOverwrite", testNoOverwrite},
		{"Missing", testMissing},
		{"Remove", testRemove},
		{"List", testList},
		{"ListFnError", testListFnError},
		{"InvalidHandle", testInvalidHandle},
		{"SaveCopiesData", testSaveCopiesData},
		{"ContextCancelled", testContextCancelled},
		{"Concurrent", testConcurrent},
		{"ConcurrentSameName", testConcurrentSameName},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			be := newBackend(t)
			t.Cleanup(func() {
				if err := be.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, be)
		})
	}
}

// randBytes returns n deterministic pseudo-random bytes.
func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x5bd1e995))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// name returns a pack-style hex name for i.
func name(i int) string { return fmt.Sprintf("%02x%062x", i%256, i) }

func pack(i int) backend.Handle { return backend.Handle{Type: backend.PackFile, Name: name(i)} }

func save(t *testing.T, be backend.Backend, h backend.Handle, data []byte) {
	t.Helper()
	if err := be.Save(context.Background(), h, data); err != nil {
		t.Fatalf("Save(%v, %d bytes): %v", h, len(data), err)
	}
}

func load(t *testing.T, be backend.Backend, h backend.Handle, length int, offset int64) ([]byte, error) {
	t.Helper()
	var out []byte
	err := be.Load(context.Background(), h, length, offset, func(rd io.Reader) error {
		var err error
		out, err = io.ReadAll(rd)
		return err
	})
	return out, err
}

func mustLoad(t *testing.T, be backend.Backend, h backend.Handle) []byte {
	t.Helper()
	data, err := load(t, be, h, 0, 0)
	if err != nil {
		t.Fatalf("Load(%v): %v", h, err)
	}
	return data
}

func listAll(t *testing.T, be backend.Backend, ft backend.FileType) map[string]int64 {
	t.Helper()
	got := map[string]int64{}
	err := be.List(context.Background(), ft, func(fi backend.FileInfo) error {
		if _, dup := got[fi.Name]; dup {
			t.Errorf("List(%v) reported %q twice", ft, fi.Name)
		}
		got[fi.Name] = fi.Size
		return nil
	})
	if err != nil {
		t.Fatalf("List(%v): %v", ft, err)
	}
	return got
}

func testProperties(t *testing.T, be backend.Backend) {
	p := be.Properties()
	if p.Connections <= 0 {
		t.Errorf("Connections = %d, want > 0", p.Connections)
	}
	if p.HasAtomicReplace {
		t.Errorf("HasAtomicReplace = true, want false")
	}
	if be.Location() == "" {
		t.Errorf("Location is empty")
	}
}

func testRoundTrip(t *testing.T, be backend.Backend) {
	for i, size := range []int{0, 1, 4095, 4096, 1<<20 + 17} {
		h := pack(i)
		data := randBytes(uint64(i), size)
		save(t, be, h, data)
		got := mustLoad(t, be, h)
		if !bytes.Equal(got, data) {
			t.Errorf("size %d: loaded %d bytes differ from saved", size, len(got))
		}
		got, err := backend.LoadAll(context.Background(), be, h)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("size %d: LoadAll = %d bytes, %v", size, len(got), err)
		}
	}
}

func testAllTypes(t *testing.T, be backend.Backend) {
	for i, ft := range backend.AllTypes {
		h := backend.Handle{Type: ft, Name: name(100 + i)}
		if ft == backend.ConfigFile {
			h.Name = ""
		}
		data := randBytes(uint64(100+i), 100+i)
		save(t, be, h, data)
		if got := mustLoad(t, be, h); !bytes.Equal(got, data) {
			t.Errorf("%v: loaded data differs", h)
		}
	}
	// The same name in two types is two files.
	a := backend.Handle{Type: backend.IndexFile, Name: "same"}
	b := backend.Handle{Type: backend.SnapshotFile, Name: "same"}
	save(t, be, a, []byte("index"))
	save(t, be, b, []byte("snapshot"))
	if got := mustLoad(t, be, a); string(got) != "index" {
		t.Errorf("%v = %q", a, got)
	}
	if got := mustLoad(t, be, b); string(got) != "snapshot" {
		t.Errorf("%v = %q", b, got)
	}
}

func testLoadRange(t *testing.T, be backend.Backend) {
	const size = 1000
	data := randBytes(7, size)
	h := pack(7)
	save(t, be, h, data)

	for _, c := range []struct {
		length int
		offset int64
		want   []byte
	}{
		{0, 0, data},
		{size, 0, data},
		{0, 10, data[10:]},
		{20, 10, data[10:30]},
		{1, 0, data[:1]},
		{10, size - 10, data[size-10:]},
		{1, size - 1, data[size-1:]},
		{0, size, []byte{}},
	} {
		got, err := load(t, be, h, c.length, c.offset)
		if err != nil {
			t.Errorf("Load(length %d, offset %d): %v", c.length, c.offset, err)
			continue
		}
		if !bytes.Equal(got, c.want) {
			t.Errorf("Load(length %d, offset %d) = %d bytes, want %d", c.length, c.offset, len(got), len(c.want))
		}
	}

	for _, c := range []struct {
		length int
		offset int64
	}{
		{size + 1, 0},
		{11, size - 10},
		{1, size},
		{0, size + 1},
		{10, size + 100},
	} {
		_, err := load(t, be, h, c.length, c.offset)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("Load(length %d, offset %d) past the end: err = %v, want io.ErrUnexpectedEOF", c.length, c.offset, err)
		}
	}

	for _, c := range []struct {
		length int
		offset int64
	}{{-1, 0}, {0, -1}} {
		called := false
		err := be.Load(context.Background(), h, c.length, c.offset, func(io.Reader) error { called = true; return nil })
		if err == nil || called {
			t.Errorf("Load(length %d, offset %d): err = %v, fn called %v; want an error and no call", c.length, c.offset, err, called)
		}
	}
}

func testLoadPartialRead(t *testing.T, be backend.Backend) {
	data := randBytes(8, 64<<10)
	h := pack(8)
	save(t, be, h, data)
	// fn may stop reading early; that is not an error.
	err := be.Load(context.Background(), h, 0, 0, func(rd io.Reader) error {
		buf := make([]byte, 10)
		if _, err := io.ReadFull(rd, buf); err != nil {
			return err
		}
		if !bytes.Equal(buf, data[:10]) {
			return errors.New("wrong prefix")
		}
		return nil
	})
	if err != nil {
		t.Errorf("Load reading only a prefix: %v", err)
	}
}

func testLoadFnError(t *testing.T, be backend.Backend) {
	h := pack(9)
	save(t, be, h, []byte("data"))
	sentinel := errors.New("callback failed")
	err := be.Load(context.Background(), h, 0, 0, func(io.Reader) error { return sentinel })
	if !errors.Is(err, sentinel) {
		t.Errorf("Load with failing fn: err = %v, want %v", err, sentinel)
	}
}

func testStat(t *testing.T, be backend.Backend) {
	for i, size := range []int{0, 1, 12345} {
		h := pack(20 + i)
		save(t, be, h, randBytes(uint64(i), size))
		fi, err := be.Stat(context.Background(), h)
		if err != nil {
			t.Fatalf("Stat(%v): %v", h, err)
		}
		if fi.Size != int64(size) || fi.Name != h.Name {
			t.Errorf("Stat(%v) = %+v, want name %q size %d", h, fi, h.Name, size)
		}
	}
	cfg := backend.Handle{Type: backend.ConfigFile}
	save(t, be, cfg, []byte("cfg"))
	if fi, err := be.Stat(context.Background(), cfg); err != nil || fi.Size != 3 {
		t.Errorf("Stat(config) = %+v, %v; want size 3", fi, err)
	}
}

func testNoOverwrite(t *testing.T, be backend.Backend) {
	for _, h := range []backend.Handle{
		pack(30),
		{Type: backend.ConfigFile},
		{Type: backend.LockFile, Name: "lock1"},
	} {
		first := []byte("first content")
		save(t, be, h, first)
		for _, second := range [][]byte{[]byte("second, longer content"), {}, first} {
			err := be.Save(context.Background(), h, second)
			if !errors.Is(err, backend.ErrExists) {
				t.Errorf("second Save(%v): err = %v, want ErrExists", h, err)
			}
		}
		if got := mustLoad(t, be, h); !bytes.Equal(got, first) {
			t.Errorf("%v changed by a refused Save: %q", h, got)
		}
	}
}

func testMissing(t *testing.T, be backend.Backend) {
	ctx := context.Background()
	for _, h := range []backend.Handle{pack(40), {Type: backend.ConfigFile}, {Type: backend.KeyFile, Name: "nokey"}} {
		called := false
		err := be.Load(ctx, h, 0, 0, func(io.Reader) error { called = true; return nil })
		if !errors.Is(err, backend.ErrNotExist) || called {
			t.Errorf("Load(missing %v): err = %v, fn called %v; want ErrNotExist and no call", h, err, called)
		}
		if _, err := load(t, be, h, 10, 5); !errors.Is(err, backend.ErrNotExist) {
			t.Errorf("Load(missing %v, range): err = %v, want ErrNotExist", h, err)
		}
		if _, err := be.Stat(ctx, h); !errors.Is(err, backend.ErrNotExist) {
			t.Errorf("Stat(missing %v): err = %v, want ErrNotExist", h, err)
		}
		if err := be.Remove(ctx, h); !errors.Is(err, backend.ErrNotExist) {
			t.Errorf("Remove(missing %v): err = %v, want ErrNotExist", h, err)
		}
	}
}

func testRemove(t *testing.T, be backend.Backend) {
	ctx := context.Background()
	for _, h := range []backend.Handle{pack(50), {Type: backend.ConfigFile}, {Type: backend.LockFile, Name: "lock"}} {
		save(t, be, h, []byte("v1"))
		if err := be.Remove(ctx, h); err != nil {
			t.Fatalf("Remove(%v): %v", h, err)
		}
		if _, err := be.Stat(ctx, h); !errors.Is(err, backend.ErrNotExist) {
			t.Errorf("Stat(%v) after Remove: err = %v, want ErrNotExist", h, err)
		}
		if err := be.Remove(ctx, h); !errors.Is(err, backend.ErrNotExist) {
			t.Errorf("second Remove(%v): err = %v, want ErrNotExist", h, err)
		}
		// The name is free again.
		save(t, be, h, []byte("v2"))
		if got := mustLoad(t, be, h); string(got) != "v2" {
			t.Errorf("%v after re-Save = %q, want v2", h, got)
		}
	}
	// Removing one file leaves its neighbours.
	a, b := pack(51), pack(51+256) // same two-character prefix
	save(t, be, a, []byte("a"))
	save(t, be, b, []byte("b"))
	if err := be.Remove(ctx, a); err != nil {
		t.Fatal(err)
	}
	if got := mustLoad(t, be, b); string(got) != "b" {
		t.Errorf("neighbour = %q", got)
	}
}

func testList(t *testing.T, be backend.Backend) {
	for _, ft := range backend.AllTypes {
		if got := listAll(t, be, ft); len(got) != 0 {
			t.Errorf("List(%v) of an empty backend = %v", ft, got)
		}
	}

	want := map[backend.FileType]map[string]int64{}
	add := func(h backend.Handle, size int) {
		save(t, be, h, randBytes(uint64(size), size))
		if want[h.Type] == nil {
			want[h.Type] = map[string]int64{}
		}
		want[h.Type][h.Name] = int64(size)
	}
	add(backend.Handle{Type: backend.ConfigFile}, 17)
	for i := 0; i < 300; i++ { // spans many, and shared, pack prefixes
		add(pack(i*7), i%13)
	}
	add(backend.Handle{Type: backend.PackFile, Name: "zz-not-hex"}, 5)
	for i, ft := range []backend.FileType{backend.KeyFile, backend.IndexFile, backend.SnapshotFile, backend.LockFile, backend.SettingsFile} {
		for j := 0; j < 5+i; j++ {
			add(backend.Handle{Type: ft, Name: fmt.Sprintf("%v-%d", ft, j)}, 10*j+i)
		}
	}
	for _, ft := range backend.AllTypes {
		got := listAll(t, be, ft)
		if len(got) != len(want[ft]) {
			t.Errorf("List(%v): %d files, want %d", ft, len(got), len(want[ft]))
		}
		for n, size := range want[ft] {
			if gs, ok := got[n]; !ok {
				t.Errorf("List(%v) misses %q", ft, n)
			} else if gs != size {
				t.Errorf("List(%v): %q has size %d, want %d", ft, n, gs, size)
			}
		}
		for n := range got {
			if _, ok := want[ft][n]; !ok {
				t.Errorf("List(%v) reports unexpected %q", ft, n)
			}
		}
	}

	// Removed files disappear from the listing.
	if err := be.Remove(context.Background(), pack(0)); err != nil {
		t.Fatal(err)
	}
	if _, ok := listAll(t, be, backend.PackFile)[pack(0).Name]; ok {
		t.Errorf("List reports a removed file")
	}
}

func testListFnError(t *testing.T, be backend.Backend) {
	for i := 0; i < 10; i++ {
		save(t, be, pack(i), []byte{byte(i)})
	}
	sentinel := errors.New("stop")
	calls := 0
	err := be.List(context.Background(), backend.PackFile, func(backend.FileInfo) error {
		calls++
		return sentinel
	})
	if !errors.Is(err, sentinel) {
		t.Errorf("List with failing fn: err = %v, want %v", err, sentinel)
	}
	if calls != 1 {
		t.Errorf("List called fn %d times after it failed, want 1", calls)
	}
}

func testInvalidHandle(t *testing.T, be backend.Backend) {
	ctx := context.Background()
	for _, h := range []backend.Handle{
		{Type: backend.PackFile, Name: ""},
		{Type: backend.KeyFile, Name: ""},
		{Type: backend.IndexFile, Name: "a/b"},
		{Type: backend.SnapshotFile, Name: "../escape"},
		{Type: backend.LockFile, Name: ".hidden"},
		{Type: backend.LockFile, Name: ".."},
		{Type: backend.KeyFile, Name: ".tmp-123"},
		{Type: backend.ConfigFile, Name: "named"},
		{Type: backend.FileType(99), Name: "x"},
	} {
		if err := be.Save(ctx, h, []byte("x")); err == nil {
			t.Errorf("Save(%#v) succeeded, want an error", h)
		}
		if _, err := load(t, be, h, 0, 0); err == nil {
			t.Errorf("Load(%#v) succeeded, want an error", h)
		}
		if _, err := be.Stat(ctx, h); err == nil {
			t.Errorf("Stat(%#v) succeeded, want an error", h)
		}
		if err := be.Remove(ctx, h); err == nil {
			t.Errorf("Remove(%#v) succeeded, want an error", h)
		}
	}
	for _, ft := range backend.AllTypes {
		if got := listAll(t, be, ft); len(got) != 0 {
			t.Errorf("invalid Saves left files of type %v: %v", ft, got)
		}
	}
}

func testSaveCopiesData(t *testing.T, be backend.Backend) {
	h := pack(60)
	data := []byte("original")
	save(t, be, h, data)
	copy(data, "XXXXXXXX")
	if got := mustLoad(t, be, h); string(got) != "original" {
		t.Errorf("stored data changed with the caller's buffer: %q", got)
	}
	// Whatever fn does with what it read does not reach the stored file.
	_ = be.Load(context.Background(), h, 0, 0, func(rd io.Reader) error {
		b, _ := io.ReadAll(rd)
		for i := range b {
			b[i] = 0
		}
		return nil
	})
	if got := mustLoad(t, be, h); string(got) != "original" {
		t.Errorf("stored data changed through Load: %q", got)
	}
}

func testContextCancelled(t *testing.T, be backend.Backend) {
	stored := pack(70)
	save(t, be, stored, []byte("stored"))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	h := pack(71)
	if err := be.Save(ctx, h, []byte("x")); !errors.Is(err, context.Canceled) {
		t.Errorf("Save with cancelled context: err = %v, want context.Canceled", err)
	}
	if _, err := be.Stat(context.Background(), h); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("Save with cancelled context stored the file (Stat err = %v)", err)
	}
	err := be.Load(ctx, stored, 0, 0, func(rd io.Reader) error { _, err := io.ReadAll(rd); return err })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Load with cancelled context: err = %v, want context.Canceled", err)
	}
	if _, err := be.Stat(ctx, stored); !errors.Is(err, context.Canceled) {
		t.Errorf("Stat with cancelled context: err = %v, want context.Canceled", err)
	}
	if err := be.List(ctx, backend.PackFile, func(backend.FileInfo) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("List with cancelled context: err = %v, want context.Canceled", err)
	}
	if err := be.Remove(ctx, stored); !errors.Is(err, context.Canceled) {
		t.Errorf("Remove with cancelled context: err = %v, want context.Canceled", err)
	}
	if got := mustLoad(t, be, stored); string(got) != "stored" {
		t.Errorf("file after cancelled Remove = %q", got)
	}
}

func testConcurrent(t *testing.T, be backend.Backend) {
	const workers, perWorker = 16, 12
	ctx := context.Background()
	var wg sync.WaitGroup
	errc := make(chan error, workers*perWorker*4)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				n := w*perWorker + i
				h := pack(n)
				data := randBytes(uint64(n), 1000+n*37)
				if err := be.Save(ctx, h, data); err != nil {
					errc <- fmt.Errorf("Save(%v): %w", h, err)
					continue
				}
				got, err := backend.LoadAll(ctx, be, h)
				if err != nil || !bytes.Equal(got, data) {
					errc <- fmt.Errorf("Load(%v) = %d bytes, %v", h, len(got), err)
				}
				if fi, err := be.Stat(ctx, h); err != nil || fi.Size != int64(len(data)) {
					errc <- fmt.Errorf("Stat(%v) = %+v, %v", h, fi, err)
				}
				// Listing while others write must not fail.
				if i%4 == 0 {
					if err := be.List(ctx, backend.PackFile, func(backend.FileInfo) error { return nil }); err != nil {
						errc <- fmt.Errorf("list: %w", err)
					}
				}
				// Remove every third file again, concurrently with the rest.
				if n%3 == 0 {
					if err := be.Remove(ctx, h); err != nil {
						errc <- fmt.Errorf("Remove(%v): %w", h, err)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}

	got := listAll(t, be, backend.PackFile)
	var want []string
	for n := 0; n < workers*perWorker; n++ {
		if n%3 != 0 {
			want = append(want, pack(n).Name)
			if got[pack(n).Name] != int64(1000+n*37) {
				t.Errorf("List: %v has size %d, want %d", pack(n), got[pack(n).Name], 1000+n*37)
			}
		}
	}
	if len(got) != len(want) {
		t.Errorf("List after concurrent work: %d files, want %d", len(got), len(want))
	}
}

func testConcurrentSameName(t *testing.T, be backend.Backend) {
	const writers = 16
	h := backend.Handle{Type: backend.LockFile, Name: "contested"}
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = be.Save(ctx, h, randBytes(uint64(w), 4096+w))
		}()
	}
	wg.Wait()
	winner := -1
	for w, err := range errs {
		switch {
		case err == nil:
			if winner >= 0 {
				t.Errorf("writers %d and %d both stored %v", winner, w, h)
			}
			winner = w
		case !errors.Is(err, backend.ErrExists):
			t.Errorf("writer %d: err = %v, want nil or ErrExists", w, err)
		}
	}
	if winner < 0 {
		t.Fatalf("no writer stored %v", h)
	}
	if got := mustLoad(t, be, h); !bytes.Equal(got, randBytes(uint64(winner), 4096+winner)) {
		t.Errorf("stored content is not the winner's")
	}
}

// testModTime: Stat and List report when the storage stored a file, close to
// now (the clocks are the same here), and agree with each other.
func testModTime(t *testing.T, be backend.Backend) {
	ctx := context.Background()
	h := backend.Handle{Type: backend.IndexFile, Name: "modtime"}
	before := time.Now().Add(-5 * time.Second)
	if err := be.Save(ctx, h, []byte("x")); err != nil {
		t.Fatal(err)
	}
	after := time.Now().Add(5 * time.Second)
	fi, err := be.Stat(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	if fi.ModTime.Before(before) || fi.ModTime.After(after) {
		t.Errorf("Stat ModTime %v, want between %v and %v", fi.ModTime, before, after)
	}
	var listed time.Time
	err = be.List(ctx, backend.IndexFile, func(l backend.FileInfo) error {
		if l.Name == h.Name {
			listed = l.ModTime
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !listed.Equal(fi.ModTime) {
		t.Errorf("List ModTime %v, Stat ModTime %v", listed, fi.ModTime)
	}
}
