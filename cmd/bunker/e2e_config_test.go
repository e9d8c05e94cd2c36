package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigValidate: `bunker config validate` accepts the example files,
// and points at the line of every mistake (exit 2).
func TestConfigValidate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, f := range []string{"../../internal/director/testdata/good.yaml", "../../internal/agent/testdata/good.yaml"} {
		abs, _ := filepath.Abs(f)
		if out := e.ok("config", "validate", abs); !strings.Contains(out, "a valid") {
			t.Errorf("%s: %q", f, out)
		}
	}
	good, err := os.ReadFile("../../internal/director/testdata/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(strings.Replace(string(good), "      db1: [etcd, db]", "      db9: [etcd]", 1), "    copy_to: offsite", "    copy_to: elsewhere\n    colour: blue", 1)
	path := filepath.Join(e.dir, "director.yaml")
	writeFile(t, path, bad)
	r := e.run("config", "validate", path)
	if r.code != 2 {
		t.Fatalf("want exit 2: %v", r)
	}
	// yaml refuses the unknown field first; fix it and the semantic
	// problems all show, each with its line.
	if !strings.Contains(r.stderr, "director.yaml:31: field colour not found") {
		t.Errorf("stderr: %q", r.stderr)
	}
	writeFile(t, path, strings.Replace(bad, "    colour: blue\n", "", 1))
	r = e.run("config", "validate", path)
	for _, want := range []string{`director.yaml:25: plans.cluster.nodes.db9: unknown node "db9"`, `director.yaml:30: plans.cluster.copy_to: unknown repository "elsewhere"`, "bunker: " + path + ": 2 problems"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr %q lacks %q", r.stderr, want)
		}
	}
	var v struct {
		Valid    bool     `json:"valid"`
		Problems []string `json:"problems"`
	}
	r = e.run("config", "validate", "--json", path)
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v.Valid || len(v.Problems) != 2 || r.code != 2 {
		t.Errorf("--json: %v %+v (%v)", err, v, r)
	}
	writeFile(t, path, "just: [a, list]\n")
	if r := e.fails(2, "config", "validate", path); !strings.Contains(r.stderr, "give --kind") {
		t.Errorf("unknown kind: %q", r.stderr)
	}
}
