package director

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"bunker/internal/api"
)

// restoreTarget is one node's part of a restore: through the agent of
// node, the snapshots of plans.
type restoreTarget struct {
	from      string
	snapshots map[string]string
}

// StartRestore restores (part of) a group that a backup job committed,
// through the agents of its nodes or of the nodes req.Map names.
func (d *Director) StartRestore(req api.RestoreRequest) (*api.Job, error) {
	p, ok := d.cfg.Plans[req.Plan]
	if !ok {
		return nil, fmt.Errorf("%w %q", errUnknownPlan, req.Plan)
	}
	group, err := d.st.job(req.Group)
	if errors.Is(err, ErrNoJob) {
		return nil, fmt.Errorf("%w: no group %q", errUnknownPlan, req.Group)
	}
	if err != nil {
		return nil, err
	}
	if group.Plan != req.Plan || group.Kind != "" || group.State != api.JobSucceeded {
		return nil, fmt.Errorf("job %s is not a committed group of plan %s", req.Group, req.Plan)
	}
	for _, n := range req.Nodes {
		if _, ok := group.Nodes[n]; !ok {
			return nil, fmt.Errorf("node %s is not in group %s", n, req.Group)
		}
	}
	targets := map[string]restoreTarget{}
	for n, res := range group.Nodes {
		if len(req.Nodes) > 0 && !slices.Contains(req.Nodes, n) {
			continue
		}
		to := n
		if m, ok := req.Map[n]; ok {
			to = m
		}
		if _, ok := d.cfg.Nodes[to]; !ok {
			return nil, fmt.Errorf("unknown node %q to restore %s to", to, n)
		}
		if _, dup := targets[to]; dup {
			return nil, fmt.Errorf("two nodes map to %s", to)
		}
		targets[to] = restoreTarget{from: n, snapshots: res.Snapshots}
	}
	for from := range req.Map {
		if _, ok := group.Nodes[from]; !ok {
			return nil, fmt.Errorf("--map names %s, which is not in group %s", from, req.Group)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		return nil, errors.New("the director is stopping")
	}
	if j := d.busy[req.Plan]; j != "" {
		return nil, fmt.Errorf("plan %s is busy (job %s)", req.Plan, j)
	}
	job := &api.Job{ID: newJobID(), Kind: "restore", Group: req.Group, Plan: req.Plan, State: api.JobRunning, Phase: api.KindRestore,
		Started: time.Now().UTC(), Nodes: map[string]*api.NodeResult{}}
	for to, t := range targets {
		job.Nodes[to] = &api.NodeResult{Snapshots: t.snapshots}
	}
	if err := d.st.putJob(job); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	rn := &run{job: job, plan: p, cancel: cancel, reports: make(chan nodeReport, 4*len(targets)+4)}
	d.runs[job.ID], d.busy[req.Plan] = rn, job.ID
	d.log.Info("restore started", "job", job.ID, "plan", req.Plan, "group", req.Group)
	snapshot := copyJob(job)
	d.wg.Go(func() {
		defer cancel()
		d.executeRestore(ctx, rn, targets, req.Includes)
		d.mu.Lock()
		delete(d.runs, job.ID)
		delete(d.busy, req.Plan)
		d.mu.Unlock()
	})
	return snapshot, nil
}

func (d *Director) executeRestore(ctx context.Context, rn *run, targets map[string]restoreTarget, includes []string) {
	job := rn.job
	nodes := make([]string, 0, len(targets))
	for n := range targets {
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	finish := func(state, msg string) {
		d.mu.Lock()
		job.State, job.Error, job.Finished = state, msg, time.Now().UTC()
		d.mu.Unlock()
		d.save(rn)
		d.log.Info("restore ended", "job", job.ID, "state", state, "error", msg)
	}
	need := map[string][]string{}
	for _, n := range nodes {
		for p := range targets[n].snapshots {
			need[n] = append(need[n], p)
		}
		slices.Sort(need[n])
	}
	missing := d.notReady(need)
	if len(missing) > 0 {
		finish(api.JobFailed, fmt.Sprintf("nodes not ready: %v", missing))
		return
	}
	for _, n := range nodes {
		d.send(n, api.Command{ID: newJobID(), Job: job.ID, Kind: api.KindRestore, Plans: need[n], Snapshots: targets[n].snapshots, Includes: includes})
	}
	err := d.await(ctx, rn, api.KindRestore, nodes, time.Time{}, func(n string, r api.Report) {})
	switch {
	case err != nil && ctx.Err() != nil:
		d.dropPending(job.ID)
		finish(api.JobCanceled, "canceled")
	case err != nil:
		finish(api.JobFailed, "restore: "+err.Error())
	default:
		finish(api.JobSucceeded, "")
	}
}
