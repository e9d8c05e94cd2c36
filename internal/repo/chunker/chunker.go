package chunker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"

	"github.com/zeebo/blake3"
)

// Limits enforced by Params.Validate.
const (
	// MinAvg is the smallest allowed Params.Avg.
	MinAvg = 64
	// MaxMax is the largest allowed Params.Max (the chunker buffers at least 1.25*Max bytes).
	MaxMax = 1 << 30
)

// Mask widths relative to log2(Avg); see doc.go for the rationale.
const (
	strictExtraBits = 1 // maskS has log2(Avg)+1 bits set: cut probability 1/(2*Avg) per byte
	looseFewerBits  = 3 // maskL has log2(Avg)-3 bits set: cut probability 8/Avg per byte
	windowSize      = 64
	// lowestMaskBit is the lowest bit used by the masks. Bit k of the gear
	// hash depends only on the last k+1 bytes, so masks use the high bits.
	lowestMaskBit = 16
)

// Params are the chunk size parameters, in bytes.
type Params struct {
	Min, Avg, Max int // Avg must be a power of two
}

// DefaultParams returns Min 512 KiB, Avg 1 MiB, Max 2 MiB.
func DefaultParams() Params {
	return Params{Min: 512 << 10, Avg: 1 << 20, Max: 2 << 20}
}

// Validate checks 1 <= Min <= Avg <= Max <= MaxMax, Avg >= MinAvg and Avg a
// power of two.
func (p Params) Validate() error {
	switch {
	case p.Min < 1:
		return fmt.Errorf("chunker: Min %d must be at least 1", p.Min)
	case p.Avg < MinAvg || p.Avg&(p.Avg-1) != 0:
		return fmt.Errorf("chunker: Avg %d must be a power of two >= %d", p.Avg, MinAvg)
	case p.Min > p.Avg:
		return fmt.Errorf("chunker: Min %d larger than Avg %d", p.Min, p.Avg)
	case p.Avg > p.Max:
		return fmt.Errorf("chunker: Avg %d larger than Max %d", p.Avg, p.Max)
	case p.Max > MaxMax:
		return fmt.Errorf("chunker: Max %d larger than %d", p.Max, MaxMax)
	}
	return nil
}

// masks returns the strict (before Avg) and loose (after Avg) masks for p.
func (p Params) masks() (maskS, maskL uint64) {
	b := bits.TrailingZeros64(uint64(p.Avg))
	return spreadMask(b + strictExtraBits), spreadMask(b - looseFewerBits)
}

// spreadMask returns a mask with n bits set, spread evenly over bits
// [lowestMaskBit, 63], always including bit 63.
func spreadMask(n int) uint64 {
	const span = 64 - lowestMaskBit
	if n <= 0 || n > span {
		panic("chunker: mask width out of range")
	}
	var m uint64
	for i := 0; i < n; i++ {
		m |= 1 << (63 - i*span/n)
	}
	return m
}

// Table is the gear table: one pseudo-random 64-bit value per byte value.
type Table [256]uint64

// tableContext separates the gear table derivation from any other use of
// the repository key.
const tableContext = "bunker chunker gear table v1"

// NewTable derives the gear table from a secret 32-byte repository key, using
// keyed BLAKE3 in XOF mode over a fixed context string.
func NewTable(key [32]byte) *Table {
	h, err := blake3.NewKeyed(key[:])
	if err != nil {
		panic(err) // only fails for a key that is not 32 bytes
	}
	_, _ = h.WriteString(tableContext)
	var raw [256 * 8]byte
	if _, err := io.ReadFull(h.Digest(), raw[:]); err != nil {
		panic(err)
	}
	t := new(Table)
	for i := range t {
		t[i] = binary.LittleEndian.Uint64(raw[i*8:])
	}
	return t
}

// Cut returns the length of the first chunk in data: a content-defined cut
// point in [p.Min, p.Max], or len(data) if data holds no cut point and
// len(data) <= p.Max (that is, data is the final chunk of a stream). If
// len(data) <= p.Min it returns len(data). Cut panics if p is invalid.
func (t *Table) Cut(data []byte, p Params) int {
	if err := p.Validate(); err != nil {
		panic(err)
	}
	maskS, maskL := p.masks()
	return t.cut(data, p.Min, p.Avg, p.Max, maskS, maskL)
}

