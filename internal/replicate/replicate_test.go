package replicate_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"sync/atomic"
	"testing"
	"time"

	"bunker/internal/backend"
	"bunker/internal/backend/fault"
	"bunker/internal/backend/mem"
	"bunker/internal/checker"
	"bunker/internal/replicate"
	"bunker/internal/repo"
	"bunker/internal/repo/repository"
	"bunker/internal/repo/repotest"
	"bunker/internal/snapshot"
)

// create makes a repository on be; with from, it shares from's keys.
func create(t *testing.T, be backend.Backend, from *repository.Repository) *repository.Repository {
	t.Helper()
	opts := repotest.Options
	opts.ParamsFrom = from
	r, err := repository.Create(context.Background(), be, []byte(repotest.Password), opts)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	return repotest.Open(t, be, true)
}

// source holds a repository with a tree of files that changes a little
// between snapshots.
type source struct {
	be    *mem.Backend
	r     *repository.Repository
	files map[string][]byte // path -> content
	n     int
}

func newSource(t *testing.T) *source {
	be := mem.New()
	s := &source{be: be, r: create(t, be, nil), files: map[string][]byte{}}
	for d := range 4 {
		for f := range 6 {
			s.files[fmt.Sprintf("d%d/f%d", d, f)] = repotest.RandBytes(uint64(d*100+f), 20<<10+d*3000+f*700)
		}
	}
	return s
}

// snapshot stores the current files as a snapshot and returns its ID.
func (s *source) snapshot(t *testing.T) repo.ID {
	t.Helper()
	dirs := map[string][]*snapshot.Node{}
	for p, data := range s.files {
		// Two blobs per file, so that files share packs unevenly.
		half := len(data) / 2
		a := repotest.SaveData(t, s.r, data[:half])
		b := repotest.SaveData(t, s.r, data[half:])
		dirs[path.Dir(p)] = append(dirs[path.Dir(p)], repotest.FileNode(path.Base(p), len(data), a, b))
	}
	var root []*snapshot.Node
	for d, nodes := range dirs {
		root = append(root, repotest.DirNode(d, repotest.SaveTree(t, s.r, nodes...)))
	}
	s.n++
	return repotest.SaveSnapshot(t, s.r, repotest.SaveTree(t, s.r, root...), repotest.BaseTime.Add(time.Duration(s.n)*time.Hour))
}

// contents maps every file path below tree to a hash of its content.
func contents(t *testing.T, r *repository.Repository, tree repo.ID) map[string]string {
	t.Helper()
	out := map[string]string{}
	var walk func(id repo.ID, dir string)
	walk = func(id repo.ID, dir string) {
		for _, n := range repotest.LoadTree(t, r, id).Nodes {
			p := path.Join(dir, n.Name)
			if n.Type == snapshot.TypeDir {
				walk(n.Subtree, p)
				continue
			}
			h := sha256.New()
			for _, c := range n.Content {
				b, err := r.LoadBlob(context.Background(), repo.DataBlob, c)
				if err != nil {
					t.Fatalf("%s: %v", p, err)
				}
				h.Write(b)
			}
			out[p] = fmt.Sprintf("%o %d %s", n.Mode, n.Size, hex.EncodeToString(h.Sum(nil)))
		}
	}
	walk(tree, "")
	return out
}

// runCopy copies every snapshot of src to dst, under a lock on dst.
func runCopy(t *testing.T, ctx context.Context, src, dst *repository.Repository, opts replicate.Options) (*replicate.Result, error) {
	t.Helper()
	lock, err := dst.Lock(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lock.Unlock(context.Background()) }()
	snaps, err := src.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return replicate.Copy(ctx, src, dst, lock, snaps, opts)
}

func mustCopy(t *testing.T, src, dst *repository.Repository, opts replicate.Options) *replicate.Result {
	t.Helper()
	res, err := runCopy(t, context.Background(), src, dst, opts)
	if err != nil {
		t.Fatalf("copy: %v", err)
	}
	return res
}

// fresh opens a new handle of the repository on be.
func fresh(t *testing.T, be backend.Backend) *repository.Repository {
	return repotest.Open(t, be, false)
}

// checkClean runs a full check (with data) on a fresh handle.
func checkClean(t *testing.T, be backend.Backend, what string) {
	t.Helper()
	res, err := checker.Check(context.Background(), fresh(t, be), checker.Options{ReadData: true})
	if err != nil {
		t.Fatalf("%s: check: %v", what, err)
	}
	if !res.OK() {
		t.Fatalf("%s: check found problems: %v", what, res.Problems)
	}
}

