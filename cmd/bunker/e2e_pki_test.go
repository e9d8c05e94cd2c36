package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPKI: a deployment's CA and certificates through the CLI; bad input
// gets one line and a documented code; key material is never printed.
func TestPKI(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dir := filepath.Join(e.dir, "pki")
	e.fails(1, "pki", "issue", "agent", "node1", "--dir", dir) // no CA yet
	out := e.ok("pki", "init", "--dir", dir, "--deployment", "prod")
	out += e.ok("pki", "issue", "director", "dir1", "--dir", dir, "--host", "127.0.0.1", "--host", "director.example")
	out += e.ok("pki", "issue", "agent", "node1", "--dir", dir)
	for _, f := range []string{"ca.key", "director-dir1.key", "agent-node1.key"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v", f, fi.Mode(), err)
		}
		key, _ := os.ReadFile(filepath.Join(dir, f))
		if strings.Contains(out, string(key[40:80])) {
			t.Errorf("%s was printed", f)
		}
	}
	for _, tc := range []struct {
		code int
		args []string
		msg  string
	}{
		{1, []string{"pki", "init", "--dir", dir}, "already exists"},
		{1, []string{"pki", "issue", "agent", "node1", "--dir", dir}, "already exists"},
		{2, []string{"pki", "issue", "agent", "Node_1", "--dir", dir}, "invalid name"},
		{2, []string{"pki", "issue", "admin", "x", "--dir", dir}, "unknown role"},
		{2, []string{"pki", "issue", "agent", "node2"}, "--dir is required"},
		{2, []string{"pki", "issue", "agent", "node2", "--dir", dir, "--host", "x"}, "--host is for a director"},
		{2, []string{"pki", "issue", "agent", "node2", "--dir", dir, "--days", "0"}, "--days"},
	} {
		r := e.fails(tc.code, tc.args...)
		if !strings.Contains(r.stderr, tc.msg) {
			t.Errorf("bunker %s: %q does not say %q", strings.Join(tc.args, " "), r.stderr, tc.msg)
		}
	}
}
