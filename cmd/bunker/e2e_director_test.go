package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// deployment is a director and its agents, all real processes of the
// binary on 127.0.0.1, with a deployment CA and one local repository.
type deployment struct {
	t      *testing.T
	dir    string
	addr   string
	repo   *repoEnv
	nodes  []string
	dirCmd *exec.Cmd
	dirLog *lockedBuf
	agents map[string]*exec.Cmd
	logs   map[string]*lockedBuf
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// newDeployment writes the PKI, the repository and the configurations.
// plans is the director's plans section; agentPlans(node) an agent's.
func newDeployment(t *testing.T, nodes []string, plans string, agentPlans func(dp *deployment, node string) string) *deployment {
	t.Helper()
	dp := &deployment{t: t, nodes: nodes, agents: map[string]*exec.Cmd{}, logs: map[string]*lockedBuf{}}
	dp.repo = newFastRepo(t)
	dp.dir = dp.repo.dir
	dp.addr = freePort(t)
	pk := filepath.Join(dp.dir, "pki")
	dp.repo.ok("pki", "init", "--dir", pk)
	dp.repo.ok("pki", "issue", "director", "dir1", "--dir", pk, "--host", "127.0.0.1")
	dp.repo.ok("pki", "issue", "operator", "ops", "--dir", pk)
	var nodeList strings.Builder
	for _, n := range nodes {
		dp.repo.ok("pki", "issue", "agent", n, "--dir", pk)
		fmt.Fprintf(&nodeList, "  %s: {}\n", n)
		writeFile(t, filepath.Join(dp.dir, "data", n, "file"), "data of "+n+"\n")
		writeFile(t, filepath.Join(dp.dir, "agent-"+n+".yaml"), fmt.Sprintf(`name: %s
director: https://%s
tls: {ca: %s/ca.pem, cert: %s/agent-%s.pem, key: %s/agent-%s.key}
thaw_deadline: 8s
state_dir: %s/state-%s
plans:
%s`, n, dp.addr, pk, pk, n, pk, n, dp.dir, n, agentPlans(dp, n)))
	}
	writeFile(t, filepath.Join(dp.dir, "director.yaml"), fmt.Sprintf(`listen: %s
tls: {ca: %s/ca.pem, cert: %s/director-dir1.pem, key: %s/director-dir1.key}
state: %s/director.db
repositories:
  main: {location: %s, password_file: %s}
nodes:
%splans:
%s`, dp.addr, pk, pk, pk, dp.dir, dp.repo.repo, dp.repo.pwFile, nodeList.String(), plans))
	return dp
}

// filesPlan is an agent plan backing up the node's data directory, with
// hooks that record when the node froze and thawed; pre adds a command
// before the freeze mark.
func (dp *deployment) filesPlan(node, name, pre string) string {
	d := filepath.Join(dp.dir, "data", node)
	return fmt.Sprintf(`  %s:
    repository: {location: %s, password_file: %s}
    paths: [%s]
    pre: [{exec: [/bin/sh, -c, "%sdate +%%s.%%N > %s/frozen-%s"], timeout: 20s}]
    post: [{exec: [/bin/sh, -c, "date +%%s.%%N > %s/thawed-%s"]}]
    restore_target: %s/restored-%s
`, name, dp.repo.repo, dp.repo.pwFile, d, pre, dp.dir, node, dp.dir, node, dp.dir, node)
}

func (dp *deployment) start(name string, args ...string) (*exec.Cmd, *lockedBuf) {
	cmd := exec.Command(bunkerBin, args...)
	log := &lockedBuf{}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "BUNKER_TEST_POLL=2s", "BUNKER_TEST_TICK=1s", "BUNKER_TEST_PRUNE_WAIT=50ms")
	if err := cmd.Start(); err != nil {
		dp.t.Fatal(err)
	}
	dp.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if dp.t.Failed() {
			dp.t.Logf("%s log:\n%s", name, log)
		}
	})
	return cmd, log
}

