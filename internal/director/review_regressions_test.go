package director

// Regressions found by a review of the director (each test was first
// written to fail against the code it found the problem in).

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"bunker/internal/api"
	"bunker/internal/pki"
)

func reviewPost(t *testing.T, c *http.Client, url string, body, out any) {
	t.Helper()
	data, _ := json.Marshal(body)
	resp, err := c.Post(url, "application/json", strings.NewReader(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %s %s", url, resp.Status, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatal(err)
		}
	}
}

func reviewPoll(t *testing.T, c *http.Client, addr string) []api.Command {
	t.Helper()
	var pr api.PollResponse
	reviewPost(t, c, "https://"+addr+api.PathPoll, api.Poll{Version: api.Version, Plans: []string{"files"}}, &pr)
	return pr.Commands
}

func reviewJob(d *Director, id string) *api.Job {
	j, err := d.st.job(id)
	if err != nil {
		return &api.Job{}
	}
	return j
}

// When a job fails (here node2 refuses prepare), the aborts are queued but
// the undelivered prepare of node1 stays pending: node1's next poll gets
// the prepare of a failed job together with its abort (handled
// concurrently by the agent, in any order).
func TestReviewFailedJobStillDeliversPrepare(t *testing.T) {
	cfg, pk := testConfig(t, "node1", "node2")
	d, addr := serveDirector(t, cfg, Options{PollTimeout: 300 * time.Millisecond})
	n1, n2 := clientAs(t, pk, pki.RoleAgent, "node1"), clientAs(t, pk, pki.RoleAgent, "node2")
	reviewPoll(t, n1, addr)
	reviewPoll(t, n2, addr)
	job, err := d.Start("p", "test")
	if err != nil {
		t.Fatal(err)
	}
	var prep api.Command
	for _, c := range reviewPoll(t, n2, addr) {
		if c.Kind == api.KindPrepare {
			prep = c
		}
	}
	if prep.ID == "" {
		t.Fatal("node2 got no prepare")
	}
	reviewPost(t, n2, "https://"+addr+api.PathReport, api.Report{Command: prep.ID, Job: prep.Job, Kind: prep.Kind, Error: "pre hook failed"}, nil)
	waitUntil(t, "the job to fail", func() bool { return reviewJob(d, job.ID).State == api.JobFailed })
	for _, c := range reviewPoll(t, n1, addr) {
		if c.Kind != api.KindAbort {
			t.Errorf("node1 is sent %s of job %s, which already failed (deadline %v from now)", c.Kind, c.Job, time.Until(c.Deadline).Round(time.Second))
		}
	}
}

// A director that stopped during a run marks the job failed on restart but
// tells no agent: the agents thaw by their deadlines, but what prepare took
// (an open PostgreSQL transaction and its psql, an etcd snapshot file) is
// only ever released by an upload or an abort, so it is kept forever.
func TestReviewRestartedDirectorAbortsInterruptedJob(t *testing.T) {
	cfg, pk := testConfig(t, "node1")
	d1, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// What a director killed during prepare leaves in its store.
	j := &api.Job{ID: newJobID(), Plan: "p", State: api.JobRunning, Phase: api.KindPrepare, Started: time.Now().UTC(),
		Nodes: map[string]*api.NodeResult{"node1": {Prepared: true}}}
	if err := d1.st.putJob(j); err != nil {
		t.Fatal(err)
	}
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	_, addr := serveDirector(t, cfg, Options{PollTimeout: 300 * time.Millisecond})
	n1 := clientAs(t, pk, pki.RoleAgent, "node1")
	var got []api.Command
	for range 3 {
		got = append(got, reviewPoll(t, n1, addr)...)
	}
	for _, c := range got {
		if c.Job == j.ID && c.Kind == api.KindAbort {
			return
		}
	}
	t.Errorf("the agent of the interrupted job %s was never told to abort (drop its snapshots): commands %+v", j.ID, got)
}

// The barrier must pass before the earliest ThawBy (here: the freeze
// deadline). When the deadline timer and the last prepare report are both
// ready (the report came late, or the director was busy fsyncing the job
// after the previous report), select picks at random and half the time the
// barrier "passes" after a node may already have thawed.
func TestReviewBarrierAcceptsReportAfterDeadline(t *testing.T) {
	cfg, _ := testConfig(t, "node1")
	d, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	passed := 0
	for range 20 {
		rn := &run{job: &api.Job{ID: "j", Nodes: map[string]*api.NodeResult{"node1": {}}}, plan: cfg.Plans["p"], reports: make(chan nodeReport, 1)}
		rn.reports <- nodeReport{"node1", api.Report{Command: "c", Job: "j", Kind: api.KindPrepare, OK: true}}
		deadline := time.Now().Add(-time.Millisecond) // the report is processed after the barrier deadline
		if d.await(context.Background(), rn, api.KindPrepare, []string{"node1"}, deadline, func(string, api.Report) {}) == nil {
			passed++
		}
	}
	if passed > 0 {
		t.Errorf("the barrier passed %d times out of 20 after its deadline", passed)
	}
}

// A daily (or weekly...) slot is missed while the director runs when two
// ticks are a little more than Tick apart (timer jitter, a slow tick, a
// dropped tick): LastScheduled is always over 24 h old for such schedules,
// so the window becomes (now-Tick, now] and the slot falls in the gap.
func TestReviewSchedulerMissesDailySlot(t *testing.T) {
	cfg, _ := testConfig(t, "node1")
	p := cfg.Plans["p"]
	p.Schedule = "0 3 * * *"
	cfg.Plans["p"] = p
	d, err := New(cfg, Options{Tick: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	slot := time.Date(2030, 5, 2, 3, 0, 0, 0, time.Local)
	if err := d.st.updatePlan("p", func(s *planState) { s.LastScheduled = slot.Add(-24 * time.Hour) }); err != nil {
		t.Fatal(err)
	}
	t1 := slot.Add(-10 * time.Millisecond)
	d.tick(t1)                                           // just before the slot: nothing due
	d.tick(t1.Add(20*time.Second + 20*time.Millisecond)) // the next tick, 20 ms late
	jobs, err := d.st.jobs(10)
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 1 {
		ps, _ := d.st.planState("p")
		t.Errorf("the 03:00 slot started %d jobs (last scheduled %v)", len(jobs), ps.LastScheduled)
	}
}

// The other side of the same window: for a schedule under 24 h the window
// starts at LastScheduled, so a director back after 3 h down replays every
// missed slot, one per tick, though "a slot missed while down is not run
// late".
func TestReviewSchedulerReplaysSlotsMissedWhileDown(t *testing.T) {
	cfg, _ := testConfig(t, "node1")
	p := cfg.Plans["p"]
	p.Schedule = "0 * * * *"
	cfg.Plans["p"] = p
	d, err := New(cfg, Options{Tick: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	down := time.Date(2030, 5, 2, 2, 0, 0, 0, time.Local)
	if err := d.st.updatePlan("p", func(s *planState) { s.LastScheduled = down }); err != nil {
		t.Fatal(err)
	}
	now := down.Add(3*time.Hour + 10*time.Minute) // back at 05:10
	for i := range 4 {
		d.tick(now.Add(time.Duration(i) * 20 * time.Second))
		waitUntil(t, "the run to end", func() bool { d.mu.Lock(); defer d.mu.Unlock(); return d.busy["p"] == "" })
	}
	jobs, _ := d.st.jobs(10)
	if len(jobs) > 1 {
		t.Errorf("slots missed while down started %d runs", len(jobs))
	}
}
