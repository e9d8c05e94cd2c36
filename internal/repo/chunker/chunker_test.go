package chunker

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
)

var (
	testKey   = [32]byte{0: 1, 31: 0xff}
	testTable = NewTable(testKey)
	smallP    = Params{Min: 64, Avg: 256, Max: 1024}
	mediumP   = Params{Min: 8 << 10, Avg: 16 << 10, Max: 64 << 10}
)

func randomData(seed uint64, n int) []byte {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(s).Read(b)
	return b
}

// big64 is 64 MiB of random data shared by the tests that need it.
var big64 = sync.OnceValue(func() []byte { return randomData(64, 64<<20) })

// chunkAll splits everything rd yields and returns copies of the chunks.
func chunkAll(t testing.TB, rd io.Reader, p Params, tab *Table) [][]byte {
	t.Helper()
	return drain(t, New(rd, p, tab))
}

// drain returns copies of all remaining chunks of c.
func drain(t testing.TB, c *Chunker) [][]byte {
	t.Helper()
	var out [][]byte
	each(t, c, func(b []byte) { out = append(out, bytes.Clone(b)) })
	return out
}

// each calls fn with every remaining chunk of c (not copied), failing t on
// an error.
func each(t testing.TB, c *Chunker, fn func([]byte)) {
	t.Helper()
	for {
		b, err := c.Next()
		if err == io.EOF {
			if b != nil {
				t.Fatalf("Next returned %d bytes with io.EOF", len(b))
			}
			return
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		fn(b)
	}
}

// checkChunks verifies reassembly and size bounds.
func checkChunks(t testing.TB, data []byte, chunks [][]byte, p Params) {
	t.Helper()
	if got := bytes.Join(chunks, nil); !bytes.Equal(got, data) {
		t.Fatalf("reassembled %d bytes differ from the %d input bytes", len(got), len(data))
	}
	for i, c := range chunks {
		if len(c) == 0 {
			t.Fatalf("chunk %d is empty", i)
		}
		if len(c) > p.Max {
			t.Fatalf("chunk %d has %d bytes > Max %d", i, len(c), p.Max)
		}
		if i < len(chunks)-1 && len(c) < p.Min {
			t.Fatalf("non-final chunk %d has %d bytes < Min %d", i, len(c), p.Min)
		}
	}
}

func boundaries(chunks [][]byte) []int {
	var out []int
	off := 0
	for _, c := range chunks {
		off += len(c)
		out = append(out, off)
	}
	return out
}

func TestParamsValidate(t *testing.T) {
	tests := []struct {
		name string
		p    Params
		ok   bool
	}{
		{"default", DefaultParams(), true},
		{"small", smallP, true},
		{"min==avg==max", Params{Min: 64, Avg: 64, Max: 64}, true},
		{"zero min", Params{Min: 0, Avg: 256, Max: 1024}, false},
		{"avg not power of two", Params{Min: 64, Avg: 300, Max: 1024}, false},
		{"avg too small", Params{Min: 8, Avg: 32, Max: 1024}, false},
		{"min > avg", Params{Min: 512, Avg: 256, Max: 1024}, false},
		{"avg > max", Params{Min: 64, Avg: 2048, Max: 1024}, false},
		{"max too large", Params{Min: 64, Avg: 256, Max: MaxMax + 1}, false},
		{"negative", Params{Min: -1, Avg: 256, Max: 1024}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate(%+v) = %v, want ok=%v", tt.p, err, tt.ok)
			}
		})
	}
	d := DefaultParams()
	if d.Min != 512<<10 || d.Avg != 1<<20 || d.Max != 2<<20 {
		t.Fatalf("DefaultParams = %+v", d)
	}
}

func TestMasks(t *testing.T) {
	for _, avg := range []int{64, 256, 1 << 20, 1 << 30} {
		p := Params{Min: 1, Avg: avg, Max: avg}
		s, l := p.masks()
		b := bits.TrailingZeros(uint(avg))
		if bits.OnesCount64(s) != b+strictExtraBits || bits.OnesCount64(l) != b-looseFewerBits {
			t.Errorf("Avg %d: maskS %064b, maskL %064b", avg, s, l)
		}
		if (s|l)&(1<<lowestMaskBit-1) != 0 {
			t.Errorf("Avg %d: masks use bits below %d", avg, lowestMaskBit)
		}
	}
}

func TestNewTable(t *testing.T) {
	a, b := NewTable(testKey), NewTable(testKey)
	if *a != *b {
		t.Fatal("NewTable is not deterministic")
	}
	other := testKey
	other[0] ^= 1
	c := NewTable(other)
	same := 0
	for i := range a {
		if a[i] == c[i] {
			same++
		}
	}
	if same > 0 {
		t.Fatalf("tables for different keys share %d entries", same)
	}
	seen := map[uint64]bool{}
	for _, v := range a {
		seen[v] = true
	}
	if len(seen) != 256 {
		t.Fatalf("table has only %d distinct entries", len(seen))
	}
}

