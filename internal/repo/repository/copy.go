package repository

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"bunker/internal/backend"
	"bunker/internal/repo"
	"bunker/internal/repo/crypto"
	"bunker/internal/repo/index"
	"bunker/internal/repo/pack"
)

// SharesKeys reports whether o seals and names blobs exactly as r does: the
// same master keys (o was made with `init --copy-params-from` r, or the
// other way round). Packs of one are then valid packs of the other, and a
// copy between them moves packs as they are.
func (r *Repository) SharesKeys(o *Repository) bool {
	return r.master.Encrypt == o.master.Encrypt && r.master.MAC == o.master.MAC
}

// ReadVerifiedPack reads a whole pack and checks all of it before anything
// of it may be stored elsewhere: its bytes hash to its name, its header
// opens, and every blob the header lists opens, decompresses and hashes to
// its ID. It returns the pack's bytes and its blobs. Damage wraps ErrCorrupt.
func (r *Repository) ReadVerifiedPack(ctx context.Context, id repo.ID, size int64) ([]byte, []pack.Blob, error) {
	if size < 4 || size > 1<<31 {
		return nil, nil, fmt.Errorf("pack %s: %w: size %d", id.Short(), ErrCorrupt, size)
	}
	data := make([]byte, size)
	h := backend.Handle{Type: backend.PackFile, Name: id.String()}
	err := r.be.Load(ctx, h, int(size), 0, func(rd io.Reader) error {
		_, err := io.ReadFull(rd, data)
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	if crypto.FileID(data) != id {
		return nil, nil, fmt.Errorf("pack %s: %w: its content does not hash to its name", id.Short(), ErrCorrupt)
	}
	n, err := pack.HeaderLength(data[len(data)-4:], size)
	if err != nil {
		return nil, nil, fmt.Errorf("pack %s: %w: %w", id.Short(), ErrCorrupt, err)
	}
	blobs, err := pack.DecodeHeader(r.key, bytes.Clone(data[len(data)-4-n:len(data)-4]), size)
	if err != nil {
		return nil, nil, fmt.Errorf("pack %s: %w: %w", id.Short(), ErrCorrupt, err)
	}
	wp := blobBufs.Get().(*[]byte)
	dp := blobBufs.Get().(*[]byte)
	defer blobBufs.Put(wp)
	defer blobBufs.Put(dp)
	for _, b := range blobs {
		end := int64(b.Offset) + int64(b.Length)
		if end > size-4-int64(n) {
			return nil, nil, fmt.Errorf("pack %s: %w: blob %s lies past the blob area", id.Short(), ErrCorrupt, b.ID.Short())
		}
		*wp = append((*wp)[:0], data[b.Offset:end]...)
		var dst []byte
		if b.Compressed {
			dst = (*dp)[:0]
		}
		plain, err := r.DecodeBlob(b, *wp, dst)
		if err != nil {
			return nil, nil, fmt.Errorf("pack %s: blob %s: %w", id.Short(), b.ID.Short(), err)
		}
		if b.Compressed {
			*dp = plain
		}
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
	}
	return data, blobs, nil
}

// ErrAlreadyStored: a pack of that name is already stored, left by an
// interrupted copy. It is never adopted: it may be old enough for a prune
// to be deleting it as unindexed garbage right now (docs/format.md 11b
// protects only young unindexed packs), and it may be damaged. The caller
// stores the blobs in new packs instead.
var ErrAlreadyStored = errors.New("a pack of that name is already stored")

// StorePack stores a pack read (and verified) from a repository that shares
// this one's keys, under its own name, and adds its blobs to the index like
// a pack this handle wrote: the next Flush (or partial index) names it.
func (r *Repository) StorePack(ctx context.Context, id repo.ID, data []byte, blobs []pack.Blob) error {
	h := backend.Handle{Type: backend.PackFile, Name: id.String()}
	err := r.be.Save(ctx, h, data)
	if errors.Is(err, backend.ErrExists) {
		return fmt.Errorf("pack %s: %w", id.Short(), ErrAlreadyStored)
	}
	if err != nil {
		return fmt.Errorf("store pack %s: %w", id.Short(), err)
	}
	if err := r.confirmStored(ctx, h, len(data)); err != nil {
		return err
	}
	Failpoint(FailpointPackStored)
	blobs = append([]pack.Blob(nil), blobs...)
	r.idx.AddPack(id, blobs)
	r.mu.Lock()
	r.newPacks = append(r.newPacks, index.PackEntry{ID: id, Blobs: blobs})
	r.mu.Unlock()
	return r.partialIndex(ctx)
}

// CopySealed adds the given blobs of pack packID of src (sorted by offset)
// to this repository's packs as they are, sealed and compressed, each once
// it has been opened, decompressed and checked against its ID. src must
// share this repository's keys (src may be r itself: prune repacks so).
// Blobs this repository already has are skipped. A blob that fails its
// check is passed to bad and not copied; with bad nil it stops the copy.
func (r *Repository) CopySealed(ctx context.Context, src *Repository, packID repo.ID, blobs []pack.Blob, bad func(b pack.Blob, err error)) error {
	if src != r && !r.SharesKeys(src) {
		return errors.New("copy sealed blobs: the repositories do not share keys")
	}
	return src.loadPackRange(ctx, packID, blobs, true, func(b pack.Blob, sealed, _ []byte, err error) error {
		if err != nil {
			err = fmt.Errorf("blob %s of pack %s: %w", b.ID.Short(), packID.Short(), err)
			if bad == nil {
				return err
			}
			bad(b, err)
			return nil
		}
		if ok, err := r.claim(b.Handle()); !ok {
			return err
		}
		// The pack takes its own copy: sealed is reused for the next blob.
		sp := r.seals.get(len(sealed))
		*sp = append(*sp, sealed...)
		if err := r.addToPack(ctx, b.Type, b.ID, sp, int(b.RawLength), b.Compressed); err != nil {
			r.mu.Lock()
			delete(r.pending, b.Handle())
			r.mu.Unlock()
			return err
		}
		return nil
	})
}
