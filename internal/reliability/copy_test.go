package reliability

import (
	"math/rand/v2"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"bunker/internal/repo/repository"
)

// RELIABILITY H2: kill -9 of `bunker copy` at its failpoints and at random
// moments, to a re-encoded and to a pack-level replica: after every kill the
// replica checks clean with all data read (it refers to nothing it lacks),
// and the next run finishes the copy; every copied snapshot restores the
// data it was taken of.
func TestH2CopyKilled(t *testing.T) {
	for _, mode := range []string{"reencode", "pack"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(0x42, uint64(len(mode))))
			src := newTestRepo(t)
			data := filepath.Join(t.TempDir(), "data")
			h := history{}
			id, m := seedRepo(t, src, data, 7, 20<<20)
			h[id] = m
			for i := 1; i <= 3; i++ {
				mutate(t, data, rng, i, 4<<20)
				m := manifest(t, data)
				h[src.backup(t, data)] = m
			}
			dst := &testRepo{dir: filepath.Join(t.TempDir(), "replica"), pwFile: src.pwFile}
			initArgs := []string{"init"}
			if mode == "pack" {
				initArgs = append(initArgs, "--copy-params-from", src.dir, "--from-password-file", src.pwFile)
			}
			if r := dst.run(t, nil, initArgs...); r.code != 0 {
				t.Fatalf("init: %v", r)
			}
			copyArgs := []string{"copy", "--from-repo", src.dir, "--from-password-file", src.pwFile}

			for _, fp := range []string{repository.FailpointPackStored, repository.FailpointIndexStored, repository.FailpointCopyCommitted} {
				before := dst.snapshotIDs(t)
				r := dst.run(t, []string{"BUNKER_FAILPOINT=" + fp}, copyArgs...)
				if r.signal != syscall.SIGKILL {
					t.Fatalf("failpoint %s did not kill the copy: %v", fp, r)
				}
				res := dst.mustCheckClean(t, true)
				t.Logf("killed at %s: %d snapshots (%d new), %d packs, %d unreferenced", fp, res.Snapshots, len(newIDs(before, dst.snapshotIDs(t))), res.Packs, res.UnreferencedPacks)
			}
			// Random moments: each run starts over where the last stopped.
			for i := 0; i < 3; i++ {
				cmd := dst.command(nil, copyArgs...)
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				delay := time.Duration(50+rng.IntN(400)) * time.Millisecond
				time.Sleep(delay)
				_ = cmd.Process.Signal(syscall.SIGKILL)
				var r cliResult
				if err := waitResult(cmd.Wait(), &r); err != nil {
					t.Fatal(err)
				}
				if r.signal == 0 && r.code != 0 {
					t.Fatalf("copy failed by itself: %v", r)
				}
				res := dst.mustCheckClean(t, true)
				t.Logf("killed after %v (exit %d, signal %v): %d snapshots", delay, r.code, r.signal, res.Snapshots)
			}
			if r := dst.run(t, nil, copyArgs...); r.code != 0 {
				t.Fatalf("copy after the kills: %v", r)
			}
			dst.mustCheckClean(t, true)
			ids, srcIDs := dst.snapshotIDs(t), src.snapshotIDs(t)
			if len(ids) != len(srcIDs) {
				t.Fatalf("replica has %d snapshots, want %d", len(ids), len(srcIDs))
			}
			// Each replica snapshot copies a source snapshot, once; those
			// whose data the test knows restore it.
			seen := map[string]bool{}
			for _, id := range ids {
				orig := originalOf(t, dst, id)
				if !contains(srcIDs, orig) || seen[orig] {
					t.Fatalf("replica snapshot %.8s copies %.8s: not a source snapshot, or copied twice", id, orig)
				}
				seen[orig] = true
				if want, ok := h[orig]; ok {
					verifyRestore(t, dst, data, id, want)
				}
			}
			if r := dst.run(t, nil, copyArgs...); r.code != 0 || !strings.Contains(r.stdout, "0 of ") {
				t.Fatalf("copy with nothing new: %v", r)
			}
		})
	}
}

// originalOf reads the source snapshot ID a replica snapshot copies.
func originalOf(t testing.TB, tr *testRepo, id string) string {
	t.Helper()
	r := tr.open(t, repository.Options{})
	snaps, err := r.Snapshots(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, sn := range snaps {
		if sn.ID.String() == id && sn.Original != nil {
			return sn.Original.String()
		}
	}
	t.Fatalf("snapshot %.8s has no original", id)
	return ""
}
