package conf

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestRepositoryEnv(t *testing.T) {
	t.Setenv("BUNKER_PASSWORD_FILE", "/the/caller's")
	t.Setenv("AWS_ACCESS_KEY_ID", "the-caller's")
	t.Setenv("BUNKER_TEST_PRUNE_WAIT", "1s")
	dir := t.TempDir()
	creds := filepath.Join(dir, "creds")
	for _, tc := range []struct {
		file, want, err string
	}{
		{"AWS_ACCESS_KEY_ID=key\nexport AWS_SECRET_ACCESS_KEY='s3cret'\n# comment\n", "AWS_SECRET_ACCESS_KEY=s3cret", ""},
		{"BUNKER_REST_PASSWORD=pw\n", "BUNKER_REST_PASSWORD=pw", ""},
		{"AWS_SESSION_TOKEN: SECRETTOKEN==\n", "", "line 1"},
		{"PATH=/evil\n", "", "line 1"},
	} {
		if err := os.WriteFile(creds, []byte(tc.file), 0o600); err != nil {
			t.Fatal(err)
		}
		env, err := RepositoryEnv("/repo", "/pw", "", creds)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "SECRETTOKEN") || strings.Contains(err.Error(), "/evil") {
				t.Errorf("%q: error %v", tc.file, err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{tc.want, "BUNKER_REPOSITORY=/repo", "BUNKER_PASSWORD_FILE=/pw", "BUNKER_TEST_PRUNE_WAIT=1s"} {
			if !slices.Contains(env, want) {
				t.Errorf("%q: env lacks %s", tc.file, want)
			}
		}
		for _, no := range []string{"BUNKER_PASSWORD_FILE=/the/caller's", "AWS_ACCESS_KEY_ID=the-caller's"} {
			if slices.Contains(env, no) {
				t.Errorf("%q: the caller's %s leaked into the child's environment", tc.file, no)
			}
		}
	}
}

func TestParseErrorsHaveLines(t *testing.T) {
	var v struct {
		A Duration `yaml:"a"`
		B int      `yaml:"b"`
	}
	for _, tc := range []struct{ in, want string }{
		{"a: 5m\nc: 1\n", "f.yaml:2: field c not found (unknown field)"},
		{"a: soon\n", `f.yaml:1: "soon" is not a duration`},
		{"b: x\n", "f.yaml:1: cannot unmarshal"},
		{"", "f.yaml: the file is empty"},
	} {
		_, err := Parse("f.yaml", []byte(tc.in), &v)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.in, err, tc.want)
		}
	}
}
