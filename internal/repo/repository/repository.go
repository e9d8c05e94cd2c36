package repository

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"

	"bunker/internal/backend"
	"bunker/internal/repo"
	"bunker/internal/repo/chunker"
	"bunker/internal/repo/crypto"
	"bunker/internal/repo/index"
	"bunker/internal/repo/pack"
	"bunker/internal/snapshot"
)

// FormatVersion is the repository format this code writes and reads.
const FormatVersion = 1

// Sentinel errors; cmd/bunker maps them to exit codes.
var (
	ErrNotFound      = errors.New("repository does not exist")
	ErrAlreadyExists = errors.New("repository already exists")
	ErrWrongPassword = errors.New("wrong password or no key slot matches")
	ErrBlobNotFound  = errors.New("blob not found in index")
	// ErrCorrupt: stored data does not match its name or fails to decode.
	ErrCorrupt = errors.New("repository data is corrupted")
	// ErrVerify: a blob did not decode to its plaintext after sealing; nothing was stored.
	ErrVerify = errors.New("blob failed verification before upload")
	// ErrUploadLost: storage acknowledged a file it does not hold.
	ErrUploadLost = errors.New("storage acknowledged an upload it did not store")
)

// Config is the repository's sealed config object.
type Config struct {
	Version    int            `json:"version"`
	ID         string         `json:"id"`
	Created    time.Time      `json:"created"`
	Chunker    chunker.Params `json:"chunker"`
	ChunkerKey []byte         `json:"chunker_key"`
	// ObjectLock, when set, says that every object is stored under an
	// Object Lock retention of Days days in Mode; prune deletes only what
	// has expired and extends what kept snapshots use.
	ObjectLock *ObjectLock `json:"object_lock,omitempty"`
}

// ObjectLock is a repository's Object Lock policy.
type ObjectLock struct {
	Mode string `json:"mode"` // compliance or governance
	Days int    `json:"days"`
}

// LockDay is the length of one day of ObjectLock.Days. Only tests change it.
var LockDay = 24 * time.Hour

// ErrNoObjectLock: the repository needs Object Lock and the storage cannot.
var ErrNoObjectLock = errors.New("the repository requires Object Lock, which this storage does not provide")

// Compression selects the zstd level for new blobs.
type Compression int

// Compression levels.
const (
	CompressionAuto Compression = iota
	CompressionOff
	CompressionFastest
	CompressionMax
)

// ParseCompression parses a --compression value.
func ParseCompression(s string) (Compression, error) {
	switch s {
	case "", "auto":
		return CompressionAuto, nil
	case "off":
		return CompressionOff, nil
	case "fastest":
		return CompressionFastest, nil
	case "max":
		return CompressionMax, nil
	}
	return 0, fmt.Errorf("unknown compression %q (want auto, fastest, max or off)", s)
}

// Options tune a repository handle.
type Options struct {
	// PackSize is the target pack size; 0 means DefaultPackSize.
	PackSize    int
	Compression Compression
	// Uploads is how many packs are stored at once; 0 means the backend's Connections.
	Uploads int
	// KDF is used for new key slots; the zero value means crypto.DefaultKDF.
	KDF crypto.KDFParams
	// ObjectLock, for Create only, makes a repository whose objects are all
	// locked (the backend must be a backend.Retainer).
	ObjectLock *ObjectLock
	// ParamsFrom, for Create only, makes the new repository share this
	// repository's master keys and chunker parameters (its own ID, key
	// slots and settings): copies between the two then move packs as they
	// are (`init --copy-params-from`).
	ParamsFrom *Repository
}

// DefaultPackSize suits object stores: large enough that request overhead is
// small, small enough that a restore of a few files reads little extra.
const DefaultPackSize = 16 << 20

// MaxChunk is the largest chunk a repository's chunker may cut: what every
// reader sizes its buffers for (pack.MaxChunkSealed, from the 8 MiB chunks of
// repositories made before the 2 MiB bound). A config asking for more is
// refused as damaged.
const MaxChunk = pack.MaxChunkSealed - crypto.Overhead

