package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Providers hold a node still across the freeze and capture what it
// uploads afterwards:
//
//   - docker: pauses containers through the Docker Engine API (its unix
//     socket; the agent needs access to it, as root or in the docker group);
//   - fsfreeze: freezes mounted filesystems (FIFREEZE; root);
//   - snapshot: a btrfs, LVM or ZFS snapshot taken while frozen, which the
//     upload reads instead of the live files (root; btrfs-progs, lvm2 or
//     zfsutils-linux).
//
// What a job holds (paused containers, frozen filesystems, snapshots) is
// written to a journal in the state directory before each step, so that an
// agent killed while holding them releases them when it starts again.

// held is what one job holds on this node; it is the journal's content.
type held struct {
	Containers []heldContainer `json:"containers,omitempty"`
	Frozen     []string        `json:"frozen,omitempty"`
	Snapshots  []fsSnapshot    `json:"snapshots,omitempty"`
	// Watchdog is the PID of the process that releases the freeze at the
	// deadline should the agent die (see WatchdogCommand).
	Watchdog int `json:"watchdog,omitempty"`
}

type heldContainer struct {
	Socket string `json:"socket"`
	ID     string `json:"id"`
	Name   string `json:"name"`
}

// journalSuffix names the journal files: <state dir>/<job>.held.
const journalSuffix = ".held"

