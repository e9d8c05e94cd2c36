package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"bunker/internal/pki"
)

// TestDirectorEnrol: new nodes get their certificates from the director
// with one-time tokens, and then run a plan with them. A token works once,
// for its node only, until it expires; a node with a certificate is not
// enrolled over it; the token never reaches the director's log.
func TestDirectorEnrol(t *testing.T) {
	t.Parallel()
	dp := newDeployment(t, []string{"node1", "node2"}, `  pair:
    nodes: {node1: [files], node2: [files]}
    schedule: "0 0 1 1 *"
    repository: main
`, func(dp *deployment, n string) string { return dp.filesPlan(n, "files", "") })
	pk := filepath.Join(dp.dir, "pki")
	for _, n := range dp.nodes {
		for _, ext := range []string{".pem", ".key"} {
			if err := os.Remove(filepath.Join(pk, "agent-"+n+ext)); err != nil {
				t.Fatal(err)
			}
		}
	}
	enrolAddr := freePort(t)
	f, err := os.OpenFile(filepath.Join(dp.dir, "director.yaml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString("enrol: {listen: " + enrolAddr + ", ca_key: " + pk + "/ca.key}\n")
	f.Close()
	dp.startDirector()

	enrol := func(cfg, token string) result {
		return dp.repo.runWith(runOpts{env: map[string]string{"BUNKER_ENROL_TOKEN": token}},
			"agent", "enrol", "--config", filepath.Join(dp.dir, cfg), "--enrol-url", "https://"+enrolAddr)
	}
	mustFail := func(r result, code int, want string) {
		t.Helper()
		if r.code != code || !strings.Contains(r.stderr, want) || strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
			t.Fatalf("want exit %d and one line with %q, got %v", code, want, r)
		}
	}

	r := dp.operator(exitUsage, "agent", "token", "node9")
	mustFail(r, exitUsage, `unknown node "node9"`)
	mustFail(dp.operator(exitFailure, "agent", "token", "node1", "--ttl", "400h"), exitFailure, "between 1s and 168h")
	tok1 := strings.TrimSpace(dp.operator(exitOK, "agent", "token", "node1").stdout)
	if !strings.HasPrefix(tok1, "bunker-enrol-") {
		t.Fatalf("token %q", tok1)
	}

	// node2 cannot use node1's token (and the token survives it); nor
	// can anyone use something that is not a token.
	mustFail(enrol("agent-node2.yaml", tok1), exitFailure, "for another node")
	mustFail(enrol("agent-node2.yaml", "bunker-enrol-"+strings.Repeat("A", 43)), exitFailure, "unknown, already used or expired")
	mustFail(enrol("agent-node2.yaml", "hunter2"), exitFailure, "not an enrolment token")
	mustFail(enrol("agent-node2.yaml", ""), exitUsage, "no token")

	if r := enrol("agent-node1.yaml", tok1); r.code != exitOK || !strings.Contains(r.stdout, "enrolled node node1") {
		t.Fatalf("enrol: %v", r)
	}
	st, err := os.Stat(filepath.Join(pk, "agent-node1.key"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	data, err := os.ReadFile(filepath.Join(pk, "agent-node1.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pki.ParseCert(data)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := pki.IdentityOf(cert); err != nil || id.Role != pki.RoleAgent || id.Name != "node1" {
		t.Fatalf("enrolled certificate: %+v %v", id, err)
	}

	// Once used, the token is gone: a second node1 (other files) cannot
	// enrol with it. And a node that has its files is never overwritten.
	cfg1, err := os.ReadFile(filepath.Join(dp.dir, "agent-node1.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dp.dir, "agent-node1b.yaml"), strings.ReplaceAll(string(cfg1), "agent-node1.", "agent-node1b."))
	mustFail(enrol("agent-node1b.yaml", tok1), exitFailure, "unknown, already used or expired")
	mustFail(enrol("agent-node1.yaml", tok1), exitUsage, "already exists")

	// An expired token is refused; a fresh one works.
	tok2 := strings.TrimSpace(dp.operator(exitOK, "agent", "token", "node2", "--ttl", "1s").stdout)
	time.Sleep(1500 * time.Millisecond)
	mustFail(enrol("agent-node2.yaml", tok2), exitFailure, "unknown, already used or expired")
	var t3 struct{ Token string }
	if err := json.Unmarshal([]byte(dp.operator(exitOK, "agent", "token", "node2", "--json").stdout), &t3); err != nil {
		t.Fatal(err)
	}
	tok3 := t3.Token
	if r := enrol("agent-node2.yaml", tok3); r.code != exitOK {
		t.Fatalf("enrol node2: %v", r)
	}

	for _, tok := range []string{tok1, tok2, tok3} {
		if strings.Contains(dp.dirLog.String(), tok) {
			t.Fatal("a token reached the director's log")
		}
	}
	if !strings.Contains(dp.dirLog.String(), "agent enrolled") || !strings.Contains(dp.dirLog.String(), "enrolment refused") {
		t.Fatalf("director log lacks the enrolments:\n%s", dp.dirLog)
	}

	// The enrolled agents run a plan with their new certificates.
	dp.startAgents()
	job := dp.runPlan(exitOK, "pair", true)
	if job.State != "succeeded" || len(job.Nodes["node1"].Snapshots) != 1 || len(job.Nodes["node2"].Snapshots) != 1 {
		t.Fatalf("job with enrolled agents: %+v", job)
	}
}
