package repository

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"bunker/internal/backend"
	"bunker/internal/repo"
	"bunker/internal/repo/crypto"
	"bunker/internal/repo/index"
	"bunker/internal/repo/pack"
)

// encodeSlot is the scratch of one blob encoding: the compressed payload
// (then the opened one) and the decompressed check. encodeSlots holds one
// per CPU and encoding takes one, so no more blobs are encoded at once than
// can run (six workers encoding, each with its buffers, only added memory),
// and the scratch is reused rather than allocated for every blob.
type encodeSlot struct{ z, d []byte }

var encodeSlots = func() chan *encodeSlot {
	n := runtime.GOMAXPROCS(0)
	c := make(chan *encodeSlot, n)
	for range n {
		c <- new(encodeSlot)
	}
	return c
}()

// scratchMax is the most scratch a slot keeps, and the size of kept sealed
// buffers and of the buffers that stream packs back: room for the largest
// chunk of a new repository (2 MiB) compressed, sealed or decompressed.
// Chunks of repositories made with 8 MiB chunks get buffers of their own
// when they pass it.
const scratchMax = 2<<20 + 64<<10

// scratch returns empty storage of at least n bytes, b's if it is or can be
// made large enough.
func scratch(b *[]byte, n int) []byte {
	if cap(*b) >= n {
		return (*b)[:0]
	}
	if n > scratchMax {
		return make([]byte, 0, n)
	}
	*b = make([]byte, 0, scratchMax)
	return *b
}

// SaveBlob stores a blob unless the repository already has it. It returns the
// blob's ID and whether it was new. The work (compression, sealing, the check
// that the sealed blob opens to the same bytes) runs on the caller's goroutine,
// so callers get parallelism by calling from several goroutines. data is not
// retained. If id is the zero ID it is computed.
func (r *Repository) SaveBlob(ctx context.Context, t repo.BlobType, data []byte, id repo.ID) (repo.ID, bool, int, error) {
	if len(data) > MaxBlobData {
		return id, false, 0, fmt.Errorf("%v blob of %d bytes: %w", t, len(data), ErrBlobTooLarge)
	}
	if id.IsNull() {
		id = r.key.BlobID(data)
	}
	h := repo.BlobHandle{ID: id, Type: t}
	if ok, err := r.claim(h); !ok {
		return id, false, 0, err
	}
	sealed, compressed, err := r.encodeBlob(data)
	if err != nil {
		r.mu.Lock()
		delete(r.pending, h)
		r.mu.Unlock()
		return id, false, 0, fmt.Errorf("blob %s: %w", id.Short(), err)
	}
	n := len(*sealed)
	err = r.addToPack(ctx, t, id, sealed, len(data), compressed)
	if err != nil {
		r.mu.Lock()
		delete(r.pending, h)
		r.mu.Unlock()
		return id, false, 0, err
	}
	return id, true, n, nil
}

// MaxBlobData is the largest blob SaveBlob stores: stored uncompressed and
// sealed, it is at most pack.MaxBlobSize, the most a pack header or index
// may name. Chunks are far smaller (2 MiB); a tree is larger only for a
// directory of hundreds of thousands of entries or a file of about two
// million chunks (some 2 TB).
const MaxBlobData = pack.MaxBlobSize - crypto.Overhead

// ErrBlobTooLarge is returned for a blob over MaxBlobData bytes: storing it
// would make the index that names it unreadable.
var ErrBlobTooLarge = repo.ErrBlobTooLarge

