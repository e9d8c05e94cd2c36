package director

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"time"

	"bunker/internal/api"
	"bunker/internal/conf"
	"bunker/internal/policy"
	"bunker/internal/snapshot"
)

// afterCommit runs, once a group is committed, the plan's retention on its
// repository and its off-site copy. Their outcome is recorded in the job
// (Followups); they never undo the commit.
func (d *Director) afterCommit(ctx context.Context, rn *run) {
	p := rn.plan
	note := func(what, msg string) {
		d.mu.Lock()
		if rn.job.Followups == nil {
			rn.job.Followups = map[string]string{}
		}
		rn.job.Followups[what] = msg
		d.mu.Unlock()
		d.save(rn)
		d.log.Info(what, "job", rn.job.ID, "plan", rn.job.Plan, "result", msg)
	}
	if pol, err := p.Retention.Policy(); err == nil && !pol.IsEmpty() {
		msg, err := d.retention(ctx, rn.job.Plan, p, pol)
		if err != nil {
			msg = "failed: " + err.Error()
		}
		note("retention", msg)
	}
	if p.CopyTo != "" {
		msg, err := d.offsiteCopy(ctx, rn.job.Plan, p)
		if err != nil {
			msg = "failed: " + err.Error()
		}
		note("copy", msg)
	}
}

// retention applies the plan's policy to its groups, not to each node's
// snapshots: a group is kept or removed whole, so every kept instant is
// still one instant on every node. The snapshots of failed runs (parts of
// groups that never committed) go too.
func (d *Director) retention(ctx context.Context, plan string, p Plan, pol policy.Policy) (string, error) {
	jobs, err := d.st.jobs(1 << 20)
	if err != nil {
		return "", err
	}
	var groups []*snapshot.Snapshot
	byTime := map[*snapshot.Snapshot]*api.Job{}
	var orphans []*api.Job
	for _, j := range jobs {
		if j.Plan != plan || j.Kind != "" || j.Forgotten {
			continue
		}
		switch j.State {
		case api.JobSucceeded:
			sn := &snapshot.Snapshot{Time: j.Started, Hostname: plan, Paths: []string{"/" + plan}}
			groups = append(groups, sn)
			byTime[sn] = j
		case api.JobFailed, api.JobCanceled:
			orphans = append(orphans, j)
		}
	}
	sort.Slice(groups, func(i, k int) bool { return groups[i].Time.Before(groups[k].Time) })
	decisions, err := policy.Apply(groups, pol, time.Local, time.Now(), 0, "")
	if err != nil {
		return "", err
	}
	var drop []*api.Job
	for _, dec := range decisions {
		if !dec.Keep {
			drop = append(drop, byTime[dec.Snapshot])
		}
	}
	drop = append(drop, orphans...)
	var ids []string
	for _, j := range drop {
		for _, n := range sortedKeys(j.Nodes) {
			for _, id := range j.Nodes[n].Snapshots {
				ids = append(ids, id)
			}
		}
	}
	if len(ids) > 0 {
		repo := d.cfg.Repositories[p.Repository]
		if _, err := d.bunker(ctx, repo, append([]string{"forget", "--prune"}, ids...)...); err != nil {
			return "", err
		}
	}
	for _, j := range drop {
		j.Forgotten = true
		if err := d.st.putJob(j); err != nil {
			return "", err
		}
	}
	return fmt.Sprintf("kept %d groups, removed %d groups and %d parts of failed runs (%d snapshots)", len(decisions)-(len(drop)-len(orphans)),
		len(drop)-len(orphans), len(orphans), len(ids)), nil
}

// offsiteCopy copies the plan's snapshots to its copy_to repository.
func (d *Director) offsiteCopy(ctx context.Context, plan string, p Plan) (string, error) {
	from, to := d.cfg.Repositories[p.Repository], d.cfg.Repositories[p.CopyTo]
	args := []string{"copy", "--json", "--tag", "plan:" + plan,
		"--from-repo", from.Location, "--from-password-file", from.PasswordFile}
	if from.CredentialsFile != "" {
		args = append(args, "--from-credentials-file", from.CredentialsFile)
	}
	if from.CACert != "" {
		args = append(args, "--from-cacert", from.CACert)
	}
	// The target's location, password and credentials come through the
	// environment, as for any command on it.
	out, err := d.bunker(ctx, to, args...)
	if err != nil {
		return "", err
	}
	var sum struct {
		Copied   []any   `json:"snapshots_copied"`
		Present  int     `json:"snapshots_present"`
		LagAfter float64 `json:"lag_after_seconds"`
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		_ = json.Unmarshal(sc.Bytes(), &sum)
	}
	return fmt.Sprintf("copied %d snapshots (%d already there); lag %s", len(sum.Copied), sum.Present,
		(time.Duration(sum.LagAfter) * time.Second).String()), nil
}

// bunker runs the bunker binary on repository r (its location, password
// file, CA and storage credentials go through the environment) and returns
// its standard output.
func (d *Director) bunker(ctx context.Context, r Repository, args ...string) ([]byte, error) {
	env, err := conf.RepositoryEnv(r.Location, r.PasswordFile, r.CACert, r.CredentialsFile)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, d.opts.Bunker, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("bunker %s: %v: %s", args[0], err, lastLine(stderr.String()))
	}
	return stdout.Bytes(), nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}
