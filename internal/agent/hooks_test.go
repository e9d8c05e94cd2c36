package agent

import (
	"context"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
)

// A hook with a user runs as that user, with that user's group and none of
// the agent's supplementary groups; an unknown user fails clearly.
func TestHookRunsAsItsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root to run a hook as another user")
		}
		t.Skip("needs root to run a hook as another user")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "hook")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "who")
	a := quietAgent(t)
	ctx := context.Background()
	if err := a.runHook(ctx, Hook{Exec: []string{"/bin/sh", "-c", "id -u > " + out + "; id -G >> " + out}, User: "nobody"}, timeZero); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Fields(string(b)), []string{nobody.Uid, nobody.Gid}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("the hook ran as uid and groups %v, want %v", got, want)
	}
	err = a.runHook(ctx, Hook{Exec: []string{"/bin/true"}, User: "no-such-user-here"}, timeZero)
	if err == nil || !strings.Contains(err.Error(), "hook user no-such-user-here") {
		t.Errorf("unknown user: %v", err)
	}
}
