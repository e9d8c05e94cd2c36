package director

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	"bunker/internal/api"
	"bunker/internal/pki"
)

// Options tune a director; the zero value is production.
type Options struct {
	Log *slog.Logger
	// PollTimeout is how long an agent's poll waits for work (25 s).
	PollTimeout time.Duration
	// AgentGone: an agent that has not polled for this long is not
	// connected (60 s).
	AgentGone time.Duration
	// ThawGrace is how long after the freeze deadline the director waits
	// for thaw reports (30 s).
	ThawGrace time.Duration
	// Tick is the scheduler's period (20 s).
	Tick time.Duration
	// Bunker is the bunker binary that runs retention and copies (default:
	// this program).
	Bunker string
}

// Director is a running control plane.
type Director struct {
	cfg  *Config
	opts Options
	log  *slog.Logger
	st   *store
	// ca signs agent certificates at enrolment (nil: enrolment is off).
	ca *pki.CA

	mu     sync.Mutex
	agents map[string]*agentConn
	runs   map[string]*run // by job ID
	busy   map[string]string
	tried  map[string]time.Time // plan -> last RPO-triggered start
	// lastTick is the scheduler's previous tick: each tick starts the slots
	// after it, so none falls between two ticks.
	lastTick time.Time
	// rerun: plans whose run a restart cut before its barrier, to run
	// again once their agents are back (or, failing that, after
	// AgentGone), with when the director started.
	rerun   map[string]time.Time
	closing bool
	wg      sync.WaitGroup
}

// agentConn is what the director knows of one node's agent.
type agentConn struct {
	plans    []string
	lastSeen time.Time
	// pending are the commands sent and not yet reported. A poll returns
	// those never delivered, those delivered before it that the agent
	// does not list as taken (a lost answer), and again those delivered
	// long ago (a restarted agent, an agent that lists nothing): the agent
	// ignores those it already has.
	pending []*pendingCmd
	wake    chan struct{}
	// announced: its first poll was logged.
	announced bool
}

type pendingCmd struct {
	cmd       api.Command
	delivered time.Time
}

// Redeliver is how long a delivered, unreported command waits before a
// poll returns it again, when the poll does not show it lost.
const Redeliver = time.Minute

// lostAfter: a command delivered at least this long before a poll that
// does not list it as taken was lost on the way.
const lostAfter = time.Second

type run struct {
	job     *api.Job
	plan    Plan
	cancel  context.CancelFunc
	reports chan nodeReport
}

// nodeReport is a report with the node it came from (by its certificate).
type nodeReport struct {
	node string
	api.Report
}

// New opens the job store and prepares a director, and takes up the jobs
// a previous director left running. A run past its barrier (every node
// was frozen at once) resumes: it thaws everywhere again (a no-op where
// done), then waits for the uploads it had asked for, by their command
// IDs (an agent reports until delivered; it ignores a command it already
// took), and commits. A run cut before its barrier cannot be resumed (its
// instant is gone; the nodes thawed by their own deadlines): it is marked
// failed, every node is told to abort, and the plan runs again once its
// agents are back. An interrupted restore is marked failed.
func New(cfg *Config, opts Options) (*Director, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.PollTimeout <= 0 {
		opts.PollTimeout = 25 * time.Second
	}
	if opts.AgentGone <= 0 {
		opts.AgentGone = 60 * time.Second
	}
	if opts.ThawGrace <= 0 {
		opts.ThawGrace = 30 * time.Second
	}
	if opts.Tick <= 0 {
		opts.Tick = 20 * time.Second
	}
	if opts.Bunker == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		opts.Bunker = exe
	}
	var ca *pki.CA
	if cfg.Enrol != nil {
		var err error
		if ca, err = pki.LoadFiles(cfg.TLS.CA, cfg.Enrol.CAKey); err != nil {
			return nil, fmt.Errorf("enrol: %w", err)
		}
	}
	st, err := openStore(cfg.State)
	if err != nil {
		return nil, err
	}
	d := &Director{cfg: cfg, opts: opts, log: opts.Log, st: st, ca: ca, agents: map[string]*agentConn{}, runs: map[string]*run{},
		busy: map[string]string{}, tried: map[string]time.Time{}, rerun: map[string]time.Time{}}
	jobs, err := st.jobs(1 << 20)
	if err != nil {
		st.close()
		return nil, err
	}
	var resume []*api.Job
	for _, j := range jobs {
		if j.State != api.JobRunning {
			continue
		}
		p, ok := cfg.Plans[j.Plan]
		if ok && resumable(j, p) {
			resume = append(resume, j)
			continue
		}
		j.State, j.Error, j.Finished = api.JobFailed, "the director stopped during the run (phase "+j.Phase+"); nothing was recorded for it", time.Now()
		if ok && j.Kind == "" {
			d.rerun[j.Plan] = time.Now()
			j.Error += "; the plan runs again once its agents are back"
		}
		if err := st.putJob(j); err != nil {
			st.close()
			return nil, err
		}
		d.log.Warn("job interrupted by a director restart", "job", j.ID, "plan", j.Plan, "phase", j.Phase)
		// Each node drops what it took for the job (and thaws, if it has
		// not already by its own deadline).
		for n := range j.Nodes {
			d.send(n, api.Command{ID: newJobID(), Job: j.ID, Kind: api.KindAbort, Plans: p.Nodes[n]})
		}
	}
	d.mu.Lock()
	for _, j := range resume {
		d.log.Warn("resuming a job a director restart interrupted", "job", j.ID, "plan", j.Plan, "phase", j.Phase)
		delete(d.rerun, j.Plan)
		d.launch(j, cfg.Plans[j.Plan], j.Phase)
	}
	d.mu.Unlock()
	return d, nil
}