// writeJournal records h for job (atomically and durably), or removes the
// journal when h holds nothing.
func writeJournal(stateDir, job string, h *held) error {
	path := filepath.Join(stateDir, job+journalSuffix)
	if len(h.Containers) == 0 && len(h.Frozen) == 0 && len(h.Snapshots) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(stateDir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// record changes what a job holds and writes the journal, under holdMu.
func (a *Agent) record(j *jobState, change func(h *held)) error {
	j.holdMu.Lock()
	defer j.holdMu.Unlock()
	change(&j.held)
	if err := writeJournal(a.opts.StateDir, j.id, &j.held); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	return nil
}

// JournalRetry is how often the agent tries again to release what a
// journal still lists (a Docker daemon not up yet at boot, a snapshot busy).
var JournalRetry = time.Minute

// recoverJournals releases what jobs no longer running still hold (an
// earlier run of the agent killed, or a release that failed): it thaws,
// unpauses and removes snapshots; what fails stays in the journal for the
// next try.
func (a *Agent) recoverJournals(ctx context.Context) {
	files, _ := filepath.Glob(filepath.Join(a.opts.StateDir, "*"+journalSuffix))
	for _, f := range files {
		a.mu.Lock()
		_, running := a.jobs[strings.TrimSuffix(filepath.Base(f), journalSuffix)]
		a.mu.Unlock()
		if running {
			continue // its job releases it
		}
		data, err := os.ReadFile(f)
		var h held
		if err == nil {
			err = json.Unmarshal(data, &h)
		}
		if err != nil {
			a.log.Error("unreadable journal of an earlier run", "file", f, "err", err)
			continue
		}
		job := strings.TrimSuffix(filepath.Base(f), journalSuffix)
		a.log.Warn("releasing what an earlier run of the agent held", "job", job, "frozen", h.Frozen, "containers", len(h.Containers), "snapshots", len(h.Snapshots))
		stopWatchdog(h.Watchdog, true)
		h.Watchdog = 0
		errs := a.release(ctx, &h, false)
		errs = append(errs, a.removeSnapshots(ctx, &h)...)
		for _, err := range errs {
			a.log.Error("release", "job", job, "err", err)
		}
		if err := writeJournal(a.opts.StateDir, job, &h); err != nil {
			a.log.Error("journal", "job", job, "err", err)
		}
	}
}

// releaseHolds thaws a job's frozen filesystems and (unless frozenOnly)
// unpauses its containers; what fails stays held, in the journal.
func (a *Agent) releaseHolds(ctx context.Context, j *jobState, frozenOnly bool) []error {
	j.holdMu.Lock()
	defer j.holdMu.Unlock()
	if !frozenOnly {
		// The agent releases: its watchdog must not release a later
		// job's freeze.
		stopWatchdog(j.held.Watchdog, false)
		j.held.Watchdog = 0
	}
	errs := a.release(ctx, &j.held, frozenOnly)
	if err := writeJournal(a.opts.StateDir, j.id, &j.held); err != nil {
		errs = append(errs, fmt.Errorf("journal: %w", err))
	}
	return errs
}

// release thaws the frozen filesystems and unpauses the containers of h
// (in the reverse order of their freeze), keeping in h those that failed.
func (a *Agent) release(ctx context.Context, h *held, frozenOnly bool) []error {
	var errs []error
	var frozen []string
	for i := len(h.Frozen) - 1; i >= 0; i-- {
		if err := thawFS(h.Frozen[i]); err != nil {
			errs = append(errs, err)
			frozen = append([]string{h.Frozen[i]}, frozen...)
		} else {
			a.log.Info("filesystem thawed", "mount", h.Frozen[i])
		}
	}
	h.Frozen = frozen
	if frozenOnly {
		return errs
	}
	var paused []heldContainer
	for i := len(h.Containers) - 1; i >= 0; i-- {
		c := h.Containers[i]
		if err := newDockerClient(c.Socket).unpause(ctx, c.ID); err != nil {
			errs = append(errs, fmt.Errorf("docker: unpause %s: %w", c.Name, err))
			paused = append([]heldContainer{c}, paused...)
		} else {
			a.log.Info("container unpaused", "container", c.Name)
		}
	}
	h.Containers = paused
	return errs
}

// dropSnapshots removes a job's snapshots; what fails stays in the journal.
func (a *Agent) dropSnapshots(ctx context.Context, j *jobState) []error {
	j.holdMu.Lock()
	defer j.holdMu.Unlock()
	if len(j.held.Snapshots) == 0 {
		return nil
	}
	errs := a.removeSnapshots(ctx, &j.held)
	if err := writeJournal(a.opts.StateDir, j.id, &j.held); err != nil {
		errs = append(errs, fmt.Errorf("journal: %w", err))
	}
	return errs
}

// removeSnapshots removes the snapshots of h, keeping those that failed.
func (a *Agent) removeSnapshots(ctx context.Context, h *held) []error {
	var errs []error
	var left []fsSnapshot
	for _, s := range h.Snapshots {
		if err := s.remove(ctx); err != nil {
			errs = append(errs, err)
			left = append(left, s)
		} else {
			a.log.Info("snapshot removed", "type", s.Type, "snapshot", s.Name)
		}
	}
	h.Snapshots = left
	return errs
}

// joinErrors joins errors on one line (a job's error is one line).
func joinErrors(errs ...error) error {
	var parts []string
	for _, err := range errs {
		if err != nil {
			parts = append(parts, strings.ReplaceAll(err.Error(), "\n", "; "))
		}
	}
	if len(parts) == 0 {
		return nil
	}
	return errors.New(strings.Join(parts, "; "))
}

// --- Docker -----------------------------------------------------------------

// The Engine API is asked without a version prefix: the daemon answers in
// its own version (Docker 29 refuses clients older than 1.44; Podman's
// compatible service accepts both). Only long-stable fields are read.
type dockerClient struct {
	socket string
	hc     *http.Client
}

func newDockerClient(socket string) *dockerClient {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}
	return &dockerClient{socket: socket, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// errNoContainer: the API knows no such container.
var errNoContainer = errors.New("no such container")

func (d *dockerClient) call(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://docker"+path, nil)
	if err != nil {
		return err
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the Docker API at %s (is the daemon running, and may the agent use its socket?): %w", d.socket, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if resp.StatusCode == http.StatusNotFound {
		return errNoContainer
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Message string `json:"message"`
		}
		_ = json.Unmarshal(body, &e)
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, lastLine(e.Message))
	}
	if out != nil {
		return json.Unmarshal(body, out)
	}
	return nil
}

type dockerContainer struct {
	ID, Name string
	Running  bool
	Paused   bool
}

// containers resolves the configured names and labels to containers.
func (d *dockerClient) containers(ctx context.Context, cfg *Docker) ([]dockerContainer, error) {
	var out []dockerContainer
	seen := map[string]bool{}
	for _, name := range cfg.Containers {
		var v struct {
			ID    string `json:"Id"`
			Name  string `json:"Name"`
			State struct {
				Running bool `json:"Running"`
				Paused  bool `json:"Paused"`
			} `json:"State"`
		}
		err := d.call(ctx, http.MethodGet, "/containers/"+url.PathEscape(name)+"/json", &v)
		if errors.Is(err, errNoContainer) {
			return nil, fmt.Errorf("no container %q", name)
		}
		if err != nil {
			return nil, err
		}
		if !seen[v.ID] {
			seen[v.ID] = true
			out = append(out, dockerContainer{ID: v.ID, Name: strings.TrimPrefix(v.Name, "/"), Running: v.State.Running, Paused: v.State.Paused})
		}
	}
	// Several labels in one filter must all match: ask once per label.
	for _, label := range cfg.Labels {
		filters, _ := json.Marshal(map[string][]string{"label": {label}})
		var list []struct {
			ID    string   `json:"Id"`
			Names []string `json:"Names"`
			State string   `json:"State"`
		}
		q := url.Values{"all": {"true"}, "filters": {string(filters)}}
		if err := d.call(ctx, http.MethodGet, "/containers/json?"+q.Encode(), &list); err != nil {
			return nil, err
		}
		for _, c := range list {
			if seen[c.ID] {
				continue
			}
			seen[c.ID] = true
			name := c.ID
			if len(c.Names) > 0 {
				name = strings.TrimPrefix(c.Names[0], "/")
			}
			out = append(out, dockerContainer{ID: c.ID, Name: name, Running: c.State == "running" || c.State == "paused", Paused: c.State == "paused"})
		}
	}
	return out, nil
}

func (d *dockerClient) pause(ctx context.Context, id string) error {
	return d.call(ctx, http.MethodPost, "/containers/"+url.PathEscape(id)+"/pause", nil)
}

// unpause unpauses a container; one that is gone or no longer paused
// (someone unpaused it) is not an error.
func (d *dockerClient) unpause(ctx context.Context, id string) error {
	err := d.call(ctx, http.MethodPost, "/containers/"+url.PathEscape(id)+"/unpause", nil)
	if err == nil || errors.Is(err, errNoContainer) {
		return nil
	}
	var v struct {
		State struct {
			Paused bool `json:"Paused"`
		} `json:"State"`
	}
	if ierr := d.call(ctx, http.MethodGet, "/containers/"+url.PathEscape(id)+"/json", &v); errors.Is(ierr, errNoContainer) || (ierr == nil && !v.State.Paused) {
		return nil
	}
	return err
}

// pauseContainers pauses the plan's running containers, recording each in
// the journal before it is paused. A container already paused (by someone
// else) is left alone, and so is a stopped one: neither is unpaused later.
func (a *Agent) pauseContainers(ctx context.Context, j *jobState, cfg *Docker) error {
	d := newDockerClient(cfg.SocketPath())
	list, err := d.containers(ctx, cfg)
	if err != nil {
		return fmt.Errorf("docker: %w", err)
	}
	for _, c := range list {
		if !c.Running || c.Paused {
			a.log.Info("container left alone", "container", c.Name, "running", c.Running, "paused", c.Paused)
			continue
		}
		if err := a.record(j, func(h *held) {
			h.Containers = append(h.Containers, heldContainer{Socket: d.socket, ID: c.ID, Name: c.Name})
		}); err != nil {
			return err
		}
		// On an error the container stays held: a pause that timed out
		// may still have happened, and unpausing one that is not paused
		// is harmless.
		if err := d.pause(ctx, c.ID); err != nil {
			return fmt.Errorf("docker: pause %s: %w", c.Name, err)
		}
		a.log.Info("container paused", "job", j.id, "container", c.Name)
	}
	return nil
}

// --- fsfreeze ---------------------------------------------------------------

// The freeze ioctls (linux/fs.h: _IOWR('X', 119, int) and 120).
const (
	ioctlFIFREEZE = 0xC0045877
	ioctlFITHAW   = 0xC0045878
)

// checkFreezable refuses what must not be frozen: a directory that is not
// a mount point, and the filesystem of the agent's state directory (its
// journal must stay writable to thaw after a crash).
func checkFreezable(mount, stateDir string) error {
	var st, state unix.Stat_t
	if err := unix.Stat(mount, &st); err != nil {
		return fmt.Errorf("fsfreeze %s: %w", mount, err)
	}
	if !isMountPoint(mount) {
		return fmt.Errorf("fsfreeze %s: not a mount point", mount)
	}
	if err := unix.Stat(stateDir, &state); err == nil && state.Dev == st.Dev {
		return fmt.Errorf("fsfreeze %s: the agent's state directory %s is on it (move state_dir to another filesystem)", mount, stateDir)
	}
	return nil
}

func fsIoctl(mount string, req uint) error {
	f, err := os.Open(mount)
	if err != nil {
		return err
	}
	defer f.Close()
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), uintptr(req), 0)
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		case unix.EPERM:
			return errors.New("operation not permitted (the agent must run as root)")
		case unix.EOPNOTSUPP:
			return errors.New("the filesystem cannot be frozen")
		default:
			return errno
		}
	}
}

