package repository

import "sync"

// sealClasses are the buffer sizes of sealed blobs waiting for their pack:
// small files and trees, and chunks, which are at most scratchMax sealed in
// new repositories (2 MiB chunks). One size for all chunks, whatever they
// compress to: a buffer is only faulted in as far as it is written, and
// a single class lets any buffer serve the next blob.
var sealClasses = [...]int{32 << 10, scratchMax}

// sealCacheMax is the most storage a bufCache keeps idle: enough for the
// blobs in flight at once (the encoders', and a few queued for each open
// pack file).
const sealCacheMax = 12 << 20

// bufCache keeps the buffers of sealed blobs for the repository's lifetime
// so that the next blob reuses memory already mapped. A sync.Pool loses its
// buffers at every garbage collection, and a new buffer is fresh memory that
// the kernel faults in page by page: on this project's bench machine (a
// virtual machine) a first backup took 20,000 more page faults and 0.3 s
// more that way. Larger blobs (chunks of old repositories, up to 8 MiB) get
// buffers of their own.
type bufCache struct {
	mu    sync.Mutex
	free  [len(sealClasses)][]*[]byte
	bytes int
}

// sealClass returns the index and size of the smallest class that holds n
// bytes, or -1 if none does.
func sealClass(n int) (int, int) {
	for i, size := range sealClasses {
		if n <= size {
			return i, size
		}
	}
	return -1, 0
}

// get returns an empty buffer with room for n bytes: a kept one of its
// class, a new one of the class size, or, beyond the largest class, one of
// exactly n bytes that put will not keep.
func (c *bufCache) get(n int) *[]byte {
	i, size := sealClass(n)
	if i < 0 {
		b := make([]byte, 0, n)
		return &b
	}
	c.mu.Lock()
	if k := len(c.free[i]); k > 0 {
		b := c.free[i][k-1]
		c.free[i] = c.free[i][:k-1]
		c.bytes -= size
		c.mu.Unlock()
		return b
	}
	c.mu.Unlock()
	b := make([]byte, 0, size)
	return &b
}

// put gives back a buffer from get; it is kept if it is of a class and the
// cache holds less than sealCacheMax.
func (c *bufCache) put(b *[]byte) {
	i, size := sealClass(cap(*b))
	if i < 0 || cap(*b) != size {
		return
	}
	*b = (*b)[:0]
	c.mu.Lock()
	if c.bytes+size <= sealCacheMax {
		c.free[i] = append(c.free[i], b)
		c.bytes += size
	}
	c.mu.Unlock()
}
