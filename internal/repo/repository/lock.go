package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"bunker/internal/backend"
	"bunker/internal/repo"
	"bunker/internal/repo/crypto"
)

// ErrLocked is returned when a lock conflicts with one another process holds.
var ErrLocked = errors.New("repository is locked")

// ErrLockLost is returned by a lock holder that can no longer prove it holds
// its lock: the lock file was removed, or it was not refreshed in time (the
// process was stopped, the storage was unreachable), so that another process
// may have treated it as stale. The holder must not commit anything.
var ErrLockLost = errors.New("lost the repository lock")

// Lock timing: a lock is refreshed every LockRefresh and counts as stale for
// others when it was not refreshed for LockStale. Its holder stops trusting
// it earlier, after LockStale/2 without a refresh. They are variables only so
// that tests can shorten them.
var (
	LockRefresh = 5 * time.Minute
	LockStale   = 30 * time.Minute
)

// LockInfo is the stored content of a lock file.
type LockInfo struct {
	Time time.Time `json:"time"`
	// Created is when the holder first took the lock; refreshes keep it.
	Created   time.Time `json:"created"`
	Exclusive bool      `json:"exclusive"`
	Hostname  string    `json:"hostname"`
	Username  string    `json:"username,omitempty"`
	PID       int       `json:"pid"`
	// PIDNamespace identifies the holder's PID namespace: containers that
	// share a hostname have PIDs of their own, so a PID is checked only
	// from the same namespace.
	PIDNamespace string `json:"pid_ns,omitempty"`
	// BootID identifies the holder's running kernel: the initial PID
	// namespace has the same number on every host, so hosts that share a
	// hostname (cloned machines) are told apart by it.
	BootID string `json:"boot_id,omitempty"`
}

// pidNamespace is this process's PID namespace ("pid:[4026531836]"), or ""
// where it cannot be read.
var pidNamespace = func() string {
	ns, _ := os.Readlink("/proc/self/ns/pid")
	return ns
}()

// bootID is the running kernel's random boot ID, or "" where it cannot be
// read.
var bootID = func() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}()

// Stale reports whether the lock's holder is gone: not refreshed for
// LockStale, or held by a process of this host (same hostname, boot and
// PID namespace) that no longer exists.
func (l LockInfo) Stale(now time.Time) bool {
	if now.Sub(l.Time) > LockStale {
		return true
	}
	if h, _ := os.Hostname(); h == l.Hostname && l.PID > 0 && l.PIDNamespace != "" && l.PIDNamespace == pidNamespace &&
		l.BootID != "" && l.BootID == bootID {
		if err := syscall.Kill(l.PID, 0); errors.Is(err, syscall.ESRCH) {
			return true
		}
	}
	return false
}

// Lock is a held repository lock; it refreshes itself until Unlock.
type Lock struct {
	r    *Repository
	info LockInfo
	// fileMu is held while the lock file is rewritten (write the new one,
	// remove the old one) and while it is verified, so that a check never
	// looks for a file a refresh has just replaced.
	fileMu sync.Mutex
	mu     sync.Mutex
	id     repo.ID
	// lastOK is when the current lock file was written, by the monotonic
	// clock and by the wall clock: the monotonic clock stops while the
	// machine is suspended, the wall clock does not.
	lastOK, lastOKWall time.Time
	stop               chan struct{}
	done               chan struct{}
	failed             error
}

// Lock takes a shared (exclusive=false) or exclusive lock. Stale locks do not
// block; an exclusive lock conflicts with every other live lock, and any lock
// conflicts with a live exclusive one.
func (r *Repository) Lock(ctx context.Context, exclusive bool) (*Lock, error) {
	host, _ := os.Hostname()
	created := time.Now().UTC()
	for attempt := 1; ; attempt++ {
		if err := r.checkLocks(ctx, exclusive, repo.ID{}); err != nil {
			return nil, err
		}
		l := &Lock{r: r, info: LockInfo{Created: created, Exclusive: exclusive, Hostname: host, PID: os.Getpid(), PIDNamespace: pidNamespace, BootID: bootID},
			stop: make(chan struct{}), done: make(chan struct{})}
		if err := l.write(ctx); err != nil {
			return nil, err
		}
		// Check again after writing. Of two processes that wrote
		// conflicting locks at the same moment, at least one sees the
		// other; whoever sees a conflict withdraws and tries again after a
		// random pause, so that one of them wins and the other then finds
		// the winner's lock and fails.
		err := r.checkLocks(ctx, exclusive, l.id)
		if err == nil {
			go l.refresh(context.WithoutCancel(ctx))
			return l, nil
		}
		_ = r.be.Remove(context.WithoutCancel(ctx), backend.Handle{Type: backend.LockFile, Name: l.id.String()})
		if !errors.Is(err, ErrLocked) || attempt == lockAttempts {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(attempt) * (50*time.Millisecond + rand.N(250*time.Millisecond))):
		}
	}
}