func freezeFS(mount string) error {
	if err := fsIoctl(mount, ioctlFIFREEZE); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("fsfreeze %s: already frozen (by another tool?)", mount)
		}
		return fmt.Errorf("fsfreeze %s: %w", mount, err)
	}
	return nil
}

// thawFS thaws mount; a filesystem that is not frozen is not an error.
func thawFS(mount string) error {
	if err := fsIoctl(mount, ioctlFITHAW); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("thaw %s: %w", mount, err)
	}
	return nil
}

// freezeMounts freezes the plan's filesystems, each recorded in the
// journal before it is frozen.
func (a *Agent) freezeMounts(j *jobState, mounts []string) error {
	for _, m := range mounts {
		if err := checkFreezable(m, a.opts.StateDir); err != nil {
			return err
		}
		if err := a.record(j, func(h *held) { h.Frozen = append(h.Frozen, m) }); err != nil {
			return err
		}
		if err := freezeFS(m); err != nil {
			// The ioctl failed: nothing was frozen by us (thawing it could
			// thaw another tool's freeze).
			_ = a.record(j, func(h *held) { h.Frozen = slices.DeleteFunc(h.Frozen, func(f string) bool { return f == m }) })
			return err
		}
		a.log.Info("filesystem frozen", "job", j.id, "mount", m)
	}
	return nil
}