func TestReassembly(t *testing.T) {
	for _, p := range []Params{smallP, mediumP, DefaultParams()} {
		for _, size := range []int{0, 1, p.Min - 1, p.Min, p.Min + 1, p.Avg, p.Max - 1, p.Max, p.Max + 1, 2*p.Max + 3, 5*p.Max + 17} {
			t.Run(fmt.Sprintf("%d-%d-%d/%d", p.Min, p.Avg, p.Max, size), func(t *testing.T) {
				data := randomData(uint64(size), size)
				chunks := chunkAll(t, bytes.NewReader(data), p, testTable)
				checkChunks(t, data, chunks, p)
				if size == 0 && len(chunks) != 0 {
					t.Fatalf("empty input gave %d chunks", len(chunks))
				}
				if size > 0 && size <= p.Min && len(chunks) != 1 {
					t.Fatalf("%d bytes gave %d chunks, want 1", size, len(chunks))
				}
			})
		}
	}
	t.Run("random 50MiB", func(t *testing.T) {
		data := big64()[:50<<20]
		checkChunks(t, data, chunkAll(t, bytes.NewReader(data), DefaultParams(), testTable), DefaultParams())
	})
}

func TestZeroAndConstantInput(t *testing.T) {
	for _, p := range []Params{smallP, DefaultParams()} {
		for _, fill := range []byte{0, 0xff, 'a'} {
			data := bytes.Repeat([]byte{fill}, 3*p.Max+5)
			chunks := chunkAll(t, bytes.NewReader(data), p, testTable)
			checkChunks(t, data, chunks, p)
			if len(chunks) < 4 {
				t.Fatalf("fill %#x: only %d chunks for %d bytes", fill, len(chunks), len(data))
			}
		}
	}
}

func TestCutMatchesChunker(t *testing.T) {
	for _, p := range []Params{smallP, mediumP, DefaultParams()} {
		data := big64()[:min(20*p.Max, 48<<20)]
		chunks := chunkAll(t, bytes.NewReader(data), p, testTable)
		rest := data
		for i, c := range chunks {
			n := testTable.Cut(rest, p)
			if n != len(c) {
				t.Fatalf("%+v: chunk %d: Cut = %d, chunker gave %d", p, i, n, len(c))
			}
			rest = rest[n:]
		}
		if len(rest) != 0 {
			t.Fatalf("%d bytes left over", len(rest))
		}
	}
}

func TestCutEdges(t *testing.T) {
	p := smallP
	data := randomData(7, 4*p.Max)
	tests := []struct {
		n    int
		want func(int) bool
	}{
		{0, func(k int) bool { return k == 0 }},
		{1, func(k int) bool { return k == 1 }},
		{p.Min, func(k int) bool { return k == p.Min }},
		{p.Max, func(k int) bool { return k >= p.Min && k <= p.Max }},
		{4 * p.Max, func(k int) bool { return k >= p.Min && k <= p.Max }},
	}
	for _, tt := range tests {
		if k := testTable.Cut(data[:tt.n], p); !tt.want(k) {
			t.Errorf("Cut(%d bytes) = %d", tt.n, k)
		}
	}
	zeros := make([]byte, 4*p.Max)
	if k := testTable.Cut(zeros, p); k < p.Min || k > p.Max {
		t.Errorf("Cut(zeros) = %d", k)
	}
	defer func() {
		if recover() == nil {
			t.Error("Cut with invalid params did not panic")
		}
	}()
	testTable.Cut(data, Params{})
}

func TestDeterministicAndReset(t *testing.T) {
	p := mediumP
	data := randomData(11, 3<<20)
	want := boundaries(chunkAll(t, bytes.NewReader(data), p, testTable))
	if len(want) < 50 {
		t.Fatalf("only %d chunks", len(want))
	}
	c := New(bytes.NewReader([]byte("something else")), p, testTable)
	if _, err := c.Next(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		c.Reset(bytes.NewReader(data))
		var got []int
		off := 0
		each(t, c, func(b []byte) {
			off += len(b)
			got = append(got, off)
		})
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatal("boundaries differ between runs")
		}
	}
}

func TestDifferentKeys(t *testing.T) {
	p := mediumP
	data := randomData(12, 2<<20)
	a := boundaries(chunkAll(t, bytes.NewReader(data), p, testTable))
	other := testKey
	other[5] ^= 0x80
	b := boundaries(chunkAll(t, bytes.NewReader(data), p, NewTable(other)))
	common := countCommon(a, b)
	// Independent tables share a boundary only by chance.
	if common > len(a)/10 {
		t.Fatalf("%d of %d boundaries shared between different keys", common, len(a))
	}
}

