package agent

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"bunker/internal/agent/agenttest"
)

func quietAgent(t *testing.T) *Agent {
	return &Agent{opts: Options{StateDir: t.TempDir()}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// A real filesystem (ext4 on a loop device) frozen for a job blocks
// writes; an agent that died holding it thaws it from the journal when it
// starts again. What must not be frozen is refused.
func TestFSFreezeAndRecovery(t *testing.T) {
	agenttest.NeedTools(t, "fsfreeze on a real filesystem", "losetup", "mkfs.ext4", "mount", "umount")
	mnt := agenttest.LoopFS(t, "ext4", 64<<20)

	a := quietAgent(t)
	j := &jobState{id: "20261205T100000-0123abcd", snaps: map[string]*fsSnapshot{}}
	if err := a.freezeMounts(j, []string{mnt}); err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() { wrote <- os.WriteFile(filepath.Join(mnt, "f"), []byte("x"), 0o600) }()
	select {
	case err := <-wrote:
		t.Fatalf("a write went through a frozen filesystem (%v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := freezeFS(mnt); err == nil || !strings.Contains(err.Error(), "already frozen") {
		t.Errorf("freezing twice: %v", err)
	}
	// The periodic retry leaves alone the journal of a job still running.
	a.jobs = map[string]*jobState{j.id: j}
	a.recoverJournals(context.Background())
	select {
	case err := <-wrote:
		t.Fatalf("the retry released a running job's freeze (%v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	// The agent dies here; another starts with the same state directory.
	b := &Agent{opts: a.opts, log: a.log}
	b.recoverJournals(context.Background())
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the restarted agent did not thaw the filesystem")
	}
	if left, _ := filepath.Glob(filepath.Join(a.opts.StateDir, "*"+journalSuffix)); len(left) != 0 {
		t.Errorf("journal left: %v", left)
	}

	if err := checkFreezable(filepath.Join(mnt, "lost+found"), a.opts.StateDir); err == nil || !strings.Contains(err.Error(), "not a mount point") {
		t.Errorf("a plain directory: %v", err)
	}
	if err := checkFreezable(mnt, mnt); err == nil || !strings.Contains(err.Error(), "state directory") {
		t.Errorf("the state directory's filesystem: %v", err)
	}
}

// A provider whose tool or service is missing says which, and what to do.
func TestProvidersMissing(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	a := quietAgent(t)
	ctx := context.Background()
	for _, tc := range []struct {
		s    Snapshot
		want string
	}{
		{Snapshot{Type: SnapshotLVM, Source: "vg0/data", MountPoint: "/srv"}, "lvm snapshot: lvcreate not found (install lvm2)"},
		{Snapshot{Type: SnapshotZFS, Source: "tank/data", MountPoint: "/srv"}, "zfs snapshot: zfs not found (install zfsutils-linux)"},
		{Snapshot{Type: SnapshotBtrfs, Source: t.TempDir()}, "btrfs snapshot: btrfs not found (install btrfs-progs)"},
	} {
		j := &jobState{id: "20261205T100000-0123abcd", snaps: map[string]*fsSnapshot{}}
		if _, err := a.takeSnapshot(ctx, j, "p", &tc.s); err == nil || err.Error() != tc.want {
			t.Errorf("%s: %v, want %q", tc.s.Type, err, tc.want)
		}
		// What was recorded is dropped without complaint where nothing was
		// made and nothing is needed to see that (zfs needs its tool to
		// know: that snapshot stays in the journal).
		errs := a.dropSnapshots(ctx, j)
		if (len(errs) == 0) != (tc.s.Type != SnapshotZFS) {
			t.Errorf("%s: drop: %v", tc.s.Type, errs)
		}
		if left, _ := filepath.Glob(filepath.Join(a.opts.StateDir, "*"+journalSuffix)); (len(left) == 0) != (tc.s.Type != SnapshotZFS) {
			t.Errorf("%s: journals %v", tc.s.Type, left)
		}
		os.Remove(filepath.Join(a.opts.StateDir, j.id+journalSuffix))
	}
	j := &jobState{id: "20261205T100000-0123abcd"}
	err := a.pauseContainers(ctx, j, &Docker{Socket: filepath.Join(t.TempDir(), "docker.sock"), Containers: []string{"app"}})
	if err == nil || !strings.Contains(err.Error(), "cannot reach the Docker API at") {
		t.Errorf("docker without a daemon: %v", err)
	}
}