// --- snapshots --------------------------------------------------------------

// fsSnapshot is one snapshot taken for a job.
type fsSnapshot struct {
	Type   string `json:"type"`
	Source string `json:"source"`
	Name   string `json:"name"`
	// Root is where the snapshot's files are seen (the upload reads there,
	// bound over the snapshot's mount point).
	Root string `json:"root"`
	// Mount is the directory an LVM snapshot is mounted on.
	Mount string `json:"mount,omitempty"`
}

// snapshotDirName is where btrfs snapshots go, inside the subvolume (a
// snapshot shows nested subvolumes as empty directories, so they are not
// copied into later snapshots).
const snapshotDirName = ".bunker-snapshots"

// run runs a provider's command and returns its error with its last line.
func runTool(ctx context.Context, what, name string, args ...string) error {
	if _, err := exec.LookPath(name); err != nil {
		pkg := map[string]string{"btrfs": "btrfs-progs", "lvcreate": "lvm2", "lvremove": "lvm2", "zfs": "zfsutils-linux", "mount": "mount", "umount": "mount"}[name]
		return fmt.Errorf("%s: %s not found (install %s)", what, name, pkg)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %s: %v: %s", what, name, err, lastLine(out.String()))
	}
	return nil
}

// takeSnapshot snapshots s for a job's plan, recording it in the journal
// first (a snapshot whose creation was cut short is then still removed).
func (a *Agent) takeSnapshot(ctx context.Context, j *jobState, plan string, s *Snapshot) (*fsSnapshot, error) {
	snap := fsSnapshot{Type: s.Type, Source: s.Source, Name: "bunker-" + j.id + "-" + plan}
	switch s.Type {
	case SnapshotBtrfs:
		dir := filepath.Join(s.Source, snapshotDirName)
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("btrfs snapshot: %w", err)
		}
		snap.Root = filepath.Join(dir, snap.Name)
	case SnapshotLVM:
		snap.Mount = filepath.Join(a.opts.StateDir, "mnt-"+snap.Name)
		snap.Root = snap.Mount
	case SnapshotZFS:
		// Mounted explicitly: .zfs/snapshot mounts on demand in the
		// node's namespace, which the upload's private one never sees.
		snap.Mount = filepath.Join(a.opts.StateDir, "mnt-"+snap.Name)
		snap.Root = snap.Mount
	}
	if err := a.record(j, func(h *held) { h.Snapshots = append(h.Snapshots, snap) }); err != nil {
		return nil, err
	}
	var err error
	switch s.Type {
	case SnapshotBtrfs:
		err = runTool(ctx, "btrfs snapshot", "btrfs", "subvolume", "snapshot", "-r", s.Source, snap.Root)
	case SnapshotLVM:
		args := []string{"--snapshot", "--name", snap.Name}
		if s.Size != "" {
			args = append(args, "--size", s.Size)
		} else {
			args = append(args, "--extents", "20%ORIGIN")
		}
		err = runTool(ctx, "lvm snapshot", "lvcreate", append(args, s.Source)...)
		if err == nil {
			err = mountReadOnly(ctx, "/dev/"+filepath.Dir(s.Source)+"/"+snap.Name, snap.Mount)
		}
	case SnapshotZFS:
		err = runTool(ctx, "zfs snapshot", "zfs", "snapshot", s.Source+"@"+snap.Name)
		if err == nil {
			if err = os.Mkdir(snap.Mount, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
				err = fmt.Errorf("zfs snapshot: %w", err)
			} else {
				err = runTool(ctx, "zfs snapshot mount", "mount", "-t", "zfs", "-o", "ro", s.Source+"@"+snap.Name, snap.Mount)
			}
		}
	}
	if err != nil {
		return nil, err
	}
	a.log.Info("snapshot taken", "job", j.id, "plan", plan, "type", s.Type, "snapshot", snap.Name)
	return &snap, nil
}