// claim reports whether the caller is to store the blob h: false when the
// index has it or another caller is storing it (or an upload has failed,
// with that error). The index is asked again under r.mu: an upload adds its
// pack's blobs to the index and only then drops them from pending, so a
// caller that found the index without h just before that upload finished
// would otherwise find pending without it too, and store h a second time
// (harmless, as prune drops duplicates, but stored for nothing).
func (r *Repository) claim(h repo.BlobHandle) (bool, error) {
	if r.idx.Has(h) {
		return false, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.uploadErr; err != nil {
		return false, err
	}
	if _, ok := r.pending[h]; ok || r.idx.Has(h) {
		return false, nil
	}
	r.pending[h] = struct{}{}
	return true, nil
}

// encodeBlob compresses (when it pays) and seals data, then opens and
// decompresses the result and compares it with data: a faulty encoder or
// memory error must fail the backup, not store corrupt data (RELIABILITY B6).
// The sealed blob is returned in a buffer from r.seals.
func (r *Repository) encodeBlob(data []byte) (*[]byte, bool, error) {
	slot := <-encodeSlots
	defer func() { encodeSlots <- slot }()
	z := scratch(&slot.z, compressBound(len(data)))
	payload := data
	compressed := false
	// Every blob is offered to zstd: it stores incompressible blocks raw at
	// little cost (measured: random data backs up as fast as with a
	// compressibility sample first), and a sample misjudges mixed chunks
	// (a disk image's zero runs between random extents).
	if r.opts.Compression != CompressionOff && len(data) > 64 {
		out, ok := r.benc.encode(z, data)
		// Keep compression where it saves at least 1/256 of the size.
		if ok && len(out) < len(data)-len(data)/256 {
			payload, compressed = out, true
		}
	}
	sp := r.seals.get(len(payload) + crypto.Overhead)
	*sp = r.key.Seal(*sp, payload)
	if r.testCorrupt != nil {
		r.testCorrupt(*sp)
	}
	// Open into the compression scratch (payload is no longer needed), then
	// decompress into the slot's other buffer.
	opened, err := r.key.Open(z[:0], *sp)
	if err == nil && compressed {
		var dec []byte
		dec, err = r.checkDecode(scratch(&slot.d, len(data)), opened)
		if err == nil && !bytes.Equal(dec, data) {
			err = ErrVerify
		}
	} else if err == nil && !bytes.Equal(opened, data) {
		err = ErrVerify
	}
	if err != nil {
		r.seals.put(sp)
		return nil, false, ErrVerify
	}
	return sp, compressed, nil
}

// checkDecode decompresses a blob just encoded, into dst's storage: with
// the encoder's own decoder where it has one (libzstd's, faster), else with
// the pure-Go decoder that reads blobs back.
func (r *Repository) checkDecode(dst, frame []byte) ([]byte, error) {
	if d, ok := r.benc.(interface {
		decode(dst, frame []byte) ([]byte, error)
	}); ok {
		return d.decode(dst, frame)
	}
	return r.dec.DecodeAll(frame, dst)
}

// packQueueLen is how many sealed blobs may wait to be written to pack
// files: enough that callers rarely wait, few enough to bound the memory
// they hold (up to 2 MiB each) when the disk is slower than encoding.
const packQueueLen = 8

// addToPack adds a sealed blob to the open pack of its type and takes its
// buffer (from r.seals), given back once the blob is in the pack. A file
// pack is written outside r.mu, by the callers that add to it (see
// pack.Writer.WriteQueued). A caller waits for room among the blobs
// waiting to be written before it takes r.mu, never while holding it: a
// write that stalls (the disk busy with another pack's fsync) then stalls
// only the callers with blobs to add, not every SaveBlob and claim
// (measured: a first backup's blob workers spent 3.8 s in all waiting on
// r.mu when it was held while waiting for room).
func (r *Repository) addToPack(ctx context.Context, t repo.BlobType, id repo.ID, sealed *[]byte, rawLen int, compressed bool) error {
	select {
	case r.packQueue <- struct{}{}:
	case <-ctx.Done():
		r.seals.put(sealed)
		return ctx.Err()
	}
	release := func() { r.seals.put(sealed); <-r.packQueue }
	r.mu.Lock()
	w := r.packers[t]
	if w == nil {
		if tf, ok := r.be.(backend.TempFiler); ok {
			f, err := tf.TempFile()
			if err != nil {
				r.mu.Unlock()
				release()
				return fmt.Errorf("create pack: %w", err)
			}
			w = pack.NewFileWriter(f)
		} else {
			w = pack.NewWriterBuffer(r.packBuffer())
		}
		r.packers[t] = w
	}
	w.Add(t, id, *sealed, rawLen, compressed, release)
	var full *pack.Writer
	if w.Full(r.opts.PackSize) {
		full = w
		delete(r.packers, t)
	}
	r.mu.Unlock()
	w.WriteQueued()
	if full != nil {
		r.upload(ctx, full)
	}
	return nil
}

// packBuffer returns storage for a new pack, reusing that of stored packs:
// a backup goes through hundreds of 16 MiB packs and would otherwise leave all
// of them to the garbage collector. The caller holds r.mu.
func (r *Repository) packBuffer() []byte {
	if n := len(r.freePacks); n > 0 {
		b := r.freePacks[n-1]
		r.freePacks = r.freePacks[:n-1]
		return b
	}
	// Room for a full pack, one more maximal blob and the header.
	return make([]byte, 0, r.opts.PackSize+pack.MaxChunkSealed+(1<<20))
}

// upload stores a finished pack in the background, bounded by opts.Uploads.
func (r *Repository) upload(ctx context.Context, w *pack.Writer) {
	r.uploadSem <- struct{}{}
	r.uploads.Add(1)
	// The upload outlives the caller's context (the archiver cancels its own
	// when it returns); Flush waits for it, and an interrupted process ends it.
	uctx := context.WithoutCancel(ctx)
	go func() {
		defer func() { <-r.uploadSem; r.uploads.Done() }()
		err := r.storePack(uctx, w)
		if err == nil {
			err = r.partialIndex(uctx)
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, b := range w.Blobs() {
			delete(r.pending, b.Handle())
		}
		if w.File() == nil {
			r.freePacks = append(r.freePacks, w.Buffer())
		}
		if err != nil && r.uploadErr == nil {
			r.uploadErr = err
		}
	}()
}

func (r *Repository) storePack(ctx context.Context, w *pack.Writer) error {
	var (
		id   repo.ID
		size int
		h    backend.Handle
		err  error
	)
	if f := w.File(); f != nil {
		tf := r.be.(backend.TempFiler)
		id, size, err = w.FinishFile(r.key)
		if err != nil {
			tf.DiscardTempFile(f)
			return fmt.Errorf("write pack: %w", err)
		}
		h = backend.Handle{Type: backend.PackFile, Name: id.String()}
		err = tf.SaveTempFile(ctx, h, f)
	} else {
		data := w.Finish(r.key)
		id, size = crypto.FileID(data), len(data)
		h = backend.Handle{Type: backend.PackFile, Name: id.String()}
		err = r.be.Save(ctx, h, data)
	}
	if errors.Is(err, backend.ErrExists) {
		// Same name means same bytes: the pack is already stored.
		err = nil
	}
	if err != nil {
		return fmt.Errorf("store pack %s: %w", id.Short(), err)
	}
	// Never let the index refer to a pack that storage does not hold (RELIABILITY C5).
	if err := r.confirmStored(ctx, h, size); err != nil {
		return err
	}
	Failpoint(FailpointPackStored)
	blobs := append([]pack.Blob(nil), w.Blobs()...)
	r.idx.AddPack(id, blobs)
	r.mu.Lock()
	r.newPacks = append(r.newPacks, index.PackEntry{ID: id, Blobs: blobs})
	r.mu.Unlock()
	return nil
}

// Abort ends a write that will not be committed (a failed backup): it drops
// the open packs, removing their temporary files, and waits for the uploads
// in flight. No index is written: what was uploaded stays unreferenced until
// prune removes it. The repository must not be written afterwards.
func (r *Repository) Abort() {
	r.mu.Lock()
	open := r.packers
	r.packers = make(map[repo.BlobType]*pack.Writer)
	r.mu.Unlock()
	for _, w := range open {
		if f := w.File(); f != nil {
			w.Discard()
			r.be.(backend.TempFiler).DiscardTempFile(f)
		}
	}
	r.uploads.Wait()
}

// confirmStored checks that storage holds a file of the expected size under h,
// so that nothing ever refers to a file that an upload only claimed to store
// (RELIABILITY C5).
func (r *Repository) confirmStored(ctx context.Context, h backend.Handle, size int) error {
	fi, err := r.be.Stat(ctx, h)
	switch {
	case errors.Is(err, backend.ErrNotExist):
		return fmt.Errorf("%v: %w", h, ErrUploadLost)
	case err != nil:
		return fmt.Errorf("confirm %v: %w", h, err)
	case fi.Size != int64(size):
		return fmt.Errorf("%v: %w (%d bytes stored, %d sent)", h, ErrUploadLost, fi.Size, size)
	}
	return nil
}

// SetIndexInterval makes a long write (a backup) store an index file for
// the packs stored so far at least every d, instead of only at Flush: a pack
// no index names then stays much younger than prune's grace period for
// unindexed packs, whatever the length of the backup. It is checked after
// every pack stored and on a timer (a quarter of d), so that a backup that
// stores nothing for a long while (reading a long run of data stored
// already, or a slow file) still indexes the packs it stored before. 0
// turns it off; Close does.
func (r *Repository) SetIndexInterval(d time.Duration) {
	r.mu.Lock()
	r.indexEvery, r.lastIndex = d, time.Now()
	stop := r.stopIndexer
	r.stopIndexer = nil
	if d > 0 {
		r.stopIndexer = r.startIndexer(max(d/4, time.Millisecond))
	}
	r.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// startIndexer calls partialIndex every period until the returned
// function is called (which waits for it to end). A failure is kept as an
// upload's is: the next SaveBlob or Flush returns it.
func (r *Repository) startIndexer(period time.Duration) func() {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
			}
			if err := r.partialIndex(context.Background()); err != nil {
				r.mu.Lock()
				if r.uploadErr == nil {
					r.uploadErr = err
				}
				r.mu.Unlock()
			}
		}
	}()
	return func() { close(quit); <-done }
}

