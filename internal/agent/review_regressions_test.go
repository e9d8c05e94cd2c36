package agent

// Regressions found by a review of the agent (each test was first written
// to fail against the code it found the problem in).

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"bunker/internal/api"
	"bunker/internal/pki"
)

// reviewReports records the reports a reviewAgent's director received.
type reviewReports struct {
	mu   sync.Mutex
	reps []api.Report
}

func (r *reviewReports) all() []api.Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]api.Report(nil), r.reps...)
}

// reviewAgent is an agent whose director is a plain HTTP server that
// accepts every report and records it.
func reviewAgent(t *testing.T, plans map[string]Plan) (*Agent, *reviewReports) {
	t.Helper()
	reps := &reviewReports{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var rep api.Report
		if err := json.NewDecoder(r.Body).Decode(&rep); err == nil {
			reps.mu.Lock()
			reps.reps = append(reps.reps, rep)
			reps.mu.Unlock()
		}
		_, _ = io.WriteString(w, "{}")
	}))
	t.Cleanup(srv.Close)
	state := filepath.Join(t.TempDir(), "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := &Config{Name: "node1", ThawDeadline: 0, Plans: plans}
	return newAgent(cfg, Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Bunker: "/bin/false", StateDir: state}, srv.Client(), srv.URL), reps
}

func sh(script string) Hook { return Hook{Exec: []string{"/bin/sh", "-c", script}} }