// mountReadOnly mounts an LVM snapshot's device; XFS refuses a second
// mount of the same filesystem UUID unless told nouuid.
func mountReadOnly(ctx context.Context, dev, dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("lvm snapshot: %w", err)
	}
	err := runTool(ctx, "lvm snapshot mount", "mount", "-o", "ro", dev, dir)
	if err != nil {
		if err2 := runTool(ctx, "lvm snapshot mount", "mount", "-o", "ro,nouuid", dev, dir); err2 == nil {
			return nil
		}
	}
	return err
}

// remove deletes the snapshot; one already gone is not an error.
func (s fsSnapshot) remove(ctx context.Context) error {
	switch s.Type {
	case SnapshotBtrfs:
		if _, err := os.Lstat(s.Root); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return runTool(ctx, "btrfs snapshot removal", "btrfs", "subvolume", "delete", s.Root)
	case SnapshotLVM:
		if err := unmountSnapshot(ctx, s.Mount); err != nil {
			return err
		}
		lv := filepath.Dir(s.Source) + "/" + s.Name
		if _, err := os.Lstat("/dev/" + lv); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return runTool(ctx, "lvm snapshot removal", "lvremove", "--yes", lv)
	case SnapshotZFS:
		if err := unmountSnapshot(ctx, s.Mount); err != nil {
			return err
		}
		err := runTool(ctx, "zfs snapshot removal", "zfs", "destroy", s.Source+"@"+s.Name)
		if err != nil && strings.Contains(err.Error(), "could not find any snapshots") {
			return nil
		}
		return err
	}
	return fmt.Errorf("unknown snapshot type %q", s.Type)
}

// unmountSnapshot unmounts a snapshot's mount directory (if mounted) and
// removes it.
func unmountSnapshot(ctx context.Context, dir string) error {
	if dir == "" {
		return nil
	}
	if isMountPoint(dir) {
		if err := runTool(ctx, "snapshot unmount", "umount", dir); err != nil {
			return err
		}
	}
	os.Remove(dir)
	return nil
}

