package repository_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"bunker/internal/backend"
	"bunker/internal/backend/fault"
	"bunker/internal/backend/mem"
	"bunker/internal/repo"
	"bunker/internal/repo/crypto"
	"bunker/internal/repo/repository"
)

// These tests change LockRefresh and LockStale: none of them may run in
// parallel.

func newLockRepo(t *testing.T) (*mem.Backend, *repository.Repository) {
	t.Helper()
	be := mem.New()
	r, err := repository.Create(context.Background(), be, []byte("pw"), repository.Options{KDF: crypto.TestKDF})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return be, r
}

// setLockTiming sets the lock timing for one test. Register it before any
// lock is taken: cleanups run last-in first-out, so the locks' Unlock (which
// waits for their refresh goroutines) runs before the values are restored.
func setLockTiming(t *testing.T, refresh, stale time.Duration) {
	t.Helper()
	oldRefresh, oldStale := repository.LockRefresh, repository.LockStale
	t.Cleanup(func() { repository.LockRefresh, repository.LockStale = oldRefresh, oldStale })
	repository.LockRefresh, repository.LockStale = refresh, stale
}

func takeLock(t *testing.T, r *repository.Repository, exclusive bool) *repository.Lock {
	t.Helper()
	l, err := r.Lock(context.Background(), exclusive)
	if err != nil {
		t.Fatalf("Lock(exclusive=%v): %v", exclusive, err)
	}
	t.Cleanup(func() {
		if err := l.Unlock(context.Background()); err != nil {
			t.Errorf("Unlock: %v", err)
		}
	})
	return l
}