func lastLineOf(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// An abort that arrives while prepare is still running its pre hooks (the
// director failed the job because another node failed) thaws and stops the
// thaw timer; the pre hooks then carry on and freeze the service, and
// nothing ever thaws it again.
func TestReviewAbortDuringPrepareLeavesNodeFrozen(t *testing.T) {
	dir := t.TempDir()
	svc := filepath.Join(dir, "service")
	a, reps := reviewAgent(t, map[string]Plan{"db": {Paths: []string{dir},
		Pre:  []Hook{sh("sleep 0.5; echo frozen >> " + svc)},
		Post: []Hook{sh("echo thawed >> " + svc)}}})
	ctx := context.Background()
	deadline := time.Now().Add(1500 * time.Millisecond)
	done := make(chan struct{})
	go func() {
		a.handle(ctx, api.Command{ID: "20261122T000000-000000c1", Job: "20261122T000000-0000000a", Kind: api.KindPrepare, Plans: []string{"db"}, Deadline: deadline})
		close(done)
	}()
	time.Sleep(150 * time.Millisecond)
	a.handle(ctx, api.Command{ID: "20261122T000000-000000c2", Job: "20261122T000000-0000000a", Kind: api.KindAbort, Plans: []string{"db"}})
	<-done
	time.Sleep(time.Until(deadline) + 700*time.Millisecond) // past every deadline
	if got := lastLineOf(t, svc); got != "thawed" {
		b, _ := os.ReadFile(svc)
		t.Errorf("after the abort and past the deadline the service is %q (history %q), reports %+v", got, b, reps.all())
	}
}

// The director leaves a failed job's undelivered prepare queued next to its
// abort (see the director's review test): an agent that handles the abort
// first then runs the prepare anyway, freezing the service for a job that
// is already over (and keeping what it takes, never forgotten).
func TestReviewPrepareAfterAbortIsRefused(t *testing.T) {
	dir := t.TempDir()
	svc := filepath.Join(dir, "service")
	a, reps := reviewAgent(t, map[string]Plan{"db": {Paths: []string{dir},
		Pre:  []Hook{sh("echo frozen >> " + svc)},
		Post: []Hook{sh("echo thawed >> " + svc)}}})
	ctx := context.Background()
	a.handle(ctx, api.Command{ID: "20261122T000000-000000c2", Job: "20261122T000000-0000000a", Kind: api.KindAbort, Plans: []string{"db"}})
	a.handle(ctx, api.Command{ID: "20261122T000000-000000c1", Job: "20261122T000000-0000000a", Kind: api.KindPrepare, Plans: []string{"db"}, Deadline: time.Now().Add(time.Minute)})
	defer a.thawAll()
	if _, err := os.Stat(svc); err == nil {
		b, _ := os.ReadFile(svc)
		t.Errorf("a prepare after the job's abort froze the service: %q", b)
	}
	for _, r := range reps.all() {
		if r.Kind == api.KindPrepare && r.OK {
			t.Errorf("a prepare after the job's abort was reported OK: %+v", r)
		}
	}
}

// E6/E5: the job ID comes from the director and is joined into a path
// unchecked: "../x" makes the agent delete (and create) files outside its
// state directory.
func TestReviewJobIDEscapesStateDir(t *testing.T) {
	a, _ := reviewAgent(t, map[string]Plan{"e": {Etcd: &Etcd{Endpoints: []string{"http://127.0.0.1:1"}}}})
	victim := filepath.Join(filepath.Dir(a.opts.StateDir), "victim-e.etcd")
	if err := os.WriteFile(victim, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	a.handle(context.Background(), api.Command{ID: "20261122T000000-000000c1", Job: "../victim", Kind: api.KindPrepare, Plans: []string{"e"},
		Deadline: time.Now().Add(500 * time.Millisecond)})
	if _, err := os.Stat(victim); err != nil {
		t.Errorf("a job ID of the director removed a file outside the state directory: %v", err)
	}
}

// G6: a credentials line written "NAME: value" whose value holds '='
// (base64 session tokens do) is echoed in the error, which is reported to
// the director, stored in the job and logged.
func TestReviewCredentialsErrorLeaksSecret(t *testing.T) {
	f := filepath.Join(t.TempDir(), "creds")
	if err := os.WriteFile(f, []byte("AWS_SESSION_TOKEN: FwoGZXIvYXdzSECRETTOKENxyz==\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := repoEnv(Repository{Location: "x", PasswordFile: "y", CredentialsFile: f})
	if err == nil || strings.Contains(err.Error(), "SECRETTOKEN") {
		t.Errorf("error %v", err)
	}
}

// The default state directory is a predictable name in the shared /tmp,
// taken as is when it exists: another local user who creates it first
// (mode 0777) owns the directory the root agent writes etcd snapshots to
// and uploads from (files there can be removed, replaced or symlinked
// between prepare and upload).
func TestReviewDefaultStateDirPreCreatedByAnotherUser(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	pk := filepath.Join(t.TempDir(), "pki")
	ca, err := pki.Init(pk, "test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.IssueFiles(pk, pki.Request{Role: pki.RoleAgent, Name: "node1"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	squat := filepath.Join(tmp, "bunker-agent-node1")
	if err := os.Mkdir(squat, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(squat, 0o777); err != nil {
		t.Fatal(err)
	}
	a, err := New(&Config{Name: "node1", Director: "https://127.0.0.1:1",
		TLS:   TLS{CA: pk + "/ca.pem", Cert: pk + "/agent-node1.pem", Key: pk + "/agent-node1.key"},
		Plans: map[string]Plan{"e": {Etcd: &Etcd{Endpoints: []string{"http://127.0.0.1:1"}}}}}, Options{Bunker: "/bin/false", StateDir: squat})
	if err == nil {
		t.Errorf("the agent keeps its snapshots in %s, a world-writable directory (state dir %s)", squat, a.opts.StateDir)
	}
}

// Two director plans may name the same agent plan (a daily cluster plan
// and an hourly one-node plan), and busy is per director plan: their jobs
// overlap on the node. Freeze state is per job, so the first job's thaw
// (or abort, or deadline) runs the post hooks while the second job's
// prepare reported the service frozen: its barrier passes with this node
// already thawed, a group that is not one instant.
func TestReviewOverlappingJobsShareOneFreeze(t *testing.T) {
	dir := t.TempDir()
	svc := filepath.Join(dir, "service")
	a, reps := reviewAgent(t, map[string]Plan{"db": {Paths: []string{dir},
		Pre:  []Hook{sh("echo frozen >> " + svc)},
		Post: []Hook{sh("echo thawed >> " + svc)}}})
	defer a.thawAll()
	ctx := context.Background()
	dl := time.Now().Add(time.Minute)
	a.handle(ctx, api.Command{ID: "20261122T000000-000000a1", Job: "20261122T000000-000000aa", Kind: api.KindPrepare, Plans: []string{"db"}, Deadline: dl})
	a.handle(ctx, api.Command{ID: "20261122T000000-000000b1", Job: "20261122T000000-000000bb", Kind: api.KindPrepare, Plans: []string{"db"}, Deadline: dl})
	a.handle(ctx, api.Command{ID: "20261122T000000-000000a2", Job: "20261122T000000-000000aa", Kind: api.KindThaw, Plans: []string{"db"}})
	var bOK bool
	for _, r := range reps.all() {
		if r.Job == "20261122T000000-000000bb" && r.Kind == api.KindPrepare {
			bOK = r.OK
		}
	}
	if bOK && lastLineOf(t, svc) == "thawed" {
		t.Errorf("job jB was reported frozen, but job jA's thaw thawed the service under it")
	}
}
