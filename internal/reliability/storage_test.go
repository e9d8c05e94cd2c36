package reliability

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"bunker/internal/backend"
	"bunker/internal/backend/fault"
	"bunker/internal/backend/local"
	"bunker/internal/backend/mem"
	"bunker/internal/repo/crypto"
	"bunker/internal/repo/repository"
)

// smallSource makes a source of a few MiB for in-process backups (which run
// under the race detector): several chunks, several small files.
func smallSource(t testing.TB, seed uint64) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src")
	makeSource(t, src, seed, 3<<20)
	return src
}

// tracker is a backend decorator that counts Saves in flight, so that a
// test can wait for the background uploads a failed backup left running.
type tracker struct {
	backend.Backend
	inflight sync.WaitGroup
}

func (tk *tracker) Save(ctx context.Context, h backend.Handle, data []byte) error {
	tk.inflight.Add(1)
	defer tk.inflight.Done()
	return tk.Backend.Save(ctx, h, data)
}

// wait waits until no Save is running.
func (tk *tracker) wait() { tk.inflight.Wait() }

// openFault opens the repository of tr through a fault backend (over a
// tracker, see tracker.wait). packSize 0 means the default.
func openFault(t testing.TB, tr *testRepo, packSize int) (*repository.Repository, *fault.Backend) {
	t.Helper()
	ctx := context.Background()
	be, err := local.Open(ctx, tr.dir)
	if err != nil {
		t.Fatal(err)
	}
	fb := fault.New(&tracker{Backend: be})
	r, err := repository.Open(ctx, fb, []byte(testPassword), repository.Options{PackSize: packSize, KDF: crypto.TestKDF})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, fb
}

