package repository

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"bunker/internal/backend"
	"bunker/internal/backend/fault"
	"bunker/internal/backend/local"
	"bunker/internal/backend/mem"
	"bunker/internal/repo"
	"bunker/internal/repo/chunker"
	"bunker/internal/repo/crypto"
	"bunker/internal/repo/pack"
	"bunker/internal/snapshot"
)

var testOpts = Options{KDF: crypto.TestKDF}

func newTestRepo(t testing.TB) (*mem.Backend, *Repository) {
	t.Helper()
	be := mem.New()
	r, err := Create(context.Background(), be, []byte("pw"), testOpts)
	if err != nil {
		t.Fatal(err)
	}
	return be, r
}

func mustOpen(t testing.TB, be backend.Backend, pw string) *Repository {
	t.Helper()
	r, err := Open(context.Background(), be, []byte(pw), testOpts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func countFiles(t testing.TB, be backend.Backend, ft backend.FileType) int {
	t.Helper()
	n := 0
	if err := be.List(context.Background(), ft, func(backend.FileInfo) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// replaceFile stores data under h in place of what is there.
func replaceFile(t testing.TB, be backend.Backend, h backend.Handle, data []byte) {
	t.Helper()
	ctx := context.Background()
	if err := be.Remove(ctx, h); err != nil && !errors.Is(err, backend.ErrNotExist) {
		t.Fatal(err)
	}
	if err := be.Save(ctx, h, data); err != nil {
		t.Fatal(err)
	}
}

func TestCreateOpen(t *testing.T) {
	ctx := context.Background()
	be, r := newTestRepo(t)
	defer r.Close()
	cfg := r.Config()
	if cfg.Version != FormatVersion || len(cfg.ChunkerKey) != 32 || cfg.Chunker != chunker.DefaultParams() || len(cfg.ID) != 64 {
		t.Fatalf("config %+v", cfg)
	}
	r2 := mustOpen(t, be, "pw")
	defer r2.Close()
	if r2.KeyName() != r.KeyName() || r2.Config().ID != cfg.ID || !bytes.Equal(r2.Config().ChunkerKey, cfg.ChunkerKey) {
		t.Fatal("reopened repository differs")
	}
	if r2.BlobID([]byte("x")) != r.BlobID([]byte("x")) {
		t.Fatal("blob IDs differ between handles")
	}
	for _, pw := range []string{"pW", "", "pw ", "p"} {
		if _, err := Open(ctx, be, []byte(pw), testOpts); !errors.Is(err, ErrWrongPassword) {
			t.Errorf("password %q: %v, want ErrWrongPassword", pw, err)
		}
	}
	if _, err := Create(ctx, be, []byte("pw"), testOpts); !errors.Is(err, ErrAlreadyExists) {
		t.Errorf("Create twice: %v", err)
	}
	if _, err := Open(ctx, mem.New(), []byte("pw"), testOpts); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open empty: %v", err)
	}
	if _, err := Create(ctx, mem.New(), nil, testOpts); err == nil {
		t.Error("Create with an empty password")
	}
}

func TestKeys(t *testing.T) {
	ctx := context.Background()
	be, r := newTestRepo(t)
	defer r.Close()
	second, err := r.AddKey(ctx, []byte("second"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.AddKey(ctx, nil); err == nil {
		t.Fatal("AddKey with an empty password")
	}
	keys, err := r.ListKeys(ctx)
	if err != nil || len(keys) != 2 {
		t.Fatalf("ListKeys = %v, %v", keys, err)
	}
	current := 0
	for _, k := range keys {
		if k.Current {
			current++
			if k.ID != r.KeyName() {
				t.Fatalf("current key %s, handle opened with %s", k.ID, r.KeyName())
			}
		}
		if k.Created.IsZero() {
			t.Fatal("key without creation time")
		}
	}
	if current != 1 {
		t.Fatalf("%d current keys", current)
	}
	r2 := mustOpen(t, be, "second")
	if r2.KeyName() != second || r2.BlobID([]byte("x")) != r.BlobID([]byte("x")) {
		t.Fatal("second key opens other master keys")
	}
	r2.Close()
	if _, err := r.RemoveKey(ctx, r.KeyName()); err == nil {
		t.Fatal("removed the key in use")
	}
	if _, err := r.RemoveKey(ctx, r.KeyName()[:8]); err == nil {
		t.Fatal("removed the key in use by prefix")
	}
	if _, err := r.RemoveKey(ctx, ""); err == nil {
		t.Fatal("empty prefix accepted")
	}
	if _, err := r.RemoveKey(ctx, "zz"); err == nil {
		t.Fatal("unknown key removed")
	}
	if got, err := r.RemoveKey(ctx, second[:10]); err != nil || got != second {
		t.Fatalf("RemoveKey = %s, %v", got, err)
	}
	if _, err := Open(ctx, be, []byte("second"), testOpts); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("removed key still opens: %v", err)
	}
	mustOpen(t, be, "pw").Close()
}

func TestDamagedKeySlotsAreSkipped(t *testing.T) {
	ctx := context.Background()
	be, r := newTestRepo(t)
	defer r.Close()
	// A slot with absurd parameters, sorted before the real one: it must be
	// skipped without deriving (4 GiB, t=100 would take half an hour).
	slot := keySlot{Version: 1, KDF: "argon2id", Params: crypto.KDFParams{Time: 100, Memory: 4 << 20, Threads: 1},
		Salt: make([]byte, 32), Data: make([]byte, 100)}
	absurd, _ := json.Marshal(slot)
	for i, data := range [][]byte{absurd, []byte("{"), []byte(`{"kdf":"scrypt"}`), nil} {
		name := strings.Repeat("0", 63) + string(rune('0'+i))
		if err := be.Save(ctx, backend.Handle{Type: backend.KeyFile, Name: name}, data); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	r2 := mustOpen(t, be, "pw")
	r2.Close()
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("Open took %v", d)
	}
	if _, err := Open(ctx, be, []byte("wrong"), testOpts); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("wrong password: %v", err)
	}
}

func TestParseKeySlot(t *testing.T) {
	ctx := context.Background()
	be, r := newTestRepo(t)
	defer r.Close()
	data, err := backend.LoadAll(ctx, be, backend.Handle{Type: backend.KeyFile, Name: r.KeyName()})
	if err != nil {
		t.Fatal(err)
	}
	if err := ParseKeySlot(data); err != nil {
		t.Fatalf("real slot: %v", err)
	}
	mod := func(fn func(*keySlot)) []byte {
		var ks keySlot
		if err := json.Unmarshal(data, &ks); err != nil {
			t.Fatal(err)
		}
		fn(&ks)
		b, _ := json.Marshal(ks)
		return b
	}
	bad := map[string][]byte{
		"garbage":     []byte("garbage"),
		"empty":       nil,
		"kdf":         mod(func(ks *keySlot) { ks.KDF = "scrypt" }),
		"no params":   mod(func(ks *keySlot) { ks.Params = crypto.KDFParams{} }),
		"4 GiB":       mod(func(ks *keySlot) { ks.Params.Memory = 4 << 20 }),
		"time 1e9":    mod(func(ks *keySlot) { ks.Params.Time = 1e9 }),
		"short salt":  mod(func(ks *keySlot) { ks.Salt = ks.Salt[:15] }),
		"memory -1":   []byte(`{"kdf":"argon2id","params":{"time":1,"memory":-1,"threads":1},"salt":"AAAAAAAAAAAAAAAAAAAAAA=="}`),
		"threads 256": []byte(`{"kdf":"argon2id","params":{"time":1,"memory":64,"threads":256},"salt":"AAAAAAAAAAAAAAAAAAAAAA=="}`),
	}
	for name, b := range bad {
		if err := ParseKeySlot(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
		h := backend.Handle{Type: backend.KeyFile, Name: "slot-" + strings.ReplaceAll(name, " ", "-")}
		replaceFile(t, be, h, b)
		if _, err := r.tryKey(ctx, h.Name, []byte("pw")); !errors.Is(err, ErrWrongPassword) {
			t.Errorf("%s: tryKey = %v, want ErrWrongPassword", name, err)
		}
	}
}

// TestSaveBlobTooLarge: a blob a pack header or index could not name is
// refused (the backup fails) rather than stored; the largest allowed one
// is stored, and the index naming it loads.
func TestSaveBlobTooLarge(t *testing.T) {
	ctx := context.Background()
	be, r := newTestRepo(t)
	defer r.Close()
	big := make([]byte, MaxBlobData+1)
	if _, _, _, err := r.SaveBlob(ctx, repo.TreeBlob, big, repo.ID{}); !errors.Is(err, ErrBlobTooLarge) {
		t.Fatalf("SaveBlob of %d bytes: %v, want ErrBlobTooLarge", len(big), err)
	}
	id, isNew, _, err := r.SaveBlob(ctx, repo.TreeBlob, big[:MaxBlobData], repo.ID{})
	if err != nil || !isNew {
		t.Fatalf("SaveBlob of %d bytes: new=%v, %v", MaxBlobData, isNew, err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r2 := mustOpen(t, be, "pw")
	defer r2.Close()
	if err := r2.LoadIndex(ctx); err != nil {
		t.Fatalf("LoadIndex: %v", err)
	}
	if data, err := r2.LoadBlob(ctx, repo.TreeBlob, id); err != nil || len(data) != MaxBlobData {
		t.Fatalf("LoadBlob: %d bytes, %v", len(data), err)
	}
}

// TestPartialIndexOnTimer: a pack stored during a long write is indexed
// within the interval even when nothing is stored after it (a backup reading
// a long run of data it has already, or a slow file), not only when the next
// pack is; and Flush indexes only what the timer has not.
func TestPartialIndexOnTimer(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	opts := testOpts
	opts.PackSize = 4 << 10
	r, err := Create(ctx, be, []byte("pw"), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.SetIndexInterval(200 * time.Millisecond)
	data := make([]byte, 8<<10) // incompressible, fills a pack: stored at once
	rand.New(rand.NewSource(7)).Read(data)
	if _, _, _, err := r.SaveBlob(ctx, repo.DataBlob, data, repo.ID{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for countFiles(t, be, backend.IndexFile) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the stored pack was not indexed while nothing else was stored")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, _, _, err := r.SaveBlob(ctx, repo.DataBlob, []byte("small"), repo.ID{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countFiles(t, be, backend.IndexFile); n != 2 {
		t.Errorf("%d index files, want 2 (the timer's and Flush's)", n)
	}
	r2 := mustOpen(t, be, "pw")
	defer r2.Close()
	if err := r2.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := r2.LoadBlob(ctx, repo.DataBlob, r.BlobID(data)); err != nil {
		t.Errorf("the first blob: %v", err)
	}
}

func TestSaveBlobDedupAndFlush(t *testing.T) {
	ctx := context.Background()
	be, r := newTestRepo(t)
	defer r.Close()
	data := []byte("some blob data")
	id, isNew, n, err := r.SaveBlob(ctx, repo.DataBlob, data, repo.ID{})
	if err != nil || !isNew || n != len(data)+crypto.Overhead || id != r.BlobID(data) {
		t.Fatalf("SaveBlob = %v, %v, %d, %v", id, isNew, n, err)
	}
	// Pending (not yet flushed) blobs dedup too.
	if _, isNew, _, err := r.SaveBlob(ctx, repo.DataBlob, data, repo.ID{}); err != nil || isNew {
		t.Fatalf("second SaveBlob before Flush: new=%v, %v", isNew, err)
	}
	// Same bytes as a tree blob are a different blob.
	if _, isNew, _, err := r.SaveBlob(ctx, repo.TreeBlob, data, repo.ID{}); err != nil || !isNew {
		t.Fatalf("tree blob with the same bytes: new=%v, %v", isNew, err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countFiles(t, be, backend.IndexFile); n != 1 {
		t.Fatalf("%d index files after Flush", n)
	}
	if n := countFiles(t, be, backend.PackFile); n != 2 {
		t.Fatalf("%d packs (data and tree blobs go to separate packs)", n)
	}
	if _, isNew, _, err := r.SaveBlob(ctx, repo.DataBlob, data, repo.ID{}); err != nil || isNew {
		t.Fatalf("SaveBlob after Flush: new=%v, %v", isNew, err)
	}
	// Nothing new: no new index.
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countFiles(t, be, backend.IndexFile); n != 1 {
		t.Fatalf("%d index files after an empty Flush", n)
	}
}

func TestLoadBlobRoundTrip(t *testing.T) {
	ctx := context.Background()
	_, r := newTestRepo(t)
	defer r.Close()
	rnd := rand.New(rand.NewSource(1))
	random := func(n int) []byte {
		b := make([]byte, n)
		rnd.Read(b)
		return b
	}
	cases := []struct {
		name       string
		data       []byte
		compressed bool
	}{
		{"empty", nil, false},
		{"tiny", []byte("x"), false},
		{"64 bytes", bytes.Repeat([]byte{'a'}, 64), false}, // not worth compressing
		{"compressible", bytes.Repeat([]byte("compressible text "), 5000), true},
		{"compressible large", bytes.Repeat([]byte("0123456789abcdef"), 64<<10), true},
		{"incompressible", random(100 << 10), false},
		{"incompressible large", random(1 << 20), false},
		// Around the scratch and sealed-buffer sizes (scratchMax, the
		// classes of bufCache) and past them, up to the largest chunk.
		{"incompressible at the small limit", random(32<<10 - crypto.Overhead), false},
		{"incompressible past a class", random(256<<10 + 1), false},
		{"incompressible at scratchMax", random(scratchMax - crypto.Overhead), false},
		{"incompressible past scratchMax", random(scratchMax + 1), false},
		{"compressible past scratchMax", bytes.Repeat([]byte("abcdefghij"), 3<<20/10), true},
		{"largest chunk", append(random(4<<20), make([]byte, 4<<20)...), true},
	}
	for _, c := range cases {
		if _, _, _, err := r.SaveBlob(ctx, repo.DataBlob, c.data, repo.ID{}); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		id := r.BlobID(c.data)
		loc, ok := r.LookupBlob(repo.BlobHandle{ID: id, Type: repo.DataBlob})
		if !ok {
			t.Fatalf("%s: not indexed", c.name)
		}
		if loc.Compressed != c.compressed || loc.RawLength != uint32(len(c.data)) {
			t.Errorf("%s: location %+v, want compressed=%v", c.name, loc, c.compressed)
		}
		if !c.compressed && loc.Length != uint32(len(c.data)+crypto.Overhead) {
			t.Errorf("%s: stored %d bytes uncompressed", c.name, loc.Length)
		}
		got, err := r.LoadBlob(ctx, repo.DataBlob, id)
		if err != nil || !bytes.Equal(got, c.data) {
			t.Fatalf("%s: LoadBlob = %d bytes, %v", c.name, len(got), err)
		}
	}
	if _, err := r.LoadBlob(ctx, repo.TreeBlob, r.BlobID(cases[1].data)); !errors.Is(err, ErrBlobNotFound) {
		t.Fatalf("missing blob: %v", err)
	}
}

// DecodeBlob decrypts in place (it overwrites sealed), so every call gets a copy.
func TestDecodeBlobRejects(t *testing.T) {
	_, r := newTestRepo(t)
	defer r.Close()
	plain := bytes.Repeat([]byte("abc"), 100)
	z := r.enc.EncodeAll(plain, nil)
	sealedZ := r.Key().Seal(nil, z)
	sealedP := r.Key().Seal(nil, plain)
	good := pack.Blob{Type: repo.DataBlob, ID: r.BlobID(plain), RawLength: uint32(len(plain))}
	gz := good
	gz.Compressed = true
	if got, err := r.DecodeBlob(good, bytes.Clone(sealedP), nil); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("plain: %v", err)
	}
	if got, err := r.DecodeBlob(gz, bytes.Clone(sealedZ), []byte("pre")); err != nil || string(got) != "pre"+string(plain) {
		t.Fatalf("compressed with dst: %v", err)
	}
	if got, err := r.DecodeBlob(good, bytes.Clone(sealedP), []byte("pre")); err != nil || string(got) != "pre"+string(plain) {
		t.Fatalf("plain with dst: %v", err)
	}
	wrongLen, wrongID := good, good
	wrongLen.RawLength++
	wrongID.ID[0] ^= 1
	tampered := bytes.Clone(sealedP)
	tampered[20] ^= 1
	for name, c := range map[string]struct {
		b      pack.Blob
		sealed []byte
	}{
		"raw length":                  {wrongLen, sealedP},
		"id":                          {wrongID, sealedP},
		"tampered":                    {good, tampered},
		"empty":                       {good, nil},
		"compressed flag on plain":    {gz, sealedP},
		"compressed data as plain":    {good, sealedZ},
		"other key":                   {good, mustKey(t).Seal(nil, plain)},
		"zstd garbage":                {gz, r.Key().Seal(nil, []byte("\x28\xb5\x2f\xfd garbage"))},
		"zstd bomb over the max size": {gz, r.Key().Seal(nil, r.enc.EncodeAll(make([]byte, pack.MaxBlobSize+1), nil))},
	} {
		if got, err := r.DecodeBlob(c.b, bytes.Clone(c.sealed), nil); !errors.Is(err, ErrCorrupt) || got != nil {
			t.Errorf("%s: DecodeBlob = %d bytes, %v; want ErrCorrupt", name, len(got), err)
		}
	}
}

func mustKey(t testing.TB) *crypto.Key {
	k, err := crypto.NewKey(crypto.NewMasterKey())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestUnpackedCorruption(t *testing.T) {
	ctx := context.Background()
	be, r := newTestRepo(t)
	defer r.Close()
	plain := []byte(`{"some":"metadata"}`)
	id, err := r.SaveUnpacked(ctx, backend.SnapshotFile, plain)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := r.LoadUnpacked(ctx, backend.SnapshotFile, id); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("LoadUnpacked = %q, %v", got, err)
	}
	h := backend.Handle{Type: backend.SnapshotFile, Name: id.String()}
	stored, _ := backend.LoadAll(ctx, be, h)
	for i := range stored {
		bad := bytes.Clone(stored)
		bad[i] ^= 0x10
		replaceFile(t, be, h, bad)
		if _, err := r.LoadUnpacked(ctx, backend.SnapshotFile, id); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("byte %d flipped: %v, want ErrCorrupt", i, err)
		}
		// Renamed to match its new content: the hash passes, authentication does not.
		nid := crypto.FileID(bad)
		replaceFile(t, be, backend.Handle{Type: backend.SnapshotFile, Name: nid.String()}, bad)
		if _, err := r.LoadUnpacked(ctx, backend.SnapshotFile, nid); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("byte %d flipped and renamed: %v, want ErrCorrupt", i, err)
		}
	}
	if _, err := r.LoadUnpacked(ctx, backend.SnapshotFile, repo.ID{1}); !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}
}

func TestReopenSeesBlobs(t *testing.T) {
	ctx := context.Background()
	be, r := newTestRepo(t)
	var ids []repo.ID
	for i := 0; i < 20; i++ {
		data := bytes.Repeat([]byte{byte(i)}, 1000*i)
		id, _, _, err := r.SaveBlob(ctx, repo.DataBlob, data, repo.ID{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	tree := (&snapshot.Tree{Nodes: []*snapshot.Node{{Name: "f", Type: snapshot.TypeFile, Content: ids}}}).Encode()
	treeID, _, _, err := r.SaveBlob(ctx, repo.TreeBlob, tree, repo.ID{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	snID, err := r.SaveSnapshot(ctx, &snapshot.Snapshot{Time: time.Now(), Tree: treeID, Paths: []string{"/x"}})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()

	r2 := mustOpen(t, be, "pw")
	defer r2.Close()
	if r2.Index().Len() != 0 {
		t.Fatal("index loaded before LoadIndex")
	}
	if err := r2.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if r2.Index().Len() != 21 {
		t.Fatalf("index has %d blobs", r2.Index().Len())
	}
	sns, err := r2.Snapshots(ctx)
	if err != nil || len(sns) != 1 || sns[0].ID != snID || sns[0].Tree != treeID {
		t.Fatalf("Snapshots = %v, %v", sns, err)
	}
	tb, err := r2.LoadBlob(ctx, repo.TreeBlob, treeID)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := snapshot.DecodeTree(tb)
	if err != nil || len(tr.Nodes) != 1 || len(tr.Nodes[0].Content) != 20 {
		t.Fatalf("tree: %v", err)
	}
	for i, id := range tr.Nodes[0].Content {
		data, err := r2.LoadBlob(ctx, repo.DataBlob, id)
		if err != nil || !bytes.Equal(data, bytes.Repeat([]byte{byte(i)}, 1000*i)) {
			t.Fatalf("blob %d: %v", i, err)
		}
	}
	// The pack headers agree with the index.
	err = be.List(ctx, backend.PackFile, func(fi backend.FileInfo) error {
		pid, err := repo.ParseID(fi.Name)
		if err != nil {
			return err
		}
		blobs, err := r2.ReadPackHeader(ctx, pid, fi.Size)
		if err != nil {
			return err
		}
		for _, b := range blobs {
			loc, ok := r2.LookupBlob(b.Handle())
			if !ok || loc.Pack != pid || loc.Offset != b.Offset || loc.Length != b.Length {
				t.Errorf("pack header entry %+v, index %+v", b, loc)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// sealedConfig returns a config file holding plain sealed with r's key.
func sealedConfig(r *Repository, plain []byte) []byte { return r.Key().Seal(nil, plain) }

func TestConfigValidation(t *testing.T) {
	ctx := context.Background()
	be, r := newTestRepo(t)
	defer r.Close()
	good, _ := json.Marshal(r.Config())
	cfgH := backend.Handle{Type: backend.ConfigFile}
	mod := func(fn func(*Config)) []byte {
		c := r.Config()
		fn(&c)
		b, _ := json.Marshal(c)
		return b
	}
	replaceFile(t, be, cfgH, sealedConfig(r, good))
	mustOpen(t, be, "pw").Close()
	for name, plain := range map[string][]byte{
		"garbage":       []byte("{"),
		"null":          []byte("null"),
		"empty object":  []byte("{}"),
		"version 0":     mod(func(c *Config) { c.Version = 0 }),
		"version 2":     mod(func(c *Config) { c.Version = 2 }),
		"chunker zero":  mod(func(c *Config) { c.Chunker = chunker.Params{} }),
		"chunker max":   mod(func(c *Config) { c.Chunker.Max = 1 << 40 }),
		"chunker avg":   mod(func(c *Config) { c.Chunker.Avg = 3 << 19 }),
		"key 31 bytes":  mod(func(c *Config) { c.ChunkerKey = c.ChunkerKey[:31] }),
		"key 33 bytes":  mod(func(c *Config) { c.ChunkerKey = append(c.ChunkerKey, 0) }),
		"no key":        mod(func(c *Config) { c.ChunkerKey = nil }),
		"trailing data": append(bytes.Clone(good), 'x'),
	} {
		replaceFile(t, be, cfgH, sealedConfig(r, plain))
		if r2, err := Open(ctx, be, []byte("pw"), testOpts); err == nil {
			r2.Close()
			t.Errorf("%s: config accepted", name)
		}
	}
	// Not sealed, or sealed with another key.
	for name, data := range map[string][]byte{"plain": good, "other key": mustKey(t).Seal(nil, good), "empty": {}} {
		replaceFile(t, be, cfgH, data)
		if _, err := Open(ctx, be, []byte("pw"), testOpts); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
}

// TestDecodeBlobBombBounded: a compressed payload without a declared size
// that expands past MaxBlobSize is refused, and what decoding it allocates is
// bounded by the decoder's limit, not by the expanded size. The bound is loose:
// the zstd decoder grows its output by appending up to MaxBlobSize (about 360
// MiB allocated in all, for a blob whose RawLength says 100 bytes); sizing the
// output by RawLength would cut that to RawLength.
func TestDecodeBlobBombBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("decompresses 64 MiB")
	}
	_, r := newTestRepo(t)
	defer r.Close()
	var z bytes.Buffer
	w, err := zstd.NewWriter(&z, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 1<<20)
	for i := 0; i < 4*pack.MaxBlobSize>>20; i++ { // 256 MiB of zeros, streamed: no content size in the frame
		if _, err := w.Write(zeros); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	sealed := r.Key().Seal(nil, z.Bytes())
	b := pack.Blob{Type: repo.DataBlob, Compressed: true, Length: uint32(len(sealed)), RawLength: 100}
	var m1, m2 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m1)
	got, err := r.DecodeBlob(b, sealed, nil)
	runtime.ReadMemStats(&m2)
	if !errors.Is(err, ErrCorrupt) || got != nil {
		t.Fatalf("bomb: %d bytes, %v", len(got), err)
	}
	if d := m2.TotalAlloc - m1.TotalAlloc; d > 8*pack.MaxBlobSize {
		t.Fatalf("decoding a %d-byte bomb allocated %d MiB", len(sealed), d>>20)
	}
	t.Logf("%d-byte bomb: %v; allocated %d MiB", len(sealed), err, (m2.TotalAlloc-m1.TotalAlloc)>>20)
}

// TestSaveBlobConcurrentFilePacks: blobs of every size saved from more
// goroutines than there are encoding slots, into file packs written in the
// background, all read back intact.
func TestSaveBlobConcurrentFilePacks(t *testing.T) {
	ctx := context.Background()
	be, err := local.Create(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r, err := Create(ctx, be, []byte("pw"), Options{KDF: crypto.TestKDF, PackSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var blobs [][]byte
	for i := range 120 {
		rnd := rand.New(rand.NewSource(int64(i)))
		n := []int{100, 20 << 10, 300 << 10, 900 << 10, 1800 << 10, 3 << 20}[i%6]
		b := make([]byte, n)
		if i%2 == 0 {
			rnd.Read(b)
		} else {
			for j := range b {
				b[j] = byte('a' + rnd.Intn(4))
			}
		}
		blobs = append(blobs, b)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(blobs))
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < len(blobs); i += 8 {
				if _, _, _, err := r.SaveBlob(ctx, repo.DataBlob, blobs[i], repo.ID{}); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r2 := mustOpen(t, be, "pw")
	defer r2.Close()
	if err := r2.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	for i, b := range blobs {
		got, err := r2.LoadBlob(ctx, repo.DataBlob, r2.BlobID(b))
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("blob %d (%d bytes): %v", i, len(b), err)
		}
	}
}

// TestReadableSnapshots: a damaged snapshot file is returned apart by
// ReadableSnapshots, with the others loaded, and is an ErrCorrupt for
// Snapshots; a storage failure stops both.
func TestReadableSnapshots(t *testing.T) {
	ctx := context.Background()
	be, r := newTestRepo(t)
	var ids []repo.ID
	for i := range 3 {
		id, err := r.SaveSnapshot(ctx, &snapshot.Snapshot{Time: time.Unix(int64(1000+i), 0), Tree: repo.ID{1}, Paths: []string{"/x"}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	// Replace the middle one with other bytes under its name.
	h := backend.Handle{Type: backend.SnapshotFile, Name: ids[1].String()}
	if err := be.Remove(ctx, h); err != nil {
		t.Fatal(err)
	}
	if err := be.Save(ctx, h, []byte("not a snapshot")); err != nil {
		t.Fatal(err)
	}
	snaps, damaged, err := r.ReadableSnapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 2 || snaps[0].ID != ids[0] || snaps[1].ID != ids[2] {
		t.Errorf("readable: got %v", snaps)
	}
	if len(damaged) != 1 || damaged[0].ID != ids[1] || !errors.Is(damaged[0].Err, ErrCorrupt) {
		t.Errorf("damaged: got %+v", damaged)
	}
	if _, err := r.Snapshots(ctx); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Snapshots with a damaged file: want ErrCorrupt, got %v", err)
	}
	fb := fault.New(be)
	fr := mustOpen(t, fb, "pw")
	fb.SetRules(fault.Rules{BeforeLoad: func(h backend.Handle, _ int, _ int64) error {
		if h.Type == backend.SnapshotFile {
			return errors.New("storage down")
		}
		return nil
	}})
	if _, _, err := fr.ReadableSnapshots(ctx); err == nil || errors.Is(err, ErrCorrupt) {
		t.Errorf("ReadableSnapshots with the storage failing: want its error, got %v", err)
	}
}

// cutLoads ends every pack read after a few bytes, as a connection dropped
// in the middle of a response does.
type cutLoads struct{ backend.Backend }

func (c cutLoads) Load(ctx context.Context, h backend.Handle, length int, offset int64, fn func(io.Reader) error) error {
	if h.Type != backend.PackFile {
		return c.Backend.Load(ctx, h, length, offset, fn)
	}
	return c.Backend.Load(ctx, h, length, offset, func(rd io.Reader) error { return fn(io.LimitReader(rd, 3)) })
}

// TestLoadBlobCutShortIsNotDamage: a pack read that ends early is damage
// (ErrCorrupt, exit 4, and lost to repair) only if the pack is really
// shorter than the blob's end; a read cut off with the pack whole is a
// plain failure, so that repair does not cut a tree out of a snapshot for
// a network hiccup.
func TestLoadBlobCutShortIsNotDamage(t *testing.T) {
	ctx := context.Background()
	be, r := newTestRepo(t)
	id, _, _, err := r.SaveBlob(ctx, repo.TreeBlob, []byte("a tree, more than three bytes"), repo.ID{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r.Close()
	cut, err := Open(ctx, cutLoads{be}, []byte("pw"), testOpts)
	if err != nil {
		t.Fatal(err)
	}
	defer cut.Close()
	if err := cut.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cut.LoadBlob(ctx, repo.TreeBlob, id); err == nil || errors.Is(err, ErrCorrupt) {
		t.Errorf("read cut short, pack whole: %v, want an error that is not ErrCorrupt", err)
	}
	// The pack really cut: damage.
	var pack string
	_ = be.List(ctx, backend.PackFile, func(fi backend.FileInfo) error { pack = fi.Name; return nil })
	h := backend.Handle{Type: backend.PackFile, Name: pack}
	var data []byte
	if err := be.Load(ctx, h, 0, 0, func(rd io.Reader) error { data, err = io.ReadAll(rd); return err }); err != nil {
		t.Fatal(err)
	}
	replaceFile(t, be, h, data[:10])
	whole := mustOpen(t, be, "pw")
	defer whole.Close()
	if err := whole.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := whole.LoadBlob(ctx, repo.TreeBlob, id); !errors.Is(err, ErrCorrupt) {
		t.Errorf("pack cut short: %v, want ErrCorrupt", err)
	}
}
