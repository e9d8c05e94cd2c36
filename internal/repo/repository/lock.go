package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"bunker/internal/backend"
	"bunker/internal/repo"
)

// ErrLocked is returned when a lock conflicts with one another process holds.
var ErrLocked = errors.New("repository is locked")

// Lock timing: a lock is refreshed every LockRefresh and counts as stale when
// it was not refreshed for LockStale.
const (
	LockRefresh = 5 * time.Minute
	LockStale   = 30 * time.Minute
)

// LockInfo is the stored content of a lock file.
type LockInfo struct {
	Time      time.Time `json:"time"`
	Exclusive bool      `json:"exclusive"`
	Hostname  string    `json:"hostname"`
	Username  string    `json:"username,omitempty"`
	PID       int       `json:"pid"`
}

// Stale reports whether the lock's holder is gone: not refreshed for
// LockStale, or held by a process of this host that no longer exists.
func (l LockInfo) Stale(now time.Time) bool {
	if now.Sub(l.Time) > LockStale {
		return true
	}
	if h, _ := os.Hostname(); h == l.Hostname && l.PID > 0 {
		if err := syscall.Kill(l.PID, 0); errors.Is(err, syscall.ESRCH) {
			return true
		}
	}
	return false
}

// Lock is a held repository lock; it refreshes itself until Unlock.
type Lock struct {
	r      *Repository
	info   LockInfo
	mu     sync.Mutex
	id     repo.ID
	stop   chan struct{}
	done   chan struct{}
	failed error
}

// Lock takes a shared (exclusive=false) or exclusive lock. Stale locks do not
// block; an exclusive lock conflicts with every other live lock, and any lock
// conflicts with a live exclusive one.
func (r *Repository) Lock(ctx context.Context, exclusive bool) (*Lock, error) {
	host, _ := os.Hostname()
	info := LockInfo{Time: time.Now().UTC(), Exclusive: exclusive, Hostname: host, PID: os.Getpid()}
	if err := r.checkLocks(ctx, exclusive, repo.ID{}); err != nil {
		return nil, err
	}
	l := &Lock{r: r, info: info, stop: make(chan struct{}), done: make(chan struct{})}
	if err := l.write(ctx); err != nil {
		return nil, err
	}
	// Check again after writing: of two processes racing, at least one sees the other.
	if err := r.checkLocks(ctx, exclusive, l.id); err != nil {
		_ = r.be.Remove(context.WithoutCancel(ctx), backend.Handle{Type: backend.LockFile, Name: l.id.String()})
		return nil, err
	}
	go l.refresh(context.WithoutCancel(ctx))
	return l, nil
}

func (l *Lock) write(ctx context.Context) error {
	b, _ := json.Marshal(l.info)
	id, err := l.r.SaveUnpacked(ctx, backend.LockFile, b)
	if err != nil {
		return fmt.Errorf("write lock: %w", err)
	}
	l.mu.Lock()
	l.id = id
	l.mu.Unlock()
	return nil
}

func (l *Lock) refresh(ctx context.Context) {
	defer close(l.done)
	t := time.NewTicker(LockRefresh)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.mu.Lock()
			old := l.id
			l.mu.Unlock()
			l.info.Time = time.Now().UTC()
			if err := l.write(ctx); err != nil {
				l.mu.Lock()
				l.failed = err
				l.mu.Unlock()
				continue
			}
			_ = l.r.be.Remove(ctx, backend.Handle{Type: backend.LockFile, Name: old.String()})
		}
	}
}

// Err reports whether refreshing the lock failed; a holder must not commit
// (write a snapshot or delete anything) after that.
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
	return l.r.be.Remove(context.WithoutCancel(ctx), backend.Handle{Type: backend.LockFile, Name: id.String()})
}

func (r *Repository) checkLocks(ctx context.Context, exclusive bool, own repo.ID) error {
	ids, err := r.List(ctx, backend.LockFile)
	if err != nil {
		return fmt.Errorf("list locks: %w", err)
	}
	now := time.Now()
	for _, id := range ids {
		if id == own {
			continue
		}
		plain, err := r.LoadUnpacked(ctx, backend.LockFile, id)
		if errors.Is(err, backend.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return fmt.Errorf("read lock %s: %w", id.Short(), err)
		}
		var li LockInfo
		if err := json.Unmarshal(plain, &li); err != nil {
			return fmt.Errorf("lock %s: %w", id.Short(), ErrCorrupt)
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