// partialIndex writes an index for the packs stored so far once the index
// interval has passed.
func (r *Repository) partialIndex(ctx context.Context) error {
	r.indexMu.Lock()
	defer r.indexMu.Unlock()
	r.mu.Lock()
	if r.indexEvery <= 0 || time.Since(r.lastIndex) < r.indexEvery || len(r.newPacks) == 0 {
		r.mu.Unlock()
		return nil
	}
	packs := r.newPacks
	r.newPacks = nil
	r.lastIndex = time.Now()
	r.mu.Unlock()
	return r.saveOwnIndex(ctx, packs)
}

// saveOwnIndex writes an index file for packs this handle stored and
// remembers it as its own (CheckCommit checks its packs).
func (r *Repository) saveOwnIndex(ctx context.Context, packs []index.PackEntry) error {
	id, err := r.SaveIndex(ctx, &index.File{Packs: packs})
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.ownIndex[id] = packs
	r.mu.Unlock()
	return nil
}

// FlushPacks stores all open packs, waits for every upload, and returns the
// packs stored since the last flush, without writing an index for them.
func (r *Repository) FlushPacks(ctx context.Context) ([]index.PackEntry, error) {
	r.mu.Lock()
	var open []*pack.Writer
	for t, w := range r.packers {
		if w.Count() > 0 {
			open = append(open, w)
		}
		delete(r.packers, t)
	}
	r.mu.Unlock()
	for _, w := range open {
		r.upload(ctx, w)
	}
	r.uploads.Wait()
	r.indexMu.Lock() // after a partial index being written (see indexMu)
	r.mu.Lock()
	err := r.uploadErr
	packs := r.newPacks
	r.newPacks = nil
	r.mu.Unlock()
	r.indexMu.Unlock()
	return packs, err
}