// Repository composes a backend with encryption, packing and the index.
// Readers and writers share it; all methods are safe for concurrent use.
type Repository struct {
	be      backend.Backend
	opts    Options
	key     *crypto.Key
	master  *crypto.MasterKey
	cfg     Config
	table   *chunker.Table
	keyName string
	idx     *index.Index

	enc    *zstd.Encoder // index files if benc fails (and tests)
	benc   blobEncoder   // data blobs
	dec    *zstd.Decoder
	metaDc *zstd.Decoder

	mu        sync.Mutex
	packers   map[repo.BlobType]*pack.Writer
	pending   map[repo.BlobHandle]struct{}
	newPacks  []index.PackEntry
	uploadErr error
	uploads   sync.WaitGroup
	uploadSem chan struct{}
	// packQueue bounds the sealed blobs added to pack files and not yet
	// written (see addToPack).
	packQueue chan struct{}
	freePacks [][]byte // storage of stored packs, for reuse
	seals     bufCache // buffers of sealed blobs on their way to a pack
	// indexFiles are the index files LoadIndex read or SaveIndex wrote.
	indexFiles map[repo.ID]bool
	// ownIndex maps the index files this handle wrote to the packs they
	// name; superseded holds the files the last LoadIndex found superseded;
	// pruneSeen is set once CheckCommit has seen a prune's rewrite.
	ownIndex   map[repo.ID][]index.PackEntry
	superseded map[repo.ID]bool
	pruneSeen  bool
	// indexEvery: see SetIndexInterval; lastIndex is when an index file
	// was last written for this handle's packs. indexMu is held by a
	// partial index from taking its packs until its file is stored, and by
	// FlushPacks while it takes the packs left: a flush then never returns
	// while an index for earlier packs is still being written.
	// stopIndexer ends the timer SetIndexInterval starts.
	indexEvery  time.Duration
	lastIndex   time.Time
	indexMu     sync.Mutex
	stopIndexer func()

	// testCorrupt, when set, changes sealed blobs before verification (RELIABILITY B6).
	testCorrupt func(sealed []byte)
}

func newRepository(be backend.Backend, opts Options) (*Repository, error) {
	if opts.PackSize <= 0 {
		opts.PackSize = DefaultPackSize
	}
	if opts.KDF == (crypto.KDFParams{}) {
		opts.KDF = crypto.DefaultKDF
	}
	if opts.Uploads <= 0 {
		opts.Uploads = be.Properties().Connections
		if opts.Uploads <= 0 {
			opts.Uploads = 2
		}
	}
	enc := newGoEncoder(opts.Compression).enc
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithDecoderMaxMemory(pack.MaxBlobSize), zstd.WithDecodeAllCapLimit(true), zstd.IgnoreChecksum(true))
	if err != nil {
		return nil, err
	}
	metaDc, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithDecoderMaxMemory(1<<30))
	if err != nil {
		return nil, err
	}
	return &Repository{
		be: be, opts: opts, idx: index.New(), enc: enc, benc: newBlobEncoder(opts.Compression), dec: dec, metaDc: metaDc,
		packers:    make(map[repo.BlobType]*pack.Writer),
		pending:    make(map[repo.BlobHandle]struct{}),
		uploadSem:  make(chan struct{}, opts.Uploads),
		packQueue:  make(chan struct{}, packQueueLen),
		indexFiles: make(map[repo.ID]bool),
		ownIndex:   make(map[repo.ID][]index.PackEntry),
		superseded: make(map[repo.ID]bool),
	}, nil
}

// keySlot is the stored form of one key: master keys sealed under a key
// derived from a password.
type keySlot struct {
	Version  int              `json:"version"`
	Created  time.Time        `json:"created"`
	Hostname string           `json:"hostname,omitempty"`
	Username string           `json:"username,omitempty"`
	KDF      string           `json:"kdf"`
	Params   crypto.KDFParams `json:"params"`
	Salt     []byte           `json:"salt"`
	Data     []byte           `json:"data"`
}

