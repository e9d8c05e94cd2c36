package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"bunker/internal/agent/agenttest"
)

// podman is a real container engine serving the Docker Engine API on a
// unix socket (Debian's podman, isolated in a directory of the test).
type podman struct {
	t    *testing.T
	dir  string
	sock string
	env  []string
	base []string
	hc   *http.Client
}

func startPodman(t *testing.T) *podman {
	t.Helper()
	// A short directory: a unix socket path has at most 107 bytes.
	dir, err := os.MkdirTemp("", "pm")
	if err != nil {
		t.Fatal(err)
	}
	p := &podman{t: t, dir: dir, sock: filepath.Join(dir, "api.sock")}
	conf := filepath.Join(dir, "containers.conf")
	// runc (crun refuses this kernel's hybrid cgroups), file events (no
	// journald), limits the sandbox can grant, and all state in dir.
	writeFile(t, conf, fmt.Sprintf(`[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "%s/tmp/events.log"
tmp_dir = "%s/tmp"
`, dir, dir))
	p.env = append(os.Environ(), "CONTAINERS_CONF="+conf)
	p.base = []string{"--root", dir + "/storage", "--runroot", dir + "/run", "--tmpdir", dir + "/tmp",
		"--cgroup-manager=cgroupfs", "--events-backend=file", "--runtime", "runc"}
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(rootfs+"/bin", 0o755); err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, rootfs+"/bin/busybox", string(bb))
	_ = os.Chmod(rootfs+"/bin/busybox", 0o755)
	for _, a := range []string{"sh", "sleep"} {
		_ = os.Symlink("busybox", rootfs+"/bin/"+a)
	}
	p.run("tar", "-C", rootfs, "-cf", dir+"/rootfs.tar", ".")
	p.run("podman", append(p.base, "import", dir+"/rootfs.tar", "localhost/bunker-test:latest")...)
	svc := exec.Command("podman", append(p.base, "system", "service", "--time=0", "unix://"+p.sock)...)
	svc.Env = p.env
	var log bytes.Buffer
	svc.Stdout, svc.Stderr = &log, &log
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	p.hc = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", p.sock)
	}}}
	t.Cleanup(func() {
		var list []struct{ ID string }
		p.api("GET", "/containers/json?all=true", nil, &list)
		for _, c := range list {
			p.api("DELETE", "/containers/"+c.ID+"?force=true", nil, nil)
		}
		_ = svc.Process.Signal(syscall.SIGTERM)
		_ = svc.Wait()
		// conmon's cleanup runs after the service answered: wait for every
		// process using the directory before unmounting and removing it.
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			busy := false
			ents, _ := os.ReadDir("/proc")
			for _, e := range ents {
				if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && bytes.Contains(b, []byte(dir)) {
					busy = true
					break
				}
			}
			if !busy {
				break
			}
		}
		_ = syscall.Unmount(filepath.Join(dir, "storage", "overlay"), 0)
		os.RemoveAll(dir)
	})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if p.api("GET", "/_ping", nil, nil) == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("podman service did not start: %s", log.String())
		}
	}
	return p
}