// Flush stores all open packs, waits for every upload, and writes an index file
// for the packs stored since the last Flush. Only after Flush returns nil may a
// snapshot refer to the blobs saved before it.
func (r *Repository) Flush(ctx context.Context) error {
	packs, err := r.FlushPacks(ctx)
	if err != nil || len(packs) == 0 {
		return err
	}
	if err := r.saveOwnIndex(ctx, packs); err != nil {
		return err
	}
	Failpoint(FailpointIndexStored)
	return nil
}

// SaveIndex compresses, seals and stores an index file.
func (r *Repository) SaveIndex(ctx context.Context, f *index.File) (repo.ID, error) {
	// The blob encoder (libzstd where there is cgo): the pure-Go encoder
	// would keep megabytes of history per CPU for the rest of the run.
	body := f.Encode()
	plain, ok := r.benc.encode(make([]byte, 0, compressBound(len(body))), body)
	if !ok {
		plain = r.enc.EncodeAll(body, nil)
	}
	id, err := r.SaveUnpacked(ctx, backend.IndexFile, plain)
	if err != nil {
		return id, fmt.Errorf("save index: %w", err)
	}
	r.mu.Lock()
	r.indexFiles[id] = true
	r.mu.Unlock()
	return id, nil
}

// LoadIndexFile loads and decodes one index file.
func (r *Repository) LoadIndexFile(ctx context.Context, id repo.ID) (*index.File, error) {
	plain, err := r.LoadUnpacked(ctx, backend.IndexFile, id)
	if err != nil {
		return nil, err
	}
	raw, err := r.metaDc.DecodeAll(plain, nil)
	if err != nil {
		return nil, fmt.Errorf("index %s: %w: %w", id.Short(), ErrCorrupt, err)
	}
	f, err := index.Decode(raw)
	if err != nil {
		return nil, fmt.Errorf("index %s: %w: %w", id.Short(), ErrCorrupt, err)
	}
	return f, nil
}