// sameSnapshots checks that dst holds a copy, with the same content, of
// each of the given source snapshots.
func sameSnapshots(t *testing.T, src *repository.Repository, srcBE, dstBE backend.Backend, ids ...repo.ID) {
	t.Helper()
	s := fresh(t, srcBE)
	d := fresh(t, dstBE)
	ctx := context.Background()
	for _, r := range []*repository.Repository{s, d} {
		if err := r.LoadIndex(ctx); err != nil {
			t.Fatal(err)
		}
	}
	copies, err := d.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		sn, err := s.LoadSnapshot(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		var cp *snapshot.Snapshot
		for _, c := range copies {
			if c.Original != nil && *c.Original == id && c.OriginalRepo == src.Config().ID {
				cp = c
			}
		}
		if cp == nil {
			t.Fatalf("target has no copy of snapshot %s", id.Short())
		}
		if !cp.Time.Equal(sn.Time) || cp.Hostname != sn.Hostname {
			t.Errorf("copy of %s: time/host %v %s, want %v %s", id.Short(), cp.Time, cp.Hostname, sn.Time, sn.Hostname)
		}
		want, got := contents(t, s, sn.Tree), contents(t, d, cp.Tree)
		if fmt.Sprint(want) != fmt.Sprint(got) {
			t.Errorf("copy of %s differs:\nwant %v\ngot  %v", id.Short(), want, got)
		}
	}
}

type target struct {
	name   string
	shared bool
}

var targets = []target{{"reencode", false}, {"pack", true}}

func (tg target) make(t *testing.T, src *repository.Repository) (*mem.Backend, *repository.Repository) {
	be := mem.New()
	var from *repository.Repository
	if tg.shared {
		from = src
	}
	return be, create(t, be, from)
}

func TestCopyIncremental(t *testing.T) {
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			s := newSource(t)
			var ids []repo.ID
			for range 3 {
				ids = append(ids, s.snapshot(t))
				s.files["d1/f2"] = repotest.RandBytes(uint64(1000+s.n), 30<<10)
			}
			be, dst := tg.make(t, s.r)
			res := mustCopy(t, s.r, dst, replicate.Options{})
			if res.Mode != tg.name || len(res.Copied) != 3 || len(res.Failed) != 0 || res.Present != 0 {
				t.Fatalf("first copy: %+v", res)
			}
			if tg.shared && res.WholePacks == 0 {
				t.Errorf("pack-level copy moved no whole pack")
			}
			if res.LagBefore <= 0 || res.LagAfter != 0 {
				t.Errorf("lag before %v after %v", res.LagBefore, res.LagAfter)
			}
			checkClean(t, be, "after the first copy")
			sameSnapshots(t, s.r, s.be, be, ids...)

			// Nothing new: nothing moves, and the target is not even indexed.
			again := mustCopy(t, s.r, fresh(t, be), replicate.Options{})
			if len(again.Copied) != 0 || again.Present != 3 || again.Blobs != 0 || again.LagBefore != 0 {
				t.Fatalf("second copy: %+v", again)
			}

			// Two changed files (d1/f2 changed after the last snapshot
			// too): only their blobs (and, for packs, the trees above
			// them) move; the rest is known from the previous copy.
			s.files["d2/f0"] = repotest.RandBytes(77, 24<<10)
			ids = append(ids, s.snapshot(t))
			third := mustCopy(t, s.r, fresh(t, be), replicate.Options{})
			wantBlobs := 4 // the two halves of each changed file
			if tg.shared {
				wantBlobs += 3 // the trees of d1, d2 and the root
			}
			if len(third.Copied) != 1 || third.Blobs != wantBlobs {
				t.Fatalf("third copy: copied %d, %d blobs, want 1 and %d", len(third.Copied), third.Blobs, wantBlobs)
			}
			checkClean(t, be, "after the third copy")
			sameSnapshots(t, s.r, s.be, be, ids...)
		})
	}
}