// Close waits for the runs to end (they are canceled) and closes the store.
func (d *Director) Close() error {
	d.mu.Lock()
	d.closing = true
	for _, r := range d.runs {
		r.cancel()
	}
	d.mu.Unlock()
	d.wg.Wait()
	return d.st.close()
}

// route is one API route and the role allowed on it.
type route struct {
	path, method, role string
	handler            http.HandlerFunc
}

// Routes lists every route with its policy (tests check that each one
// refuses the other roles).
func (d *Director) routes() []route {
	return []route{
		{api.PathPoll, http.MethodPost, pki.RoleAgent, d.handlePoll},
		{api.PathReport, http.MethodPost, pki.RoleAgent, d.handleReport},
		{api.PathPlans, http.MethodGet, pki.RoleOperator, d.handlePlans},
		{api.PathRun, http.MethodPost, pki.RoleOperator, d.handleRun},
		{api.PathJobs, http.MethodGet, pki.RoleOperator, d.handleJobs},
		{api.PathJob, http.MethodGet, pki.RoleOperator, d.handleJob},
		{api.PathCancel, http.MethodPost, pki.RoleOperator, d.handleCancel},
		{api.PathRestore, http.MethodPost, pki.RoleOperator, d.handleRestore},
		{api.PathEnrolToken, http.MethodPost, pki.RoleOperator, d.handleEnrolToken},
	}
}

// Handler serves the mutual-TLS API: each route checks the role of the
// client certificate before anything else.
func (d *Director) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range d.routes() {
		mux.HandleFunc(rt.path, func(w http.ResponseWriter, r *http.Request) {
			id, ok := pki.PeerIdentity(r)
			switch {
			case !ok:
				writeErr(w, http.StatusUnauthorized, "a client certificate of this deployment is required")
				return
			case id.Role != rt.role:
				d.log.Warn("refused: wrong role", "path", rt.path, "role", id.Role, "name", id.Name)
				writeErr(w, http.StatusForbidden, fmt.Sprintf("%s %s may not use %s", id.Role, id.Name, rt.path))
				return
			case r.Method != rt.method:
				writeErr(w, http.StatusMethodNotAllowed, "use "+rt.method)
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, api.MaxBody)
			rt.handler(w, r)
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, "no such route")
	})
	return mux
}