// LoadIndex reads every index file into memory. Files superseded by another
// index file are skipped. A listed file that is gone when read was removed
// by a prune, which wrote a file superseding it first: the listing is then
// read again.
func (r *Repository) LoadIndex(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		err := r.loadIndex(ctx)
		if !errors.Is(err, backend.ErrNotExist) || attempt == 3 {
			return err
		}
	}
}

// LoadIndexFiles lists the index files and reads them all, several at once.
// The first file that cannot be read stops it; the error names the file.
func (r *Repository) LoadIndexFiles(ctx context.Context) ([]repo.ID, []*index.File, error) {
	ids, err := r.List(ctx, backend.IndexFile)
	if err != nil {
		return nil, nil, fmt.Errorf("list index: %w", err)
	}
	files := make([]*index.File, len(ids))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, id := range ids {
		g.Go(func() error {
			f, err := r.LoadIndexFile(gctx, id)
			files[i] = f
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, err
	}
	return ids, files, nil
}

func (r *Repository) loadIndex(ctx context.Context) error {
	ids, files, err := r.LoadIndexFiles(ctx)
	if errors.Is(err, ErrCorrupt) {
		return fmt.Errorf("%w (`bunker repair index` rebuilds the index from the packs)", err)
	}
	if err != nil {
		return err
	}
	byID := make(map[repo.ID]*index.File, len(ids))
	r.mu.Lock()
	for i, id := range ids {
		byID[id] = files[i]
		r.indexFiles[id] = true
		for _, s := range files[i].Supersedes {
			r.superseded[s] = true
		}
	}
	r.mu.Unlock()
	for _, p := range index.Live(byID) {
		r.idx.AddPack(p.ID, p.Blobs)
	}
	return nil
}

// LoadBlob loads, opens, decompresses and verifies one blob.
func (r *Repository) LoadBlob(ctx context.Context, t repo.BlobType, id repo.ID) ([]byte, error) {
	loc, ok := r.idx.Lookup(repo.BlobHandle{ID: id, Type: t})
	if !ok {
		return nil, fmt.Errorf("%v blob %s: %w", t, id.Short(), ErrBlobNotFound)
	}
	var sealed []byte
	h := backend.Handle{Type: backend.PackFile, Name: loc.Pack.String()}
	err := r.be.Load(ctx, h, int(loc.Length), int64(loc.Offset), func(rd io.Reader) error {
		sealed = make([]byte, loc.Length)
		_, err := io.ReadFull(rd, sealed)
		return err
	})
	if errors.Is(err, backend.ErrNotExist) || r.packShort(ctx, h, loc, err) {
		// The index names the pack and where the blob lies in it: a pack
		// missing or shorter than that is damage, not a failure to retry.
		return nil, fmt.Errorf("%v blob %s in pack %s: %w: %w", t, id.Short(), loc.Pack.Short(), ErrCorrupt, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%v blob %s in pack %s: %w", t, id.Short(), loc.Pack.Short(), err)
	}
	b := pack.Blob{Type: t, ID: id, Compressed: loc.Compressed, Offset: loc.Offset, Length: loc.Length, RawLength: loc.RawLength}
	plain, err := r.DecodeBlob(b, sealed, nil)
	if err != nil {
		return nil, fmt.Errorf("%v blob %s in pack %s: %w", t, id.Short(), loc.Pack.Short(), err)
	}
	return plain, nil
}

// packShort reports whether a load that ended early (err, an EOF) did so
// because the pack is shorter than the blob's end: a connection dropped
// in the middle of a response ends the same way, and is no damage.
func (r *Repository) packShort(ctx context.Context, h backend.Handle, loc repo.Location, err error) bool {
	if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return false
	}
	fi, serr := r.be.Stat(ctx, h)
	return serr == nil && fi.Size < int64(loc.Offset)+int64(loc.Length)
}

// ErrBlobMismatch is wrapped by DecodeBlob when the content is not what its ID says.
var ErrBlobMismatch = errors.New("blob content does not match its ID")

// DecodeBlob opens, decompresses and verifies a sealed blob, appending its
// plaintext to dst. It decrypts in place: sealed is overwritten.
func (r *Repository) DecodeBlob(b pack.Blob, sealed []byte, dst []byte) ([]byte, error) {
	if len(sealed) < crypto.Overhead {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, crypto.ErrUnauthenticated)
	}
	opened, err := r.key.Open(sealed[crypto.NonceSize:crypto.NonceSize], sealed)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if b.RawLength > pack.MaxBlobSize {
		return nil, fmt.Errorf("%w: raw length %d over the %d-byte limit", ErrCorrupt, b.RawLength, pack.MaxBlobSize)
	}
	plain := opened
	if b.Compressed {
		// With the decoder's cap limit, DecodeAll never grows dst: giving it
		// exactly RawLength of room bounds what a hostile blob can allocate.
		if cap(dst)-len(dst) < int(b.RawLength) {
			dst = append(make([]byte, 0, len(dst)+int(b.RawLength)), dst...)
		}
		plain, err = r.dec.DecodeAll(opened, dst)
		if err != nil {
			return nil, fmt.Errorf("%w: decompress: %w", ErrCorrupt, err)
		}
	} else if dst != nil {
		plain = append(dst, opened...)
	}
	if len(plain)-len(dst) != int(b.RawLength) {
		return nil, fmt.Errorf("%w: length %d, want %d", ErrCorrupt, len(plain)-len(dst), b.RawLength)
	}
	if r.key.BlobID(plain[len(dst):]) != b.ID {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, ErrBlobMismatch)
	}
	return plain, nil
}