// afterFailedBackup checks what must hold after a backup through fb failed:
// once the uploads it left running are done, no stored file is empty, a
// fresh handle (a new process) backs up, check --read-data passes and the new
// snapshot restores identical.
func afterFailedBackup(t testing.TB, tr *testRepo, fb *fault.Backend, src string) {
	t.Helper()
	ctx := context.Background()
	if fb != nil {
		fb.Inner().(*tracker).wait()
	}
	for _, sub := range []string{"data", "index", "snapshots", "keys"} {
		err := filepath.WalkDir(filepath.Join(tr.dir, sub), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			if strings.HasPrefix(d.Name(), ".") {
				t.Errorf("temporary file left: %s", p)
			}
			if fi, err := d.Info(); err == nil && fi.Size() == 0 {
				t.Errorf("empty file under a final name: %s", p)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	tr.mustCheckClean(t, true)
	m := manifest(t, src)
	r := tr.open(t, repository.Options{})
	sn, err := backupInProcess(ctx, t, r, src)
	if err != nil {
		t.Fatalf("backup after the failure: %v", err)
	}
	tr.mustCheckClean(t, true)
	verifyRestore(t, tr, src, sn.ID.String(), m)
}

// RELIABILITY B6: corruption injected after compression and sealing, before
// upload: the backup fails with ErrVerify and nothing corrupt is stored.
func TestB6CorruptionBeforeUploadFailsTheBackup(t *testing.T) {
	for _, nth := range []int64{1, 8} {
		t.Run(fmt.Sprint("blob ", nth), func(t *testing.T) {
			ctx := context.Background()
			tr := newTestRepo(t)
			src := smallSource(t, 0xb6)
			r, fb := openFault(t, tr, 256<<10)
			var n atomic.Int64
			r.SetTestCorrupt(func(sealed []byte) {
				if n.Add(1) == nth {
					sealed[len(sealed)/2] ^= 0x04
				}
			})
			_, err := backupInProcess(ctx, t, r, src)
			if !errors.Is(err, repository.ErrVerify) {
				t.Fatalf("backup with a corrupted blob: %v, want ErrVerify", err)
			}
			if got := countFiles(t, r.Backend(), backend.SnapshotFile); got != 0 {
				t.Errorf("%d snapshots stored by a failed backup", got)
			}
			fb.Inner().(*tracker).wait()
			// Every blob of every stored pack, indexed or not, decodes.
			blobs := verifyAllPacks(t, tr.open(t, repository.Options{}))
			t.Logf("corrupted blob %d: %d packs, %d blobs stored before the failure", nth, len(storedPacks(t, r.Backend())), blobs)
			afterFailedBackup(t, tr, fb, src)
		})
	}
}

// RELIABILITY B8: a Save of different content under an existing name is
// refused with ErrExists and the stored file is unchanged, for every file
// type and every backend.
func TestB8OverwriteRefused(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	src := smallSource(t, 0xb8)
	r := tr.open(t, repository.Options{})
	if _, err := backupInProcess(ctx, t, r, src); err != nil {
		t.Fatal(err)
	}
	mutate(t, src, rand.New(rand.NewPCG(0xb8, 1)), 1, 100<<10)
	if _, err := backupInProcess(ctx, t, r, src); err != nil { // second pack, index and snapshot
		t.Fatal(err)
	}
	lbe, err := local.Open(ctx, tr.dir)
	if err != nil {
		t.Fatal(err)
	}
	backends := map[string]backend.Backend{"local": lbe, "mem": mem.New()}
	backends["fault(mem)"] = fault.New(mem.New())
	// Copy the repository into the other backends.
	copyFile := func(h backend.Handle) error {
		data, err := backend.LoadAll(ctx, lbe, h)
		if err != nil {
			return err
		}
		for name, be := range backends {
			if name != "local" {
				if err := be.Save(ctx, h, data); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := copyFile(backend.Handle{Type: backend.ConfigFile}); err != nil {
		t.Fatal(err)
	}
	for _, ft := range []backend.FileType{backend.KeyFile, backend.PackFile, backend.IndexFile, backend.SnapshotFile} {
		err := lbe.List(ctx, ft, func(fi backend.FileInfo) error { return copyFile(backend.Handle{Type: ft, Name: fi.Name}) })
		if err != nil {
			t.Fatal(err)
		}
	}
	names := func(be backend.Backend, ft backend.FileType) []string {
		var out []string
		if err := be.List(ctx, ft, func(fi backend.FileInfo) error { out = append(out, fi.Name); return nil }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	for bname, be := range backends {
		for _, ft := range []backend.FileType{backend.PackFile, backend.IndexFile, backend.SnapshotFile, backend.KeyFile, backend.ConfigFile} {
			var victim, other backend.Handle
			if ft == backend.ConfigFile {
				victim = backend.Handle{Type: ft}
				other = backend.Handle{Type: backend.KeyFile, Name: names(be, backend.KeyFile)[0]}
			} else {
				list := names(be, ft)
				if len(list) < 2 && ft != backend.KeyFile {
					t.Fatalf("%s: fewer than 2 %v files", bname, ft)
				}
				victim = backend.Handle{Type: ft, Name: list[0]}
				other = backend.Handle{Type: backend.ConfigFile}
				if len(list) > 1 {
					other = backend.Handle{Type: ft, Name: list[1]}
				}
			}
			before, err := backend.LoadAll(ctx, be, victim)
			if err != nil {
				t.Fatal(err)
			}
			data, err := backend.LoadAll(ctx, be, other)
			if err != nil {
				t.Fatal(err)
			}
			for _, attempt := range [][]byte{data, before[:len(before)/2], nil} {
				if err := be.Save(ctx, victim, attempt); !errors.Is(err, backend.ErrExists) {
					t.Errorf("%s: Save of other content under %v: %v, want ErrExists", bname, victim, err)
				}
			}
			after, err := backend.LoadAll(ctx, be, victim)
			if err != nil {
				t.Fatal(err)
			}
			if string(after) != string(before) {
				t.Errorf("%s: %v changed by a refused Save", bname, victim)
			}
			if ft != backend.ConfigFile && ft != backend.KeyFile && crypto.FileID(after).String() != victim.Name {
				t.Errorf("%s: %v no longer matches its name", bname, victim)
			}
		}
	}
	// The repository still checks clean, no temporary file was left.
	tr.mustCheckClean(t, true)
	afterFailedBackup(t, tr, nil, src)
}

// RELIABILITY C5: storage acknowledges pack uploads but drops them: the
// backup fails with ErrUploadLost before any index refers to them.
func TestC5DroppedPackUploads(t *testing.T) {
	for _, c := range []struct {
		name string
		sel  fault.Select
	}{
		{"every pack", fault.Select{Match: fault.OfType(backend.PackFile)}},
		{"second pack", fault.Select{Match: fault.OfType(backend.PackFile), Nth: 2}},
		{"fourth pack", fault.Select{Match: fault.OfType(backend.PackFile), Nth: 4}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			tr := newTestRepo(t)
			src := smallSource(t, 0xc5)
			r, fb := openFault(t, tr, 256<<10)
			fb.SetRules(fault.Rules{DropSave: c.sel})
			_, err := backupInProcess(ctx, t, r, src)
			if !errors.Is(err, repository.ErrUploadLost) {
				t.Fatalf("backup with dropped uploads: %v, want ErrUploadLost (%d faults fired)", err, fb.Injected())
			}
			if n := countFiles(t, fb.Inner(), backend.IndexFile); n != 0 {
				t.Errorf("%d index files written despite a lost pack", n)
			}
			if n := countFiles(t, fb.Inner(), backend.SnapshotFile); n != 0 {
				t.Errorf("%d snapshots written despite a lost pack", n)
			}
			afterFailedBackup(t, tr, fb, src)
		})
	}
}

// RELIABILITY C5, for the metadata files: an index or snapshot upload that
// storage acknowledges but drops must fail the backup. Otherwise a snapshot
// refers to blobs no index lists, or a backup reports a snapshot that does
// not exist.
func TestC5DroppedMetadataUploads(t *testing.T) {
	for _, ft := range []backend.FileType{backend.IndexFile, backend.SnapshotFile} {
		t.Run(ft.String(), func(t *testing.T) {
			ctx := context.Background()
			tr := newTestRepo(t)
			src := smallSource(t, 0xc5)
			r, fb := openFault(t, tr, 0)
			fb.SetRules(fault.Rules{DropSave: fault.Select{Match: fault.OfType(ft)}})
			sn, err := backupInProcess(ctx, t, r, src)
			if err == nil {
				t.Errorf("backup succeeded although its %v upload was lost (snapshot %s); check now says: %v",
					ft, sn.ID.Short(), checkInProcess(t, tr.openNoIndex(t), false).Problems)
			}
			if n := countFiles(t, fb.Inner(), backend.SnapshotFile); n != 0 && ft == backend.IndexFile {
				t.Errorf("a snapshot was stored although the index it needs was lost")
			}
			tr.mustCheckClean(t, false)
		})
	}
}

// RELIABILITY C4 (lite): the disk fills up at the Nth pack: the backup
// returns an error (ErrNoSpace), and once space is back the next backup and
// check --read-data pass.
func TestC4NoSpaceAtNthPack(t *testing.T) {
	for _, nth := range []int{1, 3} {
		t.Run(fmt.Sprint("pack ", nth), func(t *testing.T) {
			ctx := context.Background()
			tr := newTestRepo(t)
			src := smallSource(t, 0xc4)
			r, fb := openFault(t, tr, 256<<10)
			fb.SetRules(fault.Rules{FailSave: fault.Select{Match: fault.OfType(backend.PackFile), Nth: nth}, SaveErr: backend.ErrNoSpace})
			_, err := backupInProcess(ctx, t, r, src)
			if !errors.Is(err, backend.ErrNoSpace) {
				t.Fatalf("backup on a full disk: %v, want ErrNoSpace", err)
			}
			if n := countFiles(t, fb.Inner(), backend.SnapshotFile); n != 0 {
				t.Errorf("%d snapshots written by a failed backup", n)
			}
			fb.SetRules(fault.Rules{}) // space is back
			afterFailedBackup(t, tr, fb, src)
		})
	}
}

// RELIABILITY C2 (slow storage: jobs finish): a pack upload still running
// when archiver.Run returns must complete. The archiver cancels the context
// it passed to SaveBlob when Run returns; the repository's background
// upload once used that context, so the backup failed as "interrupted" (the
// CLI exited 130 without any signal) whenever a full pack was still
// uploading. Uploads now run without the caller's cancellation.
func TestC2PackUploadOutlivesArchiverRun(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(0xc2, 1))
	for i := 0; i < 4; i++ {
		writeFile(t, filepath.Join(src, fmt.Sprint("f", i)), randomBytes(rng, 100<<10))
	}
	r, fb := openFault(t, tr, 150<<10)
	fb.SetRules(fault.Rules{BeforeSave: func(h backend.Handle, _ []byte) error {
		if h.Type == backend.PackFile {
			time.Sleep(300 * time.Millisecond) // slow storage
		}
		return nil
	}})
	m := manifest(t, src)
	sn, err := backupInProcess(ctx, t, r, src)
	if err != nil {
		t.Fatalf("backup on slow storage: %v (errors.Is(err, context.Canceled) = %v)", err, errors.Is(err, context.Canceled))
	}
	verifyRestore(t, tr, src, sn.ID.String(), m)
}