func TestCopyRefusals(t *testing.T) {
	s := newSource(t)
	s.snapshot(t)
	_, dst := targets[0].make(t, s.r)
	if _, err := runCopy(t, context.Background(), s.r, dst, replicate.Options{Mode: replicate.ModePack}); !errors.Is(err, replicate.ErrIncompatible) {
		t.Errorf("pack mode to a target with its own keys: %v, want ErrIncompatible", err)
	}
	if _, err := runCopy(t, context.Background(), s.r, fresh(t, s.be), replicate.Options{}); !errors.Is(err, replicate.ErrSameRepository) {
		t.Errorf("copy to itself: %v, want ErrSameRepository", err)
	}
	// A shared-key target can still be re-encoded on request.
	be, shared := targets[1].make(t, s.r)
	res := mustCopy(t, s.r, shared, replicate.Options{Mode: replicate.ModeReencode})
	if res.Mode != "reencode" || len(res.Copied) != 1 {
		t.Fatalf("reencode to a shared target: %+v", res)
	}
	checkClean(t, be, "re-encoded into a shared target")
}

func TestCopyDryRun(t *testing.T) {
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			s := newSource(t)
			s.snapshot(t)
			s.files["d0/f0"] = repotest.RandBytes(5, 10<<10)
			s.snapshot(t)
			be, dst := tg.make(t, s.r)
			before := repotest.Listing(t, be)
			dry, err := func() (*replicate.Result, error) {
				snaps, err := s.r.Snapshots(context.Background())
				if err != nil {
					return nil, err
				}
				return replicate.Copy(context.Background(), s.r, dst, nil, snaps, replicate.Options{DryRun: true})
			}()
			if err != nil {
				t.Fatal(err)
			}
			repotest.DiffListings(t, "dry run", before, repotest.Listing(t, be))
			real := mustCopy(t, s.r, fresh(t, be), replicate.Options{})
			if dry.Blobs != real.Blobs || dry.Bytes != real.Bytes || dry.Selected-dry.Present != len(real.Copied) {
				t.Errorf("dry run %d blobs %d bytes %d snapshots; real run %d, %d, %d", dry.Blobs, dry.Bytes, dry.Selected-dry.Present, real.Blobs, real.Bytes, len(real.Copied))
			}
		})
	}
}

// RELIABILITY H2: damage in the source is found and not copied; the
// snapshots that do not depend on it are copied; the target checks clean.
func TestCopyCorruptSource(t *testing.T) {
	for _, tg := range targets {
		for _, whole := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/whole=%v", tg.name, whole), func(t *testing.T) {
				s := newSource(t)
				good := s.snapshot(t)
				s.files["new/file"] = repotest.RandBytes(999, 40<<10)
				bad := s.snapshot(t)
				// The pack holding the first half of the new file.
				data := s.files["new/file"]
				id := s.r.BlobID(data[:len(data)/2])
				pk := repotest.PackOf(t, s.r, repo.DataBlob, id)
				loc, _ := s.r.LookupBlob(repo.BlobHandle{Type: repo.DataBlob, ID: id})
				repotest.Replace(t, s.be, backend.PackFile, pk, func(b []byte) []byte {
					b[loc.Offset+loc.Length/2] ^= 0x10
					return b
				})
				be, dst := tg.make(t, s.r)
				if !whole && tg.shared {
					// Copy the good snapshot first: then only a part of the
					// damaged pack is wanted, and it moves blob by blob.
					snap, err := s.r.LoadSnapshot(context.Background(), good)
					if err != nil {
						t.Fatal(err)
					}
					lock, _ := dst.Lock(context.Background(), false)
					if _, err := replicate.Copy(context.Background(), s.r, dst, lock, []*snapshot.Snapshot{snap}, replicate.Options{}); err != nil {
						t.Fatal(err)
					}
					_ = lock.Unlock(context.Background())
					dst = fresh(t, be)
				}
				res := mustCopy(t, s.r, dst, replicate.Options{})
				if len(res.Failed) != 1 || res.Failed[0].Source.ID != bad || !errors.Is(res.Failed[0].Err, replicate.ErrDamagedSource) {
					t.Fatalf("failed: %+v", res.Failed)
				}
				if len(res.Damaged) == 0 {
					t.Errorf("no damage reported")
				}
				if res.LagAfter <= 0 {
					t.Errorf("lag after a failed snapshot is %v", res.LagAfter)
				}
				checkClean(t, be, "after copying from a damaged source")
				sameSnapshots(t, s.r, s.be, be, good)
				snaps, _ := fresh(t, be).Snapshots(context.Background())
				if len(snaps) != 1 {
					t.Errorf("target has %d snapshots, want 1", len(snaps))
				}
			})
		}
	}
}