// cut is Cut with pre-validated parameters and precomputed masks.
func (t *Table) cut(data []byte, minSize, avgSize, maxSize int, maskS, maskL uint64) int {
	n := len(data)
	if n <= minSize {
		return n
	}
	if n > maxSize {
		n = maxSize
	}
	normal := min(avgSize, n)

	// Warm up the hash over the window that precedes the first candidate
	// (the byte at index minSize-1, i.e. a chunk of length minSize), so the
	// hash there is a function of the last 64 bytes only. Bytes before that
	// cannot influence the gear hash, so they are skipped entirely.
	var h uint64
	start := max(minSize-windowSize, 0)
	for _, b := range data[start : minSize-1] {
		h = h<<1 + t[b]
	}

	// Strict mask up to the normal (average) size, then the loose mask up
	// to the maximum.
	i := minSize - 1
	k, h := t.scan(data[i:normal], h, maskS)
	if k >= 0 {
		return i + k
	}
	if k, _ = t.scan(data[normal:n], h, maskL); k >= 0 {
		return normal + k
	}
	return n
}

// scan continues the gear hash h over d. It returns k, the length of the
// prefix of d after which the hash first has all mask bits zero, or -1 and
// the final hash if that never happens.
//
// The loop is unrolled by four: the hash after four bytes is computed as
// h<<4 + (a<<3 + b<<2 + c<<1 + e), so the loop-carried dependency is one
// shift-add per four bytes and the table loads of a block are independent
// of it; the three intermediate hashes, needed only for the mask tests, are
// computed off that chain. One slice bounds check per block, none per byte.
func (t *Table) scan(d []byte, h, mask uint64) (int, uint64) {
	i := 0
	for ; i+4 <= len(d); i += 4 {
		w := d[i : i+4 : i+4]
		a, b, c, e := t[w[0]], t[w[1]], t[w[2]], t[w[3]]
		h1 := h<<1 + a
		h2 := h<<2 + (a<<1 + b)
		h3 := h2<<1 + c
		h = h<<4 + (a<<3 + b<<2 + c<<1 + e)
		if h1&mask == 0 {
			return i + 1, h1
		}
		if h2&mask == 0 {
			return i + 2, h2
		}
		if h3&mask == 0 {
			return i + 3, h3
		}
		if h&mask == 0 {
			return i + 4, h
		}
	}
	for ; i < len(d); i++ {
		h = h<<1 + t[d[i]]
		if h&mask == 0 {
			return i + 1, h
		}
	}
	return -1, h
}

// Chunker splits a stream into content-defined chunks. It reads the input
// into an internal buffer of several chunks (see bufSize) that is reused,
// also across Reset.
type Chunker struct {
	rd    io.Reader
	tab   *Table
	p     Params
	maskS uint64
	maskL uint64

	buf  []byte
	r, w int // unconsumed data is buf[r:w]
	// release, if set, is called before part of the buffer is overwritten
	// (see OnOverwrite); out lists the chunks returned since Reset that it
	// has not released yet, oldest first, and handed counts them all.
	release func(n int)
	out     []span
	handed  int
	eof     bool  // rd returned io.EOF
	err     error // sticky error
}

// span is a chunk handed out: its number since Reset and its place in buf.
type span struct{ n, start, end int }

// New returns a chunker splitting rd with parameters p and gear table t.
// It panics if p is invalid (see Params.Validate) or t is nil.
func New(rd io.Reader, p Params, t *Table) *Chunker {
	if err := p.Validate(); err != nil {
		panic(err)
	}
	if t == nil {
		panic("chunker: nil table")
	}
	c := &Chunker{tab: t, p: p}
	c.maskS, c.maskL = p.masks()
	c.Reset(rd)
	return c
}

// Reset makes c split rd from its start, keeping the parameters, the table,
// the buffer and the OnOverwrite function. No chunk returned before may be
// in use any more.
func (c *Chunker) Reset(rd io.Reader) {
	c.rd = rd
	c.r, c.w = 0, 0
	c.out = c.out[:0]
	c.handed = 0
	c.eof = false
	c.err = nil
}