// lockAttempts bounds the withdraw-and-retry rounds of Lock.
const lockAttempts = 5

func (l *Lock) write(ctx context.Context) error {
	start := time.Now()
	l.info.Time = start.UTC()
	b, _ := json.Marshal(l.info)
	id, err := l.r.SaveUnpacked(ctx, backend.LockFile, b)
	if err != nil {
		if errors.Is(err, ErrUploadLost) {
			// Stored, then gone before it could be confirmed: removed by
			// someone else (or lost by the storage). Either way it is not ours.
			return fmt.Errorf("%w: lock file %s was removed by someone else as it was written", ErrLockLost, id.Short())
		}
		if !id.IsNull() {
			// It may be stored even so (the confirmation failed): do not
			// leave a live-looking lock behind.
			_ = l.r.be.Remove(context.WithoutCancel(ctx), backend.Handle{Type: backend.LockFile, Name: id.String()})
		}
		return fmt.Errorf("write lock: %w", err)
	}
	l.mu.Lock()
	l.id, l.lastOK, l.lastOKWall = id, start, start.Round(0)
	l.mu.Unlock()
	return nil
}

func (l *Lock) fail(err error) {
	l.mu.Lock()
	if l.failed == nil {
		l.failed = err
	}
	l.mu.Unlock()
}

// refresh rewrites the lock file every LockRefresh. Before each rewrite it
// makes sure the lock is still its own: present, and refreshed recently
// enough that nobody could have judged it stale. Once lost, a lock stays lost.
func (l *Lock) refresh(ctx context.Context) {
	defer close(l.done)
	t := time.NewTicker(LockRefresh)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			if err := l.verify(ctx); err != nil {
				if errors.Is(err, ErrLockLost) {
					l.fail(err)
					return
				}
				continue // storage trouble: try again at the next tick
			}
			l.fileMu.Lock()
			l.mu.Lock()
			old := l.id
			l.mu.Unlock()
			if err := l.write(ctx); err == nil {
				_ = l.r.be.Remove(ctx, backend.Handle{Type: backend.LockFile, Name: old.String()})
			} // else verify at the next tick says whether it is lost
			l.fileMu.Unlock()
		}
	}
}

// verify checks that the lock file is present and was refreshed less than
// LockStale/2 ago.
func (l *Lock) verify(ctx context.Context) error {
	l.fileMu.Lock()
	defer l.fileMu.Unlock()
	l.mu.Lock()
	id, last, lastWall, failed := l.id, l.lastOK, l.lastOKWall, l.failed
	l.mu.Unlock()
	if failed != nil {
		return failed
	}
	age := max(time.Since(last), time.Now().Round(0).Sub(lastWall))
	if age > LockStale/2 {
		return fmt.Errorf("%w: not refreshed for %s (the process was stopped or the storage unreachable), so others may treat it as stale",
			ErrLockLost, age.Round(time.Second))
	}
	_, err := l.r.be.Stat(ctx, backend.Handle{Type: backend.LockFile, Name: id.String()})
	if errors.Is(err, backend.ErrNotExist) {
		return fmt.Errorf("%w: lock file %s was removed by someone else", ErrLockLost, id.Short())
	}
	if err != nil {
		return fmt.Errorf("check lock: %w", err)
	}
	return nil
}

// Check is called right before each commit (a snapshot, an index that
// supersedes others, a deletion): it returns an error wrapping ErrLockLost
// when the lock can no longer be trusted, and the holder must then stop.
func (l *Lock) Check(ctx context.Context) error {
	err := l.verify(ctx)
	if errors.Is(err, ErrLockLost) {
		l.fail(err)
	}
	return err
}

// Err reports whether the lock was found lost by the background refresh.
func (l *Lock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failed
}

// Unlock stops refreshing and removes the lock file.
func (l *Lock) Unlock(ctx context.Context) error {
	close(l.stop)
	<-l.done
	l.mu.Lock()
	id := l.id
	l.mu.Unlock()
	err := l.r.be.Remove(context.WithoutCancel(ctx), backend.Handle{Type: backend.LockFile, Name: id.String()})
	if errors.Is(err, backend.ErrNotExist) {
		return nil // removed by someone else; Check already said so
	}
	return err
}

// LockEntry describes one stored lock, for `bunker unlock` and listings.
type LockEntry struct {
	ID    repo.ID
	Info  LockInfo
	Stale bool
	Err   error // the lock file could not be read
}

