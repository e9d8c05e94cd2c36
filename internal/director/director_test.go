package director

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"bunker/internal/agent"
	"bunker/internal/api"
	"bunker/internal/conf"
	"bunker/internal/pki"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// testDirector runs a director on 127.0.0.1 with a fresh CA (and the
// certificates of testConfig, plus a second director "dir2" and an agent
// "stranger" the configuration does not know); it returns the director,
// its address, the PKI directory and its log.
func testDirector(t *testing.T) (*Director, string, string, *syncBuf) {
	t.Helper()
	cfg, pk := testConfig(t, "node1")
	ca, err := pki.Load(pk)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []pki.Request{{Role: pki.RoleDirector, Name: "dir2"}, {Role: pki.RoleAgent, Name: "stranger"}} {
		if _, _, err := ca.IssueFiles(pk, r, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	log := &syncBuf{}
	d, addr := serveDirector(t, cfg, Options{Log: slog.New(slog.NewTextHandler(log, nil)), PollTimeout: time.Second})
	return d, addr, pk, log
}

// testConfig makes a CA with certificates for the director (127.0.0.1),
// an operator "ops" and each node, and a configuration with one plan "p"
// over the nodes (agent plan "files").
func testConfig(t *testing.T, nodes ...string) (*Config, string) {
	t.Helper()
	dir := t.TempDir()
	pk := filepath.Join(dir, "pki")
	ca, err := pki.Init(pk, "test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	reqs := []pki.Request{{Role: pki.RoleDirector, Name: "dir1", Hosts: []string{"127.0.0.1"}}, {Role: pki.RoleOperator, Name: "ops"}}
	cfgNodes, planNodes := map[string]Node{}, map[string][]string{}
	for _, n := range nodes {
		reqs = append(reqs, pki.Request{Role: pki.RoleAgent, Name: n})
		cfgNodes[n], planNodes[n] = Node{}, []string{"files"}
	}
	for _, r := range reqs {
		if _, _, err := ca.IssueFiles(pk, r, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	return &Config{
		Listen:       "127.0.0.1:0",
		TLS:          TLS{CA: pk + "/ca.pem", Cert: pk + "/director-dir1.pem", Key: pk + "/director-dir1.key"},
		State:        filepath.Join(dir, "director.db"),
		Repositories: map[string]Repository{"main": {Location: filepath.Join(dir, "repo"), PasswordFile: filepath.Join(dir, "pw")}},
		Nodes:        cfgNodes,
		Plans: map[string]Plan{"p": {Nodes: planNodes, Schedule: "0 0 1 1 *", Repository: "main",
			FreezeTimeout: conf.Duration(5 * time.Second)}},
	}, pk
}

// serveDirector runs a director of cfg on 127.0.0.1 until the test ends.
func serveDirector(t *testing.T, cfg *Config, opts Options) (*Director, string) {
	t.Helper()
	d, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done; d.Close() })
	return d, ln.Addr().String()
}

func clientAs(t *testing.T, pk, role, name string) *http.Client {
	t.Helper()
	caPEM, err := pki.ReadCA(pk + "/ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pki.ClientTLS(caPEM, pk+"/"+role+"-"+name+".pem", pk+"/"+role+"-"+name+".key")
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
}

// RELIABILITY G5: every route refuses every role but its own (403), and
// every route has a policy: the routes are registered only with one.
func TestRoutePolicy(t *testing.T) {
	d, addr, pk, log := testDirector(t)
	clients := map[string]*http.Client{
		pki.RoleAgent:    clientAs(t, pk, pki.RoleAgent, "node1"),
		pki.RoleOperator: clientAs(t, pk, pki.RoleOperator, "ops"),
		pki.RoleDirector: clientAs(t, pk, pki.RoleDirector, "dir2"),
	}
	routes := d.routes()
	if len(routes) < 7 {
		t.Fatalf("only %d routes", len(routes))
	}
	for _, rt := range routes {
		if rt.role != pki.RoleAgent && rt.role != pki.RoleOperator {
			t.Errorf("route %s has no policy", rt.path)
		}
		for role, c := range clients {
			req, _ := http.NewRequest(rt.method, "https://"+addr+rt.path, strings.NewReader("{}"))
			resp, err := c.Do(req)
			if role == pki.RoleDirector {
				// A director's certificate is refused at the handshake.
				if err == nil {
					resp.Body.Close()
					t.Errorf("%s: a director certificate got %s", rt.path, resp.Status)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%s as %s: %v", rt.path, role, err)
			}
			resp.Body.Close()
			forbidden := resp.StatusCode == http.StatusForbidden
			if forbidden != (role != rt.role) {
				t.Errorf("%s %s as %s: %s", rt.method, rt.path, role, resp.Status)
			}
		}
	}
	resp, err := clients[pki.RoleOperator].Get("https://" + addr + "/api/v1/nothing")
	if err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown route: %v %v", resp, err)
	}
	if !strings.Contains(log.String(), "refused: wrong role") {
		t.Errorf("refusals are not logged")
	}
}

// RELIABILITY E5: malformed and hostile messages get 4xx; the director
// stays up and bounded (bodies are capped at api.MaxBody).
func TestHostileMessages(t *testing.T) {
	_, addr, pk, _ := testDirector(t)
	c := clientAs(t, pk, pki.RoleAgent, "node1")
	post := func(path string, body io.Reader) int {
		resp, err := c.Post("https://"+addr+path, "application/json", body)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		defer resp.Body.Close()
		return resp.StatusCode
	}
	huge := io.MultiReader(strings.NewReader(`{"version":1,"plans":["`), strings.NewReader(strings.Repeat("a", 4<<20)), strings.NewReader(`"]}`))
	for name, tc := range map[string]struct {
		path string
		body io.Reader
		want int
	}{
		"oversized":     {api.PathPoll, huge, 400},
		"not JSON":      {api.PathPoll, strings.NewReader("\x00\x01garbage"), 400},
		"unknown field": {api.PathPoll, strings.NewReader(`{"version":1,"node":"node2"}`), 400},
		"old version":   {api.PathPoll, strings.NewReader(`{"version":0}`), 400},
		"many plans":    {api.PathPoll, strings.NewReader(`{"version":1,"plans":[` + strings.Repeat(`"x",`, 2000) + `"x"]}`), 400},
		"stray report":  {api.PathReport, strings.NewReader(`{"command":"c","job":"j","kind":"upload","ok":true}`), 200},
	} {
		if got := post(tc.path, tc.body); got != tc.want {
			t.Errorf("%s: %d, want %d", name, got, tc.want)
		}
	}
	// A node the director does not know is refused even with a valid
	// certificate of the CA.
	s := clientAs(t, pk, pki.RoleAgent, "stranger")
	resp, err := s.Post("https://"+addr+api.PathPoll, "application/json", strings.NewReader(`{"version":1}`))
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("unknown node: %v %v", resp, err)
	}
	// Still serving.
	if got := post(api.PathPoll, strings.NewReader(`{"version":1,"plans":["files"]}`)); got != 200 {
		t.Errorf("after the hostile messages: %d", got)
	}
}

// RELIABILITY E6: a director that asks an agent for a plan outside the
// agent's configuration is refused, and the agent logs it.
func TestAgentRefusesForeignPlan(t *testing.T) {
	d, addr, pk, _ := testDirector(t)
	alog := &syncBuf{}
	a, err := agent.New(&agent.Config{Name: "node1", Director: "https://" + addr,
		TLS:   agent.TLS{CA: pk + "/ca.pem", Cert: pk + "/agent-node1.pem", Key: pk + "/agent-node1.key"},
		Plans: map[string]agent.Plan{"files": {Paths: []string{t.TempDir()}}}}, agent.Options{Log: slog.New(slog.NewTextHandler(alog, nil)), Bunker: "/bin/false", StateDir: filepath.Join(t.TempDir(), "state")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitUntil(t, "the agent to connect", func() bool { d.mu.Lock(); defer d.mu.Unlock(); return d.connected("node1") })
	job := newJobID()
	d.send("node1", api.Command{ID: newJobID(), Job: job, Kind: api.KindPrepare, Plans: []string{"secret"}, Deadline: time.Now().Add(time.Minute)})
	d.send("node1", api.Command{ID: newJobID(), Job: job, Kind: "exec", Plans: []string{"files"}})
	d.send("node1", api.Command{ID: "../../x", Job: "../x", Kind: api.KindPrepare, Plans: []string{"files"}})
	waitUntil(t, "the refusals to be reported", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return len(d.agents["node1"].pending) == 0
	})
	for _, want := range []string{`refused: the director asked for a plan this agent does not have" plan=secret`, `refused: unknown command" kind=exec`,
		`refused: a malformed job or command ID" kind=prepare`} {
		if !strings.Contains(alog.String(), want) {
			t.Errorf("agent log lacks %q:\n%s", want, alog)
		}
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// A restarted director resumes a run past its barrier: it asks for the
// very upload it had asked for (same command ID: an agent that took it
// does not upload twice), and commits when the report comes.
func TestRestartResumesUpload(t *testing.T) {
	cfg, pk := testConfig(t, "node1")
	d1, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	up := &api.Job{ID: newJobID(), Plan: "p", State: api.JobRunning, Phase: api.KindUpload, Started: time.Now().UTC(),
		Nodes: map[string]*api.NodeResult{"node1": {Plans: []string{"files"}, Prepared: true, Thawed: true, UploadCommand: "20261205T100000-00000001"}}}
	if err := d1.st.putJob(up); err != nil {
		t.Fatal(err)
	}
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	d, addr := serveDirector(t, cfg, Options{PollTimeout: 300 * time.Millisecond})
	n1 := clientAs(t, pk, pki.RoleAgent, "node1")
	var cmd api.Command
	for range 3 {
		for _, c := range reviewPoll(t, n1, addr) {
			if c.Job == up.ID {
				cmd = c
			}
		}
	}
	if cmd.Kind != api.KindUpload || cmd.ID != "20261205T100000-00000001" {
		t.Fatalf("resumed job sent %+v, want the same upload command", cmd)
	}
	rep := api.Report{Command: cmd.ID, Job: up.ID, Kind: api.KindUpload, OK: true, Snapshots: map[string]string{"files": "abcd"}}
	body, _ := json.Marshal(rep)
	resp, err := n1.Post("https://"+addr+api.PathReport, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	waitUntil(t, "the resumed job to commit", func() bool {
		j, err := d.st.job(up.ID)
		return err == nil && j.State == api.JobSucceeded && j.Nodes["node1"].Snapshots["files"] == "abcd"
	})
}

// A run a restart cut before its barrier, or whose uploads are not known
// by their IDs, or whose node's plans changed, is not resumed: it fails,
// its nodes are told to abort, and its plan is marked to run again.
func TestRestartDoesNotResumeWhatItCannot(t *testing.T) {
	for name, r := range map[string]*api.NodeResult{
		"cut before the barrier": {Plans: []string{"files"}, Prepared: true},
		"upload of unknown ID":   {Plans: []string{"files"}, Prepared: true, Thawed: true},
		"plans changed":          {Plans: []string{"files", "db"}, Prepared: true, Thawed: true, UploadCommand: "20261205T100000-00000001"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg, _ := testConfig(t, "node1")
			d1, err := New(cfg, Options{})
			if err != nil {
				t.Fatal(err)
			}
			phase := api.KindUpload
			if !r.Thawed {
				phase = api.KindPrepare
			}
			j := &api.Job{ID: newJobID(), Plan: "p", State: api.JobRunning, Phase: phase, Started: time.Now().UTC(), Nodes: map[string]*api.NodeResult{"node1": r}}
			if err := d1.st.putJob(j); err != nil {
				t.Fatal(err)
			}
			if err := d1.Close(); err != nil {
				t.Fatal(err)
			}
			d, err := New(cfg, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			got, err := d.st.job(j.ID)
			if err != nil || got.State != api.JobFailed || !strings.Contains(got.Error, "runs again") {
				t.Fatalf("job %+v %v", got, err)
			}
			if _, ok := d.rerun["p"]; !ok {
				t.Error("the plan is not marked to run again")
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			if a := d.agents["node1"]; a == nil || len(a.pending) != 1 || a.pending[0].cmd.Kind != api.KindAbort {
				t.Errorf("node1 was not told to abort")
			}
		})
	}
}

// A poll's answer lost on the way (a network cut, a proxy that closed the
// connection) loses the commands it carried. The director asks agents to
// list the commands they have taken; a command delivered at least a second
// before a poll that does not list it is sent again at once, one listed is
// not. A poll that lists nothing (an agent that does not) gets it again
// only after Redeliver.
func TestLostPollAnswerIsSentAgain(t *testing.T) {
	cfg, pk := testConfig(t, "node1")
	d, addr := serveDirector(t, cfg, Options{PollTimeout: 200 * time.Millisecond})
	n1 := clientAs(t, pk, pki.RoleAgent, "node1")
	poll := func(taken ...string) api.PollResponse {
		var pr api.PollResponse
		p := api.Poll{Version: api.Version, Plans: []string{"files"}}
		if taken != nil {
			if taken[0] == "" {
				taken = []string{}
			}
			p.Taken = &taken
		}
		reviewPost(t, n1, "https://"+addr+api.PathPoll, p, &pr)
		return pr
	}
	if !poll().ListsTaken {
		t.Error("the director does not ask for the list of taken commands")
	}
	if _, err := d.Start("p", "test"); err != nil {
		t.Fatal(err)
	}
	var prep api.Command
	waitUntil(t, "the prepare", func() bool {
		for _, c := range poll("").Commands {
			if c.Kind == api.KindPrepare {
				prep = c
			}
		}
		return prep.ID != ""
	})
	// That answer is lost: the agent lists nothing as taken. Within a
	// second of the delivery the command is not sent again (no agent polls
	// that soon after losing an answer), after it at once.
	if got := poll("").Commands; len(got) != 0 {
		t.Fatalf("a poll just after the delivery got %+v", got)
	}
	time.Sleep(lostAfter)
	if got := poll("").Commands; len(got) != 1 || got[0].ID != prep.ID {
		t.Fatalf("after a lost answer the poll got %+v, want the prepare %s again", got, prep.ID)
	}
	time.Sleep(lostAfter)
	// This one came: the agent lists the prepare, and is not sent it again.
	if got := poll(prep.ID).Commands; len(got) != 0 {
		t.Errorf("the poll listing the prepare as taken got %+v", got)
	}
	// An agent that lists nothing is not sent it again before Redeliver.
	if got := poll().Commands; len(got) != 0 {
		t.Errorf("a poll without a list got %+v within %v of the delivery", got, Redeliver)
	}
}
