package reliability

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"bunker/internal/fs/fstest"
	"bunker/internal/repo/repository"
)

// mutate changes the source between backups: a file is rewritten and a new
// one of newBytes random bytes is added, so that every backup has data to
// upload.
func mutate(t testing.TB, src string, rng *rand.Rand, i int, newBytes int) {
	t.Helper()
	writeFile(t, filepath.Join(src, "changed"), []byte(fmt.Sprintf("version %d %x\n", i, rng.Uint64())))
	writeFile(t, filepath.Join(src, "b", fmt.Sprintf("new-%03d", i)), randomBytes(rng, newBytes))
}

// newIDs returns the names in after that are not in before.
func newIDs(before, after []string) []string {
	seen := map[string]bool{}
	for _, b := range before {
		seen[b] = true
	}
	var out []string
	for _, a := range after {
		if !seen[a] {
			out = append(out, a)
		}
	}
	return out
}

// history maps each snapshot to the manifest of its source when it was taken.
type history map[string]map[string]fstest.Entry

// verifyRestore restores snapshot id and compares it with its manifest.
func verifyRestore(t testing.TB, tr *testRepo, src, id string, want map[string]fstest.Entry) {
	t.Helper()
	target := t.TempDir()
	code, failed := tr.restore(t, id, target)
	if code != 0 || len(failed) > 0 {
		t.Fatalf("restore %.8s: exit %d, not restored: %q", id, code, failed)
	}
	compareManifests(t, fmt.Sprintf("snapshot %.8s", id), want, manifest(t, restoredAt(target, src)))
	if err := os.RemoveAll(target); err != nil {
		t.Fatal(err)
	}
}

// afterCrash runs what RELIABILITY A1 demands after an interrupted backup:
// the repository opens, check --read-data passes (unreferenced packs
// allowed), the next backup succeeds and the snapshots in restore restore
// identical.
func afterCrash(t testing.TB, tr *testRepo, src string, h history, restore []string) {
	t.Helper()
	r, err := tr.openErr(repository.Options{}, true)
	if err != nil {
		t.Fatalf("repository does not open after the crash: %v", err)
	}
	r.Close()
	res := tr.mustCheckClean(t, true)
	t.Logf("after crash: %d snapshots, %d packs, %d unreferenced", res.Snapshots, res.Packs, res.UnreferencedPacks)
	m := manifest(t, src)
	id := tr.backup(t, src)
	h[id] = m
	tr.mustCheckClean(t, false)
	for _, id := range append(restore, id) {
		verifyRestore(t, tr, src, id, h[id])
	}
}

// RELIABILITY A1: kill -9 during backup at each named failpoint (pack stored
// but not indexed; index stored but no snapshot; snapshot stored but the
// command has not returned).
func TestA1KillAtFailpoints(t *testing.T) {
	for i, fp := range []string{repository.FailpointPackStored, repository.FailpointIndexStored, repository.FailpointSnapshotStored} {
		t.Run(fp, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(0xa1, uint64(i)))
			tr := newTestRepo(t)
			src := filepath.Join(t.TempDir(), "src")
			h := history{}
			id0, m := seedRepo(t, tr, src, uint64(i), 12<<20)
			h[id0] = m

			mutate(t, src, rng, 1, 6<<20)
			m = manifest(t, src)
			before := tr.snapshotIDs(t)
			res := tr.run(t, []string{"BUNKER_FAILPOINT=" + fp}, "backup", "--json", "--host", "reliability", src)
			if res.signal != syscall.SIGKILL {
				t.Fatalf("failpoint %s did not kill the backup: %v", fp, res)
			}
			created := newIDs(before, tr.snapshotIDs(t))
			want := 0
			if fp == repository.FailpointSnapshotStored {
				want = 1
			}
			if len(created) != want {
				t.Fatalf("failpoint %s: %d new snapshots, want %d", fp, len(created), want)
			}
			for _, id := range created {
				h[id] = m
			}
			afterCrash(t, tr, src, h, append([]string{id0}, created...))
		})
	}
}