func countCommon(a, b []int) int {
	set := map[int]bool{}
	for _, x := range a {
		set[x] = true
	}
	n := 0
	for _, x := range b {
		if set[x] {
			n++
		}
	}
	return n
}

func TestShiftResistance(t *testing.T) {
	for _, tt := range []struct {
		p    Params
		size int
	}{
		{DefaultParams(), 32 << 20},
		{mediumP, 4 << 20},
	} {
		data := big64()[:tt.size]
		orig := boundaries(chunkAll(t, bytes.NewReader(data), tt.p, testTable))
		for _, insert := range []string{"x", "hello", strings.Repeat("z", 1000)} {
			t.Run(fmt.Sprintf("%d/%d", tt.p.Avg, len(insert)), func(t *testing.T) {
				shifted := append([]byte(insert), data...)
				moved := boundaries(chunkAll(t, bytes.NewReader(shifted), tt.p, testTable))
				for i := range moved {
					moved[i] -= len(insert)
				}
				common := countCommon(orig, moved)
				if common < len(orig)-2 {
					t.Fatalf("only %d of %d boundaries found again after inserting %d bytes", common, len(orig), len(insert))
				}
				// All boundaries after the second must be unchanged.
				for i := 2; i < len(orig); i++ {
					if countCommon(orig[i:i+1], moved) != 1 {
						t.Fatalf("boundary %d (%d) lost", i, orig[i])
					}
				}
			})
		}
	}
}

func TestAverageSize(t *testing.T) {
	tests := []struct {
		p    Params
		size int
	}{
		{DefaultParams(), 64 << 20},
		{mediumP, 16 << 20},
		{smallP, 1 << 20},
	}
	for _, tt := range tests {
		data := big64()[:tt.size]
		chunks := chunkAll(t, bytes.NewReader(data), tt.p, testTable)
		avg := float64(len(data)) / float64(len(chunks))
		ratio := avg / float64(tt.p.Avg)
		t.Logf("%+v: %d chunks, average %.0f bytes (%.3f × Avg)", tt.p, len(chunks), avg, ratio)
		if ratio < 0.75 || ratio > 1.25 {
			t.Errorf("%+v: average chunk size %.0f not within 25%% of %d", tt.p, avg, tt.p.Avg)
		}
	}
}

func TestReaderShapes(t *testing.T) {
	tests := []struct {
		name string
		p    Params
		size int
		wrap func(io.Reader) io.Reader
	}{
		{"one byte/small", smallP, 100 << 10, iotest.OneByteReader},
		{"one byte/medium", mediumP, 1 << 20, iotest.OneByteReader},
		{"one byte/default", DefaultParams(), 10 << 20, iotest.OneByteReader},
		{"half", mediumP, 1 << 20, iotest.HalfReader},
		{"data+EOF", mediumP, 1 << 20, iotest.DataErrReader},
		{"empty reads", smallP, 20 << 10, func(r io.Reader) io.Reader { return &stutterReader{r: r} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := randomData(uint64(tt.size), tt.size)
			want := chunkAll(t, bytes.NewReader(data), tt.p, testTable)
			got := chunkAll(t, tt.wrap(bytes.NewReader(data)), tt.p, testTable)
			checkChunks(t, data, got, tt.p)
			if fmt.Sprint(boundaries(got)) != fmt.Sprint(boundaries(want)) {
				t.Fatal("chunks differ from the bytes.Reader ones")
			}
		})
	}
}

// stutterReader returns 0, nil on every other call and short reads (1 to 700
// bytes) otherwise.
type stutterReader struct {
	r io.Reader
	n int
}

func (s *stutterReader) Read(p []byte) (int, error) {
	s.n++
	if s.n%2 == 0 {
		return 0, nil
	}
	return s.r.Read(p[:min(len(p), 1+s.n%700)])
}

type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

func TestReadErrors(t *testing.T) {
	boom := errors.New("boom")
	p := mediumP
	data := randomData(13, 10*p.Max)
	tests := []struct {
		name string
		rd   io.Reader
		want error
	}{
		{"immediate", iotest.ErrReader(boom), boom},
		{"after data", io.MultiReader(bytes.NewReader(data), iotest.ErrReader(boom)), boom},
		{"with data", iotest.TimeoutReader(bytes.NewReader(data)), iotest.ErrTimeout},
		{"no progress", zeroReader{}, io.ErrNoProgress},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(tt.rd, p, testTable)
			var err error
			total := 0
			for err == nil {
				var b []byte
				b, err = c.Next()
				total += len(b)
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("got error %v after %d bytes, want %v", err, total, tt.want)
			}
			if total > len(data) {
				t.Fatalf("returned %d bytes", total)
			}
			if _, err2 := c.Next(); !errors.Is(err2, tt.want) {
				t.Fatalf("error not sticky: %v", err2)
			}
			c.Reset(bytes.NewReader(data))
			checkChunks(t, data, drain(t, c), p)
		})
	}
}