// Create initialises a repository in an empty backend location and returns it open.
func Create(ctx context.Context, be backend.Backend, password []byte, opts Options) (*Repository, error) {
	if _, err := be.Stat(ctx, backend.Handle{Type: backend.ConfigFile}); err == nil {
		return nil, ErrAlreadyExists
	} else if !errors.Is(err, backend.ErrNotExist) {
		return nil, err
	}
	r, err := newRepository(be, opts)
	if err != nil {
		return nil, err
	}
	r.master = crypto.NewMasterKey()
	params := chunker.DefaultParams()
	ck := make([]byte, 32)
	crypto.Random(ck)
	if from := opts.ParamsFrom; from != nil {
		m := *from.master
		r.master = &m
		params = from.cfg.Chunker
		ck = slices.Clone(from.cfg.ChunkerKey)
	}
	if r.key, err = crypto.NewKey(r.master); err != nil {
		return nil, err
	}
	var rid [32]byte
	crypto.Random(rid[:])
	r.cfg = Config{Version: FormatVersion, ID: fmt.Sprintf("%x", rid), Created: time.Now().UTC(), Chunker: params, ChunkerKey: ck,
		ObjectLock: opts.ObjectLock}
	r.table = chunker.NewTable([32]byte(ck))
	if err := r.applyObjectLock(); err != nil {
		return nil, err
	}
	// Key slot first, then config: a repository without config is not one yet,
	// and a half-made one can simply be removed and made again.
	if r.keyName, err = r.AddKey(ctx, password); err != nil {
		return nil, err
	}
	plain, _ := json.Marshal(r.cfg)
	if err := r.saveSealed(ctx, backend.Handle{Type: backend.ConfigFile}, plain); err != nil {
		return nil, fmt.Errorf("save config: %w", err)
	}
	return r, nil
}

