package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"bunker/internal/fs/fstest"
	"bunker/internal/server/servertest"
)

// Canary secrets: none of them may ever appear in output, logs, metrics or
// process arguments (RELIABILITY G6).
const (
	canaryRepoPW   = "CANARY-repo-password-7f3a"
	canaryAdminPW  = "CANARY-admin-password-91be"
	canaryAgentPW  = "CANARY-agent-password-c24d"
	canaryNewKeyPW = "CANARY-new-key-password-55e0"
	canaryReaderPW = "CANARY-reader-password-3d19"
)

// serveProc is a running `bunker serve`.
type serveProc struct {
	cmd  *exec.Cmd
	addr string
	root string
	ca   string
	log  *lockedBuf
}

type lockedBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startServe runs the real binary's `serve` on 127.0.0.1 with a test CA.
func startServe(t *testing.T) *serveProc {
	t.Helper()
	ca := servertest.NewCA(t, "serve-ca")
	nb, na := servertest.Valid()
	cert := ca.Issue(t, "127.0.0.1", true, nb, na)
	users := servertest.WriteUsers(t,
		servertest.UserSpec{Name: "admin", Role: "admin", Password: canaryAdminPW},
		servertest.UserSpec{Name: "agent", Role: "append", Password: canaryAgentPW},
		servertest.UserSpec{Name: "reader", Role: "read", Password: canaryReaderPW})
	p := &serveProc{root: t.TempDir(), ca: ca.File, log: &lockedBuf{}}
	p.cmd = exec.Command(bunkerBin, "serve", "--listen", "127.0.0.1:0", "--root", p.root, "--users", users, "--tls-cert", cert)
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		_ = p.cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("serve did not start: %v; log:\n%s", err, p.log)
	}
	p.addr = strings.TrimSpace(strings.TrimPrefix(line, "listening on "))
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return p
}

// client returns an environment reaching repository name as user.
func (p *serveProc) client(t *testing.T, name, user, pw string) *repoEnv {
	t.Helper()
	e := newEnv(t)
	writeFile(t, e.pwFile, canaryRepoPW+"\n")
	restPW := filepath.Join(e.dir, "rest-password")
	writeFile(t, restPW, pw+"\n")
	e.repo = "rest:https://" + user + "@" + p.addr + "/" + name
	e.extraEnv = map[string]string{"BUNKER_REST_PASSWORD_FILE": restPW, "BUNKER_CACERT": p.ca}
	return e
}

// repoFiles lists the files of a served repository, leaving out lock files
// (a refused command may take and drop a lock).
func repoFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !strings.Contains(path, string(filepath.Separator)+"locks"+string(filepath.Separator)) {
			fi, _ := d.Info()
			out = append(out, fmt.Sprintf("%s %d", path, fi.Size()))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestServeAppendOnly is RELIABILITY G1 against `bunker serve`: with an
// append-only credential, backup and restore work, and every delete,
// forget, prune, repair, unlock of others' locks, key change or settings
// change is refused (exit 13) with nothing changed in the repository.
// It is also G6 for what these commands print and the server logs.
func TestServeAppendOnly(t *testing.T) {
	t.Parallel()
	srv := startServe(t)
	admin := srv.client(t, "main", "admin", canaryAdminPW)
	admin.ok("init")
	agent := srv.client(t, "main", "agent", canaryAgentPW)

	src := filepath.Join(t.TempDir(), "src")
	var outputs []string
	for i := 0; i < 3; i++ {
		writeFile(t, filepath.Join(src, "file"), strings.Repeat(fmt.Sprint(i), 100000))
		writeFile(t, filepath.Join(src, fmt.Sprintf("new-%d", i)), string(randomData(uint64(i), 300000)))
		r := agent.run("backup", src)
		if r.code != 0 {
			t.Fatalf("append user cannot back up: %v", r)
		}
		outputs = append(outputs, r.stdout, r.stderr)
	}
	want := fstest.Manifest(t, src)
	target := t.TempDir()
	agent.ok("restore", "latest", "--target", target)
	compareTrees(t, "restore by the append user", want, inTarget(target, src), fstest.CompareOptions{})

	newPW := filepath.Join(agent.dir, "new-key")
	writeFile(t, newPW, canaryNewKeyPW+"\n")
	// A second key, added by the admin, for the agent to try to remove.
	admin.ok("key", "add", "--new-password-file", newPW)
	var keyList []struct {
		ID      string `json:"id"`
		Current bool   `json:"current"`
	}
	agent.okJSON(&keyList, "key", "list", "--json")
	var keyID string
	for _, k := range keyList {
		if !k.Current {
			keyID = k.ID
		}
	}
	// The admin holds a lock (a backup waiting for its standard input), for
	// the agent's unlock --remove-all to try.
	held := exec.Command(bunkerBin, "backup", "--stdin", "--stdin-filename", "held")
	held.Env = append(os.Environ(), "BUNKER_REPOSITORY="+admin.repo, "BUNKER_PASSWORD_FILE="+admin.pwFile)
	for k, v := range admin.extraEnv {
		held.Env = append(held.Env, k+"="+v)
	}
	stdin, err := held.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := held.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		entries, _ := os.ReadDir(filepath.Join(srv.root, "main", "locks"))
		if len(entries) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the admin's backup never took its lock")
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := repoFiles(t, filepath.Join(srv.root, "main"))
	for _, args := range [][]string{
		{"forget", "--keep-last", "1"},
		{"forget", "--keep-last", "1", "--prune"},
		{"prune"},
		{"repair", "index"},
		{"repair", "snapshots", "--forget"},
		{"unlock", "--remove-all"},
		{"config", "set", "min-retention", "1d"},
		{"key", "add", "--new-password-file", newPW},
		{"key", "passwd", "--new-password-file", newPW},
		{"key", "remove", keyID},
	} {
		r := agent.run(args...)
		outputs = append(outputs, r.stdout, r.stderr)
		if r.code == 0 {
			t.Errorf("append user: bunker %s succeeded", strings.Join(args, " "))
			continue
		}
		if r.code != 13 {
			t.Errorf("bunker %s: exit %d, want 13 (refused): %s", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	if after := repoFiles(t, filepath.Join(srv.root, "main")); !slices.Equal(before, after) {
		t.Errorf("refused commands changed the repository:\nbefore %v\nafter  %v", before, after)
	}
	if entries, _ := os.ReadDir(filepath.Join(srv.root, "main", "locks")); len(entries) == 0 {
		t.Error("the admin's lock was removed by the append user")
	}
	fmt.Fprint(stdin, "held data")
	stdin.Close()
	if err := held.Wait(); err != nil {
		t.Errorf("the admin's backup: %v", err)
	}
	admin.ok("check", "--read-data")

	// G6: the secrets never show.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: certPool(t, srv.ca)}}}
	resp, err := client.Get("https://" + srv.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", srv.cmd.Process.Pid))
	haystacks := map[string]string{"server log": srv.log.String(), "metrics": string(metrics), "server cmdline": string(cmdline),
		"client output": strings.Join(outputs, "\n")}
	for what, text := range haystacks {
		for _, secret := range []string{canaryRepoPW, canaryAdminPW, canaryAgentPW, canaryNewKeyPW} {
			if strings.Contains(text, secret) {
				t.Errorf("%s contains a secret", what)
			}
		}
	}
	if !strings.Contains(srv.log.String(), "refused") {
		t.Errorf("the server logged no refusal:\n%s", srv.log)
	}
}

func certPool(t *testing.T, file string) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return pool
}