func TestChunkCapacity(t *testing.T) {
	data := randomData(14, 10*smallP.Max)
	c := New(bytes.NewReader(data), smallP, testTable)
	a, err := c.Next()
	if err != nil {
		t.Fatal(err)
	}
	if cap(a) != len(a) {
		t.Fatalf("chunk has spare capacity %d; appending would clobber the buffer", cap(a)-len(a))
	}
}

// TestOnOverwrite holds every chunk until the chunker asks for it: a chunk
// must stay intact until then, the requests must come in order, and the
// chunks must be those of a chunker without the hook.
func TestOnOverwrite(t *testing.T) {
	zeros := make([]byte, 5*smallP.Max) // Max-length chunks
	data := append(append(randomData(21, 60*smallP.Max), zeros...), randomData(22, 60*smallP.Max)...)
	for _, tt := range []struct {
		name string
		wrap func(io.Reader) io.Reader
	}{
		{"whole reads", func(r io.Reader) io.Reader { return r }},
		{"one byte", iotest.OneByteReader},
		{"stutter", func(r io.Reader) io.Reader { return &stutterReader{r: r} }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			type held struct {
				b   []byte
				off int
			}
			var chunks []held
			released := 0
			intact := func(when string) {
				for i := released; i < len(chunks); i++ {
					c := chunks[i]
					if !bytes.Equal(c.b, data[c.off:c.off+len(c.b)]) {
						t.Fatalf("%s: chunk %d (offset %d) was overwritten before its release", when, i, c.off)
					}
				}
			}
			c := New(tt.wrap(bytes.NewReader(data)), smallP, testTable)
			c.OnOverwrite(func(n int) {
				if n <= released || n > len(chunks) {
					t.Fatalf("release(%d) after %d released of %d handed out", n, released, len(chunks))
				}
				intact(fmt.Sprintf("release(%d)", n))
				released = n
			})
			off := 0
			hold := func(when string) func([]byte) {
				return func(b []byte) {
					chunks = append(chunks, held{b, off})
					off += len(b)
					intact(when)
				}
			}
			each(t, c, hold("next"))
			if released == 0 {
				t.Fatal("the buffer was never overwritten: the test data is too short")
			}
			got := make([][]byte, len(chunks))
			for i, h := range chunks {
				got[i] = data[h.off : h.off+len(h.b)]
			}
			want := chunkAll(t, bytes.NewReader(data), smallP, testTable)
			checkChunks(t, data, got, smallP)
			if fmt.Sprint(boundaries(got)) != fmt.Sprint(boundaries(want)) {
				t.Fatal("chunks differ from those without OnOverwrite")
			}
			// Reset keeps the hook and starts counting again.
			c.Reset(bytes.NewReader(data))
			chunks, released, off = nil, 0, 0
			each(t, c, hold("next after Reset"))
			if len(chunks) != len(want) {
				t.Fatalf("after Reset: %d chunks, want %d", len(chunks), len(want))
			}
		})
	}
}

func TestNewPanics(t *testing.T) {
	for _, f := range []func(){
		func() { New(nil, Params{}, testTable) },
		func() { New(nil, smallP, nil) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			f()
		}()
	}
}

func FuzzChunker(f *testing.F) {
	f.Add([]byte{}, uint16(0), uint16(0), uint8(0))
	f.Add([]byte("hello, world"), uint16(63), uint16(768), uint8(2))
	f.Add(make([]byte, 5000), uint16(10), uint16(100), uint8(1))
	f.Add(randomData(1, 8000), uint16(63), uint16(768), uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, minSeed, maxSeed uint16, avgSeed uint8) {
		avg := MinAvg << (avgSeed % 4) // 64 .. 512
		p := Params{Min: 1 + int(minSeed)%avg, Avg: avg, Max: avg + int(maxSeed)%(4*avg)}
		if err := p.Validate(); err != nil {
			t.Fatalf("bad params %+v: %v", p, err)
		}
		chunks := chunkAll(t, bytes.NewReader(data), p, testTable)
		checkChunks(t, data, chunks, p)
		rest := data
		for i, c := range chunks {
			if n := testTable.Cut(rest, p); n != len(c) {
				t.Fatalf("chunk %d: Cut = %d, chunker gave %d", i, n, len(c))
			}
			rest = rest[len(c):]
		}
		got := chunkAll(t, &stutterReader{r: bytes.NewReader(data)}, p, testTable)
		if fmt.Sprint(boundaries(got)) != fmt.Sprint(boundaries(chunks)) {
			t.Fatal("short reads give different chunks")
		}
	})
}