// isMountPoint: dir is on another device than its parent.
func isMountPoint(dir string) bool {
	var st, parent syscall.Stat_t
	if syscall.Stat(dir, &st) != nil || syscall.Stat(filepath.Dir(filepath.Clean(dir)), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}

// BindExecCommand is the hidden bunker command an upload from a snapshot
// runs as: `bunker __bind-exec SNAPSHOT MOUNTPOINT -- bunker backup ...`,
// started in a new mount namespace, binds the snapshot read-only over the
// mount point there and executes the backup.
const BindExecCommand = "__bind-exec"

// capture pauses the plan's containers and takes its snapshot (j.mu
// held); its filesystems are frozen at the end of the prepare.
func (a *Agent) capture(ctx context.Context, j *jobState, name string, p Plan) error {
	if p.Docker != nil {
		if err := a.pauseContainers(ctx, j, p.Docker); err != nil {
			return err
		}
	}
	if p.Snapshot != nil {
		snap, err := a.takeSnapshot(ctx, j, name, p.Snapshot)
		if err != nil {
			return err
		}
		j.snaps[name] = snap
	}
	return nil
}

// WatchdogCommand is the hidden bunker command that releases a freeze
// should the agent die: started at the beginning of a prepare that will
// pause or freeze, in a session of its own, it reads a WatchdogOrder on
// stdin, sleeps until its time (a little after the agent's own deadline),
// then thaws the filesystems and unpauses the containers the job's journal
// lists (every hold is journaled before it is taken), and exits; on
// SIGTERM (the agent's service stopping) it does so at once. The agent
// kills it when it releases them itself.
const WatchdogCommand = "__thaw-watchdog"

// WatchdogOrder says which journal to release, and when.
type WatchdogOrder struct {
	At      time.Time `json:"at"`
	Journal string    `json:"journal"`
}

// watchdogLate is how long after the agent's own deadline the watchdog
// acts: the agent thaws in order (filesystems, containers, post hooks) if
// it is alive.
const watchdogLate = 2 * time.Second

// RunWatchdog carries out an order read from in (the watchdog process).
func RunWatchdog(ctx context.Context, in io.Reader) error {
	var o WatchdogOrder
	if err := json.NewDecoder(io.LimitReader(in, 1<<20)).Decode(&o); err != nil {
		return fmt.Errorf("watchdog order: %w", err)
	}
	t := time.NewTimer(time.Until(o.At))
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	data, err := os.ReadFile(o.Journal)
	if errors.Is(err, os.ErrNotExist) {
		return nil // all released
	}
	if err != nil {
		return err
	}
	var h held
	if err := json.Unmarshal(data, &h); err != nil {
		return fmt.Errorf("journal %s: %w", o.Journal, err)
	}
	quiet := &Agent{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	return joinErrors(quiet.release(context.Background(), &h, false)...)
}

// startWatchdog starts the watchdog of a job's freeze, before anything is
// paused or frozen, if any of its plans will.
func (a *Agent) startWatchdog(j *jobState, plans []string, thawBy time.Time) error {
	needed := false
	for _, name := range plans {
		p := a.cfg.Plans[name]
		needed = needed || p.Docker != nil || len(p.FSFreeze) > 0
	}
	if !needed {
		return nil
	}
	order, err := json.Marshal(WatchdogOrder{At: thawBy.Add(watchdogLate), Journal: filepath.Join(a.opts.StateDir, j.id+journalSuffix)})
	if err != nil {
		return err
	}
	cmd := exec.Command(a.opts.Bunker, WatchdogCommand)
	cmd.Stdin = bytes.NewReader(order)
	// A session of its own: signals to the agent's process group do not
	// reach it. No output: nothing may hold the agent's pipes open.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("watchdog: %w", err)
	}
	go func() { _ = cmd.Wait() }()
	j.holdMu.Lock()
	j.held.Watchdog = cmd.Process.Pid
	j.holdMu.Unlock()
	return nil
}

// stopWatchdog kills a watchdog: the agent's own child, or (earlier, when
// a previous run of the agent started it) only if that PID is still a
// bunker watchdog.
func stopWatchdog(pid int, foreign bool) {
	if pid <= 0 {
		return
	}
	if foreign {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !bytes.Contains(cmdline, []byte(WatchdogCommand)) {
			return
		}
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}