func (dp *deployment) startDirector() {
	dp.dirCmd, dp.dirLog = dp.start("director", "director", "serve", "--config", filepath.Join(dp.dir, "director.yaml"))
	dp.waitFor("the director to listen", func() bool { return strings.Contains(dp.dirLog.String(), "listening on") })
}

func (dp *deployment) startAgents() {
	for _, n := range dp.nodes {
		dp.agents[n], dp.logs[n] = dp.start("agent "+n, "agent", "run", "--config", filepath.Join(dp.dir, "agent-"+n+".yaml"))
	}
	dp.waitFor("the agents to connect", func() bool {
		return strings.Count(dp.dirLog.String(), "agent connected") >= len(dp.nodes)
	})
}

func (dp *deployment) waitFor(what string, cond func() bool) {
	dp.t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			dp.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// operator runs the CLI against the director with the operator certificate.
func (dp *deployment) operator(code int, args ...string) result {
	dp.t.Helper()
	r := dp.operatorRun(args...)
	if r.code != code {
		dp.t.Fatalf("want exit %d, got %v", code, r)
	}
	return r
}

type jobJSON struct {
	ID    string `json:"id"`
	State string `json:"state"`
	Phase string `json:"phase"`
	Error string `json:"error"`
	Nodes map[string]struct {
		Prepared  bool              `json:"prepared"`
		Thawed    bool              `json:"thawed"`
		Snapshots map[string]string `json:"snapshots"`
	} `json:"nodes"`
}

func (dp *deployment) operatorRun(args ...string) result {
	dp.t.Helper()
	pk := filepath.Join(dp.dir, "pki")
	return dp.repo.runWith(runOpts{env: map[string]string{"BUNKER_DIRECTOR": "https://" + dp.addr, "BUNKER_DIRECTOR_CA": pk + "/ca.pem",
		"BUNKER_DIRECTOR_CERT": pk + "/operator-ops.pem", "BUNKER_DIRECTOR_KEY": pk + "/operator-ops.key"}}, args...)
}

// runPlan starts a plan through the operator CLI (waiting for its end with
// wait) and returns the job; the command must exit with code.
func (dp *deployment) runPlan(code int, plan string, wait bool) jobJSON {
	dp.t.Helper()
	args := []string{"plan", "run", plan, "--json"}
	if wait {
		args = append(args, "--wait")
	}
	var j jobJSON
	if err := json.Unmarshal([]byte(dp.operator(code, args...).stdout), &j); err != nil {
		dp.t.Fatalf("plan run %s: %v", plan, err)
	}
	return j
}

// showJob returns a job as the director shows it now (zero if it cannot).
func (dp *deployment) showJob(id string) jobJSON {
	dp.t.Helper()
	var j jobJSON
	_ = json.Unmarshal([]byte(dp.operatorRun("job", "show", id, "--json").stdout), &j)
	return j
}

// waitJob waits until a job is no longer running and returns it.
func (dp *deployment) waitJob(id string) jobJSON {
	dp.t.Helper()
	var j jobJSON
	dp.waitFor("job "+id+" to end", func() bool {
		j = dp.showJob(id)
		return j.State != "" && j.State != "running"
	})
	return j
}

func (dp *deployment) stamp(kind, node string) float64 {
	dp.t.Helper()
	b, err := os.ReadFile(filepath.Join(dp.dir, kind+"-"+node))
	if err != nil {
		dp.t.Fatalf("%s of %s: %v", kind, node, err)
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
	if err != nil {
		dp.t.Fatal(err)
	}
	return f
}

// TestDirectorGroupRun: a director and three agents; one plan freezes all
// three at one instant (every node froze before any thawed), uploads, and
// commits the group: one snapshot per node, tagged with the job, each
// restoring its node's data.
func TestDirectorGroupRun(t *testing.T) {
	t.Parallel()
	nodes := []string{"node1", "node2", "node3"}
	dp := newDeployment(t, nodes, `  cluster:
    nodes: {node1: [files], node2: [files], node3: [files]}
    schedule: "0 0 1 1 *"
    repository: main
    freeze_timeout: 10s
  wrong:
    nodes: {node1: [files, secret]}
    schedule: "0 0 1 1 *"
    repository: main
`, func(dp *deployment, n string) string { return dp.filesPlan(n, "files", "") })
	dp.startDirector()
	dp.startAgents()
	out := dp.operator(0, "plan", "list").stdout
	if !strings.Contains(out, "node1,node2,node3") {
		t.Errorf("plan list: %q", out)
	}
	var job jobJSON
	r := dp.operator(0, "plan", "run", "cluster", "--wait", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &job); err != nil || job.State != "succeeded" {
		t.Fatalf("job: %v %+v", err, job)
	}
	var frozen, thawed []float64
	for _, n := range nodes {
		frozen, thawed = append(frozen, dp.stamp("frozen", n)), append(thawed, dp.stamp("thawed", n))
	}
	sort.Float64s(frozen)
	sort.Float64s(thawed)
	if frozen[len(frozen)-1] >= thawed[0] {
		t.Errorf("not one instant: last freeze %f, first thaw %f", frozen[len(frozen)-1], thawed[0])
	}
	snaps := dp.repo.snapshots()
	if len(snaps) != 3 {
		t.Fatalf("%d snapshots, want 3", len(snaps))
	}
	for _, sn := range snaps {
		if !contains(sn.Tags, "group:"+job.ID) || job.Nodes[sn.Hostname].Snapshots["files"] != sn.ID {
			t.Errorf("snapshot %s of %s: tags %v; the job says %v", sn.ShortID, sn.Hostname, sn.Tags, job.Nodes[sn.Hostname].Snapshots)
		}
		target := t.TempDir()
		dp.repo.ok("restore", sn.ID, "--target", target)
		got, err := os.ReadFile(filepath.Join(target, dp.dir, "data", sn.Hostname, "file"))
		if err != nil || string(got) != "data of "+sn.Hostname+"\n" {
			t.Errorf("restore of %s: %q %v", sn.Hostname, got, err)
		}
	}

	// Restore node1's part of the group through node2's agent (--map:
	// production into staging): it lands where node2's plan restores.
	dp.operator(0, "restore", "--plan", "cluster", "--group", job.ID, "--node", "node1", "--map", "node1=node2", "--wait")
	got, err := os.ReadFile(filepath.Join(dp.dir, "restored-node2", dp.dir, "data", "node1", "file"))
	if err != nil || string(got) != "data of node1\n" {
		t.Errorf("mapped restore: %q %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(dp.dir, "restored-node1")); err == nil {
		t.Errorf("the mapped restore wrote on node1")
	}

	// E6: a plan asking an agent for a plan it does not have fails with
	// the reason, and nothing runs.
	r = dp.operator(1, "plan", "run", "wrong", "--wait")
	if !strings.Contains(r.stdout, `its agent has no plan \"secret\"`) && !strings.Contains(r.stdout, `its agent has no plan "secret"`) {
		t.Errorf("unknown agent plan: %q", r.stdout)
	}
	// Bad input.
	if r := dp.operator(2, "plan", "run", "nosuch"); !strings.Contains(r.stderr, "unknown plan") {
		t.Errorf("unknown plan: %q", r.stderr)
	}
	// An agent's certificate cannot act as an operator (G5).
	pk := filepath.Join(dp.dir, "pki")
	r = dp.repo.runWith(runOpts{env: map[string]string{"BUNKER_DIRECTOR": "https://" + dp.addr, "BUNKER_DIRECTOR_CA": pk + "/ca.pem",
		"BUNKER_DIRECTOR_CERT": pk + "/agent-node1.pem", "BUNKER_DIRECTOR_KEY": pk + "/agent-node1.key"}}, "plan", "run", "cluster")
	if r.code != 1 || !strings.Contains(r.stderr, "agent node1 may not use") {
		t.Errorf("agent as operator: %v", r)
	}
	if !strings.Contains(dp.dirLog.String(), "refused: wrong role") {
		t.Errorf("the refusal was not logged")
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

// TestDirectorKilledWhileFrozen is RELIABILITY E2 and a director restart
// mid-job: the director is killed while two nodes are frozen and the third
// is still preparing; every node thaws by its own deadline; the restarted
// director marks the job failed (nothing recorded, no snapshot), and the
// next run succeeds.
func TestDirectorKilledWhileFrozen(t *testing.T) {
	t.Parallel()
	nodes := []string{"node1", "node2", "node3"}
	dp := newDeployment(t, nodes, `  cluster:
    nodes: {node1: [files], node2: [files], node3: [files]}
    schedule: "0 0 1 1 *"
    repository: main
    freeze_timeout: 6s
`, func(dp *deployment, n string) string {
		pre := ""
		if n == "node3" {
			pre = "test -e " + filepath.Join(dp.dir, "fast") + " || sleep 3; "
		}
		return dp.filesPlan(n, "files", pre)
	})
	dp.startDirector()
	dp.startAgents()
	job := dp.runPlan(0, "cluster", false)
	dp.waitFor("node1 and node2 to freeze", func() bool {
		_, e1 := os.Stat(filepath.Join(dp.dir, "frozen-node1"))
		_, e2 := os.Stat(filepath.Join(dp.dir, "frozen-node2"))
		return e1 == nil && e2 == nil
	})
	killed := time.Now()
	_ = dp.dirCmd.Process.Signal(syscall.SIGKILL)
	_ = dp.dirCmd.Wait()
	// Every node thaws by the freeze deadline (6 s after the start) on its
	// own; allow for slow machines, but far less than "never".
	dp.waitFor("every node to thaw by its own deadline", func() bool {
		for _, n := range nodes {
			if _, err := os.Stat(filepath.Join(dp.dir, "thawed-"+n)); err != nil {
				return false
			}
		}
		return true
	})
	if d := time.Since(killed); d > 12*time.Second {
		t.Errorf("thawed %v after the director died", d)
	}
	// The post hook runs, then the agent logs who thawed it.
	dp.waitFor("node1 and node2 to log their own deadline", func() bool {
		return strings.Contains(dp.logs["node1"].String(), "its own deadline") && strings.Contains(dp.logs["node2"].String(), "its own deadline")
	})
	if n := len(dp.repo.snapshots()); n != 0 {
		t.Errorf("%d snapshots after the killed run, want 0", n)
	}

	// The restarted director knows the job failed, and runs the plan anew.
	writeFile(t, filepath.Join(dp.dir, "fast"), "")
	for _, n := range nodes {
		os.Remove(filepath.Join(dp.dir, "thawed-"+n))
	}
	dp.startDirector()
	var old jobJSON
	if err := json.Unmarshal([]byte(dp.operator(1, "job", "show", job.ID, "--json").stdout), &old); err != nil || old.State != "failed" || !strings.Contains(old.Error, "director stopped") {
		t.Errorf("the interrupted job: %+v %v", old, err)
	}
	// The job cut before its barrier is not lost: the plan runs again by
	// itself once the agents are back.
	var jobs []jobJSON
	dp.waitFor("the plan to run again and succeed", func() bool {
		jobs = nil
		_ = json.Unmarshal([]byte(dp.operatorRun("job", "list", "--json").stdout), &jobs)
		return len(jobs) == 2 && jobs[0].State == "succeeded"
	})
	if !strings.Contains(dp.dirLog.String(), "rerun after a director restart") {
		t.Errorf("the second run was not the rerun:\n%s", dp.dirLog)
	}
	if n := len(dp.repo.snapshots()); n != 3 {
		t.Errorf("%d snapshots, want 3 (one per node, of the second job only)", n)
	}
	time.Sleep(2 * time.Second) // a few scheduler ticks: no third job
	if err := json.Unmarshal([]byte(dp.operator(0, "job", "list", "--json").stdout), &jobs); err != nil || len(jobs) != 2 {
		t.Errorf("jobs: %+v %v (want 2: none lost, none duplicated)", jobs, err)
	}
}

// TestDirectorRestartMidUpload: the director is stopped (SIGTERM, as by
// systemctl restart) and then killed (SIGKILL) while the nodes upload
// (bandwidth-limited); each time, restarted, it resumes the job: it waits
// for the uploads it had asked for rather than ask again, and commits the
// group: one snapshot per node, none twice.
func TestDirectorRestartMidUpload(t *testing.T) {
	t.Parallel()
	nodes := []string{"node1", "node2"}
	dp := newDeployment(t, nodes, `  cluster:
    nodes: {node1: [files], node2: [files]}
    schedule: "0 0 1 1 *"
    repository: main
`, func(dp *deployment, n string) string {
		return dp.filesPlan(n, "files", "") + "    limit_upload: 256\n"
	})
	for _, n := range nodes {
		// Random data, so that the limit holds the upload for seconds.
		writeFile(t, filepath.Join(dp.dir, "data", n, "big"), string(randomData(uint64(len(n)), 3<<20)))
	}
	dp.startDirector()
	dp.startAgents()
	job := dp.runPlan(0, "cluster", false)
	dp.waitFor("the upload phase", func() bool { return dp.showJob(job.ID).Phase == "upload" })
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		_ = dp.dirCmd.Process.Signal(sig)
		_ = dp.dirCmd.Wait()
		time.Sleep(500 * time.Millisecond)
		dp.startDirector()
		var j jobJSON
		if err := json.Unmarshal([]byte(dp.operator(0, "job", "show", job.ID, "--json").stdout), &j); err != nil || j.State != "running" {
			t.Fatalf("after %v and a restart the job is %+v (%v), want it resumed, running", sig, j, err)
		}
	}
	job = dp.waitJob(job.ID)
	if job.State != "succeeded" {
		t.Fatalf("resumed job: %+v\ndirector:\n%s", job, dp.dirLog)
	}
	if !strings.Contains(dp.dirLog.String(), "resuming a job") {
		t.Errorf("the job was not resumed (did the upload end before the kill?):\n%s", dp.dirLog)
	}
	snaps := dp.repo.snapshots()
	if len(snaps) != 2 {
		t.Fatalf("%d snapshots, want 2 (one per node)", len(snaps))
	}
	for _, n := range nodes {
		if len(job.Nodes[n].Snapshots) != 1 || strings.Count(dp.logs[n].String(), "uploaded") != 1 {
			t.Errorf("%s: snapshots %v, uploads logged %d", n, job.Nodes[n].Snapshots, strings.Count(dp.logs[n].String(), "uploaded"))
		}
	}
	var jobs []jobJSON
	if err := json.Unmarshal([]byte(dp.operator(0, "job", "list", "--json").stdout), &jobs); err != nil || len(jobs) != 1 {
		t.Errorf("jobs: %+v %v (want 1)", jobs, err)
	}
}

// cutProxy forwards TCP connections to a target until cut: then it drops
// every connection and refuses new ones until healed.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]bool
}

func startCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				c.Close()
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns[c], p.conns[u] = true, true
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	t.Cleanup(func() { ln.Close(); p.setCut(true) })
	return p
}

func (p *cutProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

// TestDirectorNetworkCut is RELIABILITY E1: the network between the
// director and the agents is cut during the upload; after healing, the job
// succeeds with exactly one snapshot per node, and there is one job.
func TestDirectorNetworkCut(t *testing.T) {
	t.Parallel()
	nodes := []string{"node1", "node2"}
	dp := newDeployment(t, nodes, `  cluster:
    nodes: {node1: [files], node2: [files]}
    schedule: "0 0 1 1 *"
    repository: main
    freeze_timeout: 10s
`, func(dp *deployment, n string) string { return dp.filesPlan(n, "files", "") })
	// The agents reach the director through the proxy; some data makes
	// the upload last.
	proxy := startCutProxy(t, dp.addr)
	for _, n := range nodes {
		p := filepath.Join(dp.dir, "agent-"+n+".yaml")
		b, _ := os.ReadFile(p)
		writeFile(t, p, strings.Replace(string(b), "https://"+dp.addr, "https://"+proxy.ln.Addr().String(), 1))
		writeFile(t, filepath.Join(dp.dir, "data", n, "big"), string(randomData(uint64(len(n)), 24<<20)))
	}
	dp.startDirector()
	dp.startAgents()
	job := dp.runPlan(0, "cluster", false)
	dp.waitFor("both nodes to thaw", func() bool {
		for _, n := range nodes {
			if _, err := os.Stat(filepath.Join(dp.dir, "thawed-"+n)); err != nil {
				return false
			}
		}
		return true
	})
	proxy.setCut(true)
	time.Sleep(4 * time.Second)
	proxy.setCut(false)
	cutSeen := false
	for _, n := range nodes {
		cutSeen = cutSeen || strings.Contains(dp.logs[n].String(), "unreachable") || strings.Contains(dp.logs[n].String(), "not delivered")
	}
	if !cutSeen {
		t.Errorf("no agent noticed the cut")
	}
	done := dp.waitJob(job.ID)
	if done.State != "succeeded" {
		t.Fatalf("job after the cut: %+v", done)
	}
	snaps := dp.repo.snapshots("--tag", "group:"+job.ID)
	if len(snaps) != len(nodes) {
		t.Errorf("%d snapshots of the job, want %d", len(snaps), len(nodes))
	}
	if n := len(dp.repo.snapshots()); n != len(nodes) {
		t.Errorf("%d snapshots in all, want %d (no duplicate upload)", n, len(nodes))
	}
	var jobs []jobJSON
	if err := json.Unmarshal([]byte(dp.operator(0, "job", "list", "--json").stdout), &jobs); err != nil || len(jobs) != 1 {
		t.Errorf("jobs: %+v %v (want exactly 1)", jobs, err)
	}
}

// TestDirectorRetentionAndCopy: after each committed group the director
// applies the plan's retention to whole groups and copies the plan's
// snapshots off site; the copy keeps what the source's retention removes
// (RELIABILITY H2: deletions reach the copy only through its own retention).
func TestDirectorRetentionAndCopy(t *testing.T) {
	t.Parallel()
	nodes := []string{"node1", "node2"}
	dp := newDeployment(t, nodes, `  cluster:
    nodes: {node1: [files], node2: [files]}
    schedule: "0 0 1 1 *"
    repository: main
    retention: {keep_last: 2}
    copy_to: offsite
`, func(dp *deployment, n string) string { return dp.filesPlan(n, "files", "") })
	offsite := filepath.Join(dp.dir, "offsite")
	createFastRepo(t, offsite, dp.repo.pwFile)
	cfgPath := filepath.Join(dp.dir, "director.yaml")
	b, _ := os.ReadFile(cfgPath)
	writeFile(t, cfgPath, strings.Replace(string(b), "repositories:\n", fmt.Sprintf("repositories:\n  offsite: {location: %s, password_file: %s}\n", offsite, dp.repo.pwFile), 1))
	dp.startDirector()
	dp.startAgents()
	var ids []string
	for i := range 3 {
		writeFile(t, filepath.Join(dp.dir, "data", "node1", "file"), fmt.Sprintf("version %d\n", i))
		job := dp.runPlan(0, "cluster", true)
		ids = append(ids, job.ID)
		var full struct {
			Followups map[string]string `json:"followups"`
		}
		dp.waitFor("retention and copy", func() bool {
			_ = json.Unmarshal([]byte(dp.operatorRun("job", "show", job.ID, "--json").stdout), &full)
			return full.Followups["retention"] != "" && full.Followups["copy"] != ""
		})
		if strings.HasPrefix(full.Followups["retention"], "failed") || !strings.HasPrefix(full.Followups["copy"], "copied 2 snapshots") {
			t.Fatalf("run %d: followups %v", i, full.Followups)
		}
	}
	if n := len(dp.repo.snapshots()); n != 4 {
		t.Errorf("main repository: %d snapshots, want 4 (the last 2 groups of 2 nodes)", n)
	}
	for _, sn := range dp.repo.snapshots() {
		if contains(sn.Tags, "group:"+ids[0]) {
			t.Errorf("the oldest group is still in the main repository")
		}
	}
	off := &repoEnv{t: t, dir: dp.dir, repo: offsite, pwFile: dp.repo.pwFile}
	if n := len(off.snapshots()); n != 6 {
		t.Errorf("off-site copy: %d snapshots, want 6 (all 3 groups)", n)
	}
	off.ok("check", "--read-data")
}