// maxGap is the largest run of unneeded bytes between two wanted blobs that
// LoadPackRange reads through rather than starting a new request.
const maxGap = 1 << 20

// LoadPackRange reads the given blobs of one pack (sorted by offset) and calls
// fn for each with its plaintext or the error that stopped it from decoding.
// Blobs close together are read in one request, streamed blob by blob, so
// memory stays at one blob whatever the pack size. fn runs on the caller's
// goroutine; the plaintext is valid only during fn.
func (r *Repository) LoadPackRange(ctx context.Context, packID repo.ID, blobs []pack.Blob, fn func(b pack.Blob, plain []byte, err error) error) error {
	return r.loadPackRange(ctx, packID, blobs, false, func(b pack.Blob, _, plain []byte, err error) error { return fn(b, plain, err) })
}

// CopyBlobs stores the given blobs of one pack (sorted by offset) in new
// packs as they are, still sealed and compressed, once each has been
// decrypted, decompressed and checked against its ID. Blobs the index
// already holds are skipped. Prune repacks with it: nothing is re-encoded.
func (r *Repository) CopyBlobs(ctx context.Context, packID repo.ID, blobs []pack.Blob) error {
	return r.CopySealed(ctx, r, packID, blobs, nil)
}

func (r *Repository) loadPackRange(ctx context.Context, packID repo.ID, blobs []pack.Blob, keepSealed bool, fn func(b pack.Blob, sealed, plain []byte, err error) error) error {
	for len(blobs) > 0 {
		n := 1
		for n < len(blobs) && int64(blobs[n].Offset)-(int64(blobs[n-1].Offset)+int64(blobs[n-1].Length)) <= maxGap {
			n++
		}
		if err := r.loadRun(ctx, packID, blobs[:n], keepSealed, fn); err != nil {
			return err
		}
		blobs = blobs[n:]
	}
	return nil
}

// runReaders buffer a run's stream: read blob by blob, a run of small
// files' blobs cost a system call each (a tenth of a restore's, which also
// creates and finishes a file per blob). Blobs past the buffer's size are
// read straight into their own buffer.
var runReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 256<<10) }}

// blobBufs hold one sealed blob, and decompressed plaintext, while streaming
// packs: scratchMax, like the encoder's buffers, so that a whole 2 MiB chunk
// fits sealed (at 2 MiB even, an incompressible chunk cut at the maximum was
// a "big" blob below, read one at a time into a buffer of its own).
var blobBufs = sync.Pool{New: func() any { b := make([]byte, 0, scratchMax); return &b }}

// bigBlobs lets one reader at a time hold a blob larger than scratchMax (the
// 8 MiB chunks of repositories made before the 2 MiB bound, such as a disk
// image's zero runs): two restore workers each holding one, sealed and
// decoded, set the restore's peak memory (measured: 4 MB more RSS on the
// bench).
var bigBlobs = make(chan struct{}, 1)