// writeLockFile stores a lock file as another process would.
func writeLockFile(t *testing.T, r *repository.Repository, li repository.LockInfo) repo.ID {
	t.Helper()
	b, err := json.Marshal(li)
	if err != nil {
		t.Fatal(err)
	}
	id, err := r.SaveUnpacked(context.Background(), backend.LockFile, b)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func lockFiles(t *testing.T, be backend.Backend) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	err := be.List(context.Background(), backend.LockFile, func(fi backend.FileInfo) error {
		out[fi.Name] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func lockFileExists(t *testing.T, be backend.Backend, id repo.ID) bool {
	t.Helper()
	_, err := be.Stat(context.Background(), backend.Handle{Type: backend.LockFile, Name: id.String()})
	if err != nil && !errors.Is(err, backend.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// waitFor polls cond for up to two seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLockConflicts(t *testing.T) {
	host, _ := os.Hostname()
	type held int
	const (
		heldShared held = iota
		heldExclusive
		heldStaleByTime      // an exclusive lock not refreshed for longer than LockStale
		heldDeadProcess      // an exclusive lock of a process of this host that is gone
		heldOtherNamespace   // an exclusive lock of this hostname, from another PID namespace
		heldOtherBoot        // an exclusive lock of this hostname and PID namespace, another boot
		heldOtherHost        // a live exclusive lock of another host
		heldOtherHostShared  // a live shared lock of another host
		heldOtherHostExpired // another host's shared lock, long stale
	)
	tests := []struct {
		name         string
		held         held
		shared, excl bool // whether a shared, an exclusive lock may be taken
	}{
		{"shared", heldShared, true, false},
		{"exclusive", heldExclusive, false, false},
		{"stale by time", heldStaleByTime, true, true},
		{"dead process", heldDeadProcess, true, true},
		{"same PID number in another PID namespace", heldOtherNamespace, false, false},
		{"same hostname and PID namespace, another boot", heldOtherBoot, false, false},
		{"other host exclusive", heldOtherHost, false, false},
		{"other host shared", heldOtherHostShared, true, false},
		{"other host stale", heldOtherHostExpired, true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			be, r := newLockRepo(t)
			now := time.Now().UTC()
			switch tc.held {
			case heldShared, heldExclusive:
				takeLock(t, r, tc.held == heldExclusive)
			case heldStaleByTime:
				old := now.Add(-repository.LockStale - time.Minute)
				writeLockFile(t, r, repository.LockInfo{Time: old, Created: old, Exclusive: true, Hostname: host, PID: os.Getpid()})
			case heldDeadProcess:
				writeLockFile(t, r, repository.LockInfo{Time: now, Created: now, Exclusive: true, Hostname: host, PID: math.MaxInt32, PIDNamespace: ownPIDNamespace(t), BootID: ownBootID(t)})
			case heldOtherBoot:
				// Another machine of the same hostname, outside containers:
				// same (initial) PID namespace, another boot ID.
				writeLockFile(t, r, repository.LockInfo{Time: now, Created: now, Exclusive: true, Hostname: host, PID: math.MaxInt32, PIDNamespace: ownPIDNamespace(t), BootID: "00000000-0000-0000-0000-000000000000"})
			case heldOtherNamespace:
				// A container with the same hostname: its PID means nothing here.
				writeLockFile(t, r, repository.LockInfo{Time: now, Created: now, Exclusive: true, Hostname: host, PID: math.MaxInt32, PIDNamespace: "pid:[1]"})
			case heldOtherHost, heldOtherHostShared:
				writeLockFile(t, r, repository.LockInfo{Time: now, Created: now, Exclusive: tc.held == heldOtherHost, Hostname: "elsewhere.invalid", PID: 1})
			case heldOtherHostExpired:
				old := now.Add(-2 * repository.LockStale)
				writeLockFile(t, r, repository.LockInfo{Time: old, Exclusive: false, Hostname: "elsewhere.invalid", PID: 1})
			}
			for _, exclusive := range []bool{false, true} {
				want := tc.shared
				if exclusive {
					want = tc.excl
				}
				before := lockFiles(t, be)
				l, err := r.Lock(ctx, exclusive)
				if !want {
					if !errors.Is(err, repository.ErrLocked) {
						t.Errorf("Lock(exclusive=%v) = %v, want ErrLocked", exclusive, err)
					}
					if after := lockFiles(t, be); len(after) != len(before) {
						t.Errorf("a refused Lock(exclusive=%v) left %d lock files, had %d", exclusive, len(after), len(before))
					}
					if l != nil {
						l.Unlock(ctx)
					}
					continue
				}
				if err != nil {
					t.Errorf("Lock(exclusive=%v) = %v, want it granted", exclusive, err)
					continue
				}
				if !lockFileExists(t, be, l.ID()) || len(lockFiles(t, be)) != len(before)+1 {
					t.Errorf("Lock(exclusive=%v): its lock file is not stored", exclusive)
				}
				if err := l.Check(ctx); err != nil {
					t.Errorf("Check of a fresh lock: %v", err)
				}
				st, err := l.StorageTime(ctx)
				if err != nil || st.After(time.Now()) || time.Since(st) > time.Minute {
					t.Errorf("StorageTime = %v, %v", st, err)
				}
				if err := l.Unlock(ctx); err != nil {
					t.Errorf("Unlock: %v", err)
				}
				if lockFileExists(t, be, l.ID()) {
					t.Errorf("Unlock left the lock file")
				}
			}
		})
	}
}

func TestLockLostByRemoval(t *testing.T) {
	for _, exclusive := range []bool{false, true} {
		ctx := context.Background()
		be, r := newLockRepo(t)
		l := takeLock(t, r, exclusive)
		if err := l.Check(ctx); err != nil {
			t.Fatalf("Check: %v", err)
		}
		if err := l.Err(); err != nil {
			t.Fatalf("Err: %v", err)
		}
		// Someone (bunker unlock, a prune that judged it stale) removes it.
		h := backend.Handle{Type: backend.LockFile, Name: l.ID().String()}
		data, err := backend.LoadAll(ctx, be, h)
		if err != nil {
			t.Fatal(err)
		}
		if err := be.Remove(ctx, h); err != nil {
			t.Fatal(err)
		}
		// Prune asks for the storage's time through its own lock; that
		// finds the loss too (it used to fail as a storage error, exit 1).
		if _, err := l.StorageTime(ctx); !errors.Is(err, repository.ErrLockLost) {
			t.Errorf("exclusive %v: StorageTime after removal = %v, want ErrLockLost", exclusive, err)
		}
		if err := l.Check(ctx); !errors.Is(err, repository.ErrLockLost) {
			t.Errorf("exclusive %v: Check after removal = %v, want ErrLockLost", exclusive, err)
		}
		if err := l.Err(); !errors.Is(err, repository.ErrLockLost) {
			t.Errorf("exclusive %v: Err after removal = %v, want ErrLockLost", exclusive, err)
		}
		// Once lost, it stays lost, even if a file of that name came back.
		if err := be.Save(ctx, h, data); err != nil {
			t.Fatal(err)
		}
		if err := l.Check(ctx); !errors.Is(err, repository.ErrLockLost) {
			t.Errorf("exclusive %v: second Check = %v, want ErrLockLost", exclusive, err)
		}
	}
}

// TestLockLossFoundByRefresh: the background refresh notices the removal
// without anyone calling Check, and stops refreshing.
func TestLockLossFoundByRefresh(t *testing.T) {
	setLockTiming(t, 10*time.Millisecond, time.Minute)
	ctx := context.Background()
	be, r := newLockRepo(t)
	l := takeLock(t, r, true)
	if err := r.RemoveLock(ctx, l.ID()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the refresh to find the lock lost", func() bool { return l.Err() != nil })
	if !errors.Is(l.Err(), repository.ErrLockLost) {
		t.Fatalf("Err = %v, want ErrLockLost", l.Err())
	}
	time.Sleep(50 * time.Millisecond) // several refresh periods
	if n := len(lockFiles(t, be)); n != 0 {
		t.Errorf("a lost lock was written again: %d lock files", n)
	}
	if err := l.Check(ctx); !errors.Is(err, repository.ErrLockLost) {
		t.Errorf("Check = %v, want ErrLockLost", err)
	}
}

// TestLockLostByTime: a holder that could not refresh its lock for
// LockStale/2 (it was stopped, the storage was unreachable) stops trusting
// it, before others may treat it as stale after LockStale.
func TestLockLostByTime(t *testing.T) {
	const stale = 600 * time.Millisecond
	setLockTiming(t, time.Hour, stale) // no refresh happens
	ctx := context.Background()
	be, r := newLockRepo(t)
	start := time.Now()
	l := takeLock(t, r, true)
	if err := l.Check(ctx); err != nil {
		t.Fatalf("Check of a fresh lock: %v", err)
	}
	time.Sleep(stale/2 + 50*time.Millisecond - time.Since(start))
	err := l.Check(ctx)
	if !errors.Is(err, repository.ErrLockLost) {
		t.Fatalf("Check after LockStale/2 without refresh = %v, want ErrLockLost", err)
	}
	if !errors.Is(l.Err(), repository.ErrLockLost) {
		t.Errorf("Err = %v, want ErrLockLost", l.Err())
	}
	// The file is still there and, to others, not yet stale.
	if !lockFileExists(t, be, l.ID()) {
		t.Error("lock file removed")
	}
	if time.Since(start) < stale-100*time.Millisecond {
		if _, err := r.Lock(ctx, true); !errors.Is(err, repository.ErrLocked) {
			t.Errorf("another exclusive lock before LockStale: %v, want ErrLocked", err)
		}
	}
	// After LockStale, others may take the repository.
	time.Sleep(stale + 50*time.Millisecond - time.Since(start))
	l2 := takeLock(t, r, true)
	if err := l2.Check(ctx); err != nil {
		t.Errorf("Check of the lock taken over the stale one: %v", err)
	}
	if err := l.Check(ctx); !errors.Is(err, repository.ErrLockLost) {
		t.Errorf("Check of the stale lock = %v, want ErrLockLost", err)
	}
}

// TestLockRefresh: with a short LockRefresh the lock file is replaced by a
// fresh one and the old one removed, and Check keeps passing well past
// LockStale/2.
func TestLockRefresh(t *testing.T) {
	const stale = 400 * time.Millisecond
	setLockTiming(t, 20*time.Millisecond, stale)
	ctx := context.Background()
	be, r := newLockRepo(t)
	l := takeLock(t, r, false)
	first := l.ID()
	waitFor(t, "a refresh", func() bool { return l.ID() != first })
	waitFor(t, "the old lock file to be removed", func() bool { return !lockFileExists(t, be, first) })
	end := time.Now().Add(stale)
	for time.Now().Before(end) {
		if err := l.Check(ctx); err != nil {
			t.Fatalf("Check of a refreshed lock: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := l.Err(); err != nil {
		t.Fatalf("Err: %v", err)
	}
	// The current lock file is stored. A refresh (every 20 ms here) stores
	// the next file, switches the ID, then removes the old file: an ID that
	// is the same before and after the check was current throughout it.
	// (Checking without that failed once in CI under load.)
	for i := 0; ; i++ {
		id := l.ID()
		stored := lockFileExists(t, be, id)
		if l.ID() != id && i < 50 {
			continue // refreshed meanwhile: check the new one
		}
		if !stored {
			t.Fatal("the current lock file is not stored")
		}
		break
	}
	// Refreshed: others see it live (an exclusive lock is refused) and
	// Locks lists it as not stale.
	if _, err := r.Lock(ctx, true); !errors.Is(err, repository.ErrLocked) {
		t.Errorf("exclusive lock beside a refreshed shared one: %v, want ErrLocked", err)
	}
	locks, err := r.Locks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	live := 0
	for _, e := range locks {
		if e.Err == nil && !e.Stale {
			live++
		}
	}
	if live < 1 || len(locks) > 2 { // at most the current file and one being replaced
		t.Errorf("Locks: %+v", locks)
	}
}

func TestLocksListAndRemove(t *testing.T) {
	ctx := context.Background()
	be, r := newLockRepo(t)
	host, _ := os.Hostname()
	l := takeLock(t, r, true)
	old := time.Now().UTC().Add(-repository.LockStale - time.Hour)
	stale := writeLockFile(t, r, repository.LockInfo{Time: old, Created: old, Hostname: "elsewhere.invalid", PID: 42})
	garbage, err := r.SaveUnpacked(ctx, backend.LockFile, []byte("not json"))
	if err != nil {
		t.Fatal(err)
	}

	locks, err := r.Locks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[repo.ID]repository.LockEntry{}
	for _, e := range locks {
		byID[e.ID] = e
	}
	if len(locks) != 3 || len(byID) != 3 {
		t.Fatalf("Locks listed %d entries, want 3", len(locks))
	}
	if e := byID[l.ID()]; e.Err != nil || e.Stale || !e.Info.Exclusive || e.Info.PID != os.Getpid() || e.Info.Hostname != host || time.Since(e.Info.Time) > time.Minute {
		t.Errorf("own lock: %+v", e)
	}
	if e := byID[stale]; e.Err != nil || !e.Stale || e.Info.Exclusive || e.Info.PID != 42 || e.Info.Hostname != "elsewhere.invalid" {
		t.Errorf("stale lock: %+v", e)
	}
	if e := byID[garbage]; e.Err == nil {
		t.Errorf("unreadable lock file listed without an error: %+v", e)
	}

	for _, id := range []repo.ID{stale, garbage} {
		if err := r.RemoveLock(ctx, id); err != nil {
			t.Fatalf("RemoveLock: %v", err)
		}
	}
	if err := r.RemoveLock(ctx, stale); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("RemoveLock of a removed lock = %v, want ErrNotExist", err)
	}
	locks, err = r.Locks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(locks) != 1 || locks[0].ID != l.ID() {
		t.Fatalf("after removing two locks: %+v, want only the held one", locks)
	}
	if err := l.Check(ctx); err != nil {
		t.Fatalf("Check: %v", err)
	}
	// Removing the held lock (bunker unlock --remove-all) takes it away.
	if err := r.RemoveLock(ctx, l.ID()); err != nil {
		t.Fatal(err)
	}
	if err := l.Check(ctx); !errors.Is(err, repository.ErrLockLost) {
		t.Errorf("Check after RemoveLock = %v, want ErrLockLost", err)
	}
	if n := len(lockFiles(t, be)); n != 0 {
		t.Errorf("%d lock files left", n)
	}
}

// TestLockRace: a conflicting lock appears between our write and our second
// look. We withdraw and try again after a pause: if the racer stayed, we fail
// with ErrLocked and leave only its file; if the racer withdrew too, our
// retry takes the lock.
func TestLockRace(t *testing.T) {
	for _, racerStays := range []bool{true, false} {
		t.Run(fmt.Sprintf("racer stays %v", racerStays), func(t *testing.T) {
			ctx := context.Background()
			inner, other := newLockRepo(t)
			fb := fault.New(inner)
			r, err := repository.Open(ctx, fb, []byte("pw"), repository.Options{KDF: crypto.TestKDF})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			lists := 0
			var racer repo.ID
			fb.SetRules(fault.Rules{BeforeList: func(ft backend.FileType) error {
				if ft != backend.LockFile {
					return nil
				}
				lists++
				switch {
				case lists == 2: // after our write, before our second look
					now := time.Now().UTC()
					racer = writeLockFile(t, other, repository.LockInfo{Time: now, Created: now, Exclusive: true,
						Hostname: "elsewhere.invalid", PID: 1})
				case lists == 3 && !racerStays: // the racer saw us and withdrew
					if err := other.RemoveLock(ctx, racer); err != nil {
						t.Error(err)
					}
				}
				return nil
			}})
			l, err := r.Lock(ctx, true)
			if racer.IsNull() {
				t.Fatal("the racer's lock was not written")
			}
			files := lockFiles(t, inner)
			if racerStays {
				if !errors.Is(err, repository.ErrLocked) {
					t.Fatalf("Lock = %v, want ErrLocked", err)
				}
				if len(files) != 1 || !files[racer.String()] {
					t.Errorf("lock files %v, want only the racer's", files)
				}
				return
			}
			if err != nil {
				t.Fatalf("Lock = %v, want it granted on the retry", err)
			}
			defer l.Unlock(ctx)
			if len(files) != 1 || !files[l.ID().String()] {
				t.Errorf("lock files %v, want only ours", files)
			}
			if _, err := other.Lock(ctx, true); !errors.Is(err, repository.ErrLocked) {
				t.Errorf("a second exclusive lock: %v, want ErrLocked", err)
			}
		})
	}
}

func ownBootID(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Skip("no /proc/sys/kernel/random/boot_id")
	}
	return strings.TrimSpace(string(b))
}

func ownPIDNamespace(t *testing.T) string {
	t.Helper()
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		t.Skip("no /proc/self/ns/pid")
	}
	return ns
}

// TestDamagedLock: a lock file that does not decode names no holder and, its
// storage time being another clock, no age: it keeps others out (ErrLocked,
// naming it) until removed, and is listed with its error, never as stale.
func TestDamagedLock(t *testing.T) {
	ctx := context.Background()
	_, r := newLockRepo(t)
	bad, err := r.SaveUnpacked(ctx, backend.LockFile, []byte("not json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, exclusive := range []bool{false, true} {
		if _, err := r.Lock(ctx, exclusive); !errors.Is(err, repository.ErrLocked) || !strings.Contains(err.Error(), bad.Short()) {
			t.Fatalf("Lock(exclusive=%v) with a damaged lock = %v, want ErrLocked naming %s", exclusive, err, bad.Short())
		}
	}
	locks, err := r.Locks(ctx)
	if err != nil || len(locks) != 1 || !errors.Is(locks[0].Err, repository.ErrCorrupt) || locks[0].Stale {
		t.Fatalf("Locks with a damaged lock: %+v, %v", locks, err)
	}
	if err := r.RemoveLock(ctx, bad); err != nil {
		t.Fatal(err)
	}
	takeLock(t, r, true)
}