// Locks lists the stored locks.
func (r *Repository) Locks(ctx context.Context) ([]LockEntry, error) {
	ids, err := r.List(ctx, backend.LockFile)
	if err != nil {
		return nil, fmt.Errorf("list locks: %w", err)
	}
	now := time.Now()
	var out []LockEntry
	for _, id := range ids {
		e := LockEntry{ID: id}
		var err error
		e.Info, err = r.readLock(ctx, id)
		if errors.Is(err, backend.ErrNotExist) {
			continue
		}
		if err != nil {
			e.Err = err
		} else {
			e.Stale = e.Info.Stale(now)
		}
		out = append(out, e)
	}
	return out, nil
}

// RemoveLock deletes one lock file.
func (r *Repository) RemoveLock(ctx context.Context, id repo.ID) error {
	return r.be.Remove(ctx, backend.Handle{Type: backend.LockFile, Name: id.String()})
}

// checkLocks fails with ErrLocked if a live lock other than own conflicts
// with a lock of the given kind.
func (r *Repository) checkLocks(ctx context.Context, exclusive bool, own repo.ID) error {
	for attempt := 1; ; attempt++ {
		err := r.checkLocksOnce(ctx, exclusive, own)
		// A lock that vanished between the listing and the read was
		// replaced by its holder's refresh: list again to see the new file.
		if !errors.Is(err, errLockVanished) || attempt == 3 {
			if errors.Is(err, errLockVanished) {
				return fmt.Errorf("%w: lock files keep changing; try again", ErrLocked)
			}
			return err
		}
	}
}

var errLockVanished = errors.New("a listed lock file vanished")

func (r *Repository) checkLocksOnce(ctx context.Context, exclusive bool, own repo.ID) error {
	ids, err := r.List(ctx, backend.LockFile)
	if err != nil {
		return fmt.Errorf("list locks: %w", err)
	}
	now := time.Now()
	for _, id := range ids {
		if id == own {
			continue
		}
		li, err := r.readLock(ctx, id)
		if errors.Is(err, backend.ErrNotExist) {
			return errLockVanished
		}
		if errors.Is(err, ErrCorrupt) {
			// Nobody can tell whose it is, nor (without trusting the
			// storage's clock) how old: it holds until removed by hand.
			return fmt.Errorf("%w: lock %s is damaged (it does not decode): once no bunker process uses the repository, remove it with `bunker unlock --remove-all`",
				ErrLocked, id.Short())
		}
		if err != nil {
			return err
		}
		if li.Stale(now) {
			continue
		}
		if exclusive || li.Exclusive {
			kind := "a shared"
			if li.Exclusive {
				kind = "an exclusive"
			}
			return fmt.Errorf("%w: %s lock is held by PID %d on %s since %s (lock %s)", ErrLocked, kind, li.PID, li.Hostname,
				li.Time.Local().Format(time.DateTime), id.Short())
		}
	}
	return nil
}

// ErrAppendOnly: the storage credential may add data but not delete it.
var ErrAppendOnly = errors.New("this credential may not delete from the repository (append-only)")

// CheckCanDelete asks the storage to delete a snapshot that does not exist:
// a refusal means the credential is append-only, and a command that would
// delete must stop before it writes anything. (Snapshots, not locks: an
// append-only credential may be allowed to delete lock files.)
func (r *Repository) CheckCanDelete(ctx context.Context) error {
	var probe repo.ID
	crypto.Random(probe[:])
	h := backend.Handle{Type: backend.SnapshotFile, Name: probe.String()}
	var err error
	if p, ok := backend.As[backend.DeleteProber](r.be); ok {
		err = p.ProbeDelete(ctx, h)
	} else {
		err = r.be.Remove(ctx, h)
	}
	switch {
	case err == nil, errors.Is(err, backend.ErrNotExist):
		return nil
	case errors.Is(err, backend.ErrPermission):
		return fmt.Errorf("%w: %w", ErrAppendOnly, err)
	}
	return fmt.Errorf("check delete permission: %w", err)
}

// readLock loads and decodes one lock file.
func (r *Repository) readLock(ctx context.Context, id repo.ID) (LockInfo, error) {
	var li LockInfo
	plain, err := r.LoadUnpacked(ctx, backend.LockFile, id)
	if err != nil {
		return li, fmt.Errorf("read lock %s: %w", id.Short(), err)
	}
	if err := json.Unmarshal(plain, &li); err != nil {
		return li, fmt.Errorf("lock %s: %w", id.Short(), ErrCorrupt)
	}
	return li, nil
}