// HealthHandler serves /healthz and /readyz without authentication (for a
// separate, local listener).
func (d *Director) HealthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(api.PathHealthz, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc(api.PathReadyz, func(w http.ResponseWriter, r *http.Request) {
		if _, err := d.st.jobs(1); err != nil {
			http.Error(w, "job store: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	return mux
}

func writeErr(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(api.Error{Error: msg})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeErr(w, http.StatusBadRequest, "bad request body: "+err.Error())
		return false
	}
	return true
}

func (d *Director) handlePoll(w http.ResponseWriter, r *http.Request) {
	id, _ := pki.PeerIdentity(r)
	var p api.Poll
	if !decode(w, r, &p) {
		return
	}
	if p.Version != api.Version {
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("protocol version %d, this director speaks %d", p.Version, api.Version))
		return
	}
	if _, known := d.cfg.Nodes[id.Name]; !known {
		d.log.Warn("refused: unknown node", "node", id.Name)
		writeErr(w, http.StatusForbidden, "node "+id.Name+" is not in this director's configuration")
		return
	}
	if len(p.Plans) > 1000 || p.Taken != nil && len(*p.Taken) > 10000 {
		writeErr(w, http.StatusBadRequest, "too many plans or commands")
		return
	}
	d.mu.Lock()
	a := d.agents[id.Name]
	if a == nil {
		a = &agentConn{wake: make(chan struct{}, 1)}
		d.agents[id.Name] = a
	}
	if !a.announced {
		a.announced = true
		d.log.Info("agent connected", "node", id.Name, "plans", p.Plans)
	}
	a.plans, a.lastSeen = p.Plans, time.Now()
	d.mu.Unlock()

	// A command delivered before this poll came and not listed as taken
	// was lost on the way: an agent polls one at a time, again at once
	// only after an answer that came, and a second later at the earliest
	// after a failed poll. (Waiting that second also bounds the polls to
	// one a second should an agent not list a command it has.)
	arrived := time.Now()
	var taken map[string]bool
	if p.Taken != nil {
		taken = make(map[string]bool, len(*p.Taken))
		for _, id := range *p.Taken {
			taken[id] = true
		}
	}
	lost := func(pc *pendingCmd) bool {
		return taken != nil && !taken[pc.cmd.ID] && arrived.Sub(pc.delivered) >= lostAfter
	}
	timer := time.NewTimer(d.opts.PollTimeout)
	defer timer.Stop()
	for {
		d.mu.Lock()
		var cmds []api.Command
		now := time.Now()
		for _, pc := range a.pending {
			if pc.delivered.IsZero() || now.Sub(pc.delivered) > Redeliver || lost(pc) {
				pc.delivered = now
				cmds = append(cmds, pc.cmd)
			}
		}
		a.lastSeen = now
		d.mu.Unlock()
		if len(cmds) > 0 {
			writeJSON(w, api.PollResponse{Commands: cmds, ListsTaken: true})
			return
		}
		select {
		case <-a.wake:
		case <-timer.C:
			writeJSON(w, api.PollResponse{Commands: []api.Command{}, ListsTaken: true})
			return
		case <-r.Context().Done():
			return
		}
	}
}

func (d *Director) handleReport(w http.ResponseWriter, r *http.Request) {
	id, _ := pki.PeerIdentity(r)
	var rep api.Report
	if !decode(w, r, &rep) {
		return
	}
	d.mu.Lock()
	a := d.agents[id.Name]
	var rn *run
	found := false
	if a != nil {
		for i, pc := range a.pending {
			if c := pc.cmd; c.ID == rep.Command && c.Job == rep.Job && c.Kind == rep.Kind {
				a.pending = slices.Delete(a.pending, i, i+1)
				found = true
				break
			}
		}
		a.lastSeen = time.Now()
	}
	if found {
		rn = d.runs[rep.Job]
	}
	d.mu.Unlock()
	if !found {
		// Already reported (a retry after a lost answer), or never sent to
		// this node: nothing to do either way.
		d.log.Info("report for no pending command", "node", id.Name, "job", rep.Job, "command", rep.Command)
		writeJSON(w, struct{}{})
		return
	}
	if rn != nil {
		rn.reports <- nodeReport{id.Name, rep}
	}
	writeJSON(w, struct{}{})
}

func (d *Director) handlePlans(w http.ResponseWriter, r *http.Request) {
	var out []api.Plan
	for _, name := range sortedKeys(d.cfg.Plans) {
		p := d.cfg.Plans[name]
		ap := api.Plan{Name: name, Nodes: p.Nodes, Schedule: p.Schedule, Connected: []string{}}
		if p.RPO != 0 {
			ap.RPO = time.Duration(p.RPO).String()
		}
		if ps, err := d.st.planState(name); err == nil && !ps.LastSuccess.IsZero() {
			t := ps.LastSuccess
			ap.LastSuccess = &t
		}
		d.mu.Lock()
		for _, n := range sortedKeys(p.Nodes) {
			if d.connected(n) {
				ap.Connected = append(ap.Connected, n)
			}
		}
		d.mu.Unlock()
		out = append(out, ap)
	}
	// Written with no lock held: a slow client never stalls the agents.
	writeJSON(w, out)
}

// notReady lists the nodes (of need: node -> agent plans) whose agent is
// not connected or lacks one of the plans.
func (d *Director) notReady(need map[string][]string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var missing []string
	for _, n := range sortedKeys(need) {
		if !d.connected(n) {
			missing = append(missing, n)
			continue
		}
		for _, p := range need[n] {
			if !slices.Contains(d.agents[n].plans, p) {
				missing = append(missing, fmt.Sprintf("%s (its agent has no plan %q)", n, p))
			}
		}
	}
	return missing
}

// connected reports whether a node's agent polled recently. d.mu is held.
func (d *Director) connected(node string) bool {
	a := d.agents[node]
	return a != nil && time.Since(a.lastSeen) < d.opts.AgentGone
}

func (d *Director) handleRun(w http.ResponseWriter, r *http.Request) {
	var req api.RunRequest
	if !decode(w, r, &req) {
		return
	}
	job, err := d.Start(req.Plan, "operator")
	writeStarted(w, job, err)
}

// writeStarted answers a request that started a job: the job, or 404 for
// an unknown plan or group, 409 for a request that cannot run now.
func writeStarted(w http.ResponseWriter, job *api.Job, err error) {
	switch {
	case errors.Is(err, errUnknownPlan):
		writeErr(w, http.StatusNotFound, err.Error())
	case err != nil:
		writeErr(w, http.StatusConflict, err.Error())
	default:
		writeJSON(w, job)
	}
}

func (d *Director) handleRestore(w http.ResponseWriter, r *http.Request) {
	var req api.RestoreRequest
	if !decode(w, r, &req) {
		return
	}
	job, err := d.StartRestore(req)
	writeStarted(w, job, err)
}

func (d *Director) handleJobs(w http.ResponseWriter, r *http.Request) {
	jobs, err := d.st.jobs(100)
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	if jobs == nil {
		jobs = []*api.Job{}
	}
	writeJSON(w, jobs)
}

func (d *Director) handleJob(w http.ResponseWriter, r *http.Request) {
	j, err := d.st.job(r.URL.Query().Get("id"))
	if errors.Is(err, ErrNoJob) {
		writeErr(w, http.StatusNotFound, "no such job")
		return
	}
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, j)
}

func (d *Director) handleCancel(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	d.mu.Lock()
	rn := d.runs[id]
	if rn != nil {
		rn.cancel()
	}
	d.mu.Unlock()
	if rn == nil {
		writeErr(w, http.StatusNotFound, "no running job "+id)
		return
	}
	writeJSON(w, struct{}{})
}

var errUnknownPlan = errors.New("unknown plan")

// Start begins a run of a plan unless one is running.
func (d *Director) Start(plan, why string) (*api.Job, error) {
	p, ok := d.cfg.Plans[plan]
	if !ok {
		return nil, fmt.Errorf("%w %q", errUnknownPlan, plan)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		return nil, errors.New("the director is stopping")
	}
	if j := d.busy[plan]; j != "" {
		return nil, fmt.Errorf("plan %s is already running (job %s)", plan, j)
	}
	job := &api.Job{ID: newJobID(), Plan: plan, State: api.JobRunning, Phase: "start", Started: time.Now().UTC(), Nodes: map[string]*api.NodeResult{}}
	for n, plans := range p.Nodes {
		job.Nodes[n] = &api.NodeResult{Plans: slices.Clone(plans)}
	}
	if err := d.st.putJob(job); err != nil {
		return nil, err
	}
	d.log.Info("job started", "job", job.ID, "plan", plan, "by", why)
	d.launch(job, p, "")
	return copyJob(job), nil
}

// launch runs a job from a phase ("" for the start) in the background
// (d.mu held).
func (d *Director) launch(job *api.Job, p Plan, from string) {
	ctx, cancel := context.WithCancel(context.Background())
	rn := &run{job: job, plan: p, cancel: cancel, reports: make(chan nodeReport, 4*len(p.Nodes)+4)}
	d.runs[job.ID] = rn
	d.busy[job.Plan] = job.ID
	d.wg.Go(func() {
		defer cancel()
		d.execute(ctx, rn, from)
		d.mu.Lock()
		delete(d.runs, job.ID)
		delete(d.busy, job.Plan)
		d.mu.Unlock()
	})
}

// resumable: a backup job a restart cut past its barrier, whose nodes and
// their plans are still the plan's (a resumed run must not meet a changed
// configuration), and whose unfinished uploads are known by their command
// IDs (asking again under a new ID could upload twice).
func resumable(j *api.Job, p Plan) bool {
	if j.Kind != "" || (j.Phase != api.KindThaw && j.Phase != api.KindUpload) || len(j.Nodes) != len(p.Nodes) {
		return false
	}
	for n, plans := range p.Nodes {
		r := j.Nodes[n]
		if r == nil || !slices.Equal(r.Plans, plans) {
			return false
		}
		if j.Phase == api.KindUpload && len(r.Snapshots) == 0 && r.UploadCommand == "" {
			return false
		}
	}
	return true
}

// copyJob copies a job deeply enough to be read (encoded, stored) while
// its run goes on changing the original under d.mu.
func copyJob(j *api.Job) *api.Job {
	c := *j
	c.Nodes = make(map[string]*api.NodeResult, len(j.Nodes))
	for n, r := range j.Nodes {
		rc := *r
		rc.Snapshots = maps.Clone(r.Snapshots)
		c.Nodes[n] = &rc
	}
	c.Followups = maps.Clone(j.Followups)
	return &c
}

func newJobID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b[:])
}