// OnOverwrite lets a caller use chunks after the next call to Next, for
// example hand them to other goroutines without a copy. Before the chunker
// overwrites the bytes of a chunk it has returned, it calls fn(n), which
// must return only once the first n chunks returned since Reset (the one it
// is about to overwrite and all before it) are no longer in use. The buffer
// holds several chunks and is overwritten oldest first, so by then those
// are usually long done. Set fn before the first Next after New or Reset;
// without it, a chunk is valid until the next call to Next or Reset.
func (c *Chunker) OnOverwrite(fn func(n int)) { c.release = fn }

// overwriting is called before buf[a:b] is written: it releases the chunks
// up to the newest one there.
func (c *Chunker) overwriting(a, b int) {
	last := -1
	for i, s := range c.out {
		if s.start < b && a < s.end {
			last = i
		}
	}
	if last < 0 {
		return
	}
	c.release(c.out[last].n + 1)
	c.out = c.out[:copy(c.out, c.out[last+1:])]
}

// maxEmptyReads is how many successive 0, nil reads fill tolerates before
// giving up with io.ErrNoProgress (like bufio).
const maxEmptyReads = 100

// fill reads up to Max more bytes after the unconsumed data, first moving
// that to the front of the buffer if there is no room after it. It is only
// called with fewer than Max bytes unconsumed; Next calls it until at least
// Max bytes are buffered or the stream has ended.
func (c *Chunker) fill() error {
	if c.buf == nil {
		c.buf = make([]byte, bufSize(c.p.Max))
	}
	if c.w == len(c.buf) {
		if c.release != nil {
			c.overwriting(0, c.w-c.r)
		}
		c.w = copy(c.buf, c.buf[c.r:c.w])
		c.r = 0
	}
	end := min(len(c.buf), c.w+c.p.Max)
	if c.release != nil {
		c.overwriting(c.w, end)
	}
	empty := 0
	for c.w < end {
		n, err := c.rd.Read(c.buf[c.w:end])
		if n < 0 || n > end-c.w {
			return errors.New("chunker: reader returned invalid count")
		}
		c.w += n
		if err == io.EOF {
			c.eof = true
			return nil
		}
		if err != nil {
			return err
		}
		if n > 0 {
			empty = 0
		} else if empty++; empty >= maxEmptyReads {
			return io.ErrNoProgress
		}
	}
	return nil
}

// Next returns the next chunk. The returned slice is only valid until the
// next call to Next or Reset, unless OnOverwrite says otherwise; the caller
// must copy it to keep it. After the
// last chunk Next returns nil, io.EOF; an empty stream yields io.EOF at once.
// A read error other than io.EOF is returned (and then returned again by all
// later calls until Reset); data buffered when it occurred is discarded.
func (c *Chunker) Next() ([]byte, error) {
	if c.err != nil {
		return nil, c.err
	}
	for {
		data := c.buf[c.r:c.w]
		decisive := len(data) >= c.p.Max || c.eof
		if len(data) == 0 && c.eof {
			c.err = io.EOF
			return nil, io.EOF
		}
		if decisive || len(data) > c.p.Min {
			// Even when fewer than Max bytes are buffered, a cut found
			// before the end of the buffered data is final. Trying first
			// keeps the data moved by fill down to one partial chunk.
			n := c.tab.cut(data, c.p.Min, c.p.Avg, c.p.Max, c.maskS, c.maskL)
			if decisive || n < len(data) {
				if c.release != nil {
					c.out = append(c.out, span{c.handed, c.r, c.r + n})
				}
				c.handed++
				c.r += n
				return data[:n:n], nil
			}
		}
		if err := c.fill(); err != nil {
			c.err = err
			return nil, err
		}
	}
}

// bufSize is the chunker's buffer for chunks of at most maxChunk bytes: that
// for a decisive cut plus a quarter to read into, and at least 6 MiB (8
// times maxChunk for small test parameters), so that the chunks handed out
// (see OnOverwrite) are done long before the buffer comes round to them.
func bufSize(maxChunk int) int {
	return max(maxChunk+maxChunk/4, min(6<<20, 8*maxChunk))
}
