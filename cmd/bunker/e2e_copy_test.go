package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"bunker/internal/backend/s3/s3test"
	"bunker/internal/fs/fstest"
)

type copySummary struct {
	Mode     string `json:"mode"`
	Selected int    `json:"snapshots_selected"`
	Present  int    `json:"snapshots_present"`
	Copied   []struct {
		Source, Target string
	} `json:"snapshots_copied"`
	Failed []struct {
		Source, Error string
	} `json:"snapshots_failed"`
	Blobs      int     `json:"blobs"`
	WholePacks int     `json:"whole_packs"`
	LagBefore  float64 `json:"lag_before_seconds"`
	LagAfter   float64 `json:"lag_after_seconds"`
}

// copySource makes a local repository with three snapshots of a changing
// tree; it returns the environment and the tree's last state.
func copySource(t *testing.T) (*repoEnv, string, map[string]fstest.Entry) {
	t.Helper()
	src := newFastRepo(t)
	data := filepath.Join(t.TempDir(), "data")
	for i := range 3 {
		writeFile(t, filepath.Join(data, "changing"), string(randomData(uint64(i), 700<<10)))
		writeFile(t, filepath.Join(data, "sub", "stable"), string(randomData(99, 300<<10)))
		writeFile(t, filepath.Join(data, "sub", "text"), strings.Repeat("some text\n", 5000))
		src.ok("backup", "-q", data)
	}
	return src, data, fstest.Manifest(t, data)
}

// copyFrom runs `bunker copy` from src into the target of dst with extra
// arguments and environment.
func copyFrom(dst, src *repoEnv, env map[string]string, code int, args ...string) result {
	dst.t.Helper()
	all := append([]string{"copy", "--from-repo", src.repo, "--from-password-file", src.pwFile}, args...)
	r := dst.runWith(runOpts{env: env}, all...)
	if r.code != code {
		dst.t.Fatalf("want exit %d, got %v", code, r)
	}
	return r
}

// verifyReplica checks the target and restores its newest snapshot.
func verifyReplica(t *testing.T, dst *repoEnv, env map[string]string, data string, want map[string]fstest.Entry) {
	t.Helper()
	if r := dst.runWith(runOpts{env: env}, "check", "--read-data"); r.code != 0 {
		t.Fatalf("check of the replica: %v", r)
	}
	target := t.TempDir()
	if r := dst.runWith(runOpts{env: env}, "restore", "latest", "--target", target); r.code != 0 {
		t.Fatalf("restore from the replica: %v", r)
	}
	compareTrees(t, "restore from the replica", want, inTarget(target, data), fstest.CompareOptions{})
}