// send queues a command for a node and wakes its poll.
func (d *Director) send(node string, c api.Command) {
	d.mu.Lock()
	a := d.agents[node]
	if a == nil {
		a = &agentConn{wake: make(chan struct{}, 1)}
		d.agents[node] = a
	}
	a.pending = append(a.pending, &pendingCmd{cmd: c})
	d.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// hasPending: a command to one of the nodes is not reported yet.
func (d *Director) hasPending(nodes map[string][]string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for n := range nodes {
		if a := d.agents[n]; a != nil && len(a.pending) > 0 {
			return true
		}
	}
	return false
}

// dropPending forgets the commands of a job not yet reported.
func (d *Director) dropPending(job string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, a := range d.agents {
		a.pending = slices.DeleteFunc(a.pending, func(pc *pendingCmd) bool { return pc.cmd.Job == job })
	}
}

func (d *Director) save(rn *run) {
	d.mu.Lock()
	j := copyJob(rn.job)
	d.mu.Unlock()
	if err := d.st.putJob(j); err != nil {
		d.log.Error("job store", "job", j.ID, "err", err)
	}
}

// execute runs one job: prepare everywhere, barrier, thaw everywhere,
// upload, commit. A node that fails or does not answer in time fails the
// whole run; every node is then told to abort (thaw and drop), and thaws
// by its own deadline anyway.
func (d *Director) execute(ctx context.Context, rn *run, from string) {
	job := rn.job
	nodes := sortedKeys(rn.plan.Nodes)
	fail := func(phase, format string, args ...any) {
		d.mu.Lock()
		if d.closing && ctx.Err() != nil {
			// The director is stopping, not the job: it stays stored as
			// running, for the next director to resume or run again.
			d.mu.Unlock()
			d.log.Info("job left to the next director", "job", job.ID, "plan", job.Plan, "phase", job.Phase)
			return
		}
		job.State, job.Error, job.Finished = api.JobFailed, fmt.Sprintf(format, args...), time.Now().UTC()
		if ctx.Err() != nil && phase != "" {
			job.State = api.JobCanceled
		}
		d.mu.Unlock()
		// Nothing more of this job may reach a node (a late prepare would
		// freeze it for nothing), only the abort; it stays queued until
		// the node reports it, however long it is away.
		d.dropPending(job.ID)
		for _, n := range nodes {
			d.send(n, api.Command{ID: newJobID(), Job: job.ID, Kind: api.KindAbort, Plans: rn.plan.Nodes[n]})
		}
		d.save(rn)
		d.log.Warn("job failed", "job", job.ID, "plan", job.Plan, "phase", phase, "error", job.Error)
	}
	setPhase := func(p string) {
		d.mu.Lock()
		job.Phase = p
		d.mu.Unlock()
		d.save(rn)
	}

	var thawBy time.Time
	switch from {
	case "":
		if missing := d.notReady(rn.plan.Nodes); len(missing) > 0 {
			fail("start", "nodes not ready: %v", missing)
			return
		}
		// Prepare, in parallel, bounded by the freeze timeout.
		setPhase(api.KindPrepare)
		freeze := rn.plan.FreezeTimeout.D(DefaultFreezeTimeout)
		deadline := time.Now().Add(freeze)
		for _, n := range nodes {
			d.send(n, api.Command{ID: newJobID(), Job: job.ID, Kind: api.KindPrepare, Plans: rn.plan.Nodes[n], Deadline: deadline})
		}
		if err := d.await(ctx, rn, api.KindPrepare, nodes, deadline, func(n string, r api.Report) { job.Nodes[n].Prepared = true }); err != nil {
			fail(api.KindPrepare, "prepare: %v", err)
			return
		}
		thawBy = deadline.Add(d.opts.ThawGrace)
	case api.KindThaw:
		// Resumed: the agents must reconnect first.
		thawBy = time.Now().Add(d.opts.AgentGone + d.opts.ThawGrace)
	}

	if from != api.KindUpload {
		// Barrier passed: every node is frozen at once. Thaw everywhere.
		setPhase(api.KindThaw)
		for _, n := range nodes {
			d.send(n, api.Command{ID: newJobID(), Job: job.ID, Kind: api.KindThaw, Plans: rn.plan.Nodes[n]})
		}
		if err := d.await(ctx, rn, api.KindThaw, nodes, thawBy, func(n string, r api.Report) { job.Nodes[n].Thawed = true }); err != nil {
			fail(api.KindThaw, "thaw: %v", err)
			return
		}
	}

	// Upload from what prepare took, while the services run. Each upload
	// command's ID is stored first: a restarted director waits for the
	// same command's report rather than ask for a second upload.
	tags := []string{"group:" + job.ID, "plan:" + job.Plan}
	var uploading []string
	d.mu.Lock()
	job.Phase = api.KindUpload
	for _, n := range nodes {
		if len(job.Nodes[n].Snapshots) > 0 {
			continue // reported before a restart
		}
		if job.Nodes[n].UploadCommand == "" {
			job.Nodes[n].UploadCommand = newJobID()
		}
		uploading = append(uploading, n)
	}
	d.mu.Unlock()
	d.save(rn)
	for _, n := range uploading {
		d.send(n, api.Command{ID: job.Nodes[n].UploadCommand, Job: job.ID, Kind: api.KindUpload, Plans: rn.plan.Nodes[n], Tags: tags})
	}
	if err := d.await(ctx, rn, api.KindUpload, uploading, time.Time{}, func(n string, r api.Report) { job.Nodes[n].Snapshots = r.Snapshots }); err != nil {
		fail(api.KindUpload, "upload: %v", err)
		return
	}

	// Commit: the group is recorded only now that every part is stored.
	d.mu.Lock()
	job.Phase, job.State, job.Finished = "commit", api.JobSucceeded, time.Now().UTC()
	d.mu.Unlock()
	d.save(rn)
	if err := d.st.updatePlan(job.Plan, func(ps *planState) { ps.LastSuccess = job.Finished }); err != nil {
		d.log.Error("job store", "err", err)
	}
	d.log.Info("group committed", "job", job.ID, "plan", job.Plan)
	d.afterCommit(ctx, rn)
}

// await collects one report of kind from every node, until deadline (zero:
// none) or ctx ends. The first failure ends the wait.
func (d *Director) await(ctx context.Context, rn *run, kind string, nodes []string, deadline time.Time, ok func(node string, r api.Report)) error {
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timeout = t.C
	}
	waiting := map[string]bool{}
	for _, n := range nodes {
		waiting[n] = true
	}
	for len(waiting) > 0 {
		select {
		case nr := <-rn.reports:
			node, r := nr.node, nr.Report
			if r.Kind != kind || !waiting[node] {
				continue
			}
			if !r.OK {
				d.mu.Lock()
				rn.job.Nodes[node].Error = r.Error
				d.mu.Unlock()
				return fmt.Errorf("node %s: %s", node, r.Error)
			}
			if kind == api.KindPrepare && !deadline.IsZero() && !time.Now().Before(deadline.Add(-barrierMargin)) {
				// Too late: a node may have thawed by its own deadline.
				return fmt.Errorf("node %s prepared too late for the barrier", node)
			}
			if kind == api.KindPrepare && !r.ThawBy.IsZero() && r.ThawBy.Before(deadline) {
				// This node thaws before the others must be frozen: the
				// group would not be one instant.
				deadline = r.ThawBy
				if t := time.Until(deadline); t > 0 {
					tm := time.NewTimer(t)
					defer tm.Stop()
					timeout = tm.C
				} else {
					return fmt.Errorf("node %s thaws by its own deadline before the barrier", node)
				}
			}
			d.mu.Lock()
			ok(node, r)
			d.mu.Unlock()
			delete(waiting, node)
			d.save(rn)
		case <-timeout:
			var late []string
			for n := range waiting {
				late = append(late, n)
			}
			sort.Strings(late)
			return fmt.Errorf("no answer in time from %v", late)
		case <-ctx.Done():
			return errors.New("canceled")
		}
	}
	return nil
}

