package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"bunker/internal/api"
	"bunker/internal/conf"
	"bunker/internal/pki"
)

// Options tune an agent; the zero value is production.
type Options struct {
	Log *slog.Logger
	// Bunker is the bunker binary that uploads (default: this program).
	Bunker string
	// PollTimeout bounds one poll on the client side (director's + 15 s).
	PollTimeout time.Duration
	// StateDir holds what prepare takes until it is uploaded (etcd
	// snapshots); default a directory under the system's temporary one.
	StateDir string
}

// Agent is a running agent.
type Agent struct {
	cfg    *Config
	opts   Options
	log    *slog.Logger
	client *http.Client
	base   string

	mu   sync.Mutex
	seen map[string]bool // command IDs taken
	// reported keeps each command's report: when the director asks again
	// for a command already taken (it lost the report, or restarted), the
	// report is sent again instead of running the command twice.
	reported map[string]sentReport
	// open are the commands taken whose report the director has not
	// acknowledged yet; each poll lists them, so that the director sends
	// again at once a command whose answer was lost on the way.
	open map[string]bool
	jobs map[string]*jobState // by job ID
	// done lists jobs this agent finished or aborted: later commands for
	// them (a late prepare) are refused.
	done map[string]bool
	// frozenBy maps each frozen plan to the job that froze it: two jobs
	// never share one freeze.
	frozenBy map[string]string
	wg       sync.WaitGroup
}

type sentReport struct {
	rep api.Report
	at  time.Time
}

// StateTTL: what prepare took (an open PostgreSQL transaction, an etcd
// snapshot file) is dropped this long after the thaw if no upload or
// abort came for it.
var StateTTL = time.Hour