func (p *podman) run(name string, args ...string) {
	p.t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = p.env
	if out, err := cmd.CombinedOutput(); err != nil {
		p.t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}

func (p *podman) api(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://podman/v1.41"+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// container starts a container that sleeps, with labels.
func (p *podman) container(name string, labels map[string]string) {
	p.t.Helper()
	err := p.api("POST", "/containers/create?name="+url.QueryEscape(name), map[string]any{"Image": "localhost/bunker-test:latest",
		"Cmd": []string{"sleep", "3600"}, "Labels": labels, "HostConfig": map[string]any{"NetworkMode": "none"}}, nil)
	if err == nil {
		err = p.api("POST", "/containers/"+name+"/start", nil, nil)
	}
	if err != nil {
		p.t.Fatal(err)
	}
}

func (p *podman) status(name string) string {
	var v struct{ State struct{ Status string } }
	if err := p.api("GET", "/containers/"+name+"/json", nil, &v); err != nil {
		return err.Error()
	}
	return v.State.Status
}

// TestDirectorSnapshotAndPause: node1 pauses its containers (by name and
// by label, through the Docker Engine API of a real podman), takes a btrfs
// snapshot and then freezes the filesystem (fsfreeze: writes wait) until
// the group's thaw; its files change right after the thaw,
// yet the group holds them as they were at the freeze, under their own
// paths; the containers run again and the snapshot is gone after the
// upload. Then node1's agent is killed while it holds them: started
// again, it unpauses the containers and removes the snapshot.
func TestDirectorSnapshotAndPause(t *testing.T) {
	agenttest.NeedTools(t, "btrfs snapshots and Docker pause", "losetup", "mkfs.btrfs", "btrfs", "podman", "runc", "/bin/busybox")
	t.Parallel()
	mnt := agenttest.LoopFS(t, "btrfs", 256<<20)
	writeFile(t, filepath.Join(mnt, "data", "state"), "before\n")
	pm := startPodman(t)
	pm.container("app", nil)
	pm.container("worker", map[string]string{"bunker.pause": "true"})
	pm.container("other", map[string]string{"bunker.pause": "false"})

	dp := newDeployment(t, []string{"node1", "node2"}, `  cluster:
    nodes: {node1: [files], node2: [files]}
    schedule: "0 0 1 1 *"
    repository: main
    freeze_timeout: 20s
`, func(dp *deployment, n string) string {
		if n == "node2" {
			// node2 takes its time: node1 stays frozen meanwhile.
			return dp.filesPlan(n, "files", "sleep 3; ")
		}
		return fmt.Sprintf(`  files:
    repository: {location: %s, password_file: %s}
    paths: [%s/data]
    pre: [{exec: [/bin/sh, -c, "echo at-freeze > %s/data/state"]}]
    post: [{exec: [/bin/sh, -c, "echo after-thaw > %s/data/state"]}]
    docker: {socket: %s, containers: [app], labels: [bunker.pause=true]}
    snapshot: {type: btrfs, source: %s}
    fsfreeze: [%s]
`, dp.repo.repo, dp.repo.pwFile, mnt, mnt, mnt, pm.sock, mnt, mnt)
	})
	if r := dp.repo.run("config", "validate", filepath.Join(dp.dir, "agent-node1.yaml")); r.code != 0 {
		t.Fatalf("validate: %v", r)
	}
	dp.startDirector()
	dp.startAgents()
	state := filepath.Join(dp.dir, "state-node1")
	snapDir := filepath.Join(mnt, ".bunker-snapshots")

	job := dp.runPlan(0, "cluster", false)
	dp.waitFor("node1 to freeze", func() bool { return strings.Contains(dp.logs["node1"].String(), "filesystem frozen") })
	for _, c := range []string{"app", "worker"} {
		if s := pm.status(c); s != "paused" {
			t.Errorf("%s is %s while node1 is frozen", c, s)
		}
	}
	if s := pm.status("other"); s != "running" {
		t.Errorf("a container neither named nor labelled is %s", s)
	}
	if ents, _ := os.ReadDir(snapDir); len(ents) != 1 {
		t.Errorf("snapshots while frozen: %v", ents)
	}
	wrote := make(chan error, 1)
	go func() { wrote <- os.WriteFile(filepath.Join(mnt, "probe"), []byte("x"), 0o644) }()
	select {
	case err := <-wrote:
		t.Errorf("a write went through while node1 was frozen (%v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	job = dp.waitJob(job.ID)
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the filesystem stayed frozen after the job")
	}
	if job.State != "succeeded" {
		t.Fatalf("job: %+v\nnode1 log:\n%s", job, dp.logs["node1"])
	}
	for _, c := range []string{"app", "worker", "other"} {
		if s := pm.status(c); s != "running" {
			t.Errorf("after the job, %s is %s", c, s)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(mnt, "data", "state")); string(b) != "after-thaw\n" {
		t.Fatalf("the post hook did not run: %q", b)
	}
	snap := job.Nodes["node1"].Snapshots["files"]
	if got := dp.repo.ok("dump", snap, filepath.Join(mnt, "data", "state")); got != "at-freeze\n" {
		t.Errorf("the group holds %q, want the file as it was at the freeze", got)
	}
	if ents, _ := os.ReadDir(snapDir); len(ents) != 0 {
		t.Errorf("snapshots left after the upload: %v", ents)
	}
	if j, _ := filepath.Glob(filepath.Join(state, "*.held")); len(j) != 0 {
		t.Errorf("journals left: %v", j)
	}

	// Killed while holding (RELIABILITY E2): the agent's watchdog thaws
	// the filesystem and unpauses the containers by the deadline with the
	// agent dead; the restarted agent removes the snapshot.
	job = dp.runPlan(0, "cluster", false)
	dp.waitFor("node1 to freeze again", func() bool { return strings.Count(dp.logs["node1"].String(), "filesystem frozen") == 2 })
	killed := time.Now()
	_ = dp.agents["node1"].Process.Kill()
	_, _ = dp.agents["node1"].Process.Wait()
	if j, _ := filepath.Glob(filepath.Join(state, "*.held")); len(j) != 1 {
		t.Fatalf("journal of the killed agent: %v", j)
	}
	if s := pm.status("app"); s != "paused" {
		t.Fatalf("app is %s after the kill", s)
	}
	go func() { wrote <- os.WriteFile(filepath.Join(mnt, "probe2"), []byte("x"), 0o644) }()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the filesystem stayed frozen after the agent died")
	}
	// thaw_deadline is 8 s, the watchdog acts 2 s later; allow for a slow
	// machine, but far less than "until someone restarts the agent".
	if d := time.Since(killed); d > 16*time.Second {
		t.Errorf("thawed %v after the agent died", d)
	}
	dp.waitFor("the watchdog to unpause the containers", func() bool { return pm.status("app") == "running" && pm.status("worker") == "running" })
	dp.agents["node1"], dp.logs["node1"] = dp.start("agent node1 again", "agent", "run", "--config", filepath.Join(dp.dir, "agent-node1.yaml"))
	dp.waitFor("the restarted agent to remove the snapshot", func() bool {
		ents, _ := os.ReadDir(snapDir)
		j, _ := filepath.Glob(filepath.Join(state, "*.held"))
		return len(ents) == 0 && len(j) == 0
	})
	dp.operatorRun("job", "cancel", job.ID)
	if job = dp.waitJob(job.ID); job.State == "succeeded" {
		t.Errorf("the run whose agent was killed succeeded: %+v", job)
	}
}