// RELIABILITY H2: a snapshot forgotten in the source stays in the target.
func TestCopyKeepsWhatSourceForgets(t *testing.T) {
	s := newSource(t)
	first := s.snapshot(t)
	s.files["d3/f3"] = repotest.RandBytes(3, 1000)
	second := s.snapshot(t)
	be, dst := targets[0].make(t, s.r)
	mustCopy(t, s.r, dst, replicate.Options{})
	repotest.Remove(t, s.be, backend.SnapshotFile, first)
	res := mustCopy(t, fresh(t, s.be), fresh(t, be), replicate.Options{})
	if len(res.Copied) != 0 || res.Selected != 1 {
		t.Fatalf("copy after forget: %+v", res)
	}
	snaps, err := fresh(t, be).Snapshots(context.Background())
	if err != nil || len(snaps) != 2 {
		t.Fatalf("target snapshots after the source forgot one: %d, %v", len(snaps), err)
	}
	_ = second
}

// RELIABILITY H2: a copy interrupted at any upload leaves a target that
// checks clean (it refers to nothing it lacks), and the next run finishes
// the job.
func TestCopyInterruptedResumes(t *testing.T) {
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			s := newSource(t)
			var ids []repo.ID
			for i := range 4 {
				s.files[fmt.Sprintf("d%d/f1", i)] = repotest.RandBytes(uint64(500+i), 50<<10)
				ids = append(ids, s.snapshot(t))
			}
			inner := mem.New()
			create(t, inner, map[bool]*repository.Repository{true: s.r, false: nil}[tg.shared])
			fb := fault.New(inner)
			stop := 1
			for ; ; stop++ {
				ctx, cancel := context.WithCancel(context.Background())
				var saves atomic.Int32
				fb.SetRules(fault.Rules{BeforeSave: func(h backend.Handle, _ []byte) error {
					if h.Type == backend.LockFile {
						return nil
					}
					if saves.Add(1) == int32(stop) {
						cancel()
						return context.Canceled
					}
					return nil
				}})
				// Small batches: snapshots commit between interruptions.
				res, err := runCopy(t, ctx, fresh(t, s.be), fresh(t, fb), replicate.Options{BatchBytes: 100 << 10})
				cancel()
				fb.SetRules(fault.Rules{})
				checkClean(t, inner, fmt.Sprintf("interrupted at save %d", stop))
				if err == nil {
					t.Logf("finished after %d interrupted runs", stop-1)
					if len(res.Failed) != 0 {
						t.Fatalf("run %d: %+v", stop, res.Failed)
					}
					break
				}
				if stop > 200 {
					t.Fatalf("copy never finished: %v", err)
				}
			}
			if stop < 5 {
				t.Fatalf("the copy finished after %d interruptions: the test interrupts too little", stop-1)
			}
			sameSnapshots(t, s.r, s.be, inner, ids...)
			snaps, _ := fresh(t, inner).Snapshots(context.Background())
			if len(snaps) != len(ids) {
				t.Fatalf("target has %d snapshots, want %d (no duplicates)", len(snaps), len(ids))
			}
		})
	}
}

// A pack left damaged in the target under a source pack's name (by an
// earlier run on a storage without atomic uploads) is never referred to:
// its blobs go to new packs.
func TestCopyDamagedLeftoverInTarget(t *testing.T) {
	s := newSource(t)
	id := s.snapshot(t)
	be, dst := targets[1].make(t, s.r)
	packs := repotest.Files(t, s.be, backend.PackFile)
	for p, fi := range packs {
		garbage := repotest.RandBytes(1, int(fi.Size))
		if err := be.Save(context.Background(), backend.Handle{Type: backend.PackFile, Name: p.String()}, garbage); err != nil {
			t.Fatal(err)
		}
		break
	}
	res := mustCopy(t, s.r, dst, replicate.Options{})
	if len(res.Copied) != 1 || res.WholePacks != len(packs)-1 {
		t.Fatalf("copy over a damaged leftover: %d copied, %d whole packs of %d", len(res.Copied), res.WholePacks, len(packs))
	}
	sameSnapshots(t, s.r, s.be, be, id)
	r := fresh(t, be)
	cres, err := checker.Check(context.Background(), r, checker.Options{ReadData: true})
	if err != nil || !cres.OK() || cres.UnreferencedPacks != 1 {
		t.Fatalf("check: %v %+v", err, cres)
	}
}