// idRE is the form of the director's job and command IDs; anything else
// is refused before it is used (in file names, for one).
var idRE = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}-[0-9a-f]{8}$`)

// jobState is this node's part of one job.
type jobState struct {
	id string
	// cmd serialises the commands of one job: an abort waits for the
	// prepare it cancels to end, then undoes it.
	cmd    sync.Mutex
	mu     sync.Mutex
	plans  []string
	frozen bool // pre hooks ran, post hooks not yet
	timer  *time.Timer
	// files holds, per plan, what prepare took (an etcd snapshot); pg the
	// open PostgreSQL snapshots.
	files map[string]string
	pg    map[string]*pgSnapshot
	// held is what the job holds (paused containers, frozen filesystems,
	// snapshots), as written to its journal; snaps the snapshot per plan.
	// held is guarded by holdMu (not mu: the deadline thaws frozen
	// filesystems without waiting for a step in progress).
	holdMu sync.Mutex
	held   held
	snaps  map[string]*fsSnapshot
	// prepared: the prepare succeeded (an upload needs it).
	prepared bool
	// uploading is set while an upload runs (the state must stay).
	uploading bool
}

// New prepares an agent from its configuration.
// newAgent returns an agent with empty state that talks to the director at
// base through client (the tests give a plain HTTP one).
func newAgent(cfg *Config, opts Options, client *http.Client, base string) *Agent {
	return &Agent{cfg: cfg, opts: opts, log: opts.Log, client: client, base: base,
		seen: map[string]bool{}, jobs: map[string]*jobState{}, done: map[string]bool{},
		frozenBy: map[string]string{}, reported: map[string]sentReport{}, open: map[string]bool{}}
}

func New(cfg *Config, opts Options) (*Agent, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Bunker == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		opts.Bunker = exe
	}
	if opts.PollTimeout <= 0 {
		opts.PollTimeout = 40 * time.Second
	}
	if opts.StateDir == "" {
		opts.StateDir = cfg.StateDir
	}
	if opts.StateDir == "" {
		opts.StateDir = filepath.Join("/var/lib/bunker", "agent-"+cfg.Name)
	}
	if err := privateDir(opts.StateDir); err != nil {
		return nil, err
	}
	// What an earlier run of the agent took and never uploaded.
	if old, err := filepath.Glob(filepath.Join(opts.StateDir, "*.etcd")); err == nil {
		for _, f := range old {
			os.Remove(f)
		}
	}
	caPEM, err := pki.ReadCA(cfg.TLS.CA)
	if err != nil {
		return nil, err
	}
	tlsCfg, err := pki.ClientTLS(caPEM, cfg.TLS.Cert, cfg.TLS.Key)
	if err != nil {
		return nil, err
	}
	// The certificate names the node: refuse to start as anyone else.
	certPEM, err := os.ReadFile(cfg.TLS.Cert)
	if err != nil {
		return nil, err
	}
	cert, err := pki.ParseCert(certPEM)
	if err != nil {
		return nil, err
	}
	id, err := pki.IdentityOf(cert)
	if err != nil || id.Role != pki.RoleAgent || id.Name != cfg.Name {
		return nil, fmt.Errorf("%s is not the agent certificate of %q (it names %s %s)", cfg.TLS.Cert, cfg.Name, id.Role, id.Name)
	}
	tr := &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true, ResponseHeaderTimeout: opts.PollTimeout, IdleConnTimeout: time.Minute}
	a := newAgent(cfg, opts, &http.Client{Transport: tr, Timeout: opts.PollTimeout + 5*time.Second}, strings.TrimSuffix(cfg.Director, "/"))
	if os.Geteuid() != 0 {
		for _, name := range slices.Sorted(maps.Keys(cfg.Plans)) {
			if p := cfg.Plans[name]; p.Snapshot != nil || len(p.FSFreeze) > 0 {
				return nil, fmt.Errorf("plan %s: snapshots and fsfreeze need the agent to run as root", name)
			}
		}
	}
	// A previous run of the agent killed while it held containers paused,
	// filesystems frozen or snapshots: release them before anything else.
	rctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	a.recoverJournals(rctx)
	cancel()
	return a, nil
}

// privateDir makes dir (mode 0700) or checks that it is a directory of this
// user that nobody else may write: snapshots wait there for their upload.
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Geteuid() || fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("state directory %s must be a directory of this user with mode 0700 (it is %v, owner %d)", dir, fi.Mode(), st.Uid)
	}
	return nil
}

// Run polls the director for work until ctx ends, reconnecting with
// backoff. On return every frozen job has been thawed.
func (a *Agent) Run(ctx context.Context) error {
	defer a.thawAll()
	plans := make([]string, 0, len(a.cfg.Plans))
	for p := range a.cfg.Plans {
		plans = append(plans, p)
	}
	slices.Sort(plans)
	a.wg.Go(func() {
		t := time.NewTicker(JournalRetry)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				a.recoverJournals(ctx)
			}
		}
	})
	backoff := time.Second
	// listTaken: the director asked for the list of taken commands (one
	// that does not know the field refuses a poll that has it).
	listTaken := false
	for ctx.Err() == nil {
		var resp api.PollResponse
		poll := api.Poll{Version: api.Version, Plans: plans}
		if listTaken {
			a.mu.Lock()
			taken := slices.AppendSeq(make([]string, 0, len(a.open)), maps.Keys(a.open))
			a.mu.Unlock()
			slices.Sort(taken)
			poll.Taken = &taken
		}
		err := a.call(ctx, api.PathPoll, poll, &resp)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			var refused *errDirector
			if errors.As(err, &refused) {
				// Perhaps another director now, which does not take the
				// list: poll without it until asked for it again.
				listTaken = false
			}
			a.log.Warn("director unreachable; retrying", "err", err, "in", backoff)
			select {
			case <-ctx.Done():
			case <-time.After(backoff + rand.N(backoff/2+1)):
			}
			backoff = min(backoff*2, 30*time.Second)
			continue
		}
		backoff = time.Second
		listTaken = resp.ListsTaken
		for _, c := range resp.Commands {
			a.mu.Lock()
			taken := a.seen[c.ID]
			a.seen[c.ID] = true
			running := a.open[c.ID]
			if !taken {
				a.open[c.ID] = true
			}
			sent, done := a.reported[c.ID]
			forgotten := taken && !running && !done
			if forgotten {
				a.open[c.ID] = true
			}
			a.mu.Unlock()
			switch {
			case !taken:
				a.wg.Go(func() { a.handle(ctx, c) })
			case done:
				a.wg.Go(func() { a.report(ctx, sent.rep) })
			case forgotten:
				// Handled and reported long ago, the report since dropped
				// (StateTTL): say so rather than ignore it, which would
				// leave the director asking forever.
				a.log.Warn("refused: a command handled long ago, its report no longer kept", "job", c.Job, "kind", c.Kind)
				a.wg.Go(func() {
					a.report(ctx, api.Report{Command: c.ID, Job: c.Job, Kind: c.Kind,
						Error: "refused: command " + c.ID + " was handled and reported over " + StateTTL.String() + " ago; its report is no longer kept"})
				})
			}
		}
	}
	a.wg.Wait()
	return nil
}

// call posts a JSON body to the director and decodes the answer.
func (a *Agent) call(ctx context.Context, path string, body, out any) error {
	return postJSON(ctx, a.client, a.base+path, body, out)
}

// errDirector is the director's answer to a request it refused.
type errDirector struct {
	status, msg string
}

func (e *errDirector) Error() string { return "director: " + e.status + ": " + e.msg }

// postJSON posts body as JSON to url and decodes the answer into out; a
// refusal comes back as an *errDirector with the director's message.
func postJSON(ctx context.Context, client *http.Client, url string, body, out any) error {
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	lr := io.LimitReader(resp.Body, api.MaxBody)
	if resp.StatusCode != http.StatusOK {
		var e api.Error
		_ = json.NewDecoder(lr).Decode(&e)
		return &errDirector{status: resp.Status, msg: e.Error}
	}
	return json.NewDecoder(lr).Decode(out)
}

// report sends a command's outcome, retrying until the director has it
// (or the agent stops), and keeps it for a director that asks again.
func (a *Agent) report(ctx context.Context, r api.Report) {
	a.mu.Lock()
	now := time.Now()
	for id, s := range a.reported {
		if now.Sub(s.at) > StateTTL {
			delete(a.reported, id)
		}
	}
	a.reported[r.Command] = sentReport{r, now}
	a.mu.Unlock()
	for backoff := time.Second; ; backoff = min(backoff*2, 30*time.Second) {
		var out struct{}
		err := a.call(context.WithoutCancel(ctx), api.PathReport, r, &out)
		if err == nil {
			a.mu.Lock()
			delete(a.open, r.Command)
			a.mu.Unlock()
			return
		}
		a.log.Warn("report not delivered; retrying", "job", r.Job, "kind", r.Kind, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
	}
}

func (a *Agent) job(id string) *jobState {
	a.mu.Lock()
	defer a.mu.Unlock()
	j := a.jobs[id]
	if j == nil {
		j = &jobState{id: id, files: map[string]string{}, pg: map[string]*pgSnapshot{}, snaps: map[string]*fsSnapshot{}}
		a.jobs[id] = j
	}
	return j
}

func (a *Agent) handle(ctx context.Context, c api.Command) {
	rep := api.Report{Command: c.ID, Job: c.Job, Kind: c.Kind}
	if !idRE.MatchString(c.Job) || !idRE.MatchString(c.ID) {
		a.log.Warn("refused: a malformed job or command ID", "kind", c.Kind)
		rep.Error = "refused: malformed job or command ID"
		a.report(ctx, rep)
		return
	}
	// Only plans of this agent's own configuration, ever.
	for _, p := range c.Plans {
		if _, ok := a.cfg.Plans[p]; !ok {
			a.log.Warn("refused: the director asked for a plan this agent does not have", "plan", p, "job", c.Job, "kind", c.Kind)
			rep.Error = fmt.Sprintf("refused: plan %q is not in the configuration of agent %s", p, a.cfg.Name)
			a.report(ctx, rep)
			return
		}
	}
	a.mu.Lock()
	ended := a.done[c.Job]
	a.mu.Unlock()
	if ended {
		if c.Kind != api.KindAbort {
			rep.Error = "refused: job " + c.Job + " has already ended on this node"
		} else {
			rep.OK = true
		}
		a.report(ctx, rep)
		return
	}
	j := a.job(c.Job)
	j.cmd.Lock()
	defer j.cmd.Unlock()
	a.mu.Lock()
	ended = a.done[c.Job]
	a.mu.Unlock()
	if ended && c.Kind != api.KindAbort {
		rep.Error = "refused: job " + c.Job + " has already ended on this node"
		a.report(ctx, rep)
		return
	}
	var err error
	switch c.Kind {
	case api.KindPrepare:
		rep.ThawBy, err = a.prepare(ctx, c, j)
	case api.KindThaw:
		err = a.thaw(j, "the director")
	case api.KindUpload:
		j.mu.Lock()
		prepared := j.prepared
		for _, p := range c.Plans {
			prepared = prepared && slices.Contains(j.plans, p)
		}
		j.uploading = prepared
		j.mu.Unlock()
		if !prepared {
			// Never upload what was not taken at this job's freeze (an
			// agent restarted since, or a confused director): the group
			// would not be one instant.
			err = fmt.Errorf("refused: this node did not prepare job %s (was the agent restarted?)", c.Job)
			a.forget(j)
			break
		}
		rep.Snapshots, err = a.upload(ctx, c, j)
		j.mu.Lock()
		j.uploading = false
		j.mu.Unlock()
		if err == nil {
			a.forget(j)
		}
	case api.KindAbort:
		err = a.thaw(j, "an abort")
		a.forget(j)
	case api.KindRestore:
		err = a.restore(ctx, c)
		a.forget(j)
	default:
		err = fmt.Errorf("refused: unknown command %q", c.Kind)
		a.log.Warn("refused: unknown command", "kind", c.Kind, "job", c.Job)
	}
	rep.OK = err == nil
	if err != nil {
		rep.Error = err.Error()
	}
	a.report(ctx, rep)
}

// prepare runs the pre hooks of each plan, in order; on the first failure
// it thaws what it froze. Frozen, it arms its own thaw deadline.
func (a *Agent) prepare(ctx context.Context, c api.Command, j *jobState) (time.Time, error) {
	thawBy := time.Now().Add(a.cfg.ThawAfter())
	if !c.Deadline.IsZero() && c.Deadline.Before(thawBy) {
		thawBy = c.Deadline
	}
	a.mu.Lock()
	for _, p := range c.Plans {
		if other := a.frozenBy[p]; other != "" && other != c.Job {
			a.mu.Unlock()
			return time.Time{}, fmt.Errorf("plan %s is frozen by job %s", p, other)
		}
	}
	for _, p := range c.Plans {
		a.frozenBy[p] = c.Job
	}
	a.mu.Unlock()
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.frozen || len(j.plans) > 0 {
		return time.Time{}, errors.New("already prepared")
	}
	j.plans = slices.Clone(c.Plans)
	j.frozen = true
	// Armed before the first hook: whatever happens from here on, the
	// node thaws by the deadline. Each step runs under j.mu and only if
	// the node is still frozen, so a thaw (deadline, abort) waits for the
	// step in progress (bounded by the deadline) and no step runs after it.
	j.timer = time.AfterFunc(time.Until(thawBy), func() {
		// Frozen filesystems first, without j.mu: a step blocked on one
		// (a write to it sleeps until the thaw) must not keep it frozen.
		for _, err := range a.releaseHolds(context.Background(), j, true) {
			a.log.Error("thaw at the deadline", "job", c.Job, "err", err)
		}
		if err := a.thaw(j, "its own deadline"); err != nil {
			a.log.Error("thaw at the deadline failed", "job", c.Job, "err", err)
		}
	})
	fail := func(err error) (time.Time, error) {
		return time.Time{}, joinErrors(err, a.thawLocked(j, "a failed prepare"))
	}
	// Before anything is paused or frozen: should the agent die from here
	// on, the watchdog releases what the journal says by the deadline.
	if err := a.startWatchdog(j, c.Plans, thawBy); err != nil {
		return fail(err)
	}
	for _, name := range c.Plans {
		p := a.cfg.Plans[name]
		for i, h := range p.Pre {
			if !j.frozen {
				return time.Time{}, errors.New("thawed before the prepare ended (deadline)")
			}
			if err := a.runHook(ctx, h, thawBy); err != nil {
				return fail(fmt.Errorf("plan %s: pre hook %d: %w", name, i+1, err))
			}
		}
		if !j.frozen {
			return time.Time{}, errors.New("thawed before the prepare ended (deadline)")
		}
		sctx, cancel := context.WithDeadline(ctx, thawBy)
		err := a.capture(sctx, j, name, p)
		cancel()
		if err != nil {
			return fail(fmt.Errorf("plan %s: %w", name, err))
		}
		if p.Etcd != nil {
			dst := filepath.Join(a.opts.StateDir, c.Job+"-"+name+".etcd")
			os.Remove(dst) // a leftover of a retried prepare
			sctx, cancel := context.WithDeadline(ctx, thawBy)
			n, err := etcdSnapshot(sctx, p.Etcd, dst)
			cancel()
			if err != nil {
				return fail(fmt.Errorf("plan %s: %w", name, err))
			}
			j.files[name] = dst
			a.log.Info("etcd snapshot taken", "job", c.Job, "plan", name, "bytes", n)
		}
		if p.Postgres != nil {
			sctx, cancel := context.WithDeadline(ctx, thawBy)
			snap, err := exportSnapshot(sctx, p.Postgres)
			cancel()
			if err != nil {
				return fail(fmt.Errorf("plan %s: %w", name, err))
			}
			j.pg[name] = snap
			a.log.Info("postgres snapshot exported", "job", c.Job, "plan", name, "snapshot", snap.id)
		}
	}
	// Filesystems are frozen last, when nothing of the prepare is left to
	// write to them, and held until the thaw.
	for _, name := range c.Plans {
		if err := a.freezeMounts(j, a.cfg.Plans[name].FSFreeze); err != nil {
			return fail(fmt.Errorf("plan %s: %w", name, err))
		}
	}
	if !j.frozen {
		return time.Time{}, errors.New("thawed before the prepare ended (deadline)")
	}
	j.prepared = true
	a.log.Info("frozen", "job", c.Job, "plans", c.Plans, "thaw_by", thawBy.Format(time.RFC3339Nano))
	return thawBy, nil
}

// thaw runs the post hooks (in reverse plan order) once.
func (a *Agent) thaw(j *jobState, by string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return a.thawLocked(j, by)
}

// thawLocked is thaw with j.mu held.
func (a *Agent) thawLocked(j *jobState, by string) error {
	if !j.frozen {
		return nil
	}
	j.frozen = false
	if j.timer != nil {
		j.timer.Stop()
	}
	a.mu.Lock()
	for _, p := range j.plans {
		delete(a.frozenBy, p)
	}
	a.mu.Unlock()
	// What prepare took waits for its upload, not forever.
	time.AfterFunc(StateTTL, func() {
		j.mu.Lock()
		stale := !j.uploading
		j.mu.Unlock()
		if stale {
			a.mu.Lock()
			current := a.jobs[j.id] == j
			a.mu.Unlock()
			if current {
				a.log.Warn("dropping what prepare took: no upload came", "job", j.id)
				a.forget(j)
			}
		}
	})
	// Filesystems and containers first, then the post hooks (the reverse
	// of prepare); snapshots stay for the upload.
	errs := a.releaseHolds(context.Background(), j, false)
	for i := len(j.plans) - 1; i >= 0; i-- {
		for k, h := range a.cfg.Plans[j.plans[i]].Post {
			if err := a.runHook(context.Background(), h, time.Time{}); err != nil {
				errs = append(errs, fmt.Errorf("plan %s: post hook %d: %w", j.plans[i], k+1, err))
			}
		}
	}
	a.log.Info("thawed", "by", by, "plans", j.plans)
	return joinErrors(errs...)
}

// forget drops a job's state and what prepare took for it.
func (a *Agent) forget(j *jobState) {
	j.mu.Lock()
	for _, f := range j.files {
		os.Remove(f)
	}
	clear(j.files)
	for _, s := range j.pg {
		s.end()
	}
	clear(j.pg)
	for _, err := range a.dropSnapshots(context.Background(), j) {
		a.log.Error("snapshot removal failed (kept in the journal: removed when the agent starts again)", "job", j.id, "err", err)
	}
	clear(j.snaps)
	j.prepared = false
	j.mu.Unlock()
	a.mu.Lock()
	delete(a.jobs, j.id)
	a.done[j.id] = true
	a.mu.Unlock()
}

func (a *Agent) thawAll() {
	a.mu.Lock()
	jobs := make([]*jobState, 0, len(a.jobs))
	for _, j := range a.jobs {
		jobs = append(jobs, j)
	}
	a.mu.Unlock()
	for _, j := range jobs {
		if err := a.thaw(j, "the agent stopping"); err != nil {
			a.log.Error("thaw", "err", err)
		}
	}
}

// timeZero: no deadline beyond the hook's own timeout.
var timeZero time.Time

// DefaultHookTimeout bounds a hook that sets none.
const DefaultHookTimeout = 60 * time.Second

// runHook runs one hook with its timeout (and no later than until, if set),
// as its user, killing its whole process group when time is up.
func (a *Agent) runHook(ctx context.Context, h Hook, until time.Time) error {
	timeout := h.Timeout.D(DefaultHookTimeout)
	if !until.IsZero() && time.Until(until) < timeout {
		timeout = time.Until(until)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.Exec[0], h.Exec[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	if h.User != "" {
		cred, err := credentialOf(h.User)
		if err != nil {
			return err
		}
		cmd.SysProcAttr.Credential = cred
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		return fmt.Errorf("%s: timed out after %v", h.Exec[0], timeout.Round(time.Millisecond))
	}
	if err != nil {
		return fmt.Errorf("%s: %v: %s", h.Exec[0], err, lastLine(out.String()))
	}
	return nil
}

func credentialOf(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("hook user %s: %w", name, err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	if os.Geteuid() != 0 && uint64(os.Geteuid()) != uid {
		return nil, fmt.Errorf("hook user %s: the agent must run as root to run hooks as another user", name)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}

// upload backs up each plan with the bunker binary (the same code and
// commit protocol as `bunker backup`), to the plan's repository with the
// node's own credential, tagged with the group.
func (a *Agent) upload(ctx context.Context, c api.Command, j *jobState) (map[string]string, error) {
	out := map[string]string{}
	for _, name := range c.Plans {
		p := a.cfg.Plans[name]
		var stdin *os.File
		if p.Etcd != nil {
			j.mu.Lock()
			file := j.files[name]
			j.mu.Unlock()
			if file == "" {
				return nil, fmt.Errorf("plan %s: no etcd snapshot was taken for this job (was the agent restarted?)", name)
			}
			f, err := os.Open(file)
			if err != nil {
				return nil, fmt.Errorf("plan %s: %w", name, err)
			}
			defer f.Close()
			stdin = f
		}
		args := []string{"backup", "--json", "--host", a.cfg.Name, "--tag", "agent-plan:" + name}
		if p.LimitUpload > 0 {
			args = append(args, "--limit-upload", strconv.Itoa(p.LimitUpload))
		}
		for _, t := range append(slices.Clone(p.Tags), c.Tags...) {
			args = append(args, "--tag", t)
		}
		for _, e := range p.Excludes {
			args = append(args, "--exclude", e)
		}
		if p.Snapshot != nil && p.Snapshot.Type == SnapshotBtrfs {
			// The snapshots' own directory (empty in a snapshot).
			args = append(args, "--exclude", filepath.Join(p.Snapshot.Source, snapshotDirName))
		}
		var extraEnv []string
		switch {
		case stdin != nil:
			args = append(args, "--stdin", "--stdin-filename", p.Etcd.File())
		case p.Postgres != nil:
			j.mu.Lock()
			snap := j.pg[name]
			j.mu.Unlock()
			if snap == nil {
				return nil, fmt.Errorf("plan %s: %w", name, errNoPGSnapshot)
			}
			pgenv, err := pgEnv(p.Postgres)
			if err != nil {
				return nil, fmt.Errorf("plan %s: %w", name, err)
			}
			for _, kv := range pgenv {
				if strings.HasPrefix(kv, "PGPASSWORD=") {
					extraEnv = append(extraEnv, kv)
				}
			}
			args = append(args, "--stdin-from-command", "--stdin-filename", p.Postgres.File(), "--")
			args = append(args, p.Postgres.dumpCommand(snap.id)...)
		default:
			args = append(args, p.Paths...)
		}
		if p.Snapshot != nil {
			j.mu.Lock()
			snap := j.snaps[name]
			j.mu.Unlock()
			if snap == nil {
				return nil, fmt.Errorf("plan %s: no snapshot was taken for this job (was the agent restarted?)", name)
			}
			// The child sees the snapshot where the live files are, in a
			// mount namespace of its own: the backup records the
			// original paths, and nothing else on the node changes.
			args = append([]string{BindExecCommand, snap.Root, p.Snapshot.Root(), "--", a.opts.Bunker}, args...)
		}
		cmd, err := a.bunker(ctx, p.Repository, args...)
		if err != nil {
			return nil, fmt.Errorf("plan %s: %w", name, err)
		}
		if p.Snapshot != nil {
			cmd.SysProcAttr.Unshareflags = syscall.CLONE_NEWNS
		}
		cmd.Env = append(cmd.Env, extraEnv...)
		if stdin != nil {
			cmd.Stdin = stdin
		}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("plan %s: backup: %v: %s", name, err, lastLine(stderr.String()))
		}
		id := ""
		sc := bufio.NewScanner(&stdout)
		for sc.Scan() {
			var m struct {
				Type string `json:"message_type"`
				ID   string `json:"snapshot_id"`
			}
			if json.Unmarshal(sc.Bytes(), &m) == nil && m.Type == "summary" {
				id = m.ID
			}
		}
		if id == "" {
			return nil, fmt.Errorf("plan %s: backup printed no snapshot", name)
		}
		out[name] = id
		a.log.Info("uploaded", "job", c.Job, "plan", name, "snapshot", id)
	}
	return out, nil
}

// repoEnv is the environment of a bunker child process on r.
func repoEnv(r Repository) ([]string, error) {
	return conf.RepositoryEnv(r.Location, r.PasswordFile, r.CACert, r.CredentialsFile)
}