// barrierMargin is kept between the barrier and the earliest moment a node
// thaws by itself: it covers clock differences between the director and
// the nodes (which must run NTP) and the thaw command's way.
const barrierMargin = 250 * time.Millisecond

// Schedule runs the plans' schedules and RPO targets until ctx ends.
func (d *Director) Schedule(ctx context.Context) {
	t := time.NewTicker(d.opts.Tick)
	defer t.Stop()
	for {
		d.tick(time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (d *Director) tick(now time.Time) {
	defer func() { d.lastTick = now }()
	for _, name := range sortedKeys(d.rerun) {
		// Ready: the agents are back and have taken the aborts of the cut
		// run (a prepare racing its abort would find the plan frozen).
		ready := len(d.notReady(d.cfg.Plans[name].Nodes)) == 0 && !d.hasPending(d.cfg.Plans[name].Nodes)
		if !ready && now.Sub(d.rerun[name]) < d.opts.AgentGone {
			continue
		}
		delete(d.rerun, name)
		if _, err := d.Start(name, "rerun after a director restart"); err != nil {
			d.log.Warn("rerun not started", "plan", name, "err", err)
		}
	}
	for _, name := range sortedKeys(d.cfg.Plans) {
		p := d.cfg.Plans[name]
		ps, err := d.st.planState(name)
		if err != nil {
			d.log.Error("job store", "err", err)
			return
		}
		if p.Schedule != "" {
			sched, err := ParseSchedule(p.Schedule)
			if err != nil {
				continue
			}
			// From the previous tick (or, at the first one, one period
			// back: a slot missed while down is not run late), never
			// before the last slot started.
			from := d.lastTick
			if from.IsZero() {
				from = now.Add(-d.opts.Tick)
			}
			if ps.LastScheduled.After(from) {
				from = ps.LastScheduled
			}
			if next := sched.Next(from); !next.After(now) {
				_ = d.st.updatePlan(name, func(s *planState) { s.LastScheduled = next })
				if _, err := d.Start(name, "schedule"); err != nil {
					d.log.Warn("scheduled run not started", "plan", name, "err", err)
				}
				continue
			}
		}
		if rpo := time.Duration(p.RPO); rpo > 0 && now.Sub(ps.LastSuccess) > rpo {
			d.mu.Lock()
			last := d.tried[name]
			due := now.Sub(last) > max(rpo/4, 5*time.Minute) && d.busy[name] == ""
			if due {
				d.tried[name] = now
			}
			d.mu.Unlock()
			if due {
				if _, err := d.Start(name, "rpo"); err != nil {
					d.log.Warn("rpo run not started", "plan", name, "err", err)
				}
			}
		}
	}
}

// Serve runs the API on ln with the TLS configuration of the config's
// files until ctx ends.
func (d *Director) Serve(ctx context.Context, ln net.Listener) error {
	caPEM, err := pki.ReadCA(d.cfg.TLS.CA)
	if err != nil {
		return err
	}
	revoked, err := pki.NewRevocations(d.cfg.TLS.Revoked...)
	if err != nil {
		return err
	}
	tlsCfg, err := pki.ServerTLS(caPEM, d.cfg.TLS.Cert, d.cfg.TLS.Key, revoked, pki.RoleAgent, pki.RoleOperator)
	if err != nil {
		return err
	}
	return d.serveTLS(ctx, ln, d.Handler(), tlsCfg, 64<<10)
}

// serveTLS serves h over TLS on ln until ctx ends, then shuts down.
func (d *Director) serveTLS(ctx context.Context, ln net.Listener, h http.Handler, tlsCfg *tls.Config, maxHeader int) error {
	srv := &http.Server{Handler: h, TLSConfig: tlsCfg, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: maxHeader,
		ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelDebug)}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