// RELIABILITY A1: kill -9 during backup at random (seeded) moments, several
// times in a row on the same repository.
func TestA1KillAtRandomMoments(t *testing.T) {
	iterations, size, grow := 4, int64(48<<20), 6<<20
	if soak() {
		iterations, size, grow = 20, 100<<20, 12<<20
	}
	rng := rand.New(rand.NewPCG(0xa1, 0xdead))
	tr := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	h := history{}
	id, m := seedRepo(t, tr, src, 42, size)
	h[id] = m
	// The killed backups store their new data in 512 KiB packs and write a
	// partial index every 100 ms, so that kills land among pack uploads
	// and index writes in the background, not only in the final flush.
	env := []string{"BUNKER_TEST_PACK_SIZE=524288", "BUNKER_TEST_INDEX_INTERVAL=100ms"}
	// A complete run of what each iteration kills (read everything, store
	// new data) sets the range of the kill delays.
	mutate(t, src, rng, 0, grow)
	m = manifest(t, src)
	before := tr.snapshotIDs(t)
	start := time.Now()
	res := tr.run(t, env, "backup", "--force", "--json", "--host", "reliability", src)
	full := time.Since(start)
	created := newIDs(before, tr.snapshotIDs(t))
	if res.code != 0 || len(created) != 1 {
		t.Fatalf("backup --force: %v, %d new snapshots", res, len(created))
	}
	h[created[0]] = m
	t.Logf("backup --force of %d MiB with %d MiB new: %v", size>>20, grow>>20, full)

	var restored []string
	killed := 0
	for i := 1; i <= iterations; i++ {
		mutate(t, src, rng, i, grow)
		m := manifest(t, src)
		before := tr.snapshotIDs(t)
		// --force reads every file again, so the kill may land anywhere:
		// opening, reading and chunking, uploading packs, index, snapshot.
		cmd := tr.command(env, "backup", "--force", "--json", "--host", "reliability", src)
		// Stratified: iteration i kills within the i-th slice of the run (and
		// a little past its end), so the kills spread over all phases.
		slice := int64(full) * 12 / 10 / int64(iterations)
		delay := time.Duration(int64(i-1)*slice + rng.Int64N(slice))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		var res cliResult
		if err := waitResult(cmd.Wait(), &res); err != nil {
			t.Fatal(err)
		}
		created := newIDs(before, tr.snapshotIDs(t))
		t.Logf("iteration %d: kill after %v: exit %d signal %v, %d new snapshots", i, delay, res.code, res.signal, len(created))
		if res.signal == 0 && res.code != 0 {
			t.Fatalf("backup failed by itself: %v", res)
		}
		if res.signal == syscall.SIGKILL {
			killed++
		}
		for _, id := range created {
			h[id] = m
		}
		// Restore what is new, and one earlier snapshot; check --read-data
		// in afterCrash covers the data of every snapshot each time.
		var todo []string
		for id := range h {
			if !contains(restored, id) {
				todo = append(todo, id)
			}
		}
		sort.Strings(todo)
		if len(restored) > 0 {
			todo = append(todo, restored[rng.IntN(len(restored))])
		}
		restored = append(restored, todo...)
		afterCrash(t, tr, src, h, todo)
		if t.Failed() {
			return
		}
	}
	// The kills are spread over 1.2 times a full run: most must land in it.
	if killed < iterations/2 {
		t.Errorf("only %d of %d kills interrupted a backup", killed, iterations)
	}
	// Finally every snapshot, oldest data included.
	if soak() {
		for id, m := range h {
			verifyRestore(t, tr, src, id, m)
		}
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// RELIABILITY A5: kill -9 during restore, then restore again into the same
// target: it succeeds and the result is identical.
func TestA5KillDuringRestore(t *testing.T) {
	iterations, size := 3, int64(48<<20)
	if soak() {
		iterations, size = 12, 100<<20
	}
	rng := rand.New(rand.NewPCG(0xa5, 1))
	tr := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	id, want := seedRepo(t, tr, src, 5, size)

	target := t.TempDir()
	start := time.Now()
	if code, failed := tr.restore(t, id, target); code != 0 || len(failed) > 0 {
		t.Fatalf("restore: exit %d, not restored %q", code, failed)
	}
	full := time.Since(start)
	compareManifests(t, "restore", want, manifest(t, restoredAt(target, src)))
	t.Logf("full restore of %d MiB: %v", size>>20, full)

	// The restores that are killed read at a third of the data per second,
	// so that each kill, 0.1 to 1.5 s after the start, lands in the middle
	// of one (on a fast machine an unlimited restore, 0.1 to 0.25 s here,
	// was often done before a kill timed from a slower first one).
	limit := strconv.FormatInt(size/3>>10, 10)
	killed := 0
	for i := 0; i < iterations; i++ {
		target := t.TempDir()
		cmd := tr.command(nil, "--limit-download", limit, "restore", "--json", id, "--target", target)
		delay := 100*time.Millisecond + time.Duration(rng.Int64N(int64(1400*time.Millisecond)))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		var res cliResult
		if err := waitResult(cmd.Wait(), &res); err != nil {
			t.Fatal(err)
		}
		t.Logf("iteration %d: kill after %v: exit %d signal %v", i, delay, res.code, res.signal)
		if res.signal == syscall.SIGKILL {
			killed++
		} else if res.code != 0 {
			t.Fatalf("restore failed by itself: %v", res)
		}
		code, failed := tr.restore(t, id, target)
		if code != 0 || len(failed) > 0 {
			t.Fatalf("restore after kill: exit %d, not restored %q", code, failed)
		}
		compareManifests(t, "restore after kill", want, manifest(t, restoredAt(target, src)))
		// Nothing but the snapshot's path in the target.
		for p := range manifest(t, target) {
			if rel := "/" + p; !strings.HasPrefix(src+"/", rel+"/") && !strings.HasPrefix(rel, src+"/") {
				t.Errorf("restore left an extra entry %s", p)
			}
		}
		if t.Failed() {
			return
		}
	}
	// The kills fall well within a limited restore (3 s at least).
	if killed < iterations {
		t.Errorf("only %d of %d kills interrupted a restore", killed, iterations)
	}
}