// copyTwice copies, checks the replica, then copies again and wants nothing moved.
func copyTwice(t *testing.T, src, dst *repoEnv, env map[string]string, data string, want map[string]fstest.Entry, mode string, args ...string) {
	t.Helper()
	var first, second copySummary
	r := copyFrom(dst, src, env, 0, append([]string{"--json"}, args...)...)
	if err := json.Unmarshal([]byte(lastLine(r.stdout)), &first); err != nil {
		t.Fatalf("copy --json: %v\n%s", err, r.stdout)
	}
	if first.Mode != mode || len(first.Copied) != 3 || first.Present != 0 || first.LagBefore <= 0 || first.LagAfter != 0 {
		t.Fatalf("first copy: %+v", first)
	}
	if mode == "pack" && first.WholePacks == 0 {
		t.Errorf("pack-level copy moved no whole pack: %+v", first)
	}
	verifyReplica(t, dst, nil, data, want)
	r = copyFrom(dst, src, env, 0, append([]string{"--json"}, args...)...)
	if err := json.Unmarshal([]byte(lastLine(r.stdout)), &second); err != nil {
		t.Fatalf("copy --json: %v\n%s", err, r.stdout)
	}
	if len(second.Copied) != 0 || second.Present != 3 || second.Blobs != 0 || second.LagBefore != 0 {
		t.Fatalf("second copy: %+v", second)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestCopy: copies to a local repository (re-encoded, and sharing the
// source's keys), to the S3 server, and to `bunker serve` with an
// append-only credential; each replica checks clean and restores the
// source's data; a second copy moves nothing.
func TestCopy(t *testing.T) {
	t.Parallel()
	src, data, want := copySource(t)

	t.Run("local-reencode", func(t *testing.T) {
		dst := newFastRepo(t)
		before := repoFiles(t, dst.repo)
		out := copyFrom(dst.with(t), src.with(t), nil, 0, "--dry-run").stdout
		if !strings.Contains(out, "would copy snapshot") || !strings.Contains(out, "dry run: 3 of 3 selected snapshots would be copied") {
			t.Errorf("dry run: %q", out)
		}
		if after := repoFiles(t, dst.repo); strings.Join(before, "\n") != strings.Join(after, "\n") {
			t.Errorf("the dry run changed the target")
		}
		copyTwice(t, src.with(t), dst.with(t), nil, data, want, "reencode")
		out = copyFrom(dst.with(t), src.with(t), nil, 0).stdout
		if !strings.Contains(out, "0 of 3 selected snapshots copied (3 already in the target") || !strings.Contains(out, "replica lag: none") {
			t.Errorf("summary of a copy with nothing new: %q", out)
		}
	})
	t.Run("local-pack", func(t *testing.T) {
		dst := newEnv(t)
		dst.t = t
		out := dst.ok("init", "--copy-params-from", src.repo, "--from-password-file", src.pwFile)
		if !strings.Contains(out, "shares the keys") {
			t.Errorf("init --copy-params-from: %q", out)
		}
		copyTwice(t, src.with(t), dst, nil, data, want, "pack", "--mode", "pack")
	})
	t.Run("s3", func(t *testing.T) {
		srv := s3test.Start(t)
		dst := s3Env(t, srv)
		dst.ok("init", "--copy-params-from", src.repo, "--from-password-file", src.pwFile)
		// The target's storage credentials come from a file; the
		// environment has none.
		creds := filepath.Join(t.TempDir(), "s3-credentials")
		writeFile(t, creds, "# replica\nAWS_ACCESS_KEY_ID="+srv.AccessKey+"\nAWS_SECRET_ACCESS_KEY="+srv.SecretKey+"\n")
		noEnv := map[string]string{"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
		copyTwice(t, src.with(t), dst, noEnv, data, want, "pack", "--to-credentials-file", creds)

		// And back to a local repository: the S3 source's credentials
		// come from BUNKER_FROM_AWS_*, never from the (target's) AWS_*.
		back := newFastRepo(t)
		wrongEnv := map[string]string{"AWS_ACCESS_KEY_ID": srv.AccessKey, "AWS_SECRET_ACCESS_KEY": "the-target's-secret"}
		r := back.with(t).failsWith(runOpts{env: wrongEnv}, 2, "copy", "--from-repo", dst.repo, "--from-password-file", dst.pwFile)
		if !strings.Contains(r.stderr, "BUNKER_FROM_AWS_ACCESS_KEY_ID") {
			t.Errorf("S3 source without its own credentials: %q", r.stderr)
		}
		fromEnv := map[string]string{"BUNKER_FROM_AWS_ACCESS_KEY_ID": srv.AccessKey, "BUNKER_FROM_AWS_SECRET_ACCESS_KEY": srv.SecretKey,
			"AWS_ACCESS_KEY_ID": srv.AccessKey, "AWS_SECRET_ACCESS_KEY": "the-target's-secret"}
		copyFrom(back.with(t), dst, fromEnv, 0)
		verifyReplica(t, back.with(t), nil, data, want)
	})
	t.Run("s3-object-lock", func(t *testing.T) {
		// The replica can be under Object Lock: every object the copy
		// stores (whole packs included) gets its retention, and check
		// finds none missing.
		srv := s3test.Start(t)
		dst := s3Env(t, srv)
		dst.extraEnv["BUNKER_TEST_LOCK_DAY"] = "1h"
		dst.ok("init", "--object-lock", "compliance", "--lock-days", "1", "--copy-params-from", src.repo, "--from-password-file", src.pwFile)
		copyTwice(t, src.with(t), dst, nil, data, want, "pack")
		if out := dst.ok("check"); !strings.Contains(out, "no problems found") {
			t.Errorf("check of the locked replica: %q", out)
		}
	})
	t.Run("serve", func(t *testing.T) {
		p := startServe(t)
		admin := p.client(t, "replica", "admin", canaryAdminPW)
		admin.ok("init")
		// The replica is written with the append-only credential.
		agent := p.client(t, "replica", "agent", canaryAgentPW)
		copyTwice(t, src.with(t), agent, nil, data, want, "reencode")
		if strings.Contains(p.log.String(), canaryRepoPW) || strings.Contains(p.log.String(), canaryAgentPW) {
			t.Errorf("a secret reached the server log")
		}

		// And back: from the server with a read-only credential (no lock
		// can be taken) to a local repository. The source's server
		// password and CA come from BUNKER_FROM_* variables.
		readerPW := filepath.Join(t.TempDir(), "reader-password")
		writeFile(t, readerPW, canaryReaderPW+"\n")
		back := newFastRepo(t)
		srcSide := &repoEnv{repo: "rest:https://reader@" + p.addr + "/replica", pwFile: agent.pwFile}
		env := map[string]string{"BUNKER_FROM_REST_PASSWORD_FILE": readerPW, "BUNKER_FROM_CACERT": p.ca}
		r := copyFrom(back.with(t), srcSide, env, 0)
		if !strings.Contains(r.stderr, "read-only") || !strings.Contains(r.stdout, "3 of 3 selected snapshots copied") {
			t.Errorf("copy from a read-only source: %v", r)
		}
		verifyReplica(t, back.with(t), nil, data, want)
		if strings.Contains(r.stdout+r.stderr+p.log.String(), canaryReaderPW) {
			t.Errorf("the reader's password was printed or logged")
		}
	})
}

// TestCopyBadInput: one clear line and a documented exit code for each
// mistake; nothing is written to the target.
func TestCopyBadInput(t *testing.T) {
	t.Parallel()
	src, _, _ := copySource(t)
	dst := newFastRepo(t)
	before := repoFiles(t, dst.repo)
	cases := []struct {
		name string
		code int
		env  map[string]string
		args []string
		msg  string
	}{
		{"same repository", 2, nil, []string{"copy", "--from-repo", dst.repo, "--from-password-file", dst.pwFile}, "same repository"},
		{"no source", 2, nil, []string{"copy"}, "no source repository"},
		{"wrong source password", 12, nil, []string{"copy", "--from-repo", src.repo, "--from-password-file", dst.pwFile + ".wrong"}, "source repository"},
		{"wrong target password", 12, map[string]string{"BUNKER_PASSWORD_FILE": src.pwFile + ".wrong"}, []string{"copy", "--from-repo", src.repo, "--from-password-file", src.pwFile}, "target repository: wrong password"},
		{"missing target", 10, nil, []string{"copy", "--from-repo", src.repo, "--from-password-file", src.pwFile, "--to-repo", filepath.Join(dst.dir, "nowhere")}, "target repository"},
		{"unreachable target", 1, nil, []string{"copy", "--from-repo", src.repo, "--from-password-file", src.pwFile, "--to-repo", "rest:http://127.0.0.1:1/x"}, "target repository"},
		{"pack copy to a target with its own keys", 2, nil, []string{"copy", "--from-repo", src.repo, "--from-password-file", src.pwFile, "--mode", "pack"}, "--copy-params-from"},
		{"bad mode", 2, nil, []string{"copy", "--from-repo", src.repo, "--from-password-file", src.pwFile, "--mode", "fast"}, "copy mode"},
		{"bad credentials file", 2, nil, []string{"copy", "--from-repo", src.repo, "--from-password-file", src.pwFile, "--to-credentials-file", src.pwFile}, "credentials file"},
	}
	writeFile(t, dst.pwFile+".wrong", "not the password\n")
	writeFile(t, src.pwFile+".wrong", "not the password\n")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := dst.with(t).failsWith(runOpts{env: tc.env}, tc.code, tc.args...)
			if !strings.Contains(r.stderr, tc.msg) {
				t.Errorf("stderr %q does not say %q", r.stderr, tc.msg)
			}
			if strings.Contains(r.stderr, "correct horse") {
				t.Errorf("a password reached the error: %q", r.stderr)
			}
		})
	}
	after := repoFiles(t, dst.repo)
	if strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("bad input changed the target:\nbefore %v\nafter  %v", before, after)
	}
}