// Open opens an existing repository with a password.
func Open(ctx context.Context, be backend.Backend, password []byte, opts Options) (*Repository, error) {
	cfgData, err := backend.LoadAll(ctx, be, backend.Handle{Type: backend.ConfigFile})
	if errors.Is(err, backend.ErrNotExist) {
		return nil, fmt.Errorf("%w at %s", ErrNotFound, be.Location())
	}
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	r, err := newRepository(be, opts)
	if err != nil {
		return nil, err
	}
	var names []string
	err = be.List(ctx, backend.KeyFile, func(fi backend.FileInfo) error {
		names = append(names, fi.Name)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	sort.Strings(names)
	// A slot counts only if its master keys also open this repository's
	// config: a slot planted from another repository with the same password
	// must not lock the owner out.
	var plain []byte
	var foreign error
	for _, name := range names {
		m, err := r.tryKey(ctx, name, password)
		if errors.Is(err, ErrWrongPassword) {
			continue
		}
		if err != nil {
			return nil, err
		}
		k, err := crypto.NewKey(m)
		if err != nil {
			return nil, err
		}
		p, err := k.Open(nil, cfgData)
		if err != nil {
			foreign = fmt.Errorf("config: %w: key %s opens with this password but not the config", ErrCorrupt, name[:min(len(name), 8)])
			continue
		}
		r.master, r.keyName, r.key, plain = m, name, k, p
		break
	}
	if r.master == nil {
		if foreign != nil {
			return nil, foreign
		}
		return nil, ErrWrongPassword
	}
	if err := json.Unmarshal(plain, &r.cfg); err != nil {
		return nil, fmt.Errorf("config: %w: %w", ErrCorrupt, err)
	}
	if r.cfg.Version != FormatVersion {
		return nil, fmt.Errorf("repository format version %d is not supported (this bunker reads version %d)", r.cfg.Version, FormatVersion)
	}
	if err := r.cfg.Chunker.Validate(); err != nil || r.cfg.Chunker.Max > MaxChunk || len(r.cfg.ChunkerKey) != 32 {
		return nil, fmt.Errorf("config: %w: bad chunker parameters", ErrCorrupt)
	}
	r.table = chunker.NewTable([32]byte(r.cfg.ChunkerKey))
	if err := r.applyObjectLock(); err != nil {
		return nil, err
	}
	return r, nil
}

// applyObjectLock makes the backend lock every new object, if the
// repository says so.
func (r *Repository) applyObjectLock() error {
	ol := r.cfg.ObjectLock
	if ol == nil {
		return nil
	}
	if ol.Days < 1 || (ol.Mode != "compliance" && ol.Mode != "governance") {
		return fmt.Errorf("config: %w: bad object lock %+v", ErrCorrupt, *ol)
	}
	rt, ok := backend.As[backend.Retainer](r.be)
	if !ok {
		return fmt.Errorf("%w (%s)", ErrNoObjectLock, r.be.Location())
	}
	rt.SetRetention(ol.Mode, r.LockDuration())
	return nil
}

// LockDuration is how long each object is locked (0 without Object Lock).
func (r *Repository) LockDuration() time.Duration {
	if r.cfg.ObjectLock == nil {
		return 0
	}
	return time.Duration(r.cfg.ObjectLock.Days) * LockDay
}

// Retainer returns the backend's Object Lock calls, if the repository uses
// Object Lock.
func (r *Repository) Retainer() (backend.Retainer, bool) {
	if r.cfg.ObjectLock == nil {
		return nil, false
	}
	return backend.As[backend.Retainer](r.be)
}

// RemoveUnlessRetained removes h unless Object Lock still holds it, and
// reports whether it is gone (it may have been already). A file the storage
// keeps because its retention has not run out is not an error: it stays,
// for a later prune.
func (r *Repository) RemoveUnlessRetained(ctx context.Context, h backend.Handle) (bool, error) {
	rt, locked := r.Retainer()
	if locked {
		_, until, err := rt.Retention(ctx, h)
		if err != nil && !errors.Is(err, backend.ErrNotExist) {
			return false, err
		}
		if until.After(time.Now()) {
			return false, nil
		}
	}
	err := r.be.Remove(ctx, h)
	if errors.Is(err, backend.ErrNotExist) {
		return true, nil
	}
	if locked && errors.Is(err, backend.ErrPermission) {
		// The storage's clock says it is still locked.
		return false, nil
	}
	return err == nil, err
}

func (r *Repository) tryKey(ctx context.Context, name string, password []byte) (*crypto.MasterKey, error) {
	data, err := backend.LoadAll(ctx, r.be, backend.Handle{Type: backend.KeyFile, Name: name})
	if err != nil {
		return nil, fmt.Errorf("read key %s: %w", name, err)
	}
	ks, err := parseKeySlot(data)
	if err != nil {
		// A damaged slot must not lock the owner of another slot out.
		return nil, ErrWrongPassword
	}
	wrap, err := crypto.DeriveKey(password, ks.Salt, ks.Params)
	if err != nil {
		return nil, ErrWrongPassword
	}
	k, err := crypto.NewKey(&crypto.MasterKey{Encrypt: wrap})
	if err != nil {
		return nil, err
	}
	plain, err := k.Open(nil, ks.Data)
	if err != nil {
		return nil, ErrWrongPassword
	}
	var m crypto.MasterKey
	if err := json.Unmarshal(plain, &m); err != nil {
		return nil, fmt.Errorf("key %s: %w", name, ErrCorrupt)
	}
	return &m, nil
}

// AddKey adds a key slot for password and returns its name.
func (r *Repository) AddKey(ctx context.Context, password []byte) (string, error) {
	if len(password) == 0 {
		return "", errors.New("empty password")
	}
	ks := keySlot{Version: 1, Created: time.Now().UTC(), KDF: "argon2id", Params: r.opts.KDF, Salt: make([]byte, 32)}
	ks.Hostname, _ = os.Hostname()
	if u, err := user.Current(); err == nil {
		ks.Username = u.Username
	}
	crypto.Random(ks.Salt)
	wrap, err := crypto.DeriveKey(password, ks.Salt, ks.Params)
	if err != nil {
		return "", err
	}
	k, err := crypto.NewKey(&crypto.MasterKey{Encrypt: wrap})
	if err != nil {
		return "", err
	}
	mk, _ := json.Marshal(r.master)
	ks.Data = k.Seal(nil, mk)
	data, _ := json.Marshal(ks)
	id := crypto.FileID(data)
	if err := r.be.Save(ctx, backend.Handle{Type: backend.KeyFile, Name: id.String()}, data); err != nil {
		return "", fmt.Errorf("save key: %w", err)
	}
	return id.String(), nil
}

// KeyInfo describes a key slot for listing.
type KeyInfo struct {
	ID       string    `json:"id"`
	Current  bool      `json:"current"`
	Created  time.Time `json:"created"`
	Hostname string    `json:"hostname"`
	Username string    `json:"username"`
	// Damaged: the slot does not parse as one (Open skips it); it opens
	// nothing and can only be removed.
	Damaged bool `json:"damaged,omitempty"`
}

// ListKeys lists the key slots, a damaged one (it does not parse as a slot)
// marked as such rather than failing the listing: it must stay possible to
// see and remove it (format §4).
func (r *Repository) ListKeys(ctx context.Context) ([]KeyInfo, error) {
	var out []KeyInfo
	err := r.be.List(ctx, backend.KeyFile, func(fi backend.FileInfo) error {
		data, err := backend.LoadAll(ctx, r.be, backend.Handle{Type: backend.KeyFile, Name: fi.Name})
		if errors.Is(err, backend.ErrNotExist) {
			return nil // removed since it was listed
		}
		if err != nil {
			return err
		}
		// Damaged is what Open skips: a slot that does not parse as one.
		ks, err := parseKeySlot(data)
		if err != nil {
			out = append(out, KeyInfo{ID: fi.Name, Damaged: true})
			return nil
		}
		out = append(out, KeyInfo{ID: fi.Name, Current: fi.Name == r.keyName, Created: ks.Created, Hostname: ks.Hostname, Username: ks.Username})
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, err
}

// RemoveKey removes a key slot named by its ID or a unique prefix. The key in
// use cannot be removed (open with another key to remove this one).
func (r *Repository) RemoveKey(ctx context.Context, prefix string) (string, error) {
	keys, err := r.ListKeys(ctx)
	if err != nil {
		return "", err
	}
	var match []string
	for _, k := range keys {
		if strings.HasPrefix(k.ID, prefix) {
			match = append(match, k.ID)
		}
	}
	switch {
	case len(match) == 0 || prefix == "":
		return "", fmt.Errorf("no key %q", prefix)
	case len(match) > 1:
		return "", fmt.Errorf("key prefix %q is ambiguous", prefix)
	case match[0] == r.keyName:
		return "", errors.New("refusing to remove the key in use; open the repository with another key to remove this one")
	}
	return match[0], r.be.Remove(ctx, backend.Handle{Type: backend.KeyFile, Name: match[0]})
}

// KeyName is the ID of the key slot this handle was opened with.
func (r *Repository) KeyName() string { return r.keyName }

// Config returns the repository config.
func (r *Repository) Config() Config { return r.cfg }

// Backend returns the underlying backend.
func (r *Repository) Backend() backend.Backend { return r.be }

// NewChunker returns a chunker with this repository's secret parameters.
func (r *Repository) NewChunker(rd io.Reader) repo.Chunker {
	return chunker.New(rd, r.cfg.Chunker, r.table)
}

// MinChunk is the smallest chunk cut before the end of a stream.
func (r *Repository) MinChunk() int { return r.cfg.Chunker.Min }

// Index returns the in-memory index.
func (r *Repository) Index() *index.Index { return r.idx }

// Key returns the crypto key (for checkers and tools that read packs).
func (r *Repository) Key() *crypto.Key { return r.key }

// BlobID computes a blob's ID.
func (r *Repository) BlobID(data []byte) repo.ID { return r.key.BlobID(data) }

// Close releases the handle's resources.
func (r *Repository) Close() error {
	r.SetIndexInterval(0)
	r.Abort() // nothing left open after a Flush; after a failure, clean up
	r.enc.Close()
	r.dec.Close()
	r.metaDc.Close()
	return nil
}

// saveSealed seals plaintext and stores it under h, after checking that it opens.
func (r *Repository) saveSealed(ctx context.Context, h backend.Handle, plaintext []byte) error {
	sealed := r.key.Seal(nil, plaintext)
	if back, err := r.key.Open(nil, sealed); err != nil || string(back) != string(plaintext) {
		return fmt.Errorf("%w: %v", ErrVerify, h)
	}
	return r.be.Save(ctx, h, sealed)
}

// SaveUnpacked seals and stores a metadata object (snapshot, index, lock),
// named by the hash of its stored bytes.
func (r *Repository) SaveUnpacked(ctx context.Context, t backend.FileType, plaintext []byte) (repo.ID, error) {
	sealed := r.key.Seal(nil, plaintext)
	if back, err := r.key.Open(nil, sealed); err != nil || string(back) != string(plaintext) {
		return repo.ID{}, fmt.Errorf("%w: %v", ErrVerify, t)
	}
	id := crypto.FileID(sealed)
	h := backend.Handle{Type: t, Name: id.String()}
	if err := r.be.Save(ctx, h, sealed); err != nil {
		return id, err
	}
	return id, r.confirmStored(ctx, h, len(sealed))
}

// LoadUnpacked loads a metadata object, checks it against its name and opens it.
func (r *Repository) LoadUnpacked(ctx context.Context, t backend.FileType, id repo.ID) ([]byte, error) {
	h := backend.Handle{Type: t, Name: id.String()}
	data, err := backend.LoadAll(ctx, r.be, h)
	if err != nil {
		return nil, err
	}
	if crypto.FileID(data) != id {
		return nil, fmt.Errorf("%v: %w: content does not match its name", h, ErrCorrupt)
	}
	plain, err := r.key.Open(nil, data)
	if err != nil {
		return nil, fmt.Errorf("%v: %w: %w", h, ErrCorrupt, err)
	}
	return plain, nil
}

// List lists the IDs of stored files of one type, skipping names that are not IDs.
func (r *Repository) List(ctx context.Context, t backend.FileType) ([]repo.ID, error) {
	var ids []repo.ID
	err := r.be.List(ctx, t, func(fi backend.FileInfo) error {
		if id, err := repo.ParseID(fi.Name); err == nil {
			ids = append(ids, id)
		}
		return nil
	})
	return ids, err
}

// SaveSnapshot stores a snapshot; call it only after Flush.
func (r *Repository) SaveSnapshot(ctx context.Context, sn *snapshot.Snapshot) (repo.ID, error) {
	id, err := r.SaveUnpacked(ctx, backend.SnapshotFile, sn.Encode())
	if err == nil {
		sn.ID = id
	}
	return id, err
}

// LoadSnapshot loads one snapshot.
func (r *Repository) LoadSnapshot(ctx context.Context, id repo.ID) (*snapshot.Snapshot, error) {
	plain, err := r.LoadUnpacked(ctx, backend.SnapshotFile, id)
	if err != nil {
		return nil, err
	}
	sn, err := snapshot.Decode(plain)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w: %w", id.Short(), ErrCorrupt, err)
	}
	sn.ID = id
	return sn, nil
}

// Snapshots loads every snapshot, oldest first. A damaged snapshot file is
// an error (ErrCorrupt): commands that decide from all the snapshots what to
// keep, delete or copy (forget, prune, copy) must not go on without one.
func (r *Repository) Snapshots(ctx context.Context) ([]*snapshot.Snapshot, error) {
	snaps, damaged, err := r.ReadableSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	if len(damaged) > 0 {
		return nil, damaged[0].Err
	}
	return snaps, nil
}

// DamagedSnapshot is a snapshot file that cannot be read: its content does
// not match its name, does not decrypt or does not decode. Err wraps
// ErrCorrupt.
type DamagedSnapshot struct {
	ID  repo.ID
	Err error
}

// ReadableSnapshots loads every snapshot, oldest first, except the damaged
// ones, which it returns apart (in name order): one damaged file must not
// keep the others from being listed or restored. Any other error (the
// storage failing) stops it.
func (r *Repository) ReadableSnapshots(ctx context.Context) ([]*snapshot.Snapshot, []DamagedSnapshot, error) {
	ids, err := r.List(ctx, backend.SnapshotFile)
	if err != nil {
		return nil, nil, err
	}
	slices.SortFunc(ids, func(a, b repo.ID) int { return bytes.Compare(a[:], b[:]) })
	out := make([]*snapshot.Snapshot, len(ids))
	bad := make([]error, len(ids))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, id := range ids {
		g.Go(func() error {
			sn, err := r.LoadSnapshot(gctx, id)
			switch {
			case errors.Is(err, backend.ErrNotExist):
				return nil // removed since it was listed
			case errors.Is(err, ErrCorrupt):
				bad[i] = err
				return nil
			}
			out[i] = sn
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, err
	}
	var damaged []DamagedSnapshot
	for i, err := range bad {
		if err != nil {
			damaged = append(damaged, DamagedSnapshot{ID: ids[i], Err: err})
		}
	}
	out = slices.DeleteFunc(out, func(sn *snapshot.Snapshot) bool { return sn == nil })
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, damaged, nil
}

// HasBlob reports whether the index holds a blob.
func (r *Repository) HasBlob(h repo.BlobHandle) bool { return r.idx.Has(h) }

// LookupBlob returns where a blob is stored.
func (r *Repository) LookupBlob(h repo.BlobHandle) (index.Location, bool) { return r.idx.Lookup(h) }

// RemoveKeyByID removes a key slot by its full ID, even the one this handle was
// opened with (used by a password change, after the new slot is stored).
func (r *Repository) RemoveKeyByID(ctx context.Context, id string) error {
	return r.be.Remove(ctx, backend.Handle{Type: backend.KeyFile, Name: id})
}

// SetTestCorrupt installs a hook that changes every sealed blob before it is
// verified, to prove that corruption after compression is caught (RELIABILITY
// B6). For tests only.
func (r *Repository) SetTestCorrupt(fn func(sealed []byte)) { r.testCorrupt = fn }

// encoderWindow bounds the zstd match window. Blobs average 1 MiB, so a
// larger window finds little more, while the encoder's history buffers (one
// per concurrent encoding) grow with it: 8 MiB windows cost 32 MiB of heap.
const encoderWindow = 2 << 20