// loadRun reads one run of blobs. With keepSealed the sealed bytes handed to
// fn are intact (decryption goes to another buffer); otherwise uncompressed
// blobs are decrypted in place.
func (r *Repository) loadRun(ctx context.Context, packID repo.ID, blobs []pack.Blob, keepSealed bool, fn func(b pack.Blob, sealed, plain []byte, err error) error) error {
	start := int64(blobs[0].Offset)
	last := blobs[len(blobs)-1]
	end := int64(last.Offset) + int64(last.Length)
	h := backend.Handle{Type: backend.PackFile, Name: packID.String()}
	sp := blobBufs.Get().(*[]byte)
	dp := blobBufs.Get().(*[]byte)
	defer blobBufs.Put(sp)
	defer blobBufs.Put(dp)
	var cp *[]byte
	if keepSealed {
		cp = blobBufs.Get().(*[]byte)
		defer blobBufs.Put(cp)
	}
	err := r.be.Load(ctx, h, int(end-start), start, func(raw io.Reader) error {
		rd := runReaders.Get().(*bufio.Reader)
		rd.Reset(raw)
		defer func() {
			rd.Reset(nil)
			runReaders.Put(rd)
		}()
		pos := start
		for _, b := range blobs {
			if gap := int64(b.Offset) - pos; gap > 0 {
				if _, err := io.CopyN(io.Discard, rd, gap); err != nil {
					return err
				}
			}
			if b.Length > pack.MaxBlobSize {
				// Skipped with the next gap, whose start stays at pos.
				if err := fn(b, nil, nil, fmt.Errorf("%w: length %d over the %d-byte limit", ErrCorrupt, b.Length, pack.MaxBlobSize)); err != nil {
					return callbackError{err}
				}
				continue
			}
			if cap(*sp) < int(b.Length) {
				*sp = make([]byte, b.Length)
			}
			sealed := (*sp)[:b.Length]
			if _, err := io.ReadFull(rd, sealed); err != nil {
				return err
			}
			pos = int64(b.Offset) + int64(b.Length)
			work := sealed // decrypted in place
			if keepSealed {
				*cp = append((*cp)[:0], sealed...)
				work = *cp
			}
			var dst []byte // uncompressed blobs are decrypted in place
			if b.Compressed {
				dst = (*dp)[:0]
			}
			big := b.RawLength > scratchMax || b.Length > scratchMax
			if big {
				bigBlobs <- struct{}{}
			}
			plain, err := r.DecodeBlob(b, work, dst)
			if err == nil && b.Compressed {
				*dp = plain
			}
			err = fn(b, sealed, plain, err)
			if big {
				// Drop what outgrew the pooled size rather than keep it.
				if cap(*sp) > scratchMax {
					*sp = make([]byte, 0, scratchMax)
				}
				if cap(*dp) > scratchMax {
					*dp = make([]byte, 0, scratchMax)
				}
				<-bigBlobs
			}
			if err != nil {
				return callbackError{err}
			}
		}
		return nil
	})
	var ce callbackError
	if errors.As(err, &ce) {
		return ce.err
	}
	if err != nil {
		return fmt.Errorf("pack %s: %w", packID.Short(), err)
	}
	return nil
}

// callbackError carries a caller's error through a backend Load.
type callbackError struct{ err error }

func (e callbackError) Error() string { return e.err.Error() }

// PackStream describes a whole pack read by ReadPack.
type PackStream struct {
	// Hash is the FileID of all bytes read; it equals the pack ID if intact.
	Hash repo.ID
	// Size is the number of bytes read.
	Size int64
	// Header lists the blobs of the pack's own header, or HeaderErr says why not.
	Header    []pack.Blob
	HeaderErr error
}