// TestCopyDamagedSource is RELIABILITY H2 through the CLI: a damaged pack in
// the source fails the snapshots that need it (exit 4, named on stderr),
// the others are copied, the replica checks clean; a snapshot forgotten in
// the source stays in the replica.
func TestCopyDamagedSource(t *testing.T) {
	t.Parallel()
	src, data, _ := copySource(t)
	dst := newFastRepo(t)
	copyFrom(dst, src, nil, 0, "--latest", "1")
	// A new file in a fourth snapshot; damage every pack written by it.
	before := map[string]bool{}
	for _, p := range repoFiles(t, src.repo) {
		before[p] = true
	}
	writeFile(t, filepath.Join(data, "new"), string(randomData(7, 500<<10)))
	src.ok("backup", "-q", data)
	damaged := 0
	for _, p := range repoFiles(t, src.repo) {
		if strings.Contains(p, "/data/") && !before[p] {
			path, _, _ := strings.Cut(p, " ")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/3] ^= 0x40
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			damaged++
		}
	}
	if damaged == 0 {
		t.Fatal("the fourth backup wrote no pack")
	}
	r := copyFrom(dst, src, nil, 4)
	if !strings.Contains(r.stderr, "not copied: snapshot") || !strings.Contains(r.stderr, "damaged") {
		t.Errorf("stderr does not name the failed snapshot: %q", r.stderr)
	}
	if !strings.Contains(r.stdout, "2 of 4 selected snapshots copied (1 already in the target, 1 failed)") {
		t.Errorf("summary: %q", r.stdout)
	}
	dst.ok("check", "--read-data")
	if n := len(dst.snapshots()); n != 3 {
		t.Fatalf("replica has %d snapshots, want 3", n)
	}
	// Forget everything in the source: the replica keeps its snapshots.
	src.ok("forget", "--keep-last", "1")
	copyFrom(dst, src, nil, 4)
	if n := len(dst.snapshots()); n != 3 {
		t.Fatalf("replica has %d snapshots after the source forgot, want 3", n)
	}
}