// ReadPack reads a whole pack once, in order: it hashes every byte, decodes
// each of the given blobs (sorted by offset, as the index places them) and
// calls fn for it, and finally decodes the pack's own header. Memory stays at
// one blob. An error from fn stops the read and is returned.
func (r *Repository) ReadPack(ctx context.Context, packID repo.ID, size int64, blobs []pack.Blob, fn func(b pack.Blob, plain []byte, err error) error) (*PackStream, error) {
	h := backend.Handle{Type: backend.PackFile, Name: packID.String()}
	sp := blobBufs.Get().(*[]byte)
	dp := blobBufs.Get().(*[]byte)
	defer blobBufs.Put(sp)
	defer blobBufs.Put(dp)
	res := &PackStream{}
	hasher := crypto.NewFileHasher()
	err := r.be.Load(ctx, h, 0, 0, func(rd io.Reader) error {
		cr := &countingReader{r: io.TeeReader(bufio.NewReaderSize(rd, 1<<20), hasher)}
		for _, b := range blobs {
			if gap := int64(b.Offset) - cr.n; gap > 0 {
				if _, err := io.CopyN(io.Discard, cr, gap); err == io.EOF {
					// The pack ends before the blob begins.
					if err := fn(b, nil, fmt.Errorf("%w: past the end of the pack", ErrCorrupt)); err != nil {
						return callbackError{err}
					}
					continue
				} else if err != nil {
					return err
				}
			} else if gap < 0 {
				if err := fn(b, nil, fmt.Errorf("%w: blob overlaps the previous one", ErrCorrupt)); err != nil {
					return callbackError{err}
				}
				continue
			}
			if b.Length > pack.MaxBlobSize {
				if err := fn(b, nil, fmt.Errorf("%w: length %d over the %d-byte limit", ErrCorrupt, b.Length, pack.MaxBlobSize)); err != nil {
					return callbackError{err}
				}
				continue
			}
			if cap(*sp) < int(b.Length) {
				*sp = make([]byte, b.Length)
			}
			sealed := (*sp)[:b.Length]
			if _, err := io.ReadFull(cr, sealed); err != nil {
				if err == io.EOF || err == io.ErrUnexpectedEOF {
					if err := fn(b, nil, fmt.Errorf("%w: past the end of the pack", ErrCorrupt)); err != nil {
						return callbackError{err}
					}
					continue
				}
				return err
			}
			var dst []byte
			if b.Compressed {
				dst = (*dp)[:0]
			}
			plain, err := r.DecodeBlob(b, sealed, dst)
			if err == nil && b.Compressed {
				*dp = plain
			}
			if err := fn(b, plain, err); err != nil {
				return callbackError{err}
			}
		}
		// The rest: whatever lies after the last listed blob, then the header.
		rest, err := io.ReadAll(io.LimitReader(cr, pack.MaxHeaderSize+4+int64(pack.MaxBlobSize)))
		if err != nil {
			return err
		}
		if _, err := io.Copy(io.Discard, cr); err != nil {
			return err
		}
		res.Size = cr.n
		if len(rest) < 4 {
			res.HeaderErr = fmt.Errorf("%w: no header", pack.ErrInvalid)
			return nil
		}
		n, herr := pack.HeaderLength(rest[len(rest)-4:], res.Size)
		if herr == nil && n+4 > len(rest) {
			herr = fmt.Errorf("%w: header overlaps the blobs", pack.ErrInvalid)
		}
		if herr == nil {
			res.Header, herr = pack.DecodeHeader(r.key, rest[len(rest)-4-n:len(rest)-4], res.Size)
		}
		res.HeaderErr = herr
		return nil
	})
	var ce callbackError
	if errors.As(err, &ce) {
		return nil, ce.err
	}
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", packID.Short(), err)
	}
	hasher.Sum(res.Hash[:0])
	return res, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// ReadPackHeader reads and decodes a pack's own header (for check and index rebuilds).
func (r *Repository) ReadPackHeader(ctx context.Context, id repo.ID, size int64) ([]pack.Blob, error) {
	h := backend.Handle{Type: backend.PackFile, Name: id.String()}
	if size < 4 {
		return nil, fmt.Errorf("pack %s: %w: %d bytes", id.Short(), pack.ErrInvalid, size)
	}
	var trailer [4]byte
	err := r.be.Load(ctx, h, 4, size-4, func(rd io.Reader) error {
		_, err := io.ReadFull(rd, trailer[:])
		return err
	})
	if err != nil {
		return nil, err
	}
	n, err := pack.HeaderLength(trailer[:], size)
	if err != nil {
		return nil, err
	}
	sealed := make([]byte, n)
	err = r.be.Load(ctx, h, n, size-4-int64(n), func(rd io.Reader) error {
		_, err := io.ReadFull(rd, sealed)
		return err
	})
	if err != nil {
		return nil, err
	}
	return pack.DecodeHeader(r.key, sealed, size)
}
